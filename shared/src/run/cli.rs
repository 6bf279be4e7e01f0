//! The command line: `replay` event files into a database, `config check` a config file.
//!
//! Exit codes follow the failure model: 0 processed (dead letters included), 1 transient failure (nothing
//! of the failing batch was written; run it again), 2 bad invocation (unreadable file, not an MSK event, bad
//! config).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{App, DATABASE_URL_ENV};
use crate::config::Config;
use crate::event::MskEvent;
use crate::pipeline::HandlerError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_TRANSIENT: u8 = 1;
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

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// List every problem in a config file; exit 2 if there is any.
    Check { file: PathBuf },
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
            command: ConfigCommand::Check { file },
        } => check(&file, out, err),
        Command::Replay {
            database_url,
            config,
            dry_run,
            events,
        } => {
            replay(
                app,
                database_url.as_deref(),
                config.as_deref(),
                dry_run,
                &events,
                out,
                err,
            )
            .await
        }
    }
}

fn check(file: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let problems = match Config::from_file(file) {
        Ok(config) => config
            .problems()
            .into_iter()
            .map(|p| format!("{}: {p}", file.display()))
            .collect(),
        Err(e) => e.0,
    };
    if problems.is_empty() {
        let _ = writeln!(out, "{}: ok", file.display());
        return EXIT_OK;
    }
    for p in &problems {
        let _ = writeln!(err, "{p}");
    }
    let _ = writeln!(err, "{}: {} problem(s)", file.display(), problems.len());
    EXIT_INVALID
}

async fn replay(
    app: &App,
    database_url: Option<&str>,
    config: Option<&std::path::Path>,
    dry_run: bool,
    files: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let config = match app.load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    // Every file is read and parsed before anything is applied, so a typo in the last file name does not
    // leave the database half-replayed.
    let mut events = Vec::with_capacity(files.len());
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                return fail(
                    err,
                    EXIT_INVALID,
                    &format!("{}: cannot read: {e}", file.display()),
                );
            }
        };
        match MskEvent::from_slice(&bytes) {
            Ok(ev) => events.push((file, ev)),
            Err(e) => return fail(err, EXIT_INVALID, &format!("{}: {e}", file.display())),
        }
    }
    if dry_run {
        let pipeline = match app.pipeline(&config) {
            Ok(p) => p,
            Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
        };
        for (file, event) in events {
            if let Err(e) = pipeline.prepare(&event).await {
                return fail(err, EXIT_TRANSIENT, &format!("{}: {e}", file.display()));
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
                return fail(err, EXIT_INVALID, &format!("cannot write output: {e}"));
            }
            if let Err(e) = planned {
                return fail(err, EXIT_TRANSIENT, &format!("{}: {e}", file.display()));
            }
        }
        return EXIT_OK;
    }
    let handler = match app.handler(&config, database_url).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    for (file, event) in events {
        match handler.handle(event).await {
            Ok(report) => {
                let written = serde_json::to_writer_pretty(&mut *out, &report)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out));
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
        }
    }
    EXIT_OK
}

fn fail(err: &mut dyn Write, code: u8, message: &str) -> u8 {
    let _ = writeln!(err, "error: {message}");
    code
}

/// Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise, so stdout carries only reports.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
