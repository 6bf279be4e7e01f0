//! Key and version normalisation (`sync::normal`): what the collapse, the stale check and the SQL guard compare
//! must be one value per entity. For any JSON value: the canonical form is a fixed point, does not depend on the
//! order of object members, and its text (what the database receives) names it: two canonical values are equal
//! exactly when their texts are. For any timestamp: normalised to whole milliseconds, towards the past,
//! idempotent.
//!
//! Not checked: that parsing the text gives the value back. serde_json's default float parser is not correctly
//! rounded in the last place (`12345678901234567890123123455678901` and the shortest text of what it reads,
//! `1.2345678901234567e34`, read as two neighbouring floats). Memory and database still agree: memory compares
//! the float, the database the float's shortest text, and distinct floats have distinct shortest texts.
#![no_main]

use chrono::{DateTime, Timelike};
use libfuzzer_sys::fuzz_target;
use msk_sync::sync::normal::{canonical_json, normalise};
use sea_orm::sea_query::Value as SqlValue;
use serde_json::Value as Json;

fn canonical(mut v: Json) -> Json {
    canonical_json(&mut v);
    v
}

/// The same value with every object's members in reverse order (serde_json's parser limits nesting to 128
/// levels, so recursion is bounded).
fn reversed(v: &Json) -> Json {
    match v {
        Json::Array(items) => Json::Array(items.iter().map(reversed).collect()),
        Json::Object(members) => Json::Object(
            members
                .iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Json>(data) else {
        return;
    };
    let c = canonical(value.clone());
    // Text, not `==`: serde_json's ordered maps compare equal whatever their order.
    let text = c.to_string();
    assert_eq!(canonical(c.clone()).to_string(), text, "not a fixed point");
    let reordered = canonical(reversed(&value));
    assert_eq!(reordered.to_string(), text, "depends on member order");
    // Equal texts, equal values (serde_json's `==` on numbers compares their values).
    assert_eq!(reordered, c, "one text for two values");
    let _: Json = serde_json::from_str(&text).expect("canonical JSON is JSON");
}

fn timestamp(data: &[u8]) {
    let Some(bytes) = data.get(..12) else {
        return;
    };
    let (secs, nanos) = bytes.split_at(8);
    // Years 1000 to 9999 (what every backend stores), any nanosecond including a leap second's.
    let secs = i64::from_le_bytes(secs.try_into().unwrap_or_default())
        .rem_euclid(253_402_300_800 + 30_610_224_000)
        - 30_610_224_000;
    let nanos = u32::from_le_bytes(nanos.try_into().unwrap_or_default()) % 2_000_000_000;
    let Some(t) = DateTime::from_timestamp(secs, nanos) else {
        return;
    };
    let mut v = SqlValue::ChronoDateTimeUtc(Some(t));
    normalise(&mut v);
    let SqlValue::ChronoDateTimeUtc(Some(n)) = v else {
        panic!("normalise changed the value's kind: {v:?}");
    };
    assert_eq!(n.nanosecond() % 1_000_000, 0, "{t} -> {n}: not whole milliseconds");
    assert!(n <= t && t - n < chrono::Duration::milliseconds(1), "{t} -> {n}");
    let mut again = SqlValue::ChronoDateTimeUtc(Some(n));
    normalise(&mut again);
    assert_eq!(again, SqlValue::ChronoDateTimeUtc(Some(n)), "not idempotent");
}

fuzz_target!(|data: &[u8]| {
    json(data);
    timestamp(data);
});
