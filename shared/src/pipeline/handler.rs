//! The [`Handler`]: the pipeline plus the database, behind every way in (Lambda, `replay`, the runner).

use super::*;

/// Debezium's `op` routing, for every sync under `codec.envelope = "debezium"`.
pub(super) static DEBEZIUM: ChangeRule = ChangeRule::Debezium;

/// Why a tombstone under `codec.envelope = "debezium"` is not applied.
pub const DEBEZIUM_TOMBSTONE: &str = "tombstone after a Debezium delete (for log compaction): the delete event before it applied, nothing to do";

/// The most dead letters of one batch logged one line each; the rest are counted in one line.
pub(super) const MAX_LOGGED_DEAD_LETTERS: usize = 100;

/// Why a batch was not processed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The invocation itself is wrong (not an MSK event): retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// Database or schema registry trouble: retry the whole batch. The text says whether nothing was
    /// written ("batch not applied") or the commit's outcome is unknown.
    #[error("transient failure, {0}")]
    Transient(String),
    /// The database does not match the config (found by the preflight): nothing was applied or
    /// dead-lettered; retrying cannot help until a person fixes the table or the config.
    #[error("misconfigured, nothing applied: {0}")]
    Misconfigured(String),
}

/// The pipeline plus the database: the one handler behind every way in.
#[derive(Debug)]
pub struct Handler {
    pub(super) pipeline: Pipeline,
    pub(super) sink: Sink,
}

impl Handler {
    /// The handler of `pipeline` writing to `sink`.
    pub fn new(pipeline: Pipeline, sink: Sink) -> Self {
        Self { pipeline, sink }
    }

    /// The database-free part.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The database.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Puts a new database in place of the old one (the same tables, a re-read secret's new credentials),
    /// keeping the compiled pipeline; returns the old one.
    pub fn replace_sink(&mut self, sink: Sink) -> Sink {
        std::mem::replace(&mut self.sink, sink)
    }

    /// Any JSON payload (tests, and callers that hold a `Value`).
    pub async fn handle_json(&self, payload: Value) -> Result<BatchReport, HandlerError> {
        let event =
            MskEvent::from_value(payload).map_err(|e| HandlerError::Invalid(e.to_string()))?;
        self.handle(&event).await
    }

    /// Handles one batch: plans it and applies it in one transaction; the report is the Lambda response.
    pub async fn handle(&self, event: &MskEvent<'_>) -> Result<BatchReport, HandlerError> {
        let source = event.event_source.as_ref();
        self.sink.preflight().await.map_err(|e| match e {
            PreflightError::Misconfigured(_) => {
                tracing::error!(event_source = %source, records = event.record_count(), error = %e, "misconfigured: the database does not match the config");
                HandlerError::Misconfigured(e.to_string())
            }
            PreflightError::Database(_) => {
                tracing::warn!(event_source = %source, records = event.record_count(), error = %e, "preflight failed");
                HandlerError::Transient(format!("batch not applied (retry it): {e}"))
            }
        })?;
        self.pipeline.prepare(event).await.map_err(|e| match e {
            DecodeError::Misconfigured(_) => {
                tracing::error!(event_source = %source, records = event.record_count(), error = %e, "misconfigured: the batch cannot be decoded");
                HandlerError::Misconfigured(e.to_string())
            }
            _ => {
                tracing::warn!(event_source = %source, records = event.record_count(), error = %e, "batch not decoded");
                HandlerError::Transient(format!("batch not applied (retry it): {e}"))
            }
        })?;
        let Plan {
            changes,
            dead_letters,
            mut report,
            order,
        } = self
            .pipeline
            .plan_batch(event)
            .map_err(|e| HandlerError::Transient(format!("batch not applied (retry it): {e}")))?;
        let records = &event.records;
        // Rows the database refuses are dead-lettered while the batch is applied, with the same coordinates
        // (and occurrence) as the plan would have given them.
        let occurrence = OnceLock::new();
        let reject = |at: Origin, reason: &str| {
            let occurrences = occurrence.get_or_init(|| occurrences(records, &order));
            let reason = bounded_reason(reason.to_string());
            DeadLetter::new(
                &records[order[at.record]],
                at,
                occurrences[at.record],
                reason,
            )
        };
        let applied = self.sink.apply(&changes, &dead_letters, &reject).await.map_err(|e| {
            tracing::warn!(event_source = %source, records = report.received, error = %e, "batch failed");
            match e {
                ApplyError::Misconfigured(_) => HandlerError::Misconfigured(e.to_string()),
                _ => HandlerError::Transient(e.to_string()),
            }
        })?;
        note_applied(&mut report, &applied, records, &order);
        if !applied.rejected.is_empty() || !applied.stale.is_empty() {
            // The refused and stale rows were found after the others: put them in their place.
            report.sort();
        }
        tracing::info!(
            event_source = %source,
            records = report.received,
            upserted = report.upserted,
            deleted = report.deleted,
            superseded = report.superseded,
            filtered = report.filtered,
            empty = report.empty,
            dead_lettered = report.dead_lettered,
            stale = report.stale,
            status = report.status,
            "batch applied"
        );
        // One line per dead letter, up to a bound: a container file of 40,000 failing messages would otherwise
        // write 40,000 lines for one record. The dead-letter table has them all.
        let dead = report
            .records
            .iter()
            .filter(|r| r.outcome == Outcome::DeadLetter)
            .take(MAX_LOGGED_DEAD_LETTERS);
        let mut logged = 0;
        for r in dead {
            // Coordinates and reason only: a reason quotes no message value but a changeType (docs/src/semantics.md).
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, index = r.index,
                reason = r.reason.as_deref().unwrap_or_default(), "record dead-lettered");
            logged += 1;
        }
        let not_logged = report.dead_lettered.saturating_sub(logged);
        if not_logged > 0 {
            tracing::warn!(
                event_source = %source,
                dead_letters_not_logged = not_logged,
                "more records dead-lettered in this batch: see the dead-letter table"
            );
        }
        Ok(report)
    }
}
