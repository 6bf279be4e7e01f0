//! Key and version normalisation (`sync::normal`): what the collapse, the stale check and the SQL guard compare
//! must be one value per entity. For any JSON value: the canonical form is a fixed point, survives a trip through
//! its text, and does not depend on the order of object members. For any timestamp: normalised to whole
//! milliseconds, towards the past, idempotent.
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
    let again: Json = serde_json::from_str(&text).expect("canonical JSON is JSON");
    assert_eq!(canonical(again).to_string(), text, "changed through its text");
    assert_eq!(
        canonical(reversed(&value)).to_string(),
        text,
        "depends on member order"
    );
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
