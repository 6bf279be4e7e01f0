//! Debezium's change events (`codec.envelope = "debezium"`), after the value's format decoded them.
//!
//! An event is `{before, after, source, op, ts_ms, transaction}`, either as it is (JSON without schemas,
//! Avro, Protobuf) or in Kafka Connect JsonConverter's `{"schema": …, "payload": …}` wrapper, told apart per
//! message. The message mappings see is the row image: `after` for `op` `c`, `r` and `u`, `before` for `d`
//! (which, with the default replica identity, holds only the key), plus the envelope's metadata as
//! `debeziumOp`, `debeziumSource` (the whole `source` block) and `debeziumTsMs`. A truncate (`t`) has no
//! image: its message is the metadata alone. A message without `op` (a heartbeat, a schema change) is left as
//! it is. What each op means for the table is [`crate::change`]'s.
//!
//! Where JsonConverter's schema is present, the values Debezium encodes (`io.debezium.time.*` dates, times
//! and timestamps as numbers since the epoch, Kafka Connect's `Decimal` and Debezium's
//! `VariableScaleDecimal` as base64 bytes of the unscaled number) are converted to text the column types
//! read: `2024-03-01`, `12:30:00.000`, `2024-03-01T12:30:00.000000Z`, `1234.50`. Without a schema a value
//! arrives as Debezium wrote it.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use super::{DecodeError, Decoded};
use crate::message::{Message, Object};

/// The metadata fields the unwrapped message gets.
pub(crate) const OP: &str = "debeziumOp";
/// `source`, the whole block (`lsn`, `ts_ms`, `txId`, `db`, `table`, …).
pub(crate) const SOURCE: &str = "debeziumSource";
/// The envelope's `ts_ms`: when Debezium processed the change.
pub(crate) const TS_MS: &str = "debeziumTsMs";

fn bad(why: impl std::fmt::Display) -> DecodeError {
    DecodeError::Permanent(format!("Debezium envelope: {why}"))
}

/// Unwraps every message of `decoded` (see the module's documentation).
pub(crate) fn unwrap(mut decoded: Decoded<'_>) -> Result<Decoded<'_>, DecodeError> {
    for message in &mut decoded.messages {
        *message = unwrap_one(std::mem::take(message))?;
    }
    Ok(decoded)
}

/// JsonConverter's `{"schema": …, "payload": …}`: its schema and payload, or the message as it was.
fn split_wrapper(message: Message<'_>) -> (Option<Message<'_>>, Message<'_>) {
    match message {
        Message::Object(mut o)
            if o.len() == 2 && o.contains_key("schema") && o.contains_key("payload") =>
        {
            let payload = o.remove("payload").unwrap_or_default();
            let schema = o.remove("schema").filter(Message::is_object);
            (schema, payload)
        }
        other => (None, other),
    }
}

/// A record key in JsonConverter's wrapper is its payload; any other key is as it was.
pub(crate) fn unwrap_key(key: Message<'_>) -> Message<'_> {
    split_wrapper(key).1
}

fn unwrap_one(message: Message<'_>) -> Result<Message<'_>, DecodeError> {
    let (schema, payload) = split_wrapper(message);
    let mut envelope = match payload {
        Message::Object(o) => o,
        // A wrapper around nothing: nothing to apply (the change rule skips a message without op).
        Message::Null => return Ok(Message::Object(Object::new())),
        other => {
            return Err(bad(format_args!(
                "the value is {}, not an object",
                other.kind()
            )));
        }
    };
    let op = match envelope.remove("op") {
        None | Some(Message::Null) => return Ok(Message::Object(envelope)),
        Some(Message::String(op)) => op,
        Some(other) => return Err(bad(format_args!("op is {}, not a string", other.kind()))),
    };
    let image_name = match op.as_ref() {
        "d" => Some("before"),
        "t" => None,
        _ => Some("after"),
    };
    let mut image = match image_name {
        None => Object::with_capacity(3 + super::INJECTED_FIELDS),
        Some(name) => match envelope.remove(name) {
            Some(Message::Object(o)) => o,
            None | Some(Message::Null) => {
                let why = if name == "before" {
                    " (a table with REPLICA IDENTITY NOTHING sends no key: set it to DEFAULT or FULL)"
                } else {
                    ""
                };
                return Err(bad(format_args!("op {op:?} without {name}{why}")));
            }
            Some(other) => {
                return Err(bad(format_args!(
                    "{name} is {}, not an object",
                    other.kind()
                )));
            }
        },
    };
    if let (Some(schema), Some(name)) = (&schema, image_name) {
        convert_image(&mut image, schema, name)?;
    }
    image.insert(OP, Message::String(op));
    image.insert(SOURCE, envelope.remove("source").unwrap_or_default());
    image.insert(TS_MS, envelope.remove("ts_ms").unwrap_or_default());
    Ok(Message::Object(image))
}

/// The struct schema of field `name` of a Connect struct schema.
fn field_schema<'s, 'a>(schema: &'s Message<'a>, name: &str) -> Option<&'s Message<'a>> {
    schema
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("field").and_then(Message::as_str) == Some(name))
}

/// Converts the values of `image` whose field schemas (in the envelope's schema, under `name`) carry one of
/// Debezium's encodings. Errors name the field and the encoding, never the value.
fn convert_image(
    image: &mut Object<'_>,
    schema: &Message<'_>,
    name: &str,
) -> Result<(), DecodeError> {
    let Some(fields) = field_schema(schema, name)
        .and_then(|s| s.get("fields"))
        .and_then(Message::as_array)
    else {
        return Ok(());
    };
    for f in fields {
        let (Some(field), Some(logical)) = (
            f.get("field").and_then(Message::as_str),
            f.get("name").and_then(Message::as_str),
        ) else {
            continue;
        };
        let Some(value) = image.get_mut(field) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if let Some(converted) = convert(logical, value, f)
            .map_err(|why| bad(format_args!("field {field} ({logical}): {why}")))?
        {
            *value = Message::from(converted);
        }
    }
    Ok(())
}

/// A value in one of Debezium's (or Kafka Connect's) encodings as text; `None` for names this does not know.
fn convert(
    logical: &str,
    value: &Message<'_>,
    schema: &Message<'_>,
) -> Result<Option<String>, String> {
    let int = || {
        value
            .as_i64()
            .ok_or_else(|| format!("expected an integer, got {}", value.kind()))
    };
    Ok(Some(match logical {
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => date(int()?)?,
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => {
            time(int()?.checked_mul(1_000_000).ok_or("out of range")?, 3)?
        }
        "io.debezium.time.MicroTime" => time(int()?.checked_mul(1_000).ok_or("out of range")?, 6)?,
        "io.debezium.time.NanoTime" => time(int()?, 9)?,
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
            timestamp(i128::from(int()?) * 1_000_000, 3)?
        }
        "io.debezium.time.MicroTimestamp" => timestamp(i128::from(int()?) * 1_000, 6)?,
        "io.debezium.time.NanoTimestamp" => timestamp(i128::from(int()?), 9)?,
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = schema
                .get("parameters")
                .and_then(|p| p.get("scale"))
                .and_then(|s| match s {
                    Message::String(s) => s.parse::<u32>().ok(),
                    other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
                })
                .ok_or("the schema has no scale parameter")?;
            decimal(value, scale)?
        }
        "io.debezium.data.VariableScaleDecimal" => {
            let scale = value
                .get("scale")
                .and_then(Message::as_i64)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or("no scale")?;
            decimal(value.get("value").ok_or("no value")?, scale)?
        }
        _ => return Ok(None),
    }))
}

/// The longest unscaled number a decimal may have, in bytes: far more digits than any database holds.
const MAX_DECIMAL_BYTES: usize = 256;

/// Base64 of a big-endian two's-complement unscaled number, and its scale, as decimal text.
fn decimal(value: &Message<'_>, scale: u32) -> Result<String, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("expected base64 text, got {}", value.kind()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "not base64")?;
    if bytes.len() > MAX_DECIMAL_BYTES || scale > 1_000 {
        return Err("too large".into());
    }
    let digits = num_bigint::BigInt::from_signed_bytes_be(&bytes).to_string();
    let (sign, digits) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let scale = scale as usize;
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

fn date(days: i64) -> Result<String, String> {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::try_days(days)?))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| "date out of range".into())
}

fn fraction(digits: usize) -> &'static str {
    match digits {
        3 => "%.3f",
        6 => "%.6f",
        _ => "%.9f",
    }
}

fn time(nanos: i64, digits: usize) -> Result<String, String> {
    let secs = u32::try_from(nanos.div_euclid(1_000_000_000)).map_err(|_| "time out of range")?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).map_err(|_| "time out of range")?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, sub).ok_or("time out of range")?;
    Ok(t.format(&format!("%H:%M:%S{}", fraction(digits)))
        .to_string())
}

fn timestamp(nanos: i128, digits: usize) -> Result<String, String> {
    let out = || "timestamp out of range".to_string();
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).map_err(|_| out())?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).map_err(|_| out())?;
    let t: DateTime<Utc> = DateTime::from_timestamp(secs, sub).ok_or_else(out)?;
    Ok(t.format(&format!("%Y-%m-%dT%H:%M:%S{}Z", fraction(digits)))
        .to_string())
}

/// The unwrapped message's field names that are Debezium's, not the row's.
#[cfg(test)]
const METADATA: [&str; 3] = [OP, SOURCE, TS_MS];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn one(value: Value) -> Result<Value, String> {
        unwrap_one(Message::from(value))
            .map(|m| m.to_value())
            .map_err(|e| e.to_string())
    }

    const SOURCE_BLOCK: &str = r#"{"version":"2.7.0.Final","connector":"postgresql","name":"dbserver1","ts_ms":1700000000000,"db":"shop","schema":"public","table":"customers","txId":771,"lsn":33841320}"#;

    fn source() -> Value {
        serde_json::from_str(SOURCE_BLOCK).unwrap()
    }

    #[test]
    fn ops_pick_their_image_and_add_the_metadata() {
        for op in ["c", "r", "u"] {
            let m = one(json!({"before": null, "after": {"id": 1, "email": "a@x"}, "source": source(), "op": op, "ts_ms": 5}))
                .unwrap();
            assert_eq!(
                m,
                json!({"id": 1, "email": "a@x", "debeziumOp": op, "debeziumSource": source(), "debeziumTsMs": 5})
            );
        }
        let d = one(json!({"before": {"id": 1, "email": null}, "after": null, "source": source(), "op": "d", "ts_ms": 6}))
            .unwrap();
        assert_eq!(d["id"], 1);
        assert_eq!(d["debeziumSource"]["lsn"], 33841320);
        let t = one(json!({"source": source(), "op": "t", "ts_ms": 7})).unwrap();
        assert_eq!(
            t,
            json!({"debeziumOp": "t", "debeziumSource": source(), "debeziumTsMs": 7})
        );
        // Heartbeats and schema changes have no op: left as they are, for the change rule to skip.
        let heartbeat = one(json!({"ts_ms": 8})).unwrap();
        assert_eq!(heartbeat, json!({"ts_ms": 8}));
        assert!(METADATA.iter().all(|f| heartbeat.get(f).is_none()));
    }

    #[test]
    fn the_json_converter_wrapper_is_told_apart_per_message() {
        let schema = json!({"type": "struct", "fields": [
            {"type": "struct", "optional": true, "field": "after", "fields": [{"type": "int32", "field": "id"}]}
        ]});
        let wrapped = json!({"schema": schema, "payload": {"after": {"id": 2}, "op": "c", "source": source(), "ts_ms": 1}});
        assert_eq!(one(wrapped).unwrap()["id"], 2);
        // A row with columns named schema and payload, unwrapped: not a wrapper (it has other fields).
        let row = json!({"after": {"id": 3, "schema": "s", "payload": "p"}, "op": "c"});
        assert_eq!(one(row).unwrap()["payload"], "p");
        // A wrapper around null.
        assert_eq!(
            one(json!({"schema": null, "payload": null})).unwrap(),
            json!({})
        );
        assert_eq!(
            unwrap_key(Message::from(
                json!({"schema": {"type": "struct"}, "payload": {"id": 4}})
            )),
            json!({"id": 4})
        );
        assert_eq!(
            unwrap_key(Message::from(json!({"id": 4}))),
            json!({"id": 4})
        );
    }

    #[test]
    fn malformed_envelopes_are_refused_with_a_reason() {
        for (value, why) in [
            (json!({"op": "c", "after": null}), "op \"c\" without after"),
            (
                json!({"op": "d", "before": null}),
                "REPLICA IDENTITY NOTHING",
            ),
            (json!({"op": 1}), "op is a number, not a string"),
            (
                json!({"op": "u", "after": [1]}),
                "after is an array, not an object",
            ),
            (
                json!({"schema": {}, "payload": 3}),
                "the value is a number, not an object",
            ),
        ] {
            let err = one(value).unwrap_err();
            assert!(
                err.starts_with("Debezium envelope: ") && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn encodings_become_text_the_column_types_read() {
        let f = |ty: &str, name: &str, field: &str| json!({"type": ty, "name": name, "field": field, "optional": true});
        let mut dec = f("bytes", "org.apache.kafka.connect.data.Decimal", "price");
        dec["parameters"] = json!({"scale": "2", "connect.decimal.precision": "10"});
        let schema = json!({"type": "struct", "fields": [{"type": "struct", "field": "after", "fields": [
            f("int32", "io.debezium.time.Date", "born"),
            f("int32", "io.debezium.time.Time", "t_ms"),
            f("int64", "io.debezium.time.MicroTime", "t_us"),
            f("int64", "io.debezium.time.Timestamp", "ts"),
            f("int64", "io.debezium.time.MicroTimestamp", "ts_us"),
            f("int64", "io.debezium.time.NanoTimestamp", "ts_ns"),
            f("string", "io.debezium.time.ZonedTimestamp", "zoned"),
            dec,
            f("struct", "io.debezium.data.VariableScaleDecimal", "any"),
            f("bytes", "org.apache.kafka.connect.data.Decimal", "no_scale"),
        ]}]});
        let after = json!({
            "born": 19_783, "t_ms": 45_000_123, "t_us": 45_000_123_456_i64, "ts": 1_709_294_400_123_i64,
            "ts_us": 1_709_294_400_123_456_i64, "ts_ns": 1_709_294_400_123_456_789_i64,
            "zoned": "2024-03-01T12:00:00.5Z", "price": "AeJA", "any": {"scale": 3, "value": "/g=="}, "no_scale": null
        });
        let m = one(json!({"schema": schema, "payload": {"after": after, "op": "r"}})).unwrap();
        assert_eq!(m["born"], "2024-03-01");
        assert_eq!(m["t_ms"], "12:30:00.123");
        assert_eq!(m["t_us"], "12:30:00.123456");
        assert_eq!(m["ts"], "2024-03-01T12:00:00.123Z");
        assert_eq!(m["ts_us"], "2024-03-01T12:00:00.123456Z");
        assert_eq!(m["ts_ns"], "2024-03-01T12:00:00.123456789Z");
        assert_eq!(m["zoned"], "2024-03-01T12:00:00.5Z");
        // 0x01e240 = 123456, scale 2.
        assert_eq!(m["price"], "1234.56");
        // 0xfe = -2, scale 3.
        assert_eq!(m["any"], "-0.002");
        assert_eq!(m["no_scale"], Value::Null);
        // Without the schema, values are as Debezium wrote them.
        let plain = one(json!({"after": {"born": 19_783, "price": "AeJA"}, "op": "r"})).unwrap();
        assert_eq!(plain["born"], 19_783);
        assert_eq!(plain["price"], "AeJA");
        // A value that does not fit its encoding names the field, not the value.
        let bad =
            json!({"schema": schema, "payload": {"after": {"price": "not base64!"}, "op": "c"}});
        let err = one(bad).unwrap_err();
        assert_eq!(
            err,
            "Debezium envelope: field price (org.apache.kafka.connect.data.Decimal): not base64"
        );
    }
}
