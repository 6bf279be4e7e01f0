//! JSON values: one object per record.

use serde_json::Value;

use super::DecodeError;

pub(super) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let value: Value = serde_json::from_slice(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_only() {
        assert!(decode(br#"{"a":1}"#).is_ok());
        let err = decode(b"[1]").unwrap_err().to_string();
        assert_eq!(err, "value is JSON array, expected an object");
        let err = decode(b"{\"a\":").unwrap_err().to_string();
        assert!(err.starts_with("value is not valid JSON"), "{err}");
    }
}
