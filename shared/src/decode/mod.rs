//! Record bytes → JSON messages: base64 first, then the configured codec (one file per format).
//!
//! A codec is chosen in config ([`CodecConfig`]), built once per function instance into a [`Codec`], and
//! then only decodes. Every error says whether the batch can go on without the record
//! ([`DecodeError::Permanent`]: the record is dead-lettered) or must be retried ([`DecodeError::Transient`]).

mod json;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which format record values (or keys) are in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodecConfig {
    #[default]
    Json,
}

impl CodecConfig {
    pub fn build(&self) -> Codec {
        match self {
            CodecConfig::Json => Codec::Json,
        }
    }
}

/// A codec ready to decode; cheap to share between batches.
#[derive(Debug, Clone)]
pub enum Codec {
    Json,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes will never decode: dead-letter the record and go on.
    #[error("{0}")]
    Permanent(String),
    /// Something outside the record failed (e.g. a schema registry): retry the batch.
    #[error("{0}")]
    Transient(String),
}

impl Codec {
    /// Decode one record value into its messages (a format such as Avro OCF may carry several).
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
        match self {
            Codec::Json => json::decode(bytes).map(|v| vec![v]),
        }
    }
}

/// The standard alphabet with padding is what Lambda sends; a producer's unpadded value is accepted too.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD
        .decode(text)
        .or_else(|first| STANDARD_NO_PAD.decode(text).map_err(|_| first))
        .map_err(|e| DecodeError::Permanent(format!("value is not valid base64: {e}")))
}

/// The record key as text, when it is UTF-8 (the common string key); `None` otherwise.
pub fn key_text(base64_key: Option<&str>) -> Option<String> {
    let bytes = base64_decode(base64_key?).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_errors_are_permanent_and_say_so() {
        let err = base64_decode("not base64!").unwrap_err();
        assert!(matches!(&err, DecodeError::Permanent(m) if m.contains("not valid base64")));
        assert_eq!(base64_decode("e30").unwrap(), b"{}");
        assert_eq!(base64_decode("e30=").unwrap(), b"{}");
    }

    #[test]
    fn key_text_is_utf8_or_none() {
        assert_eq!(key_text(Some("a2V5")).as_deref(), Some("key"));
        assert_eq!(key_text(Some("/w==")), None);
        assert_eq!(key_text(None), None);
    }
}
