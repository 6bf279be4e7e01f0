//! The command line: `replay` event files into a database (or `--plan` them), `redrive` the dead letters
//! ([`versions`]), `config check` a config file, and with the `kafka` feature `consume` (the local runner) and
//! `publish`.
//!
//! Exit codes follow the failure model: 0 processed (dead letters included), 1 transient failure (nothing
//! of the failing batch was written; run it again), 2 bad invocation (unreadable file, not an MSK event, bad
//! config) or misconfigured (the database does not match the config: nothing applied).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use super::{App, DATABASE_URL_ENV, redact};

mod reference;
mod sql;
mod versions;
use crate::config::Config;
use crate::event::MskEvent;
use crate::metrics::Metrics;
use crate::pipeline::{Handler, HandlerError, Pipeline};
pub use reference::{ENVIRONMENT, EnvVar};

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
        /// Apply each batch in a transaction that is rolled back: print one JSON line per message with its
        /// action (insert, update and the changed columns' names, unchanged, delete, stale, superseded,
        /// filtered, empty, dead-letter), then a summary line with the counts. Nothing is written.
        #[arg(long, conflicts_with_all = ["dry_run", "emf"])]
        plan: bool,
        /// MSK event files; `-` reads one from standard input.
        #[arg(required = true, value_name = "EVENT.json")]
        events: Vec<PathBuf>,
    },
    /// Run the dead letters (all, or of --topic) again through the current config: what succeeds now is
    /// applied and its dead letters deleted, in one transaction per chunk of records; what fails again stays,
    /// with the new reason and one more attempt. Prints each chunk's report, as replay does each file's.
    Redrive(versions::RedriveArgs),
    /// Consume topics from a Kafka broker as a consumer group and apply them batch by batch, as Lambda's
    /// event-source mapping would (the local runner). SIGINT / SIGTERM finish the batch in hand and exit 0.
    #[cfg(feature = "kafka")]
    Consume(ConsumeArgs),
    /// The local runner on a Kafka broker: not in this build (it needs the `kafka` feature).
    #[cfg(not(feature = "kafka"))]
    #[command(disable_help_flag = true)]
    Consume {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<OsString>,
    },
    /// Produce event files to a Kafka broker: not in this build (it needs the `kafka` feature).
    #[cfg(not(feature = "kafka"))]
    #[command(disable_help_flag = true)]
    Publish {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<OsString>,
    },
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
    /// Check a config file; print the config file's JSON Schema, the configuration reference, or the SQL a
    /// database needs before the first deploy.
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
    /// Print the JSON Schema of the config file (msk-sync.toml), for editors (`#:schema` in Taplo / Even Better
    /// TOML) and validators.
    Schema,
    /// Print the configuration reference (Markdown): every key of the config file, environment variable and
    /// command-line flag, with type, default, valid values and an example.
    Reference,
    /// Print the SQL to run before the first deploy, for the database's backend: the CREATE TABLE statements of
    /// the target, dead-letter and tombstone tables (as msk-sync would create them) and the GRANTs of a user
    /// that only reads keys and writes rows. Creates nothing (MySQL / MariaDB: reads the server's version).
    Sql {
        file: PathBuf,
        /// The database whose backend (and, for MySQL / MariaDB, version) the statements are for; default as
        /// for replay.
        #[arg(long, env = DATABASE_URL_ENV)]
        database_url: Option<String>,
        /// The database user the GRANTs are for (MySQL / MariaDB: name@host; a bare name gets @'%').
        #[arg(long, value_name = "USER", default_value = "msk_sync")]
        grant_to: String,
    },
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
            // Help goes to stdout, errors to stderr: colour only where that stream is a terminal.
            let terminal = if code == EXIT_OK {
                std::io::stdout().is_terminal()
            } else {
                std::io::stderr().is_terminal()
            };
            let text = if super::logs::colour(terminal) {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
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
        Command::Config {
            command: ConfigCommand::Schema,
        } => print(out, err, &reference::schema_text()),
        Command::Config {
            command: ConfigCommand::Reference,
        } => print(out, err, &reference_page()),
        Command::Config {
            command:
                ConfigCommand::Sql {
                    file,
                    database_url,
                    grant_to,
                },
        } => config_sql(app, &file, database_url.as_deref(), &grant_to, out, err).await,
        #[cfg(feature = "kafka")]
        Command::Consume(args) => consume(app, args, err).await,
        #[cfg(not(feature = "kafka"))]
        Command::Consume { .. } => without_kafka(app, "consume", err),
        #[cfg(not(feature = "kafka"))]
        Command::Publish { .. } => without_kafka(app, "publish", err),
        #[cfg(feature = "kafka")]
        Command::Publish {
            brokers,
            property,
            timeout,
            events,
        } => publish(&brokers, &property, timeout, &events, out, err).await,
        Command::Redrive(args) => versions::redrive(app, args, out, err).await,
        Command::Replay {
            database_url,
            config,
            plan: true,
            events,
            ..
        } => {
            versions::replay_plan(
                app,
                database_url.as_deref(),
                config.as_deref(),
                &events,
                out,
                err,
            )
            .await
        }
        Command::Replay {
            database_url,
            config,
            dry_run,
            emf,
            events,
            plan: false,
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
                KEEP_CHECKED_BYTES,
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
    let rules = match &compiled {
        Ok(Ok(c)) => c.pipeline.change_rules(),
        _ => Vec::new(),
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
        for rule in &rules {
            let _ = writeln!(out, "{rule}");
        }
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

/// `config sql`: the file's tables and grants on the database's backend.
async fn config_sql(
    app: &App,
    file: &Path,
    database_url: Option<&str>,
    grant_to: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(Some(file)) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let handler = match compiled.handler(database_url).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    match sql::setup_sql(handler.sink(), grant_to).await {
        Ok(text) => print(out, err, &text),
        Err(e) => fail(err, EXIT_INVALID, &e),
    }
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

#[allow(clippy::too_many_arguments)]
async fn replay(
    app: &App,
    database_url: Option<&str>,
    config: Option<&std::path::Path>,
    output: Output,
    files: &[PathBuf],
    keep_checked_bytes: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(config) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    // The threads a batch is decoded on (`codec.threads`) also read its event.
    let threads = compiled.pipeline.threads();
    // Nothing is applied unless every file can be read and is an MSK event, so a typo in the last file name
    // does not leave the database half-replayed. The first files, up to KEEP_CHECKED_BYTES, are kept from the
    // check and parsed once; every later file is checked and dropped, then read again when its turn comes. So a
    // replay holds at most those first files or one other file and its batch, whatever the files add up to.
    // A single file is its own check.
    let several = files.len() > 1;
    let mut texts: Vec<Vec<u8>> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    // The first file past the budget, read already.
    let mut next = None;
    if several {
        for file in files {
            let bytes = match read_file(file) {
                Ok(bytes) => bytes,
                Err(e) => return fail(err, EXIT_INVALID, &e),
            };
            if sizes.iter().sum::<u64>() + bytes.len() as u64 > keep_checked_bytes {
                next = Some(bytes);
                break;
            }
            sizes.push(bytes.len() as u64);
            texts.push(bytes);
        }
    }
    let kept = match parse_kept(files, &texts, threads) {
        Ok(events) => events,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    if several {
        for file in &files[texts.len()..] {
            let bytes = match next.take().map_or_else(|| read_file(file), Ok) {
                Ok(bytes) => bytes,
                Err(e) => return fail(err, EXIT_INVALID, &e),
            };
            if let Err(e) = parse_event(file, &bytes, threads) {
                return fail(err, EXIT_INVALID, &e);
            }
            sizes.push(bytes.len() as u64);
        }
    }
    let batch_timeout = compiled.sink.batch_timeout;
    let mut replayer = match output {
        Output::DryRun => Replayer::DryRun(Box::new(compiled.pipeline)),
        _ => match compiled.handler(database_url).await {
            Ok(h) => Replayer::Apply {
                handler: Box::new(h),
                batch_timeout,
                metrics: match (output == Output::ReportsAndMetrics)
                    .then(|| Metrics::from_env(app.name))
                    .transpose()
                {
                    Ok(metrics) => metrics,
                    Err(e) => return fail(err, EXIT_INVALID, &e),
                },
                progress: Progress::new(&sizes, std::io::stderr().is_terminal()),
            },
            Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
        },
    };
    // Each event is dropped once applied: its records go before the next batch.
    let kept_files = kept.len();
    for (file, event) in files.iter().zip(kept) {
        if let Err(code) = replayer.one(file, &event, out, err).await {
            return code;
        }
    }
    drop(texts);
    for file in &files[kept_files..] {
        // The file and its event live for this iteration only: the next batch starts with their memory freed.
        let bytes = match read_file(file) {
            Ok(bytes) => bytes,
            Err(e) => return fail(err, EXIT_INVALID, &e),
        };
        let event = match parse_event(file, &bytes, threads) {
            Ok(event) => event,
            Err(e) => return fail(err, EXIT_INVALID, &e),
        };
        if let Err(code) = replayer.one(file, &event, out, err).await {
            return code;
        }
    }
    replayer.finish(err);
    EXIT_OK
}

/// Reads every event file before anything is done with them.
pub(super) fn read_files(files: &[PathBuf]) -> Result<Vec<(&PathBuf, Vec<u8>)>, String> {
    files
        .iter()
        .map(|file| read_file(file).map(|bytes| (file, bytes)))
        .collect()
}

/// Parses every file read; a file that is not an MSK event stops the replay before anything is applied.
pub(super) fn parse_events<'t>(
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

/// How many bytes of event files `replay` keeps from checking them to applying them, so that a replay of a few
/// Lambda-sized batches parses each once: beyond it, a file is parsed to be checked and again to be applied.
const KEEP_CHECKED_BYTES: u64 = 64 << 20;

/// The events of the files kept from the check (the first `texts.len()` of `files`).
fn parse_kept<'t>(
    files: &[PathBuf],
    texts: &'t [Vec<u8>],
    threads: usize,
) -> Result<Vec<MskEvent<'t>>, String> {
    files
        .iter()
        .zip(texts)
        .map(|(file, bytes)| parse_event(file, bytes, threads))
        .collect()
}

/// What `replay` does with each event: print its messages (`--dry-run`) or apply it and print its report.
enum Replayer {
    DryRun(Box<Pipeline>),
    Apply {
        /// Boxed: a handler is several times the size of a pipeline.
        handler: Box<Handler>,
        /// `database.batch_timeout_seconds`: past it a file's batch is dropped (rolled back) and the replay
        /// stops as transient, as `consume` and Lambda mode do.
        batch_timeout: std::time::Duration,
        metrics: Option<Metrics>,
        progress: Progress,
    },
}

impl Replayer {
    /// One file's event; `Err` holds the exit code, after the message went to `err`.
    async fn one(
        &mut self,
        file: &Path,
        event: &MskEvent<'_>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<(), u8> {
        match self {
            Replayer::DryRun(pipeline) => {
                if let Err(e) = pipeline.prepare(event).await {
                    return Err(fail(
                        err,
                        EXIT_TRANSIENT,
                        &format!("{}: {e}", file.display()),
                    ));
                }
                let mut io_error = None;
                let planned = pipeline.plan(event, &mut |inspection| {
                    if io_error.is_none()
                        && let Err(e) = serde_json::to_writer(&mut *out, &inspection)
                            .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
                    {
                        io_error = Some(e);
                    }
                });
                if let Some(e) = io_error {
                    return Err(output_failed(err, &e.into()));
                }
                if let Err(e) = planned {
                    return Err(fail(
                        err,
                        EXIT_TRANSIENT,
                        &format!("{}: {e}", file.display()),
                    ));
                }
                Ok(())
            }
            Replayer::Apply {
                handler,
                batch_timeout,
                metrics,
                progress,
            } => {
                let started = std::time::Instant::now();
                // A database that stops answering mid-statement (the server-side statement timeout cannot
                // help: its answer never comes) fails the file's batch at its deadline instead of hanging the
                // replay; dropping the call drops its transaction, rolled back.
                let outcome = tokio::time::timeout(*batch_timeout, handler.handle(event))
                    .await
                    .unwrap_or_else(|_| {
                        Err(HandlerError::Transient(format!(
                            "batch not applied (retry it): the database did not finish it within {} s \
                             (database.batch_timeout_seconds); rolled back",
                            batch_timeout.as_secs()
                        )))
                    });
                let emf_line = metrics
                    .as_ref()
                    .map(|m| m.line(event, outcome.as_ref(), started.elapsed()));
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
                            return Err(output_failed(err, &e));
                        }
                    }
                    Err(HandlerError::Invalid(e)) => {
                        return Err(fail(err, EXIT_INVALID, &format!("{}: {e}", file.display())));
                    }
                    Err(e @ HandlerError::Transient(_)) => {
                        return Err(fail(
                            err,
                            EXIT_TRANSIENT,
                            &format!("{}: {e}", file.display()),
                        ));
                    }
                    Err(e @ HandlerError::Misconfigured(_)) => {
                        return Err(fail(err, EXIT_INVALID, &format!("{}: {e}", file.display())));
                    }
                }
                progress.batch_done(event.record_count(), err);
                Ok(())
            }
        }
    }

    fn finish(&mut self, err: &mut dyn Write) {
        if let Replayer::Apply { progress, .. } = self {
            progress.finish(err);
        }
    }
}

/// An event file's bytes; `-` is standard input, read once however often it is named.
fn read_file(file: &Path) -> Result<Vec<u8>, String> {
    if file == Path::new("-") {
        static STDIN: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
        return STDIN
            .get_or_init(|| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                    .map(|_| bytes)
                    .map_err(|e| format!("-: cannot read standard input: {e}"))
            })
            .clone();
    }
    std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))
}

/// The event in a file's bytes, its records read on at most `threads` threads.
fn parse_event<'t>(file: &Path, bytes: &'t [u8], threads: usize) -> Result<MskEvent<'t>, String> {
    MskEvent::from_slice_on(bytes, threads).map_err(|e| format!("{}: {e}", file.display()))
}

/// A long replay's progress on a terminal: batches done, records/s, and the time left (from the bytes left,
/// at the rate so far). Shown once the replay has run for [`Progress::AFTER`], then at most every
/// [`Progress::EVERY`], on one line that each update overwrites.
struct Progress {
    shown: bool,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
    batches: usize,
    records: usize,
    /// Every file's size, in replay order.
    sizes: Vec<u64>,
}

impl Progress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(3);
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// `sizes`: every file's size, when the files were checked first (several files); `terminal`: whether
    /// stderr is one (a progress line in a log file or a pipe would be noise).
    fn new(sizes: &[u64], terminal: bool) -> Self {
        Self {
            shown: terminal && sizes.len() > 1,
            started: std::time::Instant::now(),
            last: None,
            batches: 0,
            records: 0,
            sizes: sizes.to_vec(),
        }
    }

    fn batch_done(&mut self, records: usize, err: &mut dyn Write) {
        self.batches += 1;
        self.records += records;
        let now = std::time::Instant::now();
        let due = self.last.map_or(now - self.started >= Self::AFTER, |last| {
            now - last >= Self::EVERY
        });
        if self.shown && due && self.batches < self.sizes.len() {
            self.last = Some(now);
            let _ = write!(err, "\r{}\x1b[K", self.line(now));
            let _ = err.flush();
        }
    }

    /// Ends the progress line, if one was shown, with the final figures.
    fn finish(&mut self, err: &mut dyn Write) {
        if self.last.is_some() {
            let _ = writeln!(err, "\r{}\x1b[K", self.line(std::time::Instant::now()));
        }
    }

    fn line(&self, now: std::time::Instant) -> String {
        let seconds = (now - self.started).as_secs_f64().max(1e-3);
        let done: u64 = self.sizes.iter().take(self.batches).sum();
        let total: u64 = self.sizes.iter().sum();
        let left = match done {
            0 => 0.0,
            done => seconds * total.saturating_sub(done) as f64 / done as f64,
        };
        format!(
            "replay: {}/{} batches, {} records, {:.0} records/s, {} left",
            self.batches,
            self.sizes.len(),
            self.records,
            self.records as f64 / seconds,
            clock(left),
        )
    }
}

/// Seconds as `1h02m03s`, `2m03s` or `3s`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
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
        .map(|_| super::local::DEFAULT_ASSIGNMENT_TIMEOUT));
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
    match super::local::publish(brokers, properties, timeout, events).await {
        Ok(n) => {
            let _ = writeln!(out, "published {n} records to {brokers}");
            EXIT_OK
        }
        Err(e) => fail(err, EXIT_TRANSIENT, &e),
    }
}

/// The configuration reference page (`docs/src/configuration.md`) of this build's command line.
pub fn reference_page() -> String {
    reference::reference(&Cli::command().name("entity-sync"))
}

/// The JSON Schema of the config file, as `config schema` prints it (`docs/src/msk-sync.schema.json`).
pub fn schema_text() -> String {
    reference::schema_text()
}

/// `consume` / `publish` in a binary built without the local runner: how to get one.
#[cfg(not(feature = "kafka"))]
fn without_kafka(app: &App, command: &str, err: &mut dyn Write) -> u8 {
    fail(
        err,
        EXIT_INVALID,
        &format!(
            "{command} needs the local runner, which this {name} was built without (it links librdkafka, which \
             Lambda builds leave out). Build it with the kafka feature: cargo run -p {name} --features kafka -- \
             {command} … (librdkafka compiles from source: it needs make, zlib and OpenSSL headers)",
            name = app.name
        ),
    )
}

/// Writes `text` to `out`: 0, or 2 when it cannot be written.
fn print(out: &mut dyn Write, err: &mut dyn Write, text: &str) -> u8 {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) => output_failed(err, &e),
    }
}

/// Output that could not be written: a reader that went away (`| head`) ends the command quietly with 0, as
/// Unix tools do; anything else is an error.
pub(super) fn output_failed(err: &mut dyn Write, e: &std::io::Error) -> u8 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return EXIT_OK;
    }
    fail(err, EXIT_INVALID, &format!("cannot write output: {e}"))
}

pub(super) fn fail(err: &mut dyn Write, code: u8, message: &str) -> u8 {
    let _ = writeln!(err, "error: {}", super::logs::without_source_lines(message));
    code
}

/// Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise, so stdout carries only reports.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(super::log_filter("warn"))
        .with_ansi(super::logs::colour(std::io::stderr().is_terminal()))
        .with_writer(|| super::logs::WithoutSourceLines(std::io::stderr()))
        .finish()
        .with(super::no_credentials())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[[sync]]\ntopics = [\"t\"]\ntable = \"things\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", path = \"$.id\" }, { name = \"name\", path = \"$.name\" }]\n";

    /// An event of one record on topic `t` upserting `{"id": id, "name": name}`.
    fn event(id: &str, name: &str) -> String {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .encode(format!(r#"{{"id": "{id}", "name": "{name}"}}"#));
        format!(
            r#"{{"eventSource": "aws:kafka", "records": {{"t-0": [{{"topic": "t", "partition": 0, "offset": 0,
            "timestamp": 1, "timestampType": "CREATE_TIME", "value": "{value}", "headers": []}}]}}}}"#
        )
    }

    /// `replay` of `files` (names in `dir`) with a budget for the files kept from the check: (exit code,
    /// stdout, stderr, rows of `things`).
    async fn replay_in(
        dir: &Path,
        files: &[&str],
        budget: u64,
    ) -> (u8, String, String, Vec<String>) {
        let config = dir.join("msk-sync.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let db = dir.join("db.sqlite");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let files: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let app = App::declarative("test");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = replay(
            &app,
            Some(&url),
            Some(&config),
            Output::Reports,
            &files,
            budget,
            &mut out,
            &mut err,
        )
        .await;
        let sink = app
            .handler(&Config::from_file(&config).unwrap(), Some(&url))
            .await
            .unwrap();
        use sea_orm::ConnectionTrait;
        let rows = sink
            .sink()
            .connection()
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT id || '=' || name FROM things ORDER BY id",
            ))
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| r.try_get_by_index::<String>(0).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            rows,
        )
    }

    #[tokio::test]
    async fn files_past_the_budget_are_checked_then_read_again_and_applied_in_order() {
        for budget in [0, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a.json"), event("1", "first")).unwrap();
            std::fs::write(dir.path().join("b.json"), event("1", "second")).unwrap();
            std::fs::write(dir.path().join("c.json"), event("2", "other")).unwrap();
            let (code, out, err, rows) =
                replay_in(dir.path(), &["a.json", "b.json", "c.json"], budget).await;
            assert_eq!(code, EXIT_OK, "budget {budget}: {err}");
            assert_eq!(
                out.matches("\"upserted\": 1").count(),
                3,
                "budget {budget}: {out}"
            );
            assert_eq!(rows, ["1=second", "2=other"], "budget {budget}");
        }
    }

    #[tokio::test]
    async fn a_bad_file_past_the_budget_stops_the_replay_before_anything_is_applied() {
        for budget in [0, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a.json"), event("1", "first")).unwrap();
            std::fs::write(dir.path().join("bad.json"), r#"{"Records": []}"#).unwrap();
            let (code, out, err, rows) =
                replay_in(dir.path(), &["a.json", "a.json", "bad.json"], budget).await;
            assert_eq!(code, EXIT_INVALID, "budget {budget}");
            assert!(err.contains("bad.json"), "budget {budget}: {err}");
            assert!(out.is_empty(), "budget {budget}: {out}");
            assert!(rows.is_empty(), "budget {budget}: {rows:?}");
            let (code, _, err, rows) =
                replay_in(dir.path(), &["a.json", "missing.json"], budget).await;
            assert_eq!(code, EXIT_INVALID, "budget {budget}");
            assert!(
                err.contains("missing.json: cannot read"),
                "budget {budget}: {err}"
            );
            assert!(rows.is_empty(), "budget {budget}: {rows:?}");
        }
    }

    #[test]
    fn progress_says_batches_rate_and_time_left() {
        let mut progress = Progress::new(&[100, 100, 200], true);
        progress.started -= std::time::Duration::from_secs(10);
        let mut err = Vec::new();
        progress.batch_done(1000, &mut err);
        let line = String::from_utf8(err).unwrap();
        // 100 of 400 bytes in 10 s: 30 s left.
        assert!(
            line.contains("replay: 1/3 batches, 1000 records, 100 records/s, 30s left"),
            "{line:?}"
        );
        let mut quiet = Progress::new(&[100, 100], false);
        quiet.started -= std::time::Duration::from_secs(10);
        let mut err = Vec::new();
        quiet.batch_done(1, &mut err);
        quiet.finish(&mut err);
        assert!(err.is_empty(), "not a terminal: no progress");
        assert_eq!(clock(3725.0), "1h02m05s");
        assert_eq!(clock(65.0), "1m05s");
    }
}
