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
    /// Messages decoded from them (a record that did not decode, or holds no message, counts as one).
    /// `messages = upserted + deleted + superseded + filtered + empty + deadLettered`.
    pub messages: usize,
    /// Rows upserted / deleted, after collapsing the batch to one change per entity key.
    pub upserted: usize,
    pub deleted: usize,
    /// Messages whose change a later message for the same entity in the batch replaced.
    pub superseded: usize,
    /// Messages the emit filter dropped; not an error.
    pub filtered: usize,
    /// Records whose value held no message (an Avro container file with no record): nothing to apply.
    #[serde(default)]
    pub empty: usize,
    pub dead_lettered: usize,
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
    /// Where the record stands in the batch's order, so that results found late (rows the database refused)
    /// are put in their place by a plain sort.
    #[serde(skip)]
    pub(crate) position: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Upsert,
    Delete,
    Filtered,
    /// The record's value held no message (an Avro container file with no record).
    Empty,
    DeadLetter,
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

impl BatchReport {
    /// Counts a message that was not applied and lists it. Applied messages are counted from what the
    /// database wrote, after collapsing.
    pub(crate) fn note(&mut self, result: RecordResult) {
        self.status = self.status.max(result.status);
        match result.outcome {
            Outcome::Filtered => self.filtered += 1,
            Outcome::Empty => self.empty += 1,
            Outcome::DeadLetter => self.dead_lettered += 1,
            Outcome::Upsert | Outcome::Delete => return,
        }
        self.records.push(result);
    }

    /// Puts the listed messages in batch order (message order within a record).
    pub(crate) fn sort(&mut self) {
        self.records.sort_by_key(|r| (r.position, r.index));
    }
}
