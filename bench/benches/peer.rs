//! `cargo bench -p msk-sync-bench --bench peer`: msk-sync against the Python a competent team would deploy
//! instead (bench/peer/peer.py: Powertools' `kafka_consumer`, the batch collapsed per key in timestamp order,
//! SQLAlchemy Core bulk upsert and `DELETE … IN` in one transaction, warm engine), on the same generated batches
//! and databases (SQLite file, PostgreSQL, MariaDB), in one run; prints each side's time per batch and the ratio.
//!
//! Both sides are measured the same way, warm, per batch, inside their own process: from the payload's bytes
//! to the commit (msk-sync: `MskEvent::from_slice_on` and the whole planet-sync handler; Python: `json.loads` and
//! the handler). Each backend runs in blocks, msk-sync then Python, so a busy spell of the host hits both; after
//! each side the table is read back: both must leave the same planets, and at most 1 % of them with another name
//! (records whose timestamps run against their offsets, which the peer's timestamp sort reorders; the count is
//! printed).
//!
//! Setup: the peer's venv (bench/peer/setup.sh: pinned versions, ~/.cache/msk-sync-peer-venv or
//! $MSK_SYNC_PEER_VENV) is installed by this benchmark when it is missing. `MSK_SYNC_BENCH_QUICK=1` runs one small
//! batch once per side (CI runs it so the comparison cannot rot); databases as in benches/pipeline.rs
//! (MSK_SYNC_BENCH_POSTGRES / MSK_SYNC_BENCH_MARIADB, database msk_bench, created if missing);
//! `MSK_SYNC_BENCH_BACKENDS=postgres` (a comma-separated list of sqlite, postgres, mariadb) runs only those.

use std::path::{Path, PathBuf};
use std::time::Instant;

use msk_sync::config::Config;
use msk_sync::event::MskEvent;
use msk_sync::pipeline::Handler;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

fn quick() -> bool {
    std::env::var_os("MSK_SYNC_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// (files, rounds per block, blocks): full mode applies four different 6 MB batches, five rounds, two blocks.
fn shape() -> (u64, usize, usize) {
    if quick() { (1, 1, 1) } else { (4, 5, 2) }
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The peer's Python, after `bench/peer/setup.sh` made sure its venv holds the pinned versions.
fn peer_python() -> PathBuf {
    let venv = std::env::var_os("MSK_SYNC_PEER_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/msk-sync-peer-venv"))
        })
        .expect("HOME or MSK_SYNC_PEER_VENV");
    let status = std::process::Command::new("sh")
        .arg(bench_dir().join("peer/setup.sh"))
        .env("MSK_SYNC_PEER_VENV", &venv)
        .status()
        .expect("run bench/peer/setup.sh");
    assert!(status.success(), "bench/peer/setup.sh failed");
    venv.join("bin/python")
}

/// Batch files from `gen-event` (one seed each): at Lambda's payload limit, or 2 000 records in quick mode.
fn batches(dir: &Path, files: u64) -> (Vec<PathBuf>, usize) {
    let mut paths = Vec::new();
    let mut records = 0;
    for seed in 0..files {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gen-event"));
        cmd.arg("json");
        if quick() {
            cmd.args(["--records", "2000"]);
        }
        let out = cmd
            .args(["--seed", &(42 + seed).to_string()])
            .output()
            .expect("run gen-event");
        assert!(out.status.success(), "gen-event failed");
        records += String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .find_map(|w| w.parse::<usize>().ok())
            .expect("gen-event reports its records");
        let path = dir.join(format!("batch-{seed}.json"));
        std::fs::write(&path, &out.stdout).expect("write batch");
        paths.push(path);
    }
    (paths, records / files.max(1) as usize)
}

/// Each backend: (name, msk-sync URL, SQLAlchemy URL).
async fn databases(dir: &Path) -> Vec<(&'static str, String, String)> {
    let db = dir.join("bench.db");
    let pg = std::env::var("MSK_SYNC_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let my = std::env::var("MSK_SYNC_BENCH_MARIADB")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let admin = Database::connect(format!("{pg}/test"))
        .await
        .expect("PostgreSQL (start it: cargo xtask setup)");
    let exists = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
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
    Database::connect(format!("{my}/test"))
        .await
        .expect("MariaDB (start it: cargo xtask setup)")
        .execute_unprepared("CREATE DATABASE IF NOT EXISTS msk_bench")
        .await
        .expect("create MariaDB database");
    // The same servers and databases for SQLAlchemy, through the drivers a Python team would pick.
    let alchemy = |scheme: &str, url: &str| {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        format!("{scheme}://{rest}/msk_bench")
    };
    vec![
        (
            "sqlite",
            format!("sqlite://{}?mode=rwc", db.display()),
            format!("sqlite:///{}", db.display()),
        ),
        (
            "postgres",
            format!("{pg}/msk_bench"),
            alchemy("postgresql+psycopg", &pg),
        ),
        (
            "mariadb",
            format!("{my}/msk_bench"),
            alchemy("mysql+pymysql", &my),
        ),
    ]
}

/// The table as both sides left it, in key order.
async fn rows(db: &DatabaseConnection) -> Vec<(String, String)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT uuid, name FROM servicea_planet ORDER BY uuid",
    ))
    .await
    .expect("read back")
    .iter()
    .map(|r| {
        (
            r.try_get_by_index(0).expect("uuid"),
            r.try_get_by_index(1).expect("name"),
        )
    })
    .collect()
}

/// msk-sync: one warm-up pass over the files, then `rounds` timed passes; seconds per batch.
async fn msk_sync(handler: &Handler, payloads: &[Vec<u8>], rounds: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for round in 0..=rounds {
        for bytes in payloads {
            let started = Instant::now();
            // As replay and Lambda read it: on the threads `codec.threads` allows.
            let event =
                MskEvent::from_slice_on(bytes, handler.pipeline().threads()).expect("event");
            handler.handle(&event).await.expect("applied");
            drop(event);
            if round > 0 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
    }
    times
}

/// This process's CPU time so far, on all its threads (msk-sync's own work: the database server's is in
/// another process; SQLite's is in this one).
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is; CLOCK_PROCESS_CPUTIME_ID is always there on
    // Linux, and a failure (-1) leaves `ts` zero, which shows as a negative stage, not as memory unsafety.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A stage's medians per batch, in seconds: the time it took, and the CPU time this process spent in it.
#[derive(Default)]
struct Stage {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Stage {
    fn push(&mut self, (w0, c0): (Instant, f64), (w1, c1): (Instant, f64)) {
        self.wall.push((w1 - w0).as_secs_f64());
        self.cpu.push(c1 - c0);
    }
    fn medians(&self) -> (f64, f64) {
        (median(&self.wall), median(&self.cpu))
    }
}

/// Where msk-sync's batch goes: the handler's stages timed apart over the same passes as [`msk_sync`] (one
/// warm-up pass, then `rounds`): reading the event, planning it (decode, filter, mask, map, collapse) and applying
/// the plan (the transaction: statements and commit). Medians per batch of the time and of this process's CPU
/// time, in seconds.
async fn phases(handler: &Handler, payloads: &[Vec<u8>], rounds: usize) -> [(f64, f64); 4] {
    let now = || (Instant::now(), cpu_time());
    let (mut parse, mut plan, mut apply, mut freed) = Default::default();
    for round in 0..=rounds {
        for bytes in payloads {
            let t0 = now();
            let event =
                MskEvent::from_slice_on(bytes, handler.pipeline().threads()).expect("event");
            let t1 = now();
            handler.pipeline().prepare(&event).await.expect("prepared");
            let p = handler.pipeline().plan_batch(&event).expect("planned");
            let t2 = now();
            let reject = |_, _: &str| -> msk_sync::sync::DeadLetter<'_> {
                panic!("the database refused a row of a generated batch")
            };
            handler
                .sink()
                .apply(&p.changes, &p.dead_letters, &reject)
                .await
                .expect("applied");
            let t3 = now();
            drop(p);
            drop(event);
            let t4 = now();
            if round > 0 {
                Stage::push(&mut parse, t0, t1);
                Stage::push(&mut plan, t1, t2);
                Stage::push(&mut apply, t2, t3);
                Stage::push(&mut freed, t3, t4);
            }
        }
    }
    [&parse, &plan, &apply, &freed].map(Stage::medians)
}

/// The Python peer: the same files, its own warm-up pass, then `rounds` timed passes; seconds per batch.
fn python(python: &Path, url: &str, files: &[PathBuf], rounds: usize) -> Vec<f64> {
    let out = std::process::Command::new(python)
        .arg(bench_dir().join("peer/peer.py"))
        .arg(url)
        .arg(rounds.to_string())
        .args(files)
        .output()
        .expect("run peer.py");
    assert!(
        out.status.success(),
        "peer.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("peer.py line");
            v["seconds"].as_f64().expect("seconds")
        })
        .collect();
    assert_eq!(times.len(), rounds * files.len(), "one line per batch");
    times
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

fn main() {
    let python_bin = peer_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, rounds, blocks) = shape();
    let (paths, records) = batches(dir.path(), files);
    let payloads: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read batch"))
        .collect();
    let bytes = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    println!(
        "peer: {} batch(es) of {records} records, {bytes} bytes; {rounds} round(s) x {blocks} block(s) per side",
        paths.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // MSK_SYNC_BENCH_BACKENDS=postgres,mariadb runs only those (a profile of one backend's batches).
    let only = std::env::var("MSK_SYNC_BENCH_BACKENDS").ok();
    for b in only.iter().flat_map(|o| o.split(',')) {
        assert!(
            ["sqlite", "postgres", "mariadb"].contains(&b.trim()),
            "MSK_SYNC_BENCH_BACKENDS: {b:?} is not sqlite, postgres or mariadb"
        );
    }
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|b| b.trim() == name))
    };
    for (name, url, alchemy_url) in rt.block_on(databases(dir.path())) {
        if !wanted(name) {
            continue;
        }
        let db = rt
            .block_on(Database::connect(url.as_str()))
            .expect("connect");
        rt.block_on(db.execute_unprepared("DROP TABLE IF EXISTS servicea_planet"))
            .expect("drop");
        // msk-sync creates the table (planet-sync's DDL); the peer writes the same one. Two handlers: as it
        // ships (a batch decoded on as many threads as the machine has CPUs) and on one thread, the figure of a
        // Lambda function under 1,769 MB.
        let handler = rt
            .block_on(planet_sync::app().handler(&Config::default(), Some(&url)))
            .expect("handler");
        let mut one_thread = Config::default();
        one_thread.codec.threads = Some(1);
        let single = rt
            .block_on(planet_sync::app().handler(&one_thread, Some(&url)))
            .expect("handler");
        rt.block_on(handler.sink().ensure_tables())
            .expect("create the table");
        let (mut ours, mut theirs, mut ours_single) = (Vec::new(), Vec::new(), Vec::new());
        let mut ratios = Vec::new();
        let mut differing = 0;
        for _ in 0..blocks {
            let clear = || {
                rt.block_on(db.execute_unprepared("DELETE FROM servicea_planet"))
                    .expect("clear")
            };
            clear();
            let a = rt.block_on(msk_sync(&handler, &payloads, rounds));
            let ours_rows = rt.block_on(rows(&db));
            clear();
            ours_single.extend(rt.block_on(msk_sync(&single, &payloads, rounds)));
            assert!(
                rt.block_on(rows(&db)) == ours_rows,
                "{name}: msk-sync on one thread left another table than on {}",
                handler.pipeline().threads()
            );
            clear();
            let b = python(&python_bin, &alchemy_url, &paths, rounds);
            let theirs_rows = rt.block_on(rows(&db));
            // The same planets must be left; a name may differ where a planet's records have timestamps out of
            // offset order within their partition: the peer's timestamp sort then applies an older change last,
            // msk-sync keeps each partition's offset order (what Kafka guarantees). The generator's jitter makes a
            // few such planets per batch.
            let keys =
                |rows: &[(String, String)]| rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            assert!(
                keys(&ours_rows) == keys(&theirs_rows),
                "{name}: msk-sync and the peer left different planets ({} vs {} rows)",
                ours_rows.len(),
                theirs_rows.len()
            );
            let differ = ours_rows
                .iter()
                .zip(&theirs_rows)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differ * 100 <= ours_rows.len().max(1),
                "{name}: {differ} of {} rows differ between msk-sync and the peer",
                ours_rows.len()
            );
            differing = differing.max(differ);
            ratios.push(median(&b) / median(&a));
            ours.extend(a);
            theirs.extend(b);
        }
        let (a, b) = (median(&ours), median(&theirs));
        let range = |v: &[f64]| {
            format!(
                "{:.1}-{:.1}",
                v.iter().copied().fold(f64::MAX, f64::min),
                v.iter().copied().fold(0.0, f64::max)
            )
        };
        println!(
            "peer/{name}: msk-sync {} per batch ({:.0} k records/s), Python peer {} per batch ({:.0} k records/s): msk-sync {:.1}x faster (blocks: {}x); min msk-sync {}, min peer {}; rows differing (timestamp inversions): {differing}",
            ms(a),
            records as f64 / a / 1e3,
            ms(b),
            records as f64 / b / 1e3,
            b / a,
            range(&ratios),
            ms(ours.iter().copied().fold(f64::MAX, f64::min)),
            ms(theirs.iter().copied().fold(f64::MAX, f64::min)),
        );
        let [parse, plan, apply, freed] = rt.block_on(phases(&handler, &payloads, rounds));
        let stages = |pick: fn((f64, f64)) -> f64| {
            let [a, b, c, d] = [parse, plan, apply, freed].map(pick);
            format!(
                "read the event {}, plan {}, apply {}, free the event and plan {} (sum {})",
                ms(a),
                ms(b),
                ms(c),
                ms(d),
                ms(a + b + c + d)
            )
        };
        println!(
            "peer/{name}: msk-sync's stages on {} threads, median per batch: {}",
            handler.pipeline().threads(),
            stages(|(wall, _)| wall),
        );
        // The CPU time of all this process's threads: what two cores could at best halve. Beside the stages'
        // times it says how much of each is msk-sync's own work and how much waits on the database server.
        println!(
            "peer/{name}: msk-sync's CPU time (all its threads), median per batch: {}",
            stages(|(_, cpu)| cpu),
        );
        let c = median(&ours_single);
        println!(
            "peer/{name}: msk-sync on {} threads {} per batch, on one thread {} ({:.2}x); the peer against one thread: {:.1}x",
            handler.pipeline().threads(),
            ms(a),
            ms(c),
            c / a,
            b / c,
        );
    }
}
