//! What a batch has come to while it is planned: the one place a message is counted in the report, its change
//! kept and its dead letter made; and what the database's answer adds to it.

use super::*;

/// The longest reason msk-sync keeps: a reason quotes names (topics, schema fields) that a producer chooses,
/// and a container file repeats its reason for each of its messages.
pub(super) const MAX_REASON_CHARS: usize = 1_000;

/// What a batch has come to so far. [`Batch::settle`] is the only code that counts a message in the report,
/// records its change, keeps its dead letter and shows it to `inspect`.
pub(super) struct Batch<'e> {
    pub(super) report: BatchReport,
    pub(super) changes: Vec<Changes>,
    pub(super) dead_letters: Vec<DeadLetter<'e>>,
    /// The pipeline's mappings, for the names `inspect` shows.
    pub(super) syncs: Vec<Arc<dyn Mapping>>,
}

impl<'e> Batch<'e> {
    pub(super) fn new(mappings: &[Arc<dyn Mapping>], received: usize) -> Self {
        // A function with one sync (the usual) gets room for the whole batch at once; with several, each grows.
        let room = if mappings.len() == 1 { received } else { 0 };
        Self {
            report: BatchReport {
                status: STATUS_OK,
                received,
                ..BatchReport::default()
            },
            changes: mappings
                .iter()
                .map(|m| {
                    Changes::with_capacity(m.table().key.clone(), room).with_version(m.version())
                })
                .collect(),
            dead_letters: Vec::new(),
            syncs: mappings.to_vec(),
        }
    }

    pub(super) fn settle(
        &mut self,
        seen: Seen<'_, 'e>,
        fate: Fate,
        inspect: &mut dyn FnMut(Inspection<'_>),
    ) {
        let fate = match fate {
            Fate::DeadLetter(reason) => Fate::DeadLetter(bounded_reason(reason)),
            other => other,
        };
        let record = seen.record;
        self.report.messages += 1;
        inspect(Inspection {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            index: seen.at.index,
            key: seen.key,
            outcome: fate.outcome(),
            sync: seen.sync.map(|s| self.syncs[s].name()),
            reason: match &fate {
                Fate::DeadLetter(reason) => Some(reason),
                Fate::Skipped(reason) => Some(reason),
                _ => None,
            },
            change: match (&fate, seen.message) {
                (Fate::Upsert(..) | Fate::Delete(..), Some(m)) => match m.get("debeziumOp") {
                    Some(Message::String(op)) => crate::change::debezium_op(op).map(|(_, d)| d),
                    _ => None,
                },
                _ => None,
            },
            message: seen.message,
            position: seen.at.record,
        });
        match fate {
            Fate::Upsert(sync, row) => self.changes[sync].upsert(row, seen.at),
            Fate::Delete(sync, key) => self.changes[sync].delete(key, seen.at),
            Fate::Filtered | Fate::Empty => {
                note(&mut self.report, record, seen.at, fate.outcome(), None)
            }
            Fate::Skipped(reason) => note(
                &mut self.report,
                record,
                seen.at,
                Outcome::Filtered,
                Some(reason),
            ),
            Fate::DeadLetter(reason) => {
                note(
                    &mut self.report,
                    record,
                    seen.at,
                    Outcome::DeadLetter,
                    Some(&reason),
                );
                // Its occurrence is counted once the batch is planned, and only if something was dead-lettered.
                self.dead_letters
                    .push(DeadLetter::new(record, seen.at, 0, reason));
            }
        }
    }

    pub(super) fn finish(mut self, records: &[Record<'_>], order: Vec<usize>) -> Plan<'e> {
        self.report.superseded = self.changes.iter().map(Changes::superseded).sum();
        if !self.dead_letters.is_empty() {
            let occurrences = occurrences(records, &order);
            for d in &mut self.dead_letters {
                d.occurrence = occurrences[d.at.record];
            }
            dead_letter::share_raw(&mut self.dead_letters);
        }
        Plan {
            changes: self.changes,
            dead_letters: self.dead_letters,
            report: self.report,
            order,
        }
    }
}

/// What the sink did with a planned batch, into its report: the counts, and a line for every message it found
/// stale or refused as data (dead-lettered). The caller puts the report back in batch order. Shared by the
/// handler and `redrive`.
pub(crate) fn note_applied(
    report: &mut BatchReport,
    applied: &Applied,
    records: &[Record<'_>],
    order: &[usize],
) {
    report.upserted = applied.upserted;
    report.deleted = applied.deleted;
    for at in &applied.stale {
        note(
            report,
            &records[order[at.record]],
            *at,
            Outcome::Stale,
            None,
        );
    }
    for (at, reason) in &applied.rejected {
        let reason = bounded_reason(reason.clone());
        note(
            report,
            &records[order[at.record]],
            *at,
            Outcome::DeadLetter,
            Some(&reason),
        );
    }
}

/// Lists a message that was not applied in the report.
pub(crate) fn note(
    report: &mut BatchReport,
    record: &Record<'_>,
    at: Origin,
    outcome: Outcome,
    reason: Option<&str>,
) {
    report.note(RecordResult {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        index: at.index,
        status: outcome.status(),
        outcome,
        reason: reason.map(str::to_string),
        position: at.record,
    });
}

pub(crate) fn bounded_reason(reason: String) -> String {
    match crate::text::bounded(&reason, MAX_REASON_CHARS) {
        std::borrow::Cow::Borrowed(_) => reason,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

/// For each position in `order`, how many records before it have the same (topic, partition, offset): 0 but in
/// hand-made events (Kafka never delivers a record twice in one batch), where each keeps its own dead letters.
pub(super) fn occurrences(records: &[Record<'_>], order: &[usize]) -> Vec<u32> {
    let mut seen: HashMap<(&str, i32, i64), u32> = HashMap::with_capacity(order.len());
    order
        .iter()
        .map(|&i| {
            let r = &records[i];
            let n = seen
                .entry((r.topic.as_ref(), r.partition, r.offset))
                .or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect()
}
