//! A batch never needs more memory than the function has (issue 34, item 3): with
//! `AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256` the worst shapes a producer can send — Glue values that inflate
//! 1000 to 1, Protobuf messages of empty nested messages mapped to a `json` column — keep the entity-sync
//! binary's peak RSS under 256 MB: what would go past the batch's budget is dead-lettered with a reason naming
//! the setting, the rest applies. A normal 6 MB JSON batch still applies whole at 128 MB.
//!
//! Each case runs the real binary (`replay`) in a child process and reads its peak RSS with `wait4`, as
//! `/usr/bin/time -v` does. SQLite is enough: the bound is the function's, not the database's.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use msk_sync_tests::*;
use serde_json::{Value, json};

/// Where the budget's refusals say what to raise.
const REASON: &str = "codec.max_";

/// entity-sync, built once (debug, as the tests are) beside this test binary; `$MSK_SYNC_MEMORY_BINARY`
/// instead when set (a release build, or one from before a change, for docs/src/memory.md's figures).
async fn binary() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            if let Some(path) = std::env::var_os("MSK_SYNC_MEMORY_BINARY") {
                return PathBuf::from(path);
            }
            let out = cargo_command(env!("CARGO"))
                .args(["build", "--quiet", "-p", "entity-sync"])
                .current_dir(repo())
                .output()
                .await
                .expect("cargo build -p entity-sync");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // target/debug/deps/memory-… → target/debug/entity-sync
            let exe = std::env::current_exe().expect("the test binary's path");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            dir.join("entity-sync")
        })
        .await
        .clone()
}

/// One measured case at a time: another test's generation would count in the child's peak.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one run of the binary gave.
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The child's peak resident set size, in MiB (ru_maxrss is in KiB on Linux).
    peak_mib: f64,
}

/// `entity-sync replay --config CONFIG --database-url URL EVENT` with the function memory `memory_mb`, its
/// peak RSS read with `wait4` on the child alone.
async fn replay_measured(db: &TestDb, config: &Path, event: &Path, memory_mb: u32) -> Measured {
    let exe = binary().await;
    // The child's peak starts from this process's resident set (a spawned child shares, then leaves, its
    // memory): reset this process's peak to what it holds now (Linux ≥ 4.0), so that what the events'
    // generation took before is not counted. What this process still holds is, a small overcount.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (stdout_path, stderr_path) = (db.dir.path().join("stdout"), db.dir.path().join("stderr"));
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let child = std::process::Command::new(exe)
        .arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--database-url")
        .arg(&db.url)
        .arg(event)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start entity-sync");
    let pid = child.id() as libc::pid_t;
    let (code, peak_kib) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it for the child we spawned (its Child is
        // dropped without waiting, which neither waits nor kills).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
        drop(child);
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        (code, usage.ru_maxrss)
    })
    .await
    .unwrap();
    Measured {
        code,
        stdout: std::fs::read_to_string(stdout_path).unwrap(),
        stderr: std::fs::read_to_string(stderr_path).unwrap(),
        peak_mib: peak_kib as f64 / 1024.0,
    }
}

impl Measured {
    fn report(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no report ({e}), exit {:?}:\n{}\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    /// The dead letters' reasons.
    fn reasons(&self) -> Vec<String> {
        self.report()["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["reason"].as_str().map(str::to_string))
            .collect()
    }
}

fn event(topic: &str, values: &[Vec<u8>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"topic": topic, "partition": 0, "offset": i, "timestamp": 1_764_000_000_000_i64,
                   "timestampType": "CREATE_TIME", "value": b64.encode(v), "headers": []})
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {format!("{topic}-0"): records}}).to_string()
}

/// zlib: raw deflate (apache-avro's compressor) in zlib's header and Adler-32 trailer.
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut deflated = data.to_vec();
    apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default())
        .compress(&mut deflated)
        .expect("deflate");
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5_552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65_521;
        b %= 65_521;
    }
    let mut out = vec![0x78, 0x9c];
    out.extend(deflated);
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

const GLUE_VERSION: &str = "d00d0000-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

const GLUE_CONFIG: &str = r#"[codec]
value = "glue"
glue_schemas = { "d00d0000-1c2d-4e5f-8a9b-0c1d2e3f4a5b" = "doc.schema.json" }

[[sync]]
topics = ["glue"]
table = "glue_docs"
key = ["uuid"]
columns = [{ name = "uuid", path = "$.planetUuid" }, { name = "name", path = "$.planetName" }]
"#;

/// A Glue-framed, zlib-compressed JSON value `{"planetUuid": uuid, "planetName": <pad bytes of "a">}`.
fn glue_zlib(uuid: &str, pad: usize) -> Vec<u8> {
    let mut doc = format!("{{\"planetUuid\":\"{uuid}\",\"planetName\":\"").into_bytes();
    doc.resize(doc.len() + pad, b'a');
    doc.extend_from_slice(b"\"}");
    let mut out = vec![3, 5];
    out.extend(msk_sync::decode::glue::parse_uuid(GLUE_VERSION).expect("a UUID"));
    out.extend(zlib(&doc));
    out
}

/// Four Glue values of 60 MiB each once inflated (a ~330 KB event), after a small one.
#[tokio::test]
async fn glue_values_that_inflate_a_thousandfold_stay_within_the_function() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new(Backend::Sqlite, "memory_glue").await;
    db.write("doc.schema.json", r#"{"type": "object"}"#);
    let config = db.write("glue.toml", GLUE_CONFIG);
    let mut values = vec![glue_zlib("small", 100)];
    values.extend((0..4).map(|i| glue_zlib(&format!("big{i}"), 60 << 20)));
    let event = event("glue", &values);
    drop(values);
    let file = db.write("event.json", &event);
    let event_kb = event.len() / 1000;
    drop(event);
    let run = replay_measured(&db, &config, &file, 256).await;
    eprintln!(
        "glue: event {} KB, peak RSS {:.0} MiB",
        event_kb, run.peak_mib
    );
    let report = run.report();
    assert!(run.peak_mib < 256.0, "peak RSS {:.0} MiB", run.peak_mib);
    let (upserted, dead) = (
        report["upserted"].as_u64().unwrap_or_default(),
        report["deadLettered"].as_u64().unwrap_or_default(),
    );
    assert_eq!(upserted + dead, 5, "{report}");
    assert!(dead >= 1, "the batch cannot hold all four: {report}");
    let reasons = run.reasons();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| r.contains(REASON)),
        "{reasons:?}"
    );
    // The small one and whatever fitted are in the table.
    let rows = db.rows("glue_docs", &["uuid"], "uuid").await;
    assert_eq!(rows.len() as u64, upserted, "{rows:?}");
    assert!(rows.contains(&vec!["small".to_string()]), "{rows:?}");
}

const PROTO: &str = r#"syntax = "proto3";
package mem;
message Leaf {
  int64 a = 1; int64 b = 2; int64 c = 3; int64 d = 4; int64 e = 5; int64 f = 6; int64 g = 7; int64 h = 8;
  string i = 9; string j = 10; bool k = 11; double l = 12;
}
message Doc {
  string id = 1;
  repeated Leaf items = 2;
}
"#;

const PROTO_CONFIG: &str = r#"[codec]
value = "protobuf"
proto = ["mem.proto"]
message = "mem.Doc"

[[sync]]
topics = ["docs"]
table = "proto_docs"
key = ["id"]
columns = [{ name = "id", path = "$.id" }, { name = "doc", path = "$", type = "json" }]
"#;

/// A `mem.Doc` of `items` empty `Leaf` messages: two bytes each on the wire, twelve fields each decoded.
fn proto_doc(id: &str, items: usize) -> Vec<u8> {
    let mut out = vec![0x0a, id.len() as u8];
    out.extend_from_slice(id.as_bytes());
    for _ in 0..items {
        out.extend([0x12, 0x00]);
    }
    out
}

/// A ~4.5 MB event: one small document, three of 50,000 empty nested messages (they decode within the budget;
/// their `json` column would not fit), then five of 300,000 (they would not decode within it).
#[tokio::test]
async fn protobuf_trees_of_empty_messages_stay_within_the_function() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new(Backend::Sqlite, "memory_proto").await;
    db.write("mem.proto", PROTO);
    let config = db.write("proto.toml", PROTO_CONFIG);
    let mut values = vec![proto_doc("small", 3)];
    values.extend((0..3).map(|i| proto_doc(&format!("mid{i}"), 50_000)));
    values.extend((0..5).map(|i| proto_doc(&format!("big{i}"), 300_000)));
    let event = event("docs", &values);
    drop(values);
    let file = db.write("event.json", &event);
    let event_kb = event.len() / 1000;
    drop(event);
    let run = replay_measured(&db, &config, &file, 256).await;
    eprintln!(
        "protobuf: event {} KB, peak RSS {:.0} MiB",
        event_kb, run.peak_mib
    );
    let report = run.report();
    assert!(run.peak_mib < 256.0, "peak RSS {:.0} MiB", run.peak_mib);
    let (upserted, dead) = (
        report["upserted"].as_u64().unwrap_or_default(),
        report["deadLettered"].as_u64().unwrap_or_default(),
    );
    assert_eq!(upserted + dead, 9, "{report}");
    assert!(dead >= 1, "the batch cannot hold them all: {report}");
    let reasons = run.reasons();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| r.contains(REASON)),
        "{reasons:?}"
    );
    let rows = db.rows("proto_docs", &["id"], "id").await;
    assert_eq!(rows.len() as u64, upserted, "{rows:?}");
    assert!(rows.contains(&vec!["small".to_string()]), "{rows:?}");
}

/// The largest JSON batch Lambda hands a function applies whole at 128 MB and 256 MB: the budget refuses
/// what a producer blows up, never ordinary rows.
#[tokio::test]
async fn a_full_json_batch_applies_whole_in_a_small_function() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (event, records) = msk_sync_bench::generate_to_size(
        msk_sync_bench::LAMBDA_PAYLOAD_LIMIT,
        msk_sync_bench::GenConfig::default(),
    );
    let event = event.to_string();
    for memory in [128, 256] {
        let db = TestDb::new(Backend::Sqlite, &format!("memory_json_{memory}")).await;
        let file = db.write("event.json", &event);
        let run = replay_measured(&db, Path::new(&default_config()), &file, memory).await;
        eprintln!(
            "json at {memory} MB: {records} records, peak RSS {:.0} MiB",
            run.peak_mib
        );
        let report = run.report();
        assert_eq!(report["deadLettered"], 0, "{memory} MB: {report}");
        assert_eq!(report["received"], records, "{memory} MB: {report}");
        assert!(
            run.peak_mib < f64::from(memory),
            "{memory} MB: peak RSS {:.0} MiB",
            run.peak_mib
        );
    }
}
