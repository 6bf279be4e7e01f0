//! What Lambda sees of a function (issue 14, item 16), against a small server that speaks the Lambda
//! runtime API (`/runtime/invocation/next`, `…/response`, `…/error`, `/runtime/init/error`) and the real
//! entity-sync binary in Lambda mode: init errors are posted with a stable error type, a payload that is not
//! JSON is an `InvalidEvent` like any other payload that is not an MSK event, and a Lambda-sized batch read on
//! several threads applies as one thread applies it.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msk_sync_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A request the function posted to the runtime API.
#[derive(Debug)]
struct Post {
    path: String,
    error_type: Option<String>,
    body: serde_json::Value,
}

/// The runtime API: hands out `payloads` one per `/next` (then keeps the function waiting), and reports
/// every POST.
async fn runtime_api(payloads: Vec<String>) -> (u16, mpsc::UnboundedReceiver<Post>) {
    runtime_api_with_time(payloads, Duration::from_secs(120)).await
}

/// As [`runtime_api`], each invocation given `time` (its `Lambda-Runtime-Deadline-Ms`, from when `/next`
/// answers), as a function's timeout gives it.
async fn runtime_api_with_time(
    payloads: Vec<String>,
    time: Duration,
) -> (u16, mpsc::UnboundedReceiver<Post>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Mutex::new(VecDeque::from(payloads)));
    tokio::spawn(async move {
        let mut next_id = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, queue) = (tx.clone(), Arc::clone(&queue));
            next_id += 1000;
            tokio::spawn(serve(stream, tx, queue, next_id, time));
        }
    });
    (port, rx)
}

async fn serve(
    stream: TcpStream,
    tx: mpsc::UnboundedSender<Post>,
    queue: Arc<Mutex<VecDeque<String>>>,
    mut id: usize,
    time: Duration,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let (mut length, mut error_type) = (0usize, None);
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "lambda-runtime-function-error-type" => {
                        error_type = Some(value.trim().to_string())
                    }
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let response = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let Some(payload) = queue.lock().unwrap().pop_front() else {
                // No more events: the function waits, as on a quiet queue, until the test ends it.
                std::future::pending::<()>().await;
                return;
            };
            id += 1;
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + time.as_millis();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: req-{id}\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:eu-west-1:123456789012:function:entity-sync\r\n\
                 Content-Length: {}\r\n\r\n{payload}",
                payload.len()
            )
        } else {
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            let _ = tx.send(Post {
                path,
                error_type,
                body,
            });
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// entity-sync in Lambda mode (`cargo run`, no arguments) against the runtime API on `port`.
fn start_function(port: u16, env: &[(&str, String)]) -> tokio::process::Child {
    let mut cmd = cargo_command(env!("CARGO"));
    cmd.args(["run", "--quiet", "-p", "entity-sync"])
        .current_dir(repo())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "entity-sync")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("MSK_SYNC_CONFIG", default_config())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("cargo run -p entity-sync")
}

/// The next POST, waiting for `cargo run` to build the binary if it must.
async fn next_post(posts: &mut mpsc::UnboundedReceiver<Post>) -> Post {
    tokio::time::timeout(Duration::from_secs(600), posts.recv())
        .await
        .expect("the function posted nothing")
        .expect("runtime API gone")
}

#[tokio::test]
async fn a_setup_failure_is_posted_as_an_init_error() {
    let (port, mut posts) = runtime_api(Vec::new()).await;
    let child = start_function(
        port,
        &[(
            "DATABASE_URL",
            "postgresx://app:S3ntinelPW9@127.0.0.1:5432/db".into(),
        )],
    );
    let post = next_post(&mut posts).await;
    assert_eq!(post.path, "/2018-06-01/runtime/init/error", "{post:?}");
    assert_eq!(
        post.error_type.as_deref(),
        Some("Misconfigured"),
        "{post:?}"
    );
    assert_eq!(post.body["errorType"], "Misconfigured", "{post:?}");
    let message = post.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("entity-sync: database URL postgresx://app:***@127.0.0.1:5432/db")
            && message.contains("has no supporting driver"),
        "{message}"
    );
    assert!(!message.contains("S3ntinelPW9"), "{message}");
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A config that cannot be read is one too.
    let (port, mut posts) = runtime_api(Vec::new()).await;
    let _child = start_function(
        port,
        &[("MSK_SYNC_CONFIG", "/nonexistent/msk-sync.toml".into())],
    );
    let post = next_post(&mut posts).await;
    assert_eq!(post.path, "/2018-06-01/runtime/init/error", "{post:?}");
    assert_eq!(post.body["errorType"], "Misconfigured", "{post:?}");
    assert!(
        post.body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/msk-sync.toml")),
        "{post:?}"
    );

    // And so is a metrics namespace CloudWatch refuses: its metrics would be dropped without a word.
    let db = TestDb::new(Backend::Sqlite, "lambda_api_namespace").await;
    for namespace in ["AWS/Lambda", "costs$"] {
        let (port, mut posts) = runtime_api(Vec::new()).await;
        let child = start_function(
            port,
            &[
                ("DATABASE_URL", db.url.clone()),
                ("MSK_SYNC_METRICS_NAMESPACE", namespace.into()),
            ],
        );
        let post = next_post(&mut posts).await;
        assert_eq!(post.path, "/2018-06-01/runtime/init/error", "{post:?}");
        assert_eq!(post.body["errorType"], "Misconfigured", "{post:?}");
        assert!(
            post.body["errorMessage"]
                .as_str()
                .is_some_and(|m| m.contains("MSK_SYNC_METRICS_NAMESPACE")),
            "{post:?}"
        );
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{namespace}");
    }
}

/// A database that accepts connections and never answers, in an invocation with 4 s left (a function whose
/// timeout is under `database.batch_timeout_seconds`): the batch fails as transient when the invocation's
/// time is about to run out, saying so, instead of Lambda killing it without a word (here, before the pool's
/// 10 s connection deadline).
#[tokio::test]
async fn a_hung_database_fails_the_batch_within_the_invocation_s_remaining_time() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let event = std::fs::read_to_string(event_file("mixed-partitions.json")).unwrap();
    let (api, mut posts) = runtime_api_with_time(vec![event], Duration::from_secs(4)).await;
    let _child = start_function(
        api,
        &[(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/test"),
        )],
    );
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/error"), "{post:?}");
    assert_eq!(post.body["errorType"], "TransientFailure", "{post:?}");
    let message = post.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("the database did not finish it within")
            && message.contains("the invocation's remaining time")
            && message.contains("rolled back"),
        "{message}"
    );
}

#[tokio::test]
async fn invocation_errors_have_stable_types() {
    let db = TestDb::new(Backend::Sqlite, "lambda_api").await;
    let event = std::fs::read_to_string(event_file("mixed-partitions.json")).unwrap();
    let (port, mut posts) = runtime_api(vec![
        "this is not JSON".into(),
        r#"{"Records": []}"#.into(),
        event,
    ])
    .await;
    let _child = start_function(port, &[("DATABASE_URL", db.url.clone())]);

    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/error"), "{post:?}");
    assert_eq!(post.body["errorType"], "InvalidEvent", "{post:?}");
    let message = post.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the payload is not JSON (expected ident at line 1 column 2)"),
        "{message}"
    );

    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/error"), "{post:?}");
    assert_eq!(post.body["errorType"], "InvalidEvent", "{post:?}");
    assert!(
        post.body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("not an MSK event")),
        "{post:?}"
    );

    // A good batch after them: the instance is still serving.
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/response"), "{post:?}");
    assert_eq!(post.body["upserted"], 6, "{post:?}");
}

/// A Lambda-sized batch through the runtime API: its payload goes to the handler beside the runtime and its
/// records are read in shares on four threads (`codec.threads = 4`, whatever the machine's CPUs). The table
/// it leaves is the one `replay` leaves on one thread, where serde reads the event in one pass.
#[tokio::test]
async fn a_large_batch_read_in_shares_applies_as_one_thread_does() {
    let db = TestDb::new(Backend::Sqlite, "lambda_api_large").await;
    let event = msk_sync_bench::generate(&msk_sync_bench::GenConfig {
        records: 4_000,
        entities: 400,
        partitions: 3,
        ..Default::default()
    })
    .to_string();
    assert!(
        event.len() > 2 << 20,
        "four shares of at least 256 KiB: {}",
        event.len()
    );
    let config = |threads: usize| {
        let file = db.dir.path().join(format!("threads-{threads}.toml"));
        let base = std::fs::read_to_string(default_config()).unwrap();
        std::fs::write(&file, format!("{base}\n[codec]\nthreads = {threads}\n")).unwrap();
        file.display().to_string()
    };

    let (port, mut posts) = runtime_api(vec![event.clone()]).await;
    let _child = start_function(
        port,
        &[
            ("DATABASE_URL", db.url.clone()),
            ("MSK_SYNC_CONFIG", config(4)),
        ],
    );
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/response"), "{post:?}");
    assert_eq!(post.body["received"], 4_000, "{post:?}");

    let reference = TestDb::new(Backend::Sqlite, "lambda_api_large_reference").await;
    let file = db.dir.path().join("batch.json");
    std::fs::write(&file, &event).unwrap();
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &reference.url,
            "--config",
            &config(1),
            &file.display().to_string(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    for count in [
        "received",
        "messages",
        "upserted",
        "deleted",
        "superseded",
        "deadLettered",
    ] {
        assert_eq!(post.body[count], report[count], "{count}: {post:?}");
    }
    let planets = db.planets().await;
    assert!(planets.len() > 100, "{}", planets.len());
    assert_eq!(planets, reference.planets().await);
}

/// The config and its schema files delivered as template.yaml delivers them (issue 35): a directory laid out as
/// the config layer (`msk-sync/msk-sync.toml` and `msk-sync/schemas/planet.avsc`, mounted at /opt in Lambda),
/// named by MSK_SYNC_CONFIG, with the function started in another, empty directory (Lambda's /var/task holds only
/// the bootstrap). The Avro schema the config names relative to itself is found there, and a batch of
/// Confluent-framed Avro values applies; a layer whose schema file is missing is an init error naming the file,
/// and so is no config at all (entity-sync has no built-in one).
#[tokio::test]
async fn a_config_layer_with_its_schema_files_configures_the_function() {
    let db = TestDb::new(Backend::Sqlite, "lambda_api_layer").await;
    let opt = db.dir.path().join("opt");
    let layer = opt.join("msk-sync");
    std::fs::create_dir_all(layer.join("schemas")).unwrap();
    std::fs::copy(repo().join("events/avro.toml"), layer.join("msk-sync.toml")).unwrap();
    std::fs::copy(
        repo().join("events/schemas/planet.avsc"),
        layer.join("schemas/planet.avsc"),
    )
    .unwrap();
    let task = db.dir.path().join("task");
    std::fs::create_dir_all(&task).unwrap();
    let config = layer.join("msk-sync.toml").display().to_string();
    let start = |port: u16, config: Option<&str>| {
        let mut cmd = cargo_command(env!("CARGO"));
        cmd.args(["run", "--quiet", "--manifest-path"])
            .arg(repo().join("Cargo.toml"))
            .args(["-p", "entity-sync"])
            .current_dir(&task)
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "entity-sync")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env_remove("MSK_SYNC_CONFIG")
            .env("DATABASE_URL", &db.url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(config) = config {
            cmd.env("MSK_SYNC_CONFIG", config);
        }
        cmd.spawn().expect("cargo run -p entity-sync")
    };

    // No config delivered: no built-in sample takes its place, the function does not start.
    let (port, mut posts) = runtime_api(Vec::new()).await;
    let _child = start(port, None);
    let post = next_post(&mut posts).await;
    assert_eq!(post.path, "/2018-06-01/runtime/init/error", "{post:?}");
    assert!(
        post.body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("no config")),
        "{post:?}"
    );

    let event = std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap();
    let (port, mut posts) = runtime_api(vec![event]).await;
    let _child = start(port, Some(&config));
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/response"), "{post:?}");
    assert_eq!(
        (
            &post.body["upserted"],
            &post.body["deleted"],
            &post.body["deadLettered"]
        ),
        (&1.into(), &1.into(), &2.into()),
        "{post:?}"
    );
    assert!(
        db.count("servicea_planet_avro").await >= 1,
        "the Avro batch was applied"
    );

    // Without the schema file beside the config, the function does not start: an init error names the file.
    std::fs::remove_file(layer.join("schemas/planet.avsc")).unwrap();
    let (port, mut posts) = runtime_api(Vec::new()).await;
    let _child = start(port, Some(&config));
    let post = next_post(&mut posts).await;
    assert_eq!(post.path, "/2018-06-01/runtime/init/error", "{post:?}");
    let message = post.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains(&config) && message.contains("schemas/planet.avsc"),
        "{message}"
    );
}

/// `--version` names the binary, its version and the commit it was built from (issue 35): the checkout's HEAD
/// here, as `git rev-parse` gives it (build.rs; "unknown" in a clone without .git, which this test does not run in).
#[tokio::test]
async fn version_names_the_binary_its_version_and_commit() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(head.len(), 12, "a git checkout");
    for function in ["entity-sync", "planet-sync"] {
        let out = cargo_command(env!("CARGO"))
            .args(["run", "--quiet", "-p", function, "--", "--version"])
            .current_dir(repo())
            .env_remove("MSK_SYNC_COMMIT")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{function} {} (commit {head})\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// A schema registry that wants basic auth `user:password`: `/schemas/ids/1` is events/schemas/planet.avsc,
/// other ids are the registry's "schema not found", and a request without those credentials is HTTP 401.
/// Returns its URL and the Authorization headers it was sent.
async fn registry_with_basic_auth(
    user: &str,
    password: &str,
) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = Arc::clone(&seen);
    let schema = std::fs::read_to_string(repo().join("events/schemas/planet.avsc")).unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (expected, log, schema) = (expected.clone(), Arc::clone(&log), schema.clone());
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
                let (status, body) = if auth.as_deref() != Some(expected.as_str()) {
                    (
                        "401 Unauthorized",
                        r#"{"error_code":401,"message":"Unauthorized"}"#.to_string(),
                    )
                } else if path == "/schemas/ids/1" {
                    (
                        "200 OK",
                        serde_json::json!({ "schema": schema }).to_string(),
                    )
                } else {
                    (
                        "404 Not Found",
                        r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                    )
                };
                log.lock().unwrap().push(auth);
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// A secret in moto, created with the SDK the function reads it with; its ARN.
async fn moto_secret(moto: &MotoServer, name: &str, value: &str) -> String {
    use aws_sdk_secretsmanager::config::{Credentials, Region};
    let url = moto.url();
    let source = msk_sync::run::secret::SecretSource::new("-").with_config(move |loader| {
        loader
            .endpoint_url(url.clone())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
    });
    let client = aws_sdk_secretsmanager::Client::new(&source.config_loader().load().await);
    let out = client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create the secret in moto");
    out.arn().expect("the new secret's ARN").to_string()
}

/// The schema registry's password from Secrets Manager (issue 35): the function, in Lambda mode with the AWS
/// environment Lambda gives it (here pointed at moto), reads `codec.registry.password_secret` at its first
/// batch and asks a registry behind basic auth for the schema of a Confluent-framed Avro value, which
/// applies. A secret without a password fails the batch as misconfigured, naming the field and the secret,
/// never quoting what it holds.
#[tokio::test]
async fn the_registry_password_comes_from_secrets_manager() {
    let moto = MotoServer::start(&[]).await;
    let (url, seen) = registry_with_basic_auth("msk-sync", "R3gistry-Pw").await;
    let good = moto_secret(
        &moto,
        "msk-sync/registry",
        r#"{"username": "msk-sync", "password": "R3gistry-Pw"}"#,
    )
    .await;
    let bad = moto_secret(
        &moto,
        "msk-sync/registry-bad",
        r#"{"username": "S3ntinel-User"}"#,
    )
    .await;
    let db = TestDb::new(Backend::Sqlite, "lambda_api_registry_secret").await;
    let config = |secret: &str| {
        let text = std::fs::read_to_string(repo().join("events/avro.toml"))
            .unwrap()
            .replace(
                "schemas = { \"1\" = \"schemas/planet.avsc\" }   # relative to this file",
                &format!("registry = {{ url = \"{url}\", password_secret = \"{secret}\" }}"),
            );
        assert!(text.contains("password_secret"));
        db.write(&format!("registry-{}.toml", secret.len()), &text)
            .display()
            .to_string()
    };
    let aws = |config: String| {
        vec![
            ("MSK_SYNC_CONFIG", config),
            ("DATABASE_URL", db.url.clone()),
            ("AWS_ENDPOINT_URL", moto.url()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ]
    };
    let event = std::fs::read_to_string(event_file("planet-avro-confluent.json")).unwrap();

    let (port, mut posts) = runtime_api(vec![event.clone()]).await;
    let _child = start_function(port, &aws(config(&good)));
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/response"), "{post:?}");
    assert_eq!(
        (
            &post.body["upserted"],
            &post.body["deleted"],
            &post.body["deadLettered"]
        ),
        (&1.into(), &1.into(), &2.into()),
        "{post:?}"
    );
    assert!(db.count("servicea_planet_avro").await >= 1);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the registry was asked");
    // "Basic base64(msk-sync:R3gistry-Pw)" on every request: the password came from the secret.
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some("Basic bXNrLXN5bmM6UjNnaXN0cnktUHc=")),
        "{seen:?}"
    );

    let (port, mut posts) = runtime_api(vec![event]).await;
    let _child = start_function(port, &aws(config(&bad)));
    let post = next_post(&mut posts).await;
    assert!(post.path.ends_with("/error"), "{post:?}");
    assert_eq!(post.body["errorType"], "Misconfigured", "{post:?}");
    let message = post.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("codec.registry.password_secret")
            && message.contains(&bad)
            && message.contains("\"password\" is missing"),
        "{message}"
    );
    assert!(!message.contains("S3ntinel-User"), "{message}");
}
