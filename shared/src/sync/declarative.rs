//! The declarative sync: a table described in config, each column filled from a JSONPath into the message or
//! from the record's Kafka metadata. Everything is parsed and checked once, when the config is compiled.

use chrono::{DateTime, Utc};
use sea_orm::DbBackend;
use sea_orm::sea_query::{Alias, ColumnDef, TableCreateStatement, Value as SqlValue};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::mapping::{Mapping, Meta};
use super::table::{TableDef, check_ident, create_table, long_text};
use crate::change::{ChangeConfig, ChangeRule};
use crate::message::Message;
use crate::path::JsonPath;

/// One `[[sync]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// For logs and reports; defaults to the table name.
    #[serde(default)]
    #[schemars(example = &"planet")]
    pub name: Option<String>,
    /// Topic names or globs (`orders.*`); `*` alone makes this the default sync.
    #[schemars(example = ["servicea.planet"], example = ["orders.*"])]
    pub topics: Vec<String>,
    /// The table its rows go to; created if missing.
    #[schemars(example = &"servicea_planet")]
    pub table: String,
    /// The key column(s), by column name.
    #[schemars(example = ["uuid"])]
    pub key: Vec<String>,
    /// The table's columns, each with where its value comes from.
    #[schemars(example = serde_json::json!([{"name": "uuid", "path": "$.planetUuid"}, {"name": "name", "path": "$.planetName"}]))]
    pub columns: Vec<ColumnConfig>,
    /// Where a message says what happened (`{ path, upsert, delete, absent }`); bedrock's `changeType` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeConfig>,
}

/// One column of a `[[sync]]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// The column's name.
    #[schemars(example = &"uuid")]
    pub name: String,
    /// A JSONPath into the message (RFC 9535); the first match is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"$.planetUuid")]
    pub path: Option<String>,
    /// Kafka metadata instead of a message field: key, topic, partition, offset, timestamp or header:NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"key", example = &"header:source", example = &"key:$.id")]
    pub from: Option<String>,
    /// text (default), integer, float, boolean, json, timestamp, uuid, date or decimal.
    #[serde(rename = "type", default = "default_type")]
    #[schemars(schema_with = "column_type_schema", example = &"timestamp")]
    pub ty: String,
    /// A non-key column is NULL when its path matches nothing, unless it is required.
    #[serde(default)]
    #[schemars(example = true)]
    pub required: bool,
    /// This column's value is the version of the change (at most one column, integer or timestamp): a change
    /// older than the row is stale ([`super::version`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false), example = true)]
    pub version: bool,
}

/// `type`: one of [`COLUMN_TYPES`].
fn column_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = COLUMN_TYPES.split(", ").collect();
    schemars::json_schema!({ "type": "string", "enum": names, "default": default_type() })
}

fn default_type() -> String {
    "text".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Integer,
    Float,
    Boolean,
    Json,
    Timestamp,
    /// PostgreSQL `uuid`, MySQL/MariaDB `CHAR(36)`, SQLite `TEXT`: a UUID in its canonical text.
    Uuid,
    /// `DATE` (SQLite: its text, `YYYY-MM-DD`).
    Date,
    /// An exact number: PostgreSQL `NUMERIC`, MySQL/MariaDB `DECIMAL(65,30)`, SQLite `TEXT`.
    Decimal,
}

pub const COLUMN_TYPES: &str =
    "text, integer, float, boolean, json, timestamp, uuid, date, decimal";

impl ColumnType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "text" => Self::Text,
            "integer" => Self::Integer,
            "float" => Self::Float,
            "boolean" => Self::Boolean,
            "json" => Self::Json,
            "timestamp" => Self::Timestamp,
            "uuid" => Self::Uuid,
            "date" => Self::Date,
            "decimal" => Self::Decimal,
            _ => return None,
        })
    }

    fn null(self) -> SqlValue {
        match self {
            Self::Text => SqlValue::String(None),
            Self::Integer => SqlValue::BigInt(None),
            Self::Float => SqlValue::Double(None),
            Self::Boolean => SqlValue::Bool(None),
            Self::Json => SqlValue::Json(None),
            Self::Timestamp => SqlValue::ChronoDateTimeUtc(None),
            Self::Uuid => typed_text(UUID_TYPE, None),
            Self::Date => SqlValue::ChronoDate(None),
            Self::Decimal => typed_text(DECIMAL_TYPE, None),
        }
    }

    fn column_def(self, name: &str, is_key: bool, backend: DbBackend) -> ColumnDef {
        let mut def = ColumnDef::new(Alias::new(name));
        match self {
            // MySQL cannot index TEXT without a prefix length, so key text is varchar(255) there.
            Self::Text if is_key => def.string(),
            Self::Text => long_text(&mut def, backend),
            Self::Integer => def.big_integer(),
            Self::Float => def.double(),
            Self::Boolean => def.boolean(),
            Self::Json => def.json_binary(),
            // MySQL's TIMESTAMP ends in 2038 and drops milliseconds.
            Self::Timestamp if backend == DbBackend::MySql => def.custom(Alias::new("DATETIME(3)")),
            Self::Timestamp => def.timestamp_with_time_zone(),
            Self::Uuid if backend == DbBackend::Postgres => def.uuid(),
            Self::Uuid if backend == DbBackend::MySql => def.custom(Alias::new("CHAR(36)")),
            Self::Uuid => def.custom(Alias::new("TEXT")),
            Self::Date => def.date(),
            Self::Decimal if backend == DbBackend::Postgres => def.decimal(),
            // The widest DECIMAL MySQL has: every value with at most 35 integer and 30 fraction digits, exactly.
            Self::Decimal if backend == DbBackend::MySql => def.decimal_len(65, 30),
            // SQLite's NUMERIC affinity would turn 0.10 into a float: its text is kept instead.
            Self::Decimal => def.custom(Alias::new("TEXT")),
        };
        if is_key {
            def.not_null();
        }
        def
    }

    /// Converts a JSON value; errors name the expected and found kinds, never the value (it may be sensitive).
    fn convert(self, value: &Message<'_>) -> Result<SqlValue, String> {
        let bad = || format!("expected {}, got {}", self.expected(), value.kind());
        Ok(match (self, value) {
            (_, Message::Null) => self.null(),
            (Self::Text, Message::String(s)) => SqlValue::String(Some(s.to_string())),
            (Self::Text, Message::Number(n)) => SqlValue::String(Some(n.to_string())),
            (Self::Text, Message::Bool(b)) => SqlValue::String(Some(b.to_string())),
            (Self::Text, other) => SqlValue::String(Some(other.to_json_string())),
            (Self::Integer, Message::Number(n)) => {
                SqlValue::BigInt(Some(integer(n).ok_or_else(bad)?))
            }
            (Self::Integer, Message::String(s)) => {
                SqlValue::BigInt(Some(s.trim().parse().map_err(|_| bad())?))
            }
            (Self::Float, Message::Number(n)) => {
                SqlValue::Double(Some(n.as_f64().ok_or_else(bad)?))
            }
            (Self::Float, Message::String(s)) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => SqlValue::Double(Some(f)),
                _ => return Err(bad()),
            },
            (Self::Boolean, Message::Bool(b)) => SqlValue::Bool(Some(*b)),
            (Self::Boolean, Message::String(s)) if s == "true" || s == "false" => {
                SqlValue::Bool(Some(s == "true"))
            }
            (Self::Json, v) => SqlValue::Json(Some(Box::new(v.to_value()))),
            (Self::Timestamp, Message::Number(n)) => {
                let ms = integer(n).ok_or_else(bad)?;
                SqlValue::ChronoDateTimeUtc(Some(portable_timestamp(
                    DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(bad)?,
                )?))
            }
            (Self::Uuid, Message::String(s)) => {
                let uuid = apache_avro::Uuid::try_parse(s.trim()).map_err(|_| bad())?;
                typed_text(UUID_TYPE, Some(uuid.hyphenated().to_string()))
            }
            (Self::Date, Message::String(s)) => SqlValue::ChronoDate(Some(portable_date(
                chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| bad())?,
            )?)),
            // Days since 1970-01-01: Debezium's io.debezium.time.Date when no schema came with it.
            (Self::Date, Message::Number(n)) => {
                let days = integer(n).ok_or_else(bad)?;
                let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|e| e.checked_add_signed(chrono::Duration::try_days(days)?))
                    .ok_or_else(bad)?;
                SqlValue::ChronoDate(Some(portable_date(date)?))
            }
            (Self::Decimal, Message::Number(n)) => typed_text(DECIMAL_TYPE, Some(n.to_string())),
            (Self::Decimal, Message::String(s)) if is_decimal(s.trim()) => {
                typed_text(DECIMAL_TYPE, Some(s.trim().to_string()))
            }
            (Self::Timestamp, Message::String(s)) => {
                SqlValue::ChronoDateTimeUtc(Some(portable_timestamp(
                    DateTime::parse_from_rfc3339(s.trim())
                        .map_err(|_| bad())?
                        .to_utc(),
                )?))
            }
            _ => return Err(bad()),
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "an integer",
            Self::Float => "a number",
            Self::Boolean => "a boolean",
            Self::Json => "JSON",
            Self::Timestamp => "epoch milliseconds or an RFC 3339 timestamp",
            Self::Uuid => "a UUID",
            Self::Date => "a date (YYYY-MM-DD, or days since 1970-01-01)",
            Self::Decimal => "a decimal number",
        }
    }
}

/// PostgreSQL's name of the type a uuid column's text is cast to.
const UUID_TYPE: &str = "uuid";
/// Likewise for a decimal column.
const DECIMAL_TYPE: &str = "numeric";

/// Text that PostgreSQL casts to `type_name` (`$1::"uuid"`: a text parameter is not assigned to a uuid or
/// numeric column without a cast); the other backends bind it as text, which their columns convert.
fn typed_text(type_name: &str, text: Option<String>) -> SqlValue {
    use sea_orm::sea_query::{Enum, OptionEnum};
    SqlValue::Enum(match text {
        Some(value) => OptionEnum::Some(Box::new(Enum {
            type_name: type_name.into(),
            value: value.into(),
        })),
        None => OptionEnum::None(type_name.into()),
    })
}

/// The longest decimal text accepted: more digits than any backend's exact type holds.
const MAX_DECIMAL_CHARS: usize = 1_000;

/// `-12.50`, `3`, `1e-7`: what every backend reads as an exact number.
fn is_decimal(s: &str) -> bool {
    if s.len() > MAX_DECIMAL_CHARS {
        return false;
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e) && e.len() <= 4)
}

/// A date every backend stores (see [`portable_timestamp`]).
fn portable_date(d: chrono::NaiveDate) -> Result<chrono::NaiveDate, String> {
    use chrono::Datelike;
    if (1000..=9999).contains(&d.year()) {
        Ok(d)
    } else {
        Err(format!(
            "date outside the years 1000 to 9999, which not every database can store (year {})",
            d.year()
        ))
    }
}

/// Years every backend stores faithfully: MySQL's DATETIME holds 1000..=9999, and MariaDB silently stores a
/// later timestamp as 0000-00-00 instead of refusing it. Outside the range the record is dead-lettered.
fn portable_timestamp(t: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    use chrono::Datelike;
    if (1000..=9999).contains(&t.year()) {
        Ok(t)
    } else {
        Err(format!(
            "timestamp outside the years 1000 to 9999, which not every database can store (year {})",
            t.year()
        ))
    }
}

/// An integer, also from a float with no fraction (many JSON producers write 42.0).
fn integer(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
    })
}

/// Where a column's value comes from.
#[derive(Debug)]
enum Source {
    Path(JsonPath),
    /// `key:$.id`: a path into a JSON or Avro key.
    KeyPath(JsonPath),
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    Header(String),
}

#[derive(Debug)]
struct Column {
    name: String,
    source: Source,
    spec: String,
    ty: ColumnType,
    required: bool,
    is_key: bool,
}

/// Longest key text accepted: the varchar(255) that MySQL key columns get.
const MAX_KEY_TEXT: usize = 255;

impl Column {
    fn value<'m>(&self, message: &'m Message<'m>, meta: &Meta<'m>) -> Result<SqlValue, String> {
        let found: Option<Cow<'m, Message<'m>>> = match &self.source {
            Source::Path(path) => path.first(message),
            Source::Key => meta.key_value.map(Cow::Borrowed),
            Source::KeyPath(path) => meta.key_value.and_then(|k| path.first(k)),
            Source::Topic => Some(Cow::Owned(Message::from(meta.record.topic.as_ref()))),
            Source::Partition => Some(Cow::Owned(Message::from(i64::from(meta.record.partition)))),
            Source::Offset => Some(Cow::Owned(Message::from(meta.record.offset))),
            Source::Timestamp => Some(Cow::Owned(Message::from(meta.record.timestamp))),
            Source::Header(name) => {
                let bytes = meta
                    .record
                    .headers
                    .last(name)
                    .map_err(|e| format!("column {}: {e}", self.name))?;
                match bytes {
                    None => None,
                    Some(bytes) => Some(Cow::Owned(Message::from(
                        String::from_utf8(bytes).map_err(|_| {
                            format!("column {}: header {name} is not UTF-8", self.name)
                        })?,
                    ))),
                }
            }
        };
        match found.as_deref() {
            None | Some(Message::Null) if self.required => Err(format!(
                "column {}: {} {}",
                self.name,
                self.spec,
                if found.is_none() {
                    "matched nothing"
                } else {
                    "is null"
                }
            )),
            None => Ok(self.ty.null()),
            Some(v) => {
                let value = self
                    .ty
                    .convert(v)
                    .map_err(|e| format!("column {} ({}): {e}", self.name, self.spec))?;
                if let SqlValue::String(Some(s)) = &value
                    && self.is_key
                    && s.chars().count() > MAX_KEY_TEXT
                {
                    return Err(format!(
                        "column {}: key text longer than {MAX_KEY_TEXT} characters",
                        self.name
                    ));
                }
                Ok(value)
            }
        }
    }
}

/// A compiled [`SyncConfig`].
#[derive(Debug)]
pub struct DeclarativeMapping {
    name: String,
    table: TableDef,
    columns: Vec<Column>,
    /// The version column's index, if the sync has one.
    version: Option<usize>,
    /// How a message says what happened.
    change: ChangeRule,
}

impl DeclarativeMapping {
    /// Compiles a sync, or lists every problem in it (each prefixed with `at`).
    pub fn compile(cfg: &SyncConfig, at: &str) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut say = |p: String| problems.push(format!("{at}: {p}"));
        if let Err(e) = check_ident("table", &cfg.table) {
            say(e);
        }
        if cfg.topics.is_empty() {
            say("topics is empty: name at least one topic or glob (\"*\" for all)".into());
        }
        if cfg.key.is_empty() {
            say("key is empty: name the column(s) that identify an entity".into());
        }
        if cfg.columns.is_empty() {
            say("columns is empty".into());
        }
        let mut columns = Vec::new();
        for (i, c) in cfg.columns.iter().enumerate() {
            let here = format!("column {} ({:?})", i + 1, c.name);
            if let Err(e) = check_ident("column name", &c.name) {
                say(format!("{here}: {e}"));
            }
            if cfg.columns[..i].iter().any(|o| o.name == c.name) {
                say(format!("{here}: defined twice"));
            } else if let Some(o) = cfg.columns[..i]
                .iter()
                .find(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                // MySQL and SQLite column names ignore case: the two would be one column there.
                say(format!(
                    "{here}: differs from column {:?} only by case, and column names are case-insensitive in MySQL and SQLite",
                    o.name
                ));
            }
            let ty = ColumnType::parse(&c.ty);
            if ty.is_none() {
                say(format!(
                    "{here}: unknown type {:?} (one of {COLUMN_TYPES})",
                    c.ty
                ));
            }
            let source = match (&c.path, &c.from) {
                (Some(path), None) => match compile_path(path) {
                    Ok(s) => Some((s, path.clone())),
                    Err(e) => {
                        say(format!("{here}: bad JSONPath {path:?}: {e}"));
                        None
                    }
                },
                (None, Some(from)) => match compile_from(from) {
                    Some(s) => Some((s, format!("from {from}"))),
                    None => {
                        say(format!(
                            "{here}: unknown from {from:?} (one of key, topic, partition, offset, timestamp, header:NAME)"
                        ));
                        None
                    }
                },
                _ => {
                    say(format!("{here}: give exactly one of path or from"));
                    None
                }
            };
            if let (Some(ty), Some((source, spec))) = (ty, source) {
                let is_key = cfg.key.contains(&c.name);
                columns.push(Column {
                    name: c.name.clone(),
                    source,
                    spec,
                    ty,
                    // A change without a version cannot be compared: it is dead-lettered.
                    required: c.required || is_key || c.version,
                    is_key,
                });
            }
        }
        let versions: Vec<&ColumnConfig> = cfg.columns.iter().filter(|c| c.version).collect();
        if versions.len() > 1 {
            say(format!(
                "{} columns are marked version = true ({}): at most one may be",
                versions.len(),
                versions
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for c in &versions {
            if c.ty != "integer" && c.ty != "timestamp" {
                say(format!(
                    "column {:?}: a version column must be of type integer or timestamp, not {:?}",
                    c.name, c.ty
                ));
            }
            if cfg.key.contains(&c.name) {
                say(format!(
                    "column {:?}: a key column cannot be the version column",
                    c.name
                ));
            }
        }
        let mut key = Vec::new();
        for k in &cfg.key {
            match cfg.columns.iter().position(|c| &c.name == k) {
                Some(i) => key.push(i),
                None => say(format!("key column {k:?} is not among the columns")),
            }
        }
        let change = match cfg.change.as_ref().map(ChangeConfig::compile) {
            None => ChangeRule::Bedrock,
            Some(Ok(rule)) => rule,
            Some(Err(p)) => {
                p.into_iter().for_each(&mut say);
                ChangeRule::Bedrock
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            name: cfg.name.clone().unwrap_or_else(|| cfg.table.clone()),
            table: TableDef {
                name: cfg.table.clone(),
                columns: cfg.columns.iter().map(|c| c.name.clone()).collect(),
                key,
            },
            columns,
            version: cfg.columns.iter().position(|c| c.version),
            change,
        })
    }

    fn key_values(&self, message: &Message<'_>, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        self.table
            .key
            .iter()
            .map(|&i| self.columns[i].value(message, meta))
            .collect()
    }
}

fn compile_path(path: &str) -> Result<Source, String> {
    JsonPath::compile(path).map(Source::Path)
}

fn compile_from(from: &str) -> Option<Source> {
    Some(match from {
        "key" => Source::Key,
        _ if from.starts_with("key:") => Source::KeyPath(JsonPath::compile(&from[4..]).ok()?),
        "topic" => Source::Topic,
        "partition" => Source::Partition,
        "offset" => Source::Offset,
        "timestamp" => Source::Timestamp,
        _ => Source::Header(
            from.strip_prefix("header:")
                .filter(|h| !h.is_empty())?
                .to_string(),
        ),
    })
}

impl Mapping for DeclarativeMapping {
    fn name(&self) -> &str {
        &self.name
    }

    fn table(&self) -> &TableDef {
        &self.table
    }

    fn create_table(&self, backend: DbBackend) -> TableCreateStatement {
        let defs = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.ty.column_def(&c.name, self.table.key.contains(&i), backend)
            })
            .collect();
        let key: Vec<&str> = self.table.key_columns().collect();
        create_table(&self.table.name, defs, &key)
    }

    fn row(&self, message: &Message<'_>, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        self.columns
            .iter()
            .map(|c| c.value(message, meta))
            .collect()
    }

    fn key(&self, message: &Message<'_>, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        self.key_values(message, meta)
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
        meta: &Meta<'_>,
    ) -> Result<Option<SqlValue>, String> {
        match self.version.and_then(|v| self.columns.get(v)) {
            None => Ok(None),
            Some(column) => column.value(message, meta).map(Some),
        }
    }

    fn tombstone_key(&self, meta: &Meta<'_>) -> Result<Vec<SqlValue>, String> {
        let from_key = self
            .table
            .key
            .iter()
            .all(|&i| matches!(self.columns[i].source, Source::Key | Source::KeyPath(_)));
        if !from_key {
            return Err(format!(
                "tombstone (null value) for sync {}: its key does not come from the record key (from = \"key\"), so the entity to delete is unknown",
                self.name
            ));
        }
        if meta.key_value.is_none() {
            return Err("tombstone (null value) without a record key".to_string());
        }
        self.key_values(&Message::Null, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Headers, Record};
    use serde_json::{Value, json};

    fn msg(value: Value) -> Message<'static> {
        Message::from(value)
    }

    fn config(columns: Value, key: &[&str]) -> SyncConfig {
        serde_json::from_value(json!({
            "topics": ["planets"], "table": "servicea_planet", "key": key, "columns": columns
        }))
        .unwrap()
    }

    fn planet() -> DeclarativeMapping {
        let cfg = config(
            json!([
                {"name": "uuid", "path": "$.planetUuid"},
                {"name": "name", "path": "$.planetName"},
                {"name": "mass", "path": "$.details.mass", "type": "float"},
                {"name": "moons", "path": "$.moons[0].name"},
                {"name": "updated", "path": "$.kafkaRecordTimestamp", "type": "timestamp"},
                {"name": "source_offset", "from": "offset", "type": "integer"},
                {"name": "trace", "from": "header:trace-id"}
            ]),
            &["uuid"],
        );
        DeclarativeMapping::compile(&cfg, "sync 1").unwrap()
    }

    fn record() -> Record<'static> {
        Record {
            topic: "planets".into(),
            partition: 2,
            offset: 7,
            timestamp: 1_700_000_000_000,
            headers: Headers::from_pairs([("trace-id", &b"abc"[..])]),
            ..Record::default()
        }
    }

    #[test]
    fn maps_paths_and_metadata_to_typed_values() {
        let m = planet();
        let r = record();
        let meta = Meta {
            record: &r,
            key: None,
            key_value: None,
        };
        let message = msg(
            json!({"planetUuid": "p-1", "planetName": "Mars", "details": {"mass": 6.4},
                         "moons": [{"name": "Phobos"}, {"name": "Deimos"}], "kafkaRecordTimestamp": 1_700_000_000_000i64}),
        );
        let row = m.row(&message, &meta).unwrap();
        assert_eq!(row[0], SqlValue::String(Some("p-1".into())));
        assert_eq!(row[1], SqlValue::String(Some("Mars".into())));
        assert_eq!(row[2], SqlValue::Double(Some(6.4)));
        assert_eq!(row[3], SqlValue::String(Some("Phobos".into())));
        assert_eq!(
            row[4],
            SqlValue::ChronoDateTimeUtc(DateTime::from_timestamp_millis(1_700_000_000_000))
        );
        assert_eq!(row[5], SqlValue::BigInt(Some(7)));
        assert_eq!(row[6], SqlValue::String(Some("abc".into())));
        assert_eq!(
            m.key(&message, &meta).unwrap(),
            vec![SqlValue::String(Some("p-1".into()))]
        );
    }

    #[test]
    fn a_malformed_header_fails_the_record_that_reads_it() {
        let m = planet();
        let text = r#"{"eventSource":"aws:kafka","records":{"planets-2":[{"topic":"planets","partition":2,"offset":7,"timestamp":1,"headers":[{"trace-id":[97,300]}]}]}}"#;
        let event = crate::event::MskEvent::parse(text).unwrap();
        let meta = Meta {
            record: &event.records[0],
            key: None,
            key_value: None,
        };
        let err = m
            .row(&msg(json!({"planetUuid": "p-1"})), &meta)
            .unwrap_err();
        assert!(
            err.starts_with("column trace: headers: header trace-id: 300 is not a byte"),
            "{err}"
        );
    }

    #[test]
    fn missing_optional_is_null_missing_key_is_an_error() {
        let m = planet();
        let r = record();
        let meta = Meta {
            record: &r,
            key: None,
            key_value: None,
        };
        let row = m.row(&msg(json!({"planetUuid": "p-1"})), &meta).unwrap();
        assert_eq!(row[1], SqlValue::String(None));
        let err = m
            .row(&msg(json!({"planetName": "Mars"})), &meta)
            .unwrap_err();
        assert_eq!(err, "column uuid: $.planetUuid matched nothing");
        let err = m.key(&msg(json!({"planetUuid": null})), &meta).unwrap_err();
        assert_eq!(err, "column uuid: $.planetUuid is null");
    }

    #[test]
    fn conversion_errors_name_the_column_not_the_value() {
        let m = planet();
        let r = record();
        let meta = Meta {
            record: &r,
            key: None,
            key_value: None,
        };
        let err = m
            .row(
                &msg(json!({"planetUuid": "p", "details": {"mass": "heavy-secret"}})),
                &meta,
            )
            .unwrap_err();
        assert_eq!(
            err,
            "column mass ($.details.mass): expected a number, got a string"
        );
        assert!(!err.contains("heavy-secret"));
    }

    #[test]
    fn conversions() {
        use ColumnType::*;
        assert_eq!(
            Integer.convert(&msg(json!(42.0))),
            Ok(SqlValue::BigInt(Some(42)))
        );
        assert_eq!(
            Integer.convert(&msg(json!("17"))),
            Ok(SqlValue::BigInt(Some(17)))
        );
        assert!(Integer.convert(&msg(json!(1.5))).is_err());
        assert_eq!(
            Boolean.convert(&msg(json!("true"))),
            Ok(SqlValue::Bool(Some(true)))
        );
        assert!(Boolean.convert(&msg(json!(1))).is_err());
        assert_eq!(
            Text.convert(&msg(json!(12))),
            Ok(SqlValue::String(Some("12".into())))
        );
        assert_eq!(
            Text.convert(&msg(json!({"a": 1}))),
            Ok(SqlValue::String(Some("{\"a\":1}".into())))
        );
        assert_eq!(
            Timestamp.convert(&msg(json!("2024-01-02T03:04:05.678+01:00"))),
            Ok(SqlValue::ChronoDateTimeUtc(
                DateTime::from_timestamp_millis(1_704_161_045_678)
            ))
        );
        assert!(Float.convert(&msg(json!("NaN"))).is_err());
        // MariaDB would store year 10000 as 0000-00-00: refuse it up front, on every backend.
        let far = Timestamp
            .convert(&msg(json!(253402300800000_i64)))
            .unwrap_err();
        assert!(far.contains("outside the years 1000 to 9999"), "{far}");
        assert!(
            Timestamp
                .convert(&msg(json!("0999-12-31T23:59:59Z")))
                .is_err()
        );
        assert!(
            Timestamp
                .convert(&msg(json!("9999-12-31T23:59:59.999Z")))
                .is_ok()
        );
    }

    #[test]
    fn tombstone_needs_a_key_from_the_record_key() {
        let r = record();
        let p9 = Message::from("p-9");
        let meta = Meta {
            record: &r,
            key: Some("p-9"),
            key_value: Some(&p9),
        };
        let err = planet().tombstone_key(&meta).unwrap_err();
        assert!(err.contains("does not come from the record key"), "{err}");
        let by_key = DeclarativeMapping::compile(
            &config(
                json!([{"name": "uuid", "from": "key"}, {"name": "name", "path": "$.n"}]),
                &["uuid"],
            ),
            "s",
        )
        .unwrap();
        assert_eq!(
            by_key.tombstone_key(&meta).unwrap(),
            vec![SqlValue::String(Some("p-9".into()))]
        );
    }

    #[test]
    fn compile_lists_every_problem() {
        let cfg: SyncConfig = serde_json::from_value(json!({
            "topics": [], "table": "bad table", "key": ["id", "nope"],
            "columns": [
                {"name": "id", "path": "$.[broken"},
                {"name": "x;drop", "path": "$.x", "type": "varchar"},
                {"name": "y", "from": "weather"},
                {"name": "z"}
            ]
        }))
        .unwrap();
        let problems = DeclarativeMapping::compile(&cfg, "sync 1 (t)").unwrap_err();
        let text = problems.join("\n");
        for needle in [
            "table \"bad table\" is not a plain SQL identifier",
            "topics is empty",
            "bad JSONPath \"$.[broken\"",
            "column name \"x;drop\" is not a plain SQL identifier",
            "unknown type \"varchar\"",
            "unknown from \"weather\"",
            "give exactly one of path or from",
            "key column \"nope\" is not among the columns",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(problems.iter().all(|p| p.starts_with("sync 1 (t): ")));
    }

    #[test]
    fn at_most_one_version_column_of_type_integer_or_timestamp() {
        let check = |columns: Value| {
            DeclarativeMapping::compile(&config(columns, &["id"]), "s")
                .err()
                .unwrap_or_default()
                .join("\n")
        };
        let ok = DeclarativeMapping::compile(
            &config(
                json!([{"name": "id", "path": "$.id"}, {"name": "v", "path": "$.v", "type": "integer", "version": true}]),
                &["id"],
            ),
            "s",
        )
        .unwrap();
        assert_eq!(ok.version(), Some(1));
        assert!(
            check(json!([{"name": "id", "path": "$.id"}, {"name": "t", "from": "timestamp", "type": "timestamp", "version": true}]))
                .is_empty()
        );
        let text = check(
            json!([{"name": "id", "path": "$.id"}, {"name": "v", "path": "$.v", "type": "text", "version": true}]),
        );
        assert!(
            text.contains(
                "column \"v\": a version column must be of type integer or timestamp, not \"text\""
            ),
            "{text}"
        );
        let text = check(json!([
            {"name": "id", "path": "$.id"},
            {"name": "v", "path": "$.v", "type": "integer", "version": true},
            {"name": "w", "from": "timestamp", "type": "timestamp", "version": true}
        ]));
        assert!(
            text.contains("2 columns are marked version = true (v, w)"),
            "{text}"
        );
        let text =
            check(json!([{"name": "id", "path": "$.id", "type": "integer", "version": true}]));
        assert!(
            text.contains("a key column cannot be the version column"),
            "{text}"
        );
        // A message without its version is dead-lettered with a reason naming the column.
        let r = record();
        let meta = Meta {
            record: &r,
            key: None,
            key_value: None,
        };
        let err = ok.row(&msg(json!({"id": "a"})), &meta).unwrap_err();
        assert_eq!(err, "column v: $.v matched nothing");
        let err = ok
            .delete_version(&msg(json!({"id": "a", "v": "x"})), &meta)
            .unwrap_err();
        assert!(
            err.starts_with("column v ($.v): expected an integer"),
            "{err}"
        );
        assert_eq!(
            ok.delete_version(&msg(json!({"id": "a", "v": 4})), &meta),
            Ok(Some(SqlValue::BigInt(Some(4))))
        );
    }

    #[test]
    fn general_jsonpath_takes_the_first_match() {
        let cfg = config(
            json!([{"name": "id", "path": "$.id"}, {"name": "tag", "path": "$.tags[?@.primary == true].name"}]),
            &["id"],
        );
        let m = DeclarativeMapping::compile(&cfg, "s").unwrap();
        let r = record();
        let meta = Meta {
            record: &r,
            key: None,
            key_value: None,
        };
        let message = msg(
            json!({"id": "1", "tags": [{"name": "a"}, {"name": "b", "primary": true}, {"name": "c", "primary": true}]}),
        );
        assert_eq!(
            m.row(&message, &meta).unwrap()[1],
            SqlValue::String(Some("b".into()))
        );
    }
}
