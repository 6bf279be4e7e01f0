//! `redrive` (#15): dead letters run again through the current config. On SQLite, PostgreSQL and MariaDB.

use base64::Engine;
use msk_sync::report::BatchReport;
use msk_sync_tests::*;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

on_every_backend!(
    a_fixed_config_applies_the_dead_letters_and_deletes_them,
    a_redriven_change_older_than_its_row_is_stale,
    headers_survive_a_redrive,
    a_message_that_fails_again_keeps_its_row_with_the_new_reason_and_one_more_attempt,
    topic_selects_the_dead_letters,
    an_older_dead_letter_table_gets_its_new_columns_and_its_rows_are_redriven,
    a_container_file_redrives_only_its_dead_lettered_messages,
    planet_sync_redrives_too,
    a_dry_run_shows_the_messages_and_writes_nothing,
    two_redrives_at_once_apply_each_dead_letter_once,
);

const TABLE: &str = "planet_r";
const DEAD: &str = "msk_sync_dead_letter";
/// A path no message has: every message is dead-lettered for want of its version.
const NO_VERSION: &str = "$.noSuchVersion";
const GOOD: &str = "$.version";

fn config(version_path: &str) -> String {
    format!(
        r#"
[[sync]]
topics = ["servicea.planet", "serviceb.planet"]
table = "{TABLE}"
key = ["uuid"]
columns = [
  {{ name = "uuid", path = "$.planetUuid" }},
  {{ name = "name", path = "$.planetName" }},
  {{ name = "trace", from = "header:trace-id" }},
  {{ name = "version", path = "{version_path}", type = "integer", version = true }},
]
"#
    )
}

/// (key, version, name) upserts on `topic`, partition 0, offsets from `first_offset`, each with a trace-id
/// header `t-<key>`.
fn event(topic: &str, changes: &[(&str, i64, &str)], first_offset: i64) -> Value {
    let records: Vec<Value> = changes
        .iter()
        .enumerate()
        .map(|(i, (key, version, name))| {
            let message = json!({"planetUuid": key, "planetName": name, "version": version, "changeType": "UPDATED"});
            let value =
                base64::engine::general_purpose::STANDARD.encode(message.to_string().as_bytes());
            let trace: Vec<u8> = format!("t-{key}").into_bytes();
            json!({
                "topic": topic, "partition": 0, "offset": first_offset + i as i64,
                "timestamp": 1_764_000_000_000_i64 + first_offset + i as i64, "timestampType": "CREATE_TIME",
                "value": value, "headers": [{"trace-id": trace}]
            })
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {format!("{topic}-0"): records}})
}

/// Replays `event` with `config` through the CLI; the one report.
async fn replay_event(db: &TestDb, config: &str, event: &Value, name: &str) -> BatchReport {
    let config = db.write("sync.toml", config);
    // An absolute path: `event_file` joins it as it is.
    let file = db.write(name, &event.to_string());
    let run = replay_config(db, &config, &[&file.display().to_string()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut reports = run.reports();
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

/// `redrive` with `config` (and `extra` arguments); the chunk reports summed, checked to add up.
async fn redrive(db: &TestDb, config: &str, extra: &[&str]) -> BatchReport {
    let config = db.write("sync.toml", config);
    redrive_at(db, &config.display().to_string(), extra).await
}

/// [`redrive`] with a config file.
async fn redrive_at(db: &TestDb, config: &str, extra: &[&str]) -> BatchReport {
    let mut args = vec!["redrive", "--database-url", &db.url, "--config", config];
    args.extend(extra);
    let run = cli(&entity_sync(), &args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut sum = BatchReport::default();
    for r in run.reports() {
        assert_eq!(
            r.messages,
            r.upserted
                + r.deleted
                + r.superseded
                + r.filtered
                + r.empty
                + r.dead_lettered
                + r.stale,
            "{r:?}"
        );
        sum.received += r.received;
        sum.messages += r.messages;
        sum.upserted += r.upserted;
        sum.deleted += r.deleted;
        sum.superseded += r.superseded;
        sum.dead_lettered += r.dead_lettered;
        sum.stale += r.stale;
        sum.records.extend(r.records);
    }
    sum
}

/// The table as (uuid, name, trace, version).
async fn table(db: &TestDb) -> Vec<Vec<String>> {
    db.rows(TABLE, &["uuid", "name", "trace", "version"], "uuid")
        .await
}

/// Dead letters as (topic, offset, error, attempts), by offset.
async fn dead_letters(db: &TestDb) -> Vec<(String, i64, String, String)> {
    let mut rows: Vec<(String, i64, String, String)> = db
        .rows(
            DEAD,
            &["kafka_topic", "kafka_offset", "error", "attempts"],
            "kafka_offset",
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone(),
                r[1].parse().unwrap(),
                r[2].clone(),
                r[3].clone(),
            )
        })
        .collect();
    rows.sort();
    rows
}

async fn a_fixed_config_applies_the_dead_letters_and_deletes_them(backend: Backend) {
    let db = TestDb::new(backend, "redrive_fixed").await;
    let batch = event(
        "servicea.planet",
        &[("a", 1, "one"), ("b", 1, "bee"), ("c", 2, "sea")],
        0,
    );
    let r = replay_event(&db, &config(NO_VERSION), &batch, "b.json").await;
    assert_eq!((r.upserted, r.dead_lettered), (0, 3), "{r:?}");
    let dead = dead_letters(&db).await;
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter().all(|d| d.2.contains("version") && d.3 == "1"),
        "{dead:?}"
    );
    let r = redrive(&db, &config(GOOD), &[]).await;
    assert_eq!(
        (r.received, r.upserted, r.dead_lettered, r.stale),
        (3, 3, 0, 0),
        "{r:?}"
    );
    assert_eq!(dead_letters(&db).await, vec![]);
    assert_eq!(
        table(&db).await,
        vec![
            vec!["a", "one", "t-a", "1"],
            vec!["b", "bee", "t-b", "1"],
            vec!["c", "sea", "t-c", "2"],
        ]
    );
    // Nothing left: a second redrive has nothing to do.
    let r = redrive(&db, &config(GOOD), &[]).await;
    assert_eq!((r.received, r.messages), (0, 0), "{r:?}");
}

async fn a_redriven_change_older_than_its_row_is_stale(backend: Backend) {
    let db = TestDb::new(backend, "redrive_stale").await;
    // Version 1 of a is dead-lettered; version 5 arrives later and is applied.
    replay_event(
        &db,
        &config(NO_VERSION),
        &event("servicea.planet", &[("a", 1, "old")], 0),
        "1.json",
    )
    .await;
    let r = replay_event(
        &db,
        &config(GOOD),
        &event("servicea.planet", &[("a", 5, "new")], 10),
        "2.json",
    )
    .await;
    assert_eq!(r.upserted, 1);
    let r = redrive(&db, &config(GOOD), &[]).await;
    assert_eq!((r.upserted, r.stale, r.dead_lettered), (0, 1, 0), "{r:?}");
    assert_eq!(
        table(&db).await,
        vec![vec!["a", "new", "t-a", "5"]],
        "the row did not move backwards"
    );
    assert_eq!(
        dead_letters(&db).await,
        vec![],
        "a stale change is handled: its dead letter is gone"
    );
}

async fn headers_survive_a_redrive(backend: Backend) {
    let db = TestDb::new(backend, "redrive_headers").await;
    let batch = event("servicea.planet", &[("h", 3, "aitch")], 0);
    replay_event(&db, &config(NO_VERSION), &batch, "b.json").await;
    let stored = db
        .rows(DEAD, &["headers", "timestamp_type"], "kafka_offset")
        .await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0][0].contains("trace-id"), "{stored:?}");
    assert_eq!(stored[0][1], "CREATE_TIME");
    redrive(&db, &config(GOOD), &[]).await;
    // The trace column comes from the header: the record was rebuilt with it.
    assert_eq!(table(&db).await, vec![vec!["h", "aitch", "t-h", "3"]]);
}

async fn a_message_that_fails_again_keeps_its_row_with_the_new_reason_and_one_more_attempt(
    backend: Backend,
) {
    let db = TestDb::new(backend, "redrive_again").await;
    replay_event(
        &db,
        &config(NO_VERSION),
        &event("servicea.planet", &[("x", 1, "ex")], 7),
        "b.json",
    )
    .await;
    let before = dead_letters(&db).await;
    assert_eq!(before.len(), 1);
    // Still wrong, differently: the name is no integer version.
    let wrong = config("$.planetName");
    let r = redrive(&db, &wrong, &[]).await;
    assert_eq!((r.upserted, r.dead_lettered), (0, 1), "{r:?}");
    let after = dead_letters(&db).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, 7);
    assert_ne!(after[0].2, before[0].2, "the new reason replaces the old");
    assert_eq!(after[0].3, "2");
    redrive(&db, &wrong, &[]).await;
    assert_eq!(dead_letters(&db).await[0].3, "3");
    // Fixed at last: applied, and the row that failed three times is gone.
    let r = redrive(&db, &config(GOOD), &[]).await;
    assert_eq!(r.upserted, 1);
    assert_eq!(dead_letters(&db).await, vec![]);
    assert_eq!(table(&db).await, vec![vec!["x", "ex", "t-x", "1"]]);
}

async fn topic_selects_the_dead_letters(backend: Backend) {
    let db = TestDb::new(backend, "redrive_topic").await;
    replay_event(
        &db,
        &config(NO_VERSION),
        &event("servicea.planet", &[("a", 1, "a")], 0),
        "a.json",
    )
    .await;
    replay_event(
        &db,
        &config(NO_VERSION),
        &event("serviceb.planet", &[("b", 1, "b")], 0),
        "b.json",
    )
    .await;
    assert_eq!(dead_letters(&db).await.len(), 2);
    let r = redrive(&db, &config(GOOD), &["--topic", "serviceb.planet"]).await;
    assert_eq!((r.received, r.upserted), (1, 1), "{r:?}");
    let left = dead_letters(&db).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "servicea.planet");
    assert_eq!(table(&db).await, vec![vec!["b", "b", "t-b", "1"]]);
}

async fn an_older_dead_letter_table_gets_its_new_columns_and_its_rows_are_redriven(
    backend: Backend,
) {
    let db = TestDb::new(backend, "redrive_migrate").await;
    // The table as msk-sync made it before redrive existed, with one dead letter in it.
    let (text, key) = if backend == Backend::MariaDb {
        ("LONGTEXT", "VARCHAR(255)")
    } else {
        ("TEXT", "VARCHAR(255)")
    };
    let create = format!(
        "CREATE TABLE {DEAD} (kafka_topic {key} NOT NULL, kafka_partition INTEGER NOT NULL, \
         kafka_offset BIGINT NOT NULL, record_occurrence INTEGER NOT NULL, message_index INTEGER NOT NULL, \
         kafka_timestamp BIGINT NOT NULL, kafka_topic_full {text} NULL, key_base64 {text} NULL, \
         value_base64 {text} NULL, raw_message_index INTEGER NULL, error {text} NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
         PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, record_occurrence, message_index)){}",
        if backend == Backend::MariaDb {
            // As msk-sync creates its tables there: keys compare byte for byte.
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
        } else {
            ""
        }
    );
    db.conn.execute_unprepared(&create).await.unwrap();
    let message =
        json!({"planetUuid": "m", "planetName": "em", "version": 4, "changeType": "UPDATED"});
    let value = base64::engine::general_purpose::STANDARD.encode(message.to_string());
    db.conn
        .execute_unprepared(&format!(
            "INSERT INTO {DEAD} (kafka_topic, kafka_partition, kafka_offset, record_occurrence, message_index, \
             kafka_timestamp, value_base64, error) VALUES ('servicea.planet', 0, 3, 0, 0, 1764000000000, '{value}', 'old')"
        ))
        .await
        .unwrap();
    // The headers were not kept then: the trace column is left out of this config.
    let toml = config(GOOD).replace("  { name = \"trace\", from = \"header:trace-id\" },\n", "");
    let r = redrive(&db, &toml, &[]).await;
    assert_eq!((r.upserted, r.dead_lettered), (1, 0), "{r:?}");
    assert_eq!(
        db.rows(TABLE, &["uuid", "name", "version"], "uuid").await,
        vec![vec!["m", "em", "4"]]
    );
    // The columns are there now, and a new dead letter fills them.
    let failing = toml.replace(GOOD, NO_VERSION);
    replay_event(
        &db,
        &failing,
        &event("servicea.planet", &[("n", 1, "en")], 20),
        "n.json",
    )
    .await;
    let stored = db
        .rows(DEAD, &["headers", "attempts"], "kafka_offset")
        .await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0][0].contains("trace-id"), "{stored:?}");
    assert_eq!(stored[0][1], "1");
}

async fn a_container_file_redrives_only_its_dead_lettered_messages(backend: Backend) {
    let db = TestDb::new(backend, "redrive_container").await;
    // The sample Avro container file: its messages are applied with a config that takes them all, then one
    // of them is made a dead letter by hand (as a refused row would be), with a row pointing at the holder.
    let toml_path = event_file("avro.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let run = replay_config(&db, &toml_path, &["planet-avro-ocf.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let applied = run.reports()[0].upserted;
    assert!(applied >= 2, "the sample holds several messages");
    let tables: Vec<String> = toml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table = "))
        .map(|t| t.trim_matches('"').to_string())
        .collect();
    let table = &tables[0];
    let rows_before = db.count(table).await;
    // Every row of the table deleted but one message's: redrive must bring back that one only.
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(event_file("planet-avro-ocf.json")).unwrap())
            .unwrap();
    let record = event["records"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()[0]
        .clone();
    let (topic, offset, ts) = (
        record["topic"].as_str().unwrap().to_string(),
        record["offset"].as_i64().unwrap(),
        record["timestamp"].as_i64().unwrap(),
    );
    let partition = record["partition"].as_i64().unwrap();
    db.conn
        .execute_unprepared(&format!("DELETE FROM {table}"))
        .await
        .unwrap();
    // Message 1 is the record's only dead letter (message 0 was applied), so it holds the raw data.
    db.conn
        .execute_unprepared(&format!(
            "INSERT INTO {DEAD} (kafka_topic, kafka_partition, kafka_offset, record_occurrence, message_index, \
             kafka_timestamp, value_base64, error, timestamp_type, attempts) VALUES ('{topic}', {partition}, {offset}, 0, 1, {ts}, '{}', 'refused', 'CREATE_TIME', 1)",
            record["value"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let r = redrive_at(&db, &toml_path.display().to_string(), &[]).await;
    assert_eq!(
        (r.messages, r.upserted, r.dead_lettered),
        (1, 1, 0),
        "{r:?}"
    );
    assert_eq!(
        db.count(table).await,
        1,
        "only the dead-lettered message ({rows_before} before)"
    );
    assert_eq!(db.count(DEAD).await, 0);
}

async fn planet_sync_redrives_too(backend: Backend) {
    let db = TestDb::new(backend, "redrive_planet").await;
    // Dead letters of servicea.planet (written here by entity-sync with a config that fails them)…
    replay_event(
        &db,
        &config(NO_VERSION),
        &event(
            "servicea.planet",
            &[("p1", 1, "Mercury"), ("p2", 1, "Venus")],
            0,
        ),
        "p.json",
    )
    .await;
    assert_eq!(dead_letters(&db).await.len(), 2);
    // …redriven by planet-sync: its typed mapping, its table, the same dead-letter table.
    let run = cli(&planet_sync::app(), &["redrive", "--database-url", &db.url]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = run.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].upserted, reports[0].dead_lettered),
        (2, 0),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        db.planets().await,
        vec![
            ("p1".to_string(), "Mercury".to_string()),
            ("p2".to_string(), "Venus".to_string())
        ]
    );
    assert_eq!(dead_letters(&db).await, vec![]);
}

async fn a_dry_run_shows_the_messages_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend, "redrive_dry").await;
    replay_event(
        &db,
        &config(NO_VERSION),
        &event("servicea.planet", &[("d1", 1, "one"), ("d2", 2, "two")], 0),
        "d.json",
    )
    .await;
    let dead = dead_letters(&db).await;
    let path = db.write("sync.toml", &config(GOOD)).display().to_string();
    let run = cli(
        &entity_sync(),
        &[
            "redrive",
            "--database-url",
            &db.url,
            "--config",
            &path,
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let outcomes: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(outcomes, ["\"upsert\"", "\"upsert\""], "{}", run.stdout);
    assert_eq!(
        dead_letters(&db).await,
        dead,
        "the dead letters are untouched"
    );
    assert_eq!(
        table(&db).await,
        Vec::<Vec<String>>::new(),
        "nothing applied"
    );
}

/// Two `redrive` runs at the same time over the same dead letters (#34): each dead letter is applied once.
/// Before, both read every chunk and applied it: the reports added up to more than there were dead letters.
async fn two_redrives_at_once_apply_each_dead_letter_once(backend: Backend) {
    let db = TestDb::new(backend, "redrive_twice").await;
    let names: Vec<(String, String)> = (0..300)
        .map(|i| (format!("k{i:04}"), format!("n{i}")))
        .collect();
    let changes: Vec<(&str, i64, &str)> = names
        .iter()
        .map(|(k, n)| (k.as_str(), 1, n.as_str()))
        .collect();
    let batch = event("servicea.planet", &changes, 0);
    let r = replay_event(&db, &config(NO_VERSION), &batch, "b.json").await;
    assert_eq!(r.dead_lettered, 300, "{r:?}");
    let fixed = db.write("sync.toml", &config(GOOD)).display().to_string();
    let (a, b) = tokio::join!(
        redrive_at(&db, &fixed, &["--chunk", "20"]),
        redrive_at(&db, &fixed, &["--chunk", "20"])
    );
    assert_eq!(
        (
            a.upserted + b.upserted,
            a.stale + b.stale,
            a.dead_lettered + b.dead_lettered
        ),
        (300, 0, 0),
        "{a:?}\n{b:?}"
    );
    assert_eq!(a.received + b.received, 300);
    assert_eq!(dead_letters(&db).await, vec![]);
    assert_eq!(db.count(TABLE).await, 300);
}
