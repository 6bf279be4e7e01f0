//! Avro values: Object Container Files (schema embedded, one message per record), the Confluent wire format
//! (magic byte 0, 4-byte big-endian schema id, datum) and bare datums with a configured schema.
//!
//! # Avro → JSON
//!
//! | Avro | JSON |
//! |---|---|
//! | null, boolean, string | the same |
//! | int, long | number |
//! | float, double | number; NaN and ±infinity (which JSON cannot hold) become `null` |
//! | bytes, fixed | standard base64 string |
//! | enum | its symbol |
//! | array, map | array, object |
//! | record | object, fields in schema order |
//! | union | the branch's value, unwrapped (`null` for the null branch) |
//! | date | `"YYYY-MM-DD"` |
//! | time-millis / time-micros | `"HH:MM:SS.mmm"` / `"HH:MM:SS.uuuuuu"` |
//! | timestamp-millis / -micros / -nanos, local-timestamp-* | RFC 3339 in UTC with ms / µs / ns (`Z`; local timestamps without offset) |
//! | uuid | its string |
//! | decimal (bytes or fixed), big-decimal | the exact decimal as a string, scale applied (`"12.34"`) |
//! | duration | `{"months": m, "days": d, "millis": ms}` |
//!
//! Every error is permanent for the record (dead-lettered) and never quotes the data.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value as Avro;
use apache_avro::{Reader, Schema};
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde_json::{Map, Value};

use super::DecodeError;

pub const OCF_MAGIC: &[u8; 4] = b"Obj\x01";

fn permanent(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Permanent(what.to_string())
}

/// An Object Container File: every record becomes a message. Returns the writer schema (it classifies the
/// fields for masking) with the messages.
pub fn decode_ocf(
    bytes: &[u8],
    reader: Option<&Schema>,
) -> Result<(Arc<Schema>, Vec<Value>), DecodeError> {
    let file = Reader::builder(bytes)
        .maybe_reader_schema(reader)
        .build()
        .map_err(|e| permanent(format!("value is not an Avro container file: {e}")))?;
    let writer = Arc::new(file.writer_schema().clone());
    let schema = reader.unwrap_or(&writer);
    let names = names(schema)?;
    let mut messages = Vec::new();
    for (i, value) in file.enumerate() {
        let value =
            value.map_err(|e| permanent(format!("Avro container file, record {}: {e}", i + 1)))?;
        messages.push(to_json(&value, schema, &names)?);
    }
    Ok((writer, messages))
}

/// The Confluent wire format's header: schema id and datum.
pub fn split_confluent(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, datum @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => None,
    }
}

/// A bare datum written with `writer`, resolved to `reader` when given (schema evolution). The datum must be
/// consumed exactly: trailing bytes mean the schema does not fit.
pub fn decode_datum(
    bytes: &[u8],
    writer: &Schema,
    reader: Option<&Schema>,
) -> Result<Value, DecodeError> {
    let datum_reader = GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .map_err(|e| permanent(format!("Avro schema: {e}")))?;
    let mut input = Exact {
        rest: bytes,
        short: false,
    };
    let value = datum_reader.read_value(&mut input).map_err(|e| {
        permanent(format!(
            "Avro datum does not match its schema ({} bytes): {e}",
            bytes.len()
        ))
    })?;
    if input.short {
        // apache-avro 0.22 reads a string or bytes field cut short without complaint.
        return Err(permanent(format!(
            "Avro datum is truncated ({} bytes)",
            bytes.len()
        )));
    }
    if !input.rest.is_empty() {
        return Err(permanent(format!(
            "Avro datum has {} bytes left over after decoding {} bytes: it does not match its schema",
            input.rest.len(),
            bytes.len() - input.rest.len()
        )));
    }
    let schema = reader.unwrap_or(writer);
    to_json(&value, schema, &names(schema)?)
}

/// A reader that notices when the decoder asks for more bytes than the datum has.
struct Exact<'a> {
    rest: &'a [u8],
    short: bool,
}

impl std::io::Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.short = true;
        }
        self.rest.read(buf)
    }
}

/// Named types of a schema, for resolving references while converting.
pub(crate) fn names(schema: &Schema) -> Result<HashMap<Name, Schema>, DecodeError> {
    let resolved =
        ResolvedSchema::try_from(schema).map_err(|e| permanent(format!("Avro schema: {e}")))?;
    Ok(resolved
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect())
}

/// Converts a decoded value to JSON as the module doc's table says.
pub fn to_json(
    value: &Avro,
    schema: &Schema,
    names: &HashMap<Name, Schema>,
) -> Result<Value, DecodeError> {
    let schema = match schema {
        Schema::Ref { name } => names
            .get(name)
            .ok_or_else(|| permanent(format!("Avro schema refers to unknown type {name}")))?,
        s => s,
    };
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    Ok(match (value, schema) {
        (Avro::Null, _) => Value::Null,
        (Avro::Boolean(b), _) => Value::Bool(*b),
        (Avro::Int(i), _) => Value::from(*i),
        (Avro::Long(i), _) => Value::from(*i),
        (Avro::Float(f), _) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        (Avro::Double(f), _) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        (Avro::String(s), _) => Value::String(s.clone()),
        (Avro::Enum(_, symbol), _) => Value::String(symbol.clone()),
        (Avro::Union(i, inner), Schema::Union(u)) => {
            let branch = usize::try_from(*i).ok().and_then(|i| u.variants().get(i));
            let branch = branch
                .ok_or_else(|| permanent(format!("Avro union branch {i} is not in the schema")))?;
            to_json(inner, branch, names)?
        }
        (Avro::Union(_, inner), s) => to_json(inner, s, names)?,
        (Avro::Array(items), Schema::Array(a)) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, &a.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Avro::Map(entries), Schema::Map(m)) => {
            // Avro maps are unordered; sort the keys so a message always looks the same.
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), to_json(&entries[k], &m.types, names)?);
            }
            Value::Object(out)
        }
        (Avro::Record(fields), Schema::Record(r)) => {
            let mut out = Map::new();
            for (name, v) in fields {
                let field = r.fields.iter().find(|f| &f.name == name);
                let field = field.ok_or_else(|| {
                    permanent(format!("Avro record {} has no field {name}", r.name))
                })?;
                out.insert(name.clone(), to_json(v, &field.schema, names)?);
            }
            Value::Object(out)
        }
        (Avro::Bytes(b), _) => b64(b),
        (Avro::Fixed(_, b), _) => b64(b),
        (Avro::Date(days), _) => {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| {
                    epoch.checked_add_signed(chrono::Duration::days(i64::from(*days)))
                })
                .ok_or_else(|| permanent("Avro date out of range"))?;
            Value::String(date.format("%Y-%m-%d").to_string())
        }
        (Avro::TimeMillis(ms), _) => Value::String(time(i64::from(*ms) * 1_000, 3)?),
        (Avro::TimeMicros(us), _) => Value::String(time(*us, 6)?),
        (Avro::TimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, true)?),
        (Avro::TimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, true)?),
        (Avro::TimestampNanos(v), _) => Value::String(timestamp(*v, 1, true)?),
        (Avro::LocalTimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, false)?),
        (Avro::LocalTimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, false)?),
        (Avro::LocalTimestampNanos(v), _) => Value::String(timestamp(*v, 1, false)?),
        (Avro::Uuid(u), _) => Value::String(u.to_string()),
        (Avro::Decimal(d), Schema::Decimal(ds)) => {
            let unscaled: num_bigint::BigInt = d.clone().into();
            Value::String(scaled(&unscaled.to_string(), ds.scale))
        }
        (Avro::Decimal(_), _) => return Err(permanent("Avro decimal without a decimal schema")),
        (Avro::BigDecimal(d), _) => Value::String(d.to_string()),
        (Avro::Duration(d), _) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        (Avro::Array(_) | Avro::Map(_) | Avro::Record(_), _) => {
            return Err(permanent("Avro value does not match its schema"));
        }
    })
}

/// `"-12345"` at scale 2 → `"-123.45"`.
fn scaled(digits: &str, scale: usize) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn time(micros: i64, digits: usize) -> Result<String, DecodeError> {
    let secs = u32::try_from(micros.div_euclid(1_000_000))
        .map_err(|_| permanent("Avro time out of range"))?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000)
        .map_err(|_| permanent("Avro time out of range"))?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .ok_or_else(|| permanent("Avro time out of range"))?;
    Ok(if digits == 3 {
        t.format("%H:%M:%S%.3f")
    } else {
        t.format("%H:%M:%S%.6f")
    }
    .to_string())
}

/// `value` in units of `nanos_per_unit` nanoseconds since the epoch.
fn timestamp(value: i64, nanos_per_unit: i64, utc: bool) -> Result<String, DecodeError> {
    let nanos = i128::from(value) * i128::from(nanos_per_unit);
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let t: DateTime<Utc> = DateTime::from_timestamp(secs, sub)
        .ok_or_else(|| permanent("Avro timestamp out of range"))?;
    let format = match nanos_per_unit {
        1_000_000 => "%Y-%m-%dT%H:%M:%S%.3f",
        1_000 => "%Y-%m-%dT%H:%M:%S%.6f",
        _ => "%Y-%m-%dT%H:%M:%S%.9f",
    };
    let text = t.format(format).to_string();
    Ok(if utc { format!("{text}Z") } else { text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Writer;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    fn to_avro_datum(s: &Schema, v: Avro) -> Result<Vec<u8>, apache_avro::Error> {
        GenericDatumWriter::builder(s)
            .build()?
            .write_value_to_vec(v)
    }

    fn schema(v: Value) -> Schema {
        Schema::parse(&v).unwrap()
    }

    fn planet_schema() -> Schema {
        schema(json!({"type": "record", "name": "Planet", "fields": [
            {"name": "planetUuid", "type": "string"},
            {"name": "planetName", "type": "string"},
            {"name": "moons", "type": "int"}]}))
    }

    fn planet(i: i32) -> Avro {
        Avro::Record(vec![
            ("planetUuid".into(), Avro::String(format!("p{i}"))),
            ("planetName".into(), Avro::String(format!("Planet {i}"))),
            ("moons".into(), Avro::Int(i)),
        ])
    }

    fn ocf(s: &Schema, values: impl IntoIterator<Item = Avro>) -> Vec<u8> {
        let mut w = Writer::new(s, Vec::new()).unwrap();
        for v in values {
            w.append_value(v).unwrap();
        }
        w.into_inner().unwrap()
    }

    #[test]
    fn ocf_with_one_and_many_records() {
        let s = planet_schema();
        let (writer, one) = decode_ocf(&ocf(&s, [planet(1)]), None).unwrap();
        assert_eq!(
            one,
            vec![json!({"planetUuid": "p1", "planetName": "Planet 1", "moons": 1})]
        );
        assert_eq!(*writer, s);
        let (_, many) = decode_ocf(&ocf(&s, (0..50).map(planet)), None).unwrap();
        assert_eq!(many.len(), 50);
        assert_eq!(many[49]["planetUuid"], "p49");
        assert!(ocf(&s, [planet(1)]).starts_with(OCF_MAGIC));
    }

    #[test]
    fn ocf_with_a_corrupt_sync_marker_is_permanent() {
        let s = planet_schema();
        let mut bytes = ocf(&s, (0..3).map(planet));
        let n = bytes.len();
        bytes[n - 3] ^= 0xff; // the last 16 bytes are the block's sync marker
        let err = decode_ocf(&bytes, None).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("Avro container file")),
            "{err:?}"
        );
        assert!(decode_ocf(b"Obj\x01garbage", None).is_err());
    }

    #[test]
    fn confluent_framing_and_raw_datums() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        let mut framed = vec![0, 0, 0, 1, 2];
        framed.extend_from_slice(&datum);
        let (id, body) = split_confluent(&framed).unwrap();
        assert_eq!(id, 258);
        assert_eq!(decode_datum(body, &s, None).unwrap()["moons"], 7);
        assert_eq!(split_confluent(b"{\"a\":1}"), None);
        assert_eq!(split_confluent(&[0, 1, 2]), None);
    }

    #[test]
    fn truncated_and_trailing_datums_are_permanent() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        for cut in 1..datum.len() {
            let err = decode_datum(&datum[..cut], &s, None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        // A datum that ends inside a string: the decoder alone would accept it.
        let t = schema(
            json!({"type": "record", "name": "T", "fields": [{"name": "s", "type": "string"}]}),
        );
        let one = Avro::Record(vec![("s".into(), Avro::String("Ophiuchi".into()))]);
        let short = to_avro_datum(&t, one).unwrap();
        for cut in 1..short.len() {
            let err = decode_datum(&short[..cut], &t, None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        assert!(decode_datum(&short, &t, None).is_ok());
        let mut long = datum.clone();
        long.push(0);
        let err = decode_datum(&long, &s, None).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("left over")),
            "{err:?}"
        );
    }

    #[test]
    fn a_reader_schema_resolves_older_data() {
        let v1 = planet_schema();
        let v2 = schema(json!({"type": "record", "name": "Planet", "fields": [
            {"name": "planetUuid", "type": "string"},
            {"name": "planetName", "type": "string"},
            {"name": "habitable", "type": "boolean", "default": false}]}));
        let datum = to_avro_datum(&v1, planet(3)).unwrap();
        assert_eq!(
            decode_datum(&datum, &v1, Some(&v2)).unwrap(),
            json!({"planetUuid": "p3", "planetName": "Planet 3", "habitable": false})
        );
        let (_, msgs) = decode_ocf(&ocf(&v1, [planet(3)]), Some(&v2)).unwrap();
        assert_eq!(msgs[0]["habitable"], false);
    }

    #[test]
    fn every_avro_type_maps_to_json_as_documented() {
        let s = schema(json!({"type": "record", "name": "All", "fields": [
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "nan", "type": "double"},
            {"name": "bytes", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "fixed", "type": {"type": "fixed", "name": "F2", "size": 2}},
            {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
            {"name": "arr", "type": {"type": "array", "items": "int"}},
            {"name": "map", "type": {"type": "map", "values": "string"}},
            {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "ref", "type": "Inner"},
            {"name": "optNull", "type": ["null", "string"]},
            {"name": "optSome", "type": ["null", "string"]},
            {"name": "unionRec", "type": ["null", "Inner"]},
            {"name": "date", "type": {"type": "int", "logicalType": "date"}},
            {"name": "tms", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "tus", "type": {"type": "long", "logicalType": "time-micros"}},
            {"name": "tsms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "tsus", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "decBytes", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "decFixed", "type": {"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal",
                "precision": 18, "scale": 4}}
        ]}));
        let uuid = apache_avro::Uuid::parse_str("6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b").unwrap();
        let value = Avro::Record(vec![
            ("n".into(), Avro::Null),
            ("b".into(), Avro::Boolean(true)),
            ("i".into(), Avro::Int(-7)),
            ("l".into(), Avro::Long(1 << 40)),
            ("f".into(), Avro::Float(1.5)),
            ("d".into(), Avro::Double(-0.25)),
            ("nan".into(), Avro::Double(f64::NAN)),
            ("bytes".into(), Avro::Bytes(vec![1, 2, 255])),
            ("s".into(), Avro::String("text".into())),
            ("fixed".into(), Avro::Fixed(2, vec![0xab, 0xcd])),
            ("e".into(), Avro::Enum(1, "GREEN".into())),
            ("arr".into(), Avro::Array(vec![Avro::Int(1), Avro::Int(2)])),
            (
                "map".into(),
                Avro::Map(
                    [
                        ("b".to_string(), Avro::String("2".into())),
                        ("a".to_string(), Avro::String("1".into())),
                    ]
                    .into(),
                ),
            ),
            (
                "nested".into(),
                Avro::Record(vec![("x".into(), Avro::Int(1))]),
            ),
            ("ref".into(), Avro::Record(vec![("x".into(), Avro::Int(2))])),
            ("optNull".into(), Avro::Union(0, Box::new(Avro::Null))),
            (
                "optSome".into(),
                Avro::Union(1, Box::new(Avro::String("here".into()))),
            ),
            (
                "unionRec".into(),
                Avro::Union(1, Box::new(Avro::Record(vec![("x".into(), Avro::Int(3))]))),
            ),
            ("date".into(), Avro::Date(20416)),
            ("tms".into(), Avro::TimeMillis(45_296_789)),
            ("tus".into(), Avro::TimeMicros(45_296_789_012)),
            ("tsms".into(), Avro::TimestampMillis(1_764_000_000_123)),
            ("tsus".into(), Avro::TimestampMicros(1_764_000_000_123_456)),
            ("uuid".into(), Avro::Uuid(uuid)),
            (
                "decBytes".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![0xff, 0xcf, 0xc7])),
            ), // -12345
            (
                "decFixed".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![
                    0, 0, 0, 0, 0, 0, 0x30, 0x39,
                ])),
            ), // 12345
        ]);
        let datum = to_avro_datum(&s, value).unwrap();
        let json = decode_datum(&datum, &s, None).unwrap();
        assert_eq!(
            json,
            json!({
                "n": null, "b": true, "i": -7, "l": 1_099_511_627_776_i64, "f": 1.5, "d": -0.25, "nan": null,
                "bytes": "AQL/", "s": "text", "fixed": "q80=", "e": "GREEN", "arr": [1, 2],
                "map": {"a": "1", "b": "2"}, "nested": {"x": 1}, "ref": {"x": 2},
                "optNull": null, "optSome": "here", "unionRec": {"x": 3},
                "date": "2025-11-24", "tms": "12:34:56.789", "tus": "12:34:56.789012",
                "tsms": "2025-11-24T16:00:00.123Z", "tsus": "2025-11-24T16:00:00.123456Z",
                "uuid": "6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b",
                "decBytes": "-123.45", "decFixed": "1.2345"
            })
        );
        // Keys in schema order.
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..3],
            [&"n".to_string(), &"b".to_string(), &"i".to_string()]
        );
    }

    #[test]
    fn decimal_scaling() {
        assert_eq!(scaled("5", 3), "0.005");
        assert_eq!(scaled("-5", 1), "-0.5");
        assert_eq!(scaled("12345", 0), "12345");
    }
}
