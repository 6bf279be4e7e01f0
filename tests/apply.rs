//! How the sink reports what the database did (issue 14): a lost commit acknowledgement (item 10), a row the
//! database refuses for its size (item 12).

use msk_sync_tests::*;
use sea_orm::ConnectionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that forwards faithfully until the client sends a packet holding `pattern`: that packet still
/// reaches the server, whose answer is read and thrown away, and then both connections are closed. The
/// server did what was asked; the client never hears of it.
async fn lose_the_answer_to(upstream: String, pattern: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            tokio::spawn(forward_until(client, server, pattern));
        }
    });
    port
}

async fn forward_until(mut client: TcpStream, mut server: TcpStream, pattern: &'static [u8]) {
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = client.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                if server.write_all(&up[..n]).await.is_err() { return; }
                if up[..n].windows(pattern.len()).any(|w| w == pattern) {
                    // The answer proves the server acted on the packet; it goes nowhere, and only then is the
                    // client cut off (before, it could look at the table ahead of the server's commit).
                    let _ = server.read(&mut down).await;
                    return;
                }
            }
            n = server.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if client.write_all(&down[..n]).await.is_err() { return; }
            }
        }
    }
}

async fn a_lost_commit_answer_is_an_unknown_outcome(backend: Backend) {
    let db = TestDb::new(backend, "lost_commit").await;
    let upstream = host_port(&server_url(backend));
    let port = lose_the_answer_to(upstream.clone(), b"COMMIT").await;
    let proxied = db.url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1);
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &proxied,
            "--config",
            &default_config(),
            event_file("mixed-partitions.json").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(
            "transient failure, commit outcome unknown — the batch may have been applied; retrying is safe"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not applied"), "{}", run.stderr);
    // It was applied: the message was right not to say otherwise.
    assert_eq!(db.planets().await.len(), 6, "{}", run.stderr);

    // And retrying is safe: the same tables.
    let before = db.planets().await;
    let run = replay(&db, &["mixed-partitions.json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.planets().await, before);
}

#[tokio::test]
async fn postgres_a_lost_commit_answer_is_an_unknown_outcome() {
    a_lost_commit_answer_is_an_unknown_outcome(Backend::Postgres).await
}

#[tokio::test]
async fn mariadb_a_lost_commit_answer_is_an_unknown_outcome() {
    a_lost_commit_answer_is_an_unknown_outcome(Backend::MariaDb).await
}

/// An MSK event of `servicea.planet` records (partition 0, offsets from 0) with these messages.
fn planet_event(messages: &[serde_json::Value]) -> String {
    use base64::Engine;
    let records: Vec<serde_json::Value> = messages
        .iter()
        .enumerate()
        .map(|(offset, message)| {
            let value = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(message).unwrap());
            serde_json::json!({
                "topic": "servicea.planet", "partition": 0, "offset": offset,
                "timestamp": 1764000000000_i64 + offset as i64, "timestampType": "CREATE_TIME",
                "value": value, "headers": []
            })
        })
        .collect();
    serde_json::json!({"eventSource": "aws:kafka", "records": {"servicea.planet-0": records}})
        .to_string()
}

/// 3,000 bytes that do not compress (PostgreSQL would store a compressible key in a small index row).
fn big_key() -> String {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    (0..3000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(seed % 62) as usize],
            )
        })
        .collect()
}

/// A key too big for the table's primary key among good records: the good ones are applied, the big one is
/// dead-lettered with the table and the database's reason (not its value), and the replay exits 0. Through
/// the typed planet-sync, whose key is a String of any length (entity-sync refuses key text over 255
/// characters itself).
async fn a_row_refused_for_its_size_is_dead_lettered(backend: Backend, reason: &str) {
    let db = TestDb::new(backend, "refused_size").await;
    if backend == Backend::Sqlite {
        // SQLite stores a key of any size: a CHECK on its length is how a table refuses it there.
        db.conn
            .execute_unprepared(
                "CREATE TABLE servicea_planet (uuid TEXT NOT NULL PRIMARY KEY CHECK (length(uuid) <= 2000), name TEXT)",
            )
            .await
            .unwrap();
    }
    let big = big_key();
    let event = planet_event(&[
        serde_json::json!({"planetUuid": "p-1", "planetName": "one"}),
        serde_json::json!({"planetUuid": big, "planetName": "big"}),
        serde_json::json!({"planetUuid": "p-2", "planetName": "two"}),
        serde_json::json!({"planetUuid": "p-3", "planetName": "three", "changeType": "CREATED"}),
    ]);
    let file = db.write("big-key.json", &event);
    let run = replay_with(&planet_sync::app(), &db, None, &[file.to_str().unwrap()]).await;
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(
        db.planets().await,
        vec![
            ("p-1".to_string(), "one".to_string()),
            ("p-2".to_string(), "two".to_string()),
            ("p-3".to_string(), "three".to_string()),
        ]
    );
    let dead = db.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (offset, error) = &dead[0];
    assert_eq!(*offset, 1);
    assert!(
        error.starts_with("servicea_planet: the database refused the row"),
        "{error}"
    );
    assert!(error.contains(reason), "{error}");
    assert!(
        !error.contains(&big[..40]),
        "the key leaked into the reason: {error}"
    );
    assert!(
        !run.stderr.contains(&big[..40]),
        "the key leaked into a log line"
    );
    let report = &run.reports()[0];
    assert_eq!((report.upserted, report.dead_lettered), (3, 1));
}

#[tokio::test]
async fn postgres_a_row_refused_for_its_size_is_dead_lettered() {
    // index row size … exceeds btree version 4 maximum 2704 for index "servicea_planet_pkey"
    a_row_refused_for_its_size_is_dead_lettered(Backend::Postgres, "(54000)").await
}

#[tokio::test]
async fn mariadb_a_row_refused_for_its_size_is_dead_lettered() {
    a_row_refused_for_its_size_is_dead_lettered(Backend::MariaDb, "(22001)").await
}

#[tokio::test]
async fn sqlite_a_row_refused_for_its_size_is_dead_lettered() {
    // CHECK constraint failed: SQLITE_CONSTRAINT_CHECK (275)
    a_row_refused_for_its_size_is_dead_lettered(Backend::Sqlite, "(275)").await
}

/// A value the database refuses: its reason names the column / encoding the database named, and never
/// quotes the value (issue 14, item 17).
async fn a_refused_value_is_redacted_and_its_column_named(
    backend: Backend,
    name: &str,
    reason: &str,
) {
    let db = TestDb::new(backend, "refused_value").await;
    if backend == Backend::Sqlite {
        db.conn
            .execute_unprepared(
                "CREATE TABLE servicea_planet (uuid TEXT NOT NULL PRIMARY KEY, name TEXT CHECK (length(name) < 5))",
            )
            .await
            .unwrap();
    }
    let event = planet_event(&[
        serde_json::json!({"planetUuid": "p-1", "planetName": "one"}),
        serde_json::json!({"planetUuid": "p-2", "planetName": name}),
    ]);
    let file = db.write("bad-value.json", &event);
    let run = replay_with(&planet_sync::app(), &db, None, &[file.to_str().unwrap()]).await;
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(db.planets().await.len(), 1);
    let dead = db.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.contains(reason), "{}", dead[0].1);
    assert!(!dead[0].1.contains("SECRET"), "{}", dead[0].1);
    assert!(!run.stderr.contains("SECRET"), "{}", run.stderr);
}

#[tokio::test]
async fn postgres_a_refused_value_is_redacted_and_its_column_named() {
    a_refused_value_is_redacted_and_its_column_named(
        Backend::Postgres,
        "SECRET\u{0}SECRET",
        r#"invalid byte sequence for encoding "UTF8": 0x00"#,
    )
    .await
}

#[tokio::test]
async fn mariadb_a_refused_value_is_redacted_and_its_column_named() {
    a_refused_value_is_redacted_and_its_column_named(
        Backend::MariaDb,
        &"SECRET".repeat(50),
        "Data too long for column 'name' at row 1",
    )
    .await
}

#[tokio::test]
async fn sqlite_a_refused_value_is_redacted_and_its_column_named() {
    a_refused_value_is_redacted_and_its_column_named(
        Backend::Sqlite,
        "SECRET",
        "CHECK constraint failed: length(name) < 5",
    )
    .await
}

/// A closed database port: the error names host:port and the cause, not just "pool timed out" (issue 14,
/// item 16), and never the password.
#[tokio::test]
async fn a_connection_failure_names_the_server_and_the_cause() {
    let port = free_port();
    let url = format!("postgres://app:S3ntinelPW9@127.0.0.1:{port}/db");
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &url,
            "--config",
            &default_config(),
            event_file("mixed-partitions.json").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "batch not applied (retry it): Connection Error: database at 127.0.0.1:{port}: Connection refused"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("S3ntinelPW9"), "{}", run.stderr);
}
