//! Versions (#15): with a version column, late, repeated and reordered changes never move a row backwards, a
//! delete is remembered, and every change not applied is counted as stale. On SQLite, PostgreSQL and MariaDB.

use base64::Engine;
use msk_sync::pipeline::Handler;
use msk_sync::report::{BatchReport, Outcome};
use msk_sync::sync::TableDef;
use msk_sync::sync::version::guarded_upsert;
use msk_sync_tests::*;
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::Value as SqlValue;
use serde_json::{Value, json};

on_every_backend!(
    shuffled_and_repeated_batches_end_in_the_newest_version_of_every_entity,
    a_late_older_create_does_not_undo_a_delete_and_a_newer_one_does,
    after_the_retention_a_late_older_create_applies,
    the_higher_version_wins_within_a_batch_whatever_the_order,
    the_sql_guard_alone_keeps_a_newer_row,
    a_message_without_its_version_is_dead_lettered,
    the_kafka_timestamp_as_version,
    the_sample_batch_shows_a_stale_change,
    large_versioned_batches_are_chunked,
    a_typed_sync_declares_its_version_column,
);

const TABLE: &str = "planet_v";

fn config(retention: Option<u64>) -> String {
    let database = retention
        .map(|s| format!("[database]\ntombstone_retention_seconds = {s}\n"))
        .unwrap_or_default();
    format!(
        r#"{database}
[[sync]]
topics = ["servicea.planet"]
table = "{TABLE}"
key = ["uuid"]
columns = [
  {{ name = "uuid", path = "$.planetUuid" }},
  {{ name = "name", path = "$.planetName" }},
  {{ name = "version", path = "$.version", type = "integer", version = true }},
]
"#
    )
}

async fn handler(db: &TestDb, toml: &str) -> Handler {
    let path = db.write("versioned.toml", toml);
    let app = entity_sync();
    app.load(Some(&path))
        .unwrap()
        .handler(Some(&db.url))
        .await
        .unwrap()
}

/// One change: (key, version, Some(name) for an upsert / None for a delete).
type Change = (String, i64, Option<String>);

/// An event of `changes` in one partition, in order; offsets start at `first_offset`.
fn event(changes: &[Change], first_offset: i64) -> Value {
    let records: Vec<Value> = changes
        .iter()
        .enumerate()
        .map(|(i, (key, version, name))| {
            let message = match name {
                Some(n) => {
                    json!({"planetUuid": key, "planetName": n, "version": version, "changeType": "UPDATED"})
                }
                None => json!({"planetUuid": key, "version": version, "changeType": "DELETED"}),
            };
            let value =
                base64::engine::general_purpose::STANDARD.encode(message.to_string().as_bytes());
            json!({
                "topic": "servicea.planet", "partition": 0, "offset": first_offset + i as i64,
                "timestamp": 1_764_000_000_000_i64 + first_offset + i as i64, "timestampType": "CREATE_TIME",
                "value": value, "headers": []
            })
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {"servicea.planet-0": records}})
}

async fn apply(h: &Handler, changes: &[Change], first_offset: i64) -> BatchReport {
    let report = h.handle_json(event(changes, first_offset)).await.unwrap();
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
    report
}

fn up(key: &str, version: i64, name: &str) -> Change {
    (key.to_string(), version, Some(name.to_string()))
}

fn del(key: &str, version: i64) -> Change {
    (key.to_string(), version, None)
}

/// The table as (uuid, name, version).
async fn table(db: &TestDb) -> Vec<(String, String, i64)> {
    db.rows(TABLE, &["uuid", "name", "version"], "uuid")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap()))
        .collect()
}

/// A small deterministic generator (no crate needed for a shuffle).
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

async fn shuffled_and_repeated_batches_end_in_the_newest_version_of_every_entity(backend: Backend) {
    // 40 entities, each with a history of 1..=6 changes (versions 1, 2, …), some ending deleted, some
    // deleted and re-created.
    let mut rng = Lcg(15);
    let mut history: Vec<Change> = Vec::new();
    for k in 0..40 {
        let key = format!("k{k:02}");
        for version in 1..=(1 + rng.next(6) as i64) {
            let change = if rng.next(4) == 0 {
                del(&key, version)
            } else {
                up(&key, version, &format!("{key}-v{version}"))
            };
            history.push(change);
        }
    }
    let mut expected: Vec<(String, String, i64)> = Vec::new();
    for k in 0..40 {
        let key = format!("k{k:02}");
        let newest = history
            .iter()
            .filter(|(c, _, _)| *c == key)
            .max_by_key(|(_, v, _)| *v);
        if let Some((_, v, Some(name))) = newest {
            expected.push((key, name.clone(), *v));
        }
    }
    assert!(expected.len() > 10 && expected.len() < 40, "{expected:?}");
    for seed in 1..=3u64 {
        let db = TestDb::new(backend, &format!("versions_shuffled_{seed}")).await;
        let h = handler(&db, &config(None)).await;
        let mut changes = history.clone();
        Lcg(seed).shuffle(&mut changes);
        let mut batches: Vec<Vec<Change>> = changes.chunks(9).map(<[Change]>::to_vec).collect();
        // Some batches twice (a redelivery), in another place of the order.
        let again: Vec<Vec<Change>> = batches.iter().step_by(3).cloned().collect();
        batches.extend(again);
        Lcg(seed * 7).shuffle(&mut batches);
        let mut stale = 0;
        for (i, batch) in batches.iter().enumerate() {
            stale += apply(&h, batch, i as i64 * 100).await.stale;
        }
        assert_eq!(table(&db).await, expected, "seed {seed}");
        assert!(
            stale > 0,
            "seed {seed}: a shuffled history has stale changes"
        );
    }
}

async fn a_late_older_create_does_not_undo_a_delete_and_a_newer_one_does(backend: Backend) {
    let db = TestDb::new(backend, "versions_delete_memory").await;
    let h = handler(&db, &config(None)).await;
    apply(&h, &[up("a", 1, "one"), up("b", 1, "b-one")], 0).await;
    let r = apply(&h, &[del("a", 5)], 10).await;
    assert_eq!(r.deleted, 1);
    // The create of version 3 arrives late: the delete (version 5) is newer, so it is stale.
    let r = apply(&h, &[up("a", 3, "three"), up("b", 2, "b-two")], 20).await;
    assert_eq!((r.upserted, r.stale), (1, 1), "{r:?}");
    let stale: Vec<_> = r
        .records
        .iter()
        .filter(|x| x.outcome == Outcome::Stale)
        .map(|x| x.offset)
        .collect();
    assert_eq!(stale, vec![20]);
    assert_eq!(table(&db).await, vec![("b".into(), "b-two".into(), 2)]);
    // An older delete is stale too, and leaves the newer row.
    let r = apply(&h, &[del("b", 1)], 30).await;
    assert_eq!((r.deleted, r.stale), (0, 1), "{r:?}");
    // A newer create brings it back and clears the memory of the delete.
    let r = apply(&h, &[up("a", 6, "six")], 40).await;
    assert_eq!((r.upserted, r.stale), (1, 0), "{r:?}");
    assert_eq!(
        table(&db).await,
        vec![
            ("a".into(), "six".into(), 6),
            ("b".into(), "b-two".into(), 2)
        ]
    );
    assert_eq!(db.count("msk_sync_tombstone").await, 0);
    // Replaying the same batch is idempotent: equal versions apply.
    let r = apply(&h, &[up("a", 6, "six")], 40).await;
    assert_eq!((r.upserted, r.stale), (1, 0), "{r:?}");
    // A delete of a key never seen is remembered: its late create stays out.
    apply(&h, &[del("c", 2)], 50).await;
    let r = apply(&h, &[up("c", 1, "c-one")], 60).await;
    assert_eq!(r.stale, 1);
    assert_eq!(table(&db).await.len(), 2);
}

async fn after_the_retention_a_late_older_create_applies(backend: Backend) {
    // A retention of zero: every batch prunes the tombstones of the batches before it.
    let db = TestDb::new(backend, "versions_retention").await;
    let h = handler(&db, &config(Some(0))).await;
    apply(&h, &[up("a", 1, "one")], 0).await;
    apply(&h, &[del("a", 5)], 10).await;
    assert_eq!(db.count("msk_sync_tombstone").await, 1);
    // The memory of the delete is gone: the older create applies, as without a version.
    let r = apply(&h, &[up("a", 3, "three")], 20).await;
    assert_eq!((r.upserted, r.stale), (1, 0), "{r:?}");
    assert_eq!(table(&db).await, vec![("a".into(), "three".into(), 3)]);
    assert_eq!(db.count("msk_sync_tombstone").await, 0);
    // With the default retention the same sequence stays deleted (the test above), so the pruning did this.
}

async fn the_higher_version_wins_within_a_batch_whatever_the_order(backend: Backend) {
    let db = TestDb::new(backend, "versions_in_batch").await;
    let h = handler(&db, &config(None)).await;
    let r = apply(
        &h,
        &[
            up("a", 5, "five"),
            up("a", 3, "three"),
            del("b", 9),
            up("b", 4, "four"),
        ],
        0,
    )
    .await;
    assert_eq!(
        (r.upserted, r.deleted, r.superseded, r.stale),
        (1, 1, 2, 0),
        "{r:?}"
    );
    assert_eq!(table(&db).await, vec![("a".into(), "five".into(), 5)]);
}

async fn the_sql_guard_alone_keeps_a_newer_row(backend: Backend) {
    // The statements without the read before them, as a concurrent writer would meet them.
    let db = TestDb::new(backend, "versions_guard").await;
    let h = handler(&db, &config(None)).await;
    apply(&h, &[up("a", 5, "five")], 0).await;
    let def = TableDef {
        name: TABLE.into(),
        columns: vec!["uuid".into(), "name".into(), "version".into()],
        key: vec![0],
    };
    let row = |v: i64, name: &str| {
        vec![
            SqlValue::String(Some("a".into())),
            SqlValue::String(Some(name.into())),
            SqlValue::BigInt(Some(v)),
        ]
    };
    let older = row(3, "three");
    let stmt = guarded_upsert(&def, &[&older], 2, db.db_backend()).unwrap();
    db.conn.execute(&stmt).await.unwrap();
    assert_eq!(table(&db).await, vec![("a".into(), "five".into(), 5)]);
    let newer = row(7, "seven");
    let stmt = guarded_upsert(&def, &[&newer], 2, db.db_backend()).unwrap();
    db.conn.execute(&stmt).await.unwrap();
    assert_eq!(table(&db).await, vec![("a".into(), "seven".into(), 7)]);
}

async fn a_message_without_its_version_is_dead_lettered(backend: Backend) {
    let db = TestDb::new(backend, "versions_missing").await;
    let h = handler(&db, &config(None)).await;
    let mut e = event(&[up("a", 1, "one"), up("b", 1, "one")], 0);
    let value = base64::engine::general_purpose::STANDARD.encode(
        json!({"planetUuid": "b", "planetName": "x", "changeType": "UPDATED"})
            .to_string()
            .as_bytes(),
    );
    e["records"]["servicea.planet-0"][1]["value"] = json!(value);
    let r = h.handle_json(e).await.unwrap();
    assert_eq!((r.upserted, r.dead_lettered), (1, 1), "{r:?}");
    assert_eq!(
        db.dead_letters().await,
        vec![(1, "column version: $.version matched nothing".to_string())]
    );
}

async fn the_kafka_timestamp_as_version(backend: Backend) {
    let db = TestDb::new(backend, "versions_timestamp").await;
    let toml = format!(
        r#"[[sync]]
topics = ["servicea.planet"]
table = "{TABLE}"
key = ["uuid"]
columns = [
  {{ name = "uuid", path = "$.planetUuid" }},
  {{ name = "name", path = "$.planetName" }},
  {{ name = "changed_at", from = "timestamp", type = "timestamp", version = true }},
]
"#
    );
    let h = handler(&db, &toml).await;
    // Offsets become timestamps (see `event`): offset 50 is newer than offset 20.
    apply(&h, &[up("a", 0, "at-50")], 50).await;
    let r = apply(&h, &[up("a", 0, "at-20")], 20).await;
    assert_eq!((r.upserted, r.stale), (0, 1), "{r:?}");
    let r = apply(&h, &[del("a", 0)], 30).await;
    assert_eq!((r.deleted, r.stale), (0, 1), "{r:?}");
    let names = db.rows(TABLE, &["name"], "uuid").await;
    assert_eq!(names, vec![vec!["at-50".to_string()]]);
    let r = apply(&h, &[del("a", 0)], 60).await;
    assert_eq!(r.deleted, 1);
    let r = apply(&h, &[up("a", 0, "at-55")], 55).await;
    assert_eq!(r.stale, 1);
    assert_eq!(db.count(TABLE).await, 0);
}

async fn the_sample_batch_shows_a_stale_change(backend: Backend) {
    let db = TestDb::new(backend, "versions_sample").await;
    let config = event_file("versioned.toml").display().to_string();
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(&config),
        &["versioned.json", "versioned-stale.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = run.reports();
    let counts = |r: &BatchReport| (r.messages, r.upserted, r.deleted, r.superseded, r.stale);
    // Pluto is created and deleted (version 3) in the first batch.
    assert_eq!(counts(&reports[0]), (4, 2, 1, 1, 0), "{:?}", reports[0]);
    // Mars' version 1 is older than its row, Pluto's create older than its delete: both stale. Venus' version 4
    // wins over the 2 and the 3 of the same batch.
    assert_eq!(counts(&reports[1]), (5, 1, 0, 2, 2), "{:?}", reports[1]);
    let stale: Vec<i64> = reports[1]
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Stale)
        .map(|r| r.offset)
        .collect();
    assert_eq!(stale, vec![40, 41]);
    assert!(run.stdout.contains(r#""stale": 2"#), "{}", run.stdout);
    // The Lambda response is the report: it carries the count too.
    let response = msk_sync::run::lambda::Response {
        report: Some(reports[1].clone()),
        batch_item_failures: None,
    };
    assert_eq!(serde_json::to_value(&response).unwrap()["stale"], json!(2));
    let rows = db
        .rows("servicea_planet_versioned", &["name", "version"], "uuid")
        .await;
    assert_eq!(
        rows,
        vec![
            vec!["Mars".to_string(), "2".to_string()],
            vec!["Venus (renamed)".to_string(), "4".to_string()]
        ]
    );
}

async fn large_versioned_batches_are_chunked(backend: Backend) {
    // More keys than one statement takes (2000 rows; 250 keys per guarded DELETE, under SQLite's expression
    // depth limit), and more than one version read takes.
    let db = TestDb::new(backend, "versions_large").await;
    let h = handler(&db, &config(None)).await;
    let keys: Vec<String> = (0..4500).map(|i| format!("k{i:05}")).collect();
    let created: Vec<Change> = keys.iter().map(|k| up(k, 1, "one")).collect();
    assert_eq!(apply(&h, &created, 0).await.upserted, 4500);
    let deleted: Vec<Change> = keys.iter().map(|k| del(k, 2)).collect();
    assert_eq!(apply(&h, &deleted, 10_000).await.deleted, 4500);
    assert_eq!(db.count(TABLE).await, 0);
    assert_eq!(db.count("msk_sync_tombstone").await, 4500);
    let r = apply(&h, &created, 20_000).await;
    assert_eq!((r.upserted, r.stale), (0, 4500));
    let recreated: Vec<Change> = keys.iter().map(|k| up(k, 3, "three")).collect();
    assert_eq!(apply(&h, &recreated, 30_000).await.upserted, 4500);
    assert_eq!(db.count(TABLE).await, 4500);
    assert_eq!(db.count("msk_sync_tombstone").await, 0);
}

/// A typed sync with a version column (planet-sync has none: bedrock's semantics).
mod versioned_planet {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "typed_planet_v")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub uuid: String,
        pub name: String,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl msk_sync::sync::typed::FromKafkaEvent for versioned_planet::Model {
    fn from_kafka_event(message: &msk_sync::message::Message<'_>) -> Result<Self, String> {
        use msk_sync::sync::typed::{field, optional_field};
        Ok(Self {
            uuid: field(message, "planetUuid")?,
            name: optional_field(message, "planetName")?.unwrap_or_default(),
            version: field(message, "version")?,
        })
    }

    fn version_column() -> Option<versioned_planet::Column> {
        Some(versioned_planet::Column::Version)
    }
}

async fn a_typed_sync_declares_its_version_column(backend: Backend) {
    use msk_sync::sync::typed::TypedMapping;
    let db = TestDb::new(backend, "versions_typed").await;
    let mapping: std::sync::Arc<dyn msk_sync::sync::Mapping> =
        std::sync::Arc::new(TypedMapping::<versioned_planet::Entity>::new("planet"));
    assert_eq!(mapping.version(), Some(2));
    let app = msk_sync::App::typed::<versioned_planet::Entity>("typed-versions", "planet");
    let h = app
        .handler(&msk_sync::config::Config::default(), Some(&db.url))
        .await
        .unwrap();
    apply(&h, &[up("a", 5, "five"), del("b", 4)], 0).await;
    let r = apply(&h, &[up("a", 3, "three"), up("b", 2, "two")], 10).await;
    assert_eq!((r.upserted, r.stale), (0, 2), "{r:?}");
    let rows = db
        .rows("typed_planet_v", &["uuid", "name", "version"], "uuid")
        .await;
    assert_eq!(
        rows,
        vec![vec!["a".to_string(), "five".to_string(), "5".to_string()]]
    );
}
