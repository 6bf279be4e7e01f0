//! The preflight: before a function instance applies its first batch, every table it writes (each sync's and
//! the dead-letter table) is compared with what the config expects, from the database's own catalogs
//! (`pg_catalog`, `information_schema`, SQLite's pragmas).
//!
//! A table that does not match would otherwise fail every batch (a partition blocked without a word about
//! the table), dead-letter every record, or, worse, duplicate or merge rows silently. Such a mismatch is the
//! *misconfigured* failure class: nothing is applied and nothing is dead-lettered, and each [`Problem`] names
//! the table, the column, what was expected and what was found.
//!
//! A table that is missing is created; one that exists is only read, so a user with no CREATE grant can run
//! msk-sync on tables made for it.

use std::fmt;

use sea_orm::sea_query::{
    ColumnType as SqlType, MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder,
    TableCreateStatement, Value as SqlValue,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};

use super::declarative::ColumnType as Kind;
use super::table::TableDef;

mod inspect;

pub use inspect::inspect;
use inspect::{database_error, query};

/// One way a table differs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The table at fault.
    pub table: String,
    /// The column at fault, if it is one.
    pub column: Option<String>,
    /// What the config needs.
    pub expected: String,
    /// What the database has.
    pub found: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A problem of the database as a whole (a missing database, a grant) names no table.
        if self.table.is_empty() {
            write!(f, "database")?;
        } else {
            write!(f, "table {}", self.table)?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        write!(f, ": expected {}; found {}", self.expected, self.found)
    }
}

/// Why the preflight did not pass.
#[derive(Debug)]
pub enum PreflightError {
    /// The database could not be asked (away, timeout…): transient, the next batch asks again.
    Database(DbErr),
    /// The tables do not match the config: retrying cannot help until a person changes one or the other.
    Misconfigured(Vec<Problem>),
}

impl From<DbErr> for PreflightError {
    fn from(e: DbErr) -> Self {
        Self::Database(e)
    }
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Database(e) => write!(f, "{e}"),
            Self::Misconfigured(problems) => {
                write!(f, "the database does not match the config: ")?;
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// A table as the config expects it.
#[derive(Debug, Clone)]
pub struct Expected {
    pub def: TableDef,
    /// Creates it when it is missing. Issued only for a table the catalog did not list; its `IF NOT EXISTS`
    /// is for two instances that start at once.
    pub create: TableCreateStatement,
    /// The kind of value written to each of `def.columns`, when known; `None`: only its existence is checked.
    pub kinds: Vec<Option<Kind>>,
    /// Whether batches delete from it (syncs do; the dead-letter table is only upserted).
    pub deletes: bool,
}

impl Expected {
    /// The kinds come from the statement that would create the table, so they are the ones msk-sync itself
    /// would choose, for declarative, typed and dead-letter tables alike.
    pub fn new(def: TableDef, create: TableCreateStatement, deletes: bool) -> Self {
        let kinds = def
            .columns
            .iter()
            .map(|c| {
                create
                    .get_columns()
                    .iter()
                    .find(|d| d.get_column_name() == *c)
                    .and_then(|d| d.get_column_type())
                    .and_then(kind_of)
            })
            .collect();
        Self {
            def,
            create,
            kinds,
            deletes,
        }
    }

    fn is_key(&self, column: usize) -> bool {
        self.def.key.contains(&column)
    }

    /// The columns an upsert's `SET` writes: every non-key column, or the key itself when there is none.
    fn updated(&self) -> Vec<&str> {
        let rest: Vec<&str> = self.def.non_key_columns().collect();
        if rest.is_empty() {
            self.def.key_columns().collect()
        } else {
            rest
        }
    }
}

fn kind_of(ty: &SqlType) -> Option<Kind> {
    Some(match ty {
        SqlType::Char(_) | SqlType::String(_) | SqlType::Text => Kind::Text,
        SqlType::TinyInteger
        | SqlType::SmallInteger
        | SqlType::Integer
        | SqlType::BigInteger
        | SqlType::TinyUnsigned
        | SqlType::SmallUnsigned
        | SqlType::Unsigned
        | SqlType::BigUnsigned => Kind::Integer,
        SqlType::Float | SqlType::Double => Kind::Float,
        SqlType::Boolean => Kind::Boolean,
        SqlType::Json | SqlType::JsonBinary => Kind::Json,
        SqlType::DateTime | SqlType::Timestamp | SqlType::TimestampWithTimeZone => Kind::Timestamp,
        SqlType::Uuid => Kind::Uuid,
        SqlType::Date => Kind::Date,
        SqlType::Decimal(_) => Kind::Decimal,
        SqlType::Custom(name) => {
            let name = name.to_string().to_ascii_lowercase();
            if name == "char(36)" {
                Kind::Uuid
            } else if name.ends_with("text") {
                Kind::Text
            } else if name.starts_with("datetime") || name.starts_with("timestamp") {
                Kind::Timestamp
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// What the server is, where it matters for the tables msk-sync creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub backend: DbBackend,
    /// MySQL / MariaDB: the NO PAD binary collation new tables get (`None`: the server has none).
    pub nopad_bin: Option<&'static str>,
    pub version: String,
    /// MySQL / MariaDB: the server's `max_allowed_packet`, the largest statement it accepts (0: not known).
    pub max_packet: usize,
}

impl Server {
    pub async fn detect(db: &impl ConnectionTrait) -> Result<Self, DbErr> {
        let backend = db.get_database_backend();
        if backend != DbBackend::MySql {
            return Ok(Self {
                backend,
                nopad_bin: None,
                version: String::new(),
                max_packet: 0,
            });
        }
        let max_packet: i64 = query(db, "SELECT CAST(@@max_allowed_packet AS SIGNED)", vec![])
            .await?
            .first()
            .and_then(|r| r.try_get_by_index(0).ok())
            .unwrap_or_default();
        let version: String = query(db, "SELECT CAST(VERSION() AS CHAR)", vec![])
            .await?
            .first()
            .and_then(|r| r.try_get_by_index(0).ok())
            .unwrap_or_default();
        Ok(Self {
            backend,
            nopad_bin: nopad_bin_collation(&version),
            version,
            max_packet: usize::try_from(max_packet).unwrap_or(0),
        })
    }
}

/// `utf8mb4_bin` is PAD SPACE: "k" and "k " are one key. MariaDB (10.2+) has `utf8mb4_nopad_bin`, MySQL 8 has
/// `utf8mb4_0900_bin`; MySQL before 8 has no NO PAD binary collation for utf8mb4.
pub fn nopad_bin_collation(version: &str) -> Option<&'static str> {
    if version.to_ascii_lowercase().contains("mariadb") {
        return Some("utf8mb4_nopad_bin");
    }
    let major: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    (major >= 8).then_some("utf8mb4_0900_bin")
}

/// Whether a MySQL / MariaDB collation compares byte for byte, trailing spaces included.
fn mysql_bytewise(collation: &str) -> bool {
    let c = collation.to_ascii_lowercase();
    c == "binary" || c.ends_with("_nopad_bin") || c.ends_with("_0900_bin")
}

/// One column as the catalog lists it.
#[derive(Debug, Clone, Default)]
pub struct FoundColumn {
    pub name: String,
    /// The type's family as the catalog names it, lower case (`bigint`, `character varying`, `varchar`…).
    pub family: String,
    /// The full type, for messages (`varchar(255)`, `character varying(40)`).
    pub display: String,
    /// NOT NULL without a default, identity or generation: an INSERT that leaves it out fails.
    pub required: bool,
    pub collation: Option<String>,
    /// Whether the collation tells apart every two different strings.
    pub bytewise: bool,
}

/// A unique index (or primary key) as the catalog lists it.
#[derive(Debug, Clone, Default)]
pub struct FoundIndex {
    pub name: String,
    pub columns: Vec<String>,
    /// Why it cannot serve as the key (partial, on a prefix or an expression, deferrable).
    pub unusable: Option<String>,
}

/// A table as the database has it.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub columns: Vec<FoundColumn>,
    pub unique: Vec<FoundIndex>,
    /// Grants the database user lacks, as (privilege, column, what the database said).
    pub denied: Vec<(String, Option<String>, String)>,
}

/// Compares one table with the config; empty when it matches.
pub fn compare(expected: &Expected, found: &Found, server: &Server) -> Vec<Problem> {
    let backend = server.backend;
    let table = &expected.def.name;
    let problem = |column: Option<&str>, expected: String, found: String| Problem {
        table: table.clone(),
        column: column.map(str::to_string),
        expected,
        found,
    };
    // PostgreSQL keeps the case of the quoted names msk-sync writes; MySQL and SQLite column names ignore it.
    let same = |a: &str, b: &str| {
        if backend == DbBackend::Postgres {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let mut problems = Vec::new();
    for (i, name) in expected.def.columns.iter().enumerate() {
        let Some(col) = found.columns.iter().find(|c| same(&c.name, name)) else {
            let hint = found
                .columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
                .map(|c| format!(" (there is {:?}: names are case-sensitive here)", c.name))
                .unwrap_or_default();
            problems.push(problem(
                Some(name),
                "the column to exist".into(),
                format!("no such column{hint}"),
            ));
            continue;
        };
        let kind = expected.kinds.get(i).copied().flatten();
        if let Some(kind) = kind
            && backend != DbBackend::Sqlite
            && !accepts(kind, backend, &col.family)
        {
            problems.push(problem(
                Some(name),
                format!(
                    "a column of type {} ({})",
                    kind_name(kind),
                    families(kind, backend).join(", ")
                ),
                col.display.clone(),
            ));
            continue;
        }
        // A uuid's canonical text has no trailing space and one case: any collation tells two apart.
        if expected.is_key(i) && kind != Some(Kind::Uuid) {
            problems.extend(
                key_text_problem(table, col, server).map(|(e, f)| problem(Some(name), e, f)),
            );
        }
    }
    // A column msk-sync does not write must accept the INSERT leaving it out.
    for col in found.columns.iter().filter(|c| c.required) {
        if !expected.def.columns.iter().any(|c| same(c, &col.name)) {
            problems.push(problem(
                Some(&col.name),
                "a column msk-sync does not write to be nullable or have a default".into(),
                format!("{} NOT NULL without a default", col.display),
            ));
        }
    }
    let key: Vec<&str> = expected.def.key_columns().collect();
    let covers = |ix: &FoundIndex| {
        ix.columns.len() == key.len() && key.iter().all(|k| ix.columns.iter().any(|c| same(c, k)))
    };
    if !found
        .unique
        .iter()
        .any(|ix| ix.unusable.is_none() && covers(ix))
    {
        let seen: Vec<String> = found
            .unique
            .iter()
            .map(|ix| {
                format!(
                    "{} on ({}){}",
                    ix.name,
                    ix.columns.join(", "),
                    ix.unusable
                        .as_deref()
                        .map(|u| format!(" ({u})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        problems.push(problem(
            None,
            format!(
                "a primary key or unique index on exactly ({}), so that a key is one row",
                key.join(", ")
            ),
            if seen.is_empty() {
                "no primary key and no unique index".into()
            } else {
                format!("only {}", seen.join(", "))
            },
        ));
    }
    for (privilege, column, said) in &found.denied {
        problems.push(problem(
            column.as_deref(),
            format!("the database user to have the {privilege} privilege"),
            said.clone(),
        ));
    }
    problems
}

/// A key column of text must tell every two keys apart, as Kafka and the batch's collapse do.
fn key_text_problem(table: &str, col: &FoundColumn, server: &Server) -> Option<(String, String)> {
    let padded = match server.backend {
        DbBackend::Postgres => col.family == "character",
        DbBackend::MySql => col.family == "char",
        _ => false,
    };
    if padded {
        return Some((
            "a key column of variable length (fixed-length text ignores trailing spaces)".into(),
            col.display.clone(),
        ));
    }
    if server.backend == DbBackend::Postgres && col.family.ends_with("citext") {
        return Some((
            "a key column that compares case and bytes (citext does not)".into(),
            col.display.clone(),
        ));
    }
    if col.collation.is_none() || col.bytewise {
        return None;
    }
    let collation = col.collation.as_deref().unwrap_or_default();
    let expected = match (server.backend, server.nopad_bin) {
        (DbBackend::MySql, Some(nopad)) => format!(
            "a byte-for-byte NO PAD collation such as {nopad}, so that \"k\", \"K\" and \"k \" are three keys (ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE {nopad})"
        ),
        (DbBackend::MySql, None) => format!(
            "a byte-for-byte NO PAD collation, which {} does not have (MySQL 8.0+ or MariaDB 10.2+ do)",
            server.version
        ),
        (DbBackend::Sqlite, _) => "the BINARY collation on the key's unique index".into(),
        _ => "a deterministic collation".into(),
    };
    Some((expected, format!("collation {collation}")))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Integer => "integer",
        Kind::Float => "float",
        Kind::Boolean => "boolean",
        Kind::Json => "json",
        Kind::Timestamp => "timestamp",
        Kind::Uuid => "uuid",
        Kind::Date => "date",
        Kind::Decimal => "decimal",
    }
}

/// The type families that hold every value of a kind as msk-sync binds it.
fn families(kind: Kind, backend: DbBackend) -> &'static [&'static str] {
    let pg = backend == DbBackend::Postgres;
    match kind {
        Kind::Text if pg => &["text", "character varying", "character", "citext"],
        Kind::Text => &[
            "varchar",
            "char",
            "tinytext",
            "text",
            "mediumtext",
            "longtext",
        ],
        Kind::Integer if pg => &["bigint", "integer", "smallint", "numeric"],
        Kind::Integer => &[
            "bigint",
            "int",
            "mediumint",
            "smallint",
            "tinyint",
            "decimal",
        ],
        Kind::Float if pg => &["double precision", "real", "numeric"],
        Kind::Float => &["double", "float", "decimal"],
        Kind::Boolean if pg => &["boolean"],
        Kind::Boolean => &["tinyint", "smallint", "int", "bigint", "bit"],
        Kind::Json if pg => &["jsonb", "json"],
        // MariaDB's JSON is LONGTEXT with a check.
        Kind::Json => &["json", "longtext", "mediumtext", "text"],
        Kind::Timestamp if pg => &["timestamp with time zone", "timestamp without time zone"],
        Kind::Timestamp => &["datetime", "timestamp"],
        // Text columns hold a uuid's and a decimal's text as well.
        Kind::Uuid if pg => &["uuid", "text", "character varying", "character"],
        Kind::Uuid => &[
            "uuid",
            "char",
            "varchar",
            "text",
            "tinytext",
            "mediumtext",
            "longtext",
        ],
        Kind::Date if pg => &["date"],
        Kind::Date => &["date"],
        Kind::Decimal if pg => &["numeric", "text", "character varying"],
        Kind::Decimal => &["decimal", "varchar", "text", "mediumtext", "longtext"],
    }
}

fn accepts(kind: Kind, backend: DbBackend, family: &str) -> bool {
    let family = family.rsplit('.').next().unwrap_or(family);
    families(kind, backend).contains(&family)
}

/// The CREATE TABLE of a missing table; MySQL tables get utf8mb4 (any text a producer sends fits; the server
/// default may be latin1) and a NO PAD binary collation (keys compare byte for byte, as in Kafka and in the
/// batch's collapse: "k", "K" and "k " are three keys).
pub fn create_statement(expected: &Expected, server: &Server) -> String {
    let mut stmt = expected.create.clone();
    match server.backend {
        DbBackend::MySql => {
            stmt.character_set("utf8mb4")
                .collate(server.nopad_bin.unwrap_or("utf8mb4_bin"));
            stmt.to_string(MysqlQueryBuilder)
        }
        DbBackend::Postgres => stmt.to_string(PostgresQueryBuilder),
        _ => stmt.to_string(SqliteQueryBuilder),
    }
}

/// A CREATE TABLE the server refused, in its words: for want of a privilege (MySQL 1044 / 1142, PostgreSQL
/// 42501), or for the table's definition (MariaDB 1071 "Specified key was too long", 1170 BLOB/TEXT column
/// in a key, a type it does not know…). Such a refusal comes back on every retry, so it is the misconfigured
/// class, never a transient failure. `None` for what a retry can cure: no answer at all (a connection
/// failure), a deadlock, a lock wait, a serialization failure, SQLite's BUSY / LOCKED.
pub fn create_refused(err: &DbErr) -> Option<String> {
    use sea_orm::{RuntimeErr, sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    let sqlx::Error::Database(db) = e.as_ref() else {
        return None;
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let refused = if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Lock wait, deadlock, too many connections, shutdown, connection killed, query interrupted or timed out.
        !matches!(
            my.number(),
            1205 | 1213 | 1040 | 1053 | 1927 | 1317 | 3024 | 1969
        )
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The primary result code is the low byte of the extended one: BUSY and LOCKED pass.
        !code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
    } else {
        // Transaction rollback (40), connection (08), resources (53), object state (55: lock not available),
        // operator intervention (57: cancelled, shutting down), system (58).
        !["40", "08", "53", "55", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
    };
    refused.then(|| db.message().to_string())
}

/// Refusals for want of a privilege only ([`create_refused`] has them all).
pub fn create_denied(err: &DbErr) -> Option<String> {
    database_error(err, |code, number| {
        matches!(number, Some(1044 | 1142)) || code == "42501"
    })
}

/// The problem of a table that is missing where `create_tables = false` says not to create it.
pub fn not_created(expected: &Expected) -> Problem {
    Problem {
        table: expected.def.name.clone(),
        column: None,
        expected:
            "the table to exist (create_tables = false: msk-sync creates none; is the name right?)"
                .into(),
        found: "no such table".into(),
    }
}

/// The problem of a table that is missing and that the database would not create.
pub fn missing(expected: &Expected, said: String) -> Problem {
    Problem {
        table: expected.def.name.clone(),
        column: None,
        expected: "the table to exist, or the database user to be allowed to create it".into(),
        found: format!("no such table, and CREATE was refused: {said}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::table::create_table;
    use sea_orm::sea_query::{Alias, ColumnDef};

    fn expected() -> Expected {
        let def = TableDef {
            name: "t".into(),
            columns: vec!["id".into(), "n".into(), "doc".into()],
            key: vec![0],
        };
        let col = |n: &str| ColumnDef::new(Alias::new(n));
        let create = create_table(
            "t",
            vec![
                col("id").string().not_null().to_owned(),
                col("n").big_integer().to_owned(),
                col("doc").custom(Alias::new("LONGTEXT")).to_owned(),
            ],
            &["id"],
        );
        Expected::new(def, create, true)
    }

    fn column(name: &str, family: &str) -> FoundColumn {
        FoundColumn {
            name: name.into(),
            family: family.into(),
            display: family.into(),
            bytewise: true,
            ..FoundColumn::default()
        }
    }

    fn mariadb() -> Server {
        Server {
            backend: DbBackend::MySql,
            nopad_bin: nopad_bin_collation("10.11.19-MariaDB-0+deb12u1"),
            version: "10.11.19-MariaDB-0+deb12u1".into(),
            max_packet: 16 << 20,
        }
    }

    #[test]
    fn kinds_come_from_the_create_statement() {
        let e = expected();
        assert_eq!(
            e.kinds,
            vec![Some(Kind::Text), Some(Kind::Integer), Some(Kind::Text)]
        );
    }

    #[test]
    fn the_nopad_collation_follows_the_server() {
        assert_eq!(
            nopad_bin_collation("10.11.19-MariaDB-0+deb12u1"),
            Some("utf8mb4_nopad_bin")
        );
        assert_eq!(nopad_bin_collation("8.0.36"), Some("utf8mb4_0900_bin"));
        assert_eq!(nopad_bin_collation("5.7.44-log"), None);
        assert!(mysql_bytewise("utf8mb4_nopad_bin"));
        assert!(mysql_bytewise("utf8mb4_0900_bin"));
        assert!(!mysql_bytewise("utf8mb4_bin"));
        assert!(!mysql_bytewise("utf8mb4_general_ci"));
    }

    #[test]
    fn a_matching_table_has_no_problem() {
        let found = Found {
            columns: vec![
                column("ID", "varchar"),
                column("n", "bigint"),
                column("doc", "longtext"),
            ],
            unique: vec![FoundIndex {
                name: "PRIMARY".into(),
                columns: vec!["id".into()],
                unusable: None,
            }],
            denied: vec![],
        };
        assert_eq!(compare(&expected(), &found, &mariadb()), vec![]);
    }

    #[test]
    fn every_difference_is_named() {
        let mut id = column("id", "varchar");
        id.collation = Some("utf8mb4_bin".into());
        id.bytewise = false;
        let mut extra = column("extra", "int");
        extra.required = true;
        let found = Found {
            columns: vec![id, column("n", "varchar"), extra],
            unique: vec![FoundIndex {
                name: "by_id".into(),
                columns: vec!["id".into()],
                unusable: Some("on a prefix".into()),
            }],
            denied: vec![("INSERT".into(), None, "INSERT command denied".into())],
        };
        let problems: Vec<String> = compare(&expected(), &found, &mariadb())
            .iter()
            .map(Problem::to_string)
            .collect();
        let all = problems.join("\n");
        for needle in [
            "table t, column id: expected a byte-for-byte NO PAD collation such as utf8mb4_nopad_bin",
            "found collation utf8mb4_bin",
            "table t, column n: expected a column of type integer (bigint, int",
            "found varchar",
            "table t, column doc: expected the column to exist; found no such column",
            "table t, column extra: expected a column msk-sync does not write to be nullable",
            "table t: expected a primary key or unique index on exactly (id)",
            "found only by_id on (id) (on a prefix)",
            "expected the database user to have the INSERT privilege; found INSERT command denied",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert_eq!(problems.len(), 6, "{all}");
    }
}
