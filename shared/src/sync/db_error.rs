//! What a database error means: the server away, the setup refusing (misconfigured), a lost session, a lock
//! conflict, or a value refused as data (the row is dead-lettered); messages redacted of quoted values.

use super::*;

/// The connection could not be made or was lost before a statement's answer: nothing the database said.
pub(super) fn connection_failure(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e.as_ref(),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut
        ),
        _ => false,
    }
}

/// A refusal about the database's setup, which no retry can cure (the misconfigured class), naming what to
/// fix: a missing database (PostgreSQL 3D000, MySQL / MariaDB 1049), a missing privilege (PostgreSQL 42501,
/// MySQL / MariaDB 1044 database, 1142 table, 1143 column), a table or column gone since the preflight
/// (PostgreSQL 42P01 / 42703, MySQL 1146 / 1054). Failed logins are not among them: a password being rotated
/// is transient.
pub(crate) fn setup_refusal(err: &DbErr) -> Option<Problem> {
    let db = database_error(err)?;
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let number = db
        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    let said = db.message().to_string();
    let (expected, what) = match (number, code.as_str()) {
        (Some(1049), _) | (None, "3D000") => (
            "the database the URL names to exist (create it, or fix the URL)",
            "the database",
        ),
        (Some(1044 | 1142 | 1143), _) | (None, "42501") => (
            "the database user to have the privilege this statement needs (GRANT it)",
            "the database user",
        ),
        (Some(1146 | 1054), _) | (None, "42P01" | "42703") => (
            "the tables and columns the preflight found to be still there",
            "the database",
        ),
        _ => return None,
    };
    Some(Problem {
        table: String::new(),
        column: None,
        expected: expected.to_string(),
        found: format!("{what} refused it: {said}"),
    })
}

/// A session lost under a statement (its socket closed or broke), as opposed to none to be had from the pool.
pub(super) fn session_lost(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(e.as_ref(), sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        }
        _ => false,
    }
}

/// The database's own error behind a [`DbErr`], if the database answered with one.
pub(super) fn database_error(err: &DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    use sea_orm::{RuntimeErr, sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match e.as_ref() {
        sqlx::Error::Database(db) => Some(db.as_ref()),
        _ => None,
    }
}

/// A deadlock or serialization failure: the database rolled the transaction back to let another writer
/// through, and the same batch applied again will most likely succeed. PostgreSQL 40P01 / 40001, MySQL and
/// MariaDB 1213 (deadlock) / 1205 (lock wait timeout), SQLite BUSY / LOCKED (after the pool's busy timeout).
pub(super) fn lock_conflict(err: &DbErr) -> bool {
    let Some(db) = database_error(err) else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        matches!(my.number(), 1205 | 1213)
    } else if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
    } else {
        code == "40P01" || code == "40001"
    }
}

/// What the database may refuse a row for — its content or its size — on every backend, in one place. Such a
/// refusal comes back on every retry, so the row is dead-lettered instead of blocking its partitions.
pub(super) mod refused {
    /// SQLSTATE classes: 22 data exception (a value out of range, invalid text, too long), 23 integrity
    /// constraint violation, 54 program limit exceeded (PostgreSQL 54000: an index row larger than a
    /// btree page allows, as a key of more than about 2,700 bytes is). MySQL and MariaDB report SQLSTATE
    /// too, but not always a telling one.
    pub const SQLSTATE_CLASSES: [&str; 3] = ["22", "23", "54"];

    /// MySQL / MariaDB error numbers about a row, several of which report SQLSTATE HY000 or 42000:
    /// 1048 column cannot be null, 1062 duplicate entry (another unique index), 1118 row size too large,
    /// 1216 / 1217 / 1451 / 1452 foreign keys, 1264 out of range, 1265 data truncated, 1292 incorrect
    /// value, 1300 invalid character string, 1366 incorrect string value, 1367 illegal value, 1406 data too
    /// long, 1411 incorrect datetime, 1690 value out of range, 3140 invalid JSON, 3819 (MySQL) / 4025
    /// (MariaDB) check constraint failed.
    pub const MYSQL: [u16; 19] = [
        1048, 1062, 1118, 1216, 1217, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1451, 1452,
        1690, 3140, 3819, 4025,
    ];

    /// SQLite primary result codes (extended codes keep them in their low byte): 18 too big, 19
    /// constraint, 20 datatype mismatch.
    pub const SQLITE: [i32; 3] = [18, 19, 20];
}

/// Why the database refused a statement, when the refusal is about the row ([`refused`]): retrying cannot
/// help, but the row can be dead-lettered. `None` for everything else.
///
/// The reason keeps the database's words, with every value it quotes redacted ([`redact_quoted`]).
pub(super) fn data_error(err: &DbErr) -> Option<String> {
    use sea_orm::sqlx;
    let db = database_error(err)?;
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let sqlstate = || {
        refused::SQLSTATE_CLASSES
            .iter()
            .any(|c| code.starts_with(c))
    };
    let is_data = if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        sqlstate() || refused::MYSQL.contains(&my.number())
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.parse::<i32>()
            .is_ok_and(|c| refused::SQLITE.contains(&(c & 0xff)))
    } else {
        sqlstate()
    };
    is_data.then(|| {
        format!(
            "the database refused the row ({code}): {}",
            redact_quoted(db.message())
        )
    })
}

/// A database message with the values it quotes replaced by `...`, and the names it quotes kept: the names
/// of columns, tables, constraints, indexes, encodings and types are the database's, and an operator needs
/// them; a value is the message's.
///
/// A quoted text is a name when the word before it says so (`column "x"`, `relation "t"`, `constraint
/// "t_pkey"`, `encoding "UTF8"`, `for key 'PRIMARY'`) or when it is in backquotes (MySQL); anything else
/// quoted is a value (`…: "abc"`, `value "99999999999" is out of range`, `Duplicate entry 'k' for key`).
/// A value may hold its own quote character, so it ends at the last quote followed by ` for ` (MySQL's
/// `'…' for column`), else at the last quote of the message: a mistake redacts too much, never too little.
pub(super) fn redact_quoted(message: &str) -> String {
    /// Words before a quoted name, lower case.
    const NAMES: [&str; 17] = [
        "column",
        "relation",
        "table",
        "constraint",
        "index",
        "key",
        "encoding",
        "type",
        "schema",
        "database",
        "sequence",
        "domain",
        "collation",
        "function",
        "trigger",
        "view",
        "field",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['\'', '"', '`']) {
        let (before, from) = rest.split_at(open);
        out.push_str(before);
        let q = from.as_bytes()[0] as char;
        let inside = &from[1..];
        let word = out
            .trim_end_matches(' ')
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        out.push(q);
        if q == '`' || NAMES.contains(&word.as_str()) {
            // A name: kept, up to its closing quote.
            match inside.find(q) {
                Some(close) => {
                    out.push_str(&inside[..=close]);
                    rest = &inside[close + 1..];
                }
                None => {
                    out.push_str(inside);
                    rest = "";
                }
            }
        } else {
            out.push_str("...");
            let mut closes = inside.rmatch_indices(q).map(|(i, _)| i);
            let close = closes
                .clone()
                .find(|&i| inside[i + 1..].starts_with(" for "))
                .or_else(|| closes.next());
            match close {
                Some(close) => {
                    out.push(q);
                    rest = &inside[close + 1..];
                }
                None => rest = "",
            }
        }
    }
    out.push_str(rest);
    out
}
