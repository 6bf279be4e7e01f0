//! The dead-letter table: every record that cannot be applied, with its reason, written in the same
//! transaction as the batch's changes, so that a committed batch never loses a record unseen.
//!
//! Rows are keyed by Kafka coordinates, so replaying a batch rewrites the same rows instead of adding copies.

use sea_orm::DbBackend;
use sea_orm::sea_query::{Alias, ColumnDef, Expr, TableCreateStatement, Value as SqlValue};

use super::table::{self, TableDef};

pub const DEFAULT_TABLE: &str = "msk_sync_dead_letter";

/// One record (or one message of a multi-message record) that was not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Which message of the record (Avro container files carry several); 0 otherwise.
    pub index: u32,
    pub timestamp: i64,
    /// Key and value exactly as the event carried them (base64), so nothing is lost in decoding.
    pub key_base64: Option<String>,
    pub value_base64: Option<String>,
    pub error: String,
}

const COLUMNS: [&str; 8] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "message_index",
    "kafka_timestamp",
    "key_base64",
    "value_base64",
    "error",
];

pub(crate) fn table_def(name: &str) -> TableDef {
    TableDef {
        name: name.to_string(),
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        key: vec![0, 1, 2, 3],
    }
}

pub(crate) fn create_table(name: &str, backend: DbBackend) -> TableCreateStatement {
    // Key, value and reason are kept whatever their size: a record is never refused here.
    let text = |n: &str| table::long_text(&mut ColumnDef::new(Alias::new(n)), backend).to_owned();
    let col = |n: &str| ColumnDef::new(Alias::new(n));
    table::create_table(
        name,
        vec![
            col("kafka_topic").string().not_null().to_owned(),
            col("kafka_partition").integer().not_null().to_owned(),
            col("kafka_offset").big_integer().not_null().to_owned(),
            col("message_index").integer().not_null().to_owned(),
            col("kafka_timestamp").big_integer().not_null().to_owned(),
            text("key_base64").null().to_owned(),
            text("value_base64").null().to_owned(),
            text("error").not_null().to_owned(),
            // Never updated by a replay, so the table stays the same when a batch is applied twice.
            col("created_at")
                .timestamp()
                .not_null()
                .default(Expr::current_timestamp())
                .to_owned(),
        ],
        &COLUMNS[..4],
    )
}

impl DeadLetter {
    pub(crate) fn row(&self) -> Vec<SqlValue> {
        vec![
            self.topic.clone().into(),
            self.partition.into(),
            self.offset.into(),
            SqlValue::Int(Some(self.index as i32)),
            self.timestamp.into(),
            SqlValue::String(self.key_base64.clone()),
            SqlValue::String(self.value_base64.clone()),
            self.error.clone().into(),
        ]
    }
}
