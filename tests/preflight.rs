//! The preflight (issue 14 items 6 and 7): a table that does not match the config is the *misconfigured*
//! failure class on every backend — exit 2, nothing applied, nothing dead-lettered, a message naming table,
//! column, expected and found — and a user without CREATE can apply batches to tables made for it.

use msk_sync::pipeline::HandlerError;
use msk_sync_tests::*;
use sea_orm::{ConnectionTrait, Database};

const DEAD: &str = "msk_sync_dead_letter";

/// A sync of topic `items` into table `items`: key `id` (text), `n` (integer), `label` (text).
const CONFIG: &str = r#"
[[sync]]
topics = ["items"]
table = "items"
key = ["id"]
columns = [
  { name = "id", path = "$.id" },
  { name = "n", path = "$.n", type = "integer" },
  { name = "label", path = "$.label" },
]
"#;

/// An MSK event of topic `items`, partition 0, one record per message, offsets from `first`.
fn event(first: i64, messages: &[serde_json::Value]) -> String {
    use base64::Engine;
    let records: Vec<serde_json::Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let offset = first + i as i64;
            serde_json::json!({
                "topic": "items", "partition": 0, "offset": offset,
                "timestamp": 1764000000000_i64 + offset, "timestampType": "CREATE_TIME",
                "value": base64::engine::general_purpose::STANDARD.encode(m.to_string()),
                "headers": []
            })
        })
        .collect();
    serde_json::json!({"eventSource": "aws:kafka", "records": {"items-0": records}}).to_string()
}

fn six_items() -> String {
    let items: Vec<serde_json::Value> = (1..=6)
        .map(|i| serde_json::json!({"id": format!("item-{i}"), "n": i, "label": "x"}))
        .collect();
    event(0, &items)
}

/// `replay` of `events` (file contents) with [`CONFIG`] into `url`.
async fn replay_events(db: &TestDb, url: &str, events: &[String]) -> Run {
    let config = db.write("preflight.toml", CONFIG);
    let files: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, e)| db.write(&format!("e{i}.json"), e).display().to_string())
        .collect();
    let mut args = vec![
        "replay",
        "--database-url",
        url,
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend(files.iter().map(String::as_str));
    cli(&entity_sync(), &args).await
}

/// A key column of text as msk-sync would make it (MariaDB: byte for byte, NO PAD).
fn key_text(backend: Backend) -> &'static str {
    match backend {
        Backend::MariaDb => "VARCHAR(255) COLLATE utf8mb4_nopad_bin",
        _ => "TEXT",
    }
}

async fn sql(db: &TestDb, statement: &str) {
    db.conn
        .execute_unprepared(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn assert_misconfigured(run: &Run, needles: &[&str]) {
    assert_eq!(
        run.code, 2,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "a report was printed: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("misconfigured, nothing applied"),
        "{}",
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            run.stderr
        );
    }
}

// --- a key without a unique index -------------------------------------------------------------------------

/// Before the preflight: PostgreSQL failed every retry (exit 1, no table named), MariaDB and SQLite
/// duplicated every row on a replay.
async fn a_key_without_a_unique_index_is_misconfigured(backend: Backend) {
    let db = TestDb::new(backend, "pf_no_key").await;
    let key = key_text(backend);
    sql(
        &db,
        &format!("CREATE TABLE items (id {key}, n BIGINT, label TEXT)"),
    )
    .await;
    let batch = six_items();
    for _ in 0..2 {
        let run = replay_events(&db, &db.url, std::slice::from_ref(&batch)).await;
        assert_misconfigured(
            &run,
            &[
                "table items: expected a primary key or unique index on exactly (id)",
                "found no primary key and no unique index",
            ],
        );
    }
    assert_eq!(db.count("items").await, 0);
    assert_eq!(db.count_if_exists(DEAD).await, 0);

    // A unique index on more than the key does not make the key unique; one on exactly the key does.
    sql(&db, "CREATE UNIQUE INDEX by_id_n ON items (id, n)").await;
    let run = replay_events(&db, &db.url, std::slice::from_ref(&batch)).await;
    assert_misconfigured(&run, &["found only by_id_n on (id, n)"]);
    sql(&db, "CREATE UNIQUE INDEX by_id ON items (id)").await;
    for _ in 0..2 {
        let run = replay_events(&db, &db.url, std::slice::from_ref(&batch)).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(db.count("items").await, 6);
}

#[tokio::test]
async fn postgres_a_key_without_a_unique_index_is_misconfigured() {
    a_key_without_a_unique_index_is_misconfigured(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_key_without_a_unique_index_is_misconfigured() {
    a_key_without_a_unique_index_is_misconfigured(Backend::MariaDb).await;
}

#[tokio::test]
async fn sqlite_a_key_without_a_unique_index_is_misconfigured() {
    a_key_without_a_unique_index_is_misconfigured(Backend::Sqlite).await;
}

/// Through the handler Lambda calls: its own error type, so an alarm can tell it from an outage.
#[tokio::test]
async fn lambda_reports_misconfigured_as_its_own_error_type() {
    let db = TestDb::new(Backend::Postgres, "pf_lambda").await;
    sql(&db, "CREATE TABLE items (id TEXT, n BIGINT, label TEXT)").await;
    let config = db.write("preflight.toml", CONFIG);
    let app = entity_sync();
    let handler = app
        .load(Some(&config))
        .unwrap()
        .handler(Some(&db.url))
        .await
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&six_items()).unwrap();
    match handler.handle_json(payload.clone()).await {
        Err(HandlerError::Misconfigured(e)) => assert!(e.contains("table items"), "{e}"),
        other => panic!("expected misconfigured, got {other:?}"),
    }
    for partial in [false, true] {
        let diagnostic = msk_sync::run::lambda::invoke(&handler, payload.clone(), partial)
            .await
            .expect_err("a misconfigured batch is an invocation error");
        assert_eq!(diagnostic.error_type, "Misconfigured");
        assert!(
            diagnostic
                .error_message
                .contains("table items: expected a primary key")
        );
    }
    assert_eq!(db.count("items").await, 0);
    assert_eq!(db.count(DEAD).await, 0);
}

// --- columns ---------------------------------------------------------------------------------------------

/// `n` holds text where the config writes integers, `label` is missing: before, every batch failed
/// (PostgreSQL: 42804 / 42703, exit 1 forever) or every record was dead-lettered.
async fn missing_and_incompatible_columns_are_misconfigured(backend: Backend) {
    let db = TestDb::new(backend, "pf_columns").await;
    let key = key_text(backend);
    // MariaDB's BOOLEAN is TINYINT, which holds integers: only PostgreSQL's is incompatible.
    sql(
        &db,
        &format!("CREATE TABLE items (id {key} PRIMARY KEY, n BOOLEAN, extra INT NOT NULL)"),
    )
    .await;
    let run = replay_events(&db, &db.url, &[six_items()]).await;
    let mut needles = vec![
        "table items, column label: expected the column to exist; found no such column",
        "table items, column extra: expected a column msk-sync does not write to be nullable or have a default",
    ];
    if backend == Backend::Postgres {
        needles.push("table items, column n: expected a column of type integer (bigint, integer, smallint, numeric); found boolean");
    }
    assert_misconfigured(&run, &needles);
    assert_eq!(db.count("items").await, 0);
    assert_eq!(db.count_if_exists(DEAD).await, 0);
}

#[tokio::test]
async fn postgres_missing_and_incompatible_columns_are_misconfigured() {
    missing_and_incompatible_columns_are_misconfigured(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_missing_and_incompatible_columns_are_misconfigured() {
    missing_and_incompatible_columns_are_misconfigured(Backend::MariaDb).await;
}

#[tokio::test]
async fn sqlite_missing_columns_are_misconfigured() {
    missing_and_incompatible_columns_are_misconfigured(Backend::Sqlite).await;
}

/// An integer column where the config writes text: PostgreSQL refuses every row (42804) before the preflight.
#[tokio::test]
async fn mariadb_and_postgres_text_into_an_integer_column_is_misconfigured() {
    for backend in [Backend::Postgres, Backend::MariaDb] {
        let db = TestDb::new(backend, "pf_types").await;
        let key = key_text(backend);
        sql(
            &db,
            &format!("CREATE TABLE items (id {key} PRIMARY KEY, n BIGINT, label BIGINT)"),
        )
        .await;
        let run = replay_events(&db, &db.url, &[six_items()]).await;
        let found = match backend {
            Backend::MariaDb => "found bigint(20)",
            _ => "found bigint",
        };
        assert_misconfigured(
            &run,
            &[
                "table items, column label: expected a column of type text",
                found,
            ],
        );
        assert_eq!(db.count("items").await, 0);
    }
}

// --- key collation (item 6) ------------------------------------------------------------------------------

/// `utf8mb4_bin` is PAD SPACE ("k" = "k "), `_ci` collations ignore case: either merges distinct keys.
#[tokio::test]
async fn mariadb_a_key_collation_that_merges_keys_is_misconfigured() {
    let db = TestDb::new(Backend::MariaDb, "pf_collation").await;
    for (collation, table) in [("utf8mb4_bin", "items"), ("utf8mb4_general_ci", "items")] {
        sql(&db, &format!("DROP TABLE IF EXISTS {table}")).await;
        sql(
            &db,
            &format!(
                "CREATE TABLE {table} (id VARCHAR(255) PRIMARY KEY, n BIGINT, label TEXT) \
                 CHARACTER SET utf8mb4 COLLATE {collation}"
            ),
        )
        .await;
        let run = replay_events(&db, &db.url, &[six_items()]).await;
        assert_misconfigured(
            &run,
            &[
                "table items, column id: expected a byte-for-byte NO PAD collation such as utf8mb4_nopad_bin",
                &format!("found collation {collation}"),
            ],
        );
        assert_eq!(db.count("items").await, 0);
    }
}

/// The same on PostgreSQL (a non-deterministic collation, fixed-length `character`) and SQLite (`NOCASE`).
#[tokio::test]
async fn postgres_and_sqlite_key_comparisons_that_merge_keys_are_misconfigured() {
    let db = TestDb::new(Backend::Postgres, "pf_pg_collation").await;
    sql(
        &db,
        "CREATE COLLATION case_blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    )
    .await;
    for (key, found) in [
        ("TEXT COLLATE case_blind", "found collation case_blind"),
        ("CHARACTER(40)", "found character(40)"),
    ] {
        sql(&db, "DROP TABLE IF EXISTS items").await;
        sql(
            &db,
            &format!("CREATE TABLE items (id {key} PRIMARY KEY, n BIGINT, label TEXT)"),
        )
        .await;
        let run = replay_events(&db, &db.url, &[six_items()]).await;
        assert_misconfigured(&run, &["table items, column id: expected", found]);
        assert_eq!(db.count("items").await, 0);
    }

    let db = TestDb::new(Backend::Sqlite, "pf_sqlite_collation").await;
    sql(
        &db,
        "CREATE TABLE items (id TEXT PRIMARY KEY COLLATE NOCASE, n INTEGER, label TEXT)",
    )
    .await;
    let run = replay_events(&db, &db.url, &[six_items()]).await;
    assert_misconfigured(
        &run,
        &[
            "table items, column id: expected the BINARY collation on the key's unique index",
            "found collation NOCASE",
        ],
    );
    assert_eq!(db.count("items").await, 0);
}

/// Tables msk-sync creates keep "k" and "k " (and "K") apart: two upserts are two rows, and deleting "k "
/// leaves "k".
async fn keys_that_differ_by_trailing_spaces_stay_apart(backend: Backend) {
    let db = TestDb::new(backend, "pf_pad").await;
    let upserts = event(
        0,
        &[
            serde_json::json!({"id": "k", "n": 1, "label": "plain"}),
            serde_json::json!({"id": "k ", "n": 2, "label": "space"}),
            serde_json::json!({"id": "K", "n": 3, "label": "upper"}),
        ],
    );
    let delete = event(
        3,
        &[serde_json::json!({"changeType": "DELETED", "id": "k "})],
    );
    let run = replay_events(&db, &db.url, &[upserts]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count("items").await, 3);
    let run = replay_events(&db, &db.url, &[delete]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        db.rows("items", &["id", "label"], "n").await,
        vec![
            vec!["k".to_string(), "plain".to_string()],
            vec!["K".to_string(), "upper".to_string()]
        ]
    );
}

#[tokio::test]
async fn mariadb_keys_that_differ_by_trailing_spaces_stay_apart() {
    keys_that_differ_by_trailing_spaces_stay_apart(Backend::MariaDb).await;
}

#[tokio::test]
async fn postgres_keys_that_differ_by_trailing_spaces_stay_apart() {
    keys_that_differ_by_trailing_spaces_stay_apart(Backend::Postgres).await;
}

// --- grants -----------------------------------------------------------------------------------------------

/// A user of its own, dropped when the test ends (also when it fails).
struct LeastPrivileged {
    backend: Backend,
    name: String,
    url: String,
    /// The test database as its owner: PostgreSQL drops a role only once its grants there are gone.
    admin_url: String,
}

impl LeastPrivileged {
    /// SELECT, INSERT, UPDATE and DELETE on the tables that exist in `db`, nothing else (no CREATE).
    async fn create(db: &TestDb, tables: &[&str]) -> Self {
        // One user per call: the tests of this binary run concurrently (same process id), and one test
        // dropping and re-creating a user another test is connected as failed that other test.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("msk_lp_{}_{n}", std::process::id());
        let db_name = db
            .url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let host = host_port(&server_url(db.backend));
        let url = match db.backend {
            Backend::Postgres => {
                let _ = db
                    .conn
                    .execute_unprepared(&format!("DROP OWNED BY {name}"))
                    .await;
                let _ = db
                    .conn
                    .execute_unprepared(&format!("DROP ROLE IF EXISTS {name}"))
                    .await;
                sql(db, &format!("CREATE ROLE {name} LOGIN")).await;
                for t in tables {
                    sql(
                        db,
                        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {name}"),
                    )
                    .await;
                }
                format!("postgres://{name}@{host}/{db_name}?sslmode=disable")
            }
            Backend::MariaDb => {
                sql(db, &format!("DROP USER IF EXISTS '{name}'@'%'")).await;
                sql(db, &format!("CREATE USER '{name}'@'%' IDENTIFIED BY ''")).await;
                for t in tables {
                    sql(
                        db,
                        &format!(
                            "GRANT SELECT, INSERT, UPDATE, DELETE ON {db_name}.{t} TO '{name}'@'%'"
                        ),
                    )
                    .await;
                }
                format!("mysql://{name}@{host}/{db_name}")
            }
            Backend::Sqlite => unreachable!("SQLite has no users"),
        };
        Self {
            backend: db.backend,
            name,
            url,
            admin_url: db.url.clone(),
        }
    }
}

impl Drop for LeastPrivileged {
    fn drop(&mut self) {
        let statements = match self.backend {
            Backend::Postgres => vec![
                format!("DROP OWNED BY {}", self.name),
                format!("DROP ROLE IF EXISTS {}", self.name),
            ],
            _ => vec![format!("DROP USER IF EXISTS '{}'@'%'", self.name)],
        };
        let admin = self.admin_url.clone();
        // The test's runtime may be gone (a failed assertion): drop the user from a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(conn) = Database::connect(&admin).await {
                    for s in statements {
                        let _ = conn.execute_unprepared(&s).await;
                    }
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Before the preflight, `CREATE TABLE IF NOT EXISTS` was refused on every batch, so such a user could never
/// apply one. Without INSERT, the batch is misconfigured, naming table and grant.
async fn a_least_privileged_user_applies_batches(backend: Backend) {
    let db = TestDb::new(backend, "pf_grants").await;
    // The tables as an administrator (here: msk-sync itself, as the owner) made them.
    let run = replay_events(&db, &db.url, &[six_items()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let user = LeastPrivileged::create(&db, &["items", DEAD]).await;
    let bad = serde_json::json!({"changeType": "BOGUS", "id": "z"});
    let batch = event(
        10,
        &[
            serde_json::json!({"id": "item-1", "n": 10, "label": "changed"}),
            serde_json::json!({"changeType": "DELETED", "id": "item-2"}),
            bad,
        ],
    );
    let run = replay_events(&db, &user.url, std::slice::from_ref(&batch)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count("items").await, 5);
    assert_eq!(db.count(DEAD).await, 1);
    // The user really cannot create a table.
    let conn = Database::connect(&user.url).await.unwrap();
    assert!(
        conn.execute_unprepared("CREATE TABLE t2 (id INT)")
            .await
            .is_err()
    );
    conn.close().await.unwrap();

    sql(
        &db,
        &format!(
            "REVOKE INSERT ON items FROM {}",
            match backend {
                Backend::MariaDb => format!("'{}'@'%'", user.name),
                _ => user.name.clone(),
            }
        ),
    )
    .await;
    let again = event(
        20,
        &[serde_json::json!({"id": "item-9", "n": 9, "label": "new"})],
    );
    let run = replay_events(&db, &user.url, &[again]).await;
    assert_misconfigured(
        &run,
        &["table items: expected the database user to have the INSERT privilege"],
    );
    assert_eq!(db.count("items").await, 5);
    assert_eq!(db.count(DEAD).await, 1);

    // A table that is missing, for a user who may not create it: misconfigured too, not a retry forever.
    let config = db.write(
        "other.toml",
        &CONFIG.replace("table = \"items\"", "table = \"others\""),
    );
    let file = db.write("other.json", &six_items());
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &user.url,
            "--config",
            config.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_misconfigured(
        &run,
        &[
            "table others: expected the table to exist, or the database user to be allowed to create it; found no such table, and CREATE was refused",
        ],
    );
}

#[tokio::test]
async fn postgres_a_least_privileged_user_applies_batches() {
    a_least_privileged_user_applies_batches(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_least_privileged_user_applies_batches() {
    a_least_privileged_user_applies_batches(Backend::MariaDb).await;
}

// --- config check ----------------------------------------------------------------------------------------

async fn config_check_lists_the_databases_problems(backend: Backend) {
    let db = TestDb::new(backend, "pf_check").await;
    let config = db.write("preflight.toml", CONFIG);
    let config = config.to_str().unwrap();
    let check = |url: Option<&str>| {
        let mut args = vec!["config", "check", config];
        if let Some(url) = url {
            args.extend(["--database-url", url]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&entity_sync(), &args).await
        }
    };
    let run = check(None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("database not checked"),
        "{}",
        run.stdout
    );

    // Nothing there yet: fine, the first batch creates the tables; the check itself creates nothing.
    let run = check(Some(&db.url)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("the first batch creates them"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("items, {DEAD}")),
        "{}",
        run.stdout
    );
    assert_eq!(db.count_if_exists("items").await, 0);

    let key = key_text(backend);
    sql(&db, &format!("CREATE TABLE items (id {key}, n BIGINT)")).await;
    let run = check(Some(&db.url)).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    for needle in [
        "table items, column label: expected the column to exist; found no such column",
        "table items: expected a primary key or unique index on exactly (id)",
        "2 problem(s)",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn postgres_config_check_lists_the_databases_problems() {
    config_check_lists_the_databases_problems(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_config_check_lists_the_databases_problems() {
    config_check_lists_the_databases_problems(Backend::MariaDb).await;
}

#[tokio::test]
async fn sqlite_config_check_lists_the_databases_problems() {
    config_check_lists_the_databases_problems(Backend::Sqlite).await;
}

// --- typed syncs -----------------------------------------------------------------------------------------

/// A typed sync's table is checked from its sea-orm entity: columns, their types and the primary key.
#[tokio::test]
async fn typed_sync_tables_are_checked_from_the_entity() {
    for backend in [Backend::Postgres, Backend::MariaDb, Backend::Sqlite] {
        let db = TestDb::new(backend, "pf_typed").await;
        let key = key_text(backend);
        sql(
            &db,
            &format!("CREATE TABLE servicea_planet (uuid {key}, label TEXT)"),
        )
        .await;
        let run = replay_with(&planet_sync::app(), &db, None, &["mixed-partitions.json"]).await;
        assert_misconfigured(
            &run,
            &[
                "table servicea_planet, column name: expected the column to exist; found no such column",
                "table servicea_planet: expected a primary key or unique index on exactly (uuid)",
            ],
        );
        assert_eq!(db.count("servicea_planet").await, 0);
    }
}

// --- the dead-letter table's newer columns (#15) ----------------------------------------------------------

/// A dead-letter table made before redrive existed lacks `headers` (and its siblings): the preflight adds it,
/// and a user who may not alter the table gets the misconfigured class naming the statement to run.
async fn an_older_dead_letter_table_gets_its_columns_or_names_the_statement(backend: Backend) {
    let db = TestDb::new(backend, "pf_dl_alter").await;
    let run = replay_events(&db, &db.url, &[six_items()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    sql(&db, &format!("ALTER TABLE {DEAD} DROP COLUMN headers")).await;
    let user = LeastPrivileged::create(&db, &["items", DEAD]).await;
    let batch = event(
        10,
        &[serde_json::json!({"id": "item-7", "n": 7, "label": "x"})],
    );
    let run = replay_events(&db, &user.url, std::slice::from_ref(&batch)).await;
    assert_misconfigured(
        &run,
        &[
            &format!("table {DEAD}, column headers"),
            "ADD COLUMN",
            "ALTER TABLE was refused",
        ],
    );
    assert_eq!(db.count("items").await, 6, "nothing applied");
    // config check (read only) says what the first batch will add, and is not failed by it.
    let config = db.write("preflight.toml", CONFIG);
    let check = cli(
        &entity_sync(),
        &[
            "config",
            "check",
            config.to_str().unwrap(),
            "--database-url",
            &user.url,
        ],
    )
    .await;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("columns headers"), "{}", check.stdout);
    // The owner's next batch adds the column; then the user applies batches again.
    let run = replay_events(&db, &db.url, std::slice::from_ref(&batch)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = replay_events(&db, &user.url, std::slice::from_ref(&batch)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count("items").await, 7);
}

#[tokio::test]
async fn postgres_an_older_dead_letter_table_gets_its_columns_or_names_the_statement() {
    an_older_dead_letter_table_gets_its_columns_or_names_the_statement(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_an_older_dead_letter_table_gets_its_columns_or_names_the_statement() {
    an_older_dead_letter_table_gets_its_columns_or_names_the_statement(Backend::MariaDb).await;
}
