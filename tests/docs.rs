//! The documentation that is generated from the code stays equal to it (the configuration reference and the JSON
//! Schema under docs/src/), the sample configs validate against that schema, and `config sql` prints what a
//! least-privileged database user needs: the printed SQL, run on each real backend, lets such a user apply
//! batches.
//!
//! The schema check needs a Python with `jsonschema` (an independent validator): `$MSK_SYNC_TEST_PYTHON`, else
//! the venv `cargo xtask setup` makes.

use std::path::{Path, PathBuf};

use msk_sync_tests::*;
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;

const REGENERATE: &str = "regenerate it: cargo run -q -p entity-sync --features kafka -- config reference > docs/src/configuration.md; cargo run -q -p entity-sync -- config schema > docs/src/msk-sync.schema.json";

fn committed(name: &str) -> String {
    let path = repo().join("docs/src").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_committed_reference_is_what_the_generator_prints() {
    let generated = msk_sync::run::cli::reference_page();
    assert!(
        generated == committed("configuration.md"),
        "docs/src/configuration.md differs from `entity-sync config reference`: {REGENERATE}"
    );
    // What the reference must cover: a key of every section, every environment variable, every command.
    for needle in [
        "#### `database.url`",
        "#### `codec.registry.password_env`",
        "#### `sync.columns.version`",
        "#### `mask.emit_level`",
        "### `MSK_SYNC_PARTIAL_BATCH_RESPONSE`",
        "### `MSK_SYNC_BROKERS`",
        "### `entity-sync consume`",
        "### `entity-sync config sql`",
        "- `--batch-size BATCH_SIZE`",
    ] {
        assert!(generated.contains(needle), "the reference lacks {needle}");
    }
}

#[test]
fn the_committed_schema_is_what_the_generator_prints() {
    assert!(
        msk_sync::run::cli::schema_text() == committed("msk-sync.schema.json"),
        "docs/src/msk-sync.schema.json differs from `entity-sync config schema`: {REGENERATE}"
    );
}

/// The Python interpreter with `jsonschema`.
fn python() -> PathBuf {
    std::env::var_os("MSK_SYNC_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/msk-sync-ci-venv/bin/python"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Python for the schema test: set MSK_SYNC_TEST_PYTHON to a Python with the `jsonschema` \
                 package, or run `cargo xtask setup`"
            )
        })
}

/// Each document validated against `schema` by Python's jsonschema (Draft 7): per document, its errors.
fn validate(schema: &str, documents: &[(String, Value)]) -> Vec<(String, Vec<String>)> {
    const SCRIPT: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
out = []
for name, doc in json.load(open(sys.argv[2])):
    out.append([name, sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))])
print(json.dumps(out))
"#;
    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, schema).unwrap();
    let docs_file = dir.path().join("docs.json");
    std::fs::write(&docs_file, serde_json::to_string(documents).unwrap()).unwrap();
    let output = std::process::Command::new(python())
        .args(["-c", SCRIPT])
        .arg(&schema_file)
        .arg(&docs_file)
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "python jsonschema failed (`cargo xtask setup` installs jsonschema): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn toml_as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let value: toml::Value =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(value).unwrap()
}

/// Every sample config (msk-sync.toml, the config layer's copy, events/*.toml) names the committed schema on its first line and
/// validates against it; a config with an unknown key, a wrong type or a value outside the valid ones does not
/// (the control that shows the validator can fail).
#[test]
fn every_sample_config_validates_against_the_schema() {
    let mut samples = vec![
        repo().join("msk-sync.toml"),
        repo().join("deploy/config/msk-sync/msk-sync.toml"),
    ];
    for entry in std::fs::read_dir(repo().join("events")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            samples.push(path);
        }
    }
    assert!(samples.len() >= 6, "{samples:?}");
    let mut documents = Vec::new();
    for path in &samples {
        let first = std::fs::read_to_string(path).unwrap();
        let first = first.lines().next().unwrap_or_default();
        let target = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{}: the first line is not `#:schema …`", path.display()));
        let folder = path.parent().unwrap();
        assert_eq!(
            folder.join(target).canonicalize().ok(),
            repo()
                .join("docs/src/msk-sync.schema.json")
                .canonicalize()
                .ok(),
            "{}: #:schema names {target}",
            path.display()
        );
        documents.push((path.display().to_string(), toml_as_json(path)));
    }
    let bad = [
        (
            "unknown key",
            r#"[database]
urll = "x""#,
        ),
        ("wrong type", "[codec]\nthreads = \"two\""),
        ("outside the valid values", "[codec]\nvalue = \"xml\""),
        (
            "a column type that does not exist",
            "[[sync]]\ntopics = [\"t\"]\ntable = \"t\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", path = \"$.id\", type = \"uuid4\" }]",
        ),
        (
            "a sync without its table",
            "[[sync]]\ntopics = [\"t\"]\nkey = [\"id\"]\ncolumns = []",
        ),
    ];
    for (name, text) in bad {
        let value: toml::Value = toml::from_str(text).unwrap();
        documents.push((name.to_string(), serde_json::to_value(value).unwrap()));
    }
    let results = validate(&committed("msk-sync.schema.json"), &documents);
    assert_eq!(results.len(), documents.len());
    for (name, errors) in &results[..samples.len()] {
        assert!(errors.is_empty(), "{name} does not validate: {errors:?}");
    }
    for (name, errors) in &results[samples.len()..] {
        assert!(
            !errors.is_empty(),
            "the schema accepts a config with {name}"
        );
    }
}

/// The config layer's msk-sync.toml (deploy/config/msk-sync/, what template.yaml deploys by default) is the
/// repository's sample msk-sync.toml: the same settings, key for key (only the header comments and the
/// `#:schema` path differ). A deployment's own config goes beside it under another name (template.yaml's
/// `ConfigFile`), so the sample stays the sample.
#[test]
fn the_config_layers_sample_is_the_repositorys_msk_sync_toml() {
    let repository = toml_as_json(&repo().join("msk-sync.toml"));
    let layer = toml_as_json(&repo().join("deploy/config/msk-sync/msk-sync.toml"));
    assert!(
        repository == layer,
        "deploy/config/msk-sync/msk-sync.toml and msk-sync.toml hold different settings: make the same change \
         in both (put a deployment's own config beside the sample and name it with template.yaml's ConfigFile)"
    );
}

/// The statements of `text` (`config sql`'s output): one per line, comments left out.
fn statements(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .collect()
}

/// `config sql` on a database without the tables; an administrator runs what it printed; then a user with
/// only the printed grants applies batches (a versioned sync: target, dead-letter and tombstone tables), passes
/// the preflight and `config check`, and still cannot create a table.
async fn printed_sql_lets_a_least_privileged_user_apply_batches(backend: Backend) {
    let db = TestDb::new(backend, "config_sql").await;
    let config = db.sample_config("versioned.toml", &[], "versioned.toml");
    let config = config.display().to_string();
    let user = format!("msk_sql_{}", std::process::id());
    let printed = cli(
        &entity_sync(),
        &[
            "config",
            "sql",
            &config,
            "--database-url",
            &db.url,
            "--grant-to",
            &user,
        ],
    )
    .await;
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    let sql = printed.stdout;
    assert_eq!(
        sql.matches("CREATE TABLE").count(),
        3,
        "target, dead-letter and tombstone tables:\n{sql}"
    );
    if backend == Backend::Sqlite {
        assert_eq!(db.count_tables().await, 0, "config sql created a table");
    }
    let user_url = match backend {
        Backend::Sqlite => {
            assert!(sql.contains("-- SQLite has no users or grants."), "{sql}");
            assert!(!sql.contains("GRANT"), "{sql}");
            db.url.clone()
        }
        Backend::Postgres => {
            assert_eq!(sql.matches(&format!("TO \"{user}\";")).count(), 3, "{sql}");
            let admin = Database::connect(format!("{}/test", server_url(backend)))
                .await
                .unwrap();
            let _ = admin
                .execute_unprepared(&format!("DROP OWNED BY {user}; DROP ROLE IF EXISTS {user}"))
                .await;
            admin
                .execute_unprepared(&format!(
                    "DROP ROLE IF EXISTS {user}; CREATE ROLE {user} LOGIN"
                ))
                .await
                .unwrap();
            db.url.replacen("postgres@", &format!("{user}@"), 1)
        }
        Backend::MariaDb => {
            assert_eq!(
                sql.matches(&format!("TO '{user}'@'%';")).count(),
                3,
                "{sql}"
            );
            for statement in [
                format!("DROP USER IF EXISTS '{user}'@'%'"),
                format!("CREATE USER '{user}'@'%'"),
            ] {
                db.conn.execute_unprepared(&statement).await.unwrap();
            }
            db.url.replacen("root@", &format!("{user}@"), 1)
        }
    };
    assert_ne!(backend != Backend::Sqlite, user_url == db.url, "{user_url}");
    for statement in statements(&sql) {
        db.conn
            .execute_unprepared(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let check = cli(
        &entity_sync(),
        &["config", "check", &config, "--database-url", &user_url],
    )
    .await;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--config",
            &config,
            "--database-url",
            &user_url,
            &event_file("versioned.json").display().to_string(),
            &event_file("versioned-stale.json").display().to_string(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = run.reports();
    assert!(
        reports.iter().all(|r| r.dead_lettered == 0),
        "{}",
        run.stdout
    );
    assert!(reports[1].stale > 0, "{}", run.stdout);
    assert!(db.count("servicea_planet_versioned").await > 0);
    if backend != Backend::Sqlite {
        let as_user = Database::connect(&user_url).await.unwrap();
        let created = as_user
            .execute_unprepared("CREATE TABLE msk_sql_not_allowed (id INTEGER)")
            .await;
        assert!(
            created.is_err(),
            "the user may create tables: not least privilege"
        );
        as_user.close().await.unwrap();
    }
    // The role is the server's, not the test database's: best effort, the next run's name differs anyway.
    if backend == Backend::Postgres {
        let _ = db
            .conn
            .execute_unprepared(&format!("DROP OWNED BY {user}"))
            .await;
        if let Ok(admin) = Database::connect(format!("{}/test", server_url(backend))).await {
            let _ = admin
                .execute_unprepared(&format!("DROP ROLE IF EXISTS {user}"))
                .await;
        }
    }
}

on_every_backend!(printed_sql_lets_a_least_privileged_user_apply_batches);

/// A database error reaches the user without the server's source line: sqlx writes PostgreSQL's errors as
/// `message at line N` (the line of the server's C source), which the CLI drops. The control shows that the
/// driver's own text has it.
#[tokio::test]
async fn database_errors_come_without_the_servers_source_line() {
    let url = format!(
        "{}/msk_sync_no_such_database_{}?sslmode=disable",
        server_url(Backend::Postgres),
        std::process::id()
    );
    let driver = match Database::connect(&url).await {
        Ok(_) => panic!("{url} exists"),
        Err(e) => e.to_string(),
    };
    assert!(driver.contains(" at line "), "control: {driver}");
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--config",
            &default_config(),
            "--database-url",
            &url,
            &event_file("mixed-partitions.json").display().to_string(),
        ],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(!run.stderr.contains(" at line "), "{}", run.stderr);
}
