//! `redrive`: the dead letters run again through the current config — decode, filter, mask, map, version
//! guard — so that, once a config or a producer is fixed, what was dead-lettered is recovered without risk of
//! moving a row backwards (a redriven change older than its row is counted `stale`, not applied).
//!
//! The dead letters are taken a chunk of records at a time, in key order. Each chunk is one transaction: the
//! messages that now succeed are applied and their dead-letter rows deleted; the ones that fail again keep
//! their rows, with the new reason and one more attempt. A chunk that fails transiently is rolled back whole
//! and the redrive stops (exit 1): running it again is safe, the chunks before were committed.
//!
//! Only the messages that were dead-lettered are run again: the other messages of an Avro container file were
//! applied with their batch and are not applied a second time.

use crate::event::MskEvent;
use crate::pipeline::{
    Handler, HandlerError, Inspection, Plan, bounded_reason, note, note_applied,
};
use crate::report::{BatchReport, Outcome};
use crate::sync::redrive::{RecordKey, StoredRecord};
use crate::sync::{ApplyError, DeadLetter, Extra, Origin, PreflightError};

/// Records per chunk (per transaction) unless told otherwise.
pub const DEFAULT_CHUNK_RECORDS: usize = 500;

/// Which dead letters, and how many records a transaction takes.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// Only the dead letters of these topics; empty: all.
    pub topics: Vec<String>,
    /// Records per transaction.
    pub chunk_records: usize,
}

impl Default for RedriveOptions {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            chunk_records: DEFAULT_CHUNK_RECORDS,
        }
    }
}

/// How a chunk that another redrive changed under this one starts its error (see [`ApplyError::Claimed`]).
const CLAIMED: &str = "redrive chunk read again: ";
/// How often one chunk is read again before the redrive gives up (a transient failure).
const CLAIM_TRIES: u32 = 5;

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(format!(
        "redrive chunk not applied (run redrive again): {e}"
    ))
}

/// Runs the redrive; `each` gets every chunk's report once the chunk is committed. Returns the number of
/// chunks. The first transient failure stops it; the chunks committed before stay committed.
pub async fn redrive(
    handler: &Handler,
    options: &RedriveOptions,
    each: &mut dyn FnMut(&BatchReport) -> Result<(), String>,
) -> Result<usize, HandlerError> {
    let sink = handler.sink();
    sink.preflight().await.map_err(|e| match e {
        PreflightError::Misconfigured(_) => HandlerError::Misconfigured(e.to_string()),
        PreflightError::Database(_) => transient(e),
    })?;
    let keys = sink
        .dead_letter_records(&options.topics)
        .await
        .map_err(transient)?;
    let mut chunks = 0;
    for chunk in keys.chunks(options.chunk_records.max(1)) {
        // Another redrive applied some of the chunk's dead letters since they were read: read it again,
        // without them (it holds their locks no longer: its transaction committed).
        let mut tries = 0;
        let report = loop {
            match redrive_chunk(handler, chunk).await {
                Err(HandlerError::Transient(e))
                    if e.starts_with(CLAIMED) && tries < CLAIM_TRIES =>
                {
                    tries += 1;
                    tracing::info!(retry = tries, reason = %e, "redrive: chunk read again");
                }
                other => break other?,
            }
        };
        tracing::info!(
            records = report.received,
            upserted = report.upserted,
            deleted = report.deleted,
            filtered = report.filtered,
            dead_lettered = report.dead_lettered,
            stale = report.stale,
            "redrive: chunk applied"
        );
        each(&report).map_err(HandlerError::Invalid)?;
        chunks += 1;
    }
    Ok(chunks)
}

/// `redrive --dry-run`: every dead-lettered message as it would be applied now (as `replay --dry-run` shows
/// it); nothing is written, not even the dead-letter table's new columns.
pub async fn redrive_dry_run(
    handler: &Handler,
    options: &RedriveOptions,
    inspect: &mut dyn FnMut(Inspection<'_>),
) -> Result<(), HandlerError> {
    let sink = handler.sink();
    let (problems, missing) = sink.check().await.map_err(transient)?;
    if !problems.is_empty() {
        return Err(HandlerError::Misconfigured(
            PreflightError::Misconfigured(problems).to_string(),
        ));
    }
    let table = &sink_dead_letter_table(handler);
    if let Some(m) = missing.iter().find(|m| m.starts_with(table.as_str())) {
        if *m == *table {
            return Ok(()); // No dead-letter table: nothing to redrive.
        }
        return Err(HandlerError::Misconfigured(format!(
            "the dead-letter table lacks what redrive reads: {m}; redrive without --dry-run (or any batch) adds them"
        )));
    }
    let keys = sink
        .dead_letter_records(&options.topics)
        .await
        .map_err(transient)?;
    let pipeline = handler.pipeline();
    for chunk in keys.chunks(options.chunk_records.max(1)) {
        let stored = sink.load_dead_letters(chunk).await.map_err(transient)?;
        let usable: Vec<&StoredRecord> = stored.iter().filter(|s| s.broken.is_none()).collect();
        let (event, selected) = event_of(&usable);
        pipeline.prepare(&event).await.map_err(transient)?;
        pipeline
            .plan_selected(&event, Some(&selected), inspect)
            .map_err(transient)?;
    }
    Ok(())
}

fn sink_dead_letter_table(handler: &Handler) -> String {
    handler.sink().dead_letter_table().to_string()
}

/// The records as one event, and for each the messages to run again.
fn event_of(stored: &[&StoredRecord]) -> (MskEvent<'static>, Vec<Vec<u32>>) {
    let event = MskEvent {
        event_source: "aws:kafka".into(),
        records: stored.iter().map(|s| s.record.clone()).collect(),
        ..MskEvent::default()
    };
    let selected = stored
        .iter()
        .map(|s| s.messages.iter().map(|(i, _)| *i).collect())
        .collect();
    (event, selected)
}

/// How often a message was tried before this redrive.
fn attempts(stored: &StoredRecord, index: u32) -> u32 {
    stored
        .messages
        .iter()
        .find(|(i, _)| *i == index)
        .map_or(1, |(_, n)| *n)
}

async fn redrive_chunk(
    handler: &Handler,
    chunk: &[RecordKey],
) -> Result<BatchReport, HandlerError> {
    let sink = handler.sink();
    let pipeline = handler.pipeline();
    let stored = sink.load_dead_letters(chunk).await.map_err(transient)?;
    let (usable, broken): (Vec<&StoredRecord>, Vec<&StoredRecord>) =
        stored.iter().partition(|s| s.broken.is_none());
    let (event, selected) = event_of(&usable);
    pipeline.prepare(&event).await.map_err(transient)?;
    let Plan {
        changes,
        mut dead_letters,
        mut report,
        order,
    } = pipeline
        .plan_selected(&event, Some(&selected), &mut |_| {})
        .map_err(transient)?;
    // A dead letter written again is the row it was read from: same occurrence, one more attempt.
    for d in &mut dead_letters {
        let s = usable[order[d.at.record]];
        d.occurrence = s.key.occurrence;
        d.attempts = attempts(s, d.at.index).saturating_add(1);
    }
    let records = &event.records;
    let reject = |at: Origin, reason: &str| {
        let s = usable[order[at.record]];
        let mut d = DeadLetter::new(
            &records[order[at.record]],
            at,
            s.key.occurrence,
            bounded_reason(reason.to_string()),
        );
        d.attempts = attempts(s, at.index).saturating_add(1);
        d
    };
    let rows: Vec<(&RecordKey, u32)> = usable
        .iter()
        .flat_map(|s| s.messages.iter().map(move |(i, _)| (&s.key, *i)))
        .collect();
    let applied = sink
        .apply_with(&changes, &dead_letters, &reject, &mut Extra::Redrive(&rows))
        .await
        .map_err(|e| match e {
            ApplyError::Misconfigured(_) => HandlerError::Misconfigured(e.to_string()),
            ApplyError::Claimed(_) => HandlerError::Transient(format!("{CLAIMED}{e}")),
            _ => transient(e),
        })?;
    note_applied(&mut report, &applied, records, &order);
    // Records that could not be rebuilt keep their rows untouched; they are listed, not counted as tried.
    for s in broken {
        report.received += 1;
        for (index, _) in &s.messages {
            report.messages += 1;
            let at = Origin {
                record: usize::MAX,
                index: *index,
            };
            note(
                &mut report,
                &s.record,
                at,
                Outcome::DeadLetter,
                s.broken.as_deref(),
            );
        }
    }
    report.sort();
    Ok(report)
}
