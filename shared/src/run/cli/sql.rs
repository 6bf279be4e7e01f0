//! `config sql`: what a DBA runs before the first deploy. The CREATE TABLE statements are the ones the
//! preflight itself would issue for a missing table (target tables, the dead-letter table, the tombstone table
//! of versioned syncs: [`crate::sync::Sink`]'s expected tables), for the database's backend, followed by the
//! GRANTs of a user that only reads keys and writes rows.

use std::fmt::Write as _;

use sea_orm::DbBackend;

use crate::sync::Sink;
use crate::sync::preflight::{Server, create_statement};

/// What every table needs: the preflight checks SELECT (of the key), INSERT, UPDATE and, on target and
/// tombstone tables, DELETE; `redrive` deletes the dead letters it applies.
const PRIVILEGES: &str = "SELECT, INSERT, UPDATE, DELETE";

/// The grantee as the backend writes it, or why `user` cannot be one: a name of letters, digits and `_`
/// (MySQL / MariaDB: `name@host` too; a bare name gets `@'%'`).
fn grantee(user: &str, backend: DbBackend) -> Result<String, String> {
    let plain = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c))
    };
    let bad = || {
        format!(
            "--grant-to {user:?}: expected a user name of letters, digits and _ (MySQL: name@host)"
        )
    };
    match backend {
        DbBackend::MySql => {
            let (name, host) = user.split_once('@').unwrap_or((user, "%"));
            if plain(name, "") && plain(host, ".%-") {
                Ok(format!("'{name}'@'{host}'"))
            } else {
                Err(bad())
            }
        }
        _ if plain(user, "") => Ok(format!("\"{user}\"")),
        _ => Err(bad()),
    }
}

/// A table name quoted for the backend (names are checked identifiers: letters, digits, `_`).
fn quoted(name: &str, backend: DbBackend) -> String {
    match backend {
        DbBackend::MySql => format!("`{name}`"),
        _ => format!("\"{name}\""),
    }
}

/// The statements for `sink`'s tables on its database, the GRANTs for `user`. Reads the server's version on
/// MySQL / MariaDB (the collation new tables get depends on it); creates nothing.
pub(super) async fn setup_sql(sink: &Sink, user: &str) -> Result<String, String> {
    let backend = sink.backend();
    let grantee = grantee(user, backend)?;
    let server = Server::detect(sink.connection())
        .await
        .map_err(|e| e.to_string())?;
    let name = match backend {
        DbBackend::MySql => "MySQL / MariaDB",
        DbBackend::Postgres => "PostgreSQL",
        _ => "SQLite",
    };
    let tables = sink.expected_tables();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- msk-sync: the tables its config writes, on {name}, as msk-sync would create them, and the grants of a"
    );
    let _ = writeln!(
        out,
        "-- user that only reads keys and writes rows (no CREATE, ALTER or DROP). Run as a user that may create tables."
    );
    for expected in &tables {
        let _ = writeln!(out, "{};", create_statement(expected, &server));
    }
    if backend == DbBackend::Sqlite {
        let _ = writeln!(out, "-- SQLite has no users or grants.");
        return Ok(out);
    }
    for expected in &tables {
        let _ = writeln!(
            out,
            "GRANT {PRIVILEGES} ON {} TO {grantee};",
            quoted(&expected.def.name, backend)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantees_are_names_never_sql() {
        assert_eq!(
            grantee("msk_sync", DbBackend::Postgres).unwrap(),
            "\"msk_sync\""
        );
        assert_eq!(
            grantee("msk_sync", DbBackend::MySql).unwrap(),
            "'msk_sync'@'%'"
        );
        assert_eq!(
            grantee("app@10.0.%", DbBackend::MySql).unwrap(),
            "'app'@'10.0.%'"
        );
        for bad in ["", "a b", "x\"; DROP TABLE t; --", "a'@'%"] {
            assert!(grantee(bad, DbBackend::Postgres).is_err(), "{bad}");
            assert!(grantee(bad, DbBackend::MySql).is_err(), "{bad}");
        }
    }
}
