//! The result of one batch: counts, and a line for every message that was not applied. It is also the Lambda
//! function's response.

use serde::{Deserialize, Serialize};

pub const STATUS_OK: u16 = 200;
/// A record kept in the dead-letter table (bedrock gives an unknown changeType this status).
pub const STATUS_DEAD_LETTER: u16 = 400;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchReport {
    /// The highest status of any message (200 when all were applied or filtered).
    pub status: u16,
    /// Records in the event.
    pub received: usize,
    /// Messages decoded from them (a record that did not decode counts as one).
    /// `messages = upserted + deleted + superseded + filtered + deadLettered + stale`.
    pub messages: usize,
    /// Rows upserted / deleted, after collapsing the batch to one change per entity key.
    pub upserted: usize,
    pub deleted: usize,
    /// Messages whose change a later message for the same entity in the batch replaced.
    pub superseded: usize,
    /// Messages the emit filter dropped; not an error.
    pub filtered: usize,
    pub dead_lettered: usize,
    /// Messages not applied because the row, or the memory of its delete, has a newer version (syncs with a
    /// version column only); each is listed in `records` with the outcome `stale`.
    #[serde(default)]
    pub stale: usize,
    /// Every message that was not applied, in batch order.
    pub records: Vec<RecordResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordResult {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Which message of the record; 0 for single-message records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    pub status: u16,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Upsert,
    Delete,
    Filtered,
    DeadLetter,
    /// Older than the row or its tombstone: not applied, not an error.
    Stale,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl BatchReport {
    pub(crate) fn note(&mut self, result: RecordResult) {
        self.status = self.status.max(result.status);
        match result.outcome {
            Outcome::Filtered => self.filtered += 1,
            Outcome::DeadLetter => self.dead_lettered += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Upsert | Outcome::Delete => return,
        }
        self.records.push(result);
    }
}
