//! The schema-registry client against a local HTTP server that speaks the Confluent registry's REST shape:
//! schemas fetched once and cached, an unknown id dead-lettered (and asked again after its time-to-live), a
//! registry that is down, failing or answering something else than a schema makes the batch transient
//! (retried), basic auth sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use msk_sync::pipeline::HandlerError;
use msk_sync_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests seen: (path, Authorization header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An answer a test sets for a path: status line, content type, body, and a delay before answering.
#[derive(Clone)]
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
    delay_ms: u64,
}

impl Answer {
    fn new(status: &'static str, content_type: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type,
            body: body.to_string(),
            delay_ms: 0,
        }
    }

    /// The registry's answer for a known id: events/schemas/planet.avsc.
    fn planet() -> Self {
        let schema = std::fs::read_to_string(repo().join("events/schemas/planet.avsc")).unwrap();
        Self::new(
            "200 OK",
            "application/vnd.schemaregistry.v1+json",
            &serde_json::json!({"schema": schema}).to_string(),
        )
    }
}

/// Answers by path, set by the test (they take precedence over the defaults of [`registry`]).
type Answers = Arc<Mutex<HashMap<String, Answer>>>;

/// Serves `/schemas/ids/1` (events/schemas/planet.avsc), 404 for other ids, 500 for id 500.
async fn registry() -> (String, Seen) {
    let (url, seen, _) = registry_with_answers().await;
    (url, seen)
}

/// [`registry`], with the answers a test sets.
async fn registry_with_answers() -> (String, Seen, Answers) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let answers: Answers = Arc::default();
    let set = Arc::clone(&answers);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let answers = Arc::clone(&set);
            let log = Arc::clone(&log);
            // One task per connection: a slow answer must not hold up the next request.
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let auth = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("authorization:")
                        .then(|| l[14..].trim().to_string())
                });
                log.lock().unwrap().push((path.clone(), auth));
                let json = "application/vnd.schemaregistry.v1+json";
                let set = answers.lock().unwrap().get(&path).cloned();
                let answer = set.unwrap_or_else(|| match path.as_str() {
                    "/schemas/ids/1" => Answer::planet(),
                    "/schemas/ids/500" => {
                        Answer::new("500 Internal Server Error", json, r#"{"error_code":50001}"#)
                    }
                    _ => Answer::new(
                        "404 Not Found",
                        json,
                        r#"{"error_code":40403,"message":"Schema not found"}"#,
                    ),
                });
                tokio::time::sleep(std::time::Duration::from_millis(answer.delay_ms)).await;
                let response = format!(
                    "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    answer.status,
                    answer.content_type,
                    answer.body.len(),
                    answer.body
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen, answers)
}

/// entity-sync's handler with `config`, on `db`.
async fn registry_handler(db: &TestDb, config: &std::path::Path) -> msk_sync::pipeline::Handler {
    entity_sync()
        .load(Some(config))
        .unwrap()
        .handler(Some(&db.url))
        .await
        .unwrap()
}

fn config(db: &TestDb, url: &str) -> std::path::PathBuf {
    config_with(db, url, "")
}

/// The Avro sample config with the registry at `url`; `extra` adds settings to `[codec.registry]`.
fn config_with(db: &TestDb, url: &str, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("events/avro.toml"))
        .unwrap()
        .replace(
            "schemas = { \"1\" = \"schemas/planet.avsc\" }   # relative to this file",
            &format!("registry = {{ url = \"{url}\", username = \"u\", password = \"p\"{extra} }}"),
        );
    assert!(text.contains("registry ="));
    db.write("registry.toml", &text)
}

#[tokio::test]
async fn schemas_come_from_the_registry_once_and_unknown_ids_are_dead_lettered() {
    let (url, seen) = registry().await;
    let db = TestDb::new(Backend::Sqlite, "registry_ok").await;
    let handler = registry_handler(&db, &config(&db, &url)).await;
    let payload = || -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap(),
        )
        .unwrap()
    };
    let report = handler.handle_json(payload()).await.unwrap();
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (1, 1, 2),
        "{report:?}"
    );
    assert_eq!(
        report.records[0].reason.as_deref(),
        Some("unknown schema id 9 (the schema registry has no such schema)")
    );
    // Masked with the fetched writer schema.
    let rows = db
        .rows(
            "servicea_planet_avro",
            &["name", "discovered_by", "sector"],
            "uuid",
        )
        .await;
    assert_eq!(rows, vec![vec!["Giedi Prime", "House Harkonnen", "NULL"]]);
    // Again: nothing is fetched twice, not even the id the registry does not know.
    handler.handle_json(payload()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/schemas/ids/1", "/schemas/ids/9"]);
    assert!(
        seen.iter()
            .all(|(_, auth)| auth.as_deref() == Some("Basic dTpw")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_registry_that_is_down_or_failing_makes_the_batch_retry() {
    let db = TestDb::new(Backend::Sqlite, "registry_down").await;
    // Nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cfg = config(&db, &closed);
    let run = replay_config(&db, &cfg, &["planet-avro-confluent.json"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("schema registry, schema id 1"),
        "{}",
        run.stderr
    );

    // A 500: transient as well, and nothing is written.
    let (url, _) = registry().await;
    let handler = registry_handler(&db, &config(&db, &url)).await;
    match handler.handle_json(reframed(500)).await {
        Err(HandlerError::Transient(e)) => assert!(e.contains("HTTP 500"), "{e}"),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

/// The Confluent sample event with its first record (schema id 1, offset 800) re-framed as schema `id`.
fn reframed(id: u32) -> serde_json::Value {
    use base64::Engine;
    let mut event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap(),
    )
    .unwrap();
    let record = &mut event["records"]["servicea.planet-0"][0];
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(record["value"].as_str().unwrap())
        .unwrap();
    bytes[1..5].copy_from_slice(&id.to_be_bytes());
    record["value"] = base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into();
    event
}

/// Whatever is not a schema response and not the registry's own "schema not found" says nothing about the id:
/// the batch is retried, nothing is dead-lettered or cached, and once the registry answers, the batch applies.
#[tokio::test]
async fn answers_that_are_not_a_schema_make_the_batch_retry() {
    let (url, seen, answers) = registry_with_answers().await;
    let db = TestDb::new(Backend::Sqlite, "registry_not_a_schema").await;
    let handler = registry_handler(&db, &config_with(&db, &url, ", timeout_ms = 300")).await;
    let html = "<html><body>Bad gateway, try later</body></html>";
    let cases = [
        (
            Answer::new("200 OK", "text/html", html),
            "HTTP 200 but not a schema response",
        ),
        (
            Answer::new("200 OK", "application/json", r#"{"error_code":40403}"#),
            "HTTP 200 but not a schema response",
        ),
        (
            Answer::new("408 Request Timeout", "text/plain", "slow down"),
            "HTTP 408 Request Timeout",
        ),
        (
            // A proxy's 404 (no registry behind it), not the registry's 40403.
            Answer::new("404 Not Found", "text/html", html),
            "HTTP 404 Not Found but not the registry's \"schema not found\"",
        ),
        (
            Answer::new("429 Too Many Requests", "application/json", "{}"),
            "HTTP 429 Too Many Requests",
        ),
        (
            Answer::new("503 Service Unavailable", "text/html", html),
            "HTTP 503 Service Unavailable",
        ),
        (
            Answer {
                delay_ms: 3_000,
                ..Answer::planet()
            },
            "timed out after 300 ms",
        ),
    ];
    let path = "/schemas/ids/1".to_string();
    for (answer, expected) in cases {
        answers.lock().unwrap().insert(path.clone(), answer);
        let payload = serde_json::from_str(
            &std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap(),
        )
        .unwrap();
        match handler.handle_json(payload).await {
            Err(HandlerError::Transient(e)) => {
                assert!(e.contains("schema registry, schema id 1"), "{e}");
                assert!(e.contains(expected), "expected {expected:?} in {e:?}");
                assert!(!e.contains("Bad gateway"), "the body is never quoted: {e}");
            }
            other => panic!("{expected}: expected a transient failure, got {other:?}"),
        }
    }
    // The registry is back: the same handler asks again and applies the batch.
    answers.lock().unwrap().remove(&path);
    let payload = serde_json::from_str(
        &std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap(),
    )
    .unwrap();
    let report = handler.handle_json(payload).await.unwrap();
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (1, 1, 2),
        "{report:?}"
    );
    let asked = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == path)
        .count();
    assert_eq!(asked, 8, "one request per batch: nothing was cached");
}

/// The registry's "schema not found" dead-letters the record, but only for the time-to-live: a later batch
/// asks again, and once the schema is registered its records apply.
#[tokio::test]
async fn an_unknown_id_is_asked_again_after_its_time_to_live() {
    let (url, seen, answers) = registry_with_answers().await;
    let db = TestDb::new(Backend::Sqlite, "registry_ttl").await;
    // A time-to-live of 0: every batch asks again (the default is 60 s).
    let handler = registry_handler(&db, &config_with(&db, &url, ", not_found_ttl_ms = 0")).await;
    let report = handler.handle_json(reframed(7)).await.unwrap();
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (0, 1, 3),
        "{report:?}"
    );
    assert!(
        report.records.iter().any(|r| r.offset == 800
            && r.reason.as_deref()
                == Some("unknown schema id 7 (the schema registry has no such schema)")),
        "{report:?}"
    );
    // Schema 7 is registered now.
    answers
        .lock()
        .unwrap()
        .insert("/schemas/ids/7".into(), Answer::planet());
    let report = handler.handle_json(reframed(7)).await.unwrap();
    assert_eq!(
        (report.upserted, report.deleted, report.dead_lettered),
        (1, 1, 2),
        "{report:?}"
    );
    let rows = db.rows("servicea_planet_avro", &["name"], "uuid").await;
    assert_eq!(rows, vec![vec!["Giedi Prime"]]);
    let asked = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/schemas/ids/7")
        .count();
    assert_eq!(asked, 2);

    // With the default time-to-live the answer stands for the next batch: asked once.
    let (url, seen, answers) = registry_with_answers().await;
    let db = TestDb::new(Backend::Sqlite, "registry_ttl_default").await;
    let handler = registry_handler(&db, &config(&db, &url)).await;
    handler.handle_json(reframed(7)).await.unwrap();
    answers
        .lock()
        .unwrap()
        .insert("/schemas/ids/7".into(), Answer::planet());
    let report = handler.handle_json(reframed(7)).await.unwrap();
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    let asked = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/schemas/ids/7")
        .count();
    assert_eq!(asked, 1);
}
