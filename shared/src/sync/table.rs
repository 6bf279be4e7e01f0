//! What the apply step needs to know about a target table, and the identifier rule that keeps config out of SQL.

use sea_orm::DbBackend;
use sea_orm::sea_query::{
    Alias, ColumnDef, Index, IndexCreateStatement, Table, TableCreateStatement,
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
