//! Versions: a change applies only if its version is not older than the row's, and a delete remembers its
//! key's version so that an older create or update cannot bring the row back.
//!
//! Only a mapping with a version column ([`super::Mapping::version`]) takes this path; without one, a batch
//! is applied exactly as before (last batch wins).
//!
//! Per batch, inside its transaction:
//! 1. tombstones older than the retention are pruned (at most once per interval per instance);
//! 2. the current versions of the batch's keys are read in bulk, from the table and from the tombstones;
//! 3. every change older than either is *stale*: counted, not written;
//! 4. the others are written with a guard in SQL as well, the safety net against a concurrent writer:
//!    PostgreSQL / SQLite `ON CONFLICT (key) DO UPDATE SET … WHERE t.version <= excluded.version`, MySQL /
//!    MariaDB `col = IF(VALUES(version) >= version, VALUES(col), col)` with the version assigned last;
//!    deletes `WHERE key = … AND version <= …`;
//! 5. an applied delete records a tombstone `(table, key, version)`; an applied upsert clears its key's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::sea_query::{
    Alias, ColumnDef, Condition, Expr, ExprTrait, InsertStatement, OnConflict, Query,
    TableCreateStatement, Value as SqlValue,
};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, TransactionTrait,
};

use super::table::{self, TableDef};
use super::{Applied, Changes, Mapping, Op, Origin, Sink, Values, data_error, execute_all};

/// Where deletes of versioned syncs remember their versions.
pub const TOMBSTONE_TABLE: &str = "msk_sync_tombstone";
/// How long a delete is remembered: the idea of Kafka's `delete.retention.ms` (7 days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pruning is one DELETE; once an hour per instance is plenty (more often only with a shorter retention).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Keys per guarded DELETE: its `OR` of conditions is one level of SQLite's expression tree per key, and
/// SQLite refuses a tree deeper than 1000.
const MAX_GUARDED_DELETES: usize = 250;
/// Longest key (as JSON) a tombstone holds: with the table name it fits MySQL's 3072-byte index limit.
const MAX_KEY_JSON: u32 = 700;

const TOMBSTONE_COLUMNS: [&str; 4] = ["table_name", "key_json", "version", "deleted_at"];

/// The tombstone table as the bulk statements and the preflight see it.
pub fn tombstone_def() -> TableDef {
    TableDef {
        name: TOMBSTONE_TABLE.to_string(),
        columns: TOMBSTONE_COLUMNS.iter().map(|c| c.to_string()).collect(),
        key: vec![0, 1],
    }
}

/// The CREATE TABLE of the tombstone table, where versioned syncs remember deletes.
pub fn create_tombstone_table(_backend: DbBackend) -> TableCreateStatement {
    let col = |n: &str| ColumnDef::new(Alias::new(n));
    table::create_table(
        TOMBSTONE_TABLE,
        vec![
            col("table_name")
                .string_len(table::MAX_IDENT_LEN as u32)
                .not_null()
                .to_owned(),
            col("key_json")
                .string_len(MAX_KEY_JSON)
                .not_null()
                .to_owned(),
            // Integer versions as they are, timestamps as epoch milliseconds.
            col("version").big_integer().not_null().to_owned(),
            // Epoch milliseconds of the batch that deleted: compared with the retention.
            col("deleted_at").big_integer().not_null().to_owned(),
        ],
        &TOMBSTONE_COLUMNS[..2],
    )
}

/// A version as a number: an integer as it is, a timestamp as epoch milliseconds. `None`: no version.
pub fn number(value: &SqlValue) -> Option<i64> {
    match value {
        SqlValue::BigInt(v) => *v,
        SqlValue::Int(v) => v.map(i64::from),
        SqlValue::SmallInt(v) => v.map(i64::from),
        SqlValue::TinyInt(v) => v.map(i64::from),
        SqlValue::BigUnsigned(v) => v.and_then(|v| i64::try_from(v).ok()),
        SqlValue::Unsigned(v) => v.map(i64::from),
        SqlValue::ChronoDateTimeUtc(v) => v.map(|t| t.timestamp_millis()),
        SqlValue::ChronoDateTime(v) => v.map(|t| t.and_utc().timestamp_millis()),
        _ => None,
    }
}

/// The version of a collapsed change: at `version` in an upserted row, after the key in a delete.
pub(super) fn of_op(version: Option<usize>, key_len: usize, op: &Op) -> Option<i64> {
    let at = version?;
    match op {
        Op::Upsert(row) => row.get(at).and_then(number),
        Op::Delete(values) => values.get(key_len).and_then(number),
    }
}

/// A key as the tombstones store it and as the versions read back are matched: a JSON array of its values.
pub fn key_json<'v>(values: impl IntoIterator<Item = &'v SqlValue>) -> String {
    use serde_json::Value as J;
    let json: Vec<J> = values
        .into_iter()
        .map(|v| match v {
            SqlValue::String(Some(s)) => J::String(s.to_string()),
            SqlValue::Bool(Some(b)) => J::Bool(*b),
            SqlValue::Double(Some(f)) => J::from(*f),
            SqlValue::Float(Some(f)) => J::from(f64::from(*f)),
            SqlValue::ChronoDateTimeUtc(Some(t)) => J::from(t.timestamp_millis()),
            SqlValue::ChronoDateTime(Some(t)) => J::from(t.and_utc().timestamp_millis()),
            // Canonical already ([`super::normal`]): equal JSON keys have equal text.
            SqlValue::Json(Some(j)) => J::clone(j),
            other => number(other).map_or_else(|| J::String(format!("{other:?}")), J::from),
        })
        .collect();
    J::Array(json).to_string()
}

/// A value read back from a key column, in the form of `like` (the value of that column in the batch), then
/// normalised ([`super::normal`]), so that [`key_json`] of it is the JSON of the value that was bound. Each
/// backend returns a column in its own way (SQLite: timestamps as text and booleans as integers, MySQL:
/// booleans as integers, PostgreSQL: `jsonb` as JSON), so the read follows the batch's value, not the column.
fn read_key_value(row: &QueryResult, i: usize, like: Option<&SqlValue>) -> Option<SqlValue> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let text = || row.try_get_by_index::<String>(i).ok();
    let mut value = match like {
        Some(SqlValue::Bool(_)) => SqlValue::Bool(Some(
            row.try_get_by_index::<bool>(i)
                .ok()
                .or_else(|| row.try_get_by_index::<i64>(i).ok().map(|n| n != 0))?,
        )),
        Some(SqlValue::Double(_) | SqlValue::Float(_)) => SqlValue::Double(Some(
            row.try_get_by_index::<f64>(i)
                .ok()
                .or_else(|| row.try_get_by_index::<f32>(i).ok().map(f64::from))?,
        )),
        Some(SqlValue::ChronoDateTimeUtc(_) | SqlValue::ChronoDateTime(_)) => {
            SqlValue::ChronoDateTimeUtc(Some(
                row.try_get_by_index::<DateTime<Utc>>(i)
                    .ok()
                    .or_else(|| {
                        row.try_get_by_index::<NaiveDateTime>(i)
                            .ok()
                            .map(|t| t.and_utc())
                    })
                    .or_else(|| {
                        DateTime::parse_from_rfc3339(&text()?)
                            .ok()
                            .map(|t| t.to_utc())
                    })?,
            ))
        }
        Some(SqlValue::Json(_)) => {
            let json = match row.try_get_by_index::<serde_json::Value>(i) {
                Ok(j) => j,
                Err(_) => serde_json::from_str(&text()?).ok()?,
            };
            SqlValue::Json(Some(Box::new(json)))
        }
        _ => read_any(row, i)?,
    };
    super::normal::normalise(&mut value);
    Some(value)
}

/// A text, integer, boolean or timestamp key value, whichever the column gives.
fn read_any(row: &QueryResult, i: usize) -> Option<SqlValue> {
    use chrono::{DateTime, Utc};
    if let Ok(s) = row.try_get_by_index::<String>(i) {
        return Some(SqlValue::String(Some(s)));
    }
    if let Ok(n) = row.try_get_by_index::<i64>(i) {
        return Some(SqlValue::BigInt(Some(n)));
    }
    if let Ok(n) = row.try_get_by_index::<i32>(i) {
        return Some(SqlValue::BigInt(Some(n.into())));
    }
    if let Ok(b) = row.try_get_by_index::<bool>(i) {
        return Some(SqlValue::Bool(Some(b)));
    }
    if let Ok(t) = row.try_get_by_index::<DateTime<Utc>>(i) {
        return Some(SqlValue::ChronoDateTimeUtc(Some(t)));
    }
    None
}

/// A version read back from the table: an integer, or a timestamp in any of the backends' forms.
fn read_version(row: &QueryResult, i: usize) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    if let Ok(n) = row.try_get_by_index::<Option<i64>>(i) {
        return n;
    }
    if let Ok(t) = row.try_get_by_index::<Option<DateTime<Utc>>>(i) {
        return t.map(|t| t.timestamp_millis());
    }
    if let Ok(t) = row.try_get_by_index::<Option<NaiveDateTime>>(i) {
        return t.map(|t| t.and_utc().timestamp_millis());
    }
    None
}

/// `INSERT … ON CONFLICT (key) DO UPDATE SET …` that leaves a row with a newer version as it is.
///
/// MySQL evaluates `ON DUPLICATE KEY UPDATE` assignments left to right, each seeing the columns assigned
/// before it: the version column is assigned last, so every comparison sees the row's own version.
pub fn guarded_upsert(
    table: &TableDef,
    rows: &[&[SqlValue]],
    version: usize,
    backend: DbBackend,
) -> Result<InsertStatement, DbErr> {
    let mut stmt = Query::insert();
    stmt.into_table(Alias::new(&table.name))
        .columns(table.columns.iter().map(Alias::new));
    for row in rows {
        stmt.values(row.iter().cloned().map(Expr::val))
            .map_err(|e| DbErr::Custom(format!("row for {}: {e}", table.name)))?;
    }
    let v = table.columns.get(version).map(String::as_str).unwrap_or("");
    let others: Vec<&str> = table.non_key_columns().filter(|c| *c != v).collect();
    let key = table.key_columns().map(Alias::new);
    let mut on_conflict = OnConflict::columns(key);
    if backend == DbBackend::MySql {
        // Identifiers passed check_ident (config) or come from an entity: plain, safe to quote by hand.
        let assign = |c: &str| {
            (
                Alias::new(c),
                Expr::cust(format!(
                    "IF(`{v}` IS NULL OR VALUES(`{v}`) >= `{v}`, VALUES(`{c}`), `{c}`)"
                )),
            )
        };
        on_conflict.values(others.iter().map(|c| assign(c)).chain([assign(v)]));
    } else {
        on_conflict
            .update_columns(others.iter().chain([&v]).map(|c| Alias::new(*c)))
            .action_and_where(
                Expr::col((Alias::new(&table.name), Alias::new(v)))
                    .is_null()
                    .or(Expr::col((Alias::new(&table.name), Alias::new(v)))
                        .lte(Expr::col((Alias::new("excluded"), Alias::new(v))))),
            );
    }
    stmt.on_conflict(on_conflict.to_owned());
    Ok(stmt)
}

/// `DELETE … WHERE (key = … AND (version IS NULL OR version <= …)) OR …`: a delete never removes a newer row.
pub fn guarded_delete(
    table: &TableDef,
    version: usize,
    keys: &[(&[SqlValue], &SqlValue)],
) -> sea_orm::sea_query::DeleteStatement {
    let v = Alias::new(table.columns.get(version).map(String::as_str).unwrap_or(""));
    let mut any = Condition::any();
    for (key, at) in keys {
        let mut one = Condition::all();
        for (column, value) in table.key_columns().zip(key.iter()) {
            one = one.add(Expr::col(Alias::new(column)).eq(value.clone()));
        }
        one = one.add(
            Condition::any()
                .add(Expr::col(v.clone()).is_null())
                .add(Expr::col(v.clone()).lte((*at).clone())),
        );
        any = any.add(one);
    }
    let mut stmt = Query::delete();
    stmt.from_table(Alias::new(&table.name)).cond_where(any);
    stmt
}

/// When this instance last pruned the tombstones.
#[derive(Debug, Default)]
pub(crate) struct Pruning {
    last: Mutex<Option<Instant>>,
}

impl Pruning {
    /// Whether to prune now; says yes at most once per interval (the retention, if it is shorter than an hour).
    fn due(&self, retention: Duration) -> bool {
        let interval = retention.min(PRUNE_INTERVAL);
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < interval && !interval.is_zero() => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A change after the versions were compared.
struct Decided<'a> {
    /// With the JSON key of the tombstone the upsert clears, if there is one.
    upserts: Vec<(Values<'a>, Option<String>)>,
    /// (key, version, origin)
    deletes: Vec<(&'a [SqlValue], &'a SqlValue, Origin)>,
    stale: Vec<Origin>,
}

impl Sink {
    /// Writes one versioned mapping's changes of the batch in `txn` (see the module doc). `row_by_row`: each
    /// write in its own savepoint, refused rows added to `applied.rejected` (the fallback of [`Sink::apply`]).
    pub(super) async fn apply_versioned(
        &self,
        txn: &DatabaseTransaction,
        mapping: &dyn Mapping,
        version: usize,
        changes: &Changes,
        row_by_row: bool,
        applied: &mut Applied,
    ) -> Result<(), DbErr> {
        let backend = self.backend();
        let table = mapping.table();
        let retention = self.options.tombstone_retention;
        if self.pruning.due(retention) {
            let before = now_millis()
                .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let mut prune = Query::delete();
            prune
                .from_table(Alias::new(TOMBSTONE_TABLE))
                .and_where(Expr::col(Alias::new("deleted_at")).lte(before));
            txn.execute(&prune).await?;
        }
        let decided = self.decide(txn, table, version, changes).await?;
        applied.stale.extend(decided.stale.iter().copied());
        let now = now_millis();
        let tombstone = |key: &[SqlValue], at: &SqlValue| -> Vec<SqlValue> {
            vec![
                table.name.clone().into(),
                key_json(key).into(),
                number(at).unwrap_or_default().into(),
                now.into(),
            ]
        };
        let tombstones = tombstone_def();
        let tomb_rows = self.rows_per_statement(backend, tombstones.columns.len());
        let mut cleared: Vec<&str> = Vec::new();
        if row_by_row {
            for ((row, origin), clears) in &decided.upserts {
                if let Some(reason) = self.too_large(row) {
                    applied
                        .rejected
                        .push((*origin, format!("{}: {reason}", table.name)));
                    continue;
                }
                let stmt = guarded_upsert(table, &[row], version, backend)?;
                if self
                    .savepoint(txn, &stmt, *origin, table, applied, true)
                    .await?
                {
                    cleared.extend(clears.as_deref());
                }
            }
            for (key, at, origin) in &decided.deletes {
                let stmt = guarded_delete(table, version, &[(key, at)]);
                if self
                    .savepoint(txn, &stmt, *origin, table, applied, false)
                    .await?
                {
                    let row = tombstone(key, at);
                    txn.execute(&super::upsert_statement_only(
                        &tombstones,
                        &[&row],
                        &["version", "deleted_at"],
                    )?)
                    .await?;
                }
            }
        } else {
            let rows = self.rows_per_statement(backend, table.columns.len());
            cleared.extend(decided.upserts.iter().filter_map(|(_, c)| c.as_deref()));
            let budget = self.packet_budget();
            let upserts = table::in_packets(&decided.upserts, rows, budget, |((row, _), _)| {
                table::row_bytes(row)
            })
            .map(|chunk| {
                let chunk: Vec<&[SqlValue]> = chunk.iter().map(|((row, _), _)| *row).collect();
                Ok(backend.build(&guarded_upsert(table, &chunk, version, backend)?))
            });
            let keys = self
                .rows_per_statement(backend, table.key.len() + 1)
                .min(MAX_GUARDED_DELETES);
            let deletes = table::in_statements(&decided.deletes, keys).map(|chunk| {
                let chunk: Vec<(&[SqlValue], &SqlValue)> =
                    chunk.iter().map(|(k, v, _)| (*k, *v)).collect();
                Ok(backend.build(&guarded_delete(table, version, &chunk)))
            });
            let tomb_values: Vec<Vec<SqlValue>> = decided
                .deletes
                .iter()
                .map(|(k, v, _)| tombstone(k, v))
                .collect();
            let tomb_statements = table::in_statements(&tomb_values, tomb_rows).map(|chunk| {
                let chunk: Vec<&[SqlValue]> = chunk.iter().map(Vec::as_slice).collect();
                let update = ["version", "deleted_at"];
                Ok(backend.build(&super::upsert_statement_only(&tombstones, &chunk, &update)?))
            });
            // One run, so that the first delete and the first tombstone are built while the statement before
            // each runs too; a failure fails the batch (the transaction), so the counts need no partial case.
            execute_all(txn, upserts.chain(deletes).chain(tomb_statements)).await?;
            applied.upserted += decided.upserts.len();
            applied.deleted += decided.deletes.len();
        }
        let clears = table::in_statements(&cleared, tomb_rows).map(|chunk| {
            let mut clear = Query::delete();
            clear
                .from_table(Alias::new(TOMBSTONE_TABLE))
                .and_where(Expr::col(Alias::new("table_name")).eq(table.name.clone()))
                .and_where(
                    Expr::col(Alias::new("key_json")).is_in(chunk.iter().map(|j| j.to_string())),
                );
            Ok(backend.build(&clear))
        });
        execute_all(txn, clears).await?;
        Ok(())
    }

    /// One write in a savepoint; a refusal about the data is recorded in `applied.rejected`. `Ok(true)`: written.
    async fn savepoint(
        &self,
        txn: &DatabaseTransaction,
        stmt: &impl sea_orm::StatementBuilder,
        origin: Origin,
        table: &TableDef,
        applied: &mut Applied,
        is_upsert: bool,
    ) -> Result<bool, DbErr> {
        let savepoint = txn.begin().await?;
        match savepoint.execute(stmt).await {
            Ok(_) => {
                savepoint.commit().await?;
                if is_upsert {
                    applied.upserted += 1;
                } else {
                    applied.deleted += 1;
                }
                Ok(true)
            }
            Err(e) => match data_error(&e) {
                Some(reason) => {
                    savepoint.rollback().await?;
                    applied
                        .rejected
                        .push((origin, format!("{}: {reason}", table.name)));
                    Ok(false)
                }
                None => Err(e),
            },
        }
    }

    /// Compares every change with the versions in the table and in the tombstones, read in bulk.
    async fn decide<'a>(
        &self,
        txn: &impl ConnectionTrait,
        table: &TableDef,
        version: usize,
        changes: &'a Changes,
    ) -> Result<Decided<'a>, DbErr> {
        let backend = self.backend();
        let klen = table.key.len();
        let (upserts, deletes) = changes.split();
        // Every key of the batch, with its JSON form (the tombstones' key and the lookup's).
        let keyed: Vec<(Vec<&SqlValue>, String)> = upserts
            .iter()
            .map(|(row, _)| table.key.iter().filter_map(|&i| row.get(i)).collect())
            .chain(
                deletes
                    .iter()
                    .map(|(values, _)| values.iter().take(klen).collect()),
            )
            .map(|key: Vec<&SqlValue>| {
                let json = key_json(key.iter().copied());
                (key, json)
            })
            .collect();
        let mut current: HashMap<String, i64> = HashMap::with_capacity(keyed.len());
        let mut tombs: HashMap<String, i64> = HashMap::new();
        let v = table.columns.get(version).cloned().unwrap_or_default();
        let per = self.rows_per_statement(backend, klen);
        for chunk in table::in_statements(&keyed, per) {
            let mut select = Query::select();
            select
                .columns(table.key_columns().map(Alias::new))
                .column(Alias::new(&v))
                .from(Alias::new(&table.name));
            let columns: Vec<&str> = table.key_columns().collect();
            if let [column] = columns.as_slice() {
                select.and_where(
                    Expr::col(Alias::new(*column)).is_in(
                        chunk
                            .iter()
                            .filter_map(|(k, _)| k.first().map(|v| (*v).clone())),
                    ),
                );
            } else {
                select.and_where(
                    Expr::tuple(columns.iter().map(|c| Expr::col(Alias::new(*c)))).in_tuples(
                        chunk.iter().map(|(k, _)| {
                            sea_orm::sea_query::ValueTuple::Many(
                                k.iter().map(|v| (*v).clone()).collect(),
                            )
                        }),
                    ),
                );
            }
            let like = chunk.first().map(|(k, _)| k.as_slice()).unwrap_or_default();
            for row in txn.query_all(&select).await? {
                let key: Option<Vec<SqlValue>> = (0..klen)
                    .map(|i| read_key_value(&row, i, like.get(i).copied()))
                    .collect();
                if let (Some(key), Some(at)) = (key, read_version(&row, klen)) {
                    current.insert(key_json(&key), at);
                }
            }
            let mut select = Query::select();
            select
                .columns([Alias::new("key_json"), Alias::new("version")])
                .from(Alias::new(TOMBSTONE_TABLE))
                .and_where(Expr::col(Alias::new("table_name")).eq(table.name.clone()))
                .and_where(
                    Expr::col(Alias::new("key_json")).is_in(chunk.iter().map(|(_, j)| j.clone())),
                );
            for row in txn.query_all(&select).await? {
                if let (Ok(key), Ok(at)) = (
                    row.try_get_by_index::<String>(0),
                    row.try_get_by_index::<i64>(1),
                ) {
                    tombs.insert(key, at);
                }
            }
        }
        let mut decided = Decided {
            upserts: Vec::with_capacity(upserts.len()),
            deletes: Vec::with_capacity(deletes.len()),
            stale: Vec::new(),
        };
        let newest = |json: &str| current.get(json).max(tombs.get(json)).copied();
        let mut jsons = keyed.into_iter().map(|(_, j)| j);
        for (row, origin) in upserts {
            let json = jsons.next().unwrap_or_default();
            let at = row.get(version).and_then(number);
            if newest(&json).is_some_and(|n| at.is_none_or(|at| n > at)) {
                decided.stale.push(origin);
                continue;
            }
            let clears = tombs.contains_key(&json).then_some(json);
            decided.upserts.push(((row, origin), clears));
        }
        for (values, origin) in deletes {
            let json = jsons.next().unwrap_or_default();
            let Some(at_value) = values.get(klen) else {
                // Changes always give a versioned delete its version; without one it cannot be compared.
                decided.stale.push(origin);
                continue;
            };
            let at = number(at_value);
            if newest(&json).is_some_and(|n| at.is_none_or(|at| n > at)) {
                decided.stale.push(origin);
                continue;
            }
            decided.deletes.push((&values[..klen], at_value, origin));
        }
        Ok(decided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};

    fn s(v: &str) -> SqlValue {
        SqlValue::String(Some(v.into()))
    }

    fn table() -> TableDef {
        TableDef {
            name: "t".into(),
            columns: vec!["id".into(), "version".into(), "name".into(), "size".into()],
            key: vec![0],
        }
    }

    #[test]
    fn the_guard_per_backend() {
        let row = [
            s("a"),
            SqlValue::BigInt(Some(3)),
            s("n"),
            SqlValue::BigInt(Some(9)),
        ];
        let up = guarded_upsert(&table(), &[&row], 1, DbBackend::Postgres).unwrap();
        assert_eq!(
            up.to_string(PostgresQueryBuilder),
            r#"INSERT INTO "t" ("id", "version", "name", "size") VALUES ('a', 3, 'n', 9) ON CONFLICT ("id") DO UPDATE SET "name" = "excluded"."name", "size" = "excluded"."size", "version" = "excluded"."version" WHERE "t"."version" IS NULL OR "t"."version" <= "excluded"."version""#
        );
        let up = guarded_upsert(&table(), &[&row], 1, DbBackend::Sqlite).unwrap();
        assert!(
            up.to_string(SqliteQueryBuilder).ends_with(
                r#"DO UPDATE SET "name" = "excluded"."name", "size" = "excluded"."size", "version" = "excluded"."version" WHERE "t"."version" IS NULL OR "t"."version" <= "excluded"."version""#
            ),
            "{}",
            up.to_string(SqliteQueryBuilder)
        );
        // MySQL: the version column is assigned LAST, so every IF compares with the row's own version.
        let up = guarded_upsert(&table(), &[&row], 1, DbBackend::MySql).unwrap();
        assert_eq!(
            up.to_string(MysqlQueryBuilder),
            "INSERT INTO `t` (`id`, `version`, `name`, `size`) VALUES ('a', 3, 'n', 9) ON DUPLICATE KEY UPDATE \
             `name` = IF(`version` IS NULL OR VALUES(`version`) >= `version`, VALUES(`name`), `name`), \
             `size` = IF(`version` IS NULL OR VALUES(`version`) >= `version`, VALUES(`size`), `size`), \
             `version` = IF(`version` IS NULL OR VALUES(`version`) >= `version`, VALUES(`version`), `version`)"
        );
        let del = guarded_delete(&table(), 1, &[(&[s("a")], &SqlValue::BigInt(Some(4)))]);
        assert_eq!(
            del.to_string(PostgresQueryBuilder),
            r#"DELETE FROM "t" WHERE "id" = 'a' AND ("version" IS NULL OR "version" <= 4)"#
        );
    }

    #[test]
    fn versions_and_keys_as_numbers_and_json() {
        let t = chrono::DateTime::from_timestamp_millis(1_700_000_000_123);
        assert_eq!(
            number(&SqlValue::ChronoDateTimeUtc(t)),
            Some(1_700_000_000_123)
        );
        assert_eq!(number(&SqlValue::BigInt(Some(7))), Some(7));
        assert_eq!(number(&SqlValue::BigInt(None)), None);
        assert_eq!(
            key_json(&[s("a\"b"), SqlValue::Int(Some(3))]),
            r#"["a\"b",3]"#
        );
        // The same key bound as Int and read back as BigInt matches.
        assert_eq!(
            key_json(&[SqlValue::Int(Some(3))]),
            key_json(&[SqlValue::BigInt(Some(3))])
        );
    }

    #[test]
    fn within_a_batch_the_highest_version_wins_ties_in_batch_order() {
        let at = |record| Origin { record, index: 0 };
        let v = |n| SqlValue::BigInt(Some(n));
        // Rows (id, version, name); key column 0, version column 1.
        let mut c = Changes::new(vec![0]).with_version(Some(1));
        c.upsert(vec![s("a"), v(5), s("five")], at(0));
        c.upsert(vec![s("a"), v(3), s("three")], at(1)); // older, later in the batch: loses
        c.upsert(vec![s("b"), v(1), s("one")], at(2));
        c.delete_at(vec![s("b")], Some(v(2)), at(3)); // newer delete wins
        c.upsert(vec![s("b"), v(1), s("late")], at(4)); // older than the delete: loses
        c.upsert(vec![s("a"), v(5), s("five again")], at(5)); // a tie: batch order
        assert_eq!(c.superseded(), 4);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts, vec![(&[s("a"), v(5), s("five again")][..], at(5))]);
        assert_eq!(deletes, vec![(&[s("b"), v(2)][..], at(3))]);
        // Without a version, the last in batch order wins, as before.
        let mut c = Changes::new(vec![0]);
        c.upsert(vec![s("a"), v(5), s("five")], at(0));
        c.upsert(vec![s("a"), v(3), s("three")], at(1));
        let (upserts, _) = c.split();
        assert_eq!(upserts, vec![(&[s("a"), v(3), s("three")][..], at(1))]);
    }

    #[test]
    fn pruning_is_due_once_per_interval() {
        let p = Pruning::default();
        assert!(p.due(DEFAULT_RETENTION));
        assert!(!p.due(DEFAULT_RETENTION));
        // A zero retention prunes on every batch.
        assert!(p.due(Duration::ZERO));
        assert!(p.due(Duration::ZERO));
    }
}
