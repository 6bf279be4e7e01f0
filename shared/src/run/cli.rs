//! The command line: `replay` event files into a database, `config check` a config file, and with the `kafka`
//! feature `consume` (the local runner) and `publish`.
//!
//! Exit codes follow the failure model: 0 processed (dead letters included), 1 transient failure (nothing
//! of the failing batch was written; run it again), 2 bad invocation (unreadable file, not an MSK event, bad
//! config) or misconfigured (the database does not match the config: nothing applied).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{App, DATABASE_URL_ENV, redact};
use crate::config::Config;
use crate::event::MskEvent;
use crate::metrics::Metrics;
use crate::pipeline::HandlerError;

/// Exit status: done.
pub const EXIT_OK: u8 = 0;
/// Exit status: a failure a retry may cure (a database or registry that did not answer).
pub const EXIT_TRANSIENT: u8 = 1;
/// Exit status: a bad invocation, config or database setup; a retry will not help.
pub const EXIT_INVALID: u8 = 2;

#[derive(Debug, Parser)]
#[command(version, about = "Apply MSK change events to a SQL database")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply MSK event files (Lambda's MSK event JSON) in order; print each batch report as JSON.
    Replay {
        /// Database to apply to; default: $DATABASE_URL, then the config's database.url, then a SQLite file
        /// msk-sync.db in the working directory.
        #[arg(long, env = DATABASE_URL_ENV)]
        database_url: Option<String>,
        /// Config file; default: $MSK_SYNC_CONFIG, then ./msk-sync.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print every message as it would be applied (decoded, filtered, masked; one JSON line each) and
        /// write nothing.
        #[arg(long)]
        dry_run: bool,
        /// After each batch report, print the batch's metrics as Lambda writes them: one CloudWatch Embedded
        /// Metric Format object (namespace $MSK_SYNC_METRICS_NAMESPACE, default msk-sync).
        #[arg(long, conflicts_with = "dry_run")]
        emf: bool,
        /// MSK event files.
        #[arg(required = true, value_name = "EVENT.json")]
        events: Vec<PathBuf>,
    },
    /// Consume topics from a Kafka broker as a consumer group and apply them batch by batch, as Lambda's
    /// event-source mapping would (the local runner). SIGINT / SIGTERM finish the batch in hand and exit 0.
    #[cfg(feature = "kafka")]
    Consume(ConsumeArgs),
    /// Produce the records of MSK event files to a broker: each to its topic and partition, with its key,
    /// headers, timestamp and decoded value.
    #[cfg(feature = "kafka")]
    Publish {
        /// Bootstrap servers, host:port[,host:port…].
        #[arg(long, env = "MSK_SYNC_BROKERS")]
        brokers: String,
        /// A librdkafka property, key=value (repeatable), e.g. -X security.protocol=SASL_SSL.
        #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = super::local::parse_property)]
        property: Vec<(String, String)>,
        /// How long a record may take to be delivered (librdkafka's message.timeout.ms); a record not
        /// delivered by then fails the publish (exit 1).
        #[arg(long, default_value = "30s", value_parser = super::local::parse_duration)]
        timeout: std::time::Duration,
        /// MSK event files.
        #[arg(required = true, value_name = "EVENT.json")]
        events: Vec<PathBuf>,
    },
    /// Check configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[cfg(feature = "kafka")]
#[derive(Debug, clap::Args)]
struct ConsumeArgs {
    /// Bootstrap servers, host:port[,host:port…].
    #[arg(long, env = "MSK_SYNC_BROKERS")]
    brokers: String,
    /// Topic to consume (repeatable); a name starting with ^ is a regular expression, e.g. '^servicea\..*'.
    #[arg(long = "topic", short = 't', required = true, value_name = "TOPIC")]
    topics: Vec<String>,
    /// Consumer group id; several runners with the same group share the partitions. Default: the function's name.
    #[arg(long)]
    group: Option<String>,
    /// Where a group without committed offsets starts.
    #[arg(long, value_enum, default_value = "earliest")]
    start: super::local::StartPosition,
    /// A librdkafka property, key=value (repeatable), e.g. -X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = super::local::parse_property)]
    property: Vec<(String, String)>,
    /// The most records in one batch (Lambda's BatchSize).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    /// How long a batch gathers records after its first one (Lambda's MaximumBatchingWindowInSeconds).
    #[arg(long, default_value = "500ms", value_parser = super::local::parse_duration)]
    batch_window: std::time::Duration,
    /// Exit 0 once this many records were applied and committed.
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
    /// Exit 0 when no record arrived and the group did not rebalance for this long, e.g. 10s, counted from
    /// the first assignment of partitions.
    #[arg(long, value_name = "DURATION", value_parser = super::local::parse_duration)]
    exit_when_idle: Option<std::time::Duration>,
    /// Exit 1 if the group assigned no partition for this long after the start (the broker does not answer,
    /// the topic does not exist). Default: 60s with --exit-when-idle, else no limit.
    #[arg(long, value_name = "DURATION", value_parser = super::local::parse_duration)]
    assignment_timeout: Option<std::time::Duration>,
    /// How often a progress line (records/s, lag per partition) goes to stderr.
    #[arg(long, default_value = "10s", value_parser = super::local::parse_duration)]
    progress_every: std::time::Duration,
    /// Database to apply to (as for replay).
    #[arg(long, env = DATABASE_URL_ENV)]
    database_url: Option<String>,
    /// Config file (as for replay).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print each batch's metrics on stdout as Lambda writes them (CloudWatch Embedded Metric Format).
    #[arg(long)]
    emf: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// List every problem in a config file, and with a database URL every way its tables differ from the
    /// config; exit 2 if there is any.
    Check {
        file: PathBuf,
        /// Also check the database's tables (read only: nothing is created).
        #[arg(long, env = DATABASE_URL_ENV)]
        database_url: Option<String>,
    },
}

/// Runs one command line and returns the process exit code. Reports go to `out`, messages to `err`.
pub async fn run<I, T>(app: &App, args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            };
            let text = e.render().ansi().to_string();
            let _ = if code == EXIT_OK {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    init_logging();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file, database_url },
        } => check(app, &file, database_url.as_deref(), out, err).await,
        #[cfg(feature = "kafka")]
        Command::Consume(args) => consume(app, args, err).await,
        #[cfg(feature = "kafka")]
        Command::Publish {
            brokers,
            property,
            timeout,
            events,
        } => publish(&brokers, &property, timeout, &events, out, err).await,
        Command::Replay {
            database_url,
            config,
            dry_run,
            emf,
            events,
        } => {
            let output = match (dry_run, emf) {
                (true, _) => Output::DryRun,
                (false, true) => Output::ReportsAndMetrics,
                (false, false) => Output::Reports,
            };
            replay(
                app,
                database_url.as_deref(),
                config.as_deref(),
                output,
                &events,
                out,
                err,
            )
            .await
        }
    }
}

async fn check(
    app: &App,
    file: &std::path::Path,
    database_url: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let config = Config::from_file(file);
    let compiled = config.as_ref().map(|config| app.compile(config));
    let mut problems: Vec<String> = match &compiled {
        Ok(Ok(_)) => Vec::new(),
        Ok(Err(problems)) => problems
            .iter()
            .map(|p| format!("{}: {p}", file.display()))
            .collect(),
        Err(e) => e.0.clone(),
    };
    let database = match (compiled, database_url) {
        (_, None) => {
            "database not checked (pass --database-url URL or set DATABASE_URL)".to_string()
        }
        (Ok(Ok(compiled)), Some(url)) => match check_database(compiled, url).await {
            Ok((found, missing)) => {
                problems.extend(found.iter().map(|p| format!("{}: {p}", redact(url))));
                let mut said = format!("database {}: checked", redact(url));
                if !missing.is_empty() {
                    said.push_str(&format!(
                        "; not there yet, the first batch creates them (which needs the CREATE privilege): {}",
                        missing.join(", ")
                    ));
                }
                said
            }
            Err(e) => return fail(err, EXIT_TRANSIENT, &e),
        },
        (_, Some(url)) => format!(
            "database {} not checked: fix the file's problems first",
            redact(url)
        ),
    };
    if problems.is_empty() {
        let _ = writeln!(out, "{database}");
        let _ = writeln!(out, "{}: ok", file.display());
        return EXIT_OK;
    }
    for p in &problems {
        let _ = writeln!(err, "{p}");
    }
    let _ = writeln!(err, "{database}");
    let _ = writeln!(err, "{}: {} problem(s)", file.display(), problems.len());
    EXIT_INVALID
}

/// The preflight of `config check --database-url`, which reads the catalogs and creates nothing.
async fn check_database(
    compiled: crate::config::Compiled,
    url: &str,
) -> Result<(Vec<crate::sync::Problem>, Vec<String>), String> {
    let handler = compiled
        .handler(Some(url))
        .await
        .map_err(|e| e.to_string())?;
    handler
        .sink()
        .check()
        .await
        .map_err(|e| format!("database {}: {e}", redact(url)))
}

/// What `replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Reports,
    /// `--dry-run`: every message, nothing written.
    DryRun,
    /// `--emf`: each report followed by the batch's metrics.
    ReportsAndMetrics,
}

async fn replay(
    app: &App,
    database_url: Option<&str>,
    config: Option<&std::path::Path>,
    output: Output,
    files: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(config) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    // Every file is read and parsed before anything is applied, so a typo in the last file name does not
    // leave the database half-replayed. The events borrow their records' strings from the files' bytes.
    let texts = match read_files(files) {
        Ok(texts) => texts,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let events = match parse_events(&texts) {
        Ok(events) => events,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    if output == Output::DryRun {
        let pipeline = compiled.pipeline;
        for (file, event) in events {
            if let Err(e) = pipeline.prepare(&event).await {
                return fail(err, EXIT_TRANSIENT, &format!("{}: {e}", file.display()));
            }
            let mut io_error = None;
            let planned = pipeline.plan(&event, &mut |inspection| {
                if io_error.is_none()
                    && let Err(e) = serde_json::to_writer(&mut *out, &inspection)
                        .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
                {
                    io_error = Some(e);
                }
            });
            if let Some(e) = io_error {
                return fail(err, EXIT_INVALID, &format!("cannot write output: {e}"));
            }
            if let Err(e) = planned {
                return fail(err, EXIT_TRANSIENT, &format!("{}: {e}", file.display()));
            }
        }
        return EXIT_OK;
    }
    let handler = match compiled.handler(database_url).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let metrics = (output == Output::ReportsAndMetrics).then(|| Metrics::from_env(app.name));
    for (file, event) in events {
        let started = std::time::Instant::now();
        let outcome = handler.handle(&event).await;
        let emf_line = metrics
            .as_ref()
            .map(|m| m.line(&event, outcome.as_ref(), started.elapsed()));
        if let (Err(_), Some(line)) = (&outcome, &emf_line) {
            let _ = writeln!(out, "{line}");
        }
        match outcome {
            Ok(report) => {
                let written = serde_json::to_writer_pretty(&mut *out, &report)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
                    .and_then(|()| match &emf_line {
                        Some(line) => writeln!(out, "{line}"),
                        None => Ok(()),
                    });
                if let Err(e) = written {
                    return fail(err, EXIT_INVALID, &format!("cannot write output: {e}"));
                }
            }
            Err(HandlerError::Invalid(e)) => {
                return fail(err, EXIT_INVALID, &format!("{}: {e}", file.display()));
            }
            Err(e @ HandlerError::Transient(_)) => {
                return fail(err, EXIT_TRANSIENT, &format!("{}: {e}", file.display()));
            }
            Err(e @ HandlerError::Misconfigured(_)) => {
                return fail(err, EXIT_INVALID, &format!("{}: {e}", file.display()));
            }
        }
    }
    EXIT_OK
}

/// Reads every event file before anything is done with them.
fn read_files(files: &[PathBuf]) -> Result<Vec<(&PathBuf, Vec<u8>)>, String> {
    files
        .iter()
        .map(|file| {
            std::fs::read(file)
                .map(|bytes| (file, bytes))
                .map_err(|e| format!("{}: cannot read: {e}", file.display()))
        })
        .collect()
}

/// Parses every file read; a file that is not an MSK event stops the replay before anything is applied.
fn parse_events<'t>(
    texts: &'t [(&'t PathBuf, Vec<u8>)],
) -> Result<Vec<(&'t PathBuf, MskEvent<'t>)>, String> {
    texts
        .iter()
        .map(|(file, bytes)| {
            MskEvent::from_slice(bytes)
                .map(|event| (*file, event))
                .map_err(|e| format!("{}: {e}", file.display()))
        })
        .collect()
}

#[cfg(feature = "kafka")]
async fn consume(app: &App, args: ConsumeArgs, err: &mut dyn Write) -> u8 {
    use super::local::{ConsumeError, ConsumeOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let compiled = match app.load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
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
        .map(|_| super::local::DEFAULT_ASSIGNMENT_TIMEOUT));
    options.progress_every = args.progress_every;
    options.emf = args.emf.then(|| Metrics::from_env(app.name));
    let stop = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            wait_for_signal().await;
            eprintln!("consume: signal received: finishing the batch in hand");
            stop.store(true, Ordering::Relaxed);
        }
    });
    let result = super::local::consume(handler, options, stop, Box::new(std::io::stderr())).await;
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
async fn wait_for_signal() {
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
async fn publish(
    brokers: &str,
    properties: &[(String, String)],
    timeout: std::time::Duration,
    files: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let texts = match read_files(files) {
        Ok(texts) => texts,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let events = match parse_events(&texts) {
        Ok(events) => events.into_iter().map(|(_, e)| e).collect(),
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    match super::local::publish(brokers, properties, timeout, events).await {
        Ok(n) => {
            let _ = writeln!(out, "published {n} records to {brokers}");
            EXIT_OK
        }
        Err(e) => fail(err, EXIT_TRANSIENT, &e),
    }
}

fn fail(err: &mut dyn Write, code: u8, message: &str) -> u8 {
    let _ = writeln!(err, "error: {message}");
    code
}

/// Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise, so stdout carries only reports.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(super::log_filter("warn"))
        .with_writer(std::io::stderr)
        .try_init();
}
