//! `consume` and `publish` (the `kafka` feature): the local runner on a real broker, stopped by SIGINT or SIGTERM.

use super::*;

#[cfg(feature = "kafka")]
pub(super) async fn consume(app: &App, args: ConsumeArgs, err: &mut dyn Write) -> u8 {
    use crate::run::local::{ConsumeError, ConsumeOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let compiled = match app.load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let batch_timeout = compiled.sink.batch_timeout;
    let handler = match compiled.handler(args.database_url.as_deref()).await {
        Ok(h) => Arc::new(h),
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let group = args.group.unwrap_or_else(|| app.name.to_string());
    let mut options = ConsumeOptions::new(&args.brokers, &group, args.topics);
    options.start = args.start;
    options.properties = args.property;
    options.batch_size = args.batch_size as usize;
    options.batch_window = args.batch_window;
    options.max_records = args.max_records;
    options.exit_when_idle = args.exit_when_idle;
    options.assignment_timeout = args.assignment_timeout.or(args
        .exit_when_idle
        .map(|_| crate::run::local::DEFAULT_ASSIGNMENT_TIMEOUT));
    options.progress_every = args.progress_every;
    options.batch_timeout = batch_timeout;
    options.emf = match args.emf.then(|| Metrics::from_env(app.name)).transpose() {
        Ok(metrics) => metrics,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            wait_for_signal().await;
            eprintln!(
                "consume: signal received: stopping (a batch still waiting on the database is rolled back)"
            );
            stop.store(true, Ordering::Relaxed);
        }
    });
    let result =
        crate::run::local::consume(handler, options, stop, Box::new(std::io::stderr())).await;
    signals.abort();
    match result {
        Ok(summary) => {
            let _ = writeln!(
                err,
                "consume: done: {} records applied in {} batches ({} retries)",
                summary.records, summary.batches, summary.retries
            );
            EXIT_OK
        }
        Err(e @ (ConsumeError::Setup(_) | ConsumeError::Invalid(_))) => {
            fail(err, EXIT_INVALID, &e.to_string())
        }
        Err(e @ (ConsumeError::Unfinished(_) | ConsumeError::NotAssigned(_))) => {
            fail(err, EXIT_TRANSIENT, &e.to_string())
        }
    }
}

/// SIGINT or SIGTERM.
#[cfg(feature = "kafka")]
pub(super) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(feature = "kafka")]
pub(super) async fn publish(
    brokers: &str,
    properties: &[(String, String)],
    timeout: std::time::Duration,
    files: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // Every file is read and checked before anything is published.
    let texts = match files
        .iter()
        .map(|f| read_file(f))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(texts) => texts,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let events = match files
        .iter()
        .zip(&texts)
        .map(|(f, bytes)| MskEvent::from_slice(bytes).map_err(|e| format!("{}: {e}", f.display())))
        .collect()
    {
        Ok(events) => events,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    match crate::run::local::publish(brokers, properties, timeout, events).await {
        Ok(n) => {
            let _ = writeln!(out, "published {n} records to {brokers}");
            EXIT_OK
        }
        Err(e) => fail(err, EXIT_TRANSIENT, &e),
    }
}
