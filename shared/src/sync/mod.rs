//! Applying a batch's operations to SQL: collapse per entity key, then bulk statements in one transaction.
//!
//! - [`mapping`]: the [`Mapping`] trait every sync implements;
//! - [`declarative`]: syncs described in config; [`typed`]: syncs over a sea-orm entity;
//! - [`table`]: table definitions and the identifier rule; [`dead_letter`]: the dead-letter table;
//! - [`preflight`]: every table compared with the config before the first batch (the misconfigured class);
//! - [`version`]: the version guard of syncs with a version column, tombstones, stale changes;
//! - [`unnest`]: PostgreSQL's upsert and delete with a column bound as one array;
//! - [`collapse`]: the [`Changes`] of one batch; [`apply`] and [`statements`]: writing them in one transaction;
//! - [`setup`]: the tables created and compared before the first batch; [`db_error`]: what a database error means;
//! - this file: the [`Sink`] (the pool, its options) and its lifecycle.

mod apply;
mod collapse;
mod db_error;
pub(crate) mod dead_letter;
pub(crate) mod declarative;
pub(crate) mod mapping;
pub mod normal;
pub(crate) mod plan;
pub(crate) mod preflight;
pub(crate) mod redrive;
mod setup;
mod statements;
pub(crate) mod table;
pub mod typed;
mod unnest;
pub mod version;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, OnConflict, Query, Value as SqlValue, ValueTuple,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};
use tokio::sync::OnceCell;

pub use apply::ApplyError;
pub(crate) use apply::Extra;
pub use collapse::Changes;
use collapse::{Op, Values};
pub(crate) use db_error::setup_refusal;
use db_error::*;
pub use dead_letter::DeadLetter;
pub use mapping::{Mapping, Meta};
pub use preflight::{PreflightError, Problem};
use statements::*;
pub use table::TableDef;

/// Which message a change came from: the position of its record in the batch's order, and the message's index
/// within the record. Kept so that a row the database rejects can be dead-lettered with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The record's position in the batch's order.
    pub record: usize,
    /// The message's index within its record.
    pub index: u32,
}

/// Rows written by one applied batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserted: usize,
    /// Rows deleted.
    pub deleted: usize,
    /// Dead letters written.
    pub dead_lettered: usize,
    /// Changes the database refused as data (a value out of its column's range, an invalid byte sequence…),
    /// with the reason: they were dead-lettered instead of failing the batch forever.
    pub rejected: Vec<(Origin, String)>,
    /// Changes not applied because the row or its tombstone has a newer version ([`version`]).
    pub stale: Vec<Origin>,
}

/// Database settings that do not come from the URL.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The dead-letter table's name.
    pub dead_letter_table: String,
    /// Upper bound on rows per INSERT / keys per DELETE; the bind-parameter limit may lower it.
    pub max_rows_per_statement: usize,
    /// The pool's size.
    pub max_connections: u32,
    /// How long connecting (or taking a connection from the pool) may take.
    pub connect_timeout: Duration,
    /// How long one statement may run: PostgreSQL's `statement_timeout`, MariaDB's `max_statement_time`
    /// (the server cancels the statement; a server that stops answering is the batch deadline's case).
    pub statement_timeout: Duration,
    /// How long a batch's database work may take, kept by the caller (the runner, Lambda mode) on its side:
    /// it also covers a server or network that stops answering. Below the template's Lambda timeout.
    pub batch_timeout: Duration,
    /// How long a versioned sync's delete is remembered ([`version`]).
    pub tombstone_retention: Duration,
    /// Whether the preflight creates a missing table; `false`: a missing table is a [`Problem`].
    pub create_tables: bool,
    /// Whether connecting may create a SQLite file that is not there (`mode=rwc`); `replay --plan`, which
    /// leaves nothing behind, says no.
    pub create_database: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            dead_letter_table: dead_letter::DEFAULT_TABLE.to_string(),
            max_rows_per_statement: 2_000,
            // One batch at a time per instance: one connection, and one spare for table creation.
            max_connections: 2,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            batch_timeout: Duration::from_secs(90),
            tombstone_retention: version::DEFAULT_RETENTION,
            create_tables: true,
            create_database: true,
        }
    }
}

/// The database side of a function instance: a lazily connected pool and the tables its mappings write.
#[derive(Debug)]
pub struct Sink {
    db: DatabaseConnection,
    mappings: Vec<Arc<dyn Mapping>>,
    options: SinkOptions,
    ready: OnceCell<()>,
    lock_conflicts: std::sync::atomic::AtomicUsize,
    /// host:port of a database server (never the URL: it may hold a password), for connection errors.
    address: Option<String>,
    pruning: version::Pruning,
    /// MySQL / MariaDB: the server's `max_allowed_packet`, read by the preflight (0: not known, or another
    /// backend). Statements are cut to stay under it and a row over it is dead-lettered ([`Sink::packet_budget`]).
    max_packet: std::sync::atomic::AtomicUsize,
}

/// Whether a connection given back to the pool still answers within `limit`. The pool pings it anyway, with
/// no deadline: a connection whose statement was dropped at the batch deadline (a server or network that
/// stopped answering) would hold its place in the pool for good. One that does not answer is closed.
async fn answers_within<C: sea_orm::sqlx::Connection>(
    conn: &mut C,
    limit: Duration,
) -> Result<bool, sea_orm::sqlx::Error> {
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(sea_orm::sqlx::Error::PoolTimedOut),
    }
}

impl Sink {
    /// Opens the pool without connecting, so a cold start never fails on the database: the first batch
    /// connects, and a failure there is transient like any other.
    pub async fn open(
        url: &str,
        mappings: Vec<Arc<dyn Mapping>>,
        options: SinkOptions,
    ) -> Result<Self, DbErr> {
        let url = if options.create_database {
            url.to_string()
        } else {
            existing_sqlite_file(url)?
        };
        let mut connect = ConnectOptions::new(url.clone());
        connect
            .max_connections(options.max_connections)
            .min_connections(0)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy(true)
            // PostgreSQL: `statement_timeout` set in the startup packet, no round trip.
            .statement_timeout(options.statement_timeout)
            // sqlx logs statements with their values, and values are message payloads.
            .sqlx_logging(false);
        // MariaDB: `max_statement_time` (seconds) on each new connection. MySQL has no such variable (its
        // `max_execution_time` covers SELECT only): the refusal is ignored there, the batch deadline remains.
        let seconds = options.statement_timeout.as_secs_f64();
        let released = options.connect_timeout;
        connect.map_sqlx_mysql_pool_opts(move |pool| {
            pool.after_connect(move |conn, _| {
                Box::pin(async move {
                    use sea_orm::sqlx::Executor;
                    let set = format!("SET SESSION max_statement_time = {seconds}");
                    if let Err(e) = conn.execute(sea_orm::sqlx::AssertSqlSafe(set)).await {
                        tracing::debug!(error = %e, "no max_statement_time (not MariaDB)");
                    }
                    Ok(())
                })
            })
            .after_release(move |conn, _| Box::pin(answers_within(conn, released)))
        });
        connect.map_sqlx_postgres_pool_opts(move |pool| {
            pool.after_release(move |conn, _| Box::pin(answers_within(conn, released)))
        });
        let db = Database::connect(connect).await?;
        Ok(Self {
            db,
            mappings,
            options,
            ready: OnceCell::new(),
            lock_conflicts: Default::default(),
            address: server_address(&url),
            pruning: version::Pruning::default(),
            max_packet: Default::default(),
        })
    }

    /// The database's kind.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// A SQLite URL that opens its file only if it exists (`mode=rwc` becomes `mode=rw`), or why not: the file is
/// missing. Any other URL as it is.
fn existing_sqlite_file(url: &str) -> Result<String, DbErr> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return Ok(url.to_string());
    }
    let options = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| DbErr::Custom(format!("SQLite URL: {e}")))?;
    let file = options.get_filename();
    let in_memory = file.as_os_str() == ":memory:" || url.contains("mode=memory");
    if !in_memory && !file.exists() {
        return Err(DbErr::Custom(format!(
            "the SQLite file {} does not exist (nothing is created here)",
            file.display()
        )));
    }
    Ok(url.replace("mode=rwc", "mode=rw"))
}

/// The host:port of a PostgreSQL or MySQL URL (default ports filled in), `None` for SQLite. Only the part
/// after the user info's last `@` is read, so a password never ends up in it.
fn server_address(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let port = match scheme {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        _ => return None,
    };
    let authority = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = authority.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use collapse::{cmp_keys, cmp_values};
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder};

    fn s(v: &str) -> SqlValue {
        SqlValue::String(Some(v.into()))
    }

    #[test]
    fn last_change_per_key_wins() {
        let at = |record| Origin { record, index: 0 };
        let mut c = Changes::new(vec![0]);
        c.upsert(vec![s("a"), s("1")], at(0));
        c.upsert(vec![s("b"), s("1")], at(1));
        c.delete(vec![s("a")], at(2));
        c.upsert(vec![s("b"), s("2")], at(3));
        assert_eq!(c.superseded(), 2);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts, vec![(&[s("b"), s("2")][..], at(3))]);
        assert_eq!(deletes, vec![(&[s("a")][..], at(2))]);
    }

    #[test]
    fn composite_keys_collapse_on_every_key_column_and_only_on_them() {
        let at = |record| Origin { record, index: 0 };
        // Key columns 2 and 0 of the row, in that order; deletes name them in the same order.
        let mut c = Changes::new(vec![2, 0]);
        for i in 0..200 {
            c.upsert(
                vec![
                    s(&format!("a{}", i % 10)),
                    s("v"),
                    s(&format!("b{}", i % 20)),
                ],
                at(i),
            );
        }
        // (a, b) pairs repeat every 20 messages: 20 distinct keys, 180 superseded.
        assert_eq!(c.superseded(), 180);
        c.delete(vec![s("b3"), s("a3")], at(200));
        c.delete(vec![s("a3"), s("b3")], at(201)); // columns swapped: another key
        assert_eq!(c.superseded(), 181);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts.len(), 19);
        assert_eq!(deletes.len(), 2);
        // Every surviving upsert is its key's last message, and (a3, b3) is deleted, not upserted.
        assert!(upserts.iter().all(|(_, o)| o.record >= 180));
        assert!(
            upserts
                .iter()
                .all(|(row, _)| (&row[0], &row[2]) != (&s("a3"), &s("b3")))
        );
    }

    #[test]
    fn rows_and_keys_are_written_in_key_order_not_batch_order() {
        let at = |record| Origin { record, index: 0 };
        // Key column 1 of the row: every writer must lock the same keys in the same order.
        let mut c = Changes::new(vec![1]);
        for (i, k) in ["m", "b", "z", "a"].into_iter().enumerate() {
            c.upsert(vec![s("v"), s(k)], at(i));
        }
        c.delete(vec![s("y")], at(4));
        c.delete(vec![s("c")], at(5));
        let (upserts, deletes) = c.split();
        let keys: Vec<&SqlValue> = upserts.iter().map(|(row, _)| &row[1]).collect();
        assert_eq!(keys, [&s("a"), &s("b"), &s("m"), &s("z")]);
        assert_eq!(deletes[0].0, &[s("c")][..]);

        // One total order over every kind of value: integers by number whatever their width, text by bytes
        // (not by a collation), NULL first, and kinds never interleaved.
        let mut values = vec![
            SqlValue::BigInt(Some(10)),
            s("b"),
            SqlValue::Int(Some(-3)),
            SqlValue::String(None),
            s("B"),
            SqlValue::TinyUnsigned(Some(7)),
            SqlValue::Double(Some(0.5)),
            SqlValue::Bool(Some(true)),
            SqlValue::Int(None),
        ];
        values.sort_by(cmp_values);
        assert_eq!(
            values,
            vec![
                SqlValue::Bool(Some(true)),
                SqlValue::Int(None),
                SqlValue::Int(Some(-3)),
                SqlValue::TinyUnsigned(Some(7)),
                SqlValue::BigInt(Some(10)),
                SqlValue::Double(Some(0.5)),
                SqlValue::String(None),
                s("B"),
                s("b"),
            ]
        );
        // Composite keys compare column by column.
        assert!(cmp_keys([s("a"), s("z")].iter(), [s("b"), s("a")].iter()).is_lt());
    }

    #[test]
    fn server_addresses_never_hold_the_password() {
        assert_eq!(
            server_address("postgres://u:p@ss@db.example:6543/x?sslmode=require").as_deref(),
            Some("db.example:6543")
        );
        assert_eq!(
            server_address("mysql://root@127.0.0.1/test").as_deref(),
            Some("127.0.0.1:3306")
        );
        assert_eq!(
            server_address("postgres://u:pw@[::1]/db").as_deref(),
            Some("[::1]:5432")
        );
        assert_eq!(server_address("sqlite://x.db?mode=rwc"), None);
    }

    #[test]
    fn postgres_arrays_go_in_one_statement_and_values_in_recurring_sizes() {
        let origin = Origin {
            record: 0,
            index: 0,
        };
        let rows: Vec<Vec<SqlValue>> = (0..1_825)
            .map(|i| vec![s(&format!("k{i}")), SqlValue::BigInt(Some(i))])
            .collect();
        let mut values: Vec<Values<'_>> = rows.iter().map(|r| (r.as_slice(), origin)).collect();
        let sizes = |backend, values: &[Values<'_>]| {
            let (arrays, chunks) = super::statements(backend, values, 2, 2_000, None);
            (
                arrays.is_some(),
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(sizes(DbBackend::Postgres, &values), (true, vec![1_825]));
        let powers = vec![1, 32, 256, 512, 1_024];
        assert_eq!(sizes(DbBackend::MySql, &values), (false, powers.clone()));
        assert_eq!(sizes(DbBackend::Sqlite, &values), (false, powers.clone()));
        // A NULL anywhere: PostgreSQL gets VALUES too.
        let null = [s("k-null"), SqlValue::BigInt(None)];
        values[900] = (&null, origin);
        assert_eq!(sizes(DbBackend::Postgres, &values), (false, powers));
        // Arrays are not bound by the bind limit, only by max_rows_per_statement.
        let (_, chunks) = super::statements(DbBackend::Postgres, &values[..900], 2, 100, None);
        assert_eq!(chunks.len(), 9);
    }

    #[test]
    fn statements() {
        let table = TableDef {
            name: "t".into(),
            columns: vec!["k1".into(), "k2".into(), "v".into()],
            key: vec![0, 1],
        };
        let up = upsert_statement(&table, &[&[s("a"), s("b"), s("c")]]).unwrap();
        assert_eq!(
            up.to_string(PostgresQueryBuilder),
            r#"INSERT INTO "t" ("k1", "k2", "v") VALUES ('a', 'b', 'c') ON CONFLICT ("k1", "k2") DO UPDATE SET "v" = "excluded"."v""#
        );
        assert_eq!(
            up.to_string(MysqlQueryBuilder),
            "INSERT INTO `t` (`k1`, `k2`, `v`) VALUES ('a', 'b', 'c') ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)"
        );
        let del = delete_statement(&table, &[&[s("a"), s("b")], &[s("c"), s("d")]]);
        assert_eq!(
            del.to_string(PostgresQueryBuilder),
            r#"DELETE FROM "t" WHERE ("k1", "k2") IN (('a', 'b'), ('c', 'd'))"#
        );
        let single = TableDef {
            name: "t".into(),
            columns: vec!["id".into()],
            key: vec![0],
        };
        let up = upsert_statement(&single, &[&[s("a")]]).unwrap();
        assert!(
            up.to_string(PostgresQueryBuilder)
                .ends_with(r#"DO UPDATE SET "id" = "excluded"."id""#)
        );
    }

    #[test]
    fn quoted_values_never_reach_a_reason_and_names_do() {
        let cases = [
            // PostgreSQL
            (
                r#"invalid input syntax for type integer: "abc""#,
                r#"invalid input syntax for type integer: "...""#,
            ),
            (
                "value too long for type character varying(5)",
                "value too long for type character varying(5)",
            ),
            (
                r#"null value in column "x" of relation "t" violates not-null constraint"#,
                r#"null value in column "x" of relation "t" violates not-null constraint"#,
            ),
            (
                r#"invalid byte sequence for encoding "UTF8": 0x00"#,
                r#"invalid byte sequence for encoding "UTF8": 0x00"#,
            ),
            (
                r#"duplicate key value violates unique constraint "t_pkey""#,
                r#"duplicate key value violates unique constraint "t_pkey""#,
            ),
            (
                r#"index row size 3016 exceeds btree version 4 maximum 2704 for index "servicea_planet_pkey""#,
                r#"index row size 3016 exceeds btree version 4 maximum 2704 for index "servicea_planet_pkey""#,
            ),
            (
                r#"value "99999999999" is out of range for type integer"#,
                r#"value "..." is out of range for type integer"#,
            ),
            (
                r#"invalid input syntax for type json: "a "quoted" b""#,
                r#"invalid input syntax for type json: "...""#,
            ),
            // MariaDB / MySQL
            (
                "Incorrect integer value: 'abc' for column `t`.`x` at row 1",
                "Incorrect integer value: '...' for column `t`.`x` at row 1",
            ),
            (
                "Data too long for column 'name' at row 1",
                "Data too long for column 'name' at row 1",
            ),
            (
                "Incorrect string value: '\\xF0\\x9F\\x98\\x80' for column `test`.`t`.`name` at row 1",
                "Incorrect string value: '...' for column `test`.`t`.`name` at row 1",
            ),
            (
                "Incorrect integer value: 'it's' for column 'x' at row 1",
                "Incorrect integer value: '...' for column 'x' at row 1",
            ),
            (
                "Duplicate entry 'k' for key 'PRIMARY'",
                "Duplicate entry '...' for key 'PRIMARY'",
            ),
            // SQLite
            (
                "NOT NULL constraint failed: t.x",
                "NOT NULL constraint failed: t.x",
            ),
            (
                "CHECK constraint failed: length(uuid) <= 2000",
                "CHECK constraint failed: length(uuid) <= 2000",
            ),
            // A quote left open hides the rest.
            ("unterminated 'sec", "unterminated '..."),
        ];
        for (message, expected) in cases {
            assert_eq!(redact_quoted(message), expected, "{message}");
        }
    }

    /// `execute_all` runs every statement in order on the transaction, and a failing one stops the rest: the
    /// statement built while it ran is never sent.
    #[tokio::test]
    async fn statements_run_in_order_and_a_failure_stops_the_rest() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let sql = |s: &str| Ok(Statement::from_string(DbBackend::Sqlite, s));
        db.execute_unprepared("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            .await
            .unwrap();
        let txn = db.begin().await.unwrap();
        // In order: the update finds the row the insert before it wrote.
        let ok = [
            sql("INSERT INTO t VALUES (1, 'a')"),
            sql("UPDATE t SET v = v || 'b' WHERE k = 1"),
            sql("INSERT INTO t VALUES (2, 'c')"),
        ];
        execute_all(&txn, ok.into_iter()).await.unwrap();
        let failing = [
            sql("INSERT INTO t VALUES (3, 'd')"),
            sql("INSERT INTO missing VALUES (4)"),
            sql("INSERT INTO t VALUES (5, 'e')"),
        ];
        let err = execute_all(&txn, failing.into_iter()).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // A statement that cannot be built stops the rest as well.
        let unbuilt = [
            sql("INSERT INTO t VALUES (6, 'f')"),
            Err(DbErr::Custom("not built".into())),
            sql("INSERT INTO t VALUES (7, 'g')"),
        ];
        let err = execute_all(&txn, unbuilt.into_iter()).await.unwrap_err();
        assert!(err.to_string().contains("not built"), "{err}");
        let rows = txn
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT k, v FROM t ORDER BY k",
            ))
            .await
            .unwrap();
        let rows: Vec<(i64, String)> = rows
            .iter()
            .map(|r| (r.try_get("", "k").unwrap(), r.try_get("", "v").unwrap()))
            .collect();
        let expected = [(1, "ab"), (2, "c"), (3, "d"), (6, "f")];
        let expected: Vec<(i64, String)> =
            expected.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(rows, expected);
    }
}
