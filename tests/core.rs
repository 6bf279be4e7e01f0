//! The core pipeline end to end: events/ files replayed through the real CLI and handler into SQLite,
//! PostgreSQL and MariaDB, asserting rows, dead letters and reports.

use msk_sync::pipeline::HandlerError;
use msk_sync::report::Outcome;
use msk_sync_tests::*;

const A: &str = "00000001-7c1e-4b8a-9f3d-5e2a1c0b0001";
const B: &str = "00000002-7c1e-4b8a-9f3d-5e2a1c0b0002";
const C: &str = "00000003-7c1e-4b8a-9f3d-5e2a1c0b0003";
const D: &str = "00000004-7c1e-4b8a-9f3d-5e2a1c0b0004";
const E: &str = "00000005-7c1e-4b8a-9f3d-5e2a1c0b0005";
const X: &str = "00000006-7c1e-4b8a-9f3d-5e2a1c0b0006";
const Y: &str = "00000007-7c1e-4b8a-9f3d-5e2a1c0b0007";
const Z: &str = "00000008-7c1e-4b8a-9f3d-5e2a1c0b0008";

on_every_backend!(
    mixed_partitions_follow_timestamps_but_keep_partition_order,
    replaying_twice_gives_the_same_tables,
    poison_records_are_dead_lettered_and_the_rest_applied,
    the_same_entity_changed_many_times_ends_in_its_last_state,
    created_updated_deleted_with_the_typed_planet_sync,
    typed_sync_deletes_on_tombstones_keyed_by_uuid,
    self_managed_and_aws_doc_events_are_accepted,
    every_declarative_column_type_round_trips,
    every_typed_column_type_round_trips,
    rows_without_a_null_read_back_as_rows_with_one,
    large_batches_are_chunked_under_the_bind_limit,
    filtered_and_masked_messages_never_reach_the_table,
    avro_values_are_decoded_masked_and_applied,
);

/// The levels of the sample configs, and the same without "confidential".
const LEVELS: &str = "levels = [\"public\", \"confidential\", \"secret\"]";
const TWO_LEVELS: &str = "levels = [\"public\", \"secret\"]";

fn planet(uuid: &str, name: &str) -> (String, String) {
    (uuid.to_string(), name.to_string())
}

async fn mixed_partitions_follow_timestamps_but_keep_partition_order(backend: Backend) {
    let db = TestDb::new(backend, &format!("mixed_{backend:?}")).await;
    let run = replay(&db, &["mixed-partitions.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (
            report.status,
            report.received,
            report.upserted,
            report.deleted,
            report.superseded,
            report.dead_lettered
        ),
        (200, 11, 6, 1, 4, 0)
    );
    assert!(report.records.is_empty());
    // A: offset 101 has an earlier timestamp than offset 100 but comes after it in its partition, so it wins.
    // Y: partition 2's older change (ts +300) is applied before partition 1's newer one (ts +500), although
    //    partition 1 comes first in the event's map. X: the other way round. B: created, then deleted.
    assert_eq!(
        db.planets().await,
        vec![
            planet(A, "Alpha v2"),
            planet(C, "Gamma"),
            planet(D, "Delta"),
            planet(E, "Epsilon"),
            planet(X, "Xi new"),
            planet(Y, "Ypsilon new"),
        ]
    );
    assert!(!db.planets().await.iter().any(|(u, _)| u == B));
    assert_eq!(db.count("msk_sync_dead_letter").await, 0);
}

async fn replaying_twice_gives_the_same_tables(backend: Backend) {
    let db = TestDb::new(backend, &format!("twice_{backend:?}")).await;
    let files = [
        "mixed-partitions.json",
        "malformed.json",
        "same-entity-many-changes.json",
    ];
    let first = replay(&db, &files).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let planets = db.planets().await;
    let dead = db
        .rows(
            "msk_sync_dead_letter",
            &["kafka_offset", "error", "created_at"],
            "kafka_offset",
        )
        .await;
    let second = replay(&db, &files).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(first.reports(), second.reports());
    assert_eq!(db.planets().await, planets);
    assert_eq!(
        db.rows(
            "msk_sync_dead_letter",
            &["kafka_offset", "error", "created_at"],
            "kafka_offset"
        )
        .await,
        dead
    );
    assert_eq!(dead.len(), 7);
}

async fn poison_records_are_dead_lettered_and_the_rest_applied(backend: Backend) {
    let db = TestDb::new(backend, &format!("poison_{backend:?}")).await;
    let run = replay(&db, &["malformed.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (
            report.status,
            report.received,
            report.upserted,
            report.dead_lettered
        ),
        (400, 9, 2, 7)
    );
    assert_eq!(
        db.planets().await,
        vec![planet(A, "Good before"), planet(D, "Good after")]
    );
    let dead = db.dead_letters().await;
    let expected: &[(i64, &str)] = &[
        (301, "value is not valid base64"),
        (302, "value is not valid JSON"),
        (303, "Unknown changeType ARCHIVED"),
        (304, "column uuid: $.planetUuid matched nothing"),
        (305, "tombstone (null value)"),
        (306, "tombstone (null value)"),
        (307, "value is JSON array, expected an object"),
    ];
    assert_eq!(dead.len(), expected.len(), "{dead:?}");
    for ((offset, error), (want_offset, want)) in dead.iter().zip(expected) {
        assert_eq!(offset, want_offset);
        assert!(error.starts_with(want), "offset {offset}: {error}");
    }
    // The report lists the same records with status 400, in batch order.
    let listed: Vec<(i64, u16, Outcome)> = report
        .records
        .iter()
        .map(|r| (r.offset, r.status, r.outcome))
        .collect();
    assert_eq!(
        listed,
        expected
            .iter()
            .map(|(o, _)| (*o, 400, Outcome::DeadLetter))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        report.records[2].reason.as_deref(),
        Some("Unknown changeType ARCHIVED")
    );
    // The raw value is kept, exactly as the event carried it.
    let raw = db
        .rows(
            "msk_sync_dead_letter",
            &["kafka_offset", "value_base64", "key_base64"],
            "kafka_offset",
        )
        .await;
    assert_eq!(raw[0][1], "not base64!!");
    assert_eq!(
        raw[3][2],
        "MDAwMDAwMDItN2MxZS00YjhhLTlmM2QtNWUyYTFjMGIwMDAy"
    );
    assert_eq!(raw[4][1], "NULL", "a tombstone has no value");
}

async fn the_same_entity_changed_many_times_ends_in_its_last_state(backend: Backend) {
    let db = TestDb::new(backend, &format!("many_{backend:?}")).await;
    let run = replay(
        &db,
        &["mixed-partitions.json", "same-entity-many-changes.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[1];
    assert_eq!(
        (
            report.received,
            report.upserted,
            report.deleted,
            report.superseded
        ),
        (9, 1, 1, 7)
    );
    let planets = db.planets().await;
    assert!(planets.contains(&planet(Z, "Zeta final")), "{planets:?}");
    assert!(
        !planets.iter().any(|(u, _)| u == D),
        "D was deleted last: {planets:?}"
    );
}

async fn created_updated_deleted_with_the_typed_planet_sync(backend: Backend) {
    let db = TestDb::new(backend, &format!("typed_{backend:?}")).await;
    let app = planet_sync::app();
    let run = replay_with(&app, &db, None, &["planet-created.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.planets().await, vec![planet(A, "Arrakis")]);
    let run = replay_with(&app, &db, None, &["planet-updated.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.planets().await, vec![planet(A, "Dune")]);
    let run = replay_with(&app, &db, None, &["planet-deleted.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.reports()[0].deleted, 1);
    assert_eq!(db.planets().await, vec![]);
    // Deleting a planet that is not there is not an error (bedrock).
    let run = replay_with(&app, &db, None, &["planet-deleted.json"]).await;
    assert_eq!((run.code, run.reports()[0].status), (0, 200));
    // The typed and declarative syncs build the same table from the same events.
    let run = replay_with(&app, &db, None, &["mixed-partitions.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let typed = db.planets().await;
    let other = TestDb::new(backend, &format!("typed_decl_{backend:?}")).await;
    assert_eq!(replay(&other, &["mixed-partitions.json"]).await.code, 0);
    assert_eq!(other.planets().await, typed);
}

async fn typed_sync_deletes_on_tombstones_keyed_by_uuid(backend: Backend) {
    let db = TestDb::new(backend, &format!("tomb_{backend:?}")).await;
    let app = planet_sync::app();
    assert_eq!(
        replay_with(&app, &db, None, &["mixed-partitions.json"])
            .await
            .code,
        0
    );
    assert!(db.planets().await.iter().any(|(u, _)| u == C));
    let run = replay_with(&app, &db, None, &["malformed.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    // 305 is a tombstone keyed by C's uuid: a delete. 306 has no key: a dead letter.
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (2, 1, 6)
    );
    assert!(!db.planets().await.iter().any(|(u, _)| u == C));
    let dead = db.dead_letters().await;
    assert!(
        dead.iter()
            .any(|(o, e)| *o == 306 && e.contains("without a UTF-8 record key")),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|(o, e)| *o == 304 && e == "missing field planetUuid"),
        "{dead:?}"
    );
}

async fn self_managed_and_aws_doc_events_are_accepted(backend: Backend) {
    let db = TestDb::new(backend, &format!("sources_{backend:?}")).await;
    let run = replay(&db, &["self-managed.json", "aws-doc.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = run.reports();
    assert_eq!((reports[0].status, reports[0].upserted), (200, 2));
    assert_eq!(
        db.planets().await,
        vec![planet(X, "Self-managed"), planet(Y, "Also self-managed")]
    );
    // The documentation's record is on a topic no sync claims: kept, with the reason.
    assert_eq!((reports[1].status, reports[1].dead_lettered), (400, 1));
    assert_eq!(
        db.dead_letters().await,
        vec![(15, "no sync is configured for topic mytopic".to_string())]
    );
}

async fn every_declarative_column_type_round_trips(backend: Backend) {
    let db = TestDb::new(backend, &format!("types_{backend:?}")).await;
    let config = db.write(
        "types.toml",
        r#"
        [[sync]]
        topics = ["shop.*"]
        table = "shop_order"
        key = ["shop", "order_id"]
        columns = [
          { name = "shop", from = "topic" },
          { name = "order_id", path = "$.id", type = "integer" },
          { name = "total", path = "$.amount.total", type = "float" },
          { name = "paid", path = "$.paid", type = "boolean" },
          { name = "lines", path = "$.lines", type = "json" },
          { name = "placed_at", path = "$.placedAt", type = "timestamp" },
          { name = "first_sku", path = "$.lines[0].sku" },
          { name = "note", path = "$.note" },
          { name = "source", from = "header:source" },
          { name = "kafka_offset", from = "offset", type = "integer" },
          { name = "kafka_ts", from = "timestamp", type = "timestamp" },
        ]
        "#,
    );
    let msg = |id: i64, ct: &str, extra: serde_json::Value| {
        let mut m = serde_json::json!({"changeType": ct, "id": id, "amount": {"total": 12.5}, "paid": true,
            "lines": [{"sku": "A-1", "qty": 2}], "placedAt": "2026-11-24T10:00:00.250Z"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    };
    let event = make_event(&[
        (
            "shop.eu",
            0,
            1,
            msg(1, "CREATED", serde_json::json!({"note": "first"})),
        ),
        (
            "shop.eu",
            0,
            2,
            msg(
                2,
                "CREATED",
                serde_json::json!({"paid": false, "placedAt": 1764000000000_i64}),
            ),
        ),
        (
            "shop.us",
            0,
            3,
            msg(1, "CREATED", serde_json::json!({"amount": {"total": "7"}})),
        ),
        ("shop.us", 0, 4, msg(3, "CREATED", serde_json::json!({}))),
        ("shop.us", 0, 5, msg(3, "DELETED", serde_json::json!({}))),
        (
            "shop.eu",
            0,
            6,
            msg(9, "CREATED", serde_json::json!({"paid": "yes"})),
        ),
    ]);
    let file = db.write("orders.json", &event);
    let run = replay_config(&db, &config, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (3, 1, 1),
        "{report:?}"
    );
    assert_eq!(
        report.records[0].reason.as_deref(),
        Some("column paid ($.paid): expected a boolean, got a string")
    );
    let rows = db
        .rows(
            "shop_order",
            &[
                "shop",
                "order_id",
                "total",
                "paid",
                "first_sku",
                "note",
                "source",
                "kafka_offset",
            ],
            "kafka_offset",
        )
        .await;
    let truth = |b: bool| match (backend, b) {
        (Backend::Postgres, true) => "true",
        (Backend::Postgres, false) => "false",
        (_, true) => "1",
        (_, false) => "0",
    };
    assert_eq!(
        rows,
        vec![
            vec![
                "shop.eu",
                "1",
                "12.5",
                truth(true),
                "A-1",
                "first",
                "test",
                "1"
            ],
            vec![
                "shop.eu",
                "2",
                "12.5",
                truth(false),
                "A-1",
                "NULL",
                "test",
                "2"
            ],
            vec![
                "shop.us",
                "1",
                if backend == Backend::Sqlite {
                    "7.0"
                } else {
                    "7"
                },
                truth(true),
                "A-1",
                "NULL",
                "test",
                "3"
            ],
        ]
    );
    // JSON and timestamps: compare what each backend gives back, parsed.
    let rows = db
        .rows(
            "shop_order",
            &["lines", "placed_at", "kafka_ts"],
            "kafka_offset",
        )
        .await;
    let lines: serde_json::Value = serde_json::from_str(&rows[0][0]).unwrap();
    assert_eq!(lines, serde_json::json!([{"sku": "A-1", "qty": 2}]));
    assert!(
        rows[0][1].starts_with("2026-11-24") && rows[0][1].contains("10:00:00.25"),
        "{:?}",
        rows[0]
    );
    assert!(
        rows[1][1].contains("2025-11-24") && rows[1][1].contains("16:00:00"),
        "{:?}",
        rows[1]
    );
}

/// PostgreSQL binds a batch whose rows have no NULL as one array per column (`UNNEST`), and a batch with a
/// NULL as `VALUES`: the same changes through both forms must leave the same rows, every column type alike.
async fn rows_without_a_null_read_back_as_rows_with_one(backend: Backend) {
    let db = TestDb::new(backend, &format!("arrays_{backend:?}")).await;
    let columns = r#"key = ["order_id"]
        columns = [
          { name = "order_id", path = "$.id", type = "integer" },
          { name = "total", path = "$.total", type = "float" },
          { name = "paid", path = "$.paid", type = "boolean" },
          { name = "lines", path = "$.lines", type = "json" },
          { name = "placed_at", path = "$.placedAt", type = "timestamp" },
          { name = "note", path = "$.note" },
          { name = "kafka_ts", from = "timestamp", type = "timestamp" },
        ]"#;
    let config = db.write(
        "arrays.toml",
        &format!(
            "[[sync]]\ntopics = [\"full\"]\ntable = \"by_array\"\n{columns}\n\n\
             [[sync]]\ntopics = [\"gaps\"]\ntable = \"by_values\"\n{columns}\n"
        ),
    );
    let msg = |id: i64, ct: &str| {
        serde_json::json!({"changeType": ct, "id": id, "total": id as f64 / 4.0, "paid": id % 2 == 0,
            "lines": [{"sku": format!("S-{id}"), "qty": id}], "placedAt": 1764000000000_i64 + id * 250,
            "note": format!("note \"{id}\" \u{e9}\\")})
    };
    let mut records = Vec::new();
    for topic in ["full", "gaps"] {
        for id in 1..=40 {
            records.push((topic, 0, id, msg(id, "CREATED")));
        }
        records.push((topic, 0, 41, msg(7, "UPDATED")));
        records.push((topic, 0, 42, msg(3, "DELETED")));
    }
    // Only the second table's batch has a NULL: a record without its note.
    records.push((
        "gaps",
        0,
        43,
        serde_json::json!({"changeType": "CREATED", "id": 99, "total": 1.0,
        "paid": true, "lines": [], "placedAt": 1764000000000_i64}),
    ));
    let records: Vec<(&str, i32, i64, serde_json::Value)> = records;
    let file = db.write("orders.json", &make_event(&records));
    let run = replay_config(&db, &config, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (79, 2, 0),
        "{report:?}"
    );
    let cols = [
        "order_id",
        "total",
        "paid",
        "lines",
        "placed_at",
        "note",
        "kafka_ts",
    ];
    let by_array = db.rows("by_array", &cols, "order_id").await;
    let mut by_values = db.rows("by_values", &cols, "order_id").await;
    let at = by_values.iter().position(|r| r[0] == "99");
    assert_eq!(
        at.map(|i| by_values.remove(i)[5].clone()),
        Some("NULL".to_string())
    );
    assert_eq!(by_array.len(), 39);
    assert_eq!(by_array, by_values);
    let seven = by_array.iter().find(|r| r[0] == "7");
    assert_eq!(seven.map(|r| r[5].as_str()), Some("note \"7\" \u{e9}\\"));
}

async fn large_batches_are_chunked_under_the_bind_limit(backend: Backend) {
    let db = TestDb::new(backend, &format!("large_{backend:?}")).await;
    // 20 000 planets over 4 partitions: more rows than one statement may bind on any backend.
    let records: Vec<_> = (0..20_000)
        .map(|i| {
            let uuid = format!("{i:08}-0000-4000-8000-000000000000");
            let ct = if i % 10 == 9 { "DELETED" } else { "CREATED" };
            (
                "servicea.planet",
                i % 4,
                i as i64,
                serde_json::json!({"changeType": ct, "planetUuid": uuid,
                "planetName": format!("planet {i}")}),
            )
        })
        .collect();
    let file = db.write("large.json", &make_event(&records));
    let run = replay(&db, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        (run.reports()[0].upserted, run.reports()[0].deleted),
        (18_000, 2_000)
    );
    assert_eq!(db.count("servicea_planet").await, 18_000);
}

/// A typed sync with a column of every type the bulk statements bind as a PostgreSQL array (`int2[]`,
/// `int4[]`, `int8[]`, `float4[]`, `float8[]`, `bool[]`, `text[]`, `jsonb[]`, `timestamptz[]`), none NULL.
mod kinds {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "typed_kinds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub small: i16,
        pub big: i64,
        pub ratio: f32,
        pub precise: f64,
        pub flag: bool,
        pub name: String,
        pub doc: Json,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl msk_sync::sync::typed::FromKafkaEvent for kinds::Model {
    fn from_kafka_event(message: &msk_sync::message::Message<'_>) -> Result<Self, String> {
        use msk_sync::sync::typed::field;
        let millis: i64 = field(message, "atMillis")?;
        Ok(Self {
            id: field(message, "id")?,
            small: field(message, "small")?,
            big: field(message, "big")?,
            ratio: field(message, "ratio")?,
            precise: field(message, "precise")?,
            flag: field(message, "flag")?,
            name: field(message, "name")?,
            doc: field(message, "doc")?,
            at: sea_orm::prelude::DateTimeUtc::from_timestamp_millis(millis)
                .ok_or("atMillis: out of range")?,
        })
    }
}

/// Every value of a typed row reaches the table as it was: on PostgreSQL through one `UNNEST` of typed arrays
/// (a batch without a NULL), elsewhere through `VALUES`; the delete goes the same way by key.
async fn every_typed_column_type_round_trips(backend: Backend) {
    use sea_orm::EntityTrait;
    let db = TestDb::new(backend, &format!("typed_kinds_{backend:?}")).await;
    let app = msk_sync::App::typed::<kinds::Entity>("typed-kinds", "kinds");
    let h = app
        .handler(&msk_sync::config::Config::default(), Some(&db.url))
        .await
        .unwrap();
    // Values at each type's edges where all three databases hold them exactly (MariaDB's TIMESTAMP ends in
    // 2038 and keeps whole seconds; floats that binary fractions represent exactly).
    let row = |id: i32, small: i16, big: i64, ratio: f32, flag: bool, at: i64| kinds::Model {
        id,
        small,
        big,
        ratio,
        precise: f64::from(ratio) * 1e6 + 0.125,
        flag,
        name: format!("name {id} ü"),
        doc: serde_json::json!({"id": id, "tags": ["a", "b"], "nested": {"n": big}}),
        at: sea_orm::prelude::DateTimeUtc::from_timestamp_millis(at).unwrap(),
    };
    let rows = [
        row(1, i16::MIN, i64::MIN, -0.5, true, 1_000),
        row(2, i16::MAX, i64::MAX, 1.25, false, 2_000_000_000_000),
        row(3, 0, 0, 0.0, true, 1_764_000_000_000),
        row(4, 7, 7, 3.75, false, 1_764_000_001_000),
    ];
    let message = |m: &kinds::Model, change: &str| {
        serde_json::json!({"changeType": change, "id": m.id, "small": m.small, "big": m.big,
            "ratio": m.ratio, "precise": m.precise, "flag": m.flag, "name": m.name, "doc": m.doc,
            "atMillis": m.at.timestamp_millis()})
    };
    let records: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, m)| ("kinds", 0, i as i64, message(m, "CREATED")))
        .collect();
    let report = h
        .handle_json(serde_json::from_str(&make_event(&records)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (report.upserted, report.dead_lettered),
        (4, 0),
        "{report:?}"
    );
    let mut read = kinds::Entity::find().all(&db.conn).await.unwrap();
    read.sort_by_key(|m| m.id);
    assert_eq!(read, rows.to_vec());
    // The upsert replaces every column; the delete (by the whole model's key) removes one row.
    let mut changed = rows[1].clone();
    changed.small = -1;
    changed.flag = true;
    changed.doc = serde_json::json!([1, 2, 3]);
    let records = [
        ("kinds", 0, 10, message(&changed, "UPDATED")),
        ("kinds", 0, 11, message(&rows[2], "DELETED")),
    ];
    let report = h
        .handle_json(serde_json::from_str(&make_event(&records)).unwrap())
        .await
        .unwrap();
    assert_eq!((report.upserted, report.deleted), (1, 1), "{report:?}");
    let mut read = kinds::Entity::find().all(&db.conn).await.unwrap();
    read.sort_by_key(|m| m.id);
    assert_eq!(read, vec![rows[0].clone(), changed, rows[3].clone()]);
}

/// An MSK event from (topic, partition, offset, message) tuples; timestamps follow offsets, header source=test.
fn make_event(records: &[(&str, i32, i64, serde_json::Value)]) -> String {
    use base64::Engine;
    let mut map = serde_json::Map::new();
    for (topic, partition, offset, message) in records {
        let value =
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(message).unwrap());
        let list = map
            .entry(format!("{topic}-{partition}"))
            .or_insert_with(|| serde_json::json!([]));
        list.as_array_mut().unwrap().push(serde_json::json!({
            "topic": topic, "partition": partition, "offset": offset, "timestamp": 1764000000000_i64 + offset,
            "timestampType": "CREATE_TIME", "value": value, "headers": [{"source": [116, 101, 115, 116]}]
        }));
    }
    serde_json::json!({"eventSource": "aws:kafka", "records": map}).to_string()
}

// --- invocations that are wrong, and a database that goes away -------------------------------------------

#[tokio::test]
async fn bad_invocations_exit_2_and_name_the_problem() {
    let db = TestDb::new(Backend::Sqlite, "bad_invocations").await;
    let not_msk = db.write("sqs.json", r#"{"Records": [{"eventSource": "aws:sqs"}]}"#);
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(&default_config()),
        &[not_msk.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("sqs.json: not an MSK event"),
        "{}",
        run.stderr
    );

    let run = replay(&db, &["no-such-file.json"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no-such-file.json: cannot read"),
        "{}",
        run.stderr
    );

    // Files are checked before anything is applied.
    let run = replay(&db, &["mixed-partitions.json", "no-such-file.json"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty());

    let bad = db.write("bad.toml", "[[sync]]\ntopics = [\"t\"]\ntable = \"x; drop table y\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", path = \"$..[\" }]\n");
    let run = replay_config(&db, &bad, &["mixed-partitions.json"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("not a plain SQL identifier"),
        "{}",
        run.stderr
    );

    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &db.url,
            "--config",
            "/nonexistent.toml",
            "x.json",
        ],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent.toml: cannot read"),
        "{}",
        run.stderr
    );

    let run = cli(&entity_sync(), &["frobnicate"]).await;
    assert_eq!(run.code, 2);
    // Nothing above created the default SQLite file or any table.
    assert_eq!(db.count_tables().await, 0);
}

#[tokio::test]
async fn config_check_lists_every_problem() {
    let db = TestDb::new(Backend::Sqlite, "config_check").await;
    let bad = db.write(
        "bad.toml",
        r#"
        [[sync]]
        topics = ["orders", "["]
        table = "orders; DROP TABLE users"
        key = ["id"]
        columns = [
          { name = "id", path = "$.id[", type = "integer" },
          { name = "total", path = "$.total", type = "money" },
          { name = "src", from = "partitionz" },
        ]
        "#,
    );
    let run = cli(&entity_sync(), &["config", "check", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 2);
    for needle in [
        "table \"orders; DROP TABLE users\" is not a plain SQL identifier",
        "column 1 (\"id\"): bad JSONPath \"$.id[\"",
        "column 2 (\"total\"): unknown type \"money\"",
        "column 3 (\"src\"): unknown from \"partitionz\"",
        "5 problem(s)",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            run.stderr
        );
    }
    let run = cli(&entity_sync(), &["config", "check", &default_config()]).await;
    assert_eq!(
        (run.code, run.stdout.trim_end().ends_with(": ok")),
        (0, true),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn dry_run_prints_messages_and_writes_nothing() {
    let db = TestDb::new(Backend::Sqlite, "dry_run").await;
    let file = event_file("malformed.json").display().to_string();
    let config = default_config();
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--dry-run",
            "--database-url",
            &db.url,
            "--config",
            &config,
            &file,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0]["outcome"], "upsert");
    assert_eq!(lines[0]["message"]["planetName"], "Good before");
    assert_eq!(lines[0]["message"]["kafkaTopic"], "servicea.planet");
    assert_eq!(
        lines[0]["message"]["kafkaRecordTimestamp"],
        1764000002000_i64
    );
    assert_eq!(lines[3]["reason"], "Unknown changeType ARCHIVED");
    assert_eq!(db.count_tables().await, 0);
}

/// The database connection dies after two of the batch's INSERT statements went through (the proxy cuts when
/// the third chunk's first row goes over the wire; statements are prepared once, so SQL text is no marker):
/// the transaction
/// must leave nothing behind, `replay` exits 1, the Lambda handler returns an error, and a retry applies all.
async fn database_goes_away_mid_batch(backend: Backend) {
    let pattern: &'static [u8] = b"planet-0010-";
    let db = TestDb::new(backend, &format!("outage_{backend:?}")).await;
    // Create the tables first, so the cut hits the batch's own statements.
    assert_eq!(replay(&db, &["planet-created.json"]).await.code, 0);
    let before = db.planets().await;

    let records: Vec<_> = (0..60)
        .map(|i| {
            (
                "servicea.planet",
                i % 3,
                i as i64,
                serde_json::json!({"planetUuid": format!("planet-{i:04}-end"), "planetName": "x"}),
            )
        })
        .chain([(
            "servicea.planet",
            0,
            1000,
            serde_json::json!({"changeType": "BOGUS", "planetUuid": "p"}),
        )])
        .collect();
    let file = db.write("big.json", &make_event(&records));
    let config = db.write(
        "small-chunks.toml",
        &format!(
            "[database]\nmax_rows_per_statement = 5\n{}",
            std::fs::read_to_string(default_config()).unwrap()
        ),
    );

    let upstream = host_port(&server_url(backend));
    let proxy = CutProxy::start(upstream.clone(), pattern, 1).await;
    let proxied = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &proxied,
            "--config",
            config.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(proxy.was_cut(), "the proxy never saw the third chunk");
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr
            .contains("transient failure, batch not applied (retry it)"),
        "{}",
        run.stderr
    );
    assert_eq!(db.planets().await, before, "a partial batch was written");
    assert_eq!(
        db.count("msk_sync_dead_letter").await,
        0,
        "dead letters outlived the rollback"
    );

    // The same through the handler Lambda calls: an error, so Lambda retries the batch.
    let proxy = CutProxy::start(upstream, pattern, 1).await;
    let proxied = db.url.replacen(
        &host_port(&server_url(backend)),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    let app = entity_sync();
    let handler = app
        .load(Some(&config))
        .unwrap()
        .handler(Some(&proxied))
        .await
        .unwrap();
    let payload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    match handler.handle_json(payload).await {
        Err(HandlerError::Transient(_)) => {}
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert_eq!(db.planets().await, before);

    // The retry, with the database back.
    let run = replay_config(&db, &config, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count("servicea_planet").await, 61);
    assert_eq!(db.count("msk_sync_dead_letter").await, 1);
}

#[tokio::test]
async fn postgres_goes_away_mid_batch() {
    database_goes_away_mid_batch(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_goes_away_mid_batch() {
    database_goes_away_mid_batch(Backend::MariaDb).await;
}

/// A value the mapping accepts but the database refuses (PostgreSQL: a NUL character in text; MariaDB: a planet
/// name longer than the typed entity's varchar(255)) must not fail the batch on every retry: that row is
/// dead-lettered with the database's reason, minus the value, and the rest of the batch is applied.
async fn rows_the_database_refuses_are_dead_lettered(backend: Backend) {
    let db = TestDb::new(backend, &format!("refused_{backend:?}")).await;
    let (app, config, poison) = match backend {
        Backend::Postgres => (
            entity_sync(),
            Some(default_config()),
            serde_json::json!({"planetUuid": "p2", "planetName": "nul\u{0}inside"}),
        ),
        _ => (
            planet_sync::app(),
            None,
            serde_json::json!({"planetUuid": "p2", "planetName": "far future ".repeat(30)}),
        ),
    };
    let event = make_event(&[
        (
            "servicea.planet",
            0,
            1,
            serde_json::json!({"planetUuid": "p1", "planetName": "one", "seenAt": 0}),
        ),
        ("servicea.planet", 0, 2, poison),
        (
            "servicea.planet",
            1,
            3,
            serde_json::json!({"changeType": "ARCHIVED", "planetUuid": "p9"}),
        ),
        (
            "servicea.planet",
            1,
            4,
            serde_json::json!({"planetUuid": "p3", "planetName": "three", "seenAt": 0}),
        ),
        (
            "servicea.planet",
            1,
            5,
            serde_json::json!({"changeType": "DELETED", "planetUuid": "p4"}),
        ),
    ]);
    let file = db.write("refused.json", &event);
    let run = replay_with(&app, &db, config.as_deref(), &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (
            report.status,
            report.upserted,
            report.deleted,
            report.dead_lettered
        ),
        (400, 2, 1, 2),
        "{report:?}"
    );
    // Batch order in the report, whatever stage found the problem.
    assert_eq!(
        report.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let reason = report.records[0].reason.clone().unwrap();
    assert!(
        reason.starts_with("servicea_planet: the database refused the row ("),
        "{reason}"
    );
    assert!(
        !reason.contains("nul") && !reason.contains("far future"),
        "the reason quotes the value: {reason}"
    );
    assert_eq!(
        db.rows("servicea_planet", &["uuid"], "uuid").await,
        vec![vec!["p1"], vec!["p3"]]
    );
    let dead = db.dead_letters().await;
    assert_eq!(dead.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(dead[0].1, reason);
}

#[tokio::test]
async fn postgres_refused_rows_are_dead_lettered() {
    rows_the_database_refuses_are_dead_lettered(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_refused_rows_are_dead_lettered() {
    rows_the_database_refuses_are_dead_lettered(Backend::MariaDb).await;
}

/// MySQL compares text case-blind by default; Kafka keys and the batch's collapse do not. The tables msk-sync
/// creates use a binary collation, so "abc" and "ABC" stay two entities.
#[tokio::test]
async fn mariadb_keys_are_case_sensitive() {
    let db = TestDb::new(Backend::MariaDb, "case_keys").await;
    let event = make_event(&[
        (
            "servicea.planet",
            0,
            1,
            serde_json::json!({"planetUuid": "abc", "planetName": "lower"}),
        ),
        (
            "servicea.planet",
            0,
            2,
            serde_json::json!({"planetUuid": "ABC", "planetName": "upper"}),
        ),
        (
            "servicea.planet",
            0,
            3,
            serde_json::json!({"changeType": "DELETED", "planetUuid": "abc"}),
        ),
    ]);
    let file = db.write("case.json", &event);
    let run = replay(&db, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        db.planets().await,
        vec![("ABC".to_string(), "upper".to_string())]
    );
}

/// entity-sync has no built-in config: without a file named (--config, MSK_SYNC_CONFIG) or ./msk-sync.toml in the
/// working directory it refuses to run and says how to give one, instead of applying a sample's mapping.
#[tokio::test]
async fn entity_sync_without_a_config_refuses_to_run() {
    let db = TestDb::new(Backend::Sqlite, "no_config").await;
    let run = replay_with(&entity_sync(), &db, None, &["mixed-partitions.json"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no config: pass --config FILE"),
        "{}",
        run.stderr
    );
}

/// aether's emit filter and masking, before mapping: a message that is not published is counted as filtered and
/// never written; fields classified above the emit level never reach a column, nested ones included.
async fn filtered_and_masked_messages_never_reach_the_table(backend: Backend) {
    let db = TestDb::new(backend, &format!("masked_{backend:?}")).await;
    let cols = ["uuid", "name", "discovered_by", "galaxy", "sector"];
    let config = repo().join("events/masked.toml").display().to_string();
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(&config),
        &["planet-classified.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.status, report.upserted, report.filtered),
        (200, 2, 1),
        "{report:?}"
    );
    assert_eq!(
        (report.records[0].offset, report.records[0].outcome),
        (501, Outcome::Filtered)
    );
    let rows = db.rows("servicea_planet_classified", &cols, "uuid").await;
    assert_eq!(
        rows,
        vec![
            vec![A, "Arrakis", "Pardot Kynes", "Known Universe", "NULL"],
            vec![C, "Caladan", "NULL", "NULL", "NULL"],
        ]
    );

    // The same at emit level "public": the confidential field goes too.
    let public = db.sample_config(
        "masked.toml",
        &[("emit_level = \"confidential\"", "emit_level = \"public\"")],
        "public.toml",
    );
    let run = replay_config(&db, &public, &["planet-classified.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = db.rows("servicea_planet_classified", &cols, "uuid").await;
    assert_eq!(
        rows[0],
        vec![A, "Arrakis", "NULL", "Known Universe", "NULL"]
    );
}

#[tokio::test]
async fn dry_run_shows_masking_and_config_check_names_unknown_levels() {
    let db = TestDb::new(Backend::Sqlite, "mask_dry_run").await;
    let config = repo().join("events/masked.toml").display().to_string();
    let file = event_file("planet-classified.json").display().to_string();
    let run = cli(
        &entity_sync(),
        &["replay", "--dry-run", "--config", &config, &file],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0]["message"]["location"],
        serde_json::json!({"galaxy": "Known Universe"})
    );
    assert_eq!(lines[0]["message"]["discoveredBy"], "Pardot Kynes");
    assert_eq!(lines[1]["outcome"], "filtered");
    assert!(
        lines[1].get("message").is_none(),
        "a filtered message is not shown"
    );
    assert!(
        !run.stdout.contains("Canopus") && !run.stdout.contains("Ophiuchi"),
        "a secret field leaked"
    );

    let bad = db.sample_config("masked.toml", &[(LEVELS, TWO_LEVELS)], "bad-levels.toml");
    let run = cli(&entity_sync(), &["config", "check", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("mask 1: field Planet.discoveredBy: aetherMaskingLevel \"confidential\" is not one of levels"),
        "{}",
        run.stderr
    );
}

/// Avro container files (several planets in one record) and Confluent-framed datums, masked by their own
/// writer schema; an unknown schema id and a truncated datum are dead-lettered; a JSON value that no schema
/// classifies is dead-lettered rather than applied unmasked.
async fn avro_values_are_decoded_masked_and_applied(backend: Backend) {
    let db = TestDb::new(backend, &format!("avro_{backend:?}")).await;
    let config = repo().join("events/avro.toml").display().to_string();
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(&config),
        &[
            "planet-avro-ocf.json",
            "planet-avro-confluent.json",
            "planet-created.json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = run.reports();
    assert_eq!(
        (
            reports[0].received,
            reports[0].messages,
            reports[0].upserted
        ),
        (2, 3, 2),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        (
            reports[1].upserted,
            reports[1].deleted,
            reports[1].dead_lettered
        ),
        (1, 1, 2),
        "{:?}",
        reports[1]
    );
    let reasons: Vec<_> = reports[1]
        .records
        .iter()
        .map(|r| (r.offset, r.reason.clone().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (801, "unknown schema id 9".to_string()),
            (
                802,
                "Avro datum is truncated (95 bytes): string of 8 bytes, 2 left, in field location.sector (record Location), at byte 92"
                    .to_string()
            )
        ]
    );
    assert_eq!(reports[2].dead_lettered, 1);
    assert!(
        reports[2].records[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("no schema classifies this message")
    );
    let rows = db
        .rows(
            "servicea_planet_avro",
            &["uuid", "name", "discovered_by", "galaxy", "sector"],
            "uuid",
        )
        .await;
    assert_eq!(
        rows,
        vec![
            vec![A, "Dune", "Pardot Kynes", "Known Universe", "NULL"],
            vec![
                "00000002-7c1e-4b8a-9f3d-5e2a1c0b0002",
                "Giedi Prime",
                "House Harkonnen",
                "Known Universe",
                "NULL"
            ],
        ]
    );
}

/// A classification level missing from `levels` in a schema known at start-up stops the start, naming field and
/// level, also when the mask takes its schemas from the codec.
#[tokio::test]
async fn unknown_levels_in_codec_schemas_fail_at_start_up() {
    let db = TestDb::new(Backend::Sqlite, "avro_levels").await;
    let config = db.sample_config("avro.toml", &[(LEVELS, TWO_LEVELS)], "levels.toml");
    let run = replay_config(&db, &config, &["planet-avro-ocf.json"]).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.stderr.contains(
            "field Planet.discoveredBy: aetherMaskingLevel \"confidential\" is not one of levels"
        ),
        "{}",
        run.stderr
    );
}

/// JSON keys: columns read paths into the key, and a tombstone deletes the entity its (composite) key names.
#[tokio::test]
async fn json_keys_feed_columns_and_tombstones() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let db = TestDb::new(Backend::Sqlite, "json_keys").await;
    let config = db.write(
        "keys.toml",
        r#"
        [codec]
        value = "json"
        key = "json"

        [[sync]]
        topics = ["shop.orders"]
        table = "shop_order"
        key = ["shop", "order_id"]
        columns = [
          { name = "shop", from = "key:$.shop" },
          { name = "order_id", from = "key:$.id", type = "integer" },
          { name = "total", path = "$.total", type = "float" },
        ]
        "#,
    );
    let record = |offset: i64, key: &[u8], value: Option<&str>| {
        serde_json::json!({"topic": "shop.orders", "partition": 0, "offset": offset, "timestamp": 1764000000000_i64 + offset,
            "key": b64(key), "value": value.map(|v| b64(v.as_bytes())), "headers": []})
    };
    let event = serde_json::json!({"eventSource": "aws:kafka", "records": {"shop.orders-0": [
        record(1, br#"{"shop":"eu","id":1}"#, Some(r#"{"total": 10.5}"#)),
        record(2, br#"{"shop":"eu","id":2}"#, Some(r#"{"total": 20}"#)),
        record(3, br#"{"shop":"us","id":1}"#, Some(r#"{"total": 30}"#)),
        record(4, br#"{"shop":"eu","id":1}"#, None),
        record(5, b"not json", Some(r#"{"total": 1}"#)),
    ]}});
    let file = db.write("orders.json", &event.to_string());
    let run = replay_config(&db, &config, &[file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (2, 1, 1),
        "{report:?}"
    );
    assert!(
        report.records[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("key is not valid JSON")
    );
    let rows = db
        .rows("shop_order", &["shop", "order_id", "total"], "total")
        .await;
    assert_eq!(rows, vec![vec!["eu", "2", "20.0"], vec!["us", "1", "30.0"]]);
}

/// sqlx 0.9.0 stopped setting TCP_NODELAY (see vendor/README.md). Without it, a statement that leaves in more
/// than one write (TLS records, large binds) waits ~40 ms for the server's delayed ACK, every time. The sink's
/// connections go through a proxy on a port of their own, so the sockets checked are exactly the sink's.
async fn database_connections_disable_nagle(backend: Backend) {
    use std::os::fd::BorrowedFd;
    let db = TestDb::new(backend, "nodelay").await;
    let (proxy, proxied) = ToggleProxy::in_front_of(&db).await;
    let handler = entity_sync_handler(&proxied).await;
    let payload: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(event_file("mixed-partitions.json")).unwrap(),
    )
    .unwrap();
    let report = handler.handle_json(payload).await.unwrap();
    assert_eq!(report.upserted, 6);

    let mut sockets = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Some(fd) = entry
            .unwrap()
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // SAFETY: only borrowed for the two getsockopt calls below; a descriptor closed meanwhile by another
        // thread makes them fail (EBADF), which is skipped like any descriptor that is not a socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let to_proxy = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == proxy.port);
        if to_proxy {
            sockets += 1;
            assert!(
                socket.tcp_nodelay().unwrap(),
                "a {backend:?} connection without TCP_NODELAY"
            );
        }
    }
    assert!(sockets > 0, "no {backend:?} connection found to check");
}

#[tokio::test]
async fn postgres_connections_disable_nagle() {
    database_connections_disable_nagle(Backend::Postgres).await
}

#[tokio::test]
async fn mariadb_connections_disable_nagle() {
    database_connections_disable_nagle(Backend::MariaDb).await
}
