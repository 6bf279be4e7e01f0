//! The typed sync: a sea-orm entity whose model is built from a message in Rust (bedrock's
//! `from_kafka_event`). The table, its columns and its key come from the entity, so the same bulk statements
//! apply it as a declarative sync.

use std::marker::PhantomData;

use sea_orm::sea_query::{TableCreateStatement, Value as SqlValue};
use sea_orm::{
    ActiveModelTrait, DbBackend, EntityTrait, IdenStatic, IntoActiveModel, Iterable, ModelTrait,
    PrimaryKeyToColumn, Schema,
};
use serde::de::DeserializeOwned;

use super::mapping::{Mapping, Meta};
use super::table::TableDef;
use crate::change::{ChangeConfig, ChangeRule};
use crate::message::Message;

/// Builds a model from a message. An `Err` is a permanent error of the record (it is dead-lettered).
pub trait FromKafkaEvent: ModelTrait + Sized {
    /// The row of a created or updated entity, or why the message does not make one.
    fn from_kafka_event(message: &Message<'_>) -> Result<Self, String>;

    /// The primary-key values a DELETED message names, in primary-key order. The default builds the whole
    /// model, as bedrock does; override it when delete events carry only the key.
    fn delete_key(message: &Message<'_>) -> Result<Vec<SqlValue>, String> {
        let model = Self::from_kafka_event(message)?;
        Ok(<Self::Entity as EntityTrait>::PrimaryKey::iter()
            .map(|pk| model.get(pk.into_column()))
            .collect())
    }

    /// The column whose value is the version of a change: then a change older than the row is stale
    /// ([`super::version`]). None by default: the last batch applied wins.
    fn version_column() -> Option<<Self::Entity as EntityTrait>::Column> {
        None
    }

    /// The version of a DELETED message, when [`FromKafkaEvent::version_column`] names one. The default builds
    /// the whole model and reads that column; override it when delete events carry only the key and version.
    fn delete_version(message: &Message<'_>) -> Result<Option<SqlValue>, String> {
        match Self::version_column() {
            None => Ok(None),
            Some(column) => Ok(Some(Self::from_kafka_event(message)?.get(column))),
        }
    }

    /// Where a message says what happened to the entity: `None` (the default) is bedrock's `changeType`
    /// routing; a [`ChangeConfig`] names a field of the producer's own and its values, as a declarative sync's
    /// `change` does. Under `codec.envelope = "debezium"` Debezium's `op` decides instead.
    fn change() -> Option<ChangeConfig> {
        None
    }

    /// The primary-key values of the entity a tombstone (null value) with this record key deletes; by default
    /// a tombstone cannot be mapped and is dead-lettered.
    fn tombstone_key(key: &str) -> Result<Vec<SqlValue>, String> {
        let _ = key;
        Err(
            "tombstone (null value): this entity does not map the record key to its primary key"
                .into(),
        )
    }
}

/// A required field of a message, deserialized; the error names the field, never its value.
pub fn field<T: DeserializeOwned>(message: &Message<'_>, name: &str) -> Result<T, String> {
    match message.get(name) {
        None | Some(Message::Null) => Err(format!("missing field {name}")),
        Some(v) => T::deserialize(v).map_err(|_| {
            format!(
                "field {name}: expected {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("a value")
            )
        }),
    }
}

/// An optional field: absent or null is `None`.
pub fn optional_field<T: DeserializeOwned>(
    message: &Message<'_>,
    name: &str,
) -> Result<Option<T>, String> {
    match message.get(name) {
        None | Some(Message::Null) => Ok(None),
        Some(_) => field(message, name).map(Some),
    }
}

/// A [`Mapping`] over a sea-orm entity.
pub struct TypedMapping<E: EntityTrait> {
    name: String,
    table: TableDef,
    /// Where [`FromKafkaEvent::version_column`] is in a row.
    version: Option<usize>,
    /// [`FromKafkaEvent::change`], compiled.
    change: ChangeRule,
    entity: PhantomData<fn() -> E>,
}

impl<E: EntityTrait> std::fmt::Debug for TypedMapping<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedMapping")
            .field("name", &self.name)
            .field("table", &self.table)
            .finish()
    }
}

impl<E> TypedMapping<E>
where
    E: EntityTrait + Default,
    E::Model: FromKafkaEvent + IntoActiveModel<E::ActiveModel>,
{
    /// The mapping of entity `E`, as sync `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let columns: Vec<E::Column> = E::Column::iter().collect();
        let key = E::PrimaryKey::iter()
            .filter_map(|pk| {
                let col = pk.into_column();
                columns.iter().position(|c| c.as_str() == col.as_str())
            })
            .collect();
        let version = E::Model::version_column()
            .and_then(|v| columns.iter().position(|c| c.as_str() == v.as_str()));
        let name = name.into();
        // A rule that does not compile dead-letters every message with its reason; `config check` and the
        // start of the function list it ([`crate::config::Config::compile`]).
        let change = match E::Model::change().map(|c| c.compile()) {
            None => ChangeRule::Bedrock,
            Some(Ok(rule)) => rule,
            Some(Err(p)) => ChangeRule::Invalid(format!("sync {name}: {}", p.join("; "))),
        };
        Self {
            name,
            change,
            table: TableDef {
                name: E::default().table_name().to_string(),
                columns: columns.iter().map(|c| c.as_str().to_string()).collect(),
                key,
            },
            version,
            entity: PhantomData,
        }
    }
}

impl<E> Mapping for TypedMapping<E>
where
    E: EntityTrait + Default,
    E::Model: FromKafkaEvent + IntoActiveModel<E::ActiveModel>,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn table(&self) -> &TableDef {
        &self.table
    }

    fn create_table(&self, backend: DbBackend) -> TableCreateStatement {
        let mut stmt = Schema::new(backend).create_table_from_entity(E::default());
        stmt.if_not_exists();
        stmt
    }

    fn row(&self, message: &Message<'_>, _meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        // Through the active model, each value moves into the row instead of being cloned out of the model.
        let mut active = E::Model::from_kafka_event(message)?.into_active_model();
        E::Column::iter()
            .map(|c| {
                active
                    .take(c)
                    .into_value()
                    .ok_or_else(|| format!("column {} has no value", c.as_str()))
            })
            .collect()
    }

    fn key(&self, message: &Message<'_>, _meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        E::Model::delete_key(message)
    }

    fn version(&self) -> Option<usize> {
        self.version
    }

    fn change(&self) -> &ChangeRule {
        &self.change
    }

    fn delete_version(
        &self,
        message: &Message<'_>,
        _meta: &Meta<'_>,
    ) -> Result<Option<SqlValue>, String> {
        match (self.version, message) {
            (None, _) => Ok(None),
            (Some(_), Message::Null) => Err(
                "tombstone (null value): this entity has a version column, and a tombstone carries no version"
                    .into(),
            ),
            (Some(_), message) => E::Model::delete_version(message),
        }
    }

    fn tombstone_key(&self, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        match meta.key {
            Some(key) => E::Model::tombstone_key(key),
            None => Err("tombstone (null value) without a UTF-8 record key".into()),
        }
    }
}
