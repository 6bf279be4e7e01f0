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
//!
//! # How datums are read
//!
//! Datums never reach apache-avro's decoder unchecked: [`AvroSchema`] compiles a writer schema once (named
//! types resolved to indices) and decodes datum bytes straight to JSON in one pass, with bounded nesting
//! ([`MAX_DEPTH`]), every length checked against the bytes left before anything is allocated, zero-byte array
//! items capped ([`MAX_EMPTY_ITEMS`]) and exact consumption. Only with a reader schema (schema evolution) does a
//! datum, once it has passed that check, go through apache-avro's resolution. Container files are framed here
//! too: sync markers, exact block sizes and record counts, decompressed blocks capped at [`MAX_BLOCK_BYTES`].
//!
//! A container file's data is the producer's to choose, schema included: a deflated block of 60 KB inflates to
//! 60 MiB, and 6 bytes of zeros are a whole record of many schemas. So the container files of one batch draw
//! on one [`Budget`]: the bytes they may inflate in total, and the (estimated) memory of the messages they may
//! decode to in total. A file past either is refused, its record dead-lettered with a reason naming the limit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{
    DecimalSchema, InnerDecimalSchema, Name, NamespaceRef, ResolvedSchema, UuidSchema,
};
use apache_avro::types::Value as Avro;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde_json::{Map, Value};

use super::DecodeError;
use crate::message::{Message, Object};

/// The first bytes of an Avro Object Container File.
pub const OCF_MAGIC: &[u8; 4] = b"Obj\x01";

/// How deep records, arrays and maps may nest in one value (unions, which cannot hold a union directly, do
/// not count: they at most double the recursion).
pub const MAX_DEPTH: usize = 64;
/// Array items that take no bytes at all (null, an empty record, fixed(0)) a datum or container file may hold.
pub const MAX_EMPTY_ITEMS: u64 = 65_536;
/// How much work apache-avro's schema resolution may do for one datum: the sum, over the datum's values, of
/// the product of the branch counts of the unions around them. apache-avro tries a union's value against its
/// branches before resolving it, which is exponential in how deeply unions nest.
pub const MAX_RESOLVE_COST: u64 = 1 << 23;
/// The largest container-file block, once decompressed.
pub const MAX_BLOCK_BYTES: usize = 64 << 20;
/// What the compressed values of one batch may inflate to in total, unless `[codec] max_inflated_mib` says
/// otherwise or the function's memory gives less ([`super::memory::derived`]). Lambda hands a function at
/// most 6 MB; honest Avro does not deflate 40 to 1.
pub const DEFAULT_MAX_INFLATED_MIB: u64 = 256;
/// The estimated memory of what one batch's values become (messages, and rows with their copies) in total,
/// unless `[codec] max_decoded_mib` says otherwise or the function's memory gives less
/// ([`super::memory::derived`]).
pub const DEFAULT_MAX_DECODED_MIB: u64 = 512;

mod budget;
mod datum;
mod json;
mod ocf;
mod schema;

pub use budget::Budget;
use datum::{Bad, Cursor, FIELD_SLOT};
pub use json::to_json;
use json::{scaled, time, timestamp};
pub use ocf::decode_ocf;
pub(crate) use ocf::inflate_zlib;
pub use schema::AvroSchema;
use schema::{Node, NodeId};

/// MiB → bytes, saturating.
pub(crate) fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

fn permanent(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Permanent(what.to_string())
}

/// A bare datum written with `writer`, resolved to `reader` when given (schema evolution). The datum must be
/// consumed exactly: trailing bytes mean the schema does not fit.
pub fn decode_datum<'a>(
    bytes: &'a [u8],
    writer: &'a AvroSchema,
    reader: Option<&AvroSchema>,
) -> Result<Message<'a>, DecodeError> {
    let mut c = Cursor::new(bytes);
    let value = writer
        .value(writer.root, &mut c, 0, 1)
        .map_err(|e| e.to_error("Avro datum", bytes.len()))?;
    if c.left() > 0 {
        return Err(permanent(format!(
            "Avro datum has {} bytes left over after decoding {} bytes: it does not match its schema",
            c.left(),
            c.pos
        )));
    }
    match reader {
        None => Ok(value),
        Some(reader) => resolve(bytes, c.resolve_cost, writer, reader).map(Message::from),
    }
}

/// Schema evolution through apache-avro, for a datum that already decoded under `writer`.
fn resolve(
    datum: &[u8],
    cost: u64,
    writer: &AvroSchema,
    reader: &AvroSchema,
) -> Result<Value, DecodeError> {
    if cost > MAX_RESOLVE_COST {
        return Err(permanent(format!(
            "Avro datum ({} bytes) nests unions too deeply to be resolved to the reader schema",
            datum.len()
        )));
    }
    let datum_reader = GenericDatumReader::builder(writer.schema())
        .reader_schema(reader.schema())
        .build()
        .map_err(|e| permanent(format!("Avro reader schema: {e}")))?;
    let mut rest = datum;
    // apache-avro's errors can quote values: say only that the datum does not resolve.
    let value = datum_reader.read_value(&mut rest).map_err(|_| {
        permanent(format!(
            "Avro datum ({} bytes) cannot be resolved to the reader schema",
            datum.len()
        ))
    })?;
    if !rest.is_empty() {
        return Err(permanent(format!(
            "Avro datum ({} bytes): the reader schema left {} bytes unread",
            datum.len(),
            rest.len()
        )));
    }
    to_json(&value, reader.schema(), reader.names()?)
}

/// The Confluent wire format's header: schema id and datum.
pub fn split_confluent(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, datum @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => None,
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

    fn c(s: &Schema) -> AvroSchema {
        AvroSchema::new(Arc::new(s.clone())).unwrap()
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
        let (writer, one) =
            decode_ocf(&ocf(&s, [planet(1)]), None, &mut Budget::default_limits()).unwrap();
        assert_eq!(
            one,
            vec![json!({"planetUuid": "p1", "planetName": "Planet 1", "moons": 1})]
        );
        assert_eq!(*writer, s);
        let (_, many) = decode_ocf(
            &ocf(&s, (0..50).map(planet)),
            None,
            &mut Budget::default_limits(),
        )
        .unwrap();
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
        let err = decode_ocf(&bytes, None, &mut Budget::default_limits()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("Avro container file")),
            "{err:?}"
        );
        assert!(decode_ocf(b"Obj\x01garbage", None, &mut Budget::default_limits()).is_err());
    }

    #[test]
    fn confluent_framing_and_raw_datums() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        let mut framed = vec![0, 0, 0, 1, 2];
        framed.extend_from_slice(&datum);
        let (id, body) = split_confluent(&framed).unwrap();
        assert_eq!(id, 258);
        assert_eq!(decode_datum(body, &c(&s), None).unwrap()["moons"], 7);
        assert_eq!(split_confluent(b"{\"a\":1}"), None);
        assert_eq!(split_confluent(&[0, 1, 2]), None);
    }

    #[test]
    fn truncated_and_trailing_datums_are_permanent() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        for cut in 1..datum.len() {
            let err = decode_datum(&datum[..cut], &c(&s), None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        // A datum that ends inside a string: the decoder alone would accept it.
        let t = schema(
            json!({"type": "record", "name": "T", "fields": [{"name": "s", "type": "string"}]}),
        );
        let one = Avro::Record(vec![("s".into(), Avro::String("Ophiuchi".into()))]);
        let short = to_avro_datum(&t, one).unwrap();
        for cut in 1..short.len() {
            let err = decode_datum(&short[..cut], &c(&t), None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        assert!(decode_datum(&short, &c(&t), None).is_ok());
        let mut long = datum.clone();
        long.push(0);
        let err = decode_datum(&long, &c(&s), None).unwrap_err();
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
            decode_datum(&datum, &c(&v1), Some(&c(&v2))).unwrap(),
            json!({"planetUuid": "p3", "planetName": "Planet 3", "habitable": false})
        );
        let (_, msgs) = decode_ocf(
            &ocf(&v1, [planet(3)]),
            Some(&c(&v2)),
            &mut Budget::default_limits(),
        )
        .unwrap();
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
        let value = |dec_bytes: Vec<u8>| {
            Avro::Record(vec![
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
                    Avro::Decimal(apache_avro::Decimal::from(dec_bytes)),
                ), // -12345
                (
                    "decFixed".into(),
                    Avro::Decimal(apache_avro::Decimal::from(vec![
                        0, 0, 0, 0, 0, 0, 0x30, 0x39,
                    ])),
                ), // 12345
            ])
        };
        let datum = to_avro_datum(&s, value(vec![0xff, 0xcf, 0xc7])).unwrap();
        let compiled = c(&s);
        let json = decode_datum(&datum, &compiled, None).unwrap();
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
        let keys: Vec<&str> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["n", "b", "i"]);
        // The same through apache-avro's resolution (reader schema = writer schema), which refuses a bytes
        // decimal in fewer bytes than its precision needs: -12345 in 6 bytes instead of 3.
        let padded = to_avro_datum(&s, value(vec![0xff, 0xff, 0xff, 0xff, 0xcf, 0xc7])).unwrap();
        assert_eq!(decode_datum(&padded, &c(&s), None).unwrap(), json);
        assert_eq!(decode_datum(&padded, &c(&s), Some(&c(&s))).unwrap(), json);
    }

    /// Logical types the table lists beyond the test above: the one-pass decoder and apache-avro's reading
    /// (reader schema = writer schema) give the same JSON.
    #[test]
    fn more_logical_types_match_apache_avro() {
        let s = schema(
            json!({"type": "record", "name": "More", "namespace": "ns", "fields": [
                {"name": "tsns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
                {"name": "ltms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
                {"name": "ltus", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
                {"name": "ltns", "type": {"type": "long", "logicalType": "local-timestamp-nanos"}},
                {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
                {"name": "big", "type": {"type": "bytes", "logicalType": "big-decimal"}},
                {"name": "uuidFixed", "type": {"type": "fixed", "name": "U16", "size": 16, "logicalType": "uuid"}},
                {"name": "wide", "type": {"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 3}},
                {"name": "inf", "type": "float"},
                {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "Dur"}}},
                {"name": "again", "type": ["null", "ns.Dur"]}
            ]}),
        );
        let uuid = apache_avro::Uuid::parse_str("6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b").unwrap();
        let dur = || {
            Avro::Duration(apache_avro::Duration::new(
                apache_avro::Months::new(14),
                apache_avro::Days::new(3),
                apache_avro::Millis::new(5_000),
            ))
        };
        let mut wide = vec![0x80];
        wide.extend([0x11; 19]); // 20 bytes: a negative number beyond i128
        let value = Avro::Record(vec![
            (
                "tsns".into(),
                Avro::TimestampNanos(1_764_000_000_123_456_789),
            ),
            ("ltms".into(), Avro::LocalTimestampMillis(-1)),
            (
                "ltus".into(),
                Avro::LocalTimestampMicros(1_764_000_000_123_456),
            ),
            ("ltns".into(), Avro::LocalTimestampNanos(5)),
            ("dur".into(), dur()),
            (
                "big".into(),
                Avro::BigDecimal(apache_avro::BigDecimal::new((-12345).into(), 3)),
            ),
            ("uuidFixed".into(), Avro::Uuid(uuid)),
            (
                "wide".into(),
                Avro::Decimal(apache_avro::Decimal::from(wide)),
            ),
            ("inf".into(), Avro::Float(f32::INFINITY)),
            (
                "m".into(),
                Avro::Map([("k".to_string(), Avro::Array(vec![dur(), dur()]))].into()),
            ),
            ("again".into(), Avro::Union(1, Box::new(dur()))),
        ]);
        let datum = to_avro_datum(&s, value).unwrap();
        let compiled = c(&s);
        let ours = decode_datum(&datum, &compiled, None).unwrap();
        assert_eq!(ours, decode_datum(&datum, &c(&s), Some(&c(&s))).unwrap());
        assert_eq!(ours["tsns"], "2025-11-24T16:00:00.123456789Z");
        assert_eq!(ours["ltms"], "1969-12-31T23:59:59.999");
        assert_eq!(
            ours["dur"],
            json!({"months": 14, "days": 3, "millis": 5000})
        );
        assert_eq!(ours["big"], "-12.345");
        assert_eq!(ours["uuidFixed"], "6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b");
        assert_eq!(ours["inf"], Value::Null);
        assert!(ours["wide"].as_str().unwrap().starts_with('-'));
    }

    /// Zigzag varint, as Avro writes ints and longs.
    fn zz(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
    }

    fn permanent_containing<T: std::fmt::Debug>(
        result: Result<T, DecodeError>,
        text: &str,
    ) -> String {
        match result {
            Err(DecodeError::Permanent(m)) if m.contains(text) => m,
            other => panic!("expected a permanent error with {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn deep_recursion_is_permanent_not_a_crash() {
        let s = c(&schema(
            json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]}]}),
        ));
        // 100 000 nodes: union branch 1 (the next node) each, then branch 0 (null).
        let mut deep = vec![2u8; 100_000];
        deep.push(0);
        let m = permanent_containing(decode_datum(&deep, &s, None), "nests deeper than 64 levels");
        assert!(m.contains("field next"), "{m}");
        // apache-avro never sees it when a reader schema is configured either.
        permanent_containing(
            decode_datum(&deep, &s, Some(&s)),
            "nests deeper than 64 levels",
        );
        // 64 levels of records are fine.
        let mut ok = vec![2u8; 63];
        ok.push(0);
        let v = decode_datum(&ok, &s, None).unwrap();
        assert!(v["next"]["next"].is_object());
        // apache-avro's resolution takes time exponential in the nesting of unions: 63 levels would never
        // end. It gets what it resolves quickly.
        let start = std::time::Instant::now();
        permanent_containing(decode_datum(&ok, &s, Some(&s)), "nests unions too deeply");
        let mut resolvable = vec![2u8; 8];
        resolvable.push(0);
        let v = decode_datum(&resolvable, &s, Some(&s)).unwrap();
        assert_eq!(v, decode_datum(&resolvable, &s, None).unwrap());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let mut over = vec![2u8; 64];
        over.push(0);
        permanent_containing(decode_datum(&over, &s, None), "nests deeper");
        // Arrays nest too.
        let arrays = c(&schema(json!({"type": "record", "name": "A", "fields": [
            {"name": "a", "type": {"type": "array", "items": "A"}}]})));
        let mut nested = Vec::new();
        for _ in 0..100_000 {
            nested.extend(zz(1));
        }
        permanent_containing(decode_datum(&nested, &arrays, None), "nests deeper");
    }

    #[test]
    fn huge_lengths_are_permanent_before_any_allocation() {
        let start = std::time::Instant::now();
        for t in ["string", "bytes"] {
            let s = c(&schema(json!({"type": "record", "name": "R", "fields": [
                {"name": "x", "type": t}]})));
            let mut datum = zz(1 << 30); // 1 GiB
            datum.extend_from_slice(b"abc");
            let m = permanent_containing(decode_datum(&datum, &s, None), "truncated");
            assert!(m.contains("1073741824 bytes, 3 left"), "{m}");
            permanent_containing(decode_datum(&datum, &s, Some(&s)), "truncated");
            permanent_containing(decode_datum(&zz(-5), &s, None), "negative length");
        }
        // 2^40 nulls in one array block: items that take no bytes are capped.
        let nulls = c(&schema(json!({"type": "array", "items": "null"})));
        let mut datum = zz(1 << 40);
        datum.push(0);
        permanent_containing(decode_datum(&datum, &nulls, None), "more than 65536");
        permanent_containing(
            decode_datum(&datum, &nulls, Some(&nulls)),
            "more than 65536",
        );
        // … and the cap holds across blocks; 65 536 of them are fine.
        let mut blocks = [zz(40_000), zz(40_000), vec![0]].concat();
        permanent_containing(decode_datum(&blocks, &nulls, None), "more than 65536");
        blocks = [zz(65_536), vec![0]].concat();
        assert_eq!(
            decode_datum(&blocks, &nulls, None)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            65_536
        );
        // Empty records take no bytes either.
        let empty = c(&schema(json!({"type": "array", "items":
            {"type": "record", "name": "E", "fields": [{"name": "n", "type": "null"}]}})));
        permanent_containing(decode_datum(&datum, &empty, None), "more than 65536");
        // Items that take bytes cannot outnumber the bytes left.
        let ints = c(&schema(json!({"type": "array", "items": "int"})));
        permanent_containing(decode_datum(&datum, &ints, None), "truncated");
        // A map of nulls: every key takes a byte.
        let map = c(&schema(json!({"type": "map", "values": "null"})));
        let m = permanent_containing(decode_datum(&datum, &map, None), "truncated");
        assert!(m.contains("map block of 1099511627776 items"), "{m}");
        permanent_containing(decode_datum(&datum, &map, Some(&map)), "truncated");
        // A negative block count carries a byte size, which must fit too.
        let sized = [zz(-(1 << 40)), zz(1 << 40), vec![0]].concat();
        permanent_containing(decode_datum(&sized, &map, None), "truncated");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn malformed_numbers_strings_unions_and_enums_are_permanent() {
        let long = c(&Schema::Long);
        let m = permanent_containing(
            decode_datum(&[0xff; 11], &long, None),
            "longer than 10 bytes",
        );
        assert!(m.contains("at byte 0"), "{m}");
        permanent_containing(
            decode_datum(&[0xff; 10], &long, None),
            "longer than 10 bytes",
        );
        // Ten bytes hold the whole range.
        let min = [vec![0xff; 9], vec![0x01]].concat();
        assert_eq!(decode_datum(&min, &long, None).unwrap(), json!(i64::MIN));
        permanent_containing(decode_datum(&zz(1 << 31), &c(&Schema::Int), None), "32-bit");
        permanent_containing(decode_datum(&[2], &c(&Schema::Boolean), None), "boolean");

        let text = c(&schema(json!({"type": "record", "name": "T", "fields": [
            {"name": "name", "type": "string"}]})));
        let m = permanent_containing(
            decode_datum(&[4, b'a', 0xff], &text, None),
            "not valid UTF-8",
        );
        assert!(m.contains("field name (record T)"), "{m}");
        // Errors never quote the data.
        let secret = [zz(8), b"Ophiuchi".to_vec()].concat();
        for cut in 1..secret.len() {
            let m = permanent_containing(decode_datum(&secret[..cut], &text, None), "truncated");
            assert!(!m.contains("Oph"), "{m}");
        }

        let union = c(&schema(json!(["null", "string"])));
        permanent_containing(decode_datum(&zz(2), &union, None), "union branch 2");
        permanent_containing(decode_datum(&zz(-1), &union, None), "union branch -1");
        let color = c(&schema(
            json!({"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}),
        ));
        assert_eq!(decode_datum(&zz(1), &color, None).unwrap(), "GREEN");
        permanent_containing(
            decode_datum(&zz(2), &color, None),
            "enum Color has no symbol number 2",
        );
        permanent_containing(decode_datum(&zz(-3), &color, None), "no symbol number -3");
        let uuid = c(&schema(json!({"type": "string", "logicalType": "uuid"})));
        permanent_containing(
            decode_datum(&[6, b'a', b'b', b'c'], &uuid, None),
            "not a UUID",
        );
    }

    /// A container file built by hand: header with `codec`, then `(record count, data)` blocks.
    fn hand_ocf(s: &Schema, codec: &str, blocks: &[(i64, Vec<u8>)], sync: [u8; 16]) -> Vec<u8> {
        let text = s.canonical_form();
        let mut out = OCF_MAGIC.to_vec();
        out.extend(zz(2));
        for (k, v) in [
            ("avro.schema", text.as_bytes()),
            ("avro.codec", codec.as_bytes()),
        ] {
            out.extend(zz(k.len() as i64));
            out.extend_from_slice(k.as_bytes());
            out.extend(zz(v.len() as i64));
            out.extend_from_slice(v);
        }
        out.push(0);
        out.extend_from_slice(&sync);
        for (count, data) in blocks {
            out.extend(zz(*count));
            out.extend(zz(data.len() as i64));
            out.extend_from_slice(data);
            out.extend_from_slice(&sync);
        }
        out
    }

    fn ocf_err(bytes: &[u8], text: &str) -> String {
        match decode_ocf(bytes, None, &mut Budget::default_limits()) {
            Err(DecodeError::Permanent(m)) if m.contains(text) => m,
            other => panic!("expected a permanent error with {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn container_blocks_must_hold_exactly_their_records() {
        let s = planet_schema();
        let one = to_avro_datum(&s, planet(1)).unwrap();
        let two = [one.clone(), to_avro_datum(&s, planet(2)).unwrap()].concat();
        let sync = [7; 16];
        let good = hand_ocf(&s, "null", &[(2, two.clone()), (1, one.clone())], sync);
        assert_eq!(
            decode_ocf(&good, None, &mut Budget::default_limits())
                .unwrap()
                .1
                .len(),
            3
        );
        // Leftover bytes after the declared records.
        let mut extra = two.clone();
        extra.push(0);
        let m = ocf_err(
            &hand_ocf(&s, "null", &[(2, extra)], sync),
            "1 bytes left over",
        );
        assert!(m.starts_with("Avro container file, block 1"), "{m}");
        // More records declared than the block holds.
        ocf_err(
            &hand_ocf(&s, "null", &[(3, two.clone())], sync),
            "record 3 is truncated",
        );
        ocf_err(
            &hand_ocf(&s, "null", &[(1 << 40, two.clone())], sync),
            "declares 1099511627776 records",
        );
        // A block whose sync marker is not the header's.
        let mut wrong = hand_ocf(&s, "null", &[(2, two.clone())], sync);
        let n = wrong.len();
        wrong[n - 1] ^= 1;
        ocf_err(&wrong, "sync marker differs");
        // A block shorter than its declared size, and a header cut short.
        ocf_err(&good[..good.len() - 20], "truncated");
        ocf_err(&good[..30], "header is truncated");
        // Codecs: deflate is read (through apache-avro), others are refused by name.
        ocf_err(
            &hand_ocf(&s, "snappy", &[(2, two.clone())], sync),
            "codec \"snappy\" is not supported",
        );
        let mut w = Writer::with_codec(
            &s,
            Vec::new(),
            apache_avro::Codec::Deflate(Default::default()),
        )
        .unwrap();
        for i in 0..20 {
            w.append_value(planet(i)).unwrap();
        }
        let deflated = w.into_inner().unwrap();
        let (_, msgs) = decode_ocf(&deflated, None, &mut Budget::default_limits()).unwrap();
        assert_eq!(msgs[19]["planetName"], "Planet 19");
        ocf_err(
            &hand_ocf(&s, "deflate", &[(2, two.clone())], sync),
            "deflate data is corrupt",
        );
        // A schema whose records take no bytes: their count is capped.
        let nothing = schema(json!("null"));
        ocf_err(
            &hand_ocf(&nothing, "null", &[(1 << 40, vec![])], sync),
            "more than 65536 records",
        );
        assert_eq!(
            decode_ocf(
                &hand_ocf(&nothing, "null", &[(3, vec![])], sync),
                None,
                &mut Budget::default_limits()
            )
            .unwrap()
            .1
            .len(),
            3
        );
        // A hostile datum inside a container file.
        let node = schema(json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]}]}));
        let mut deep = vec![2u8; 100_000];
        deep.push(0);
        ocf_err(
            &hand_ocf(&node, "null", &[(1, deep.clone())], sync),
            "nests deeper",
        );
        let reader = c(&node);
        assert!(matches!(
            decode_ocf(
                &hand_ocf(&node, "null", &[(1, deep)], sync),
                Some(&reader),
                &mut Budget::default_limits()
            ),
            Err(DecodeError::Permanent(_))
        ));
    }

    /// A deflated block of `zeros` zero bytes behind `prefix` (a stored block, then the compressed zeros).
    fn deflated(prefix: &[u8], zeros: usize) -> Vec<u8> {
        let len = u16::try_from(prefix.len()).unwrap();
        let mut out = vec![0];
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(prefix);
        out.extend(miniz_oxide::deflate::compress_to_vec(&vec![0; zeros], 1));
        out
    }

    #[test]
    fn the_container_files_of_a_batch_share_one_inflate_budget() {
        // A string of 1 MiB of NULs per file: 1 MiB and its length inflated each.
        let s = schema(json!("string"));
        let mib: usize = 1 << 20;
        let file = hand_ocf(
            &s,
            "deflate",
            &[(1, deflated(&zz(mib as i64), mib))],
            [3; 16],
        );
        let mut budget = Budget::new(3 * mib + 100, usize::MAX);
        for _ in 0..3 {
            let (_, m) = decode_ocf(&file, None, &mut budget).unwrap();
            assert_eq!(m[0].as_str().map(str::len), Some(mib));
        }
        assert_eq!(budget.inflated(), 3 * (mib + zz(mib as i64).len()));
        // The fourth inflates past the budget; every later one finds it spent, whatever its size.
        for bytes in [
            &file,
            &hand_ocf(&s, "deflate", &[(1, deflated(&zz(1), 1))], [3; 16]),
        ] {
            let m = permanent_containing(
                decode_ocf(bytes, None, &mut budget),
                "past their limit (codec.max_inflated_mib = 3 MiB in total per batch)",
            );
            assert!(
                m.starts_with("Avro container file, block 1: inflating it"),
                "{m}"
            );
        }
        // The per-block cap still holds under a larger budget, and a corrupt stream says so.
        let big = hand_ocf(
            &s,
            "deflate",
            &[(1, deflated(&zz(1), MAX_BLOCK_BYTES + 1))],
            [3; 16],
        );
        permanent_containing(
            decode_ocf(&big, None, &mut Budget::new(usize::MAX, usize::MAX)),
            "inflates past 64 MiB (the limit per block)",
        );
        let corrupt = hand_ocf(&s, "deflate", &[(1, vec![0xff; 8])], [3; 16]);
        permanent_containing(
            decode_ocf(&corrupt, None, &mut Budget::default_limits()),
            "deflate data is corrupt",
        );
    }

    #[test]
    fn the_container_files_of_a_batch_share_one_decoded_budget() {
        // 6 zero bytes are a whole record of this schema: a block of zeros is a great many messages.
        let s = schema(json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]}));
        let records = 10_000;
        let file = hand_ocf(
            &s,
            "null",
            &[(records, vec![0; 2 * records as usize])],
            [5; 16],
        );
        let mut budget = Budget::new(usize::MAX, 4 << 20);
        let (_, m) = decode_ocf(&file, None, &mut budget).unwrap();
        assert_eq!(m.len(), records as usize);
        let one = budget.decoded();
        assert!(
            one > records as usize * 100,
            "an estimate that counts the objects: {one}"
        );
        let mut shared = Budget::new(usize::MAX, one * 2 + one / 2);
        decode_ocf(&file, None, &mut shared).unwrap();
        decode_ocf(&file, None, &mut shared).unwrap();
        let m = permanent_containing(
            decode_ocf(&file, None, &mut shared),
            "(codec.max_decoded_mib = ",
        );
        assert!(
            m.starts_with("Avro container file, block 1, record "),
            "{m}"
        );
        // Deflated: a 64 MiB block of zeros would be 32 Mi messages (GBs); the budget stops it early.
        let zeros = hand_ocf(
            &s,
            "deflate",
            &[(32 << 20, deflated(&[], 64 << 20))],
            [5; 16],
        );
        let mut budget = Budget::default_limits();
        permanent_containing(
            decode_ocf(&zeros, None, &mut budget),
            "(codec.max_decoded_mib = 512 MiB of decoded messages in total per batch)",
        );
        assert_eq!(
            budget.decoded(),
            512 << 20,
            "spent: later files fail at once"
        );
    }

    #[test]
    fn decimal_scaling() {
        assert_eq!(scaled("5", 3), "0.005");
        assert_eq!(scaled("-5", 1), "-0.5");
        assert_eq!(scaled("12345", 0), "12345");
    }
}
