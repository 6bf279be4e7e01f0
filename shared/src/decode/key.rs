//! Record keys: `codec.key` says how they are read. Mappings see the decoded key (`from = "key"`,
//! `from = "key:$.id"`).

use serde::{Deserialize, Serialize};

use super::format::{Context, json, protobuf};
use super::{DecodeError, avro, base64_decode_into};
use crate::message::Message;

/// `codec.key`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFormat {
    /// UTF-8 text; a key that is not is no key.
    #[default]
    String,
    /// Any JSON value.
    Json,
    /// Confluent-framed Avro, schemas as for values.
    Avro,
    /// Protobuf: Confluent-framed (schemas as for values), or a bare message of `codec.key_message`.
    Protobuf,
}

impl KeyFormat {
    /// The record key (base64, as the event carries it), decoded into `buf`; `None` without a key. String keys
    /// that are not UTF-8 (or not base64) are `None` too; a key declared JSON or Avro that does not decode is
    /// an error of the record.
    pub(crate) fn decode<'a>(
        self,
        key: Option<&str>,
        buf: &'a mut Vec<u8>,
        cx: &'a Context<'_>,
    ) -> Result<Option<Message<'a>>, DecodeError> {
        let Some(key) = key else { return Ok(None) };
        let bad = |e: DecodeError| DecodeError::Permanent(format!("key: {e}"));
        let decoded = base64_decode_into(key, buf);
        let bytes: &'a Vec<u8> = buf;
        match self {
            KeyFormat::String => Ok(decoded
                .ok()
                .and_then(|()| crate::text::utf8(bytes).ok())
                .map(Message::from)),
            KeyFormat::Json => {
                decoded.map_err(bad)?;
                json::parse(bytes, 0)
                    .map(Some)
                    .map_err(|e| DecodeError::Permanent(format!("key is not valid JSON: {e}")))
            }
            KeyFormat::Avro => {
                decoded.map_err(bad)?;
                let (id, body) = avro::split_confluent(bytes).ok_or_else(|| {
                    DecodeError::Permanent(
                        "key is not Confluent-framed Avro (magic byte 0, schema id, datum)".into(),
                    )
                })?;
                let schema = cx.schemas.by_id(id).map_err(bad)?;
                avro::decode_datum(body, schema, None)
                    .map(Some)
                    .map_err(bad)
            }
            KeyFormat::Protobuf => {
                decoded.map_err(bad)?;
                let bare = cx.schemas.proto().key_message.as_ref();
                protobuf::message(bytes, bare, "codec.key_message", cx)
                    .map(Some)
                    .map_err(bad)
            }
        }
    }
}
