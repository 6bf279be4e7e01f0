//! The statements of a batch: rows cut to fit the bind limit and the MySQL packet, upserts and deletes per table.

use super::*;

/// What a MySQL packet holds besides the values of its statement (command byte, statement id, flags, the
/// null bitmap and types are counted per value by [`table::value_bytes`]).
pub(super) const PACKET_SLACK: usize = 4096;

/// The most rows of `columns` values a `VALUES` statement takes: the bind limit's, at most `max_rows`.
pub(super) fn rows_per_statement(backend: DbBackend, columns: usize, max_rows: usize) -> usize {
    (table::bind_limit(backend) / columns.max(1)).clamp(1, max_rows.max(1))
}

/// How a table's rows (or keys) of `width` values go out. PostgreSQL takes each column as one array when the
/// rows allow it ([`unnest`]): one statement text however many rows, so a statement takes as many as `max_rows`
/// (`max_rows_per_statement`). Otherwise `VALUES` statements under the bind limit, in recurring sizes
/// ([`table::in_statements`]).
pub(super) fn statements<'v, 'a>(
    backend: DbBackend,
    values: &'v [Values<'a>],
    width: usize,
    max_rows: usize,
    budget: Option<usize>,
) -> (Option<unnest::ArrayColumns>, Vec<&'v [Values<'a>]>) {
    let arrays = (backend == DbBackend::Postgres)
        .then(|| unnest::ArrayColumns::of(values.iter().map(|(v, _)| *v), width))
        .flatten();
    let chunks = match arrays {
        Some(_) => values.chunks(max_rows.max(1)).collect(),
        None => table::in_packets(
            values,
            rows_per_statement(backend, width, max_rows),
            budget,
            |(v, _)| table::row_bytes(v),
        )
        .collect(),
    };
    (arrays, chunks)
}

/// Runs `statements` in order on `txn`, building each while the database runs the one before: the building
/// (the statement's text, a copy of every value) is CPU work of this thread that would otherwise leave the
/// database idle, statement after statement. `join!` polls the statement first, which sends it and waits for
/// the answer; the next one is built in that wait. Only the first is built while the database waits, which is
/// why [`table::in_statements`] puts the smallest first. A statement that fails stops the rest: the one built
/// in its wait is dropped unsent.
pub(super) async fn execute_all(
    txn: &DatabaseTransaction,
    mut statements: impl Iterator<Item = Result<Statement, DbErr>>,
) -> Result<(), DbErr> {
    let mut next = statements.next().transpose()?;
    while let Some(statement) = next {
        let (ran, built) = tokio::join!(txn.execute_raw(statement), async {
            statements.next().transpose()
        });
        ran?;
        next = built?;
    }
    Ok(())
}

/// `INSERT … VALUES (…), (…) ON CONFLICT (key) DO UPDATE SET every other column` (MySQL: ON DUPLICATE KEY).
pub(super) fn upsert_statement(
    table: &TableDef,
    rows: &[&[SqlValue]],
) -> Result<sea_orm::sea_query::InsertStatement, DbErr> {
    let update: Vec<&str> = table.non_key_columns().collect();
    upsert_statement_only(table, rows, &update)
}

pub(super) fn upsert_statement_only(
    table: &TableDef,
    rows: &[&[SqlValue]],
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
    let update = table.set_on_conflict(update).into_iter().map(Alias::new);
    stmt.on_conflict(OnConflict::columns(key).update_columns(update).to_owned());
    Ok(stmt)
}

/// `DELETE … WHERE key IN (…)`, or `(k1, k2) IN ((…), …)` for a composite key.
pub(super) fn delete_statement(
    table: &TableDef,
    keys: &[&[SqlValue]],
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
                .in_tuples(keys.iter().map(|k| ValueTuple::Many(k.to_vec()))),
        );
    }
    stmt
}
