//! The functions in Lambda mode, through the Lambda runtime API: `cargo lambda watch` emulates the runtime
//! API and runs each function binary as Lambda would; `cargo lambda invoke` sends events/ files. Also the
//! partial-batch (ReportBatchItemFailures) response, in-process.
//!
//! Needs cargo-lambda (`cargo xtask setup` installs it into ~/.cache/msk-sync-ci-venv): without it these tests
//! fail, they do not skip.

use std::process::Stdio;

use msk_sync::run::lambda::{invoke, invoke_raw};
use msk_sync_tests::*;

/// The functions behind `cargo lambda watch`.
struct Watch(LambdaWatch);

impl Watch {
    async fn start(env: &[(&str, String)]) -> Self {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self(LambdaWatch::start(&env, Stdio::null()).await)
    }

    /// `cargo lambda invoke FUNCTION --data-file events/FILE`: (succeeded, stdout, stderr).
    async fn invoke(&self, function: &str, file: &str) -> (bool, String, String) {
        let out = self.0.invoke(function, &event_file(file)).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn functions_answer_through_the_lambda_runtime_api() {
    let db = TestDb::new(Backend::Postgres, "lambda_watch").await;
    let (proxy, proxied) = ToggleProxy::in_front_of(&db).await;
    let watch = Watch::start(&[
        ("DATABASE_URL", proxied),
        (
            "MSK_SYNC_CONFIG",
            repo().join("msk-sync.toml").display().to_string(),
        ),
        ("RUST_LOG", "warn".into()),
    ])
    .await;

    // A clean batch: the response is the report.
    let (ok, out, err) = watch.invoke("entity-sync", "mixed-partitions.json").await;
    assert!(ok, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (report["status"].as_u64(), report["upserted"].as_u64()),
        (Some(200), Some(6)),
        "{report}"
    );
    assert_eq!(db.count("servicea_planet").await, 6);

    // Poison records: the invocation succeeds, dead letters are written.
    let (ok, out, err) = watch.invoke("entity-sync", "malformed.json").await;
    assert!(ok, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (report["status"].as_u64(), report["deadLettered"].as_u64()),
        (Some(400), Some(7)),
        "{report}"
    );
    assert_eq!(db.count("msk_sync_dead_letter").await, 7);

    // The database goes away: the invocation fails, so Lambda would retry the batch; nothing is written.
    proxy.set_up(false).await;
    let (ok, out, err) = watch
        .invoke("planet-sync", "same-entity-many-changes.json")
        .await;
    assert!(!ok, "the invocation succeeded without a database: {out}");
    assert!(
        err.contains("TransientFailure") || err.contains("transient failure"),
        "{err}"
    );
    let before = db.planets().await;
    assert!(!before.iter().any(|(_, name)| name == "Zeta final"));

    // Back: the retry applies it, through the typed function.
    proxy.set_up(true).await;
    let (ok, out, err) = watch
        .invoke("planet-sync", "same-entity-many-changes.json")
        .await;
    assert!(ok, "{out}\n{err}");
    assert!(
        db.planets()
            .await
            .iter()
            .any(|(_, name)| name == "Zeta final")
    );

    // Not an MSK event: an invocation error that says what was expected.
    let (ok, _, err) = watch.invoke("entity-sync", "../msk-sync.toml").await;
    assert!(!ok);
    assert!(
        err.contains("not an MSK event")
            || err.contains("InvalidEvent")
            || err.contains("expected value"),
        "{err}"
    );
}

#[tokio::test]
async fn partial_batch_mode_reports_every_partition_of_a_failed_batch() {
    let db = TestDb::new(Backend::Postgres, "lambda_partial").await;
    let (proxy, proxied) = ToggleProxy::in_front_of(&db).await;
    let handler = entity_sync_handler(&proxied).await;
    let payload = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(event_file("mixed-partitions.json")).unwrap())
            .unwrap()
    };

    let ok = serde_json::to_value(invoke(&handler, payload(), true).await.unwrap()).unwrap();
    assert_eq!(ok["batchItemFailures"], serde_json::json!([]));
    assert_eq!(ok["upserted"], 6);

    proxy.set_up(false).await;
    let failed = serde_json::to_value(invoke(&handler, payload(), true).await.unwrap()).unwrap();
    assert_eq!(
        failed,
        serde_json::json!({"batchItemFailures": [
            {"itemIdentifier": {"partition": "servicea.planet-0", "offset": 100}},
            {"itemIdentifier": {"partition": "servicea.planet-1", "offset": 50}},
            {"itemIdentifier": {"partition": "servicea.planet-2", "offset": 70}},
        ]})
    );
    // Without partial-batch mode the same failure is an invocation error.
    let err = invoke(&handler, payload(), false).await.unwrap_err();
    assert_eq!(err.error_type, "TransientFailure");
    let err = invoke(&handler, serde_json::json!({"Records": []}), true)
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidEvent");
    // What the runtime hands over: the payload's text, parsed by MskEvent alone.
    let raw = |text: String| serde_json::value::RawValue::from_string(text).unwrap();
    let err = invoke_raw(&handler, &raw(r#"{"Records": []}"#.into()), true)
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidEvent");
    assert!(
        err.error_message.contains("not an MSK event"),
        "{}",
        err.error_message
    );
    proxy.set_up(true).await;
    let text = std::fs::read_to_string(event_file("mixed-partitions.json")).unwrap();
    let ok = serde_json::to_value(invoke_raw(&handler, &raw(text), true).await.unwrap()).unwrap();
    assert_eq!(ok["batchItemFailures"], serde_json::json!([]));
    assert_eq!(ok["received"], 11);
}
