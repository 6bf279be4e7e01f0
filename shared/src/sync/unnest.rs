//! PostgreSQL's bulk statements over arrays: one parameter per column, however many rows.
//!
//! `INSERT … VALUES ($1, $2), ($3, $4), …` is a new statement for every row count. PostgreSQL parses and plans
//! it again, its text growing with the rows, and sqlx prepares it in a round trip of its own, then keeps it
//! among its 100 cached statements until it is evicted. `INSERT … SELECT * FROM UNNEST($1::text[],
//! $2::int8[]) …` is one statement per table, prepared once per connection, each column bound as one array:
//! no parse after the first, and a cheaper execute (the server-log measurement is in docs/src/performance.md).
//!
//! sea-query's binder takes an array's elements as non-NULL values of one type and panics on anything else,
//! so [`ArrayColumns::of`] admits only rows that are exactly that. A batch with a NULL or a column of mixed
//! types is written through `VALUES`, as before. Both forms coerce a parameter to its column the same way
//! (assignment casts), so they accept and refuse the same values.

use sea_orm::sea_query::{ArrayType, Value as SqlValue};
use sea_orm::{DbBackend, Statement};

use super::table::TableDef;

/// The array type and its PostgreSQL name of every column of a set of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArrayColumns(Vec<(ArrayType, &'static str)>);

impl ArrayColumns {
    /// The columns' array types when every row has `width` values, none NULL, each column of one type that
    /// binds as an array; otherwise `None`.
    pub(crate) fn of<'r>(
        rows: impl IntoIterator<Item = &'r [SqlValue]>,
        width: usize,
    ) -> Option<Self> {
        let mut rows = rows.into_iter();
        let first = rows.next()?;
        if first.len() != width {
            return None;
        }
        let types: Vec<(ArrayType, &'static str)> =
            first.iter().map(array_type).collect::<Option<_>>()?;
        for row in rows {
            if row.len() != width
                || row
                    .iter()
                    .zip(&types)
                    .any(|(v, (ty, _))| array_type(v).map(|(t, _)| t).as_ref() != Some(ty))
            {
                return None;
            }
        }
        Some(Self(types))
    }

    /// `$1::text[], $2::int8[], …`
    fn parameters(&self) -> String {
        let mut out = String::new();
        for (i, (_, name)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}::{name}", i + 1));
        }
        out
    }

    /// One array value per column of `rows` (rows that [`ArrayColumns::of`] admitted).
    fn values(&self, rows: &[&[SqlValue]]) -> Vec<SqlValue> {
        self.0
            .iter()
            .enumerate()
            .map(|(c, (ty, _))| {
                let items: Vec<SqlValue> = rows.iter().filter_map(|r| r.get(c).cloned()).collect();
                SqlValue::Array(ty.clone(), Some(Box::new(items)))
            })
            .collect()
    }
}

/// The array type of a non-NULL value, and its name in PostgreSQL, for the types mappings produce.
fn array_type(v: &SqlValue) -> Option<(ArrayType, &'static str)> {
    use SqlValue as V;
    Some(match v {
        V::Bool(Some(_)) => (ArrayType::Bool, "bool[]"),
        V::SmallInt(Some(_)) => (ArrayType::SmallInt, "int2[]"),
        V::Int(Some(_)) => (ArrayType::Int, "int4[]"),
        V::BigInt(Some(_)) => (ArrayType::BigInt, "int8[]"),
        V::Float(Some(_)) => (ArrayType::Float, "float4[]"),
        V::Double(Some(_)) => (ArrayType::Double, "float8[]"),
        V::String(Some(_)) => (ArrayType::String, "text[]"),
        V::Json(Some(_)) => (ArrayType::Json, "jsonb[]"),
        V::ChronoDateTimeUtc(Some(_)) => (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        _ => return None,
    })
}

/// A PostgreSQL identifier, quoted. Names are plain identifiers already ([`super::table`]); quoting keeps
/// their case and any reserved word.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quoted).collect::<Vec<_>>().join(", ")
}

/// `INSERT INTO t (…) SELECT * FROM UNNEST(…) ON CONFLICT (key) DO UPDATE SET every other column`: the same
/// upsert as the `VALUES` form, whose conflict clause it copies.
pub(crate) fn upsert(table: &TableDef, types: &ArrayColumns, rows: &[&[SqlValue]]) -> Statement {
    let columns = list(table.columns.iter().map(String::as_str));
    let key = list(table.key_columns());
    let update: Vec<&str> = table.non_key_columns().collect();
    let set = table
        .set_on_conflict(&update)
        .iter()
        .map(|c| format!("{0} = \"excluded\".{0}", quoted(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {} ({columns}) SELECT * FROM UNNEST({}) ON CONFLICT ({key}) DO UPDATE SET {set}",
        quoted(&table.name),
        types.parameters(),
    );
    Statement::from_sql_and_values(DbBackend::Postgres, sql, types.values(rows))
}

/// `DELETE FROM t WHERE (key) IN (SELECT * FROM UNNEST(…))`, for keys that [`ArrayColumns::of`] admitted.
pub(crate) fn delete(table: &TableDef, types: &ArrayColumns, keys: &[&[SqlValue]]) -> Statement {
    let sql = format!(
        "DELETE FROM {} WHERE ({}) IN (SELECT * FROM UNNEST({}))",
        quoted(&table.name),
        list(table.key_columns()),
        types.parameters(),
    );
    Statement::from_sql_and_values(DbBackend::Postgres, sql, types.values(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SqlValue {
        SqlValue::String(Some(v.into()))
    }

    fn table() -> TableDef {
        TableDef {
            name: "t".into(),
            columns: vec!["k".into(), "n".into(), "v".into()],
            key: vec![0],
        }
    }

    #[test]
    fn the_sql_postgresql_gets_is_one_statement_whatever_the_rows() {
        let a: &[SqlValue] = &[
            s("a"),
            SqlValue::BigInt(Some(1)),
            SqlValue::Double(Some(0.5)),
        ];
        let b: &[SqlValue] = &[
            s("b"),
            SqlValue::BigInt(Some(2)),
            SqlValue::Double(Some(1.5)),
        ];
        let types = ArrayColumns::of([a, b], 3).unwrap();
        let one = upsert(&table(), &types, &[a]);
        let two = upsert(&table(), &types, &[a, b]);
        assert_eq!(
            two.sql,
            r#"INSERT INTO "t" ("k", "n", "v") SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[]) ON CONFLICT ("k") DO UPDATE SET "n" = "excluded"."n", "v" = "excluded"."v""#
        );
        assert_eq!(one.sql, two.sql);
        let values = two.values.unwrap().0;
        assert_eq!(
            values[1],
            SqlValue::Array(
                ArrayType::BigInt,
                Some(Box::new(vec![
                    SqlValue::BigInt(Some(1)),
                    SqlValue::BigInt(Some(2))
                ]))
            )
        );
        let keys = ArrayColumns::of([&a[..1]], 1).unwrap();
        assert_eq!(
            delete(&table(), &keys, &[&a[..1], &b[..1]]).sql,
            r#"DELETE FROM "t" WHERE ("k") IN (SELECT * FROM UNNEST($1::text[]))"#
        );
    }

    #[test]
    fn a_null_a_mixed_column_or_a_short_row_keeps_the_values_form() {
        let a: &[SqlValue] = &[
            s("a"),
            SqlValue::BigInt(Some(1)),
            SqlValue::Double(Some(0.5)),
        ];
        let null: &[SqlValue] = &[s("b"), SqlValue::BigInt(None), SqlValue::Double(Some(0.5))];
        let mixed: &[SqlValue] = &[s("b"), SqlValue::Int(Some(1)), SqlValue::Double(Some(0.5))];
        let short: &[SqlValue] = &[s("b"), SqlValue::BigInt(Some(1))];
        let bytes: &[SqlValue] = &[
            s("b"),
            SqlValue::Bytes(Some(vec![1])),
            SqlValue::Double(None),
        ];
        assert!(ArrayColumns::of([a, a], 3).is_some());
        for other in [null, mixed, short, bytes] {
            assert_eq!(ArrayColumns::of([a, other], 3), None);
            assert_eq!(ArrayColumns::of([other, a], 3), None);
        }
        assert_eq!(ArrayColumns::of(std::iter::empty(), 3), None);
    }

    #[test]
    fn a_table_with_only_key_columns_updates_the_key_to_itself() {
        let keys = TableDef {
            name: "t".into(),
            columns: vec!["id".into()],
            key: vec![0],
        };
        let row: &[SqlValue] = &[s("a")];
        let types = ArrayColumns::of([row], 1).unwrap();
        assert!(
            upsert(&keys, &types, &[row])
                .sql
                .ends_with(r#"DO UPDATE SET "id" = "excluded"."id""#)
        );
    }
}
