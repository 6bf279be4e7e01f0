//! `replay --plan` (#15): each message's action against the live database, nothing written, and the same counts
//! as the replay that follows. On SQLite, PostgreSQL and MariaDB.

use base64::Engine;
use msk_sync_tests::*;
use serde_json::{Value, json};

on_every_backend!(plan_then_replay_agree_and_the_plan_writes_nothing);

const TABLE: &str = "planet_p";

const CONFIG: &str = r#"
[[sync]]
topics = ["servicea.planet"]
table = "planet_p"
key = ["uuid"]
columns = [
  { name = "uuid", path = "$.planetUuid" },
  { name = "name", path = "$.planetName" },
  { name = "version", path = "$.version", type = "integer", version = true },
]
"#;

fn up(key: &str, version: i64, name: &str) -> Value {
    json!({"planetUuid": key, "planetName": name, "version": version, "changeType": "UPDATED"})
}

fn event(messages: &[Value], first_offset: i64) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let value = base64::engine::general_purpose::STANDARD.encode(m.to_string());
            json!({
                "topic": "servicea.planet", "partition": 0, "offset": first_offset + i as i64,
                "timestamp": 1_764_000_000_000_i64 + first_offset + i as i64, "timestampType": "CREATE_TIME",
                "value": value, "headers": []
            })
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {"servicea.planet-0": records}})
}

async fn run(db: &TestDb, args: &[&str], event: &Value, name: &str) -> Run {
    let config = db.write("plan.toml", CONFIG).display().to_string();
    let file = db.write(name, &event.to_string()).display().to_string();
    let mut argv = vec!["replay", "--database-url", &db.url, "--config", &config];
    argv.extend(args);
    argv.push(&file);
    let run = cli(&entity_sync(), &argv).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

/// Everything the batch could write: the table, the dead letters and the tombstones.
async fn state(db: &TestDb) -> (Vec<Vec<String>>, i64, i64) {
    (
        db.rows(TABLE, &["uuid", "name", "version"], "uuid").await,
        db.count("msk_sync_dead_letter").await,
        db.count("msk_sync_tombstone").await,
    )
}

async fn plan_then_replay_agree_and_the_plan_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend, "plan_agree").await;
    let setup = event(
        &[
            up("a", 1, "one"),
            up("b", 1, "bee"),
            up("c", 1, "sea"),
            up("d", 3, "dee"),
        ],
        0,
    );
    run(&db, &[], &setup, "setup.json").await;
    let batch = event(
        &[
            up("e", 1, "new"),                                                       // insert
            up("a", 2, "uno"), // update name, version
            up("b", 1, "bee"), // unchanged
            json!({"planetUuid": "c", "version": 2, "changeType": "DELETED"}), // delete
            up("d", 2, "old"), // stale: the row has 3
            json!({"planetUuid": "x", "planetName": "ex", "changeType": "UPDATED"}), // no version: dead letter
            up("f", 1, "first"),  // superseded by the next
            up("f", 2, "second"), // insert
        ],
        100,
    );
    let before = state(&db).await;
    let planned = run(&db, &["--plan"], &batch, "batch.json").await;
    assert_eq!(state(&db).await, before, "--plan wrote nothing");

    let lines: Vec<Value> = planned
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9, "{}", planned.stdout);
    let actions: Vec<&str> = lines[..8]
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "insert",
            "update",
            "unchanged",
            "delete",
            "stale",
            "dead-letter",
            "superseded",
            "insert"
        ]
    );
    assert_eq!(lines[1]["columns"], json!(["name", "version"]));
    assert!(
        lines[5]["reason"].as_str().unwrap().contains("version"),
        "{}",
        lines[5]
    );
    // Names, never values.
    assert!(!planned.stdout.contains("uno"), "{}", planned.stdout);
    let summary = &lines[8]["summary"];
    assert_eq!(summary["insert"], 2);
    assert_eq!(summary["update"], 1);
    assert_eq!(summary["unchanged"], 1);

    let replayed = run(&db, &[], &batch, "batch.json").await;
    let report = &replayed.reports()[0];
    let count = |k: &str| summary[k].as_u64().unwrap() as usize;
    assert_eq!(
        (
            report.messages,
            report.upserted,
            report.deleted,
            report.superseded,
            report.filtered,
            report.dead_lettered,
            report.stale
        ),
        (
            count("messages"),
            count("upserted"),
            count("deleted"),
            count("superseded"),
            count("filtered"),
            count("deadLettered"),
            count("stale")
        ),
        "plan and apply agree: {report:?} {summary}"
    );
    assert_eq!(
        db.rows(TABLE, &["uuid", "name", "version"], "uuid").await,
        vec![
            vec!["a", "uno", "2"],
            vec!["b", "bee", "1"],
            vec!["d", "dee", "3"],
            vec!["e", "new", "1"],
            vec!["f", "second", "2"],
        ]
    );
}
