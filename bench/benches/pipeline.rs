//! `cargo bench -p msk-sync-bench`: decode (parse + order + base64 + deserialize + filter + mask + map) and
//! apply (the whole handler) on a batch at Lambda's 6 MB payload limit, and the naive baseline — bedrock's
//! algorithm done literally, one read and one write per record through sea-orm — on the same databases.
//! `MSK_SYNC_BENCH_QUICK=1` runs a small batch with few samples (CI runs it so the benches cannot rot).
//! PostgreSQL and MariaDB come from MSK_SYNC_BENCH_POSTGRES / MSK_SYNC_BENCH_MARIADB (defaults: the local
//! servers, database msk_bench, created if missing).

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use msk_sync::config::Config;
use msk_sync::event::MskEvent;
use msk_sync::pipeline::{Handler, Pipeline};
use msk_sync_bench::Format;
use planet_sync::planet;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, EntityTrait, Set};

fn quick() -> bool {
    std::env::var_os("MSK_SYNC_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// An event from the `gen-event` binary: (event bytes, records). Generating in a process of its own keeps the
/// generator's hundred megabytes of short-lived `serde_json::Value`s out of this process's heap, which they left
/// fragmented: the same decode measured up to twice as slow after generating in-process (as a Lambda instance,
/// which never runs the generator, would not see).
fn generated(format: Format, size: &[&str]) -> (Vec<u8>, usize) {
    let format = match format {
        Format::Json => "json",
        Format::Avro => "avro",
        Format::Protobuf => "protobuf",
        Format::GlueAvro => "glue-avro",
        Format::DebeziumJson => "debezium-json",
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gen-event"))
        .arg(format)
        .args(size)
        .output()
        .expect("run gen-event");
    assert!(out.status.success(), "gen-event failed");
    let records = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("gen-event reports its records");
    (out.stdout, records)
}

/// (event bytes, records): a batch at Lambda's payload limit, or 2 000 records in quick mode.
fn batch(format: Format) -> (Vec<u8>, usize) {
    if quick() {
        generated(format, &["--records", "2000"])
    } else {
        generated(format, &[])
    }
}

fn events_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// The pipeline under test: the typed planet mapping, the codec for `format`, an emit filter and a mask.
fn config(format: Format) -> Config {
    config_with_mask(format, "schema = \"schemas/planet.avsc\"\n")
}

/// [`config`] with `mask_schema` in its `[[mask]]` (a `schema = …` line, or nothing: the mask then classifies
/// each Avro message by its writer schema).
fn config_with_mask(format: Format, mask_schema: &str) -> Config {
    let codec = match format {
        Format::Json => "[codec]\nvalue = \"json\"\n",
        Format::Avro => {
            "[codec]\nvalue = \"auto\"\nschemas = { \"1\" = \"schemas/planet.avsc\" }\n"
        }
        Format::Protobuf => {
            "[codec]\nvalue = \"protobuf\"\nschemas = { \"7\" = \"schemas/planet.proto\" }\n"
        }
        Format::GlueAvro => {
            "[codec]\nvalue = \"auto\"\nglue_schemas = { \"b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b\" = \"schemas/planet.avsc\" }\n"
        }
        // The same planets as the JSON batch, each in Debezium's envelope (the row image is the planet).
        Format::DebeziumJson => "[codec]\nvalue = \"json\"\nenvelope = \"debezium\"\n",
    };
    let text = format!(
        "{codec}\n[[filter]]\nrequired = true\npath = \"$.published\"\nvalues = true\n\n[[mask]]\n{mask_schema}levels = [\"public\", \"confidential\", \"secret\"]\nemit_level = \"confidential\"\n"
    );
    let mut config = Config::from_toml(&text).expect("bench config");
    config.base_dir = Some(events_dir());
    config
}

fn pipeline(format: Format) -> Pipeline {
    planet_sync::app()
        .pipeline(&config(format))
        .expect("pipeline")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A group of 10 samples. Quick mode warms up 300 ms and measures `quick_time`; a full run measures `full_time`
/// (criterion's default when `None`).
fn bench_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    quick_time: Duration,
    full_time: Option<Duration>,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    if quick() {
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(quick_time);
    } else if let Some(time) = full_time {
        group.measurement_time(time);
    }
    group
}

/// One iteration of the `decode` group: the event read from `bytes` and planned. The plan borrows the event: it
/// is dropped here, inside the measured loop, as before.
fn plan_bytes(bytes: &[u8], pipeline: &Pipeline) {
    let event = MskEvent::from_slice(bytes).expect("event");
    std::hint::black_box(pipeline.plan(&event, &mut |_| {}).expect("plan"));
}

fn decode(c: &mut Criterion) {
    let mut group = bench_group(c, "decode", Duration::from_secs(1), None);
    for format in [
        Format::Json,
        Format::Avro,
        Format::Protobuf,
        Format::GlueAvro,
        Format::DebeziumJson,
    ] {
        let (bytes, records) = batch(format);
        let pipeline = pipeline(format);
        let name = format!("{format:?}").to_lowercase();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("bytes", &name), |b| {
            b.iter(|| plan_bytes(&bytes, &pipeline))
        });
        if format == Format::Avro {
            // The mask without a schema of its own: each message's writer schema (the registry's, one per id)
            // says what is classified. Same batch.
            let writer_mask = planet_sync::app()
                .pipeline(&config_with_mask(Format::Avro, ""))
                .expect("pipeline");
            group.bench_function(BenchmarkId::new("bytes", "avro-writer-mask"), |b| {
                b.iter(|| plan_bytes(&bytes, &writer_mask))
            });
        }
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(BenchmarkId::new("records", &name), |b| {
            b.iter(|| plan_bytes(&bytes, &pipeline))
        });
    }
    group.finish();
}

/// A database of each kind: (name, URL). The SQLite file lives as long as the returned guard.
async fn databases() -> (Vec<(&'static str, String)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let pg = std::env::var("MSK_SYNC_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let my = std::env::var("MSK_SYNC_BENCH_MARIADB")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let admin = Database::connect(format!("{pg}/test"))
        .await
        .expect("PostgreSQL (start it: .ci/run)");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = 'msk_bench'",
        ))
        .await
        .expect("query");
    if exists.is_none() {
        admin
            .execute_unprepared("CREATE DATABASE msk_bench")
            .await
            .expect("create PostgreSQL database");
    }
    let admin = Database::connect(format!("{my}/test"))
        .await
        .expect("MariaDB (start it: .ci/run)");
    admin
        .execute_unprepared("CREATE DATABASE IF NOT EXISTS msk_bench")
        .await
        .expect("create MariaDB database");
    (
        vec![
            ("sqlite", sqlite),
            ("postgres", format!("{pg}/msk_bench")),
            ("mariadb", format!("{my}/msk_bench")),
        ],
        dir,
    )
}

async fn fresh_table(url: &str) {
    let db = Database::connect(url).await.expect("connect");
    db.execute_unprepared("DROP TABLE IF EXISTS servicea_planet")
        .await
        .expect("drop");
}

fn apply(c: &mut Criterion) {
    let rt = runtime();
    let (dbs, _dir) = rt.block_on(databases());
    let (bytes, records) = batch(Format::Json);
    let mut group = bench_group(
        c,
        "apply",
        Duration::from_secs(2),
        Some(Duration::from_secs(20)),
    );
    group.throughput(Throughput::Elements(records as u64));
    for (name, url) in &dbs {
        rt.block_on(fresh_table(url));
        let app = planet_sync::app();
        let handler: Handler = rt
            .block_on(app.handler(&Config::default(), Some(url)))
            .expect("handler");
        group.bench_function(BenchmarkId::new("bulk", name), |b| {
            b.to_async(&rt).iter(|| async {
                let event = MskEvent::from_slice(&bytes).expect("event");
                handler.handle(&event).await.expect("applied")
            })
        });
    }
    group.finish();
}

/// entity-sync's handler on `url` with one declarative planet sync whose `changed_at` column (the Kafka
/// timestamp) is the version column when `versioned`, and a plain column otherwise: the same rows either way.
fn declarative_handler(rt: &tokio::runtime::Runtime, url: &str, versioned: bool) -> Handler {
    let version = if versioned { ", version = true" } else { "" };
    let text = format!(
        "[codec]\nvalue = \"json\"\n\n[[sync]]\ntopics = [\"servicea.planet\"]\ntable = \"servicea_planet_v\"\nkey = [\"uuid\"]\ncolumns = [\n  {{ name = \"uuid\", path = \"$.planetUuid\" }},\n  {{ name = \"name\", path = \"$.planetName\" }},\n  {{ name = \"galaxy\", path = \"$.location.galaxy\" }},\n  {{ name = \"changed_at\", from = \"timestamp\", type = \"timestamp\"{version} }},\n]\n"
    );
    let config = Config::from_toml(&text).expect("bench config");
    let app = msk_sync::run::App::declarative("entity-sync");
    rt.block_on(app.handler(&config, Some(url)))
        .expect("handler")
}

/// The version guard's cost on the bulk path (#15): the same batch through the same declarative sync, with and
/// without a version column, on each database, in one run. Each iteration applies the batch again, so the
/// versioned sync reads every key's version and tombstone and writes through the guard (equal versions apply).
fn versioned(c: &mut Criterion) {
    let rt = runtime();
    let (dbs, _dir) = rt.block_on(databases());
    let (bytes, records) = batch(Format::Json);
    let mut group = bench_group(
        c,
        "versioned",
        Duration::from_secs(2),
        Some(Duration::from_secs(20)),
    );
    group.throughput(Throughput::Elements(records as u64));
    for (name, url) in &dbs {
        for (label, versioned) in [("plain", false), ("version", true)] {
            rt.block_on(async {
                let db = Database::connect(url.as_str()).await.expect("connect");
                for table in ["servicea_planet_v", "msk_sync_tombstone"] {
                    db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                        .await
                        .expect("drop");
                }
            });
            let handler = declarative_handler(&rt, url, versioned);
            group.bench_function(BenchmarkId::new(label, name), |b| {
                b.to_async(&rt).iter(|| async {
                    let event = MskEvent::from_slice(&bytes).expect("event");
                    handler.handle(&event).await.expect("applied")
                })
            });
        }
    }
    group.finish();
}

/// bedrock's loop: for every record in order, read the planet, then insert, update or delete it.
async fn naive(db: &sea_orm::DatabaseConnection, records: &[&msk_sync::event::Record<'_>]) {
    use base64::Engine;
    for record in records {
        let Some(value) = &record.value else { continue };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value.as_bytes()) else {
            continue;
        };
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let uuid = message["planetUuid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = message["planetName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let found = planet::Entity::find_by_id(uuid.clone())
            .one(db)
            .await
            .expect("read");
        match (message["changeType"].as_str(), found) {
            (Some("DELETED"), Some(_)) => {
                planet::Entity::delete_by_id(uuid)
                    .exec(db)
                    .await
                    .expect("delete");
            }
            (Some("DELETED"), None) => {}
            (_, Some(model)) => {
                let mut active: planet::ActiveModel = model.into();
                active.name = Set(name);
                active.update(db).await.expect("update");
            }
            (_, None) => {
                planet::ActiveModel {
                    uuid: Set(uuid),
                    name: Set(name),
                }
                .insert(db)
                .await
                .expect("insert");
            }
        }
    }
}

fn naive_vs_bulk(c: &mut Criterion) {
    let rt = runtime();
    let (dbs, _dir) = rt.block_on(databases());
    // The naive loop is slow: a smaller batch, the same for both sides, so the ratio compares like with like.
    let n = if quick() { 200 } else { 2_000 };
    let (bytes, _) = generated(Format::Json, &["--records", &n.to_string()]);
    let mut group = bench_group(
        c,
        "naive_vs_bulk",
        Duration::from_secs(2),
        Some(Duration::from_secs(30)),
    );
    group.throughput(Throughput::Elements(n as u64));
    for (name, url) in &dbs {
        rt.block_on(fresh_table(url));
        let app = planet_sync::app();
        let handler: Handler = rt
            .block_on(app.handler(&Config::default(), Some(url)))
            .expect("handler");
        // Creates the table for the naive side too.
        rt.block_on(handler.handle(&MskEvent::from_slice(&bytes).expect("event")))
            .expect("applied");
        let db = rt
            .block_on(Database::connect(url.as_str()))
            .expect("connect");
        group.bench_function(BenchmarkId::new("bulk", name), |b| {
            b.to_async(&rt).iter(|| async {
                handler
                    .handle(&MskEvent::from_slice(&bytes).expect("event"))
                    .await
                    .expect("applied")
            })
        });
        group.bench_function(BenchmarkId::new("naive", name), |b| {
            b.to_async(&rt).iter(|| async {
                let event = MskEvent::from_slice(&bytes).expect("event");
                let records: Vec<_> = event.ordered().collect();
                naive(&db, &records).await
            })
        });
    }
    group.finish();
}

/// The invocation payload into an `MskEvent`: serde's one pass over the whole text (the baseline), the records
/// read on one and on two threads (`MskEvent::from_slice_on`, what `replay` and Lambda do), and what the Lambda
/// runtime loop did before the payload went to the handler beside the runtime: a pass to check it is JSON,
/// one into `Box<RawValue>` (a copy), then the event's own; and the order the parsed records are applied in.
fn payload(c: &mut Criterion) {
    let mut group = bench_group(c, "payload", Duration::from_secs(1), None);
    let (bytes, _) = batch(Format::Json);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("serde whole", |b| {
        b.iter(|| {
            let text = std::str::from_utf8(&bytes).expect("utf-8");
            MskEvent::parse_serial(text).expect("event").record_count()
        })
    });
    for threads in [1, 2] {
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter(|| {
                MskEvent::from_slice_on(&bytes, threads)
                    .expect("event")
                    .record_count()
            })
        });
    }
    // The apply order of the parsed event's records (partitions merged by timestamp), as each batch's plan
    // starts.
    let event = MskEvent::from_slice_on(&bytes, 2).expect("event");
    group.bench_function("order", |b| b.iter(|| event.order().len()));
    drop(event);
    group.bench_function("lambda runtime before", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).expect("json");
            let raw: Box<serde_json::value::RawValue> =
                serde_json::from_slice(&bytes).expect("json");
            MskEvent::parse_on(raw.get(), 2)
                .expect("event")
                .record_count()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, payload, apply, naive_vs_bulk, versioned);
criterion_main!(benches);
