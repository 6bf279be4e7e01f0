//! One batch through every stage: order → decode → route changeType → map → collapse, then apply.
//!
//! [`Pipeline`] is the pure part (no I/O, built once per function instance); [`Handler`] adds the database
//! and is what Lambda, `replay` and the local runner call.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::change::{Change, route};
use crate::decode::{Codec, DecodeError, Decoded};
use crate::event::{MskEvent, Record};
use crate::filter::Filter;
use crate::mask::MaskRule;
use crate::message::Message;
use crate::report::{BatchReport, Outcome, RecordResult, STATUS_DEAD_LETTER, STATUS_OK};
use crate::sync::{Changes, DeadLetter, Mapping, Meta, Origin, PreflightError, Sink};
use crate::topics::TopicRouter;

/// The compiled, database-free part of a function: codec, routing and mappings.
#[derive(Debug)]
pub struct Pipeline {
    codec: Codec,
    mappings: ByTopic<Arc<dyn Mapping>>,
    filters: ByTopic<Filter>,
    masks: ByTopic<MaskRule>,
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
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The message as it would be mapped: decoded, with Kafka fields injected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a Message<'a>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A batch turned into writes, not yet applied. [`Origin::record`] indexes the event's `records`.
#[derive(Debug)]
pub struct Plan {
    /// One entry per mapping, in mapping order.
    pub changes: Vec<Changes>,
    pub dead_letters: Vec<DeadLetter>,
    pub report: BatchReport,
    /// Indices of the event's records in the order they were applied.
    pub order: Vec<usize>,
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
        })
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

    pub fn mappings(&self) -> &[Arc<dyn Mapping>] {
        &self.mappings.items
    }

    /// Runs every stage but the database. Only a transient failure (one that a retry may cure) is an `Err`;
    /// everything wrong with a record is in the plan's dead letters.
    ///
    /// Each record's key and value are decoded into two buffers that the whole batch reuses, and its messages
    /// borrow from them until they are mapped to rows: nothing of a message outlives its record.
    pub fn plan(
        &self,
        event: &MskEvent<'_>,
        inspect: &mut dyn FnMut(Inspection<'_>),
    ) -> Result<Plan, DecodeError> {
        let mut report = BatchReport {
            status: STATUS_OK,
            received: event.record_count(),
            ..BatchReport::default()
        };
        // A function with one sync (the usual) gets room for the whole batch at once; with several, each grows.
        let room = match self.mappings.items.len() {
            1 => event.record_count(),
            _ => 0,
        };
        let mut changes: Vec<Changes> = self
            .mappings
            .items
            .iter()
            .map(|m| Changes::with_capacity(m.table().key.clone(), room).with_version(m.version()))
            .collect();
        let mut dead_letters = Vec::new();
        let order = event.order();
        let decoder = self.codec.decoder();
        let (mut key_buf, mut value_buf) = (Vec::new(), Vec::new());
        for &at in &order {
            let record = &event.records[at];
            let origin = |index| Origin { record: at, index };
            let key_value = match decoder.decode_key(record.key.as_deref(), &mut key_buf) {
                Ok(v) => v,
                Err(DecodeError::Permanent(reason)) => {
                    report.messages += 1;
                    reject(record, 0, reason, &mut report, &mut dead_letters);
                    continue;
                }
                Err(transient) => return Err(transient),
            };
            let key: Option<Cow<'_, str>> = key_value.as_ref().map(|v| match v {
                Message::String(s) => Cow::Borrowed(s.as_ref()),
                other => Cow::Owned(other.to_json_string()),
            });
            let target = self.mappings.router.route(&record.topic);
            let meta = Meta {
                record,
                key: key.as_deref(),
                key_value: key_value.as_ref(),
            };
            let messages = match (&record.value, target) {
                (_, None) => Err(format!("no sync is configured for topic {}", record.topic)),
                (None, Some(t)) => {
                    // A tombstone has no message: it can only delete by record key.
                    report.messages += 1;
                    let mapping = &self.mappings.items[t];
                    let deleted = mapping.tombstone_key(&meta).and_then(|k| {
                        let version = mapping.delete_version(&Message::Null, &meta)?;
                        changes[t].delete_at(k, version, origin(0));
                        Ok(())
                    });
                    let (outcome, reason) = match &deleted {
                        Ok(()) => (Outcome::Delete, None),
                        Err(e) => (Outcome::DeadLetter, Some(e.as_str())),
                    };
                    inspect(Inspection {
                        topic: &record.topic,
                        partition: record.partition,
                        offset: record.offset,
                        index: 0,
                        key: key.as_deref(),
                        outcome,
                        sync: Some(mapping.name()),
                        reason,
                        message: None,
                    });
                    if let Err(e) = deleted {
                        reject(record, 0, e, &mut report, &mut dead_letters);
                    }
                    continue;
                }
                (Some(value), Some(_)) => match decoder.decode_base64(
                    value,
                    record.value_schema_metadata.as_deref(),
                    &mut value_buf,
                ) {
                    Ok(messages) => Ok(messages),
                    Err(DecodeError::Permanent(e)) => Err(e),
                    Err(transient) => return Err(transient),
                },
            };
            let Decoded { messages, schema } = match messages {
                Ok(m) => m,
                Err(reason) => {
                    report.messages += 1;
                    inspect(Inspection {
                        topic: &record.topic,
                        partition: record.partition,
                        offset: record.offset,
                        index: 0,
                        key: key.as_deref(),
                        outcome: Outcome::DeadLetter,
                        sync: None,
                        reason: Some(&reason),
                        message: None,
                    });
                    reject(record, 0, reason, &mut report, &mut dead_letters);
                    continue;
                }
            };
            let Some(t) = target else { continue };
            let mapping = &self.mappings.items[t];
            let filter = self.filters.get(&record.topic);
            let mask = self
                .masks
                .get(&record.topic)
                .map(|rule| rule.mask_for(schema.as_deref()));
            for (index, mut message) in messages.into_iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                report.messages += 1;
                inject(&mut message, record);
                if filter.is_some_and(|f| !f.passes(&message)) {
                    report.note(RecordResult {
                        topic: record.topic.to_string(),
                        partition: record.partition,
                        offset: record.offset,
                        index,
                        status: STATUS_OK,
                        outcome: Outcome::Filtered,
                        reason: None,
                    });
                    inspect(Inspection {
                        topic: &record.topic,
                        partition: record.partition,
                        offset: record.offset,
                        index,
                        key: key.as_deref(),
                        outcome: Outcome::Filtered,
                        sync: Some(mapping.name()),
                        reason: None,
                        message: None,
                    });
                    continue;
                }
                // Before mapping and before anything is logged or shown: a removed field goes nowhere.
                let masked = match &mask {
                    None => Ok(()),
                    Some(Ok(mask)) => {
                        mask.apply(&mut message);
                        Ok(())
                    }
                    Some(Err(reason)) => Err(reason.clone()),
                };
                let shown = masked.is_ok();
                let result =
                    masked
                        .and_then(|()| route(&message))
                        .and_then(|change| match change {
                            Change::Upsert => {
                                changes[t].upsert(mapping.row(&message, &meta)?, origin(index));
                                Ok(Outcome::Upsert)
                            }
                            Change::Delete => {
                                let key = mapping.key(&message, &meta)?;
                                let version = mapping.delete_version(&message, &meta)?;
                                changes[t].delete_at(key, version, origin(index));
                                Ok(Outcome::Delete)
                            }
                        });
                let (outcome, reason) = match &result {
                    Ok(o) => (*o, None),
                    Err(e) => (Outcome::DeadLetter, Some(e.as_str())),
                };
                inspect(Inspection {
                    topic: &record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    index,
                    key: key.as_deref(),
                    outcome,
                    sync: Some(mapping.name()),
                    reason,
                    // A message that could not be masked is never shown.
                    message: shown.then_some(&message),
                });
                if let Err(e) = result {
                    reject(record, index, e, &mut report, &mut dead_letters);
                }
            }
        }
        report.superseded = changes.iter().map(Changes::superseded).sum();
        Ok(Plan {
            changes,
            dead_letters,
            report,
            order,
        })
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

fn reject(
    record: &Record<'_>,
    index: u32,
    reason: String,
    report: &mut BatchReport,
    dead: &mut Vec<DeadLetter>,
) {
    note_dead_letter(report, record, index, &reason);
    dead.push(dead_letter(record, index, reason));
}

fn note_dead_letter(report: &mut BatchReport, record: &Record<'_>, index: u32, reason: &str) {
    report.note(RecordResult {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        index,
        status: STATUS_DEAD_LETTER,
        outcome: Outcome::DeadLetter,
        reason: Some(reason.to_string()),
    });
}

fn dead_letter(record: &Record<'_>, index: u32, reason: String) -> DeadLetter {
    DeadLetter {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        index,
        timestamp: record.timestamp,
        key_base64: record.key.as_deref().map(str::to_string),
        value_base64: record.value.as_deref().map(str::to_string),
        error: reason,
    }
}

/// Why a batch was not processed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The invocation itself is wrong (not an MSK event): retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// Database or schema registry trouble: nothing was written; retry the whole batch.
    #[error("transient failure, batch not applied (retry it): {0}")]
    Transient(String),
    /// The database does not match the config (found by the preflight): nothing was applied or
    /// dead-lettered; retrying cannot help until a person fixes the table or the config.
    #[error("misconfigured, nothing applied: {0}")]
    Misconfigured(String),
}

/// The pipeline plus the database: the one handler behind every way in.
#[derive(Debug)]
pub struct Handler {
    pipeline: Pipeline,
    sink: Sink,
}

impl Handler {
    pub fn new(pipeline: Pipeline, sink: Sink) -> Self {
        Self { pipeline, sink }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Any JSON payload (tests, and callers that hold a `Value`).
    pub async fn handle_json(&self, payload: Value) -> Result<BatchReport, HandlerError> {
        let event =
            MskEvent::from_value(payload).map_err(|e| HandlerError::Invalid(e.to_string()))?;
        self.handle(&event).await
    }

    pub async fn handle(&self, event: &MskEvent<'_>) -> Result<BatchReport, HandlerError> {
        let source = event.event_source.as_ref();
        self.sink.preflight().await.map_err(|e| match e {
            PreflightError::Misconfigured(_) => {
                tracing::error!(event_source = %source, records = event.record_count(), error = %e, "misconfigured: the database does not match the config");
                HandlerError::Misconfigured(e.to_string())
            }
            PreflightError::Database(_) => {
                tracing::warn!(event_source = %source, records = event.record_count(), error = %e, "preflight failed");
                HandlerError::Transient(e.to_string())
            }
        })?;
        self.pipeline.prepare(event).await.map_err(|e| {
            tracing::warn!(event_source = %source, records = event.record_count(), error = %e, "batch not decoded");
            HandlerError::Transient(e.to_string())
        })?;
        let Plan {
            changes,
            dead_letters,
            mut report,
            order,
        } = self
            .pipeline
            .plan(event, &mut |_| {})
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        let records = &event.records;
        let reject = |origin: Origin, reason: &str| {
            dead_letter(&records[origin.record], origin.index, reason.to_string())
        };
        let applied = self.sink.apply(&changes, &dead_letters, &reject).await.map_err(|e| {
            tracing::warn!(event_source = %source, records = report.received, error = %e, "batch rolled back");
            HandlerError::Transient(e.to_string())
        })?;
        report.upserted = applied.upserted;
        report.deleted = applied.deleted;
        for origin in &applied.stale {
            let record = &records[origin.record];
            report.note(RecordResult {
                topic: record.topic.to_string(),
                partition: record.partition,
                offset: record.offset,
                index: origin.index,
                status: STATUS_OK,
                outcome: Outcome::Stale,
                reason: None,
            });
        }
        if !applied.rejected.is_empty() || !applied.stale.is_empty() {
            for (origin, reason) in &applied.rejected {
                note_dead_letter(&mut report, &records[origin.record], origin.index, reason);
            }
            // Keep the report's list in batch order: the refused rows were found after the others.
            let position: std::collections::HashMap<(&str, i32, i64), usize> = order
                .iter()
                .enumerate()
                .map(|(i, &r)| {
                    let r = &records[r];
                    ((r.topic.as_ref(), r.partition, r.offset), i)
                })
                .collect();
            report.records.sort_by_key(|r| {
                (
                    position
                        .get(&(r.topic.as_str(), r.partition, r.offset))
                        .copied(),
                    r.index,
                )
            });
        }
        tracing::info!(
            event_source = %source,
            records = report.received,
            upserted = report.upserted,
            deleted = report.deleted,
            superseded = report.superseded,
            filtered = report.filtered,
            dead_lettered = report.dead_lettered,
            stale = report.stale,
            status = report.status,
            "batch applied"
        );
        for r in &report.records {
            if r.outcome == Outcome::DeadLetter {
                // Coordinates and reason only: reasons never quote message values.
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, index = r.index,
                    reason = r.reason.as_deref().unwrap_or_default(), "record dead-lettered");
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_leave_room_for_exactly_the_injected_fields() {
        let mut message = Message::from(serde_json::json!({"a": 1}));
        let record = Record::default();
        inject(&mut message, &record);
        let added = message.as_object().map_or(0, |m| m.len()) - 1;
        assert_eq!(added, crate::decode::INJECTED_FIELDS);
    }
}
