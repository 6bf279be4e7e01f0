//! Avro datums of a fixed schema that has every kind of node (recursion, unions, arrays, maps, enums, fixed,
//! every logical type), read on their own and resolved to a reader schema (apache-avro's schema resolution).
#![no_main]

use std::sync::{Arc, LazyLock};

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use msk_sync::decode::avro::{AvroSchema, decode_datum};

const SCHEMA: &str = r#"{"type": "record", "name": "Everything", "namespace": "fuzz", "fields": [
  {"name": "n", "type": "null"},
  {"name": "b", "type": "boolean"},
  {"name": "i", "type": "int"},
  {"name": "l", "type": "long"},
  {"name": "f", "type": "float"},
  {"name": "d", "type": "double"},
  {"name": "by", "type": "bytes"},
  {"name": "s", "type": "string"},
  {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
  {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
  {"name": "a", "type": {"type": "array", "items": ["null", "long", "string"]}},
  {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "null"}}},
  {"name": "date", "type": {"type": "int", "logicalType": "date"}},
  {"name": "tms", "type": {"type": "int", "logicalType": "time-millis"}},
  {"name": "tus", "type": {"type": "long", "logicalType": "time-micros"}},
  {"name": "tsms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "tsns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
  {"name": "lts", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
  {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
  {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 3}},
  {"name": "decf", "type": {"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 2}},
  {"name": "big", "type": {"type": "bytes", "logicalType": "big-decimal"}},
  {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
  {"name": "next", "type": ["null", "Everything"]}
]}"#;

static WRITER: LazyLock<AvroSchema> = LazyLock::new(|| {
    let schema = Schema::parse_str(SCHEMA).unwrap_or_else(|e| panic!("{e}"));
    AvroSchema::new(Arc::new(schema)).unwrap_or_else(|e| panic!("{e}"))
});

/// A smaller planet-like schema as well: most real datums are flat records of strings.
static PLANET: LazyLock<AvroSchema> = LazyLock::new(|| {
    let text = include_str!("../../events/schemas/planet.avsc");
    let schema = Schema::parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    AvroSchema::new(Arc::new(schema)).unwrap_or_else(|e| panic!("{e}"))
});

fuzz_target!(|data: &[u8]| {
    if decode_datum(data, &WRITER, None).is_ok() {
        let _ = decode_datum(data, &WRITER, Some(&WRITER));
    }
    if decode_datum(data, &PLANET, None).is_ok() {
        let _ = decode_datum(data, &PLANET, Some(&PLANET));
    }
});
