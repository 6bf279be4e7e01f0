//! A generator of realistic MSK batches for benchmarks and tests: N change events for K planets over P
//! partitions, JSON, Avro (Confluent-framed, schema id 1 = events/schemas/planet.avsc; or Glue-framed), or
//! Protobuf (Confluent-framed, schema id 7 = events/schemas/planet.proto) values, the first event
//! of a planet CREATED, then UPDATED, about 10 % DELETED and 2 % without changeType; timestamps interleave across
//! partitions, offsets grow per partition. Deterministic for a seed.

pub mod inflate;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use base64::Engine;
use serde_json::{Value, json};

/// Lambda's synchronous invocation payload limit.
pub const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// Confluent wire format, schema id 1.
    Avro,
    /// Protobuf (events/schemas/planet.proto), Confluent wire format, schema id 7, message index [0].
    Protobuf,
    /// Avro in AWS Glue's wire format (byte 3, no compression, schema version [`GLUE_AVRO_VERSION`]).
    GlueAvro,
    /// Debezium change events in JSON (no schemas): the planet is the row image (`after`; `before` for a
    /// delete), with a PostgreSQL connector's `source` block, `op` and `ts_ms` around it.
    DebeziumJson,
}

/// The Glue schema version id of events/schemas/planet.avsc in the benchmarks' config.
pub const GLUE_AVRO_VERSION: &str = "b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

/// Protobuf's wire format for the planet message of events/schemas/planet.proto, written by hand (tag, length,
/// bytes): the benchmarks need bytes, not a Protobuf library.
fn protobuf_value(m: &Value) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push(number << 3 | 2);
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    fn text(v: &Value) -> Option<&[u8]> {
        v.as_str().map(str::as_bytes)
    }
    let mut out = Vec::new();
    if let Some(c) = text(&m["changeType"]) {
        field(&mut out, 1, c);
    }
    field(&mut out, 2, text(&m["planetUuid"]).unwrap_or_default());
    field(&mut out, 3, text(&m["planetName"]).unwrap_or_default());
    if m["published"].as_bool().unwrap_or(true) {
        out.extend([4 << 3, 1]);
    }
    if let Some(d) = text(&m["discoveredBy"]) {
        field(&mut out, 5, d);
    }
    let mut location = Vec::new();
    field(
        &mut location,
        1,
        text(&m["location"]["galaxy"]).unwrap_or_default(),
    );
    field(
        &mut location,
        2,
        text(&m["location"]["sector"]).unwrap_or_default(),
    );
    field(&mut out, 6, &location);
    out
}

/// A UUID's 16 bytes.
fn uuid_bytes(text: &str) -> Vec<u8> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    hex.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("00"), 16).unwrap_or(0))
        .collect()
}

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub records: usize,
    pub entities: usize,
    pub partitions: i32,
    pub topic: String,
    pub format: Format,
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            records: 10_000,
            entities: 2_000,
            partitions: 6,
            topic: "servicea.planet".into(),
            format: Format::Json,
            seed: 42,
        }
    }
}

/// The planet schema the Avro values are written with (the one in events/schemas/planet.avsc).
pub const PLANET_AVSC: &str = include_str!("../../events/schemas/planet.avsc");

/// splitmix64: small, fast, and good enough to spread test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn uuid(entity: usize) -> String {
    format!("{entity:08x}-7c1e-4b8a-9f3d-{:012x}", entity * 7919)
}

/// One planet change as JSON (the message) — the Avro value carries the same fields.
fn message(rng: &mut Rng, entity: usize, seen: bool) -> Value {
    let roll = rng.below(100);
    let change = match (seen, roll) {
        (_, 0..=1) => None,
        (false, _) => Some("CREATED"),
        (true, 2..=11) => Some("DELETED"),
        (true, _) => Some("UPDATED"),
    };
    let n = rng.below(1_000_000);
    json!({
        "changeType": change,
        "planetUuid": uuid(entity),
        "planetName": format!("Planet {entity} rev {n}"),
        "published": !n.is_multiple_of(5),
        "discoveredBy": format!("Survey team {} of the outer rim expedition", n % 97),
        "location": {"galaxy": format!("Galaxy {}", n % 13), "sector": format!("Sector {}-{}", n % 31, n % 7)},
    })
}

fn avro_value(m: &Value) -> Avro {
    let opt = |v: &Value| match v.as_str() {
        Some(s) => Avro::Union(1, Box::new(Avro::String(s.into()))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    let text = |v: &Value| Avro::String(v.as_str().unwrap_or_default().into());
    Avro::Record(vec![
        ("changeType".into(), opt(&m["changeType"])),
        ("planetUuid".into(), text(&m["planetUuid"])),
        ("planetName".into(), text(&m["planetName"])),
        (
            "published".into(),
            Avro::Boolean(m["published"].as_bool().unwrap_or(true)),
        ),
        ("discoveredBy".into(), opt(&m["discoveredBy"])),
        (
            "location".into(),
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![
                    ("galaxy".into(), text(&m["location"]["galaxy"])),
                    ("sector".into(), text(&m["location"]["sector"])),
                ])),
            ),
        ),
    ])
}

/// The planet change `m` (the `i`-th of the batch) as Debezium's PostgreSQL connector writes it, without
/// schemas: `changeType` becomes `op`, the planet the row image.
fn debezium_value(m: &Value, i: usize) -> Value {
    let mut row = m.clone();
    let change = row
        .as_object_mut()
        .and_then(|o| o.remove("changeType"))
        .unwrap_or_default();
    let op = match change.as_str() {
        Some("CREATED") => "c",
        Some("DELETED") => "d",
        _ => "u",
    };
    let (before, after) = if op == "d" {
        (row, Value::Null)
    } else {
        (Value::Null, row)
    };
    let lsn = 24_023_128 + i as i64 * 216;
    json!({"before": before, "after": after, "source": {"version": "2.7.3.Final", "connector": "postgresql",
        "name": "dbserver1", "ts_ms": 1_764_000_000_000_i64 + i as i64, "snapshot": "false", "db": "servicea",
        "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 64), "schema": "public", "table": "planet",
        "txId": 771 + i, "lsn": lsn, "xmin": null}, "op": op, "ts_ms": 1_764_000_000_040_i64 + i as i64,
        "transaction": null})
}

/// An MSK event (the JSON Lambda would send).
pub fn generate(cfg: &GenConfig) -> Value {
    let mut rng = Rng(cfg.seed);
    let schema = Schema::parse_str(PLANET_AVSC).ok();
    let writer = schema
        .as_ref()
        .and_then(|s| GenericDatumWriter::builder(s).build().ok());
    let b64 = base64::engine::general_purpose::STANDARD;
    let partitions = cfg.partitions.max(1);
    let mut seen = vec![false; cfg.entities.max(1)];
    let mut offsets = vec![0i64; usize::try_from(partitions).unwrap_or(1)];
    let mut lists: Vec<Vec<Value>> = vec![Vec::new(); offsets.len()];
    let base = 1_764_000_000_000_i64;
    for i in 0..cfg.records {
        let entity = usize::try_from(rng.below(seen.len() as u64)).unwrap_or(0);
        // Kafka partitions by key: an entity always lands in the same partition.
        let p = entity % offsets.len();
        let m = message(&mut rng, entity, seen[entity]);
        seen[entity] = m["changeType"] != "DELETED";
        let value = match (cfg.format, &writer) {
            (Format::Avro, Some(w)) => {
                let mut framed = vec![0, 0, 0, 0, 1];
                framed.extend(w.write_value_to_vec(avro_value(&m)).unwrap_or_default());
                b64.encode(framed)
            }
            (Format::GlueAvro, Some(w)) => {
                let mut framed = vec![3, 0];
                framed.extend(uuid_bytes(GLUE_AVRO_VERSION));
                framed.extend(w.write_value_to_vec(avro_value(&m)).unwrap_or_default());
                b64.encode(framed)
            }
            (Format::Protobuf, _) => {
                let mut framed = vec![0, 0, 0, 0, 7, 0];
                framed.extend(protobuf_value(&m));
                b64.encode(framed)
            }
            (Format::DebeziumJson, _) => b64.encode(debezium_value(&m, i).to_string()),
            _ => b64.encode(m.to_string()),
        };
        // Timestamps interleave across partitions, with some jitter.
        let ts = base + i as i64 * 3 + rng.below(5) as i64;
        lists[p].push(json!({
            "topic": cfg.topic, "partition": p, "offset": offsets[p], "timestamp": ts,
            "timestampType": "CREATE_TIME", "key": b64.encode(uuid(entity)), "value": value,
            "headers": [{"producer": [115, 101, 114, 118, 105, 99, 101, 97]}]
        }));
        offsets[p] += 1;
    }
    let records: serde_json::Map<String, Value> = lists
        .into_iter()
        .enumerate()
        .map(|(p, l)| (format!("{}-{p}", cfg.topic), Value::Array(l)))
        .collect();
    json!({"eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/bench/00000000-0000-0000-0000-000000000000-1",
        "records": records})
}

/// An Avro container file (null codec) of `records` records `{"n": 0}`, one byte each: many messages in few
/// bytes. Every message lacks `planetUuid`, so the repository's config dead-letters them all.
pub fn tiny_records_ocf(records: usize) -> Result<Vec<u8>, apache_avro::Error> {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "Tiny", "fields": [{"name": "n", "type": "int"}]}"#,
    )?;
    let mut writer = apache_avro::Writer::new(&schema, Vec::new())?;
    for _ in 0..records {
        writer.append_value(Avro::Record(vec![("n".into(), Avro::Int(0))]))?;
    }
    writer.into_inner()
}

/// An Avro container file of planet changes, each `(changeType, planetUuid, planetName)`.
pub fn planets_ocf(planets: &[(Option<&str>, &str, &str)]) -> Result<Vec<u8>, apache_avro::Error> {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "PlanetChange", "fields": [
            {"name": "changeType", "type": ["null", "string"]},
            {"name": "planetUuid", "type": "string"},
            {"name": "planetName", "type": "string"}]}"#,
    )?;
    let mut writer = apache_avro::Writer::new(&schema, Vec::new())?;
    for (change, uuid, name) in planets {
        let change = match change {
            Some(c) => Avro::Union(1, Box::new(Avro::String(c.to_string()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        writer.append_value(Avro::Record(vec![
            ("changeType".into(), change),
            ("planetUuid".into(), Avro::String(uuid.to_string())),
            ("planetName".into(), Avro::String(name.to_string())),
        ]))?;
    }
    writer.into_inner()
}

/// An MSK event of one record on `servicea.planet` whose value is [`tiny_records_ocf`] (40,000 records make
/// a 54 KB event whose every message is dead-lettered: `gen-event ocf 40000`).
pub fn tiny_records_event(records: usize) -> Result<Value, apache_avro::Error> {
    let value = base64::engine::general_purpose::STANDARD.encode(tiny_records_ocf(records)?);
    Ok(
        json!({"eventSource": "aws:kafka", "records": {"servicea.planet-0": [{
            "topic": "servicea.planet", "partition": 0, "offset": 0, "timestamp": 1_764_000_000_000_i64,
            "timestampType": "CREATE_TIME", "key": base64::engine::general_purpose::STANDARD.encode("k"),
            "value": value, "headers": []
        }]}}),
    )
}

/// The largest batch of this shape whose serialized event stays under `bytes` (e.g. [`LAMBDA_PAYLOAD_LIMIT`]).
pub fn generate_to_size(bytes: usize, mut cfg: GenConfig) -> (Value, usize) {
    cfg.records = 1_000;
    let probe = generate(&cfg).to_string().len();
    let per_record = probe / cfg.records;
    cfg.records = bytes / per_record.max(1);
    loop {
        let event = generate(&cfg);
        let size = event.to_string().len();
        if size <= bytes || cfg.records == 0 {
            return (event, cfg.records);
        }
        cfg.records -= cfg.records / 100 + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_mix_and_order() {
        let event = generate(&GenConfig {
            records: 20_000,
            ..GenConfig::default()
        });
        let records: Vec<&Value> = event["records"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|l| l.as_array().unwrap())
            .collect();
        assert_eq!(records.len(), 20_000);
        let decode = |r: &Value| -> Value {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r["value"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let messages: Vec<Value> = records.iter().map(|r| decode(r)).collect();
        let share =
            |ct: Value| messages.iter().filter(|m| m["changeType"] == ct).count() as f64 / 20_000.0;
        assert!(
            (0.07..0.13).contains(&share(json!("DELETED"))),
            "{}",
            share(json!("DELETED"))
        );
        assert!((0.01..0.03).contains(&share(Value::Null)));
        assert!(share(json!("CREATED")) > 0.05 && share(json!("UPDATED")) > 0.5);
        // Offsets grow per partition; timestamps interleave across partitions.
        for list in event["records"].as_object().unwrap().values() {
            let offsets: Vec<i64> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["offset"].as_i64().unwrap())
                .collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }

    #[test]
    fn sized_to_the_lambda_limit() {
        let (event, n) = generate_to_size(LAMBDA_PAYLOAD_LIMIT, GenConfig::default());
        let size = event.to_string().len();
        assert!(
            size <= LAMBDA_PAYLOAD_LIMIT && size > LAMBDA_PAYLOAD_LIMIT * 95 / 100,
            "{size} bytes, {n} records"
        );
        let (avro, m) = generate_to_size(
            LAMBDA_PAYLOAD_LIMIT,
            GenConfig {
                format: Format::Avro,
                ..GenConfig::default()
            },
        );
        assert!(
            avro.to_string().len() <= LAMBDA_PAYLOAD_LIMIT && m > n,
            "Avro values are smaller: {m} vs {n}"
        );
    }
}
