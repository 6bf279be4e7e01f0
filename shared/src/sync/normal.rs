//! One key, one version: the same in memory as in the database.
//!
//! The collapse ([`super::Changes`]), the stale check and the tombstones ([`super::version`]) and the SQL guard
//! all compare key and version values. They agree with each other and with the database only if the values they
//! compare are the ones the column holds. So every key value and every version is normalised once, when its
//! change enters [`super::Changes`], to what its column will hold; the row bound to the statement carries that
//! normalised value, so the database receives exactly what memory compared.
//!
//! One match arm per value kind ([`normalise`]):
//! - timestamps: milliseconds (truncated, towards the past), on every backend. MariaDB's `DATETIME(3)` holds
//!   no more, versions have always compared at milliseconds (tombstones store epoch milliseconds), and one
//!   precision everywhere makes a key name the same entity whatever the backend;
//! - floats: `-0.0` is `0.0` (every database compares them equal); NaN and infinities never get here (the
//!   declarative conversion refuses them);
//! - JSON: canonical, as PostgreSQL's `jsonb` compares: object members sorted by name (a repeated name was
//!   already resolved by the parser, last wins, as `jsonb` does), numbers with an integral value written as
//!   integers (`1.0` is `1`), `-0.0` as `0`;
//! - text, integers, booleans, bytes and anything else: as they are (a database compares them as memory does;
//!   text collations that merge distinct keys are refused by the preflight).

use sea_orm::sea_query::Value as SqlValue;
use serde_json::Value as Json;

/// Normalises one key or version value in place, to what its column holds (see the module doc).
pub fn normalise(value: &mut SqlValue) {
    use chrono::Timelike;
    match value {
        SqlValue::ChronoDateTimeUtc(Some(t)) => {
            if let Some(ms) = t.with_nanosecond(millis(t.nanosecond())) {
                *t = ms;
            }
        }
        SqlValue::ChronoDateTime(Some(t)) => {
            if let Some(ms) = t.with_nanosecond(millis(t.nanosecond())) {
                *t = ms;
            }
        }
        SqlValue::ChronoDateTimeWithTimeZone(Some(t)) => {
            if let Some(ms) = t.with_nanosecond(millis(t.nanosecond())) {
                *t = ms;
            }
        }
        SqlValue::ChronoDateTimeLocal(Some(t)) => {
            if let Some(ms) = t.with_nanosecond(millis(t.nanosecond())) {
                *t = ms;
            }
        }
        SqlValue::Double(Some(f)) if *f == 0.0 => *f = 0.0,
        SqlValue::Float(Some(f)) if *f == 0.0 => *f = 0.0,
        SqlValue::Json(Some(j)) => canonical_json(j),
        _ => {}
    }
}

/// Nanoseconds truncated to whole milliseconds (a leap second's 1_000_000_000.. range included).
fn millis(nanos: u32) -> u32 {
    nanos - nanos % 1_000_000
}

/// Rewrites a JSON value into its canonical form (see the module doc). Iterative over arrays and objects'
/// members through an explicit stack, so a deeply nested value cannot overflow the thread's stack.
pub fn canonical_json(value: &mut Json) {
    let mut stack: Vec<&mut Json> = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Json::Number(n) => {
                if let Some(c) = canonical_number(n) {
                    *n = c;
                }
            }
            Json::Array(items) => stack.extend(items.iter_mut()),
            Json::Object(members) => {
                members.sort_keys();
                stack.extend(members.values_mut());
            }
            Json::Null | Json::Bool(_) | Json::String(_) => {}
        }
    }
}

/// A float with an integral value as that integer (when an i64 or u64 holds it exactly), `-0.0` as `0`.
fn canonical_number(n: &serde_json::Number) -> Option<serde_json::Number> {
    if n.is_i64() || n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    if f.fract() != 0.0 || !f.is_finite() {
        return None;
    }
    // 2^63 and 2^64 are exact as f64; the casts below are exact inside these bounds.
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        Some((f as i64).into())
    } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Some((f as u64).into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use serde_json::json;

    fn ts(s: &str) -> SqlValue {
        SqlValue::ChronoDateTimeUtc(Some(DateTime::parse_from_rfc3339(s).unwrap().to_utc()))
    }

    fn normal(mut v: SqlValue) -> SqlValue {
        normalise(&mut v);
        v
    }

    #[test]
    fn timestamps_hold_milliseconds_truncated_towards_the_past() {
        assert_eq!(
            normal(ts("2024-01-01T00:00:00.0000001Z")),
            normal(ts("2024-01-01T00:00:00.0000002Z"))
        );
        assert_eq!(
            normal(ts("2024-01-01T00:00:00.123999999Z")),
            ts("2024-01-01T00:00:00.123Z")
        );
        // Before 1970 too: towards the past, not towards zero.
        assert_eq!(
            normal(ts("1969-12-31T23:59:59.9999Z")),
            ts("1969-12-31T23:59:59.999Z")
        );
        assert_ne!(
            normal(ts("2024-01-01T00:00:00.001Z")),
            normal(ts("2024-01-01T00:00:00.000999Z"))
        );
    }

    #[test]
    fn json_is_canonical() {
        let j = |v: serde_json::Value| normal(SqlValue::Json(Some(Box::new(v))));
        assert_eq!(j(json!({"a": 1, "b": 2})), j(json!({"b": 2, "a": 1})));
        assert_eq!(j(json!(1)), j(json!(1.0)));
        assert_eq!(j(json!(0)), j(json!(-0.0)));
        assert_eq!(
            j(json!([{"y": 1e2, "x": [2.0]}])),
            j(json!([{"x": [2], "y": 100}]))
        );
        assert_ne!(j(json!(1.5)), j(json!(1)));
        assert_ne!(j(json!([1, 2])), j(json!([2, 1])));
        // The canonical text is what the statement binds.
        let SqlValue::Json(Some(v)) = j(json!({"b": {"d": 1.0, "c": null}, "a": 1e19})) else {
            panic!()
        };
        assert_eq!(
            v.to_string(),
            r#"{"a":10000000000000000000,"b":{"c":null,"d":1}}"#
        );
    }

    #[test]
    fn floats_have_one_zero_and_the_rest_is_as_it_was() {
        assert_eq!(
            format!("{:?}", normal(SqlValue::Double(Some(-0.0)))),
            format!("{:?}", SqlValue::Double(Some(0.0)))
        );
        let s = SqlValue::String(Some("A a ".into()));
        assert_eq!(normal(s.clone()), s);
        assert_eq!(normal(SqlValue::BigInt(Some(7))), SqlValue::BigInt(Some(7)));
    }
}
