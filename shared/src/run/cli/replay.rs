//! `replay`: event files applied (or `--dry-run` / `--plan`) as Lambda would apply them, one batch per file,
//! files read and parsed ahead within a memory bound, with a progress line on a terminal.

use super::*;

/// What `replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    Reports,
    /// `--dry-run`: every message, nothing written.
    DryRun,
    /// `--emf`: each report followed by the batch's metrics.
    ReportsAndMetrics,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn replay(
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
pub(crate) fn read_files(files: &[PathBuf]) -> Result<Vec<(&PathBuf, Vec<u8>)>, String> {
    files
        .iter()
        .map(|file| read_file(file).map(|bytes| (file, bytes)))
        .collect()
}

/// Parses every file read; a file that is not an MSK event stops the replay before anything is applied.
pub(crate) fn parse_events<'t>(
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
pub(super) const KEEP_CHECKED_BYTES: u64 = 64 << 20;

/// The events of the files kept from the check (the first `texts.len()` of `files`).
pub(super) fn parse_kept<'t>(
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
pub(super) enum Replayer {
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
    pub(super) async fn one(
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

    pub(super) fn finish(&mut self, err: &mut dyn Write) {
        if let Replayer::Apply { progress, .. } = self {
            progress.finish(err);
        }
    }
}

/// An event file's bytes; `-` is standard input, read once however often it is named.
pub(super) fn read_file(file: &Path) -> Result<Vec<u8>, String> {
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
pub(super) fn parse_event<'t>(
    file: &Path,
    bytes: &'t [u8],
    threads: usize,
) -> Result<MskEvent<'t>, String> {
    MskEvent::from_slice_on(bytes, threads).map_err(|e| format!("{}: {e}", file.display()))
}

/// A long replay's progress on a terminal: batches done, records/s, and the time left (from the bytes left,
/// at the rate so far). Shown once the replay has run for [`Progress::AFTER`], then at most every
/// [`Progress::EVERY`], on one line that each update overwrites.
pub(super) struct Progress {
    pub(super) shown: bool,
    pub(super) started: std::time::Instant,
    pub(super) last: Option<std::time::Instant>,
    pub(super) batches: usize,
    pub(super) records: usize,
    /// Every file's size, in replay order.
    pub(super) sizes: Vec<u64>,
}

impl Progress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(3);
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// `sizes`: every file's size, when the files were checked first (several files); `terminal`: whether
    /// stderr is one (a progress line in a log file or a pipe would be noise).
    pub(super) fn new(sizes: &[u64], terminal: bool) -> Self {
        Self {
            shown: terminal && sizes.len() > 1,
            started: std::time::Instant::now(),
            last: None,
            batches: 0,
            records: 0,
            sizes: sizes.to_vec(),
        }
    }

    pub(super) fn batch_done(&mut self, records: usize, err: &mut dyn Write) {
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
    pub(super) fn finish(&mut self, err: &mut dyn Write) {
        if self.last.is_some() {
            let _ = writeln!(err, "\r{}\x1b[K", self.line(std::time::Instant::now()));
        }
    }

    pub(super) fn line(&self, now: std::time::Instant) -> String {
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
pub(super) fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}
