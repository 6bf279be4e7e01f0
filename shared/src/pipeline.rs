//! One batch through every stage: order → decode → route changeType → map → collapse, then apply.
//!
//! [`Pipeline`] is the pure part (no I/O, built once per function instance); [`Handler`] adds the database
//! and is what Lambda, `replay` and the local runner call.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use sea_orm::sea_query::Value as SqlValue;
use serde::Serialize;
use serde_json::Value;

use crate::change::{Change, ChangeRule};
use crate::decode::Envelope;
use crate::decode::avro::Budget;
use crate::decode::{Codec, DecodeError, Decoded, Decoder};
use crate::event::{MskEvent, Record};
use crate::filter::Filter;
use crate::mask::{Mask, MaskRule};
use crate::message::Message;
use crate::report::{BatchReport, Outcome, RecordResult, STATUS_OK};
use crate::sync::{
    Applied, ApplyError, Changes, DeadLetter, Mapping, Meta, Origin, PreflightError, Sink,
    dead_letter,
};
use crate::topics::TopicRouter;

mod batch;
mod handler;

pub use crate::threads::MAX_THREADS;
use batch::{Batch, occurrences};
pub(crate) use batch::{bounded_reason, note, note_applied};
use handler::DEBEZIUM;
pub use handler::{DEBEZIUM_TOMBSTONE, Handler, HandlerError};

/// The compiled, database-free part of a function: codec, routing and mappings.
#[derive(Debug)]
pub struct Pipeline {
    codec: Codec,
    mappings: ByTopic<Arc<dyn Mapping>>,
    filters: ByTopic<Filter>,
    masks: ByTopic<MaskRule>,
    /// The most threads [`Pipeline::plan_batch`] decodes a batch on.
    threads: usize,
}

/// Things chosen by topic (syncs, filters, masks): exact names, then globs in order, then `*`.
#[derive(Debug)]
struct ByTopic<T> {
    router: TopicRouter,
    items: Vec<T>,
}

impl<T> ByTopic<T> {
    fn new(items: Vec<(Vec<String>, T)>) -> Result<Self, Vec<String>> {
        let router = TopicRouter::new(
            items
                .iter()
                .enumerate()
                .flat_map(|(i, (p, _))| p.iter().map(move |t| (i, t.as_str()))),
        )?;
        Ok(Self {
            router,
            items: items.into_iter().map(|(_, t)| t).collect(),
        })
    }

    fn get(&self, topic: &str) -> Option<&T> {
        self.router.route(topic).map(|i| &self.items[i])
    }
}

/// What happened to one message, for `replay --dry-run`.
#[derive(Debug, Serialize)]
pub struct Inspection<'a> {
    /// The record's topic.
    pub topic: &'a str,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Which message of the record (a container file holds several); omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub index: u32,
    /// The record key as text, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// What happened to the message.
    pub outcome: Outcome,
    /// The sync that received it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<&'a str>,
    /// Why it was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// How the envelope's change was read (Debezium: the op and the image applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
    /// The message as it would be mapped: decoded, with Kafka fields injected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a Message<'a>>,
    /// Where its record stands in the batch's order ([`Origin::record`]).
    #[serde(skip)]
    pub position: usize,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A batch turned into writes, not yet applied. It borrows its dead letters' records from the event.
#[derive(Debug)]
pub struct Plan<'e> {
    /// One entry per mapping, in mapping order.
    pub changes: Vec<Changes>,
    /// In batch order, each record's raw data on its first dead letter only.
    pub dead_letters: Vec<DeadLetter<'e>>,
    /// The report of the batch so far (the database's part is added when it is applied).
    pub report: BatchReport,
    /// Indices of the event's records in the order they were applied: [`Origin::record`] is a position in it.
    pub order: Vec<usize>,
}

/// What happened to one message: the answer of the per-message steps, settled by [`Batch::settle`].
#[derive(Debug, Clone)]
enum Fate {
    /// A row for the sync at this index of the pipeline's mappings.
    Upsert(usize, Vec<SqlValue>),
    /// The key of an entity the sync at this index deletes.
    Delete(usize, Vec<SqlValue>),
    /// The emit filter dropped it.
    Filtered,
    /// Not a change to apply (a Debezium truncate, heartbeat, schema change or tombstone): counted as
    /// filtered, with this reason.
    Skipped(&'static str),
    /// The record's value held no message: nothing to apply, but the record is accounted for.
    Empty,
    /// It can never be applied, for this reason.
    DeadLetter(String),
}

impl Fate {
    fn outcome(&self) -> Outcome {
        match self {
            Fate::Upsert(..) => Outcome::Upsert,
            Fate::Delete(..) => Outcome::Delete,
            Fate::Filtered | Fate::Skipped(_) => Outcome::Filtered,
            Fate::Empty => Outcome::Empty,
            Fate::DeadLetter(_) => Outcome::DeadLetter,
        }
    }
}

/// Which message a fate is about, and what `inspect` may show of it.
#[derive(Clone, Copy)]
struct Seen<'s, 'e> {
    record: &'e Record<'e>,
    at: Origin,
    key: Option<&'s str>,
    /// The sync it was routed to, by its index in the pipeline's mappings.
    sync: Option<usize>,
    /// The message as it would be mapped; `None` when it was not decoded, filtered, or could not be masked.
    message: Option<&'s Message<'s>>,
}

impl<'e> Seen<'_, 'e> {
    /// A record's first (or only) message, before anything is known of it.
    fn new(record: &'e Record<'e>, position: usize) -> Self {
        Seen {
            record,
            at: Origin {
                record: position,
                index: 0,
            },
            key: None,
            sync: None,
            message: None,
        }
    }
}

/// A record opened: its messages for the sync at this index, or its fate as a whole, with the sync it was
/// routed to when it got that far.
enum Opened<'m> {
    Messages(usize, Decoded<'m>),
    Settled(Option<usize>, Fate),
}

/// Where the per-record steps put each message's fate ([`Pipeline::work`]): straight into the batch, shown to
/// `inspect` ([`Direct`]), or kept for settling later in batch order ([`Collect`], on a worker thread).
trait Settle<'e> {
    /// One message's fate.
    fn message(&mut self, seen: Seen<'_, 'e>, fate: Fate);

    /// A fate of a whole record: once, or once for each of its `only` (selected) messages.
    fn record(&mut self, only: Option<&[u32]>, seen: Seen<'_, 'e>, fate: Fate) {
        match only {
            None => self.message(seen, fate),
            Some(indices) => {
                for &index in indices {
                    let at = Origin { index, ..seen.at };
                    self.message(Seen { at, ..seen }, fate.clone());
                }
            }
        }
    }
}

/// Fates settled as they come, on the planning thread.
struct Direct<'b, 'e, 'i> {
    batch: &'b mut Batch<'e>,
    inspect: &'i mut dyn FnMut(Inspection<'_>),
}

impl<'e> Settle<'e> for Direct<'_, 'e, '_> {
    fn message(&mut self, seen: Seen<'_, 'e>, fate: Fate) {
        self.batch.settle(seen, fate, self.inspect);
    }
}

/// A message's fate as a worker thread keeps it: all but what only `inspect` would show.
struct Settled<'e> {
    record: &'e Record<'e>,
    at: Origin,
    sync: Option<usize>,
    fate: Fate,
}

/// Fates kept in the order they came, to be settled in batch order once every thread is done.
struct Collect<'e>(Vec<Settled<'e>>);

impl<'e> Settle<'e> for Collect<'e> {
    fn message(&mut self, seen: Seen<'_, 'e>, fate: Fate) {
        self.0.push(Settled {
            record: seen.record,
            at: seen.at,
            sync: seen.sync,
            fate,
        });
    }
}

/// The fewest records worth a thread of their own: below this, handing them over costs more than it saves.
const MIN_RECORDS_PER_THREAD: usize = 512;

/// Records per thread in one window of [`Pipeline::plan_batch`]: the fates of a window's records wait to be
/// settled (each with its row, ~250 bytes), so a window bounds them at a few MB, whatever the file `replay`
/// reads; each window's runs go to threads that stay up between windows and batches (`crate::threads`).
const WINDOW_PER_THREAD: usize = 8_192;

/// How [`Pipeline::plan_batch`] divides a batch among at most `threads` threads: runs of positions in
/// `order`, each about the same bytes of keys and values (a container file can be a thousand records' worth),
/// each at least [`MIN_RECORDS_PER_THREAD`] records.
fn runs(event: &MskEvent<'_>, order: &[usize], threads: usize) -> Vec<std::ops::Range<usize>> {
    let n = threads.min(order.len() / MIN_RECORDS_PER_THREAD).max(1);
    if n == 1 {
        return std::iter::once(0..order.len()).collect();
    }
    let size = |i: usize| {
        let r = &event.records[i];
        // A record's fixed cost (its fields, its row) counts for something even when it has no value.
        64 + r.key.as_deref().map_or(0, str::len) + r.value.as_deref().map_or(0, str::len)
    };
    let total: usize = order.iter().map(|&i| size(i)).sum();
    let mut runs = Vec::with_capacity(n);
    let (mut start, mut so_far) = (0, 0);
    for (position, &i) in order.iter().enumerate() {
        so_far += size(i);
        let done = runs.len() + 1;
        if done < n && so_far >= total / n * done && position + 1 - start >= MIN_RECORDS_PER_THREAD
        {
            runs.push(start..position + 1);
            start = position + 1;
        }
    }
    runs.push(start..order.len());
    runs
}

/// A decoder's answer by failure class: `Err` (transient) fails the batch, `Ok(Err(reason))` dead-letters.
fn permanent<T>(decoded: Result<T, DecodeError>) -> Result<Result<T, String>, DecodeError> {
    match decoded {
        Ok(v) => Ok(Ok(v)),
        Err(DecodeError::Permanent(reason)) => Ok(Err(reason)),
        Err(transient) => Err(transient),
    }
}

impl Pipeline {
    /// `mappings[i]` receives the topics `patterns[i]` match.
    pub fn new(
        codec: Codec,
        mappings: Vec<(Vec<String>, Arc<dyn Mapping>)>,
    ) -> Result<Self, Vec<String>> {
        Ok(Self {
            codec,
            mappings: ByTopic::new(mappings)?,
            filters: ByTopic::new(Vec::new())?,
            masks: ByTopic::new(Vec::new())?,
            threads: crate::event::available_threads(),
        })
    }

    /// At most `threads` threads for [`Pipeline::plan_batch`] (at least 1). The default is the CPUs this
    /// process may use (`codec.threads` sets it). Lambda shows a function two CPUs up to 3,008 MB and six at
    /// 10,240 MB but grants CPU time by memory (one CPU's worth at 1,769 MB), so a second thread pays off above
    /// that; below, the threads share one CPU's time and cost little more than one.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.clamp(1, MAX_THREADS);
        self
    }

    /// The most threads [`Pipeline::plan_batch`] decodes a batch on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Emit filters by topic pattern; a topic no pattern matches passes every message.
    pub fn with_filters(
        mut self,
        filters: Vec<(Vec<String>, Filter)>,
    ) -> Result<Self, Vec<String>> {
        self.filters = ByTopic::new(filters)?;
        Ok(self)
    }

    /// Masks by topic pattern; a topic no pattern matches is not masked.
    pub fn with_masks(mut self, masks: Vec<(Vec<String>, MaskRule)>) -> Result<Self, Vec<String>> {
        self.masks = ByTopic::new(masks)?;
        Ok(self)
    }

    /// The I/O a batch needs before it can be planned: schemas from the registry.
    pub async fn prepare(&self, event: &MskEvent<'_>) -> Result<(), DecodeError> {
        self.codec.prefetch(event).await
    }

    /// The codec values and keys are decoded with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The mappings, in sync order.
    pub fn mappings(&self) -> &[Arc<dyn Mapping>] {
        &self.mappings.items
    }

    /// The change rule of the sync at `index` of [`Pipeline::mappings`]: Debezium's `op` under
    /// `codec.envelope = "debezium"`, else the sync's own.
    fn change_rule(&self, index: usize) -> &ChangeRule {
        match self.codec.envelope() {
            Some(Envelope::Debezium) => &DEBEZIUM,
            _ => self.mappings.items[index].change(),
        }
    }

    /// How each sync reads what a message asks for, in words (`config check`).
    pub fn change_rules(&self) -> Vec<String> {
        (0..self.mappings.items.len())
            .map(|i| {
                format!(
                    "sync {}: {}",
                    self.mappings.items[i].name(),
                    self.change_rule(i).describe()
                )
            })
            .collect()
    }

    /// Runs every stage but the database. Only a transient failure (one that a retry may cure) is an `Err`;
    /// everything wrong with a record is in the plan's dead letters.
    ///
    /// Each record's key and value are decoded into two buffers that the whole batch reuses, and its messages
    /// borrow from them until they are mapped to rows: nothing of a message outlives its record.
    pub fn plan<'e>(
        &self,
        event: &'e MskEvent<'_>,
        inspect: &mut dyn FnMut(Inspection<'_>),
    ) -> Result<Plan<'e>, DecodeError> {
        self.plan_selected(event, None, inspect)
    }

    /// [`Pipeline::plan`] without inspecting the messages, on as many threads as [`Pipeline::threads`] allows
    /// for a batch this size: what the handler runs. The plan is the one [`Pipeline::plan`] makes.
    ///
    /// The batch's records are taken in windows of [`WINDOW_PER_THREAD`] records a thread. Each thread takes
    /// a run of a window's records in order (about the same bytes each) and decodes, filters, masks and maps
    /// them with its own buffers and decoder; what becomes of each message is then settled in batch order on
    /// this thread, so the collapse per key, the report and the dead letters are the same as one thread's, and
    /// what waits to be settled is one window's, not the batch's. Each thread's decoder draws on its own copy
    /// of the batch's budget for container files and Protobuf messages; when the draws together go past the
    /// budget, which one thread would have refused part way, the batch is planned again on one thread, so that
    /// the same records are refused.
    pub fn plan_batch<'e>(&self, event: &'e MskEvent<'_>) -> Result<Plan<'e>, DecodeError> {
        let order = event.order();
        if runs(event, &order, self.threads).len() < 2 {
            return self.plan_in_order(event, order, None, &mut |_| {});
        }
        // No more threads (nor decoders) than the batch can give work to.
        let threads = self.threads.min(order.len() / MIN_RECORDS_PER_THREAD);
        let first = self.codec.decoder();
        let mut decoders: Vec<Decoder<'_>> = (0..threads).map(|_| first.fresh()).collect();
        let mut batch = Batch::new(&self.mappings.items, event.record_count());
        let mut direct = Direct {
            batch: &mut batch,
            inspect: &mut |_| {},
        };
        let window = WINDOW_PER_THREAD * threads;
        for start in (0..order.len()).step_by(window) {
            let end = order.len().min(start + window);
            let runs = runs(event, &order[start..end], threads);
            let order = &order;
            // The first run on this thread, each other on a pool thread (crate::threads).
            let jobs: Vec<_> = runs
                .iter()
                .zip(decoders.drain(..runs.len()))
                .map(|(run, decoder)| {
                    let run = start + run.start..start + run.end;
                    move || {
                        let settled = self.work_run(&decoder, event, order, run);
                        (decoder, settled)
                    }
                })
                .collect();
            let worked = crate::threads::all(self.threads, jobs);
            for (decoder, settled) in worked {
                decoders.push(decoder);
                for s in settled? {
                    let seen = Seen {
                        record: s.record,
                        at: s.at,
                        key: None,
                        sync: s.sync,
                        message: None,
                    };
                    direct.message(seen, s.fate);
                }
            }
        }
        let budgets: Vec<Budget> = decoders.iter().map(Decoder::budget).collect();
        if !Budget::fits_together(&budgets) {
            tracing::debug!(
                records = event.record_count(),
                "the batch's threads drew past its decode budget together: planning it on one thread"
            );
            return self.plan_in_order(event, order, None, &mut |_| {});
        }
        Ok(batch.finish(&event.records, order))
    }

    /// The records at `run` of `order`, each through every per-record step with `decoder`: what became of
    /// each message, to be settled in batch order.
    fn work_run<'e>(
        &self,
        decoder: &Decoder<'_>,
        event: &'e MskEvent<'_>,
        order: &[usize],
        run: std::ops::Range<usize>,
    ) -> Result<Vec<Settled<'e>>, DecodeError> {
        let mut out = Collect(Vec::with_capacity(run.len()));
        let mut bufs = (Vec::new(), Vec::new());
        for position in run {
            let record = &event.records[order[position]];
            self.work(decoder, record, position, None, &mut bufs, &mut out)?;
        }
        Ok(out.0)
    }

    /// [`Pipeline::plan`] of only some messages: `selected[i]` lists (ascending) the message indices of the
    /// event's record `i` to plan (`redrive`: the ones that were dead-lettered; the others were applied
    /// already). A record that fails as a whole settles each of its selected messages with that fate, and a
    /// selected message the record no longer holds is dead-lettered, so that every selected message gets
    /// exactly one fate. `None`: every message.
    pub fn plan_selected<'e>(
        &self,
        event: &'e MskEvent<'_>,
        selected: Option<&[Vec<u32>]>,
        inspect: &mut dyn FnMut(Inspection<'_>),
    ) -> Result<Plan<'e>, DecodeError> {
        self.plan_in_order(event, event.order(), selected, inspect)
    }

    /// [`Pipeline::plan_selected`] in an order [`MskEvent::order`] gave.
    fn plan_in_order<'e>(
        &self,
        event: &'e MskEvent<'_>,
        order: Vec<usize>,
        selected: Option<&[Vec<u32>]>,
        inspect: &mut dyn FnMut(Inspection<'_>),
    ) -> Result<Plan<'e>, DecodeError> {
        let mut batch = Batch::new(&self.mappings.items, event.record_count());
        let mut direct = Direct {
            batch: &mut batch,
            inspect,
        };
        let decoder = self.codec.decoder();
        let mut bufs = (Vec::new(), Vec::new());
        for (position, &i) in order.iter().enumerate() {
            let only: Option<&[u32]> =
                selected.map(|s| s.get(i).map(Vec::as_slice).unwrap_or_default());
            let record = &event.records[i];
            self.work(&decoder, record, position, only, &mut bufs, &mut direct)?;
        }
        Ok(batch.finish(&event.records, order))
    }

    /// One record through every per-record step: its key decoded, its value opened, each of its messages (the
    /// `only` ones, when redrive selects some) filtered, masked, routed and mapped, and each fate handed to
    /// `out`. `bufs` are the key and value buffers, reused from record to record.
    fn work<'e>(
        &self,
        decoder: &Decoder<'_>,
        record: &'e Record<'e>,
        position: usize,
        only: Option<&[u32]>,
        (key_buf, value_buf): &mut (Vec<u8>, Vec<u8>),
        out: &mut dyn Settle<'e>,
    ) -> Result<(), DecodeError> {
        let mut seen = Seen::new(record, position);
        let key_value = match permanent(decoder.decode_key(record.key.as_deref(), key_buf))? {
            Ok(key_value) => key_value,
            Err(reason) => {
                out.record(only, seen, Fate::DeadLetter(reason));
                return Ok(());
            }
        };
        let key = key_value.as_ref().map(key_text);
        seen.key = key.as_deref();
        let meta = Meta {
            record,
            key: key.as_deref(),
            key_value: key_value.as_ref(),
        };
        match self.open(decoder, &meta, value_buf)? {
            Opened::Messages(sync, decoded) => {
                seen.sync = Some(sync);
                self.settle_messages(decoder, out, sync, decoded, only, seen, &meta);
            }
            Opened::Settled(sync, fate) => {
                seen.sync = sync;
                out.record(only, seen, fate);
            }
        }
        Ok(())
    }

    /// Settles each message of a record decoded for `sync` (only the `only` ones when redrive selects some:
    /// a selected message the value no longer holds is dead-lettered).
    #[allow(clippy::too_many_arguments)]
    fn settle_messages<'e>(
        &self,
        decoder: &Decoder<'_>,
        out: &mut dyn Settle<'e>,
        sync: usize,
        Decoded { messages, schema }: Decoded<'_>,
        only: Option<&[u32]>,
        seen: Seen<'_, 'e>,
        meta: &Meta<'_>,
    ) {
        let (record, position) = (seen.record, seen.at.record);
        let filter = self.filters.get(&record.topic);
        let mask = self
            .masks
            .get(&record.topic)
            .map(|rule| rule.mask_for(schema.as_ref()));
        let held = messages.len();
        for (index, mut message) in messages.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            if only.is_some_and(|o| o.binary_search(&index).is_err()) {
                continue;
            }
            inject(&mut message, record);
            let fate = self.step(decoder, sync, &mut message, filter, mask.as_ref(), meta);
            // A message that was filtered out, or could not be masked, is never shown.
            let shown = !matches!(fate, Fate::Filtered) && !matches!(mask, Some(Err(_)));
            let at = Origin {
                record: position,
                index,
            };
            let message = shown.then_some(&message);
            out.message(
                Seen {
                    at,
                    message,
                    ..seen
                },
                fate,
            );
        }
        let gone = only
            .unwrap_or_default()
            .iter()
            .filter(|&&i| usize::try_from(i).is_ok_and(|i| i >= held));
        for &index in gone {
            let at = Origin {
                record: position,
                index,
            };
            let reason = format!(
                "message {index} is not in the record any more: its value decodes to {held} message(s)"
            );
            out.message(Seen { at, ..seen }, Fate::DeadLetter(reason));
        }
    }

    /// A record's sync and its value decoded into messages, or the fate of the whole record when it has no
    /// message to go on with: no sync for its topic, a tombstone, a value that does not decode, or holds none.
    fn open<'b>(
        &self,
        decoder: &'b Decoder<'_>,
        meta: &Meta<'_>,
        value_buf: &'b mut Vec<u8>,
    ) -> Result<Opened<'b>, DecodeError> {
        let record = meta.record;
        let Some(sync) = self.mappings.router.route(&record.topic) else {
            let reason = format!("no sync is configured for topic {}", record.topic);
            return Ok(Opened::Settled(None, Fate::DeadLetter(reason)));
        };
        let Some(value) = &record.value else {
            if self.codec.envelope() == Some(Envelope::Debezium) {
                // Debezium sends one after each delete, for log compaction: the delete before it applied.
                return Ok(Opened::Settled(
                    Some(sync),
                    Fate::Skipped(DEBEZIUM_TOMBSTONE),
                ));
            }
            // A tombstone has no message: it can only delete by record key.
            let mapping = &self.mappings.items[sync];
            // With a version column, the delete carries its version after the key ([`Changes::delete_at`]).
            let fate = match mapping.tombstone_key(meta).and_then(|mut key| {
                key.extend(mapping.delete_version(&Message::Null, meta)?);
                Ok(key)
            }) {
                Ok(key) => Fate::Delete(sync, key),
                Err(reason) => Fate::DeadLetter(reason),
            };
            return Ok(Opened::Settled(Some(sync), fate));
        };
        let metadata = record.value_schema_metadata.as_deref();
        Ok(
            match permanent(decoder.decode_base64(value, metadata, value_buf))? {
                Err(reason) => Opened::Settled(None, Fate::DeadLetter(reason)),
                Ok(decoded) if decoded.messages.is_empty() => {
                    Opened::Settled(Some(sync), Fate::Empty)
                }
                Ok(decoded) => Opened::Messages(sync, decoded),
            },
        )
    }

    /// One message through the emit filter, the mask, changeType routing and its sync's mapping. The row (or
    /// key) is charged against the batch's budget (`decoder`'s), the message measured before it is mapped:
    /// what would go past it is dead-lettered ([`crate::decode::memory`]).
    fn step(
        &self,
        decoder: &Decoder<'_>,
        sync: usize,
        message: &mut Message<'_>,
        filter: Option<&Filter>,
        mask: Option<&Result<Arc<Mask>, String>>,
        meta: &Meta<'_>,
    ) -> Fate {
        if filter.is_some_and(|f| !f.passes(message)) {
            return Fate::Filtered;
        }
        // Before mapping and before anything is logged or shown: a removed field goes nowhere.
        match mask {
            None => {}
            Some(Ok(mask)) => mask.apply(message),
            Some(Err(reason)) => return Fate::DeadLetter(reason.clone()),
        }
        let mapping = &self.mappings.items[sync];
        let fate = match self.change_rule(sync).route(message) {
            Ok(Change::Skip(reason)) => Ok(Fate::Skipped(reason)),
            Ok(Change::Upsert) => decoder
                .room_for(message)
                .and_then(|()| mapping.row(message, meta))
                .and_then(|row| decoder.charge_row(&row).map(|()| Fate::Upsert(sync, row))),
            Ok(Change::Delete) => mapping.key(message, meta).and_then(|mut key| {
                // With a version column, the delete carries its version after the key.
                key.extend(mapping.delete_version(message, meta)?);
                decoder.charge_row(&key)?;
                Ok(Fate::Delete(sync, key))
            }),
            Err(reason) => Err(reason),
        };
        fate.unwrap_or_else(Fate::DeadLetter)
    }
}

/// The record key as mappings and reports see it: a string as it is, any other key as compact JSON.
fn key_text<'k>(key: &'k Message<'_>) -> Cow<'k, str> {
    match key {
        Message::String(s) => Cow::Borrowed(s.as_ref()),
        other => Cow::Owned(other.to_json_string()),
    }
}

/// The fields bedrock adds to every message before mapping it. The decoders leave room for exactly this many
/// ([`crate::decode::INJECTED_FIELDS`]; a test keeps the two in step).
fn inject<'a>(message: &mut Message<'a>, record: &'a Record<'_>) {
    if let Message::Object(map) = message {
        map.insert("kafkaRecordTimestamp", Message::from(record.timestamp));
        map.insert("kafkaTopic", Message::from(record.topic.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine as _;
    use serde_json::json;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// `records` planet changes over three partitions, timestamps interleaved with jitter, and among them what
    /// a hostile producer sends: values that are not base64, not JSON, an unknown changeType, tombstones.
    fn mixed_event(records: usize, value: impl Fn(usize) -> String) -> MskEvent<'static> {
        let mut lists = vec![Vec::new(), Vec::new(), Vec::new()];
        for i in 0..records {
            let planet = (i * 7919) % 300;
            let p = planet % 3;
            let offset = lists[p].len();
            let value = match i {
                i if i % 97 == 0 => json!("!!! not base64"),
                i if i % 89 == 0 => json!(b64("{not json")),
                i if i % 83 == 0 => Value::Null,
                i => json!(value(i)),
            };
            lists[p].push(json!({
                "topic": "planets", "partition": p, "offset": offset,
                "timestamp": 1_764_000_000_000_i64 + (i as i64) * 3 + (i % 5) as i64,
                "timestampType": "CREATE_TIME", "key": b64(format!("p{planet}")), "value": value,
                "headers": []
            }));
        }
        let lists: serde_json::Map<String, Value> = lists
            .into_iter()
            .enumerate()
            .map(|(p, l)| (format!("planets-{p}"), Value::Array(l)))
            .collect();
        MskEvent::from_value(json!({"eventSource": "aws:kafka", "records": lists})).unwrap()
    }

    fn json_value(i: usize) -> String {
        let planet = (i * 7919) % 300;
        let change = match i {
            i if i % 31 == 0 => "EXPLODED",
            i if i % 10 == 0 => "DELETED",
            _ => "UPDATED",
        };
        b64(json!({"changeType": change, "planetUuid": format!("p{planet}"), "planetName": format!("n{i}")})
            .to_string())
    }

    fn pipeline(codec: &str) -> Pipeline {
        let config = crate::config::Config::from_toml(&format!(
            r#"{codec}
[[sync]]
topics = ["planets"]
table = "planet"
key = ["uuid"]
columns = [{{ name = "uuid", from = "key" }}, {{ name = "name", path = "$.planetName" }}]
"#
        ))
        .unwrap();
        config.compile(None).unwrap().pipeline
    }

    /// Everything a plan says, in a form two plans compare by: report, dead letters, the surviving change of
    /// each key by its origin, order.
    type Summary = (Value, Vec<String>, Vec<Vec<(Origin, bool)>>, Vec<usize>);

    fn summary(plan: &Plan<'_>) -> Summary {
        (
            serde_json::to_value(&plan.report).unwrap(),
            plan.dead_letters.iter().map(|d| format!("{d:?}")).collect(),
            plan.changes.iter().map(|c| c.origins().collect()).collect(),
            plan.order.clone(),
        )
    }

    #[test]
    fn a_batch_planned_on_threads_is_the_batch_planned_on_one() {
        // Four threads in one window; two threads over three windows (16,384 records each, the last short).
        for (records, threads) in [(5_000, 4), (WINDOW_PER_THREAD * 2 * 2 + 3_000, 2)] {
            let event = mixed_event(records, json_value);
            assert_eq!(runs(&event, &event.order(), threads).len(), threads);
            let alone = pipeline("")
                .with_threads(1)
                .plan(&event, &mut |_| {})
                .unwrap();
            let shared = pipeline("")
                .with_threads(threads)
                .plan_batch(&event)
                .unwrap();
            assert!(alone.report.dead_lettered > 100, "{:?}", alone.report);
            assert!(alone.report.superseded > 1_000, "{:?}", alone.report);
            assert_eq!(
                summary(&alone),
                summary(&shared),
                "{records} records, {threads} threads"
            );
        }
    }

    #[test]
    fn threads_are_at_least_one_and_at_most_max_threads() {
        assert_eq!(pipeline("").with_threads(0).threads(), 1);
        assert_eq!(pipeline("").with_threads(usize::MAX).threads(), MAX_THREADS);
        // A huge setting decodes a large batch as any other would (no overflow in the window size).
        let event = mixed_event(2_000, json_value);
        let plan = pipeline("")
            .with_threads(usize::MAX)
            .plan_batch(&event)
            .unwrap();
        assert_eq!(plan.report.received, 2_000);
    }

    #[test]
    fn runs_cover_the_order_once_by_bytes_and_small_batches_stay_on_one_thread() {
        let event = mixed_event(2_000, json_value);
        let order = event.order();
        for threads in 1..=6 {
            let runs = runs(&event, &order, threads);
            assert_eq!(runs.len(), threads.min(2_000 / MIN_RECORDS_PER_THREAD));
            assert_eq!(runs.first().unwrap().start, 0);
            assert_eq!(runs.last().unwrap().end, order.len());
            assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
            assert!(runs.iter().all(|r| r.len() >= MIN_RECORDS_PER_THREAD));
        }
        let small = mixed_event(MIN_RECORDS_PER_THREAD * 2 - 1, json_value);
        assert_eq!(runs(&small, &small.order(), 8).len(), 1);
    }

    /// A container file of one deflated block holding one planet and `pad` bytes of padding.
    fn padded_ocf(i: usize, pad: usize) -> String {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type": "record", "name": "P", "fields": [
                {"name": "planetName", "type": "string"}, {"name": "pad", "type": "string"}]}"#,
        )
        .unwrap();
        let codec = apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default());
        let mut writer = apache_avro::Writer::with_codec(&schema, Vec::new(), codec).unwrap();
        let record = apache_avro::types::Value::Record(vec![
            (
                "planetName".into(),
                apache_avro::types::Value::String(format!("n{i}")),
            ),
            (
                "pad".into(),
                apache_avro::types::Value::String("x".repeat(pad)),
            ),
        ]);
        writer.append_value(record).unwrap();
        b64(writer.into_inner().unwrap())
    }

    #[test]
    fn threads_that_draw_past_the_budget_together_refuse_what_one_thread_refuses() {
        // 2,100 files of ~5 KB inflated: ~10 MiB in all. Within 64 MiB every thread's draw fits; within 4 MiB
        // one thread refuses all but the first ~800 files, where four threads' copies of the budget would
        // each let their ~525 through.
        let event = mixed_event(2_100, |i| padded_ocf(i, 5_000));
        for (budget, refused) in [(64, false), (4, true)] {
            let codec = format!("[codec]\nvalue = \"avro-ocf\"\nmax_inflated_mib = {budget}\n");
            let alone = pipeline(&codec)
                .with_threads(1)
                .plan(&event, &mut |_| {})
                .unwrap();
            let shared = pipeline(&codec).with_threads(4).plan_batch(&event).unwrap();
            let over = alone
                .dead_letters
                .iter()
                .filter(|d| d.error.contains("max_inflated_mib"))
                .count();
            assert_eq!(over > 500, refused, "{budget} MiB: {over} refused");
            assert_eq!(summary(&alone), summary(&shared), "{budget} MiB");
        }
    }

    #[test]
    fn decoders_leave_room_for_exactly_the_injected_fields() {
        let mut message = Message::from(serde_json::json!({"a": 1}));
        let record = Record::default();
        inject(&mut message, &record);
        let added = message.as_object().map_or(0, |m| m.len()) - 1;
        assert_eq!(added, crate::decode::INJECTED_FIELDS);
    }
}
