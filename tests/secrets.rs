//! The database secret read at run time (Lambda mode's `DATABASE_SECRET_ARN`), against a real AWS API
//! emulator: moto in server mode holds the secrets, and the handler Lambda mode runs ([`SecretHandler`]) reads
//! them with the AWS SDK. Also `replay --emf` (the metrics Lambda writes).
//!
//! Needs moto: `pip install 'moto[server]'` and `MSK_SYNC_MOTO=/path/to/moto_server` (`cargo xtask test`
//! installs it into ~/.cache/msk-sync-ci-venv, which is also looked at). Without it these tests fail, they do
//! not skip.
//!
//! The rotation test runs on MariaDB: PostgreSQL on the test machines trusts every local connection
//! (pg_hba `trust`), so it would accept any password and could not show a refused one.

use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, Region};
use msk_sync::pipeline::HandlerError;
use msk_sync::run::secret::{Fallback, SecretHandler, SecretSource};
use msk_sync_tests::*;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test's own moto server (tests/common) with this file's helpers.
struct Moto(MotoServer);

impl Moto {
    async fn start(env: &[(&str, &str)]) -> Self {
        Self(MotoServer::start(env).await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// A secret source on this server, as Lambda mode builds it, with the test's endpoint and credentials
    /// (in-process tests cannot each set AWS_ENDPOINT_URL).
    fn source(&self, secret_id: &str, key: (&str, &str)) -> SecretSource {
        source_at(self.url(), secret_id, key)
    }

    /// A client to set secrets up with (any credentials do while moto does not check them).
    async fn client(&self) -> Client {
        Client::new(&self.source("-", TEST_KEY).config_loader().load().await)
    }

    async fn create_secret(&self, name: &str, value: &str) -> String {
        let out = self
            .client()
            .await
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create the secret in moto");
        out.arn().expect("the new secret's ARN").to_string()
    }

    async fn put_secret(&self, id: &str, value: &str) {
        self.client()
            .await
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .expect("put a new secret value in moto");
    }

    /// One IAM query-protocol call (moto answers it unsigned while it does not check credentials yet).
    async fn iam(&self, query: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.0.port))
            .await
            .unwrap();
        let body = format!("{query}&Version=2010-05-08");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.0.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }
}

const TEST_KEY: (&str, &str) = ("test", "test");

/// A secret source on the endpoint at `url` with the credentials `key`.
fn source_at(url: String, secret_id: &str, key: (&str, &str)) -> SecretSource {
    let credentials = Credentials::new(key.0, key.1, None, None, "test");
    SecretSource::new(secret_id).with_config(move |loader| {
        loader
            .endpoint_url(url.clone())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials.clone())
    })
}

/// An HTTP endpoint of the test's own that stands for Secrets Manager: it reads each request whole, then
/// answers `status` and `body` (`Some`), or keeps the connection open and never answers (`None`).
async fn stub_endpoint(answer: Option<(u16, String)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    request.extend_from_slice(&chunk[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                match answer {
                    None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    Some((status, body)) => {
                        let response = format!(
                            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/x-amz-json-1.1\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn xml_text<'a>(xml: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = xml.find(&open).map(|i| i + open.len()).unwrap();
    let end = xml[start..].find('<').unwrap() + start;
    &xml[start..end]
}

/// entity-sync (the repository's msk-sync.toml) on the database the secret names.
fn secret_handler(source: SecretSource) -> SecretHandler {
    let app = entity_sync();
    let compiled = app.load(Some(&repo().join("msk-sync.toml"))).unwrap();
    SecretHandler::new(compiled.pipeline, compiled.sink, source)
}

fn event(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(event_file(name)).unwrap()).unwrap()
}

async fn handle(
    handler: &SecretHandler,
    name: &str,
) -> Result<msk_sync::report::BatchReport, HandlerError> {
    let value = event(name);
    let event = msk_sync::event::MskEvent::from_value(value).unwrap();
    handler.handle(&event).await
}

/// A MariaDB user of the test's own with a password, allowed everything on the test database.
async fn mariadb_user(db: &TestDb, user: &str, password: &str) {
    let database = db.url.rsplit('/').next().unwrap();
    for sql in [
        format!("DROP USER IF EXISTS '{user}'@'%'"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT ALL ON `{database}`.* TO '{user}'@'%'"),
    ] {
        db.conn.execute_unprepared(&sql).await.unwrap();
    }
}

fn rds_json(engine: &str, db: &TestDb, user: &str, password: &str) -> String {
    let database = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let host_port = host_port(&db.url);
    let (host, port) = host_port.split_once(':').unwrap();
    serde_json::json!({
        "engine": engine, "host": host, "port": port.parse::<u16>().unwrap(), "username": user,
        "password": password, "dbname": database, "dbInstanceIdentifier": "test"
    })
    .to_string()
}

#[tokio::test]
async fn an_answer_the_sdk_cannot_read_is_never_quoted() {
    // Status 200 with the secret in it, but not what the SDK can read: a CreatedDate that is a string, and a
    // body cut short. The body holds the secret: no error text may quote it.
    let db = TestDb::new(Backend::Sqlite, "secret_unreadable").await;
    let whole = r#"{"ARN":"arn:aws:secretsmanager:us-east-1:1:secret:db","Name":"db","#.to_string()
        + r#""SecretString":"postgres://app:leaky-pw-5150@db.example/orders","VersionId":"v1","#;
    for body in [
        whole.clone() + r#""CreatedDate":"yesterday"}"#,
        whole.clone(),
    ] {
        let url = stub_endpoint(Some((200, body))).await;
        let handler = secret_handler(source_at(url, "db", TEST_KEY));
        match handle(&handler, "planet-created.json").await {
            Err(HandlerError::Transient(e)) => {
                assert!(e.contains("database secret db"), "{e}");
                assert!(e.contains("HTTP 200"), "{e}");
                assert!(!e.contains("leaky-pw-5150"), "{e}");
                assert!(!e.contains("SecretString"), "{e}");
            }
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }
    // An error status whose body is no Secrets Manager error (a proxy's page) is not quoted either.
    let url = stub_endpoint(Some((502, "<html>upstream leaky-pw-5150</html>".into()))).await;
    let handler = secret_handler(source_at(url, "db", TEST_KEY));
    match handle(&handler, "planet-created.json").await {
        Err(HandlerError::Transient(e)) => {
            assert!(e.contains("HTTP 502"), "{e}");
            assert!(!e.contains("leaky-pw-5150"), "{e}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(db.count_tables().await, 0, "nothing may be written");
}

#[tokio::test]
async fn a_secrets_manager_that_never_answers_fails_the_batch_within_its_deadline() {
    // The endpoint accepts TCP and reads the request, then says nothing.
    let db = TestDb::new(Backend::Sqlite, "secret_silent").await;
    let url = stub_endpoint(None).await;
    let handler = secret_handler(source_at(url, "db-silent", TEST_KEY));
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        handle(&handler, "planet-created.json"),
    )
    .await
    .expect("the secret read must have a deadline");
    let took = started.elapsed();
    match outcome {
        Err(HandlerError::Transient(e)) => {
            assert!(e.contains("database secret db-silent"), "{e}");
            assert!(e.contains("did not answer within"), "{e}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(db.count_tables().await, 0, "nothing may be written");
}

#[tokio::test]
async fn a_secret_whose_contents_cannot_make_a_url_is_misconfigured_naming_the_field() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::Sqlite, "secret_contents").await;
    let cases = [
        (
            "no-host",
            r#"{"engine":"postgres","username":"u","password":"s3cret-77"}"#,
            "\"host\" is missing (and DATABASE_HOST is not set)",
        ),
        (
            "oracle",
            r#"{"engine":"oracle","host":"h","username":"u","password":"s3cret-77"}"#,
            "field \"engine\"",
        ),
        ("not-json", "{s3cret-77", "not valid JSON"),
        ("plain", "s3cret-77", "neither a database URL"),
        (
            "no-dbname",
            r#"{"engine":"mariadb","host":"h","username":"u","password":"s3cret-77"}"#,
            "\"dbname\" is missing (and DATABASE_NAME is not set)",
        ),
    ];
    for (name, value, expected) in cases {
        let arn = moto.create_secret(name, value).await;
        let handler = secret_handler(moto.source(&arn, TEST_KEY));
        match handle(&handler, "planet-created.json").await {
            Err(HandlerError::Misconfigured(e)) => {
                assert!(e.contains(expected), "{name}: {e}");
                assert!(!e.contains("s3cret-77"), "{e}");
            }
            other => panic!("{name}: expected misconfigured, got {other:?}"),
        }
    }
    // A binary secret.
    moto.client()
        .await
        .create_secret()
        .name("binary")
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(
            b"s3cret-77".to_vec(),
        ))
        .send()
        .await
        .unwrap();
    let handler = secret_handler(moto.source("binary", TEST_KEY));
    match handle(&handler, "planet-created.json").await {
        Err(HandlerError::Misconfigured(e)) => assert!(e.contains("SecretString"), "{e}"),
        other => panic!("expected misconfigured, got {other:?}"),
    }
    assert_eq!(db.count_tables().await, 0, "nothing may be written");
}

#[tokio::test]
async fn an_rds_master_user_secret_takes_host_port_engine_and_database_from_the_settings() {
    // RDS-managed master-user secrets hold only username and password.
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::MariaDb, "secret_master").await;
    let user = format!("msk_master_{}", std::process::id());
    mariadb_user(&db, &user, "master-pw-1").await;
    let arn = moto
        .create_secret(
            "rds-master",
            &serde_json::json!({"username": user, "password": "master-pw-1"}).to_string(),
        )
        .await;
    let host_port = host_port(&db.url);
    let (host, port) = host_port.split_once(':').unwrap();
    let database = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let fallback = Fallback {
        engine: Some("mariadb".into()),
        host: Some(host.into()),
        port: Some(port.into()),
        dbname: Some(database.into()),
    };
    let handler = secret_handler(moto.source(&arn, TEST_KEY).with_fallback(fallback.clone()));
    let report = handle(&handler, "planet-created.json").await.unwrap();
    assert_eq!(report.upserted, 1);
    assert_eq!(db.planets().await.len(), 1);
    // What the secret has wins over the setting: a secret's own host that does not exist fails the batch.
    let arn = moto
        .create_secret(
            "rds-own-host",
            &serde_json::json!({"username": user, "password": "master-pw-1",
                                "host": "no-such-host.invalid"})
            .to_string(),
        )
        .await;
    let handler = secret_handler(moto.source(&arn, TEST_KEY).with_fallback(fallback));
    assert!(matches!(
        handle(&handler, "planet-updated.json").await,
        Err(HandlerError::Transient(_))
    ));
}

#[tokio::test]
async fn a_url_secret_is_read_at_the_first_batch() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::Postgres, "secret_url").await;
    let arn = moto.create_secret("db-url", &db.url).await;
    let handler = secret_handler(moto.source(&arn, TEST_KEY));
    let report = handle(&handler, "planet-created.json").await.unwrap();
    assert_eq!(report.upserted, 1);
    assert_eq!(db.planets().await.len(), 1);
}

#[tokio::test]
async fn an_rds_json_secret_becomes_a_url_with_its_password_encoded() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::MariaDb, "secret_json").await;
    let user = format!("msk_json_{}", std::process::id());
    // Characters a URL would take for its own: only percent-encoding gets them to the server intact.
    let password = "p@ss:w/rd?#%";
    mariadb_user(&db, &user, password).await;
    let arn = moto
        .create_secret("db-json", &rds_json("mariadb", &db, &user, password))
        .await;
    let handler = secret_handler(moto.source(&arn, TEST_KEY));
    let report = handle(&handler, "planet-created.json").await.unwrap();
    assert_eq!(report.upserted, 1);
    assert_eq!(db.planets().await.len(), 1);

    // PostgreSQL's RDS shape too (its trust authentication ignores the password; the URL is what is tested).
    let pg = TestDb::new(Backend::Postgres, "secret_json").await;
    let arn = moto
        .create_secret("db-json-pg", &rds_json("postgres", &pg, "postgres", "any"))
        .await;
    let handler = secret_handler(moto.source(&arn, TEST_KEY));
    assert_eq!(
        handle(&handler, "planet-created.json")
            .await
            .unwrap()
            .upserted,
        1
    );
    assert_eq!(pg.planets().await.len(), 1);
}

#[tokio::test]
async fn a_rotated_password_is_read_again_once_and_the_batch_goes_through() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::MariaDb, "secret_rotation").await;
    let user = format!("msk_rot_{}", std::process::id());
    mariadb_user(&db, &user, "first-password").await;
    let arn = moto
        .create_secret(
            "db-rotating",
            &rds_json("mariadb", &db, &user, "first-password"),
        )
        .await;
    let handler = secret_handler(moto.source(&arn, TEST_KEY));
    handle(&handler, "planet-created.json").await.unwrap();

    // The rotation: the user's password and the secret change; the function's connections with the old
    // password go away (as they do when they are recycled), so its next connection is refused.
    let rotate = |password: &'static str| {
        let (db, user) = (&db, &user);
        async move {
            db.conn
                .execute_unprepared(&format!(
                    "ALTER USER '{user}'@'%' IDENTIFIED BY '{password}'"
                ))
                .await
                .unwrap();
            let ids = db
                .conn
                .query_all_raw(Statement::from_string(
                    DbBackend::MySql,
                    format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'"),
                ))
                .await
                .unwrap();
            for id in ids {
                let id: i64 = id.try_get_by_index(0).unwrap();
                let _ = db.conn.execute_unprepared(&format!("KILL {id}")).await;
            }
        }
    };
    rotate("second-password").await;
    moto.put_secret(&arn, &rds_json("mariadb", &db, &user, "second-password"))
        .await;
    // The old password is refused now: only a re-read of the secret can let the next batch through.
    let old = db.url.replace("root@", &format!("{user}:first-password@"));
    assert!(Database::connect(&old).await.is_err());
    let report = handle(&handler, "planet-updated.json").await.unwrap();
    assert_eq!(report.upserted, 1);
    assert_eq!(db.planets().await.len(), 1);

    // Rotated again, but the secret still holds the old password: one re-read, the same credentials, and the
    // batch fails as transient (retried later), with nothing written.
    rotate("third-password").await;
    let before = db.planets().await;
    match handle(&handler, "planet-deleted.json").await {
        Err(HandlerError::Transient(e)) => {
            assert!(e.contains("Access denied"), "{e}");
            assert!(!e.contains("second-password"), "{e}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(db.planets().await, before);
}

#[tokio::test]
async fn a_missing_secret_fails_the_batch_as_transient_and_a_retry_reads_it() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::Sqlite, "secret_missing").await;
    let handler = secret_handler(moto.source("db-not-yet", TEST_KEY));
    match handle(&handler, "planet-created.json").await {
        Err(HandlerError::Transient(e)) => {
            assert!(e.contains("database secret db-not-yet"), "{e}");
            assert!(e.contains("ResourceNotFoundException"), "{e}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(db.count_tables().await, 0, "nothing may be written");
    // The failure is not remembered: once the secret exists, the retried batch goes through.
    moto.create_secret("db-not-yet", &db.url).await;
    let report = handle(&handler, "planet-created.json").await.unwrap();
    assert_eq!(report.upserted, 1);
}

#[tokio::test]
async fn a_secret_the_function_may_not_read_fails_the_batch_as_transient() {
    // moto checks credentials and IAM policies after the first three requests: the secret, a user without
    // any policy, and that user's access key.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    let db = TestDb::new(Backend::Sqlite, "secret_denied").await;
    let arn = moto.create_secret("db-denied", &db.url).await;
    let user = "msk-sync-function";
    moto.iam(&format!("Action=CreateUser&UserName={user}"))
        .await;
    let key = moto
        .iam(&format!("Action=CreateAccessKey&UserName={user}"))
        .await;
    let key = (
        xml_text(&key, "AccessKeyId"),
        xml_text(&key, "SecretAccessKey"),
    );
    let handler = secret_handler(moto.source(&arn, key));
    match handle(&handler, "planet-created.json").await {
        Err(HandlerError::Transient(e)) => {
            assert!(e.contains("database secret"), "{e}");
            assert!(e.contains("AccessDenied"), "{e}");
            assert!(e.contains("secretsmanager:GetSecretValue"), "{e}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(db.count_tables().await, 0, "nothing may be written");
}

#[tokio::test]
async fn replay_emf_prints_each_batch_s_metrics_in_embedded_metric_format() {
    let db = TestDb::new(Backend::Sqlite, "emf").await;
    let config = default_config();
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--emf",
            "--database-url",
            &db.url,
            "--config",
            &config,
            &event_file("planet-created.json").display().to_string(),
            &event_file("malformed.json").display().to_string(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let values: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    // report, metrics, report, metrics
    assert_eq!(values.len(), 4, "{}", run.stdout);
    for (report, emf) in [(&values[0], &values[1]), (&values[2], &values[3])] {
        assert_eq!(msk_sync::metrics::validate(emf), Ok(()), "{emf}");
        assert_eq!(emf["FunctionName"], "entity-sync");
        assert_eq!(emf["Records"], report["received"]);
        assert_eq!(emf["Upserted"], report["upserted"]);
        assert_eq!(emf["DeadLettered"], report["deadLettered"]);
        assert_eq!(emf["TransientFailure"], 0);
        // The events' records are years old.
        assert!(
            emf["MaxRecordAgeMs"].as_i64().unwrap() > 86_400_000,
            "{emf}"
        );
    }
    assert!(values[3]["DeadLettered"].as_u64().unwrap() > 0);
}

/// Lambda mode end to end: `cargo lambda watch` runs the function as Lambda would, with only the secret's ARN
/// and the AWS environment (AWS_ENDPOINT_URL pointing at moto, the credentials and region Lambda sets), and the
/// function writes an EMF object per batch on stdout.
#[tokio::test]
async fn lambda_mode_reads_the_secret_from_the_environment_and_writes_metrics() {
    let moto = Moto::start(&[]).await;
    let db = TestDb::new(Backend::Postgres, "secret_lambda").await;
    let arn = moto
        .create_secret(
            "db-lambda",
            &rds_json("postgres", &db, "postgres", "pg-secret-pw-7731"),
        )
        .await;
    let stdout = db.dir.path().join("watch.out");
    let config = repo().join("msk-sync.toml").display().to_string();
    let watch = LambdaWatch::start(
        &[
            ("DATABASE_SECRET_ARN", arn.as_str()),
            ("AWS_ENDPOINT_URL", &moto.url()),
            // Credentials the log must never hold, at any level: moto takes any.
            ("AWS_ACCESS_KEY_ID", "AKIAKEYID4411TEST"),
            ("AWS_SECRET_ACCESS_KEY", "secret-access-key-4411"),
            ("AWS_SESSION_TOKEN", "session-token-4411"),
            ("AWS_REGION", "us-east-1"),
            ("MSK_SYNC_METRICS_NAMESPACE", "msk-sync-test"),
            ("MSK_SYNC_CONFIG", &config),
            // The most the template allows; the SDK logs requests and answers whole at TRACE.
            ("AWS_LAMBDA_LOG_LEVEL", "TRACE"),
            ("RUST_LOG", "trace,aws_sigv4::sign=trace"),
        ],
        std::fs::File::create(&stdout).unwrap().into(),
    )
    .await;
    let out = watch
        .invoke("entity-sync", &event_file("mixed-partitions.json"))
        .await;
    let (response, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{response}\n{err}");
    let report: serde_json::Value = serde_json::from_str(response.trim()).unwrap();
    assert_eq!(report["upserted"], 6, "{report}");
    assert_eq!(db.count("servicea_planet").await, 6);

    // The function's stdout: the EMF object of that batch, alone on its line.
    let mut emf = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        emf = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("_aws").is_some());
        if emf.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let emf = emf.expect("an EMF line on the function's stdout");
    assert_eq!(msk_sync::metrics::validate(&emf), Ok(()), "{emf}");
    assert_eq!(
        emf["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "msk-sync-test"
    );
    assert_eq!(emf["FunctionName"], "entity-sync");
    assert_eq!(emf["Records"], 11);
    assert_eq!(emf["Upserted"], 6);
    // The metrics carry a level, so Lambda's log-level filtering keeps them (INFO at TRACE).
    assert_eq!(emf["level"], "INFO");
    let text = std::fs::read_to_string(&stdout).unwrap();
    assert!(
        text.contains("reading the database secret"),
        "the log is at TRACE: {text}"
    );
    for credential in [
        "pg-secret-pw-7731",
        "AKIAKEYID4411TEST",
        "secret-access-key-4411",
        "session-token-4411",
    ] {
        assert!(!text.contains(credential), "{credential} is in the log");
    }
}
