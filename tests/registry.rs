//! The schema-registry client against a local HTTP server that speaks the Confluent registry's REST shape:
//! schemas fetched once and cached, an unknown id dead-lettered, a registry that is down or failing makes the
//! batch transient (retried), basic auth sent.

use std::sync::{Arc, Mutex};

use msk_sync::pipeline::HandlerError;
use msk_sync_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests seen: (path, Authorization header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `/schemas/ids/1` (events/schemas/planet.avsc), 404 for other ids, 500 for id 500.
async fn registry() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let schema = std::fs::read_to_string(repo().join("events/schemas/planet.avsc")).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
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
            let (status, body) = match path.as_str() {
                "/schemas/ids/1" => ("200 OK", serde_json::json!({"schema": schema}).to_string()),
                "/schemas/ids/500" => (
                    "500 Internal Server Error",
                    r#"{"error_code":50001}"#.to_string(),
                ),
                _ => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        }
    });
    (url, seen)
}

fn config(db: &TestDb, url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("events/avro.toml"))
        .unwrap()
        .replace(
            "schemas = { \"1\" = \"schemas/planet.avsc\" }   # relative to this file",
            &format!("registry = {{ url = \"{url}\", username = \"u\", password = \"p\" }}"),
        );
    assert!(text.contains("registry ="));
    db.write("registry.toml", &text)
}

#[tokio::test]
async fn schemas_come_from_the_registry_once_and_unknown_ids_are_dead_lettered() {
    let (url, seen) = registry().await;
    let db = TestDb::new(Backend::Sqlite, "registry_ok").await;
    let app = entity_sync();
    let cfg = app.load_config(Some(&config(&db, &url))).unwrap();
    let handler = app.handler(&cfg, Some(&db.url)).await.unwrap();
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
    let run = replay_with(
        &entity_sync(),
        &db,
        Some(cfg.to_str().unwrap()),
        &["planet-avro-confluent.json"],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("schema registry, schema id 1"),
        "{}",
        run.stderr
    );

    // A 500: transient as well, and nothing is written.
    let (url, _) = registry().await;
    let app = entity_sync();
    let loaded = app.load_config(Some(&config(&db, &url))).unwrap();
    let handler = app.handler(&loaded, Some(&db.url)).await.unwrap();
    let mut event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap(),
    )
    .unwrap();
    // Re-frame the first record with schema id 500.
    let record = &mut event["records"]["servicea.planet-0"][0];
    use base64::Engine;
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(record["value"].as_str().unwrap())
        .unwrap();
    bytes[1..5].copy_from_slice(&500u32.to_be_bytes());
    record["value"] = base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into();
    match handler.handle_json(event).await {
        Err(HandlerError::Transient(e)) => assert!(e.contains("HTTP 500"), "{e}"),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}
