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

pub async fn run(app: App) -> ExitCode {
    // Honours AWS_LAMBDA_LOG_LEVEL and AWS_LAMBDA_LOG_FORMAT (JSON when the function's LoggingConfig says so).
    lambda_runtime::tracing::init_default_subscriber();
    let partial = std::env::var(PARTIAL_BATCH_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let handler = match app.load_config(None) {
        // DATABASE_URL first, as everywhere: the secret is the deployed function's way.
        Ok(config) => match env_secret_arn().filter(|_| super::env_database_url().is_none()) {
            Some(arn) => app.pipeline(&config).map(|pipeline| {
                Serve::Secret(Box::new(SecretHandler::new(
                    pipeline,
                    super::sink_options(&config),
                    SecretSource::new(arn),
                )))
            }),
            None => app
                .handler(&config, None)
                .await
                .map(|h| Serve::Handler(Box::new(h))),
        },
        Err(e) => Err(e),
    };
    let metrics = Arc::new(Metrics::from_env(app.name));
    let handler = match handler {
        Ok(h) => Arc::new(h),
        Err(e) => {
            // Exiting before the first poll makes Lambda report a failed init.
            tracing::error!(function = app.name, error = %e, "cannot start");
            return ExitCode::from(super::cli::EXIT_INVALID);
        }
    };
    // The payload as raw JSON text, parsed once by MskEvent itself: a `Value` first would build a tree of the
    // whole 6 MB batch only to take it apart again, and the error for a payload that is not an MSK event
    // stays ours.
    let served = lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        let handler = Arc::clone(&handler);
        let metrics = Arc::clone(&metrics);
        async move {
            let event = MskEvent::parse(event.payload.get());
            respond(handler.as_ref().into(), event, partial, Some(&metrics)).await
        }
    }))
    .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "runtime stopped");
            ExitCode::FAILURE
        }
    }
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
    #[serde(flatten)]
    pub report: Option<BatchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_item_failures: Option<Vec<BatchItemFailure>>,
}

/// Kafka's partial batch response item (AWS Lambda Developer Guide, "Configuring error handling controls for
/// Kafka event sources", https://docs.aws.amazon.com/lambda/latest/dg/kafka-retry-configurations.html):
/// `{"itemIdentifier": {"partition": "<topic>-<partition>", "offset": N}}`; Lambda resumes that partition at N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemFailure {
    pub item_identifier: ItemIdentifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemIdentifier {
    pub partition: String,
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
    )
    .await
}

async fn respond(
    handler: ServeRef<'_>,
    event: Result<MskEvent<'_>, NotAnMskEvent>,
    partial: bool,
    metrics: Option<&Metrics>,
) -> Result<Response, Diagnostic> {
    let event = event.map_err(|e| HandlerError::Invalid(e.to_string()))?;
    let started = Instant::now();
    let outcome = handler.handle(&event).await;
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
            HandlerError::Invalid(_) => "InvalidEvent",
            HandlerError::Transient(_) => "TransientFailure",
            HandlerError::Misconfigured(_) => "Misconfigured",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}
