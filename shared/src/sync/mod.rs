//! Applying a batch's operations to SQL: collapse per entity key, then bulk statements in one transaction.
//!
//! - [`mapping`]: the [`Mapping`] trait every sync implements;
//! - [`declarative`]: syncs described in config; [`typed`]: syncs over a sea-orm entity;
//! - [`table`]: table definitions and the identifier rule; [`dead_letter`]: the dead-letter table;
//! - this file: the [`Changes`] of one batch and the [`Sink`] that writes them.

pub mod dead_letter;
pub mod declarative;
pub mod mapping;
pub mod table;
pub mod typed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, OnConflict, Query, Value as SqlValue, ValueTuple,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
};
use tokio::sync::OnceCell;

pub use dead_letter::DeadLetter;
pub use mapping::{Mapping, Meta};
pub use table::TableDef;

/// What a batch does to one mapping's table, after collapsing: at most one operation per key.
#[derive(Debug, Default)]
pub struct Changes {
    ops: Vec<Option<Op>>,
    slots: HashMap<Vec<SqlValue>, usize>,
    superseded: usize,
}

#[derive(Debug)]
enum Op {
    Upsert(Vec<SqlValue>),
    Delete(Vec<SqlValue>),
}

impl Changes {
    /// Records an upsert of `row`, whose key values are `key`; a later change of the same key replaces it.
    pub fn upsert(&mut self, key: Vec<SqlValue>, row: Vec<SqlValue>) {
        self.push(key, Op::Upsert(row));
    }

    pub fn delete(&mut self, key: Vec<SqlValue>) {
        self.push(key.clone(), Op::Delete(key));
    }

    fn push(&mut self, key: Vec<SqlValue>, op: Op) {
        let slot = self.ops.len();
        self.ops.push(Some(op));
        if let Some(previous) = self.slots.insert(key, slot) {
            // Last in batch order wins: the earlier change would be overwritten anyway, so never send it.
            self.ops[previous] = None;
            self.superseded += 1;
        }
    }

    /// Messages whose change a later message of the same key replaced.
    pub fn superseded(&self) -> usize {
        self.superseded
    }

    /// (rows to upsert, keys to delete), in batch order.
    fn split(self) -> (Vec<Vec<SqlValue>>, Vec<Vec<SqlValue>>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for op in self.ops.into_iter().flatten() {
            match op {
                Op::Upsert(row) => upserts.push(row),
                Op::Delete(key) => deletes.push(key),
            }
        }
        (upserts, deletes)
    }
}

/// Rows written by one applied batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub upserted: usize,
    pub deleted: usize,
    pub dead_lettered: usize,
}

/// Database settings that do not come from the URL.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub dead_letter_table: String,
    /// Upper bound on rows per INSERT / keys per DELETE; the bind-parameter limit may lower it.
    pub max_rows_per_statement: usize,
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            dead_letter_table: dead_letter::DEFAULT_TABLE.to_string(),
            max_rows_per_statement: 2_000,
            // One batch at a time per instance: one connection, and one spare for table creation.
            max_connections: 2,
            connect_timeout: Duration::from_secs(10),
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
}

impl Sink {
    /// Opens the pool without connecting, so a cold start never fails on the database: the first batch
    /// connects, and a failure there is transient like any other.
    pub async fn open(
        url: &str,
        mappings: Vec<Arc<dyn Mapping>>,
        options: SinkOptions,
    ) -> Result<Self, DbErr> {
        let mut connect = ConnectOptions::new(url.to_string());
        connect
            .max_connections(options.max_connections)
            .min_connections(0)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy(true)
            // sqlx logs statements with their values, and values are message payloads.
            .sqlx_logging(false);
        let db = Database::connect(connect).await?;
        Ok(Self {
            db,
            mappings,
            options,
            ready: OnceCell::new(),
        })
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Creates missing tables, once per instance (retried on the next batch if it failed).
    pub async fn ensure_tables(&self) -> Result<(), DbErr> {
        self.ready
            .get_or_try_init(|| async {
                let backend = self.backend();
                for m in &self.mappings {
                    self.db.execute(&m.create_table(backend)).await?;
                }
                self.db
                    .execute(&dead_letter::create_table(&self.options.dead_letter_table))
                    .await?;
                Ok::<(), DbErr>(())
            })
            .await?;
        Ok(())
    }

    /// Writes one batch in one transaction: every mapping's upserts and deletes, and the dead letters. On any
    /// error the transaction rolls back and nothing of the batch is written.
    pub async fn apply(
        &self,
        changes: Vec<Changes>,
        dead_letters: &[DeadLetter],
    ) -> Result<Applied, DbErr> {
        self.ensure_tables().await?;
        let backend = self.backend();
        let txn = self.db.begin().await?;
        let mut applied = Applied::default();
        for (mapping, changes) in self.mappings.iter().zip(changes) {
            let table = mapping.table();
            let (upserts, deletes) = changes.split();
            applied.upserted += upserts.len();
            applied.deleted += deletes.len();
            let rows = self.rows_per_statement(backend, table.columns.len());
            for chunk in upserts.chunks(rows) {
                txn.execute(&upsert_statement(table, chunk)?).await?;
            }
            let keys = self.rows_per_statement(backend, table.key.len());
            for chunk in deletes.chunks(keys) {
                txn.execute(&delete_statement(table, chunk)).await?;
            }
        }
        let table = dead_letter::table_def(&self.options.dead_letter_table);
        let rows = self.rows_per_statement(backend, table.columns.len());
        for chunk in dead_letters.chunks(rows) {
            let rows: Vec<Vec<SqlValue>> = chunk.iter().map(DeadLetter::row).collect();
            txn.execute(&upsert_statement_only(&table, &rows, &["error"])?)
                .await?;
        }
        applied.dead_lettered = dead_letters.len();
        txn.commit().await?;
        Ok(applied)
    }

    fn rows_per_statement(&self, backend: DbBackend, columns: usize) -> usize {
        (table::bind_limit(backend) / columns.max(1))
            .clamp(1, self.options.max_rows_per_statement.max(1))
    }
}

/// `INSERT … VALUES (…), (…) ON CONFLICT (key) DO UPDATE SET every other column` (MySQL: ON DUPLICATE KEY).
fn upsert_statement(
    table: &TableDef,
    rows: &[Vec<SqlValue>],
) -> Result<sea_orm::sea_query::InsertStatement, DbErr> {
    let update: Vec<&str> = table.non_key_columns().collect();
    upsert_statement_only(table, rows, &update)
}

fn upsert_statement_only(
    table: &TableDef,
    rows: &[Vec<SqlValue>],
    update: &[&str],
) -> Result<sea_orm::sea_query::InsertStatement, DbErr> {
    let mut stmt = Query::insert();
    stmt.into_table(Alias::new(&table.name))
        .columns(table.columns.iter().map(Alias::new));
    for row in rows {
        stmt.values(row.iter().cloned().map(Expr::val))
            .map_err(|e| DbErr::Custom(format!("row for {}: {e}", table.name)))?;
    }
    let key = table.key_columns().map(Alias::new);
    // With nothing to update, "update the key to itself" keeps the statement idempotent on every backend.
    let update: Vec<Alias> = if update.is_empty() {
        table.key_columns().map(Alias::new).collect()
    } else {
        update.iter().map(|c| Alias::new(*c)).collect()
    };
    stmt.on_conflict(OnConflict::columns(key).update_columns(update).to_owned());
    Ok(stmt)
}

/// `DELETE … WHERE key IN (…)`, or `(k1, k2) IN ((…), …)` for a composite key.
fn delete_statement(
    table: &TableDef,
    keys: &[Vec<SqlValue>],
) -> sea_orm::sea_query::DeleteStatement {
    let mut stmt = Query::delete();
    stmt.from_table(Alias::new(&table.name));
    let columns: Vec<&str> = table.key_columns().collect();
    if let [column] = columns.as_slice() {
        stmt.and_where(
            Expr::col(Alias::new(*column)).is_in(keys.iter().filter_map(|k| k.first().cloned())),
        );
    } else {
        stmt.and_where(
            Expr::tuple(columns.iter().map(|c| Expr::col(Alias::new(*c))))
                .in_tuples(keys.iter().map(|k| ValueTuple::Many(k.clone()))),
        );
    }
    stmt
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder};

    fn s(v: &str) -> SqlValue {
        SqlValue::String(Some(v.into()))
    }

    #[test]
    fn last_change_per_key_wins() {
        let mut c = Changes::default();
        c.upsert(vec![s("a")], vec![s("a"), s("1")]);
        c.upsert(vec![s("b")], vec![s("b"), s("1")]);
        c.delete(vec![s("a")]);
        c.upsert(vec![s("b")], vec![s("b"), s("2")]);
        assert_eq!(c.superseded(), 2);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts, vec![vec![s("b"), s("2")]]);
        assert_eq!(deletes, vec![vec![s("a")]]);
    }

    #[test]
    fn statements() {
        let table = TableDef {
            name: "t".into(),
            columns: vec!["k1".into(), "k2".into(), "v".into()],
            key: vec![0, 1],
        };
        let up = upsert_statement(&table, &[vec![s("a"), s("b"), s("c")]]).unwrap();
        assert_eq!(
            up.to_string(PostgresQueryBuilder),
            r#"INSERT INTO "t" ("k1", "k2", "v") VALUES ('a', 'b', 'c') ON CONFLICT ("k1", "k2") DO UPDATE SET "v" = "excluded"."v""#
        );
        assert_eq!(
            up.to_string(MysqlQueryBuilder),
            "INSERT INTO `t` (`k1`, `k2`, `v`) VALUES ('a', 'b', 'c') ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)"
        );
        let del = delete_statement(&table, &[vec![s("a"), s("b")], vec![s("c"), s("d")]]);
        assert_eq!(
            del.to_string(PostgresQueryBuilder),
            r#"DELETE FROM "t" WHERE ("k1", "k2") IN (('a', 'b'), ('c', 'd'))"#
        );
        let single = TableDef {
            name: "t".into(),
            columns: vec!["id".into()],
            key: vec![0],
        };
        let up = upsert_statement(&single, &[vec![s("a")]]).unwrap();
        assert!(
            up.to_string(PostgresQueryBuilder)
                .ends_with(r#"DO UPDATE SET "id" = "excluded"."id""#)
        );
    }
}
