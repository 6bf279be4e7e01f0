//! Lambda mode: the handler is built once per instance (cold start: config, mappings, the lazy database
//! pool) and serves every invocation. The response is the batch report. A transient failure fails the
//! invocation so that Lambda retries the batch; with `ReportBatchItemFailures` turned on for the event
//! source mapping (`MSK_SYNC_PARTIAL_BATCH_RESPONSE=true`, provisioned mode) it is reported as item
//! failures instead.
//!
//! With `DATABASE_SECRET_ARN` (and no `DATABASE_URL`) the database URL is read from Secrets Manager at the first
//! batch ([`super::secret`]). Every batch writes its metrics on stdout in CloudWatch Embedded Metric Format
//! ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::App;
use super::secret::{SecretHandler, SecretSource, env_secret_arn};
use crate::event::{MskEvent, NotAnMskEvent};
use crate::metrics::Metrics;
use crate::pipeline::{Handler, HandlerError};
use crate::report::BatchReport;

/// Set to `true` when the event source mapping has `FunctionResponseTypes: [ReportBatchItemFailures]`.
pub const PARTIAL_BATCH_ENV: &str = "MSK_SYNC_PARTIAL_BATCH_RESPONSE";

/// Serves the Lambda runtime API until the runtime stops the instance.
pub async fn run(app: App) -> ExitCode {
    init_logging();
    let partial = std::env::var(PARTIAL_BATCH_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    // The threads a batch is decoded on (`codec.threads`) also read its event.
    let mut threads = 1;
    let mut deadline = crate::sync::SinkOptions::default().batch_timeout;
    let handler = match app.load(None) {
        // DATABASE_URL first, as everywhere: the secret is the deployed function's way.
        Ok(compiled) => {
            threads = compiled.pipeline.threads();
            deadline = compiled.sink.batch_timeout;
            match env_secret_arn().filter(|_| super::env_database_url().is_none()) {
                Some(arn) => Ok(Serve::Secret(Box::new(SecretHandler::new(
                    compiled.pipeline,
                    compiled.sink,
                    SecretSource::new(arn).with_fallback(super::secret::Fallback::from_env()),
                )))),
                None => compiled
                    .handler(None)
                    .await
                    .map(|h| Serve::Handler(Box::new(h))),
            }
        }
        Err(e) => Err(e),
    };
    // A namespace CloudWatch refuses would drop every metric, silently: an init error instead.
    let (metrics, handler) = match Metrics::from_env(app.name) {
        Ok(metrics) => (Arc::new(metrics), handler),
        Err(e) => (
            Arc::new(Metrics::new(crate::metrics::DEFAULT_NAMESPACE, app.name)),
            Err(super::SetupError(e)),
        ),
    };
    let handler = match handler {
        Ok(h) => Arc::new(h),
        Err(e) => {
            tracing::error!(function = app.name, error = %e, "cannot start");
            // Lambda would only see the process exit: tell it why, under an error type an alarm can match.
            if let Err(post) = post_init_error(MISCONFIGURED, &format!("{}: {e}", app.name)).await {
                tracing::error!(error = %post, "could not report the init error to the runtime API");
            }
            return ExitCode::from(super::cli::EXIT_INVALID);
        }
    };
    // The payload's bytes go to the handler beside the runtime, not through it (see `PayloadLayer`), and are
    // parsed once, by MskEvent itself.
    let payloads = Payloads::default();
    let taken = payloads.clone();
    let service = service_fn(move |event: LambdaEvent<IgnoredAny>| {
        let handler = Arc::clone(&handler);
        let metrics = Arc::clone(&metrics);
        let payload = taken.take(&event.context.request_id);
        let deadline = Deadline::of_invocation(deadline, event.context.deadline());
        // An ERROR-level span, so that its request id reaches every log line of the invocation whatever the
        // level (lambda_runtime's own span is INFO, filtered out at WARN and above).
        let span = tracing::error_span!("invocation", requestId = %event.context.request_id);
        tracing::Instrument::instrument(
            async move {
                let Some(payload) = payload else {
                    // Cannot happen: PayloadLayer keeps every invocation's payload before the runtime calls here.
                    return Err(HandlerError::Transient(
                        "the invocation's payload was not kept (batch not applied)".into(),
                    )
                    .into());
                };
                let event = MskEvent::from_slice_on(&payload, threads);
                if event.is_err()
                    && let Err(e) = serde_json::from_slice::<IgnoredAny>(&payload)
                {
                    // Where, never the bytes.
                    return Err(HandlerError::Invalid(format!(
                        "the payload is not JSON ({e}): expected an MSK event"
                    ))
                    .into());
                }
                respond(
                    handler.as_ref().into(),
                    event,
                    partial,
                    Some(&metrics),
                    Some(deadline),
                )
                .await
            },
            span,
        )
    });
    // What lambda_runtime::run does, plus PayloadLayer (added last, so it sees each invocation first).
    let served = lambda_runtime::Runtime::new(service)
        .layer(lambda_runtime::layers::TracingLayer::new())
        .layer(PayloadLayer(payloads))
        .run()
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "runtime stopped");
            ExitCode::FAILURE
        }
    }
}

/// The error types a function reports, stable so that alarms and retries can match them: a payload that is
/// not an MSK event; a batch to retry; a function whose setup or database does not match its config
/// (an init error, or an invocation error from the preflight), which no retry cures.
pub const INVALID_EVENT: &str = "InvalidEvent";
/// The error type of a batch that failed for a reason a retry may cure.
pub const TRANSIENT_FAILURE: &str = "TransientFailure";
/// The error type of an instance whose config or database setup is wrong.
pub const MISCONFIGURED: &str = "Misconfigured";

/// Posts an init error to the runtime API (`POST /2018-06-01/runtime/init/error`), which lambda_runtime 1.5
/// offers only to its SnapStart hooks. Plain HTTP to `AWS_LAMBDA_RUNTIME_API`, as the runtime itself talks.
async fn post_init_error(error_type: &str, message: &str) -> Result<(), String> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set".to_string())?;
    let body = serde_json::to_vec(&Diagnostic {
        error_type: error_type.to_string(),
        error_message: message.to_string(),
    })
    .map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", error_type)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("runtime API answered {}", response.status()))
    }
}

/// The payloads [`PayloadLayer`] took from their invocations, by request id, until the handler takes them.
#[derive(Clone, Default)]
struct Payloads(Arc<std::sync::Mutex<BTreeMap<String, bytes::Bytes>>>);

impl Payloads {
    fn keep(&self, request_id: &str, payload: bytes::Bytes) {
        self.kept().insert(request_id.to_owned(), payload);
    }

    fn take(&self, request_id: &str) -> Option<bytes::Bytes> {
        self.kept().remove(request_id)
    }

    /// The map, also after a thread panicked holding it: an insert or remove leaves it whole either way.
    fn kept(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bytes::Bytes>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// lambda_runtime deserializes the payload into the handler's type before the handler runs. For a payload
/// it would read into `Box<RawValue>`, that is a pass over the whole 6 MB to find where it ends and a copy of
/// it, before MskEvent reads it again; a payload that is not JSON came back with the deserializer's Rust
/// type name as its error type. This layer sees each invocation first, keeps its payload's bytes (shared,
/// not copied) under its request id for the handler, and hands the runtime `null` instead.
#[derive(Clone)]
struct PayloadLayer(Payloads);

impl<S> lambda_runtime::tower::Layer<S> for PayloadLayer {
    type Service = PayloadService<S>;
    fn layer(&self, inner: S) -> PayloadService<S> {
        PayloadService(inner, self.0.clone())
    }
}

struct PayloadService<S>(S, Payloads);

impl<S> lambda_runtime::tower::Service<lambda_runtime::LambdaInvocation> for PayloadService<S>
where
    S: lambda_runtime::tower::Service<lambda_runtime::LambdaInvocation>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: lambda_runtime::LambdaInvocation) -> Self::Future {
        let payload = std::mem::replace(&mut invocation.body, bytes::Bytes::from_static(b"null"));
        self.1.keep(&invocation.context.request_id, payload);
        self.0.call(invocation)
    }
}

/// Logs on stdout as Lambda reads them: the level from `AWS_LAMBDA_LOG_LEVEL` (Lambda's names, FATAL keeping
/// errors only), else `RUST_LOG`, else info; with `AWS_LAMBDA_LOG_FORMAT=JSON` (the function's LoggingConfig)
/// one JSON object per line with `timestamp`, `level`, `message` and the request id at the top
/// ([`super::logs::LambdaJson`]); plus the directives that keep dependencies from logging the database password
/// ([`super::QUIET_DEPENDENCIES`]).
fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .and_then(|l| super::logs::lambda_level(&l))
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .and_then(|l| l.parse::<LevelFilter>().ok())
        })
        .unwrap_or(LevelFilter::INFO);
    let mut filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    for directive in super::QUIET_DEPENDENCIES {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let collector = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_writer(|| super::logs::WithoutSourceLines(std::io::stdout()))
        .with_env_filter(filter);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // The AWS SDK's debug and trace events hold credentials: dropped whatever the level.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = if json {
        collector
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(super::logs::LambdaJson)
            .finish()
            .with(super::no_credentials())
            .try_init()
    } else {
        collector.finish().with(super::no_credentials()).try_init()
    };
}

/// What serves the batches: a handler on a database URL known at start-up, or one whose URL is read from a
/// secret at the first batch.
enum Serve {
    Handler(Box<Handler>),
    Secret(Box<SecretHandler>),
}

#[derive(Clone, Copy)]
enum ServeRef<'h> {
    Handler(&'h Handler),
    Secret(&'h SecretHandler),
}

impl<'h> From<&'h Serve> for ServeRef<'h> {
    fn from(serve: &'h Serve) -> Self {
        match serve {
            Serve::Handler(h) => Self::Handler(h),
            Serve::Secret(s) => Self::Secret(s),
        }
    }
}

impl ServeRef<'_> {
    async fn handle(self, event: &MskEvent<'_>) -> Result<BatchReport, HandlerError> {
        match self {
            Self::Handler(h) => h.handle(event).await,
            Self::Secret(s) => s.handle(event).await,
        }
    }
}

/// The response body: the report, plus `batchItemFailures` in partial-batch mode.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The batch's report (absent when partial-batch mode reports a failure).
    #[serde(flatten)]
    pub report: Option<BatchReport>,
    /// Where each failed partition resumes, in partial-batch mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_item_failures: Option<Vec<BatchItemFailure>>,
}

/// Kafka's partial batch response item (AWS Lambda Developer Guide, "Configuring error handling controls for
/// Kafka event sources", https://docs.aws.amazon.com/lambda/latest/dg/kafka-retry-configurations.html):
/// `{"itemIdentifier": {"partition": "<topic>-<partition>", "offset": N}}`; Lambda resumes that partition at N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemFailure {
    /// The partition and offset to resume at.
    pub item_identifier: ItemIdentifier,
}

/// A partition (`<topic>-<partition>`) and the offset Lambda resumes it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemIdentifier {
    /// `<topic>-<partition>`.
    pub partition: String,
    /// The first offset not applied.
    pub offset: i64,
}

/// One invocation with an already parsed payload. `partial` selects how a transient failure is reported.
pub async fn invoke(
    handler: &Handler,
    payload: Value,
    partial: bool,
) -> Result<Response, Diagnostic> {
    respond(
        ServeRef::Handler(handler),
        MskEvent::from_value(payload),
        partial,
        None,
        None,
    )
    .await
}

/// One invocation as the runtime delivers it: the payload's JSON text. `partial` as for [`invoke`].
pub async fn invoke_raw(
    handler: &Handler,
    payload: &RawValue,
    partial: bool,
) -> Result<Response, Diagnostic> {
    respond(
        ServeRef::Handler(handler),
        MskEvent::parse(payload.get()),
        partial,
        None,
        None,
    )
    .await
}

/// How long a batch's database work may take in Lambda mode: `database.batch_timeout_seconds`, or less when
/// the invocation has less time left (a function timeout under the batch deadline), so that the batch fails
/// with a message naming what ran out instead of being killed by Lambda without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// How long the batch may take.
    pub limit: std::time::Duration,
    /// Whether the invocation's remaining time set it (else `database.batch_timeout_seconds` did).
    pub remaining_time: bool,
}

/// What a batch leaves of the invocation's time: reporting the failure and writing the batch's metrics.
pub const INVOCATION_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Deadline {
    /// The batch deadline of an invocation that must end by `ends` (Lambda's `Lambda-Runtime-Deadline-Ms`).
    /// A deadline already past, or within the margin, is not one Lambda hands over (a function's timeout is
    /// at least 1 s, and an invocation starts with all of it); runtime emulators that count their own build
    /// into it do (`cargo lambda watch` compiles the function on its first invocation): `batch_timeout`
    /// alone then bounds the batch.
    pub fn of_invocation(batch_timeout: std::time::Duration, ends: std::time::SystemTime) -> Self {
        let left = ends
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if left <= INVOCATION_MARGIN {
            tracing::warn!(
                "the invocation's deadline has passed or leaves no time (a runtime emulator's clock?): the \
                 batch is bounded by database.batch_timeout_seconds alone"
            );
            return Self {
                limit: batch_timeout,
                remaining_time: false,
            };
        }
        let remaining = left - INVOCATION_MARGIN;
        if remaining < batch_timeout {
            Self {
                limit: remaining,
                remaining_time: true,
            }
        } else {
            Self {
                limit: batch_timeout,
                remaining_time: false,
            }
        }
    }
}

async fn respond(
    handler: ServeRef<'_>,
    event: Result<MskEvent<'_>, NotAnMskEvent>,
    partial: bool,
    metrics: Option<&Metrics>,
    deadline: Option<Deadline>,
) -> Result<Response, Diagnostic> {
    let event = event.map_err(|e| HandlerError::Invalid(e.to_string()))?;
    let started = Instant::now();
    // `database.batch_timeout_seconds`: a database that stops answering fails the batch as transient, with
    // a message, before Lambda's own timeout kills the invocation without one. Dropping the call drops its
    // transaction: rolled back.
    let outcome = match deadline {
        Some(Deadline {
            limit,
            remaining_time,
        }) => tokio::time::timeout(limit, handler.handle(&event))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    records = event.record_count(),
                    deadline_ms = limit.as_millis() as u64,
                    remaining_time,
                    "the database did not finish the batch within its deadline: rolled back"
                );
                let within = if remaining_time {
                    format!(
                        "{:.1} s (the invocation's remaining time less {} s: the function's timeout \
                         is shorter than database.batch_timeout_seconds)",
                        limit.as_secs_f64(),
                        INVOCATION_MARGIN.as_secs()
                    )
                } else {
                    format!("{} s (database.batch_timeout_seconds)", limit.as_secs())
                };
                Err(HandlerError::Transient(format!(
                    "batch not applied (retry it): the database did not finish it within {within}; \
                     rolled back"
                )))
            }),
        None => handler.handle(&event).await,
    };
    if let Some(metrics) = metrics {
        // One line, under stdout's lock: CloudWatch Logs reads an EMF object only whole, alone on its line.
        use std::io::Write;
        let line = metrics.line(&event, outcome.as_ref(), started.elapsed());
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
    match outcome {
        Ok(report) => Ok(Response {
            report: Some(report),
            batch_item_failures: partial.then(Vec::new),
        }),
        Err(HandlerError::Transient(e)) if partial => {
            // A batch is applied whole or not at all, so a failed batch resumes every partition at its first
            // record.
            let mut first_offsets: BTreeMap<String, i64> = BTreeMap::new();
            for r in &event.records {
                first_offsets
                    .entry(r.partition_key())
                    .and_modify(|o| *o = (*o).min(r.offset))
                    .or_insert(r.offset);
            }
            tracing::warn!(partitions = first_offsets.len(), error = %e, "batch not applied: reporting every partition for retry");
            let failures = first_offsets
                .into_iter()
                .map(|(partition, offset)| BatchItemFailure {
                    item_identifier: ItemIdentifier { partition, offset },
                })
                .collect();
            Ok(Response {
                report: None,
                batch_item_failures: Some(failures),
            })
        }
        Err(e) => Err(e.into()),
    }
}

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Self {
        let error_type = match e {
            HandlerError::Invalid(_) => INVALID_EVENT,
            HandlerError::Transient(_) => TRANSIENT_FAILURE,
            HandlerError::Misconfigured(_) => MISCONFIGURED,
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: super::logs::without_source_lines(&e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_batch_deadline_is_the_shorter_of_the_timeout_and_the_invocation_s_time() {
        let timeout = Duration::from_secs(30);
        let now = SystemTime::now();
        let long = Deadline::of_invocation(timeout, now + Duration::from_secs(300));
        assert_eq!((long.limit, long.remaining_time), (timeout, false));
        let short = Deadline::of_invocation(timeout, now + Duration::from_secs(5));
        assert!(short.remaining_time, "{short:?}");
        assert!(
            short.limit <= Duration::from_secs(4) && short.limit > Duration::from_secs(3),
            "{short:?}"
        );
    }

    #[test]
    fn a_deadline_lambda_would_never_give_leaves_the_batch_timeout() {
        let timeout = Duration::from_secs(30);
        let now = SystemTime::now();
        for ends in [
            now - Duration::from_secs(20),
            now + Duration::from_millis(500),
        ] {
            let d = Deadline::of_invocation(timeout, ends);
            assert_eq!((d.limit, d.remaining_time), (timeout, false), "{ends:?}");
        }
    }
}
