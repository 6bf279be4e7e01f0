//! Change streams in the shapes teams have (#31): Debezium change events (JSON with and without
//! JsonConverter's schemas, Confluent-framed Avro and Protobuf), a change field of the producer's own, and a latest-state
//! topic. A Debezium stream replayed in order, and shuffled and duplicated with the source's LSN as the
//! version, ends in the source table's final state with no dead letter. On SQLite, PostgreSQL and MariaDB.

use base64::Engine;
use msk_sync::pipeline::Handler;
use msk_sync::report::{BatchReport, Outcome};
use msk_sync_tests::*;
use serde_json::{Value, json};

on_every_backend!(
    the_sample_streams_replayed_in_order_end_in_the_source_state,
    shuffled_and_duplicated_with_the_lsn_as_version_end_in_the_source_state,
    the_same_stream_in_confluent_framed_avro,
    the_same_stream_in_confluent_framed_protobuf,
    truncates_heartbeats_and_tombstones_are_filtered_with_their_reason,
    a_change_field_of_the_producers_own,
    a_latest_state_topic,
    uuid_date_and_decimal_columns,
    existing_uuid_date_and_numeric_columns_are_accepted,
    a_typed_sync_declares_its_change_field,
);

const TOPIC: &str = "dbserver1.public.customers";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The customers table's config: `version` adds the LSN as the version column.
fn config(version: bool, value: &str, extra_codec: &str) -> String {
    let lsn = if version {
        r#"  { name = "lsn", path = "$.debeziumSource.lsn", type = "integer", version = true },"#
    } else {
        ""
    };
    format!(
        r#"[codec]
value = "{value}"
key = "json"
envelope = "debezium"
{extra_codec}
[[sync]]
topics = ["{TOPIC}"]
table = "customers"
key = ["id"]
columns = [
  {{ name = "id", path = "$.id", type = "integer" }},
  {{ name = "email", path = "$.email" }},
  {{ name = "born", path = "$.born", type = "date" }},
  {{ name = "balance", path = "$.balance", type = "decimal" }},
{lsn}
]
"#
    )
}

async fn handler(db: &TestDb, toml: &str) -> Handler {
    let path = db.write("debezium.toml", toml);
    entity_sync()
        .load(Some(&path))
        .unwrap()
        .handler(Some(&db.url))
        .await
        .unwrap()
}

/// One change of the source table: op, id, the row after it (None for a delete), its LSN.
#[derive(Debug, Clone)]
struct Change {
    op: &'static str,
    id: i64,
    row: Option<(String, i64, i64)>,
    lsn: i64,
}

fn up(op: &'static str, id: i64, email: &str, born: i64, cents: i64, lsn: i64) -> Change {
    Change {
        op,
        id,
        row: Some((email.to_string(), born, cents)),
        lsn,
    }
}

fn del(id: i64, lsn: i64) -> Change {
    Change {
        op: "d",
        id,
        row: None,
        lsn,
    }
}

/// A snapshot, creates, updates, deletes, deleted ids created again.
fn history() -> Vec<Change> {
    vec![
        up("r", 1, "ada@example.com", 7_305, 10_000, 1_000),
        up("r", 2, "bob@example.com", 8_000, 2_550, 1_000),
        up("r", 3, "cy@example.com", 9_000, -1, 1_000),
        up("c", 4, "dee@example.com", 10_000, 0, 1_100),
        up("u", 1, "ada@lovelace.org", 7_305, 10_000, 1_200),
        del(2, 1_300),
        up("u", 4, "dee@example.org", 10_000, 99_999_999, 1_400),
        up("c", 2, "bob2@example.com", 8_001, 1, 1_500),
        del(3, 1_600),
        up("u", 1, "ada@lovelace.org", 7_305, 12_345, 1_700),
        del(4, 1_800),
        up("c", 4, "dee4@example.com", 10_004, 400, 1_900),
        up("u", 2, "bob@example.net", 8_001, 2, 2_000),
    ]
}

/// The source table after `history`, as the tests read it back: id, email, born, balance.
fn final_state() -> Vec<Vec<String>> {
    vec![
        vec!["1", "ada@lovelace.org", "1990-01-01", "123.45"],
        vec!["2", "bob@example.net", "1991-11-28", "0.02"],
        vec!["4", "dee4@example.com", "1997-05-23", "4.00"],
    ]
    .into_iter()
    .map(|r| r.into_iter().map(String::from).collect())
    .collect()
}

fn cents_text(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

fn source(lsn: i64) -> Value {
    json!({"version": "2.7.3.Final", "connector": "postgresql", "name": "dbserver1", "ts_ms": 1_764_000_000_000_i64 + lsn,
           "snapshot": "false", "db": "shop", "sequence": null, "schema": "public", "table": "customers",
           "txId": 700 + lsn / 100, "lsn": lsn, "xmin": null})
}

fn row_schema(name: &str) -> Value {
    json!({"type": "struct", "optional": true, "name": "dbserver1.public.customers.Value", "field": name, "fields": [
        {"type": "int32", "optional": false, "field": "id"},
        {"type": "string", "optional": true, "field": "email"},
        {"type": "int32", "optional": true, "name": "io.debezium.time.Date", "version": 1, "field": "born"},
        {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
         "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "balance"}
    ]})
}

fn envelope_schema() -> Value {
    json!({"type": "struct", "optional": false, "name": "dbserver1.public.customers.Envelope", "version": 2, "fields": [
        row_schema("before"), row_schema("after"),
        {"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source",
         "fields": [{"type": "int64", "optional": true, "field": "lsn"}]},
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"}
    ]})
}

/// Big-endian two's complement, shortest: how Kafka Connect writes a Decimal's unscaled value.
fn unscaled(n: i64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// The change as Debezium's JSON value: with JsonConverter's schema (dates as days, decimals as bytes), or
/// without (`decimal.handling.mode = string`, dates as days).
fn json_value(c: &Change, with_schema: bool) -> Value {
    let image = |(email, born, cents): &(String, i64, i64)| {
        let balance = if with_schema {
            json!(b64(unscaled(*cents)))
        } else {
            json!(cents_text(*cents))
        };
        json!({"id": c.id, "email": email, "born": born, "balance": balance})
    };
    let (before, after) = match &c.row {
        // The default replica identity: a delete's before holds the key, the other columns null.
        None => (
            json!({"id": c.id, "email": null, "born": null, "balance": null}),
            Value::Null,
        ),
        Some(row) => (Value::Null, image(row)),
    };
    let payload = json!({"before": before, "after": after, "source": source(c.lsn), "op": c.op,
                         "ts_ms": 1_764_000_000_500_i64 + c.lsn, "transaction": null});
    if with_schema {
        json!({"schema": envelope_schema(), "payload": payload})
    } else {
        payload
    }
}

fn key(id: i64, with_schema: bool) -> String {
    let key = if with_schema {
        json!({"schema": {"type": "struct", "optional": false, "name": "dbserver1.public.customers.Key",
                          "fields": [{"type": "int32", "optional": false, "field": "id"}]},
               "payload": {"id": id}})
    } else {
        json!({"id": id})
    };
    b64(key.to_string())
}

/// A record: (id for its key, value bytes or None for a tombstone, whether the key has a schema).
type Record = (i64, Option<Vec<u8>>, bool);

/// Each change as Debezium sends it: the event, and after a delete its tombstone. `schema(i)` says whether
/// the i-th change carries JsonConverter's schema.
fn records(history: &[Change], schema: impl Fn(usize) -> bool) -> Vec<Record> {
    let mut out = Vec::new();
    for (i, c) in history.iter().enumerate() {
        let with = schema(i);
        out.push((
            c.id,
            Some(json_value(c, with).to_string().into_bytes()),
            with,
        ));
        if c.op == "d" {
            out.push((c.id, None, with));
        }
    }
    out
}

/// An MSK event of `records` in one partition, in order.
fn event(records: &[Record], first_offset: i64) -> Value {
    let records: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, (id, value, with))| {
            let offset = first_offset + i as i64;
            json!({"topic": TOPIC, "partition": 0, "offset": offset,
                   "timestamp": 1_764_000_000_000_i64 + offset, "timestampType": "CREATE_TIME",
                   "key": key(*id, *with), "value": value.as_ref().map(b64), "headers": []})
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {format!("{TOPIC}-0"): records}})
}

fn balanced(report: &BatchReport) {
    assert_eq!(
        report.messages,
        report.upserted
            + report.deleted
            + report.superseded
            + report.filtered
            + report.empty
            + report.dead_lettered
            + report.stale,
        "{report:?}"
    );
    assert_eq!(report.dead_lettered, 0, "{report:?}");
}

/// The customers table as text, decimals without the trailing zeros MariaDB's DECIMAL(65,30) pads with.
async fn customers(db: &TestDb) -> Vec<Vec<String>> {
    db.rows("customers", &["id", "email", "born", "balance"], "id")
        .await
        .into_iter()
        .map(|mut r| {
            let b = &r[3];
            if let Some((int, frac)) = b.split_once('.') {
                let frac = frac.trim_end_matches('0');
                r[3] = format!("{int}.{frac:0<2}");
            } else {
                r[3] = format!("{b}.00");
            }
            r
        })
        .collect()
}

async fn the_sample_streams_replayed_in_order_end_in_the_source_state(backend: Backend) {
    for sample in ["debezium-postgres.json", "debezium-postgres-schemas.json"] {
        let db = TestDb::new(backend, "debezium_samples").await;
        let run = replay_config(&db, &event_file("debezium.toml"), &[sample]).await;
        assert_eq!(run.code, 0, "{sample}: {}", run.stderr);
        let reports = run.reports();
        let report = &reports[0];
        balanced(report);
        // Two tombstones, each after its delete: filtered, with the reason.
        assert_eq!(report.filtered, 2, "{report:?}");
        assert!(report.records.iter().all(|r| {
            r.outcome == Outcome::Filtered
                && r.reason
                    .as_deref()
                    .is_some_and(|w| w.contains("tombstone after a Debezium delete"))
        }));
        assert_eq!(
            db.rows("customers", &["id", "email", "born"], "id").await,
            vec![
                vec!["1", "ada@lovelace.org", "1990-01-01"],
                vec!["2", "bob@example.net", "1991-11-28"],
            ],
            "{sample}"
        );
        let balances: Vec<f64> = db
            .rows("customers", &["balance"], "id")
            .await
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect();
        assert_eq!(balances, vec![123.45, 0.02], "{sample}");
    }
    // The generated stream in order, without a version column: every change in order, each form of message.
    for (name, schema) in [("plain", 0), ("schemas", 1), ("mixed", 2)] {
        let db = TestDb::new(backend, &format!("debezium_in_order_{name}")).await;
        let h = handler(&db, &config(false, "json", "")).await;
        let recs = records(&history(), |i| match schema {
            0 => false,
            1 => true,
            _ => i % 2 == 0,
        });
        // One change a batch: nothing collapses, each applies in turn.
        for (i, r) in recs.iter().enumerate() {
            let report = h
                .handle_json(event(std::slice::from_ref(r), i as i64))
                .await
                .unwrap();
            balanced(&report);
        }
        assert_eq!(customers(&db).await, final_state(), "{name}");
    }
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next(i + 1));
        }
    }
}

async fn shuffled_and_duplicated_with_the_lsn_as_version_end_in_the_source_state(backend: Backend) {
    for seed in 1..=3u64 {
        let db = TestDb::new(backend, &format!("debezium_shuffled_{seed}")).await;
        let h = handler(&db, &config(true, "json", "")).await;
        let mut rng = Lcg(seed);
        let mut recs = records(&history(), |i| (i as u64 + seed).is_multiple_of(2));
        // Some records twice (a redelivery), then everything in another order, in batches of 1 to 5.
        let again: Vec<Record> = recs.iter().step_by(3).cloned().collect();
        recs.extend(again);
        rng.shuffle(&mut recs);
        let (mut at, mut stale, mut offset) = (0, 0, 0);
        while at < recs.len() {
            let n = (1 + rng.next(5)).min(recs.len() - at);
            let report = h
                .handle_json(event(&recs[at..at + n], offset))
                .await
                .unwrap();
            balanced(&report);
            stale += report.stale;
            at += n;
            offset += 100;
        }
        assert!(stale > 0, "seed {seed}: some changes came too late");
        assert_eq!(customers(&db).await, final_state(), "seed {seed}");
        let lsns = db.rows("customers", &["lsn"], "id").await;
        assert_eq!(lsns, vec![vec!["1700"], vec!["2000"], vec!["1900"]]);
    }
}

/// Debezium's envelope as Confluent's AvroConverter writes it (dates and decimals as Avro logical types).
const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Envelope", "namespace": "dbserver1.public.customers", "fields": [
  {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
    {"name": "id", "type": "int"},
    {"name": "email", "type": ["null", "string"], "default": null},
    {"name": "born", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
    {"name": "balance", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}], "default": null}
  ]}], "default": null},
  {"name": "after", "type": ["null", "Value"], "default": null},
  {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
    {"name": "connector", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {"name": "lsn", "type": ["null", "long"], "default": null}
  ]}},
  {"name": "op", "type": "string"},
  {"name": "ts_ms", "type": ["null", "long"], "default": null}
]}"#;

fn avro_value(c: &Change) -> Vec<u8> {
    use apache_avro::types::Value as A;
    let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA).unwrap();
    let null = || A::Union(0, Box::new(A::Null));
    let image = |row: Option<&(String, i64, i64)>| match row {
        None => A::Record(vec![
            ("id".into(), A::Int(c.id as i32)),
            ("email".into(), null()),
            ("born".into(), null()),
            ("balance".into(), null()),
        ]),
        Some((email, born, cents)) => A::Record(vec![
            ("id".into(), A::Int(c.id as i32)),
            (
                "email".into(),
                A::Union(1, Box::new(A::String(email.clone()))),
            ),
            ("born".into(), A::Union(1, Box::new(A::Date(*born as i32)))),
            (
                "balance".into(),
                A::Union(
                    1,
                    Box::new(A::Decimal(apache_avro::Decimal::from(unscaled(*cents)))),
                ),
            ),
        ]),
    };
    let (before, after) = match &c.row {
        None => (A::Union(1, Box::new(image(None))), null()),
        Some(row) => (null(), A::Union(1, Box::new(image(Some(row))))),
    };
    let value = A::Record(vec![
        ("before".into(), before),
        ("after".into(), after),
        (
            "source".into(),
            A::Record(vec![
                ("connector".into(), A::String("postgresql".into())),
                ("ts_ms".into(), A::Long(1_764_000_000_000 + c.lsn)),
                ("lsn".into(), A::Union(1, Box::new(A::Long(c.lsn)))),
            ]),
        ),
        ("op".into(), A::String(c.op.into())),
        (
            "ts_ms".into(),
            A::Union(1, Box::new(A::Long(1_764_000_000_500 + c.lsn))),
        ),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let mut framed = vec![0, 0, 0, 0, 31];
    framed.extend(datum);
    framed
}

/// The history as `value` frames each change (a tombstone after each delete), with the LSN as the version:
/// applied in order, then shuffled (`seed`) in batches of `chunk` on top, it ends in the source's state.
async fn framed_stream_ends_in_the_source_state(
    db: &TestDb,
    h: &Handler,
    value: impl Fn(&Change) -> Vec<u8>,
    seed: u64,
    chunk: usize,
) {
    let mut recs: Vec<Record> = Vec::new();
    for c in history() {
        recs.push((c.id, Some(value(&c)), false));
        if c.op == "d" {
            recs.push((c.id, None, false));
        }
    }
    let report = h.handle_json(event(&recs, 0)).await.unwrap();
    balanced(&report);
    assert_eq!(customers(db).await, final_state());
    let mut again = recs.clone();
    Lcg(seed).shuffle(&mut again);
    for (i, part) in again.chunks(chunk).enumerate() {
        let report = h
            .handle_json(event(part, 1_000 + i as i64 * 10))
            .await
            .unwrap();
        balanced(&report);
    }
    assert_eq!(customers(db).await, final_state());
}

async fn the_same_stream_in_confluent_framed_avro(backend: Backend) {
    let db = TestDb::new(backend, "debezium_avro").await;
    let avsc = db.write("customers-envelope.avsc", AVRO_SCHEMA);
    let codec = format!("schemas = {{ \"31\" = \"{}\" }}\n", avsc.display());
    let h = handler(&db, &config(true, "avro-confluent", &codec)).await;
    framed_stream_ends_in_the_source_state(&db, &h, avro_value, 5, 3).await;
}

/// The envelope as Confluent's ProtobufConverter writes it for a Debezium source: `Envelope` first in the file,
/// so the Confluent message-index list is the single byte 0. Decoded by the proto3 JSON mapping: `int64`s arrive
/// as strings, which integer columns and versions read exactly.
const PROTO: &str = r#"syntax = "proto3";
package dbserver1.public.customers;
message Envelope {
  Row before = 1;
  Row after = 2;
  Source source = 3;
  string op = 4;
  int64 ts_ms = 5;
}
message Row {
  int32 id = 1;
  optional string email = 2;
  optional int32 born = 3;
  optional string balance = 4;
}
message Source {
  string connector = 1;
  int64 ts_ms = 2;
  int64 lsn = 3;
}
"#;

/// Protobuf's wire format, enough for the envelope: varints and length-delimited fields.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, n: u64) {
    varint(out, field << 3);
    varint(out, n);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn protobuf_value(c: &Change) -> Vec<u8> {
    let mut row = Vec::new();
    field_varint(&mut row, 1, c.id as u64);
    if let Some((email, born, cents)) = &c.row {
        field_bytes(&mut row, 2, email.as_bytes());
        field_varint(&mut row, 3, *born as u64);
        field_bytes(&mut row, 4, cents_text(*cents).as_bytes());
    }
    let mut source = Vec::new();
    field_bytes(&mut source, 1, b"postgresql");
    field_varint(&mut source, 2, (1_764_000_000_000 + c.lsn) as u64);
    field_varint(&mut source, 3, c.lsn as u64);
    let mut envelope = Vec::new();
    field_bytes(&mut envelope, if c.row.is_some() { 2 } else { 1 }, &row);
    field_bytes(&mut envelope, 3, &source);
    field_bytes(&mut envelope, 4, c.op.as_bytes());
    field_varint(&mut envelope, 5, (1_764_000_000_500 + c.lsn) as u64);
    let mut framed = vec![0, 0, 0, 0, 32, 0];
    framed.extend(envelope);
    framed
}

async fn the_same_stream_in_confluent_framed_protobuf(backend: Backend) {
    let db = TestDb::new(backend, "debezium_protobuf").await;
    let proto = db.write("customers-envelope.proto", PROTO);
    let codec = format!("schemas = {{ \"32\" = \"{}\" }}\n", proto.display());
    let h = handler(&db, &config(true, "protobuf", &codec)).await;
    framed_stream_ends_in_the_source_state(&db, &h, protobuf_value, 9, 4).await;
}

async fn truncates_heartbeats_and_tombstones_are_filtered_with_their_reason(backend: Backend) {
    let db = TestDb::new(backend, "debezium_skipped").await;
    let path = db.write("debezium.toml", &config(true, "json", ""));
    let recs: Vec<Record> = vec![
        (
            1,
            Some(json_value(&history()[0], false).to_string().into_bytes()),
            false,
        ),
        (
            1,
            Some(
                json!({"source": source(5_000), "op": "t", "ts_ms": 1})
                    .to_string()
                    .into_bytes(),
            ),
            false,
        ),
        (0, Some(br#"{"ts_ms": 1764000000000}"#.to_vec()), false),
        (1, None, true),
    ];
    let file = db.write("skipped.json", &event(&recs, 0).to_string());
    let config_path = path.display().to_string();
    let file = file.display().to_string();
    let run = cli(
        &entity_sync(),
        &["replay", "--dry-run", "--config", &config_path, &file],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert_eq!(lines[0]["outcome"], "upsert");
    assert_eq!(lines[0]["change"], "op r (snapshot read): upsert of after");
    assert_eq!(lines[0]["message"]["debeziumSource"]["lsn"], 1_000);
    assert_eq!(lines[1]["outcome"], "filtered");
    assert!(
        lines[1]["reason"].as_str().unwrap().contains("truncate"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["outcome"], "filtered");
    assert!(
        lines[2]["reason"].as_str().unwrap().contains("heartbeat"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3]["outcome"], "filtered");
    assert!(
        lines[3]["reason"].as_str().unwrap().contains("tombstone"),
        "{}",
        lines[3]
    );
    // Applied: one row, three filtered, nothing dead-lettered.
    let h = handler(&db, &config(true, "json", "")).await;
    let report = h.handle_json(event(&recs, 0)).await.unwrap();
    balanced(&report);
    assert_eq!((report.upserted, report.filtered), (1, 3), "{report:?}");
    // config check says how each sync reads the envelope.
    let run = cli(&entity_sync(), &["config", "check", &config_path]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("sync customers: Debezium op: c, r, u → upsert of after; d → delete of the key in before"),
        "{}",
        run.stdout
    );
}

async fn a_change_field_of_the_producers_own(backend: Backend) {
    let db = TestDb::new(backend, "debezium_custom_change").await;
    let run = replay_config(
        &db,
        &event_file("custom-change.toml"),
        &["custom-change.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        db.rows("orders", &["order_id", "status"], "order_id").await,
        vec![vec!["o-1", "SHIPPED"], vec!["o-3", "NEW"]]
    );
    // One value nobody listed: dead-lettered, naming the path.
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(
        report.records[0].reason.as_deref(),
        Some("unknown change value ARCHIVE at $.meta.eventType")
    );
    // config check refuses a value listed twice and a bad path.
    let bad = db.write(
        "bad.toml",
        "[[sync]]\ntopics = [\"t\"]\ntable = \"x\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", path = \"$.id\" }]\n\
         change = { path = \"$.[broken\", upsert = [\"A\"], delete = [\"A\"] }\n",
    );
    let run = cli(
        &entity_sync(),
        &["config", "check", &bad.display().to_string()],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("change: value \"A\" is listed twice"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("change: bad JSONPath \"$.[broken\""),
        "{}",
        run.stderr
    );
}

async fn a_latest_state_topic(backend: Backend) {
    let db = TestDb::new(backend, "latest_state").await;
    let run = replay_config(
        &db,
        &event_file("latest-state.toml"),
        &["latest-state.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    balanced(report);
    // Each value is the entity as it is now; the tombstone (null) deleted sku-2 by its record key.
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(
        db.rows("product", &["sku", "name", "price"], "sku").await,
        vec![
            vec!["sku-1", "Lamp (new)", "2450"],
            vec!["sku-3", "Desk", "12000"]
        ]
    );
}

async fn uuid_date_and_decimal_columns(backend: Backend) {
    let db = TestDb::new(backend, "new_column_types").await;
    let toml = r#"
[[sync]]
topics = ["t"]
table = "typed_cols"
key = ["id"]
columns = [
  { name = "id", path = "$.id", type = "uuid" },
  { name = "day", path = "$.day", type = "date" },
  { name = "amount", path = "$.amount", type = "decimal" },
]
"#;
    let h = handler(&db, toml).await;
    let value = |v: Value| Some(v.to_string().into_bytes());
    let id = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";
    let ev = |values: Vec<Option<Vec<u8>>>| {
        let records: Vec<Value> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| json!({"topic": "t", "partition": 0, "offset": i, "timestamp": 1_764_000_000_000_i64 + i as i64,
                                 "value": v.map(b64), "headers": []}))
            .collect();
        json!({"eventSource": "aws:kafka", "records": {"t-0": records}})
    };
    let report = h
        .handle_json(ev(vec![
            value(json!({"id": id, "day": "2024-02-29", "amount": "12345678901234567890.123456789"})),
            value(json!({"id": "not-a-uuid", "day": "2024-02-29", "amount": 1})),
            value(json!({"id": "00000000-0000-0000-0000-000000000002", "day": 19_783, "amount": 0.5})),
            value(json!({"id": "00000000-0000-0000-0000-000000000003", "day": "2024-02-30", "amount": 1})),
            value(json!({"id": "00000000-0000-0000-0000-000000000004", "day": null, "amount": "1e400x"})),
        ]))
        .await
        .unwrap();
    assert_eq!(report.upserted, 2, "{report:?}");
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    let reasons: Vec<&str> = report
        .records
        .iter()
        .filter_map(|r| r.reason.as_deref())
        .collect();
    assert!(reasons[0].contains("expected a UUID"), "{reasons:?}");
    assert!(reasons[1].contains("expected a date"), "{reasons:?}");
    assert!(
        reasons[2].contains("expected a decimal number"),
        "{reasons:?}"
    );
    let rows = db.rows("typed_cols", &["id", "day", "amount"], "id").await;
    assert_eq!(rows[0][0], "00000000-0000-0000-0000-000000000002");
    assert_eq!(rows[0][1], "2024-03-01");
    assert_eq!(rows[1][0], "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    assert_eq!(rows[1][1], "2024-02-29");
    // Exact, past what a float holds (MariaDB pads the scale to 30 digits).
    assert!(
        rows[1][2].starts_with("12345678901234567890.123456789"),
        "{rows:?}"
    );
    assert!(rows[0][2].starts_with("0.5"), "{rows:?}");
    // The same rows again: the key compares equal however the producer wrote the uuid.
    let report = h
        .handle_json(ev(vec![value(
            json!({"id": id.to_lowercase(), "day": "2024-02-28", "amount": 2}),
        )]))
        .await
        .unwrap();
    assert_eq!(report.upserted, 1);
    assert_eq!(db.count("typed_cols").await, 2);
}

async fn existing_uuid_date_and_numeric_columns_are_accepted(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let db = TestDb::new(backend, "existing_column_types").await;
    let create = match backend {
        Backend::Postgres => {
            "CREATE TABLE existing_cols (id uuid PRIMARY KEY, day date, amount numeric(12, 2))"
        }
        // MariaDB 10.7 and later have a UUID type.
        Backend::MariaDb => {
            "CREATE TABLE existing_cols (id UUID PRIMARY KEY, day DATE, amount DECIMAL(12, 2))"
        }
        Backend::Sqlite => {
            "CREATE TABLE existing_cols (id TEXT PRIMARY KEY, day DATE, amount NUMERIC)"
        }
    };
    db.conn.execute_unprepared(create).await.unwrap();
    let toml = r#"
[[sync]]
topics = ["t"]
table = "existing_cols"
key = ["id"]
columns = [
  { name = "id", path = "$.id", type = "uuid" },
  { name = "day", path = "$.day", type = "date" },
  { name = "amount", path = "$.amount", type = "decimal" },
]
"#;
    let path = db.write("existing.toml", toml);
    let run = cli(
        &entity_sync(),
        &[
            "config",
            "check",
            "--database-url",
            &db.url,
            &path.display().to_string(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let h = handler(&db, toml).await;
    let value = json!({"id": "0B7A5D4E-0000-4000-8000-000000000001", "day": "2026-12-07", "amount": "1234567890.25"});
    let event = json!({"eventSource": "aws:kafka", "records": {"t-0": [
        {"topic": "t", "partition": 0, "offset": 0, "timestamp": 1_764_000_000_000_i64,
         "value": b64(value.to_string()), "headers": []}]}});
    let report = h.handle_json(event).await.unwrap();
    assert_eq!(
        (report.upserted, report.dead_lettered),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(
        db.rows("existing_cols", &["id", "day", "amount"], "id")
            .await,
        vec![vec![
            "0b7a5d4e-0000-4000-8000-000000000001",
            "2026-12-07",
            "1234567890.25"
        ]]
    );
    // A column of another type is still refused, naming what would fit.
    if backend != Backend::Sqlite {
        db.conn
            .execute_unprepared(
                "CREATE TABLE wrong_cols (id uuid PRIMARY KEY, day date, amount integer)",
            )
            .await
            .unwrap();
        let wrong = db.write("wrong.toml", &toml.replace("existing_cols", "wrong_cols"));
        let run = cli(
            &entity_sync(),
            &[
                "config",
                "check",
                "--database-url",
                &db.url,
                &wrong.display().to_string(),
            ],
        )
        .await;
        assert_ne!(run.code, 0);
        assert!(
            run.stderr.contains("a column of type decimal"),
            "{}",
            run.stderr
        );
    }
}

mod typed_order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "typed_orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        pub status: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl msk_sync::sync::typed::FromKafkaEvent for typed_order::Model {
    fn from_kafka_event(message: &msk_sync::message::Message<'_>) -> Result<Self, String> {
        use msk_sync::sync::typed::{field, optional_field};
        Ok(Self {
            order_id: field(message, "orderId")?,
            status: optional_field(message, "status")?.unwrap_or_default(),
        })
    }

    fn change() -> Option<msk_sync::change::ChangeConfig> {
        Some(msk_sync::change::ChangeConfig {
            path: "$.meta.eventType".into(),
            upsert: vec![json!("INSERT"), json!("UPDATE")],
            delete: vec![json!("DELETE")],
            absent: msk_sync::change::Absent::Upsert,
        })
    }
}

async fn a_typed_sync_declares_its_change_field(backend: Backend) {
    let db = TestDb::new(backend, "debezium_typed_change").await;
    let app = msk_sync::App::typed::<typed_order::Entity>("typed-orders", "shop.orders");
    let h = app
        .handler(&msk_sync::config::Config::default(), Some(&db.url))
        .await
        .unwrap();
    let text = std::fs::read_to_string(event_file("custom-change.json")).unwrap();
    let report = h
        .handle_json(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(
        db.rows("typed_orders", &["order_id", "status"], "order_id")
            .await,
        vec![vec!["o-1", "SHIPPED"], vec!["o-3", "NEW"]]
    );
}
