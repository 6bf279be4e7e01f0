//! Protobuf values written by an independent implementation — Python's `protobuf` package (Google's) — and
//! read by msk-sync, compared field by field with Python's own JSON mapping (`json_format.MessageToDict`):
//! every scalar type, nested messages, repeated fields, maps, oneofs, enums and the well-known types, bare and
//! Confluent-framed (Python computes the message indexes from its own descriptors). Then Protobuf and AWS Glue
//! events replayed through entity-sync into SQLite, PostgreSQL and MariaDB.
//!
//! Needs a Python with `protobuf`: `$MSK_SYNC_TEST_PYTHON`, else the venv `cargo xtask setup` makes
//! (~/.cache/msk-sync-ci-venv). Without it these tests fail, naming the setup; they never skip.

// The cases of every field kind are one json! literal, deeper than the macro's default recursion.
#![recursion_limit = "256"]

use std::path::PathBuf;

use msk_sync::decode::{Codec, CodecConfig, DecodeError};
use msk_sync_tests::*;
use serde_json::{Value, json};

/// The Python interpreter with `protobuf`.
fn python() -> PathBuf {
    let python = std::env::var_os("MSK_SYNC_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/msk-sync-ci-venv/bin/python"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Python for the Protobuf tests: set MSK_SYNC_TEST_PYTHON to a Python with the `protobuf` \
                 package, or run `cargo xtask setup` (it makes ~/.cache/msk-sync-ci-venv with it)"
            )
        });
    let check = std::process::Command::new(&python)
        .args(["-c", "import google.protobuf"])
        .output()
        .expect("run Python");
    assert!(
        check.status.success(),
        "{} has no `protobuf` package: `pip install protobuf` into it, or run `cargo xtask setup`",
        python.display()
    );
    python
}

/// Has Python write each case (`{"type": "pkg.Msg", "json": {…}}`, the message in proto3 JSON) with the
/// descriptors of `proto`; returns, per case, the bare bytes, the Confluent-framed bytes (schema id 1) and
/// Python's JSON mapping of the message.
fn python_writes(proto: &str, cases: &Value) -> Vec<(Vec<u8>, Vec<u8>, Value)> {
    const SCRIPT: &str = r#"
import json, sys
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

fds = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
pool = descriptor_pool.DescriptorPool()
for f in fds.file:
    pool.Add(f)

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def zigzag(n):
    return varint((n << 1) ^ (n >> 63))

for case in json.load(open(sys.argv[2])):
    desc = pool.FindMessageTypeByName(case["type"])
    message = json_format.Parse(
        json.dumps(case["json"]), message_factory.GetMessageClass(desc)(), descriptor_pool=pool
    )
    body = message.SerializeToString()
    # Confluent's message indexes: the top-level message's index in its file, then each nested one's.
    path, d = [], desc
    while d.containing_type is not None:
        path.insert(0, list(d.containing_type.nested_types).index(d))
        d = d.containing_type
    path.insert(0, list(d.file.message_types_by_name.values()).index(d))
    indexes = zigzag(0) if path == [0] else zigzag(len(path)) + b"".join(zigzag(i) for i in path)
    framed = b"\x00" + (1).to_bytes(4, "big") + indexes + body
    mapped = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, descriptor_pool=pool
    )
    print(json.dumps({"bare": body.hex(), "confluent": framed.hex(), "json": mapped}))
"#;
    let (pool, _) = msk_sync::decode::protobuf::compile(&[repo().join(proto)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fds = dir.path().join("fds.bin");
    std::fs::write(&fds, pool.encode_to_vec()).unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, cases.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .args(["-c", SCRIPT])
        .arg(&fds)
        .arg(&input)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "Python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = |v: &Value| -> Vec<u8> {
        let s = v.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (hex(&v["bare"]), hex(&v["confluent"]), v["json"].clone())
        })
        .collect()
}

/// Field-by-field equality of msk-sync's message and Python's JSON mapping, with the one documented
/// difference: 64-bit integers are exact numbers in msk-sync, quoted strings in proto3 JSON.
fn compare(path: &str, ours: &Value, python: &Value) {
    match (ours, python) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => compare(&format!("{path}.{k}"), x, y),
                    (x, y) => panic!("{path}.{k}: msk-sync has {x:?}, Python {y:?}"),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths differ: {a:?} / {b:?}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Number(n), Value::String(s)) => {
            assert_eq!(&n.to_string(), s, "{path}: a 64-bit integer differs")
        }
        (Value::Number(a), Value::Number(b)) => {
            if a.is_f64() || b.is_f64() {
                // A float32 is written as the shortest text that reads back as it; Python writes at least 6
                // digits (1.4013e-45 where 1e-45 reads back the same): the same float32, and no longer.
                let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                if x != y && (x as f32) == (y as f32) && a.to_string().len() <= b.to_string().len()
                {
                    return;
                }
                assert_eq!(a.as_f64(), b.as_f64(), "{path}");
            } else {
                assert_eq!(a, b, "{path}");
            }
        }
        _ => assert_eq!(ours, python, "{path}"),
    }
}

fn codec(proto: &str, message: &str) -> Codec {
    let cfg: CodecConfig = serde_json::from_value(json!({
        "value": "protobuf", "proto": [proto], "message": message, "schemas": {"1": proto}
    }))
    .unwrap();
    cfg.build(Some(repo())).unwrap()
}

#[test]
fn python_written_values_of_every_field_kind_read_as_pythons_json_mapping() {
    let cases = json!([
        {"type": "everything.Everything", "json": {
            "fDouble": 1.5e300, "fFloat": -0.25, "fInt32": -2147483648, "fInt64": "-9223372036854775808",
            "fUint32": 4294967295u32, "fUint64": "18446744073709551615", "fSint32": -1,
            "fSint64": "-9007199254740993", "fFixed32": 4294967295u32, "fFixed64": "18446744073709551615",
            "fSfixed32": -2147483648, "fSfixed64": "9223372036854775807", "fBool": true,
            "fString": "h\u{e9}llo \"w\" \u{2713} \u{1F600}", "fBytes": "AAH/gA==", "color": "GREEN",
            "inner": {"name": "a", "child": {"name": "b"}},
            "rInt64": ["1", "-2", "9007199254740993"], "rString": ["x", ""],
            "rInner": [{"name": "i0"}, {}], "rColor": ["RED", "COLOR_UNSPECIFIED"],
            "mInt": {"k": "-5", "": "0"}, "mInner": {"7": {"name": "seven"}, "-1": {}},
            "mBool": {"true": "yes", "false": "no"},
            "oInner": {"name": "o"}, "optInt": 0,
            "ts": "2024-05-01T12:00:00.500Z", "dur": "-1.500s",
            "wInt64": "-3", "wString": "", "wBool": false, "wDouble": 2.5, "wBytes": "AQI=", "wUint32": 7,
            "st": {"a": 1, "b": [true, null, "s"], "c": {"d": 1.5}}, "val": "text", "lst": [1, "two"],
            "mask": "planetName,location.galaxy", "empty": {}
        }},
        {"type": "everything.Everything", "json": {}},
        {"type": "everything.Everything", "json": {
            "fDouble": "NaN", "fFloat": "-Infinity", "oString": "chosen", "val": null,
            "ts": "1970-01-01T00:00:00Z", "dur": "0s", "wInt64": "0"
        }},
        {"type": "everything.Everything.Inner", "json": {"name": "nested", "child": {"child": {"name": "c"}}}},
        // float32 printed as the shortest text that reads back as that float32 (not its widening to a double),
        // NaN and the infinities in wrappers as in plain fields, Any with a message or a well-known type.
        {"type": "everything.Everything", "json": {
            "fFloat": 0.1, "wFloat": "NaN", "wDouble": "-Infinity",
            "any": {"@type": "type.googleapis.com/everything.Everything.Inner", "name": "packed",
                    "child": {"name": "deeper"}},
            "mLong": {"-3": "minus three", "10": "ten", "2": "two"}
        }},
        {"type": "everything.Everything", "json": {
            "fFloat": 1e-45, "wFloat": 3.4028234e38, "wDouble": "Infinity",
            "any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "-0.000000005s"}
        }},
        {"type": "everything.Everything", "json": {
            "fFloat": 16777217.0, "wFloat": "-Infinity", "wDouble": "NaN", "dur": "315576000000s",
            "ts": "9999-12-31T23:59:59.999999999Z", "any": {}
        }},
    ]);
    let written = python_writes("tests/proto/everything.proto", &cases);
    assert_eq!(written.len(), 7);
    for (i, (bare, framed, mapped)) in written.iter().enumerate() {
        let ty = cases[i]["type"].as_str().unwrap();
        let c = codec("tests/proto/everything.proto", ty);
        let ours = c.decode(bare, None).unwrap().messages[0].to_value();
        compare(&format!("case {i} (bare)"), &ours, mapped);
        // Confluent framing names the type itself: a codec for the outer type reads the nested one too.
        let outer = codec("tests/proto/everything.proto", "everything.Everything");
        let ours = outer.decode(framed, None).unwrap().messages[0].to_value();
        compare(&format!("case {i} (Confluent)"), &ours, mapped);
    }
    // The first case's oneof member is the message, and the proto3-optional field set to 0 is there.
    let c = codec("tests/proto/everything.proto", "everything.Everything");
    let first = c.decode(&written[0].0, None).unwrap().messages[0].to_value();
    assert_eq!(first["oInner"], json!({"name": "o"}));
    assert_eq!(first["optInt"], 0);
    assert!(first.get("oString").is_none() && first.get("oInt").is_none());
    assert_eq!(first["fInt64"], json!(i64::MIN));
    assert_eq!(first["fUint64"], json!(u64::MAX));
    // As text too (what a json column holds): the float32 0.1 is 0.1, wrappers keep NaN and infinities.
    let floats = c.decode(&written[4].0, None).unwrap().messages[0].to_value();
    assert_eq!(floats["fFloat"].to_string(), "0.1");
    assert_eq!(
        (&floats["wFloat"], &floats["wDouble"]),
        (&json!("NaN"), &json!("-Infinity"))
    );
    let floats = c.decode(&written[5].0, None).unwrap().messages[0].to_value();
    assert_eq!(floats["fFloat"].to_string(), "1e-45");
    assert_eq!(floats["wFloat"].to_string(), "3.4028235e+38");
    assert_eq!(floats["any"]["value"], "-0.000000005s");
}

/// Has Python build each case — `{"ts": [seconds, nanos]}` or `{"dur": [seconds, nanos]}`, set field by
/// field, so that values its JSON parser would refuse are written too — and map it; returns, per case, the
/// bare bytes and Python's JSON mapping, or the error it refuses the message with.
fn python_sets(cases: &Value) -> Vec<(Vec<u8>, Result<Value, String>)> {
    const SCRIPT: &str = r#"
import json, sys
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

fds = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
pool = descriptor_pool.DescriptorPool()
for f in fds.file:
    pool.Add(f)
cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("everything.Everything"))
for case in json.load(open(sys.argv[2])):
    message = cls()
    for field, (seconds, nanos) in case.items():
        getattr(message, field).seconds = seconds
        getattr(message, field).nanos = nanos
    out = {"bare": message.SerializeToString().hex()}
    try:
        out["json"] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    except Exception as e:
        out["error"] = str(e)
    print(json.dumps(out))
"#;
    let proto = "tests/proto/everything.proto";
    let (pool, _) = msk_sync::decode::protobuf::compile(&[repo().join(proto)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fds = dir.path().join("fds.bin");
    std::fs::write(&fds, pool.encode_to_vec()).unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, cases.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .args(["-c", SCRIPT])
        .arg(&fds)
        .arg(&input)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "Python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let s = v["bare"].as_str().unwrap();
            let bytes = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect();
            let mapped = match v.get("error") {
                Some(e) => Err(e.as_str().unwrap().to_string()),
                None => Ok(v["json"].clone()),
            };
            (bytes, mapped)
        })
        .collect()
}

/// Durations and Timestamps at and past the edges of what the proto3 JSON mapping allows: msk-sync writes
/// what Python's protobuf writes, and refuses (dead-letters) exactly what it refuses: seconds and nanos of
/// different signs, nanos past a second, dates outside years 1 to 9999.
#[test]
fn durations_and_timestamps_are_refused_where_pythons_protobuf_refuses_them() {
    const MAX_D: i64 = 315_576_000_000;
    const MIN_T: i64 = -62_135_596_800;
    const MAX_T: i64 = 253_402_300_799;
    let mut cases = Vec::new();
    for seconds in [
        0,
        1,
        -1,
        59,
        -59,
        MAX_D,
        -MAX_D,
        MAX_D + 1,
        -MAX_D - 1,
        i64::MAX,
        i64::MIN,
    ] {
        for nanos in [
            0,
            5,
            -5,
            500_000_000,
            -500_000_000,
            1_000,
            999_999_999,
            -999_999_999,
        ] {
            cases.push(json!({"dur": [seconds, nanos]}));
        }
    }
    for nanos in [1_000_000_000, -1_000_000_000, i32::MAX, i32::MIN] {
        cases.push(json!({"dur": [0, nanos]}));
    }
    for seconds in [
        0,
        1,
        -1,
        1_714_564_800,
        MIN_T,
        MAX_T,
        MIN_T - 1,
        MAX_T + 1,
        i64::MIN,
        i64::MAX,
    ] {
        for nanos in [
            0,
            1,
            1_000,
            1_000_000,
            999_999_999,
            -1,
            1_000_000_000,
            i32::MIN,
        ] {
            cases.push(json!({"ts": [seconds, nanos]}));
        }
    }
    let cases = Value::Array(cases);
    let results = python_sets(&cases);
    assert_eq!(results.len(), cases.as_array().unwrap().len());
    let c = codec("tests/proto/everything.proto", "everything.Everything");
    let (mut refused, mut written) = (0, 0);
    for (i, (bytes, python)) in results.iter().enumerate() {
        let case = &cases[i];
        match (c.decode(bytes, None), python) {
            (Ok(ours), Ok(mapped)) => {
                compare(&format!("{case}"), &ours.messages[0].to_value(), mapped);
                written += 1;
            }
            (Err(DecodeError::Permanent(m)), Err(_)) => {
                assert!(m.contains("is not valid"), "{case}: {m}");
                refused += 1;
            }
            (ours, python) => panic!("{case}: msk-sync {ours:?}, Python {python:?}"),
        }
    }
    assert!(
        refused > 50 && written > 50,
        "{refused} refused, {written} written"
    );
    // The issue's case, by name.
    let one = python_sets(&json!([{"dur": [1, -5]}])).pop().unwrap();
    assert!(one.1.is_err(), "Python refuses it");
    match c.decode(&one.0, None) {
        Err(DecodeError::Permanent(m)) => {
            assert!(m.contains("seconds 1 and nanos -5 differ in sign"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// Map entries in key order, so that the same message is the same text on every run (prost-reflect keeps a
/// map in a hash map, whose order changes from one to the next): strings by their bytes, numbers by value,
/// false before true.
#[test]
fn map_entries_come_out_in_key_order_on_every_run() {
    let m_int: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("key{}", (i * 7919) % 40), json!(i.to_string())))
        .collect();
    let m_long: serde_json::Map<String, Value> = [-100i64, 3, -2, 1_000_000, 0, 42, 7]
        .iter()
        .map(|n| (n.to_string(), json!(format!("v{n}"))))
        .collect();
    let cases = json!([{"type": "everything.Everything", "json": {
        "mInt": m_int, "mLong": m_long, "mBool": {"true": "t", "false": "f"},
        "mInner": {"5": {"name": "five"}, "-5": {}, "12": {}},
        "st": {"z": 1, "a": {"y": 2, "b": 3}}
    }}]);
    let (bare, _, mapped) = python_writes("tests/proto/everything.proto", &cases)
        .pop()
        .unwrap();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut texts = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let c = codec("tests/proto/everything.proto", "everything.Everything");
        let ours = c.decode(&bare, None).unwrap().messages[0].to_value();
        compare("map case", &ours, &mapped);
        let mut sorted = keys(&ours["mInt"]);
        sorted.sort();
        assert_eq!(keys(&ours["mInt"]), sorted, "string keys by their bytes");
        assert_eq!(
            keys(&ours["mLong"]),
            ["-100", "-2", "0", "3", "7", "42", "1000000"],
            "numbers by value"
        );
        assert_eq!(keys(&ours["mBool"]), ["false", "true"]);
        assert_eq!(keys(&ours["mInner"]), ["-5", "5", "12"]);
        assert_eq!(keys(&ours["st"]), ["a", "z"]);
        texts.insert(ours.to_string());
    }
    assert_eq!(texts.len(), 1, "one text for one message: {texts:?}");
}

#[test]
fn python_written_values_cut_short_or_bent_are_permanent() {
    let cases = json!([{"type": "everything.Everything", "json": {
        "fString": "a string long enough", "inner": {"name": "n"}, "rInt64": ["1", "2", "3"]
    }}]);
    let (bare, framed, _) = python_writes("tests/proto/everything.proto", &cases)
        .pop()
        .unwrap();
    let c = codec("tests/proto/everything.proto", "everything.Everything");
    let permanent = |bytes: &[u8]| match c.decode(bytes, None) {
        Err(DecodeError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    };
    // Every proper prefix that cuts a field is refused, none panics.
    let mut refused = 0;
    for n in 1..bare.len() {
        if c.decode(&bare[..n], None).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > bare.len() / 2,
        "{refused} of {} prefixes refused",
        bare.len()
    );
    // The first tag's wire type bent (field 14 is a string: 2 → 0 is a varint of the length, then junk).
    let mut bent = bare.clone();
    bent[0] = (bent[0] & !7) | 5;
    assert!(!permanent(&bent).is_empty());
    // An unknown message index, a schema id that is not configured.
    let mut unknown_index = framed[..5].to_vec();
    unknown_index.extend([2, 40]);
    unknown_index.extend(&bare);
    assert!(permanent(&unknown_index).contains("unknown message index [20]"));
    let mut other_id = framed.clone();
    other_id[4] = 2;
    assert!(permanent(&other_id).contains("unknown schema id 2"));
}

on_every_backend!(
    protobuf_events_are_replayed_into_the_table,
    glue_events_are_replayed_into_the_table,
);

async fn protobuf_events_are_replayed_into_the_table(backend: Backend) {
    let db = TestDb::new(backend, &format!("protobuf_{backend:?}")).await;
    let config = repo().join("events/protobuf.toml").display().to_string();
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(&config),
        &["planet-protobuf.json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.received, report.upserted, report.dead_lettered),
        (4, 3, 1),
        "{}",
        run.stdout
    );
    let rows = db
        .rows(
            "servicea_planet_proto",
            &["uuid", "name", "published", "population", "galaxy"],
            "uuid",
        )
        .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0][0], "00000011-7c1e-4b8a-9f3d-5e2a1c0b0011");
    assert_eq!(rows[0][1], "Giedi Prime");
    assert_eq!(
        rows[0][3], "9007199254740993",
        "64-bit integers arrive exact"
    );
    assert_eq!(rows[0][4], "Known Universe");
    assert_eq!(rows[2][1], "Ix", "the Confluent-framed record");
    let dead = db.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
}

async fn glue_events_are_replayed_into_the_table(backend: Backend) {
    let db = TestDb::new(backend, &format!("glue_{backend:?}")).await;
    let config = repo().join("events/glue.toml").display().to_string();
    let run = replay_with(&entity_sync(), &db, Some(&config), &["planet-glue.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.received, report.upserted, report.dead_lettered),
        (4, 3, 1),
        "{}",
        run.stdout
    );
    let rows = db
        .rows("servicea_planet_glue", &["uuid", "name"], "uuid")
        .await;
    let names: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names, ["Arrakis", "Caladan", "Giedi Prime"], "{rows:?}");
    let dead = db.dead_letters().await;
    assert_eq!(dead.len(), 1, "the unknown schema version: {dead:?}");
}
