//! The dead-letter table: every message that cannot be applied, with its reason, written in the same
//! transaction as the batch's changes, so that a committed batch never loses a record unseen.
//!
//! One row per message, keyed by where it came from: `(kafka_topic, kafka_partition, kafka_offset,
//! record_occurrence, message_index)`. Replaying a batch rewrites the same rows instead of adding copies.
//!
//! - `record_occurrence` is 0 for the first record of a batch with these coordinates, 1 for the second, and so
//!   on in batch order. Kafka never delivers two records with the same coordinates in one batch, but a
//!   hand-made event can, and each of them keeps its own dead letters.
//! - `message_index` is the message's place in its record (an Avro container file holds several), else 0.
//! - `kafka_topic` is the topic itself whenever it is a topic Kafka allows (at most 249 characters, no control
//!   characters). Any other topic (longer, or with a NUL…) would not fit a key column on every database, so it
//!   gets a bounded stand-in: its first 180 characters (escaped), `…`, and the hex SHA-256 of the whole topic.
//!   The same topic always gets the same stand-in, so a replay rewrites the same rows; the full topic is in
//!   `kafka_topic_full`. A stand-in always contains `…`, which no topic kept as it is does.
//!
//! A record's raw data — `key_base64` and `value_base64` exactly as the event carried them, and
//! `kafka_topic_full` when the topic has a stand-in — is stored **once per record**, on its dead-letter row
//! with the lowest `message_index`. Every other row of the same record has them NULL and says in
//! `raw_message_index` which `message_index` holds them (NULL on the row that holds them; a tombstone's row has
//! a NULL value and a NULL `raw_message_index`). A container file of 40,000 messages that all fail thus stores
//! its value once, not 40,000 times: storage (and the memory the batch needs) grows with the batch's bytes.
//! A batch never deletes a row; `redrive` deletes the rows of the messages it applied and rewrites the others
//! of the same record in the same transaction, the first of them taking the raw data, so a
//! `raw_message_index` always points at a row that exists.
//!
//! Everything else `redrive` needs to rebuild the record exactly as the event carried it is kept with the raw
//! data: `headers` (the JSON text of the event's header list), `schema_metadata` (Lambda's
//! `valueSchemaMetadata` / `keySchemaMetadata`, as JSON) and, on every row, `timestamp_type`. `attempts` counts
//! how often the message was tried: 1 when it is first dead-lettered (a replay that dead-letters it again
//! keeps the count), plus one for each `redrive` that failed it again.
//!
//! Those four columns came after the first release: [`ADDED_LATER`] lists them, all nullable, and the preflight
//! adds them to an older table (`ALTER TABLE … ADD COLUMN`). A row written before has them NULL: no headers,
//! no timestamp type, no schema metadata known, one attempt.
//!
//! Writing a dead letter never fails on data: every text msk-sync writes here is escaped as a JSON string
//! escapes it (control characters such as NUL as `\u0000`, `\` as `\\`) — a base64 key or value never needs
//! it, a key or value that is not base64 is kept with only those escapes — and every column holds any length.

use std::borrow::Cow;

use sea_orm::DbBackend;
use sea_orm::sea_query::{Alias, ColumnDef, Expr, TableCreateStatement, Value as SqlValue};
use sha2::{Digest, Sha256};

use super::Origin;
use super::table::{self, TableDef};
use crate::event::Record;
use crate::text::escaped;

pub const DEFAULT_TABLE: &str = "msk_sync_dead_letter";

/// What msk-sync expects of a dead-letter column (the table it creates, and what the preflight checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// Text of up to [`TOPIC_COLUMN_CHARS`] characters (VARCHAR(255)): it is part of the primary key.
    KeyText,
    /// A 32-bit integer.
    Integer,
    /// A 64-bit integer.
    BigInteger,
    /// Text of any length (TEXT; LONGTEXT on MySQL / MariaDB).
    Text,
    /// A timestamp the database fills in (`DEFAULT CURRENT_TIMESTAMP`); msk-sync never writes it.
    Timestamp,
}

/// One column of the dead-letter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: ColumnKind,
    pub nullable: bool,
    /// Part of the primary key, in the order of [`COLUMNS`].
    pub key: bool,
}

const fn column(name: &'static str, kind: ColumnKind, nullable: bool, key: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
        key,
    }
}

/// Every column of the dead-letter table, in the order msk-sync writes them: the one list the table's
/// creation, its writes and the preflight read. `created_at` (last) is the database's.
pub(crate) const COLUMNS: [Column; 16] = {
    use ColumnKind::*;
    [
        column("kafka_topic", KeyText, false, true),
        column("kafka_partition", Integer, false, true),
        column("kafka_offset", BigInteger, false, true),
        column("record_occurrence", Integer, false, true),
        column("message_index", Integer, false, true),
        column("kafka_timestamp", BigInteger, false, false),
        column("kafka_topic_full", Text, true, false),
        column("key_base64", Text, true, false),
        column("value_base64", Text, true, false),
        column("raw_message_index", Integer, true, false),
        column("error", Text, false, false),
        column("timestamp_type", Text, true, false),
        column("headers", Text, true, false),
        column("schema_metadata", Text, true, false),
        column("attempts", Integer, true, false),
        // Never updated by a replay, so the table stays the same when a batch is applied twice.
        column("created_at", Timestamp, false, false),
    ]
};

/// The columns a table made by an older msk-sync lacks: nullable, so the preflight adds them to it and a row
/// an older instance still writes (without them) is accepted.
pub(crate) const ADDED_LATER: [&str; 4] =
    ["timestamp_type", "headers", "schema_metadata", "attempts"];

/// The declared length of `kafka_topic`.
pub(crate) const TOPIC_COLUMN_CHARS: u32 = 255;
/// The longest topic kept as it is in `kafka_topic`: Kafka's own limit, so every real topic is.
const TOPIC_KEPT_CHARS: usize = 249;
/// How much of a topic its stand-in shows (180 + `…` + 64 hex digits stay within [`TOPIC_KEPT_CHARS`]).
const TOPIC_PREFIX_CHARS: usize = 180;

/// One message that was not applied. It borrows its record from the event, so a record's key and value are
/// never copied per message (a container file may hold tens of thousands).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<'e> {
    /// The record the message came from.
    pub record: &'e Record<'e>,
    /// The record's position in the batch's order, and which of its messages.
    pub at: Origin,
    /// How many records before this one in the batch have the same (topic, partition, offset).
    pub occurrence: u32,
    /// `None` when this row carries the record's raw key and value; else the `message_index` of the row of the
    /// same record that does (see [`share_raw`]).
    pub raw_at: Option<u32>,
    /// Why the message was not applied.
    pub error: String,
    /// How often the message was tried (1 the first time; a `redrive` that fails it again adds one).
    pub attempts: u32,
}

impl<'e> DeadLetter<'e> {
    /// A dead letter of message `at` of `record`, the row that carries the record's raw data.
    pub fn new(record: &'e Record<'e>, at: Origin, occurrence: u32, error: String) -> Self {
        Self {
            record,
            at,
            occurrence,
            raw_at: None,
            error,
            attempts: 1,
        }
    }

    /// The values of [`COLUMNS`] that msk-sync writes, in order.
    pub(crate) fn row(&self) -> Vec<SqlValue> {
        let r = self.record;
        let (topic, stand_in) = topic_key(&r.topic);
        let holds_raw = self.raw_at.is_none();
        let raw = |text: Option<&str>| {
            SqlValue::String(text.filter(|_| holds_raw).map(|t| escaped(t).into_owned()))
        };
        vec![
            SqlValue::String(Some(topic.into_owned())),
            r.partition.into(),
            r.offset.into(),
            int(self.occurrence),
            int(self.at.index),
            r.timestamp.into(),
            raw(stand_in.then_some(r.topic.as_ref())),
            raw(r.key.as_deref()),
            raw(r.value.as_deref()),
            SqlValue::Int(self.raw_at.map(|i| i32::try_from(i).unwrap_or(i32::MAX))),
            SqlValue::String(Some(escaped(&self.error).into_owned())),
            SqlValue::String(r.timestamp_type.as_deref().map(|t| escaped(t).into_owned())),
            raw(r.headers.json_text()),
            raw(schema_metadata(r).as_deref()),
            int(self.attempts),
        ]
    }
}

impl DeadLetter<'_> {
    /// [`DeadLetter::row`] without the record's raw data (topic, key, value, headers, schema metadata), for a
    /// row too large for one statement (MySQL's `max_allowed_packet`): the reason ends with `why`, and
    /// `raw_message_index` names the row itself, so `redrive` finds no row with the raw data and leaves the
    /// record's dead letters as they are. The record is still in Kafka at its coordinates.
    pub(crate) fn row_without_raw(&self, why: &str) -> Vec<SqlValue> {
        let mut row = self.row();
        for i in [6, 7, 8, 12, 13] {
            if let Some(v) = row.get_mut(i) {
                *v = SqlValue::String(None);
            }
        }
        if let Some(v) = row.get_mut(9) {
            *v = int(self.at.index);
        }
        if let Some(v) = row.get_mut(10) {
            *v = SqlValue::String(Some(
                escaped(&format!("{}; {why}", self.error)).into_owned(),
            ));
        }
        row
    }
}

/// Lambda's schema-registry metadata of a record as JSON, `None` when it has none.
fn schema_metadata(r: &Record<'_>) -> Option<String> {
    if r.value_schema_metadata.is_none() && r.key_schema_metadata.is_none() {
        return None;
    }
    let both = serde_json::json!({
        "valueSchemaMetadata": r.value_schema_metadata,
        "keySchemaMetadata": r.key_schema_metadata,
    });
    Some(both.to_string())
}

/// The schema metadata [`schema_metadata`] wrote, back; `Err` names what does not read.
pub(crate) type SchemaMetadataPair = (
    Option<Box<crate::event::SchemaMetadata>>,
    Option<Box<crate::event::SchemaMetadata>>,
);

pub(crate) fn read_schema_metadata(text: &str) -> Result<SchemaMetadataPair, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Both {
        value_schema_metadata: Option<Box<crate::event::SchemaMetadata>>,
        key_schema_metadata: Option<Box<crate::event::SchemaMetadata>>,
    }
    serde_json::from_str::<Both>(text)
        .map(|b| (b.value_schema_metadata, b.key_schema_metadata))
        .map_err(|e| format!("schema_metadata: {e}"))
}

fn int(n: u32) -> SqlValue {
    SqlValue::Int(Some(i32::try_from(n).unwrap_or(i32::MAX)))
}

/// Puts dead letters in batch order and lets the first of each record carry the record's raw data, the others
/// pointing to it: storage grows with the number of messages, not with messages × value size.
pub(crate) fn share_raw(dead: &mut [DeadLetter<'_>]) {
    dead.sort_by_key(|d| (d.at.record, d.at.index));
    let mut holder: Option<Origin> = None;
    for d in dead {
        d.raw_at = match holder {
            Some(h) if h.record == d.at.record => Some(h.index),
            _ => {
                holder = Some(d.at);
                None
            }
        };
    }
}

/// The `kafka_topic` of a topic, and whether it is a stand-in (see the module doc).
pub(crate) fn topic_key(topic: &str) -> (Cow<'_, str>, bool) {
    let kept = !topic.contains(|c: char| c.is_control() || c == '…')
        && topic.chars().nth(TOPIC_KEPT_CHARS).is_none();
    if kept {
        return (Cow::Borrowed(topic), false);
    }
    let mut key: String = escaped(topic).chars().take(TOPIC_PREFIX_CHARS).collect();
    key.push('…');
    for byte in Sha256::digest(topic.as_bytes()) {
        key.push_str(&format!("{byte:02x}"));
    }
    (Cow::Owned(key), true)
}

pub(crate) fn table_def(name: &str) -> TableDef {
    let written = COLUMNS.iter().filter(|c| c.kind != ColumnKind::Timestamp);
    TableDef {
        name: name.to_string(),
        columns: written.clone().map(|c| c.name.to_string()).collect(),
        key: written
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect(),
    }
}

fn column_def(c: &Column, backend: DbBackend) -> ColumnDef {
    let mut def = ColumnDef::new(Alias::new(c.name));
    match c.kind {
        ColumnKind::KeyText => def.string_len(TOPIC_COLUMN_CHARS),
        ColumnKind::Integer => def.integer(),
        ColumnKind::BigInteger => def.big_integer(),
        // Key, value and reason are kept whatever their size: a record is never refused here.
        ColumnKind::Text => table::long_text(&mut def, backend),
        ColumnKind::Timestamp => def.timestamp().default(Expr::current_timestamp()),
    };
    if c.nullable {
        def.null();
    } else {
        def.not_null();
    }
    def
}

pub(crate) fn create_table(name: &str, backend: DbBackend) -> TableCreateStatement {
    let columns = COLUMNS.iter().map(|c| column_def(c, backend)).collect();
    let key: Vec<&str> = COLUMNS.iter().filter(|c| c.key).map(|c| c.name).collect();
    table::create_table(name, columns, &key)
}

/// `ALTER TABLE name ADD COLUMN column …` for one of [`ADDED_LATER`], as text for `backend` (what the preflight
/// runs, and what it tells a user without the ALTER privilege to run).
pub(crate) fn add_column_statement(name: &str, column: &str, backend: DbBackend) -> Option<String> {
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder, Table};
    let c = COLUMNS.iter().find(|c| c.name == column && c.nullable)?;
    let mut alter = Table::alter();
    alter
        .table(Alias::new(name))
        .add_column(column_def(c, backend));
    Some(match backend {
        DbBackend::MySql => alter.to_string(MysqlQueryBuilder),
        DbBackend::Postgres => alter.to_string(PostgresQueryBuilder),
        _ => alter.to_string(SqliteQueryBuilder),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_kafka_allows_are_kept_others_get_a_bounded_deterministic_stand_in() {
        assert_eq!(
            topic_key("servicea.planet"),
            (Cow::Borrowed("servicea.planet"), false)
        );
        let longest = "t".repeat(TOPIC_KEPT_CHARS);
        assert_eq!(
            topic_key(&longest),
            (Cow::Borrowed(longest.as_str()), false)
        );
        for topic in [
            "t".repeat(TOPIC_KEPT_CHARS + 1),
            "é".repeat(10_000),
            "a\0b".to_string(),
            "a…b".to_string(),
        ] {
            let (key, stand_in) = topic_key(&topic);
            assert!(stand_in, "{topic:?}");
            assert!(key.chars().count() <= TOPIC_KEPT_CHARS, "{key}");
            assert!(!key.contains('\0'), "{key:?}");
            assert_eq!(topic_key(&topic).0, key, "the same every time");
        }
        // Topics that share their first 180 characters still get different keys.
        let a = format!("{}a", "x".repeat(300));
        let b = format!("{}b", "x".repeat(300));
        assert_ne!(topic_key(&a).0, topic_key(&b).0);
    }

    #[test]
    fn a_record_s_raw_data_is_on_its_first_dead_letter_only() {
        let record = Record {
            value: Some("AAAA".into()),
            ..Record::default()
        };
        let at = |record, index| Origin { record, index };
        let mut dead: Vec<DeadLetter<'_>> = [at(1, 5), at(0, 0), at(1, 2), at(1, 9)]
            .into_iter()
            .map(|o| DeadLetter::new(&record, o, 0, "why".into()))
            .collect();
        share_raw(&mut dead);
        let linked: Vec<(Origin, Option<u32>)> = dead.iter().map(|d| (d.at, d.raw_at)).collect();
        assert_eq!(
            linked,
            [
                (at(0, 0), None),
                (at(1, 2), None),
                (at(1, 5), Some(2)),
                (at(1, 9), Some(2))
            ]
        );
        let value = |d: &DeadLetter<'_>| d.row()[8].clone();
        assert_eq!(value(&dead[1]), SqlValue::String(Some("AAAA".into())));
        assert_eq!(value(&dead[2]), SqlValue::String(None));
        assert_eq!(dead[2].row()[9], SqlValue::Int(Some(2)));
    }

    #[test]
    fn the_table_and_its_writes_follow_the_one_column_list() {
        let def = table_def(DEFAULT_TABLE);
        assert_eq!(def.columns.len(), COLUMNS.len() - 1);
        assert_eq!(
            def.key_columns().collect::<Vec<_>>(),
            [
                "kafka_topic",
                "kafka_partition",
                "kafka_offset",
                "record_occurrence",
                "message_index"
            ]
        );
        let record = Record::default();
        let d = DeadLetter::new(
            &record,
            Origin {
                record: 0,
                index: 0,
            },
            0,
            "x\0".into(),
        );
        let row = d.row();
        assert_eq!(row.len(), def.columns.len());
        assert_eq!(
            row[10],
            SqlValue::String(Some("x\\u0000".into())),
            "the reason is escaped"
        );
    }
}
