//! JSON values: one object per record (`codec.value = "json"`, and what `auto` reads when a value is neither
//! a container file nor Confluent-framed). No settings.

use super::{Context, Decoding, ValueFormat};
use crate::decode::{DecodeError, Decoded};
use crate::message::Message;

/// Room the pipeline adds to every message (`kafkaRecordTimestamp`, `kafkaTopic`).
pub(crate) const INJECTED_FIELDS: usize = 2;

/// The JSON format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Json;

impl Json {
    pub(crate) fn build() -> Self {
        Json
    }
}

impl ValueFormat for Json {
    fn decode<'a>(&'a self, bytes: &'a [u8], _: &'a Context<'_>) -> Decoding<'a> {
        decode(bytes).map(Decoded::one)
    }
}

/// The value as a message whose strings borrow from `bytes` (see [`parse`]), its top-level object with room for
/// the injected fields.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let value = parse(bytes, INJECTED_FIELDS)
        .map_err(|e| DecodeError::Permanent(format!("value is not valid JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        // Routing, filtering and mapping all address fields of an object.
        Err(DecodeError::Permanent(format!(
            "value is JSON {}, expected an object",
            match value {
                Message::Array(_) => "array",
                Message::String(_) => "string",
                Message::Number(_) => "number",
                Message::Bool(_) => "boolean",
                _ => "null",
            }
        )))
    }
}

/// Any JSON value (a value, or a key declared JSON), strings borrowed from `bytes`, which are checked to be
/// UTF-8 once, as a whole; a top-level object gets room for `spare` more fields. The error says what is wrong,
/// for the caller to say what was being read.
pub(crate) fn parse(bytes: &[u8], spare: usize) -> Result<Message<'_>, String> {
    let text = crate::text::utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    Message::parse(text, spare).map_err(|e| crate::text::json_error(&e))
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
        let err = decode(b"{\"a\":\"\xff\"}").unwrap_err().to_string();
        assert_eq!(err, "value is not valid JSON: invalid UTF-8 at byte 6");
        // A lone surrogate escape says so, not "unexpected end of hex escape".
        let err = decode(br#"{"a":"\ud800"}"#).unwrap_err().to_string();
        assert!(
            err.starts_with("value is not valid JSON: a \\u escape of a lone UTF-16 surrogate"),
            "{err}"
        );
    }

    #[test]
    fn the_top_level_object_has_room_for_the_injected_fields() {
        let Message::Object(o) = decode(br#"{"a":1}"#).unwrap() else {
            panic!("an object")
        };
        assert_eq!(o.len(), 1);
        assert!(o.capacity() >= o.len() + INJECTED_FIELDS);
    }
}
