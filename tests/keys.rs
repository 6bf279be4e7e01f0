//! One key, one version (#34): what is one key or one version in memory (the collapse, the stale check, the
//! tombstones, the SQL guard) is exactly what is one in the database. On SQLite, PostgreSQL and MariaDB.

use base64::Engine;
use msk_sync::pipeline::Handler;
use msk_sync::report::BatchReport;
use msk_sync_tests::*;
use serde_json::{Value, json};

on_every_backend!(
    timestamp_keys_within_one_millisecond_are_one_entity,
    a_timestamp_version_older_by_microseconds_does_what_the_report_says,
    a_delete_remembered_for_a_timestamp_key_is_that_keys_and_the_databases,
    changes_older_than_their_rows_are_stale_whatever_the_key_type,
);

const TABLE: &str = "keyed";

/// A sync of `TABLE` keyed by `id` of type `key_type`, with a `name`, and a version column `v` of type
/// `version_type` if given.
fn config(key_type: &str, version_type: Option<&str>) -> String {
    let version = version_type
        .map(|t| format!(r#"  {{ name = "v", path = "$.v", type = "{t}", version = true }},"#))
        .unwrap_or_default();
    format!(
        r#"
[[sync]]
topics = ["t"]
table = "{TABLE}"
key = ["id"]
columns = [
  {{ name = "id", path = "$.id", type = "{key_type}" }},
  {{ name = "name", path = "$.name" }},
{version}
]
"#
    )
}

async fn handler(db: &TestDb, toml: &str) -> Handler {
    let path = db.write("keys.toml", toml);
    entity_sync()
        .load(Some(&path))
        .unwrap()
        .handler(Some(&db.url))
        .await
        .unwrap()
}

/// An event of `messages` in one partition, in order.
fn event(messages: &[Value]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let value = base64::engine::general_purpose::STANDARD.encode(m.to_string());
            json!({
                "topic": "t", "partition": 0, "offset": i, "timestamp": 1_764_000_000_000_i64 + i as i64,
                "timestampType": "CREATE_TIME", "value": value, "headers": []
            })
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {"t-0": records}})
}

async fn apply(h: &Handler, messages: &[Value]) -> BatchReport {
    h.handle_json(event(messages))
        .await
        .unwrap_or_else(|e| panic!("batch failed: {e}"))
}

async fn names(db: &TestDb) -> Vec<String> {
    db.rows(TABLE, &["name"], "name")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

async fn timestamp_keys_within_one_millisecond_are_one_entity(backend: Backend) {
    let db = TestDb::new(backend, "keys_ts_ms").await;
    let h = handler(&db, &config("timestamp", None)).await;
    // Before: PostgreSQL failed every retry ("ON CONFLICT DO UPDATE command cannot affect row a second
    // time"), MariaDB kept the earlier one, SQLite wrote two rows.
    let r = apply(
        &h,
        &[
            json!({"id": "2026-01-01T00:00:00.0000001Z", "name": "first"}),
            json!({"id": "2026-01-01T00:00:00.0000002Z", "name": "second"}),
            json!({"id": "2026-01-01T00:00:00.000000300Z", "name": "third"}),
            json!({"id": "2026-01-01T00:00:00.001Z", "name": "other"}),
        ],
    )
    .await;
    assert_eq!((r.upserted, r.superseded), (2, 2), "{r:?}");
    assert_eq!(names(&db).await, ["other", "third"]);
    // A later batch of the same millisecond updates that row.
    let r = apply(
        &h,
        &[json!({"id": "2026-01-01T00:00:00.000999Z", "name": "fourth"})],
    )
    .await;
    assert_eq!(r.upserted, 1, "{r:?}");
    assert_eq!(names(&db).await, ["fourth", "other"]);
}

async fn a_timestamp_version_older_by_microseconds_does_what_the_report_says(backend: Backend) {
    let db = TestDb::new(backend, "keys_ts_version").await;
    let h = handler(&db, &config("text", Some("timestamp"))).await;
    apply(
        &h,
        &[
            json!({"id": "a", "name": "a1", "v": "2026-01-01T00:00:00.000200Z"}),
            json!({"id": "b", "name": "b1", "v": "2026-01-01T00:00:00.000200Z"}),
        ],
    )
    .await;
    // Versions a few µs older than the rows: the same millisecond, a tie, so they apply; before, PostgreSQL
    // and SQLite reported them applied and the SQL guard (at µs) left the rows as they were.
    let r = apply(
        &h,
        &[
            json!({"id": "a", "changeType": "DELETED", "v": "2026-01-01T00:00:00.000100Z"}),
            json!({"id": "b", "name": "b2", "v": "2026-01-01T00:00:00.000100Z"}),
        ],
    )
    .await;
    assert_eq!((r.deleted, r.upserted, r.stale), (1, 1, 0), "{r:?}");
    assert_eq!(names(&db).await, ["b2"]);
    // A millisecond older is stale, and the report says so.
    let r = apply(
        &h,
        &[json!({"id": "b", "name": "b0", "v": "2025-12-31T23:59:59.999900Z"})],
    )
    .await;
    assert_eq!((r.upserted, r.stale), (0, 1), "{r:?}");
    assert_eq!(names(&db).await, ["b2"]);
}

async fn a_delete_remembered_for_a_timestamp_key_is_that_keys_and_the_databases(backend: Backend) {
    let db = TestDb::new(backend, "keys_ts_tomb").await;
    let h = handler(&db, &config("timestamp", Some("integer"))).await;
    apply(
        &h,
        &[
            json!({"id": "2026-01-01T00:00:00.000100Z", "name": "x1", "v": 1}),
            json!({"id": "2026-01-01T00:00:00.002Z", "name": "y1", "v": 1}),
        ],
    )
    .await;
    let r = apply(
        &h,
        &[json!({"id": "2026-01-01T00:00:00.000100Z", "changeType": "DELETED", "v": 5})],
    )
    .await;
    assert_eq!(r.deleted, 1, "{r:?}");
    assert_eq!(names(&db).await, ["y1"]);
    // …000200 is the key the database holds as …000100's (one millisecond): an older create of it is stale,
    // and a newer one applies. Another millisecond is another key, never touched by the tombstone.
    let r = apply(
        &h,
        &[
            json!({"id": "2026-01-01T00:00:00.000200Z", "name": "x3", "v": 3}),
            json!({"id": "2026-01-01T00:00:00.002300Z", "name": "y3", "v": 3}),
        ],
    )
    .await;
    assert_eq!((r.upserted, r.stale), (1, 1), "{r:?}");
    assert_eq!(names(&db).await, ["y3"]);
    let r = apply(
        &h,
        &[json!({"id": "2026-01-01T00:00:00.000200Z", "name": "x6", "v": 6})],
    )
    .await;
    assert_eq!((r.upserted, r.stale), (1, 0), "{r:?}");
    assert_eq!(names(&db).await, ["x6", "y3"]);
}

async fn changes_older_than_their_rows_are_stale_whatever_the_key_type(backend: Backend) {
    for (key_type, ids) in [
        ("float", [json!(1.5), json!(-0.0), json!(2)]),
        ("boolean", [json!(true), json!(false), json!("true")]),
        (
            "timestamp",
            [
                json!("2026-01-01T00:00:00Z"),
                json!("2026-01-01T00:00:00.5+01:00"),
                json!(1_767_225_600_001_i64),
            ],
        ),
        ("integer", [json!(1), json!(2), json!(1.0)]),
        ("text", [json!("a"), json!("b"), json!("a")]),
    ] {
        let db = TestDb::new(backend, &format!("keys_stale_{key_type}")).await;
        let h = handler(&db, &config(key_type, Some("integer"))).await;
        let r = apply(
            &h,
            &[
                json!({"id": ids[0], "name": "new", "v": 5}),
                json!({"id": ids[1], "name": "new1", "v": 5}),
            ],
        )
        .await;
        assert_eq!(r.upserted, 2, "{key_type}: {r:?}");
        // Older than their rows: stale, in the report as in the table. Before: float and boolean keys (and
        // SQLite's timestamp keys) were counted upserted, the SQL guard keeping the rows.
        let r = apply(
            &h,
            &[
                json!({"id": ids[0], "name": "old", "v": 4}),
                json!({"id": ids[1], "name": "old1", "v": 3}),
            ],
        )
        .await;
        assert_eq!((r.upserted, r.stale), (0, 2), "{key_type}: {r:?}");
        let r = apply(&h, &[json!({"id": ids[2], "name": "newer", "v": 6})]).await;
        assert_eq!((r.upserted, r.stale), (1, 0), "{key_type}: {r:?}");
        let expected: &[&str] = match key_type {
            // 1.0 is the integer 1; "true" the boolean true.
            "integer" | "boolean" | "text" => &["new1", "newer"],
            _ => &["new", "new1", "newer"],
        };
        assert_eq!(names(&db).await, expected, "{key_type}");
    }
}

/// `json` keys (PostgreSQL and SQLite; MariaDB cannot index a JSON column: tests/preflight.rs).
async fn json_keys_are_canonical(backend: Backend) {
    let db = TestDb::new(backend, "keys_json").await;
    let h = handler(&db, &config("json", Some("integer"))).await;
    // Before: PostgreSQL failed every retry ("cannot affect row a second time"); SQLite wrote two rows each.
    let r = apply(
        &h,
        &[
            json!({"id": {"a": 1, "b": 2}, "name": "ab1", "v": 1}),
            json!({"id": {"b": 2, "a": 1}, "name": "ab2", "v": 1}),
            json!({"id": 1, "name": "one", "v": 1}),
            json!({"id": 1.0, "name": "one.0", "v": 1}),
            json!({"id": [1, {"y": 2.0, "x": -0.0}], "name": "arr", "v": 1}),
        ],
    )
    .await;
    assert_eq!((r.upserted, r.superseded), (3, 2), "{r:?}");
    assert_eq!(names(&db).await, ["ab2", "arr", "one.0"]);
    let r = apply(
        &h,
        &[
            json!({"id": {"b": 2.0, "a": 1}, "name": "ab0", "v": 0}),
            json!({"id": [1.0, {"x": 0, "y": 2}], "name": "arr2", "v": 2}),
        ],
    )
    .await;
    assert_eq!((r.upserted, r.stale), (1, 1), "{r:?}");
    assert_eq!(names(&db).await, ["ab2", "arr2", "one.0"]);
}

mod json_keys {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        json_keys_are_canonical(Backend::Sqlite).await
    }

    #[tokio::test]
    async fn postgres() {
        json_keys_are_canonical(Backend::Postgres).await
    }
}
