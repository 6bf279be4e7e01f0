//! Refusals classed right (#34 items 2, 5 and 6): a refusal that will not change on retry is never transient.
//! DDL the database refuses, a missing database, a missing grant and a missing table under `create_tables =
//! false` are the misconfigured class (exit 2), found by `config check --database-url` without creating
//! anything; a row over MariaDB's `max_allowed_packet` is that row's dead letter; a session killed mid-batch is
//! transient and said to be killed; a `[[mask]]` that classifies nothing is a config error; `replay --plan`
//! leaves no SQLite file behind.

use msk_sync_tests::*;
use sea_orm::ConnectionTrait;
use serde_json::json;

const DEAD: &str = "msk_sync_dead_letter";

/// An MSK event of topic `items`, partition 0, one record per message, offsets from 0.
fn event(messages: &[serde_json::Value]) -> String {
    use base64::Engine;
    let records: Vec<serde_json::Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "topic": "items", "partition": 0, "offset": i,
                "timestamp": 1764000000000_i64 + i as i64, "timestampType": "CREATE_TIME",
                "value": base64::engine::general_purpose::STANDARD.encode(m.to_string()),
                "headers": []
            })
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {"items-0": records}}).to_string()
}

/// A sync of topic `items` into `table`, with `database` settings and `columns` (TOML array items), key `key`.
fn config(database: &str, table: &str, key: &str, columns: &str) -> String {
    format!(
        "[database]\n{database}\n\n[[sync]]\ntopics = [\"items\"]\ntable = \"{table}\"\nkey = {key}\ncolumns = [\n{columns}\n]\n"
    )
}

const ITEM_COLUMNS: &str = r#"  { name = "id", path = "$.id" },
  { name = "label", path = "$.label" },"#;

async fn run_cli(args: &[&str]) -> Run {
    cli(&entity_sync(), args).await
}

async fn check(config: &std::path::Path, url: &str) -> Run {
    run_cli(&[
        "config",
        "check",
        config.to_str().unwrap(),
        "--database-url",
        url,
    ])
    .await
}

async fn replay(db: &TestDb, config: &std::path::Path, url: &str, event: &str) -> Run {
    let file = db.write("e.json", event);
    run_cli(&[
        "replay",
        "--database-url",
        url,
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
    .await
}

fn assert_code(run: &Run, code: u8, needles: &[&str]) {
    assert_eq!(
        run.code, code,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            run.stderr
        );
    }
}

// --- DDL the database refuses --------------------------------------------------------------------------------

/// Before: `replay` failed with exit 1 ("retry it") forever, and `config check --database-url` said ok.
#[tokio::test]
async fn mariadb_a_key_it_cannot_index_is_misconfigured_and_config_check_finds_it() {
    let db = TestDb::new(Backend::MariaDb, "ref_ddl").await;
    for (table, key, columns, said) in [
        (
            "four_text",
            r#"["a", "b", "c", "d"]"#,
            r#"  { name = "a", path = "$.a" }, { name = "b", path = "$.b" },
  { name = "c", path = "$.c" }, { name = "d", path = "$.d" },"#,
            "Specified key was too long",
        ),
        (
            "json_key",
            r#"["id"]"#,
            r#"  { name = "id", path = "$.id", type = "json" }, { name = "label", path = "$.label" },"#,
            "used in key specification without a key length",
        ),
    ] {
        let cfg = db.write("ddl.toml", &config("", table, key, columns));
        let run = check(&cfg, &db.url).await;
        assert_code(
            &run,
            2,
            &[&format!("table {table}: expected the table to exist"), said],
        );
        assert_eq!(
            db.count_if_exists(table).await,
            0,
            "config check created {table}"
        );
        let run = replay(&db, &cfg, &db.url, &event(&[json!({"a": "x", "id": 1})])).await;
        assert_code(
            &run,
            2,
            &[
                "misconfigured, nothing applied",
                &format!("table {table}"),
                said,
            ],
        );
        assert_eq!(db.count_if_exists(table).await, 0);
    }
    // The check leaves no temporary table and no table behind, and the dead-letter table is not there either.
    assert_eq!(db.count_if_exists(DEAD).await, 0);
}

// --- rows over max_allowed_packet ----------------------------------------------------------------------------

async fn max_allowed_packet(db: &TestDb) -> usize {
    let row = db
        .conn
        .query_one_raw(sea_orm::Statement::from_string(
            db.db_backend(),
            "SELECT CAST(@@max_allowed_packet AS SIGNED)",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap() as usize
}

/// Before: the server dropped the connection and the batch failed with "no database session was established
/// within 10 s", on every retry.
#[tokio::test]
async fn mariadb_a_row_over_max_allowed_packet_is_its_dead_letter_and_the_rest_is_applied() {
    let db = TestDb::new(Backend::MariaDb, "ref_packet").await;
    let limit = max_allowed_packet(&db).await;
    let cfg = db.write(
        "packet.toml",
        &config("", "items", r#"["id"]"#, ITEM_COLUMNS),
    );
    // Many rows that each fit but together are far over the limit, and one that alone is over it.
    let chunk = "x".repeat(limit / 8);
    let mut messages: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"id": format!("ok-{i:02}"), "label": chunk}))
        .collect();
    messages.insert(
        7,
        json!({"id": "huge", "label": "y".repeat(limit + (1 << 20))}),
    );
    let run = replay(&db, &cfg, &db.url, &event(&messages)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports()[0];
    assert_eq!(
        (report.upserted, report.dead_lettered),
        (20, 1),
        "{report:?}"
    );
    let dead = db
        .rows(
            DEAD,
            &["kafka_offset", "error", "value_base64"],
            "kafka_offset",
        )
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0], "7");
    assert!(
        dead[0][1].contains(&format!("max_allowed_packet = {limit}")),
        "{}",
        dead[0][1]
    );
    assert!(
        dead[0][1].contains("its raw key and value are not kept"),
        "{}",
        dead[0][1]
    );
    assert_eq!(dead[0][2], "NULL");
    assert_eq!(db.count("items").await, 20);
}

/// Before: a session killed under a statement was reported as "no database session was established within
/// 10 s", as if the server had never answered. Another connection holds the row lock the batch's upsert waits
/// for, and kills the batch's session while it waits: the batch is rolled back, transient (exit 1), and the
/// message says the session ended in the middle of the batch.
#[tokio::test]
async fn mariadb_a_session_killed_mid_batch_is_said_to_be_killed() {
    use sea_orm::TransactionTrait;
    let db = TestDb::new(Backend::MariaDb, "ref_killed").await;
    let cfg = db.write(
        "killed.toml",
        &config("", "items", r#"["id"]"#, ITEM_COLUMNS),
    );
    let first = replay(
        &db,
        &cfg,
        &db.url,
        &event(&[json!({"id": "a", "label": "one"})]),
    )
    .await;
    assert_eq!(first.code, 0, "{}", first.stderr);

    let locker = sea_orm::Database::connect(&db.url).await.unwrap();
    let held = locker.begin().await.unwrap();
    held.execute_unprepared("SELECT * FROM items WHERE id = 'a' FOR UPDATE")
        .await
        .unwrap();
    let file = db.write("e.json", &event(&[json!({"id": "a", "label": "two"})]));
    let args = [
        "replay",
        "--database-url",
        &db.url,
        "--config",
        cfg.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    // The batch's session, once its upsert waits for the lock, is killed from a third connection.
    let killer = async {
        for _ in 0..400 {
            let row = db
                .conn
                .query_one_raw(sea_orm::Statement::from_string(
                    db.db_backend(),
                    "SELECT ID FROM information_schema.PROCESSLIST \
                     WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND INFO LIKE 'INSERT%'",
                ))
                .await
                .unwrap();
            if let Some(row) = row {
                let id = row.try_get_by_index::<i64>(0).unwrap();
                db.conn
                    .execute_unprepared(&format!("KILL {id}"))
                    .await
                    .unwrap();
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    let (run, killed) = tokio::join!(run_cli(&args), killer);
    assert!(killed, "the batch's upsert never waited for the row lock");
    held.rollback().await.unwrap();
    assert_code(
        &run,
        1,
        &["closed this batch's session in the middle of the batch"],
    );
    assert!(
        !run.stderr.contains("no database session was established"),
        "{}",
        run.stderr
    );
    assert_eq!(
        db.rows("items", &["id", "label"], "id").await,
        vec![vec!["a".to_string(), "one".to_string()]],
        "the batch was rolled back"
    );
}

// --- create_tables = false ------------------------------------------------------------------------------------

async fn create_tables_false_refuses_to_create(backend: Backend) {
    let db = TestDb::new(backend, "ref_nocreate").await;
    // The DBA's table.
    let cfg = db.write("made.toml", &config("", "items", r#"["id"]"#, ITEM_COLUMNS));
    let run = replay(
        &db,
        &cfg,
        &db.url,
        &event(&[json!({"id": "a", "label": "one"})]),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A misspelt table: without create_tables = false a new table is made and written.
    let misspelt = config("create_tables = false", "itmes", r#"["id"]"#, ITEM_COLUMNS);
    let cfg = db.write("misspelt.toml", &misspelt);
    let run = check(&cfg, &db.url).await;
    assert_code(
        &run,
        2,
        &["table itmes: expected the table to exist (create_tables = false"],
    );
    let run = replay(
        &db,
        &cfg,
        &db.url,
        &event(&[json!({"id": "b", "label": "two"})]),
    )
    .await;
    assert_code(
        &run,
        2,
        &[
            "misconfigured, nothing applied",
            "table itmes: expected the table to exist (create_tables = false",
        ],
    );
    assert_eq!(db.count_if_exists("itmes").await, 0);
    assert_eq!(db.count("items").await, 1);
    // The right name with create_tables = false: applied.
    let right = config("create_tables = false", "items", r#"["id"]"#, ITEM_COLUMNS);
    let cfg = db.write("right.toml", &right);
    let run = replay(
        &db,
        &cfg,
        &db.url,
        &event(&[json!({"id": "b", "label": "two"})]),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count("items").await, 2);
    // By default config check names the tables the first batch would create.
    let cfg = db.write("new.toml", &config("", "newer", r#"["id"]"#, ITEM_COLUMNS));
    let run = check(&cfg, &db.url).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("the first batch creates them") && run.stdout.contains("newer"),
        "{}",
        run.stdout
    );
    assert_eq!(db.count_if_exists("newer").await, 0);
}

on_every_backend!(create_tables_false_refuses_to_create);

// --- privileges and databases ----------------------------------------------------------------------------------

/// A user who may read and write `tables` and nothing else (no CREATE, no DELETE on the dead-letter table);
/// dropped with the database's server connection when the test ends.
async fn restricted_user(db: &TestDb, tag: &str, grants: &[(&str, &str)]) -> String {
    let name = format!("msk_ref_{tag}_{}", std::process::id());
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
    let exec = |s: String| async move {
        db.conn
            .execute_unprepared(&s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    };
    match db.backend {
        Backend::Postgres => {
            let _ = db
                .conn
                .execute_unprepared(&format!("DROP OWNED BY {name}"))
                .await;
            let _ = db
                .conn
                .execute_unprepared(&format!("DROP ROLE IF EXISTS {name}"))
                .await;
            exec(format!("CREATE ROLE {name} LOGIN")).await;
            // PostgreSQL before 15 lets every role create in schema public.
            exec("REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string()).await;
            for (privileges, table) in grants {
                exec(format!("GRANT {privileges} ON {table} TO {name}")).await;
            }
            format!("postgres://{name}@{host}/{db_name}?sslmode=disable")
        }
        _ => {
            exec(format!("DROP USER IF EXISTS '{name}'@'%'")).await;
            exec(format!("CREATE USER '{name}'@'%' IDENTIFIED BY ''")).await;
            for (privileges, table) in grants {
                exec(format!(
                    "GRANT {privileges} ON {db_name}.{table} TO '{name}'@'%'"
                ))
                .await;
            }
            format!("mysql://{name}@{host}/{db_name}")
        }
    }
}

/// Before: `config check --database-url` said ok for a user without CREATE, and the first batch then failed.
async fn config_check_tests_the_create_privilege(backend: Backend) {
    let db = TestDb::new(backend, "ref_create").await;
    let cfg = db.write(
        "items.toml",
        &config("", "items", r#"["id"]"#, ITEM_COLUMNS),
    );
    let run = replay(
        &db,
        &cfg,
        &db.url,
        &event(&[json!({"id": "a", "label": "one"})]),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let all = "SELECT, INSERT, UPDATE, DELETE";
    let url = restricted_user(&db, "create", &[(all, "items"), (all, DEAD)]).await;
    let run = check(&cfg, &url).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A second sync whose table is not there: the first batch would need CREATE.
    let cfg = db.write(
        "others.toml",
        &config("", "others", r#"["id"]"#, ITEM_COLUMNS),
    );
    let run = check(&cfg, &url).await;
    assert_code(
        &run,
        2,
        &[
            "table others: expected the table to exist, or the database user to be allowed to create it; found no such table, and CREATE was refused",
        ],
    );
    assert_eq!(db.count_if_exists("others").await, 0);
}

#[tokio::test]
async fn postgres_config_check_tests_the_create_privilege() {
    config_check_tests_the_create_privilege(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_config_check_tests_the_create_privilege() {
    config_check_tests_the_create_privilege(Backend::MariaDb).await;
}

/// Before: exit 1, "retry it", for a redrive whose user may not DELETE dead letters.
async fn redrive_without_delete_is_misconfigured_naming_the_grant(backend: Backend) {
    let db = TestDb::new(backend, "ref_redrive").await;
    let broken = config(
        "",
        "items",
        r#"["id"]"#,
        r#"  { name = "id", path = "$.id" },
  { name = "label", path = "$.label", required = true },"#,
    );
    let cfg = db.write("broken.toml", &broken);
    let run = replay(&db, &cfg, &db.url, &event(&[json!({"id": "a"})])).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.count(DEAD).await, 1);
    let url = restricted_user(
        &db,
        "redrive",
        &[
            ("SELECT, INSERT, UPDATE, DELETE", "items"),
            ("SELECT, INSERT, UPDATE", DEAD),
        ],
    )
    .await;
    let cfg = db.write(
        "fixed.toml",
        &config("", "items", r#"["id"]"#, ITEM_COLUMNS),
    );
    let redriven = run_cli(&[
        "redrive",
        "--database-url",
        &url,
        "--config",
        cfg.to_str().unwrap(),
    ])
    .await;
    assert_code(
        &redriven,
        2,
        &[
            "misconfigured",
            "expected the database user to have the privilege this statement needs (GRANT it)",
            DEAD,
        ],
    );
    assert_eq!(db.count(DEAD).await, 1);
    assert_eq!(db.count("items").await, 0);
}

#[tokio::test]
async fn postgres_redrive_without_delete_is_misconfigured_naming_the_grant() {
    redrive_without_delete_is_misconfigured_naming_the_grant(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_redrive_without_delete_is_misconfigured_naming_the_grant() {
    redrive_without_delete_is_misconfigured_naming_the_grant(Backend::MariaDb).await;
}

/// Before: `database "x" does not exist` was transient, exit 1, "retry it".
async fn a_missing_database_is_misconfigured(backend: Backend) {
    let db = TestDb::new(backend, "ref_nodb").await;
    let cfg = db.write(
        "items.toml",
        &config("", "items", r#"["id"]"#, ITEM_COLUMNS),
    );
    let url = match backend {
        Backend::Postgres => format!(
            "{}/msk_no_such_database?sslmode=disable",
            server_url(backend)
        ),
        _ => format!("{}/msk_no_such_database", server_url(backend)),
    };
    let run = replay(
        &db,
        &cfg,
        &url,
        &event(&[json!({"id": "a", "label": "one"})]),
    )
    .await;
    assert_code(
        &run,
        2,
        &[
            "misconfigured, nothing applied",
            "the database the URL names to exist",
            "msk_no_such_database",
        ],
    );
    let run = check(&cfg, &url).await;
    assert_code(
        &run,
        2,
        &[
            "the database the URL names to exist",
            "msk_no_such_database",
        ],
    );
}

#[tokio::test]
async fn postgres_a_missing_database_is_misconfigured() {
    a_missing_database_is_misconfigured(Backend::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_missing_database_is_misconfigured() {
    a_missing_database_is_misconfigured(Backend::MariaDb).await;
}

// --- masks ------------------------------------------------------------------------------------------------------

/// Before: `config check` said ok, and every field went into the table unmasked.
#[tokio::test]
async fn a_mask_that_can_classify_nothing_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({"type": "record", "name": "Person", "fields": [
        {"name": "id", "type": "string"},
        {"name": "ssn", "type": "string", "maskingLevel": "secret"}
    ]});
    std::fs::write(dir.path().join("person.avsc"), schema.to_string()).unwrap();
    let mask = |annotation: &str, schema_line: &str| {
        format!(
            "[codec]\nvalue = \"avro-confluent\"\nschemas = {{ \"1\" = \"person.avsc\" }}\n\n\
             [[mask]]\nannotation = \"{annotation}\"\nlevels = [\"public\", \"secret\"]\nemit_level = \"public\"\n{schema_line}\n\n\
             [[sync]]\ntopics = [\"items\"]\ntable = \"items\"\nkey = [\"id\"]\ncolumns = [{{ name = \"id\", path = \"$.id\" }}]\n"
        )
    };
    let check = |text: String| {
        let path = dir.path().join("mask.toml");
        std::fs::write(&path, text).unwrap();
        async move { run_cli(&["config", "check", path.to_str().unwrap()]).await }
    };
    // The annotation as the schema spells it: fine, with or without `schema =`.
    for schema_line in ["", "schema = \"person.avsc\""] {
        let ok = check(mask("maskingLevel", schema_line)).await;
        assert_eq!(ok.code, 0, "{}", ok.stderr);
        // The default annotation (aetherMaskingLevel), which this schema does not carry: a mask of nothing.
        let bad = check(mask("aetherMaskingLevel", schema_line)).await;
        assert_code(
            &bad,
            2,
            &[
                "mask 1",
                "carries the annotation \"aetherMaskingLevel\"",
                "can classify nothing",
            ],
        );
    }
}

// --- replay --plan ------------------------------------------------------------------------------------------------

/// Before: `replay --plan` with the default SQLite URL left an empty msk-sync.db behind.
/// Only a SQLite URL names a file that connecting can create.
#[tokio::test]
async fn sqlite_plan_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msk-sync.db");
    // The default URL's form, in a folder of the test's own (the default is relative to the working folder).
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let cfg = dir.path().join("items.toml");
    std::fs::write(&cfg, config("", "items", r#"["id"]"#, ITEM_COLUMNS)).unwrap();
    let events = dir.path().join("e.json");
    std::fs::write(&events, event(&[json!({"id": "a", "label": "one"})])).unwrap();
    let run = run_cli(&[
        "replay",
        "--plan",
        "--database-url",
        &url,
        "--config",
        cfg.to_str().unwrap(),
        events.to_str().unwrap(),
    ])
    .await;
    assert_code(&run, 2, &["does not exist"]);
    assert!(
        !file.exists(),
        "replay --plan left {} behind",
        file.display()
    );
}
