//! How the sink reports what the database did (issue 14): a lost commit acknowledgement (item 10), a row the
//! database refuses for its size (item 12).

use msk_sync_tests::*;
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
                    drop(client);
                    // The answer proves the server acted on the packet; it goes nowhere.
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
    assert_eq!(db.planets().await.len(), 6);

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
