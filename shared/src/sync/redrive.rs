//! The database side of `redrive`: the dead-letter table brought up to date (the columns redrive needs, added
//! to a table an older msk-sync made), its records read back exactly as their events carried them, and the
//! transaction that applies the messages that now succeed, deletes their dead letters and rewrites the others.
//!
//! The pipeline side (decode, filter, mask, map again) is [`crate::redrive`].

use std::borrow::Cow;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, ValueTuple};
use sea_orm::{ConnectionTrait, DbErr};

use super::Sink;
use super::dead_letter::{self, ADDED_LATER};
use super::preflight::{self, Expected, Found, Problem, Server};
use crate::event::{Headers, Record};
use crate::text::unescaped;

/// A record with dead letters, as the table keys it: (kafka_topic, partition, offset, occurrence).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    /// The `kafka_topic` column: the topic, or its stand-in ([`dead_letter`]).
    pub topic_key: String,
    pub partition: i32,
    pub offset: i64,
    pub occurrence: u32,
}

/// One dead-lettered record, read back: the record as its event carried it, and which of its messages are
/// dead-lettered, each with its attempt count so far.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub key: RecordKey,
    pub record: Record<'static>,
    /// (message_index, attempts), by message index.
    pub messages: Vec<(u32, u32)>,
    /// Why the record could not be rebuilt (its row with the raw data is missing or unreadable); its dead
    /// letters then stay as they are.
    pub broken: Option<String>,
}

/// The columns redrive reads, in this order.
const READ: [&str; 14] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "record_occurrence",
    "message_index",
    "kafka_timestamp",
    "kafka_topic_full",
    "key_base64",
    "value_base64",
    "raw_message_index",
    "timestamp_type",
    "headers",
    "schema_metadata",
    "attempts",
];

/// The columns that key a record (the dead-letter key without `message_index`).
const RECORD_KEY: [&str; 4] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "record_occurrence",
];

fn as_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

impl Sink {
    /// The dead-letter table with every column of [`ADDED_LATER`]: each missing one is added (`ALTER TABLE …
    /// ADD COLUMN`, a nullable column: no row is rewritten, and an older instance still running writes its
    /// rows without it). A user without the privilege gets a [`Problem`] that names the statement to run.
    pub(super) async fn dead_letter_columns(
        &self,
        expected: &Expected,
        found: Found,
        server: &Server,
    ) -> Result<(Found, Vec<Problem>), DbErr> {
        let missing = missing_added_columns(expected, &found);
        if missing.is_empty() {
            return Ok((found, Vec::new()));
        }
        let table = &expected.def.name;
        let mut problems = Vec::new();
        for column in &missing {
            let Some(alter) = dead_letter::add_column_statement(table, column, server.backend)
            else {
                continue;
            };
            match self.db.execute_unprepared(&alter).await {
                Ok(_) => {
                    tracing::warn!(table = %table, column = %column, "dead-letter table: column added");
                }
                Err(e) => match preflight::create_denied(&e) {
                    Some(said) => problems.push(Problem {
                        table: table.clone(),
                        column: Some(column.to_string()),
                        expected: format!(
                            "the column redrive needs (run: {alter}), or the database user to be allowed to add it"
                        ),
                        found: format!("no such column, and ALTER TABLE was refused: {said}"),
                    }),
                    // Another instance may have added it at the same moment: read the catalog again.
                    None => tracing::warn!(table = %table, column = %column, error = %e, "dead-letter table: ADD COLUMN failed"),
                },
            }
        }
        let found = preflight::inspect(&self.db, expected, server)
            .await?
            .unwrap_or(found);
        Ok((found, problems))
    }

    /// For `config check`: the columns the first batch will add to the dead-letter table, with the statements.
    pub(super) fn dead_letter_columns_to_add(
        &self,
        expected: &Expected,
        found: &Found,
    ) -> Option<String> {
        let missing = missing_added_columns(expected, found);
        if missing.is_empty() {
            return None;
        }
        let statements: Vec<String> = missing
            .iter()
            .filter_map(|c| {
                dead_letter::add_column_statement(&expected.def.name, c, self.backend())
            })
            .collect();
        Some(format!(
            "{} columns {} ({})",
            expected.def.name,
            missing.join(", "),
            statements.join("; ")
        ))
    }

    /// The dead-letter table's name.
    pub fn dead_letter_table(&self) -> &str {
        &self.options.dead_letter_table
    }

    /// Every record with dead letters (of these topics, or all), in key order. Small: four values a record.
    pub async fn dead_letter_records(&self, topics: &[String]) -> Result<Vec<RecordKey>, DbErr> {
        let mut select = Query::select();
        select
            .distinct()
            .columns(RECORD_KEY.map(Alias::new))
            .from(Alias::new(&self.options.dead_letter_table));
        if !topics.is_empty() {
            let keys: Vec<String> = topics
                .iter()
                .map(|t| dead_letter::topic_key(t).0.into_owned())
                .collect();
            select.and_where(Expr::col(Alias::new("kafka_topic")).is_in(keys));
        }
        for c in RECORD_KEY {
            select.order_by(Alias::new(c), Order::Asc);
        }
        let rows = self.db.query_all(&select).await?;
        rows.iter()
            .map(|row| {
                Ok(RecordKey {
                    topic_key: row.try_get_by_index::<String>(0)?,
                    partition: row.try_get_by_index::<i32>(1)?,
                    offset: row.try_get_by_index::<i64>(2)?,
                    occurrence: as_u32(row.try_get_by_index::<i32>(3)?),
                })
            })
            .collect()
    }

    /// The dead letters of these records, each record rebuilt from the row that holds its raw data.
    pub async fn load_dead_letters(&self, keys: &[RecordKey]) -> Result<Vec<StoredRecord>, DbErr> {
        let per = self.rows_per_statement(self.backend(), RECORD_KEY.len());
        let mut out: Vec<StoredRecord> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(per) {
            let mut select = Query::select();
            select
                .columns(READ.map(Alias::new))
                .from(Alias::new(&self.options.dead_letter_table))
                .and_where(
                    Expr::tuple(RECORD_KEY.map(|c| Expr::col(Alias::new(c)))).in_tuples(
                        chunk.iter().map(|k| {
                            ValueTuple::Many(vec![
                                k.topic_key.clone().into(),
                                k.partition.into(),
                                k.offset.into(),
                                i32::try_from(k.occurrence).unwrap_or(i32::MAX).into(),
                            ])
                        }),
                    ),
                );
            for c in RECORD_KEY.iter().chain(["message_index"].iter()) {
                select.order_by(Alias::new(*c), Order::Asc);
            }
            let rows = self.db.query_all(&select).await?;
            let rows: Vec<Row> = rows.iter().map(read_row).collect::<Result<_, _>>()?;
            // Ordered by record, then message: each record's rows are one run.
            let mut group: Vec<Row> = Vec::new();
            for row in rows {
                if group.first().is_some_and(|g| g.key != row.key) {
                    out.push(rebuild(std::mem::take(&mut group)));
                }
                group.push(row);
            }
            if !group.is_empty() {
                out.push(rebuild(group));
            }
        }
        Ok(out)
    }

    /// Claims the dead-letter rows of `selected` messages ((record, message_index)) for `txn`, first thing in
    /// it: each row is locked until the transaction ends, so that a second `redrive` running at the same time
    /// waits for this one and then finds the rows this one deleted gone. Returns how many of them are gone
    /// already (another redrive applied them since they were read): the caller must then read its chunk again
    /// rather than apply those messages a second time.
    ///
    /// PostgreSQL, MySQL and MariaDB: `SELECT … FOR UPDATE` (it waits for a lock another transaction holds
    /// and then reads the row as that one left it). SQLite locks the whole database for a writer: a write
    /// that matches no row takes that lock before anything is read.
    pub(super) async fn claim_dead_letters(
        &self,
        txn: &impl ConnectionTrait,
        selected: &[(&RecordKey, u32)],
    ) -> Result<usize, DbErr> {
        let table = Alias::new(&self.options.dead_letter_table);
        let sqlite = self.backend() == sea_orm::DbBackend::Sqlite;
        if sqlite {
            let mut take_lock = Query::update();
            take_lock
                .table(table.clone())
                .value(Alias::new("attempts"), Expr::col(Alias::new("attempts")))
                .and_where(Expr::cust("1 = 0"));
            txn.execute(&take_lock).await?;
        }
        let per = self.rows_per_statement(self.backend(), RECORD_KEY.len() + 1);
        let mut found = 0;
        for chunk in selected.chunks(per) {
            let mut select = Query::select();
            select
                .column(Alias::new("message_index"))
                .from(table.clone())
                .and_where(key_in(chunk));
            if !sqlite {
                select.lock(sea_orm::sea_query::LockType::Update);
            }
            found += txn.query_all(&select).await?.len();
        }
        Ok(selected.len().saturating_sub(found))
    }

    /// Deletes the dead-letter rows of `resolved` messages ((record, message_index)) in `txn`.
    pub(super) async fn delete_dead_letters(
        &self,
        txn: &impl ConnectionTrait,
        resolved: &[(&RecordKey, u32)],
    ) -> Result<(), DbErr> {
        let per = self.rows_per_statement(self.backend(), RECORD_KEY.len() + 1);
        for chunk in resolved.chunks(per) {
            let mut delete = Query::delete();
            delete
                .from_table(Alias::new(&self.options.dead_letter_table))
                .and_where(key_in(chunk));
            txn.execute(&delete).await?;
        }
        Ok(())
    }
}

/// `(record key…, message_index) IN (…)` of these messages.
fn key_in(messages: &[(&RecordKey, u32)]) -> sea_orm::sea_query::SimpleExpr {
    Expr::tuple(
        RECORD_KEY
            .iter()
            .chain(["message_index"].iter())
            .map(|c| Expr::col(Alias::new(*c))),
    )
    .in_tuples(messages.iter().map(|(k, index)| {
        ValueTuple::Many(vec![
            k.topic_key.clone().into(),
            k.partition.into(),
            k.offset.into(),
            i32::try_from(k.occurrence).unwrap_or(i32::MAX).into(),
            i32::try_from(*index).unwrap_or(i32::MAX).into(),
        ])
    }))
}

/// The columns of [`ADDED_LATER`] the table lacks.
fn missing_added_columns(expected: &Expected, found: &Found) -> Vec<&'static str> {
    ADDED_LATER
        .iter()
        .copied()
        .filter(|c| expected.def.columns.iter().any(|e| e == c))
        .filter(|c| !found.columns.iter().any(|f| f.name.eq_ignore_ascii_case(c)))
        .collect()
}

/// One dead-letter row as read.
struct Row {
    key: RecordKey,
    index: u32,
    timestamp: i64,
    topic_full: Option<String>,
    key_base64: Option<String>,
    value_base64: Option<String>,
    raw_at: Option<u32>,
    timestamp_type: Option<String>,
    headers: Option<String>,
    schema_metadata: Option<String>,
    attempts: u32,
}

fn read_row(row: &sea_orm::QueryResult) -> Result<Row, DbErr> {
    let text = |i: usize| row.try_get_by_index::<Option<String>>(i);
    Ok(Row {
        key: RecordKey {
            topic_key: row.try_get_by_index::<String>(0)?,
            partition: row.try_get_by_index::<i32>(1)?,
            offset: row.try_get_by_index::<i64>(2)?,
            occurrence: as_u32(row.try_get_by_index::<i32>(3)?),
        },
        index: as_u32(row.try_get_by_index::<i32>(4)?),
        timestamp: row.try_get_by_index::<i64>(5)?,
        topic_full: text(6)?,
        key_base64: text(7)?,
        value_base64: text(8)?,
        raw_at: row.try_get_by_index::<Option<i32>>(9)?.map(as_u32),
        timestamp_type: text(10)?,
        headers: text(11)?,
        schema_metadata: text(12)?,
        // NULL: a row written before the column existed, tried once.
        attempts: row
            .try_get_by_index::<Option<i32>>(13)?
            .map_or(1, |n| Ord::max(as_u32(n), 1)),
    })
}

/// A record from its dead-letter rows (one record, by message index): the raw data from the row that holds it.
fn rebuild(rows: Vec<Row>) -> StoredRecord {
    let key = rows[0].key.clone();
    let messages: Vec<(u32, u32)> = rows.iter().map(|r| (r.index, r.attempts)).collect();
    // The holder: the row no other points past (raw_message_index NULL); every other row names it.
    let holder_index = rows
        .iter()
        .find_map(|r| r.raw_at)
        .unwrap_or_else(|| rows[0].index);
    let holder = rows
        .iter()
        .find(|r| r.index == holder_index && r.raw_at.is_none());
    let first = &rows[0];
    let mut record = Record {
        topic: Cow::Owned(key.topic_key.clone()),
        partition: key.partition,
        offset: key.offset,
        timestamp: first.timestamp,
        timestamp_type: first
            .timestamp_type
            .as_deref()
            .map(|t| Cow::Owned(unescaped(t).into_owned())),
        ..Record::default()
    };
    let Some(holder) = holder else {
        return StoredRecord {
            key,
            record,
            messages,
            broken: Some(format!(
                "redrive: the row with the record's raw data (message_index {holder_index}) is missing"
            )),
        };
    };
    let owned = |t: &Option<String>| t.as_deref().map(|t| unescaped(t).into_owned());
    let stand_in = key.topic_key.contains('…');
    let mut broken = None;
    if stand_in {
        match owned(&holder.topic_full) {
            Some(full) => record.topic = Cow::Owned(full),
            None => broken = Some("redrive: the record's full topic is missing".to_string()),
        }
    }
    record.key = owned(&holder.key_base64).map(Cow::Owned);
    record.value = owned(&holder.value_base64).map(Cow::Owned);
    record.headers = Headers::from_json_text(owned(&holder.headers));
    if let Some(text) = owned(&holder.schema_metadata) {
        match dead_letter::read_schema_metadata(&text) {
            Ok((value, key)) => {
                record.value_schema_metadata = value;
                record.key_schema_metadata = key;
            }
            Err(e) => broken = Some(format!("redrive: {e}")),
        }
    }
    StoredRecord {
        key,
        record,
        messages,
        broken,
    }
}
