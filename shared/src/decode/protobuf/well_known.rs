//! The well-known types (`google.protobuf.*`) in the proto3 JSON mapping's own forms: Timestamp and Duration
//! as text within the ranges the mapping allows, Any unpacked (to a bounded depth) by its type URL.

use super::*;

/// The well-known types, which the proto3 JSON mapping writes in a form of their own (prost-reflect's serde
/// mapping does them).
pub(super) fn well_known(full_name: &str) -> bool {
    full_name.starts_with("google.protobuf.")
        && matches!(
            &full_name["google.protobuf.".len()..],
            "Any"
                | "Timestamp"
                | "Duration"
                | "Struct"
                | "FloatValue"
                | "DoubleValue"
                | "Int32Value"
                | "Int64Value"
                | "UInt32Value"
                | "UInt64Value"
                | "BoolValue"
                | "StringValue"
                | "BytesValue"
                | "FieldMask"
                | "ListValue"
                | "Value"
                | "Empty"
        )
}

/// The range of a Timestamp's seconds the proto3 JSON mapping allows: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z.
pub(super) const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> =
    -62_135_596_800..=253_402_300_799;
/// The largest magnitude of a Duration's seconds the mapping allows (10,000 years).
pub(super) const DURATION_SECONDS: i64 = 315_576_000_000;
pub(super) const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// A well-known type as the proto3 JSON mapping writes it, refusing the values it refuses (as Python's
/// protobuf does: a Timestamp or Duration out of range, a Duration whose seconds and nanos differ in sign, a
/// `Value` holding NaN or an infinity, an `Any` of an unknown type).
pub(super) fn well_known_tree(
    m: &DynamicMessage,
    naming: Naming,
) -> Result<Message<'static>, String> {
    use prost_reflect::ReflectMessage;
    use prost_reflect::Value as V;
    let desc = m.descriptor();
    let name = desc.full_name();
    let number = |n: u32| m.get_field_by_number(n);
    match &name["google.protobuf.".len()..] {
        "Timestamp" => {
            let (seconds, nanos) = seconds_nanos(number(1).as_deref(), number(2).as_deref());
            timestamp(seconds, nanos).map(Message::from)
        }
        "Duration" => {
            let (seconds, nanos) = seconds_nanos(number(1).as_deref(), number(2).as_deref());
            duration(seconds, nanos).map(Message::from)
        }
        // The wrapped value as the plain field would be written: NaN and the infinities as strings (not the
        // `null` of prost-reflect's mapping), a float as the shortest text that reads back as that float.
        "FloatValue" | "DoubleValue" => match number(1).as_deref() {
            Some(v @ (V::F32(_) | V::F64(_))) => scalar(v, &prost_reflect::Kind::Double, naming),
            _ => Err(format!("{name} without its value field")),
        },
        "Any" => any(m, naming),
        // Deterministic already (Struct's fields are a BTreeMap in prost-types), and refused where the
        // mapping refuses (a non-finite number in a Value).
        _ => m
            .serialize_with_options(serde_json::value::Serializer, &naming.options())
            .map(Message::from)
            .map_err(|e| format!("{name}: {e}")),
    }
}

/// A Timestamp's or Duration's seconds (field 1) and nanos (field 2).
pub(super) fn seconds_nanos(
    seconds: Option<&prost_reflect::Value>,
    nanos: Option<&prost_reflect::Value>,
) -> (i64, i32) {
    (
        seconds.and_then(prost_reflect::Value::as_i64).unwrap_or(0),
        nanos.and_then(prost_reflect::Value::as_i32).unwrap_or(0),
    )
}

/// `nanos` as 0, 3, 6 or 9 fractional digits, as few as show it exactly (the mapping's and Python's choice).
pub(super) fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    }
}

/// A google.protobuf.Timestamp as RFC 3339 in UTC, or why it is not a valid one.
pub(crate) fn timestamp(seconds: i64, nanos: i32) -> Result<String, String> {
    if !TIMESTAMP_SECONDS.contains(&seconds) {
        return Err(format!(
            "google.protobuf.Timestamp is not valid: seconds {seconds} is outside 0001-01-01T00:00:00Z to \
             9999-12-31T23:59:59Z ({} to {})",
            TIMESTAMP_SECONDS.start(),
            TIMESTAMP_SECONDS.end()
        ));
    }
    if !(0..NANOS_PER_SECOND).contains(&nanos) {
        return Err(format!(
            "google.protobuf.Timestamp is not valid: nanos {nanos} is outside 0 to 999999999"
        ));
    }
    let at = chrono::DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| format!("google.protobuf.Timestamp seconds {seconds} is not a date"))?;
    Ok(format!(
        "{}{}Z",
        at.format("%Y-%m-%dT%H:%M:%S"),
        fraction(nanos.unsigned_abs())
    ))
}

/// A google.protobuf.Duration as seconds with a fraction and `s` (`"-1.5s"`), or why it is not a valid one.
pub(crate) fn duration(seconds: i64, nanos: i32) -> Result<String, String> {
    if !(-DURATION_SECONDS..=DURATION_SECONDS).contains(&seconds) {
        return Err(format!(
            "google.protobuf.Duration is not valid: seconds {seconds} is outside \
             -{DURATION_SECONDS} to {DURATION_SECONDS}"
        ));
    }
    if nanos <= -NANOS_PER_SECOND || nanos >= NANOS_PER_SECOND {
        return Err(format!(
            "google.protobuf.Duration is not valid: nanos {nanos} is outside -999999999 to 999999999"
        ));
    }
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        return Err(format!(
            "google.protobuf.Duration is not valid: seconds {seconds} and nanos {nanos} differ in sign"
        ));
    }
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    Ok(format!(
        "{sign}{}{}s",
        seconds.unsigned_abs(),
        fraction(nanos.unsigned_abs())
    ))
}

/// How many google.protobuf.Any may be packed one in another: each is decoded from its own bytes, where
/// prost's nesting limit starts again, so without a limit of their own a few bytes per level would recurse
/// past the stack.
pub const MAX_ANY_DEPTH: usize = 16;

thread_local! {
    /// How many Any are being unpacked on this thread, one in another.
    static ANY_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` one Any deeper, or refuses past [`MAX_ANY_DEPTH`].
pub(super) fn one_any_deeper<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let depth = ANY_DEPTH.with(std::cell::Cell::get);
    if depth >= MAX_ANY_DEPTH {
        return Err(format!(
            "google.protobuf.Any packed more than {MAX_ANY_DEPTH} deep, one in another"
        ));
    }
    ANY_DEPTH.with(|d| d.set(depth + 1));
    let out = f();
    ANY_DEPTH.with(|d| d.set(depth));
    out
}

/// The type URL and the message packed in a google.protobuf.Any; `None` for an empty Any.
pub(super) fn unpack(m: &DynamicMessage) -> Result<Option<(String, DynamicMessage)>, String> {
    use prost_reflect::ReflectMessage;
    let type_url = m
        .get_field_by_number(1)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let value = m
        .get_field_by_number(2)
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    if type_url.is_empty() && value.is_empty() {
        return Ok(None);
    }
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let desc = m
        .descriptor()
        .parent_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| {
            format!(
                "google.protobuf.Any of type {:?}, which the .proto files do not define",
                crate::text::bounded(&type_url, 200)
            )
        })?;
    let packed = DynamicMessage::decode(desc.clone(), value.as_ref()).map_err(|e| {
        format!(
            "google.protobuf.Any's value is not a {} message: {}",
            desc.full_name(),
            reason(&e)
        )
    })?;
    Ok(Some((type_url, packed)))
}

/// A google.protobuf.Any: `{}` when empty, else `"@type"` first, then the packed message's fields (or its
/// well-known form under `"value"`). The type must be in the pool the schema was compiled into.
pub(super) fn any(m: &DynamicMessage, naming: Naming) -> Result<Message<'static>, String> {
    use prost_reflect::ReflectMessage;
    let Some((type_url, packed)) = unpack(m)? else {
        return Ok(Message::Object(crate::message::Object::new()));
    };
    one_any_deeper(|| {
        let mut object = crate::message::Object::new();
        object.insert("@type", Message::from(type_url));
        if well_known(packed.descriptor().full_name()) {
            object.insert("value", well_known_tree(&packed, naming)?);
        } else {
            fields_into(&packed, naming, &mut object)?;
        }
        Ok(Message::Object(object))
    })
}
