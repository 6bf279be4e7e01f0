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

mod check;
#[cfg(feature = "kafka")]
mod kafka;
mod reference;
mod replay;
mod sql;
mod versions;
use crate::config::Config;
use crate::event::MskEvent;
use crate::metrics::Metrics;
use crate::pipeline::{Handler, HandlerError, Pipeline};
use check::{check, config_sql};
#[cfg(feature = "kafka")]
use kafka::{consume, publish};
pub use reference::{ENVIRONMENT, EnvVar};
use replay::KEEP_CHECKED_BYTES;
#[cfg(feature = "kafka")]
use replay::read_file;
use replay::{Output, replay};
pub(super) use replay::{parse_events, read_files};

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
    use replay::{Progress, clock};

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
