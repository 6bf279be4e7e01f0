//! Lambda mode: the handler is built once per instance (cold start) and serves every invocation.
//! The response is the batch report; a transient failure is an invocation error, so Lambda retries the batch.

use std::process::ExitCode;
use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

use super::App;
use crate::report::BatchReport;

pub async fn run(app: App) -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber();
    let handler = match app.load_config(None) {
        Ok(config) => app.handler(&config, None).await,
        Err(e) => Err(e),
    };
    let handler = match handler {
        Ok(h) => Arc::new(h),
        Err(e) => {
            // The runtime reports a failed init to Lambda when the process exits non-zero.
            tracing::error!(function = app.name, error = %e, "cannot start");
            return ExitCode::from(super::cli::EXIT_INVALID);
        }
    };
    let served = lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = Arc::clone(&handler);
        async move {
            handler
                .handle_json(event.payload)
                .await
                .map_err(lambda_runtime::Error::from)
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

/// For type inference in tests and docs: what an invocation returns.
pub type Response = BatchReport;
