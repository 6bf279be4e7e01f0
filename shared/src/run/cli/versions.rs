//! The command lines of issue 15's recovery tools: `redrive` and `replay --plan`. Exit codes as `replay`'s.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{EXIT_INVALID, EXIT_OK, EXIT_TRANSIENT, fail, output_failed, parse_events, read_files};
use crate::pipeline::HandlerError;
use crate::redrive::{DEFAULT_CHUNK_RECORDS, RedriveOptions};
use crate::run::{App, DATABASE_URL_ENV};

#[derive(Debug, clap::Args)]
pub(super) struct RedriveArgs {
    /// Database whose dead letters are redriven (as for replay).
    #[arg(long, env = DATABASE_URL_ENV)]
    database_url: Option<String>,
    /// Config file (as for replay): the current one, fixed.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only the dead letters of this topic (repeatable); default: all.
    #[arg(long = "topic", short = 't', value_name = "TOPIC")]
    topics: Vec<String>,
    /// Print every dead-lettered message as it would be applied now (one JSON line each, as replay
    /// --dry-run) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Records per transaction.
    #[arg(long, default_value_t = DEFAULT_CHUNK_RECORDS, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..=100_000), |n| n as usize))]
    chunk: usize,
}

fn exit_code(e: &HandlerError) -> u8 {
    match e {
        HandlerError::Transient(_) => EXIT_TRANSIENT,
        HandlerError::Invalid(_) | HandlerError::Misconfigured(_) => EXIT_INVALID,
    }
}

pub(super) async fn redrive(
    app: &App,
    args: RedriveArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let handler = match compiled.handler(args.database_url.as_deref()).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let options = RedriveOptions {
        topics: args.topics,
        chunk_records: args.chunk,
    };
    // Set when stdout's reader went away (`| head`): the command then ends quietly.
    let mut reader_gone = false;
    let done = if args.dry_run {
        let mut io_error = None;
        let done = crate::redrive::redrive_dry_run(&handler, &options, &mut |inspection| {
            if io_error.is_none()
                && let Err(e) = serde_json::to_writer(&mut *out, &inspection)
                    .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
            {
                io_error = Some(e);
            }
        })
        .await;
        if let Some(e) = io_error {
            return output_failed(err, &e.into());
        }
        done
    } else {
        crate::redrive::redrive(&handler, &options, &mut |report| {
            serde_json::to_writer_pretty(&mut *out, report)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
                .map_err(|e| {
                    reader_gone |= e.kind() == std::io::ErrorKind::BrokenPipe;
                    format!("cannot write output: {e}")
                })
        })
        .await
        .map(|_| ())
    };
    if reader_gone {
        return EXIT_OK;
    }
    match done {
        Ok(()) => EXIT_OK,
        Err(e) => fail(err, exit_code(&e), &format!("redrive: {e}")),
    }
}

pub(super) async fn replay_plan(
    app: &App,
    database_url: Option<&str>,
    config: Option<&Path>,
    files: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(config) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let texts = match read_files(files) {
        Ok(texts) => texts,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let events = match parse_events(&texts) {
        Ok(events) => events,
        Err(e) => return fail(err, EXIT_INVALID, &e),
    };
    let mut compiled = compiled;
    // A plan leaves nothing behind: not even the empty file of a SQLite URL's `mode=rwc`.
    compiled.sink.create_database = false;
    let handler = match compiled.handler(database_url).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    for (file, event) in events {
        let (lines, summary) = match crate::preview::plan(&handler, &event).await {
            Ok(planned) => planned,
            Err(e) => return fail(err, exit_code(&e), &format!("{}: {e}", file.display())),
        };
        let written = lines
            .iter()
            .try_for_each(|line| {
                serde_json::to_writer(&mut *out, line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
            })
            .and_then(|()| {
                serde_json::to_writer(&mut *out, &serde_json::json!({ "summary": summary }))
                    .map_err(std::io::Error::from)
            })
            .and_then(|()| writeln!(out));
        if let Err(e) = written {
            return output_failed(err, &e);
        }
    }
    EXIT_OK
}
