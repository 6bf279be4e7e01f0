//! What the apply step needs to know about a target table, and the identifier rule that keeps config out of SQL.

use sea_orm::DbBackend;
use sea_orm::sea_query::{
    Alias, ColumnDef, Index, IndexCreateStatement, Table, TableCreateStatement, Value as SqlValue,
};

/// A target table as the bulk statements see it: column names in row order, and which of them form the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    /// The table's name.
    pub name: String,
    /// Its columns, in row order.
    pub columns: Vec<String>,
    /// Indices into `columns`, in key order.
    pub key: Vec<usize>,
}

impl TableDef {
    /// The key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &str> {
        self.key.iter().map(|&i| self.columns[i].as_str())
    }

    /// The columns an upsert sets on conflict: `update`, or the key columns when `update` is empty. With
    /// nothing to update, "update the key to itself" keeps the statement idempotent on every backend.
    pub fn set_on_conflict<'a>(&'a self, update: &[&'a str]) -> Vec<&'a str> {
        if update.is_empty() {
            self.key_columns().collect()
        } else {
            update.to_vec()
        }
    }

    /// The columns that are not part of the key.
    pub fn non_key_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.key.contains(i))
            .map(|(_, c)| c.as_str())
    }
}

/// Longest identifier every supported database accepts (PostgreSQL's limit; MySQL allows 64).
pub const MAX_IDENT_LEN: usize = 63;

/// Table and column names come from config and end up in SQL. Statements quote them, but we still accept only
/// plain identifiers: a name that needs quoting is almost always a typo, and a strict rule leaves no room for
/// a config file to smuggle SQL through a name.
pub fn check_ident(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_IDENT_LEN {
        return Err(format!(
            "{what} {name:?} is not a plain SQL identifier (letters, digits and _, not starting with a digit, at most {MAX_IDENT_LEN} characters)"
        ));
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` with a primary key over `key`.
pub(crate) fn create_table(
    name: &str,
    columns: Vec<ColumnDef>,
    key: &[&str],
) -> TableCreateStatement {
    let mut stmt = Table::create();
    stmt.table(Alias::new(name)).if_not_exists();
    for col in columns {
        stmt.col(col);
    }
    if !key.is_empty() {
        let mut pk: IndexCreateStatement = Index::create();
        for k in key {
            pk.col(Alias::new(*k));
        }
        stmt.primary_key(&mut pk);
    }
    stmt
}

/// Text of any length: MySQL's TEXT stops at 64 KiB, so it gets LONGTEXT there.
pub(crate) fn long_text(def: &mut ColumnDef, backend: DbBackend) -> &mut ColumnDef {
    if backend == DbBackend::MySql {
        def.custom(Alias::new("LONGTEXT"))
    } else {
        def.text()
    }
}

/// `items` cut into statements of at most `max` rows whose sizes recur from batch to batch: the rest below
/// `max` in powers of two, smallest first, then as many of `max` as fit (1 800 rows under a `max` of 2 000: 8,
/// 256, 512 and 1 024). A statement's text depends on its rows, and a new text is prepared again: by sqlx, in a
/// round trip, and by the database, which parses and plans it (milliseconds for a large statement on MariaDB).
/// With the sizes above, a table needs at most one text per power of two below `max`, prepared once per
/// connection and then found in sqlx's statement cache, for the cost of a few more statements per batch, each of
/// them cheap once prepared (measured against one statement per batch: docs/src/performance.md).
///
/// Smallest first because the sink builds each statement while the database runs the one before
/// ([`super::Sink`]'s `execute_all`): only the first is built while the database waits, so it should be the
/// cheapest. The pieces stay in the order of `items` (key order: see `Changes::split`).
pub fn in_statements<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    let mut rest = items;
    // The part below `max`, cut by its set bits from the lowest; then whole statements of `max`.
    let mut small = items.len() % max;
    std::iter::from_fn(move || {
        let n = match small {
            0 if rest.is_empty() => return None,
            0 => max.min(rest.len()),
            bits => {
                let lowest = 1 << bits.trailing_zeros();
                small -= lowest;
                lowest
            }
        };
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// [`in_statements`], and on MySQL / MariaDB (`budget`: the bytes a statement's values may take under the
/// server's `max_allowed_packet`) also cut so that no statement's values, by `bytes`, exceed it. A server
/// drops the connection of a statement over the limit, which would fail the batch on every retry. An item over
/// the budget by itself goes alone (the caller keeps such rows out: [`Sink`](super::Sink) dead-letters them).
pub fn in_packets<'i, T: Sync>(
    items: &'i [T],
    max: usize,
    budget: Option<usize>,
    bytes: impl Fn(&T) -> usize + Send + 'i,
) -> Box<dyn Iterator<Item = &'i [T]> + Send + 'i> {
    let Some(budget) = budget else {
        return Box::new(in_statements(items, max));
    };
    let max = max.max(1);
    let mut rest = items;
    Box::new(std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut total = 0usize;
        while n < rest.len() && n < max {
            let size = bytes(&rest[n]);
            if n > 0 && total.saturating_add(size) > budget {
                break;
            }
            total = total.saturating_add(size);
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    }))
}

/// What a value takes in a MySQL statement's packet (binary protocol): its bytes, and room for its type and
/// length prefix. JSON is measured by writing it, without keeping the text.
pub fn value_bytes(value: &SqlValue) -> usize {
    const PER_VALUE: usize = 12;
    let data = match value {
        SqlValue::String(Some(s)) => s.len(),
        SqlValue::Bytes(Some(b)) => b.len(),
        SqlValue::Json(Some(j)) => {
            struct Count(usize);
            impl std::io::Write for Count {
                fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                    self.0 += buf.len();
                    Ok(buf.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let mut count = Count(0);
            let _ = serde_json::to_writer(&mut count, j);
            count.0
        }
        _ => 8,
    };
    data + PER_VALUE
}

/// [`value_bytes`] of a row.
pub fn row_bytes(row: &[SqlValue]) -> usize {
    row.iter().map(value_bytes).sum()
}

/// The most bind parameters one statement may carry on each backend (SQLite ≥ 3.32: 32766; the wire
/// protocols of PostgreSQL and MySQL count parameters in 16 bits).
pub fn bind_limit(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_come_in_recurring_sizes_and_cover_every_item_once() {
        let sizes = |n: usize, max: usize| -> Vec<usize> {
            let items: Vec<usize> = (0..n).collect();
            let pieces: Vec<&[usize]> = in_statements(&items, max).collect();
            assert_eq!(pieces.concat(), items, "{n} in pieces of at most {max}");
            pieces.iter().map(|p| p.len()).collect()
        };
        assert_eq!(sizes(1_800, 2_000), [8, 256, 512, 1_024]);
        assert_eq!(sizes(4_100, 2_000), [4, 32, 64, 2_000, 2_000]);
        assert_eq!(sizes(2_000, 2_000), [2_000]);
        assert_eq!(sizes(7, 1), [1; 7]);
        assert_eq!(sizes(3, 0), [1; 3]);
        assert_eq!(sizes(0, 10), Vec::<usize>::new());
        // Every size of every count up to a few thousand is max or a power of two below it.
        for n in 0..3_000 {
            assert!(
                sizes(n, 1_000)
                    .iter()
                    .all(|&s| s == 1_000 || (s < 1_000 && s.is_power_of_two()))
            );
        }
    }

    #[test]
    fn identifiers() {
        assert!(check_ident("table", "servicea_planet").is_ok());
        assert!(check_ident("table", "_x9").is_ok());
        for bad in [
            "",
            "9lives",
            "planet; DROP TABLE x",
            "a-b",
            "a.b",
            "\"q\"",
            "é",
        ] {
            let err = check_ident("table", bad).unwrap_err();
            assert!(err.contains("not a plain SQL identifier"), "{bad}: {err}");
        }
        assert!(check_ident("column", &"a".repeat(64)).is_err());
    }
}
