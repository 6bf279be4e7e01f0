//! The dead-letter table holds whatever an event can carry (issue 14 items 1, 3, 4, 5): a container file's
//! value once however many of its messages fail, control characters and topics of any length, records that
//! share coordinates; and every record is accounted for, an empty container file included.

use base64::Engine;
use msk_sync::report::Outcome;
use msk_sync_tests::*;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

on_every_backend!(
    a_container_file_s_value_is_stored_once_however_many_messages_fail,
    any_text_and_any_topic_can_be_dead_lettered,
    records_that_share_coordinates_keep_their_own_dead_letters,
    an_empty_container_file_is_accounted_for,
);

const TABLE: &str = "msk_sync_dead_letter";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A record on partition 0 at `offset` whose value is `value` (already base64, or anything a hand-made event
/// may carry).
fn record(topic: &str, offset: i64, value: &str) -> Value {
    json!({"topic": topic, "partition": 0, "offset": offset, "timestamp": 1_764_000_000_000_i64 + offset,
        "timestampType": "CREATE_TIME", "key": b64("k"), "value": value, "headers": []})
}

/// An MSK event holding `records` in the order given, each listed under its own topic and partition.
fn event(records: Vec<Value>) -> Value {
    let mut lists = serde_json::Map::new();
    for r in records {
        let list = format!("{}-{}", r["topic"].as_str().unwrap(), r["partition"]);
        lists
            .entry(list)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(r);
    }
    json!({"eventSource": "aws:kafka", "records": lists})
}

/// `replay` of `event` (written to a file) with entity-sync and the repository's msk-sync.toml.
async fn replay_event(db: &TestDb, event: &Value, extra: &[&str]) -> Run {
    let file = db.write("event.json", &event.to_string());
    let config = default_config();
    let mut args = vec!["replay", "--config", config.as_str()];
    args.extend(extra);
    let url = db.url.clone();
    if !extra.contains(&"--dry-run") {
        args.extend(["--database-url", url.as_str()]);
    }
    let file = file.display().to_string();
    args.push(file.as_str());
    cli(&entity_sync(), &args).await
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let row = db
        .conn
        .query_one_raw(Statement::from_string(db.db_backend(), sql.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Every dead-letter column msk-sync writes, as text, in key order.
async fn dump(db: &TestDb) -> Vec<Vec<String>> {
    let cols = [
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "record_occurrence",
        "message_index",
        "kafka_timestamp",
        "kafka_topic_full",
        "key_base64",
        "value_base64",
        "raw_message_index",
        "error",
    ];
    let key = &cols[..5];
    db.rows_by(TABLE, &cols, key).await
}

/// Issue 14 item 1: 40,000 one-byte records in one 54 KB value, all failing their mapping, were 40,000 copies
/// of the value (2 GB). Now: 40,000 rows, the value on one of them, the others pointing to it.
async fn a_container_file_s_value_is_stored_once_however_many_messages_fail(backend: Backend) {
    const N: i64 = 40_000;
    let db = TestDb::new(backend, &format!("dl_ocf_{backend:?}")).await;
    let event = msk_sync_bench::tiny_records_event(N as usize).unwrap();
    let value = event["records"]["servicea.planet-0"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    for round in 0..2 {
        let run = replay_event(&db, &event, &[]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report = &run.reports()[0];
        assert_eq!(
            (report.received, report.messages, report.dead_lettered),
            (1, N as usize, N as usize)
        );
        // The report (the Lambda response) lists a bounded number of them, and counts the rest.
        assert_eq!(report.records.len(), msk_sync::report::MAX_LISTED);
        assert_eq!(report.unlisted, N as usize - msk_sync::report::MAX_LISTED);
        assert!(
            run.stdout.len() < 1_000_000,
            "report of {} bytes",
            run.stdout.len()
        );
        assert_eq!(db.count(TABLE).await, N, "round {round}");
        assert_eq!(
            scalar(
                &db,
                &format!("SELECT COUNT(*) FROM {TABLE} WHERE value_base64 IS NOT NULL")
            )
            .await,
            1,
            "the value is stored once"
        );
        assert_eq!(
            scalar(
                &db,
                &format!("SELECT COUNT(*) FROM {TABLE} WHERE key_base64 IS NOT NULL")
            )
            .await,
            1,
            "and so is the key"
        );
        assert_eq!(
            scalar(
                &db,
                &format!("SELECT COUNT(*) FROM {TABLE} WHERE raw_message_index = 0 AND value_base64 IS NULL")
            )
            .await,
            N - 1,
            "every other row points to the one that holds it"
        );
        let holder = db
            .rows(
                TABLE,
                &["message_index", "value_base64", "raw_message_index"],
                "raw_message_index",
            )
            .await
            .into_iter()
            .find(|r| r[1] != "NULL")
            .unwrap();
        assert_eq!(holder, ["0", value.as_str(), "NULL"]);
    }
}

/// Issue 14 item 3: a NUL in a changeType or a topic (PostgreSQL refuses NUL in text), a topic longer than a
/// key column (MariaDB's kafka_topic was VARCHAR(255) in the primary key), a value that is not base64 and
/// carries a NUL: each is dead-lettered and the batch commits, on every backend, and a replay rewrites the
/// same rows.
async fn any_text_and_any_topic_can_be_dead_lettered(backend: Backend) {
    let db = TestDb::new(backend, &format!("dl_text_{backend:?}")).await;
    let nul_change = b64(r#"{"changeType": "X\u0000Y", "planetUuid": "p1", "planetName": "Mars"}"#);
    let long_300 = "t".repeat(300);
    let long_10k = "é".repeat(10_000);
    let good = b64(r#"{"planetUuid": "p2", "planetName": "Venus"}"#);
    let event = event(vec![
        record("servicea.planet", 1, &nul_change),
        record("servicea.planet", 2, "\u{0}not base64\\"),
        record("servicea.planet", 3, &good),
        record("servicea\u{0}planet", 4, &good),
        record(&long_300, 5, &good),
        record(&long_10k, 6, &good),
    ]);
    let mut first = Vec::new();
    for round in 0..2 {
        let run = replay_event(&db, &event, &[]).await;
        assert_eq!(run.code, 0, "round {round}: {}", run.stderr);
        let report = &run.reports()[0];
        assert_eq!(
            (report.upserted, report.dead_lettered),
            (1, 5),
            "{report:?}"
        );
        // The report's reason is the message's own text; JSON escapes the NUL.
        assert_eq!(
            report.records[0].reason.as_deref(),
            Some("Unknown changeType X\u{0}Y")
        );
        let rows = dump(&db).await;
        assert_eq!(rows.len(), 5, "{rows:?}");
        if round == 0 {
            first = rows;
        } else {
            assert_eq!(rows, first, "a replay rewrites the same rows");
        }
    }
    let by_offset = |offset: &str| {
        first
            .iter()
            .find(|r| r[2] == offset)
            .unwrap_or_else(|| panic!("no dead letter at offset {offset}"))
            .clone()
    };
    // In the table, control characters are escaped as a JSON string escapes them.
    assert_eq!(by_offset("1")[10], r"Unknown changeType X\u0000Y");
    assert_eq!(
        by_offset("1")[8],
        nul_change,
        "a base64 value is kept as it is"
    );
    assert_eq!(by_offset("2")[8], r"\u0000not base64\\");
    // A topic Kafka would not allow gets a bounded stand-in key; the whole topic is kept beside it.
    let nul_topic = by_offset("4");
    assert!(
        nul_topic[0].starts_with(r"servicea\u0000planet…"),
        "{}",
        nul_topic[0]
    );
    assert_eq!(nul_topic[6], r"servicea\u0000planet");
    for (offset, topic) in [("5", &long_300), ("6", &long_10k)] {
        let row = by_offset(offset);
        assert!(row[0].chars().count() <= 249, "{}", row[0]);
        assert!(row[0].contains('…'));
        assert_eq!(&row[6], topic);
        assert!(
            row[10].starts_with("no sync is configured for topic ")
                && row[10].chars().count() <= 1_000,
            "a reason is bounded: {} characters",
            row[10].chars().count()
        );
    }
    // A topic kept as it is has no full-topic copy.
    assert_eq!(by_offset("1")[6], "NULL");
}

/// Issue 14 item 4: two records at the same (topic, partition, offset) — Kafka never sends that, a hand-made
/// event can — both dead-lettered. PostgreSQL failed the batch forever ("ON CONFLICT DO UPDATE command cannot
/// affect row a second time"); SQLite and MariaDB kept one row, with record 2's error and record 1's value.
async fn records_that_share_coordinates_keep_their_own_dead_letters(backend: Backend) {
    let db = TestDb::new(backend, &format!("dl_dup_{backend:?}")).await;
    let first = b64(r#"{"changeType": "ARCHIVED", "planetUuid": "p1"}"#);
    let second = b64(r#"{"changeType": "RETIRED", "planetUuid": "p1"}"#);
    let event = event(vec![
        record("servicea.planet", 7, &first),
        record("servicea.planet", 7, &second),
    ]);
    let mut before = Vec::new();
    for round in 0..2 {
        let run = replay_event(&db, &event, &[]).await;
        assert_eq!(run.code, 0, "round {round}: {}", run.stderr);
        assert_eq!(run.reports()[0].dead_lettered, 2);
        let rows = dump(&db).await;
        let seen: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r[3].as_str(), r[8].as_str(), r[10].as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("0", first.as_str(), "Unknown changeType ARCHIVED"),
                ("1", second.as_str(), "Unknown changeType RETIRED"),
            ]
        );
        if round == 0 {
            before = rows;
        } else {
            assert_eq!(rows, before, "a replay rewrites the same rows");
        }
    }
}

/// Issue 14 item 5: a value that is a valid container file with no record left no trace (received 1,
/// messages 0). Now it is a message of its own with outcome `empty`, in the report and in `--dry-run`.
async fn an_empty_container_file_is_accounted_for(backend: Backend) {
    let db = TestDb::new(backend, &format!("dl_empty_{backend:?}")).await;
    let empty = b64(msk_sync_bench::tiny_records_ocf(0).unwrap());
    let good = b64(r#"{"planetUuid": "p2", "planetName": "Venus"}"#);
    let event = event(vec![
        record("servicea.planet", 1, &empty),
        record("servicea.planet", 2, &good),
    ]);
    let run = replay_event(&db, &event, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (
            report.status,
            report.received,
            report.messages,
            report.upserted,
            report.empty,
            report.dead_lettered
        ),
        (200, 2, 2, 1, 1, 0)
    );
    let listed: Vec<(i64, Outcome)> = report
        .records
        .iter()
        .map(|r| (r.offset, r.outcome))
        .collect();
    assert_eq!(listed, [(1, Outcome::Empty)]);
    assert_eq!(db.count(TABLE).await, 0, "an empty value is not an error");

    let dry = replay_event(&db, &event, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let lines: Vec<Value> = dry
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", dry.stdout);
    assert_eq!(
        (lines[0]["offset"].as_i64(), lines[0]["outcome"].as_str()),
        (Some(1), Some("empty"))
    );
}

/// Issue 18 item 1: a key that does not decode was the one rejection `--dry-run` printed no line for.
#[tokio::test]
async fn a_key_that_does_not_decode_has_its_dry_run_line() {
    let db = TestDb::new(Backend::Sqlite, "dl_key").await;
    let config = db.write(
        "json-keys.toml",
        r#"
[codec]
key = "json"

[[sync]]
topics = ["servicea.planet"]
table = "planet"
key = ["uuid"]
columns = [{ name = "uuid", path = "$.planetUuid" }]
"#,
    );
    let mut bad_key = record("servicea.planet", 1, &b64(r#"{"planetUuid": "p1"}"#));
    bad_key["key"] = json!(b64("not json"));
    let file = db.write("event.json", &event(vec![bad_key]).to_string());
    let config = config.display().to_string();
    let file = file.display().to_string();
    let run = cli(
        &entity_sync(),
        &["replay", "--config", &config, "--dry-run", &file],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(line["outcome"], "dead-letter", "{line}");
    assert!(
        line["reason"].as_str().unwrap().starts_with("key"),
        "{line}"
    );
}

/// Rows the database refuses are found while the batch is applied, after the plan's dead letters: they still
/// share their record's raw data (stored once, on the record's lowest dead-lettered message) and the report
/// lists every message in batch order. PostgreSQL refuses a NUL in text.
#[tokio::test]
async fn refused_rows_of_a_container_file_share_its_value_and_keep_batch_order() {
    let db = TestDb::new(Backend::Postgres, "dl_refused").await;
    let value = b64(msk_sync_bench::planets_ocf(&[
        (None, "p1", "one"),
        (None, "p2", "nul\u{0}inside"),
        (Some("ARCHIVED"), "p3", "three"),
        (None, "p4", "nul\u{0}again"),
    ])
    .unwrap());
    let event = event(vec![record("servicea.planet", 1, &value)]);
    let run = replay_event(&db, &event, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.upserted, report.dead_lettered),
        (1, 3),
        "{report:?}"
    );
    assert_eq!(
        report.records.iter().map(|r| r.index).collect::<Vec<_>>(),
        [1, 2, 3],
        "batch order, whatever stage found the problem"
    );
    let rows: Vec<(String, String, String)> = dump(&db)
        .await
        .into_iter()
        .map(|r| (r[4].clone(), r[8].clone(), r[9].clone()))
        .collect();
    let held = |i: &str, v: &str, at: &str| (i.to_string(), v.to_string(), at.to_string());
    assert_eq!(
        rows,
        [
            held("1", &value, "NULL"),
            held("2", "NULL", "1"),
            held("3", "NULL", "1")
        ]
    );
}

/// The binary's log of such a batch: one line per dead letter up to a bound, then one line with the rest's
/// count (40,000 lines for one record before).
#[tokio::test]
async fn a_batch_of_many_dead_letters_logs_a_bounded_number_of_lines() {
    let db = TestDb::new(Backend::Sqlite, "dl_log").await;
    let event = msk_sync_bench::tiny_records_event(5_000).unwrap();
    let file = db.write("event.json", &event.to_string());
    let out = cargo_command(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "-p",
            "entity-sync",
            "--",
            "replay",
            "--config",
        ])
        .arg(default_config())
        .arg("--database-url")
        .arg(&db.url)
        .arg(&file)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("cargo run entity-sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let logged = stderr.matches("record dead-lettered").count();
    assert_eq!(logged, 100, "{stderr}");
    assert!(stderr.contains("4900"), "the rest are counted: {stderr}");
    assert_eq!(db.count(TABLE).await, 5_000);
}
