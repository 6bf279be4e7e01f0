//! The result of one batch: counts, and a line for every message that was not applied. It is also the Lambda
//! function's response.

use serde::{Deserialize, Serialize};

/// The status of a message that was applied or filtered.
pub const STATUS_OK: u16 = 200;
/// A record kept in the dead-letter table (bedrock gives an unknown changeType this status).
pub const STATUS_DEAD_LETTER: u16 = 400;

/// What happened to a batch: counts per outcome, and the messages that were not applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchReport {
    /// The highest status of any message (200 when all were applied or filtered).
    pub status: u16,
    /// Records in the event.
    pub received: usize,
    /// Messages decoded from them (a record that did not decode, or holds no message, counts as one).
    /// `messages = upserted + deleted + superseded + filtered + empty + deadLettered + stale`.
    pub messages: usize,
    /// Rows upserted / deleted, after collapsing the batch to one change per entity key.
    pub upserted: usize,
    /// Rows deleted, likewise.
    pub deleted: usize,
    /// Messages whose change a later message for the same entity in the batch replaced.
    pub superseded: usize,
    /// Messages the emit filter dropped; not an error.
    pub filtered: usize,
    /// Records whose value held no message (an Avro container file with no record): nothing to apply.
    #[serde(default)]
    pub empty: usize,
    /// Messages kept in the dead-letter table instead of being applied.
    pub dead_lettered: usize,
    /// Messages not applied because the row, or the memory of its delete, has a newer version (syncs with a
    /// version column only); each is listed in `records` with the outcome `stale`.
    #[serde(default)]
    pub stale: usize,
    /// The messages that were not applied, in batch order: the first [`MAX_LISTED`] of them.
    pub records: Vec<RecordResult>,
    /// Messages not applied beyond the first [`MAX_LISTED`]: counted above, kept in the dead-letter table,
    /// but not listed here.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub unlisted: usize,
}

/// The most messages a report lists. One container file can hold tens of thousands of messages that all
/// fail; listing each would make the report (the Lambda response, at most 6 MB) grow past what Lambda
/// accepts, and a response Lambda refuses fails the batch on every retry: a blocked partition. The
/// dead-letter table holds every one of them.
pub const MAX_LISTED: usize = 1_000;

/// One message that was not applied, in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordResult {
    /// The record's topic.
    pub topic: String,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Which message of the record; 0 for single-message records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    /// 200 for a message that was not an error, 400 for a dead letter.
    pub status: u16,
    /// What happened to the message.
    pub outcome: Outcome,
    /// Why, for a message that was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the record stands in the batch's order, so that results found late (rows the database refused)
    /// are put in their place by a plain sort.
    #[serde(skip)]
    pub(crate) position: usize,
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Applied as an insert or update.
    Upsert,
    /// Applied as a delete.
    Delete,
    /// Dropped by the emit filter; not an error.
    Filtered,
    /// The record's value held no message (an Avro container file with no record).
    Empty,
    /// Kept in the dead-letter table.
    DeadLetter,
    /// Older than the row or its tombstone: not applied, not an error.
    Stale,
}

impl Outcome {
    /// The status of a message with this outcome (bedrock gives a dead-lettered one 400).
    pub fn status(self) -> u16 {
        match self {
            Outcome::DeadLetter => STATUS_DEAD_LETTER,
            _ => STATUS_OK,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

impl BatchReport {
    /// Counts a message that was not applied and lists it. Applied messages are counted from what the
    /// database wrote, after collapsing.
    pub(crate) fn note(&mut self, result: RecordResult) {
        self.status = self.status.max(result.status);
        match result.outcome {
            Outcome::Filtered => self.filtered += 1,
            Outcome::Empty => self.empty += 1,
            Outcome::DeadLetter => self.dead_lettered += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Upsert | Outcome::Delete => return,
        }
        if self.records.len() < MAX_LISTED {
            self.records.push(result);
        } else {
            self.unlisted += 1;
        }
    }

    /// Puts the listed messages in batch order (message order within a record), keeping the first
    /// [`MAX_LISTED`] (rows the database refused are noted after the others, past the limit too).
    pub(crate) fn sort(&mut self) {
        self.records.sort_by_key(|r| (r.position, r.index));
        if self.records.len() > MAX_LISTED {
            self.unlisted += self.records.len() - MAX_LISTED;
            self.records.truncate(MAX_LISTED);
        }
    }
}
