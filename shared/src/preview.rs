//! `replay --plan`: what a batch would do to the live database, message by message, with nothing written.
//!
//! The batch is applied for real — the same statements, version guard and refusals as a replay — in a
//! transaction that is rolled back ([`crate::sync::plan`]), so plan and apply agree on every count. Each
//! message gets one line with its `action`: `insert`, `update` (with the names of the columns that change —
//! never their values), `unchanged`, `delete`, `stale`, `superseded`, `filtered`, `empty` or `dead-letter`
//! (with the reason), then one summary line with the counts, named as in a batch report.
//!
//! Nothing is created either: the tables must exist and match (as `config check --database-url` says).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::event::MskEvent;
use crate::pipeline::{Handler, HandlerError, Plan, bounded_reason};
use crate::report::Outcome;
use crate::sync::plan::{Probe, RowAction};
use crate::sync::{ApplyError, DeadLetter, Extra, Origin, PreflightError};

/// One message of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    /// The record's topic.
    pub topic: String,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// The message's index in its record (an Avro container file holds several); omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub index: u32,
    /// The entity key, as text, when the message got as far as a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The sync (table) the message is routed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// insert, update, unchanged, delete, stale, superseded, filtered, empty or dead-letter.
    pub action: &'static str,
    /// `update`: the columns whose value changes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Why a message is dead-lettered (or stale, or skipped: a Debezium truncate, heartbeat or tombstone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the envelope's change was read (Debezium: the op and the image applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The counts of a plan: per action, and as a batch report would have them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// Every message of the batch.
    pub messages: usize,
    /// Upserts whose key has no row yet.
    pub insert: usize,
    /// Upserts that change at least one column.
    pub update: usize,
    /// Upserts that would write the row as it is.
    pub unchanged: usize,
    /// Deletes.
    pub delete: usize,
    /// Changes older than the row or its tombstone (version guard).
    pub stale: usize,
    /// Changes a later change of the same key in the batch replaces.
    pub superseded: usize,
    /// Messages the emit filter drops.
    pub filtered: usize,
    /// Records whose value held no message (an Avro container file with no record).
    pub empty: usize,
    /// Messages that would be dead-lettered.
    pub dead_letter: usize,
    /// insert + update + unchanged: the report's `upserted`.
    pub upserted: usize,
    /// The report's `deleted`.
    pub deleted: usize,
    /// The report's `deadLettered`.
    pub dead_lettered: usize,
}

impl PlanSummary {
    fn count(&mut self, action: &str) {
        self.messages += 1;
        match action {
            "insert" => self.insert += 1,
            "update" => self.update += 1,
            "unchanged" => self.unchanged += 1,
            "delete" => self.delete += 1,
            "stale" => self.stale += 1,
            "superseded" => self.superseded += 1,
            "filtered" => self.filtered += 1,
            "empty" => self.empty += 1,
            _ => self.dead_letter += 1,
        }
        self.upserted = self.insert + self.update + self.unchanged;
        self.deleted = self.delete;
        self.dead_lettered = self.dead_letter;
    }
}

/// Plans one event against the database: every message's line (in batch order), and the counts.
pub async fn plan(
    handler: &Handler,
    event: &MskEvent<'_>,
) -> Result<(Vec<PlanLine>, PlanSummary), HandlerError> {
    let sink = handler.sink();
    let transient = |e: &dyn std::fmt::Display| {
        HandlerError::Transient(format!("plan not made (retry it): {e}"))
    };
    // Read only: the tables as they are, nothing created or altered.
    let (problems, missing) = sink.check().await.map_err(|e| transient(&e))?;
    if !problems.is_empty() {
        return Err(HandlerError::Misconfigured(
            PreflightError::Misconfigured(problems).to_string(),
        ));
    }
    if !missing.is_empty() {
        return Err(HandlerError::Misconfigured(format!(
            "not there yet: {}; --plan creates nothing (a replay without --plan creates them)",
            missing.join("; ")
        )));
    }
    let pipeline = handler.pipeline();
    pipeline.prepare(event).await.map_err(|e| transient(&e))?;
    let mut seen: Vec<(Origin, Outcome, PlanLine)> = Vec::new();
    let Plan {
        changes,
        dead_letters,
        report: _,
        order,
    } = pipeline
        .plan(event, &mut |i| {
            let line = PlanLine {
                topic: i.topic.to_string(),
                partition: i.partition,
                offset: i.offset,
                index: i.index,
                key: i.key.map(str::to_string),
                sync: i.sync.map(str::to_string),
                action: "",
                columns: Vec::new(),
                reason: i.reason.map(str::to_string),
                change: i.change,
            };
            let at = Origin {
                record: i.position,
                index: i.index,
            };
            seen.push((at, i.outcome, line));
        })
        .map_err(|e| transient(&e))?;
    let records = &event.records;
    // Rolled back: a refused row's dead letter is never written, its occurrence does not matter.
    let reject = |at: Origin, reason: &str| {
        DeadLetter::new(
            &records[order[at.record]],
            at,
            0,
            bounded_reason(reason.to_string()),
        )
    };
    let mut probe = Probe::new();
    let applied = sink
        .apply_with(
            &changes,
            &dead_letters,
            &reject,
            &mut Extra::Plan(&mut probe),
        )
        .await
        .map_err(|e| match e {
            ApplyError::Misconfigured(_) => HandlerError::Misconfigured(e.to_string()),
            _ => transient(&e),
        })?;
    let rows: HashMap<(usize, u32), RowAction> = probe
        .actions(sink, &changes)
        .into_iter()
        .map(|(o, a)| ((o.record, o.index), a))
        .collect();
    let key = |o: &Origin| (o.record, o.index);
    let stale: HashSet<(usize, u32)> = applied.stale.iter().map(key).collect();
    let rejected: HashMap<(usize, u32), &String> =
        applied.rejected.iter().map(|(o, r)| (key(o), r)).collect();
    let surviving: HashSet<(usize, u32)> = changes
        .iter()
        .flat_map(|c| c.origins())
        .map(|(o, _)| key(&o))
        .collect();
    let mut summary = PlanSummary::default();
    let mut lines = Vec::with_capacity(seen.len());
    for (at, outcome, mut line) in seen {
        let k = key(&at);
        let action = match outcome {
            Outcome::Upsert | Outcome::Delete => {
                if let Some(reason) = rejected.get(&k) {
                    line.reason = Some(bounded_reason((*reason).clone()));
                    "dead-letter"
                } else if stale.contains(&k) {
                    "stale"
                } else if !surviving.contains(&k) {
                    "superseded"
                } else if outcome == Outcome::Delete {
                    "delete"
                } else {
                    match rows.get(&k) {
                        Some(RowAction::Insert) => "insert",
                        Some(RowAction::Update(columns)) => {
                            line.columns = columns.clone();
                            "update"
                        }
                        Some(RowAction::Unchanged) | None => "unchanged",
                    }
                }
            }
            Outcome::Filtered => "filtered",
            Outcome::Empty => "empty",
            Outcome::Stale => "stale",
            Outcome::DeadLetter => "dead-letter",
        };
        line.action = action;
        summary.count(action);
        lines.push(line);
    }
    Ok((lines, summary))
}
