//! What each backend's catalog says of a table: its columns, types, collations, indexes and (MySQL) the
//! grants the user holds, read into one [`Found`].

use super::*;

/// Reads one table from the catalog; `None` when it does not exist.
pub async fn inspect(
    db: &DatabaseConnection,
    expected: &Expected,
    server: &Server,
) -> Result<Option<Found>, DbErr> {
    match server.backend {
        DbBackend::Postgres => inspect_postgres(db, expected).await,
        DbBackend::MySql => inspect_mysql(db, expected).await,
        _ => inspect_sqlite(db, expected).await,
    }
}

pub(super) async fn query(
    db: &impl ConnectionTrait,
    sql: &str,
    values: Vec<SqlValue>,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let backend = db.get_database_backend();
    db.query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
}

pub(super) fn text(row: &sea_orm::QueryResult, i: usize) -> Result<String, DbErr> {
    Ok(row
        .try_get_by_index::<Option<String>>(i)?
        .unwrap_or_default())
}

pub(super) async fn inspect_postgres(
    db: &DatabaseConnection,
    expected: &Expected,
) -> Result<Option<Found>, DbErr> {
    let name = || vec![SqlValue::from(expected.def.name.clone())];
    // Resolved like the statements' unqualified names: through the search path.
    let exists = query(
        db,
        "SELECT r IS NOT NULL, COALESCE(has_table_privilege(r, 'DELETE'), false) \
         FROM (SELECT to_regclass(quote_ident($1)) AS r) s",
        name(),
    )
    .await?;
    let Some(row) = exists.first() else {
        return Ok(None);
    };
    if !row.try_get_by_index::<bool>(0)? {
        return Ok(None);
    }
    let may_delete: bool = row.try_get_by_index(1)?;
    let columns = query(
        db,
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
           (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)::regtype::text, \
           a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '', \
           co.collname::text, COALESCE(co.collisdeterministic, true), \
           has_column_privilege(a.attrelid, a.attnum, 'SELECT'), \
           has_column_privilege(a.attrelid, a.attnum, 'INSERT'), \
           has_column_privilege(a.attrelid, a.attnum, 'UPDATE') \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_collation co ON co.oid = a.attcollation \
         WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
        name(),
    )
    .await?;
    let mut found = Found::default();
    let mut grants = Vec::new();
    for row in &columns {
        let collation = row.try_get_by_index::<Option<String>>(4)?;
        found.columns.push(FoundColumn {
            name: text(row, 0)?,
            display: text(row, 1)?,
            family: text(row, 2)?,
            required: row.try_get_by_index(3)?,
            // "default" is the database's collation: deterministic like every libc / ICU one but those
            // created with deterministic = false.
            bytewise: row.try_get_by_index(5)?,
            collation,
        });
        let privileges: [bool; 3] = [
            row.try_get_by_index(6)?,
            row.try_get_by_index(7)?,
            row.try_get_by_index(8)?,
        ];
        grants.push(privileges);
    }
    let granted = |column: &str, which: usize| {
        found
            .columns
            .iter()
            .position(|c| c.name == column)
            .is_none_or(|i| grants[i][which])
    };
    let mut denied = Vec::new();
    for (privilege, which, columns) in [
        ("SELECT", 0, expected.def.key_columns().collect::<Vec<_>>()),
        (
            "INSERT",
            1,
            expected.def.columns.iter().map(String::as_str).collect(),
        ),
        ("UPDATE", 2, expected.updated()),
    ] {
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| !granted(c, which))
            .collect();
        // Not granted on any of them is the usual case (a table grant missing): say it once.
        if !missing.is_empty() && missing.len() == columns.len() {
            denied.push((privilege.to_string(), None, "not granted".to_string()));
        } else {
            for c in missing {
                denied.push((
                    privilege.to_string(),
                    Some(c.to_string()),
                    "not granted".to_string(),
                ));
            }
        }
    }
    if expected.deletes && !may_delete {
        denied.push(("DELETE".into(), None, "not granted".into()));
    }
    found.denied = denied;
    // Only an immediate, non-partial unique index on plain columns can be ON CONFLICT's arbiter; INCLUDE
    // columns are not part of what is unique.
    let indexes = query(
        db,
        "SELECT ci.relname::text, \
           CASE WHEN i.indpred IS NOT NULL THEN 'partial' WHEN i.indexprs IS NOT NULL THEN 'on an expression' \
                WHEN NOT i.indimmediate THEN 'deferrable' END, \
           a.attname::text \
         FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(n, o) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
         WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisunique AND k.o <= i.indnkeyatts \
         ORDER BY ci.relname, k.o",
        name(),
    )
    .await?;
    add_index_rows(&mut found.unique, &indexes)?;
    Ok(Some(found))
}

/// Rows of (index, why it cannot be an arbiter or NULL, column), in index and column order: the unique indexes
/// each backend's catalog query returns.
pub(super) fn add_index_rows(
    unique: &mut Vec<FoundIndex>,
    rows: &[sea_orm::QueryResult],
) -> Result<(), DbErr> {
    for row in rows {
        add_index_column(
            unique,
            text(row, 0)?,
            row.try_get_by_index::<Option<String>>(1)?,
            text(row, 2)?,
        );
    }
    Ok(())
}

pub(super) fn add_index_column(
    unique: &mut Vec<FoundIndex>,
    index: String,
    unusable: Option<String>,
    column: String,
) {
    match unique.last_mut() {
        Some(last) if last.name == index => {
            last.columns.push(column);
            if last.unusable.is_none() {
                last.unusable = unusable;
            }
        }
        _ => unique.push(FoundIndex {
            name: index,
            columns: vec![column],
            unusable,
        }),
    }
}

pub(super) async fn inspect_mysql(
    db: &DatabaseConnection,
    expected: &Expected,
) -> Result<Option<Found>, DbErr> {
    let name = || vec![SqlValue::from(expected.def.name.clone())];
    let tables = query(
        db,
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        name(),
    )
    .await?;
    if tables.is_empty() {
        return Ok(None);
    }
    let columns = query(
        db,
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(LOWER(DATA_TYPE) AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
           CAST(IF(IS_NULLABLE = 'NO' AND COLUMN_DEFAULT IS NULL AND EXTRA NOT LIKE '%auto_increment%' \
                   AND EXTRA NOT LIKE '%GENERATED%', 'y', 'n') AS CHAR), \
           CAST(COLLATION_NAME AS CHAR) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         ORDER BY ORDINAL_POSITION",
        name(),
    )
    .await?;
    let mut found = Found::default();
    for row in &columns {
        let collation = row.try_get_by_index::<Option<String>>(4)?;
        found.columns.push(FoundColumn {
            name: text(row, 0)?,
            family: text(row, 1)?,
            display: match &collation {
                Some(c) => format!("{} collate {c}", text(row, 2)?),
                None => text(row, 2)?,
            },
            required: text(row, 3)? == "y",
            bytewise: collation.as_deref().is_none_or(mysql_bytewise),
            collation,
        });
    }
    // ON DUPLICATE KEY fires on any unique index; one on a prefix of the key merges distinct keys.
    let indexes = query(
        db,
        "SELECT CAST(INDEX_NAME AS CHAR), \
           CAST(CASE WHEN SUB_PART IS NOT NULL THEN 'on a prefix' WHEN COLUMN_NAME IS NULL THEN 'on an expression' END AS CHAR), \
           CAST(COALESCE(COLUMN_NAME, '') AS CHAR) \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        name(),
    )
    .await?;
    add_index_rows(&mut found.unique, &indexes)?;
    found.denied = probe_mysql_grants(db, expected, &found).await?;
    Ok(Some(found))
}

/// MySQL's grant tables do not say what a user may do (roles, wildcard schema grants, anonymous accounts), but
/// the server checks every statement's privileges before it looks at a row: statements that match no row, in
/// a transaction rolled back, ask it exactly. Only columns that exist are named, so that a missing column is
/// reported as such and not as a refused statement.
pub(super) async fn probe_mysql_grants(
    db: &DatabaseConnection,
    expected: &Expected,
    found: &Found,
) -> Result<Vec<(String, Option<String>, String)>, DbErr> {
    let exists = |c: &&str| found.columns.iter().any(|f| f.name.eq_ignore_ascii_case(c));
    let q = |c: &str| format!("`{c}`");
    let table = q(&expected.def.name);
    let list = |cols: &[&str]| cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    let key: Vec<&str> = expected.def.key_columns().filter(exists).collect();
    let all: Vec<&str> = expected
        .def
        .columns
        .iter()
        .map(String::as_str)
        .filter(exists)
        .collect();
    let updated: Vec<&str> = expected.updated().into_iter().filter(exists).collect();
    let mut probes = Vec::new();
    if !key.is_empty() {
        probes.push((
            "SELECT",
            format!("SELECT {} FROM {table} WHERE 1 = 0", list(&key)),
        ));
    }
    if !all.is_empty() {
        let nulls = vec!["NULL"; all.len()].join(", ");
        probes.push((
            "INSERT",
            format!(
                "INSERT INTO {table} ({}) SELECT {nulls} FROM DUAL WHERE 1 = 0",
                list(&all)
            ),
        ));
    }
    if !updated.is_empty() {
        let set: Vec<String> = updated.iter().map(|c| format!("{} = NULL", q(c))).collect();
        probes.push((
            "UPDATE",
            format!("UPDATE {table} SET {} WHERE 1 = 0", set.join(", ")),
        ));
    }
    if expected.deletes {
        probes.push(("DELETE", format!("DELETE FROM {table} WHERE 1 = 0")));
    }
    let txn = db.begin().await?;
    let mut denied = Vec::new();
    for (privilege, sql) in probes {
        match txn.execute_unprepared(&sql).await {
            Ok(_) => {}
            Err(e) => match mysql_denied(&e) {
                Some(said) => denied.push((privilege.to_string(), None, said)),
                // Anything else the server refuses (a column without a default, a missing column) is the
                // catalog comparison's to report; only a lost connection or a timeout stops the preflight.
                None if database_error(&e, |_, _| true).is_some() => {}
                None => return Err(e),
            },
        }
    }
    txn.rollback().await?;
    Ok(denied)
}

/// The server's words when it refused a statement for want of a privilege (1142 table, 1143 column, 1044
/// database); they name the user and the table, never a password.
pub(super) fn mysql_denied(err: &DbErr) -> Option<String> {
    database_error(err, |code, number| {
        matches!(number, Some(1044 | 1142 | 1143)) || code == "42501"
    })
}

pub(super) fn database_error(
    err: &DbErr,
    denied: impl Fn(&str, Option<u16>) -> bool,
) -> Option<String> {
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
    let number = db
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    denied(&code, number).then(|| db.message().to_string())
}

pub(super) async fn inspect_sqlite(
    db: &DatabaseConnection,
    expected: &Expected,
) -> Result<Option<Found>, DbErr> {
    let name = || vec![SqlValue::from(expected.def.name.clone())];
    let columns = query(
        db,
        "SELECT name, type, \"notnull\" <> 0 AND dflt_value IS NULL AND pk = 0, pk FROM pragma_table_info(?) ORDER BY cid",
        name(),
    )
    .await?;
    if columns.is_empty() {
        return Ok(None);
    }
    let mut found = Found::default();
    let mut pk: Vec<(i64, String)> = Vec::new();
    for row in &columns {
        let name = text(row, 0)?;
        let declared = text(row, 1)?;
        let position: i64 = row.try_get_by_index(3)?;
        if position > 0 {
            pk.push((position, name.clone()));
        }
        found.columns.push(FoundColumn {
            name,
            family: declared.to_ascii_lowercase(),
            display: declared,
            required: row.try_get_by_index(2)?,
            collation: None,
            bytewise: true,
        });
    }
    // SQLite decides uniqueness with the index's collation (NOCASE, RTRIM merge keys). An INTEGER PRIMARY
    // KEY is the rowid and has no index of its own.
    let indexes = query(
        db,
        "SELECT il.name, CASE WHEN il.partial THEN 'partial' WHEN ii.cid = -2 THEN 'on an expression' END, \
           COALESCE(ii.name, ''), ii.coll, il.origin \
         FROM pragma_index_list(?) AS il, pragma_index_xinfo(il.name) AS ii \
         WHERE il.\"unique\" AND ii.key ORDER BY il.name, ii.seqno",
        name(),
    )
    .await?;
    let mut has_pk_index = false;
    for row in &indexes {
        let column = text(row, 2)?;
        let collation = text(row, 3)?;
        has_pk_index |= text(row, 4)? == "pk";
        if !collation.eq_ignore_ascii_case("BINARY")
            && let Some(c) = found.columns.iter_mut().find(|c| c.name == column)
        {
            c.collation = Some(collation);
            c.bytewise = false;
        }
    }
    add_index_rows(&mut found.unique, &indexes)?;
    if !has_pk_index && !pk.is_empty() {
        pk.sort();
        found.unique.push(FoundIndex {
            name: "PRIMARY KEY".into(),
            columns: pk.into_iter().map(|(_, c)| c).collect(),
            unusable: None,
        });
    }
    Ok(Some(found))
}
