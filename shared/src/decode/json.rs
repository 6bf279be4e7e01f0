//! JSON values: one object per record.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::DecodeError;

/// Room the pipeline adds to every message (`kafkaRecordTimestamp`, `kafkaTopic`).
pub(crate) const INJECTED_FIELDS: usize = 2;

pub(super) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = ValueSeed {
        spare: INJECTED_FIELDS,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| DecodeError::Permanent(format!("value is not valid JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        // Routing, filtering and mapping all address fields of an object.
        Err(DecodeError::Permanent(format!(
            "value is JSON {}, expected an object",
            match value {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                _ => "null",
            }
        )))
    }
}

/// Builds the same `Value` as `serde_json::from_slice`, but each object's map at its final size: serde_json's
/// own visitor inserts into a map that starts empty, so every message's map is rehashed as it grows, and once
/// more when the pipeline adds its fields. Here an object's entries are collected first (the last of a
/// repeated name wins, at the place of its first occurrence, as in serde_json) and the map is built once,
/// with `spare` free slots at the top level.
struct ValueSeed {
    spare: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ValueSeed { spare: 0 })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(8);
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(ValueSeed { spare: 0 })?;
            entries.push((name, value));
        }
        let mut out = Map::with_capacity(entries.len() + self.spare);
        for (name, value) in entries {
            out.insert(name, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same values as serde_json's own parser, field order and repeated names included.
    #[test]
    fn builds_what_serde_json_builds() {
        let cases = [
            r#"{"a":1,"b":[1,2.5,-3,"x",null,true,{"c":{}}],"d":{"e":"\u00e9\n","f":[]}}"#,
            r#"{"z":1,"a":2,"z":3}"#,
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":1e300,"g":0.1}"#,
            r#"{"deep":[[[[{"x":[{"y":null}]}]]]],"s":"\ud83d\ude00"}"#,
            r#"  {"ws" : [ 1 , 2 ] }  "#,
        ];
        for case in cases {
            let ours = decode(case.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(case).unwrap();
            assert_eq!(ours, theirs, "{case}");
            assert_eq!(ours.to_string(), theirs.to_string(), "order: {case}");
        }
        for bad in [
            r#"{"a":1} x"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            "{\"a\":\"\u{0}\"}",
        ] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad}");
        }
        // serde_json's recursion limit still holds: an error, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let err = decode(deep.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn objects_only() {
        assert!(decode(br#"{"a":1}"#).is_ok());
        let err = decode(b"[1]").unwrap_err().to_string();
        assert_eq!(err, "value is JSON array, expected an object");
        let err = decode(b"{\"a\":").unwrap_err().to_string();
        assert!(err.starts_with("value is not valid JSON"), "{err}");
    }
}
