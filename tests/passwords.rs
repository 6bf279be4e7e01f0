//! The database password never reaches any output (issue 14, item 9): every failure path the URL can take,
//! run as the real binary at `RUST_LOG=trace`, with a sentinel password.

use msk_sync_tests::*;

const SENTINEL: &str = "S3ntinelPW9";

/// `cargo run -p entity-sync -- replay --database-url URL …` at trace level: (exit code, stdout + stderr).
async fn replay_binary(url: &str) -> (Option<i32>, String) {
    let out = cargo_command(env!("CARGO"))
        .args(["run", "--quiet", "-p", "entity-sync", "--", "replay"])
        .arg("--database-url")
        .arg(url)
        .arg("--config")
        .arg(default_config())
        .arg(event_file("mixed-partitions.json"))
        .current_dir(repo())
        .env("RUST_LOG", "trace")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("cargo run entity-sync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

async fn never_printed(url: &str, code: i32, says: &str) {
    let (exit, output) = replay_binary(url).await;
    assert!(
        !output.contains(SENTINEL),
        "{url}: the password was printed:\n{output}"
    );
    assert_eq!(exit, Some(code), "{url}:\n{output}");
    assert!(
        output.contains(says),
        "{url}: expected {says:?} in:\n{output}"
    );
}

#[tokio::test]
async fn the_password_is_never_printed_on_any_path() {
    let pg = host_port(&server_url(Backend::Postgres));
    let maria = host_port(&server_url(Backend::MariaDb));
    let closed = format!("127.0.0.1:{}", free_port());
    let db = TestDb::new(Backend::Sqlite, "secrets").await;
    let sqlite = db.dir.path().join("x.db");
    // The successful batch goes to a database of its own: the shared `test` database may hold tables an
    // older msk-sync made, which the preflight rightly refuses.
    let own = TestDb::new(Backend::Postgres, "passwords").await;
    let own_db = own.url.rsplit('/').next().unwrap_or_default().to_string();
    let cases = [
        // An unknown scheme and a URL that does not parse: sea-orm quotes the whole URL.
        (
            format!("postgresx://app:{SENTINEL}@{pg}/test"),
            2,
            "postgresx://app:***@",
        ),
        (
            format!("postgres://app:{SENTINEL}@127.0.0.1:notaport/test"),
            2,
            "cannot be parsed",
        ),
        // A password where SQLite has none.
        (
            format!("sqlite://{}?mode=rwc&password={SENTINEL}", sqlite.display()),
            2,
            "password=***",
        ),
        // Nothing listens: a connection error.
        (
            format!("postgres://app:{SENTINEL}@{closed}/test"),
            1,
            "transient failure",
        ),
        // A wrong password (MariaDB's root has none), and an unknown role (PostgreSQL trusts every password).
        (
            format!("mysql://root:{SENTINEL}@{maria}/test"),
            1,
            "Access denied",
        ),
        (
            format!("postgres://nobody:{SENTINEL}@{pg}/test?sslmode=disable"),
            1,
            "nobody",
        ),
        // Success at trace level: every log line of a whole batch.
        (
            format!("postgres://postgres:{SENTINEL}@{pg}/{own_db}"),
            0,
            "batch applied",
        ),
    ];
    for (url, code, says) in cases {
        never_printed(&url, code, says).await;
    }
}
