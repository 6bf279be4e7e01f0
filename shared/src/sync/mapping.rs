//! How a message becomes a row: the [`Mapping`] trait, shared by the declarative (config) and typed (sea-orm
//! entity) syncs, so that both are applied by the same bulk statements.

use super::TableDef;
use crate::change::ChangeRule;
use crate::event::Record;
use crate::message::Message;
use sea_orm::DbBackend;
use sea_orm::sea_query::{TableCreateStatement, Value as SqlValue};

/// What a mapping may read besides the message: the record it came from and its decoded key.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// The record the message came from.
    pub record: &'a Record<'a>,
    /// The record key as text (a JSON or Avro key as compact JSON, unless it is a string), if it has one.
    pub key: Option<&'a str>,
    /// The record key as the codec's key format decoded it.
    pub key_value: Option<&'a Message<'a>>,
}

static BEDROCK: ChangeRule = ChangeRule::Bedrock;

/// Turns messages of some topics into rows of one table. Built once per function instance.
pub trait Mapping: Send + Sync + std::fmt::Debug {
    /// A name for logs and reports.
    fn name(&self) -> &str;

    /// The table this mapping writes.
    fn table(&self) -> &TableDef;

    /// The statement that creates the table when it is missing.
    fn create_table(&self, backend: DbBackend) -> TableCreateStatement;

    /// The whole row, one value per `table().columns`, for an upsert. An `Err` is a permanent error of the
    /// record: it is dead-lettered with this message.
    fn row(&self, message: &Message<'_>, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String>;

    /// The key values, one per `table().key`, for a delete; a delete needs no other field.
    fn key(&self, message: &Message<'_>, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String>;

    /// The key of the entity a tombstone (a record with a null value) deletes, from the record key; an `Err`
    /// says why this mapping cannot tell, and the tombstone is dead-lettered with it.
    fn tombstone_key(&self, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String>;

    /// How a message says what happened to the entity ([`crate::change`]): bedrock's `changeType` by default.
    /// Under `codec.envelope = "debezium"` Debezium's `op` decides instead.
    fn change(&self) -> &ChangeRule {
        &BEDROCK
    }

    /// Where the version is in a row, if this mapping has a version column: then a change applies only if it
    /// is not older than the row ([`super::version`]). By default none: the last batch applied wins.
    fn version(&self) -> Option<usize> {
        None
    }

    /// The version of a delete (of a tombstone: `message` is null), when [`Mapping::version`] is set; an `Err`
    /// (a missing or unfit version) dead-letters the record.
    fn delete_version(
        &self,
        message: &Message<'_>,
        meta: &Meta<'_>,
    ) -> Result<Option<SqlValue>, String> {
        let _ = (message, meta);
        Ok(None)
    }
}
