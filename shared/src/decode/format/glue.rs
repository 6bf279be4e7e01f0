//! AWS Glue Schema Registry's wire format (`codec.value = "glue"`, and what `auto` reads when a value starts
//! with byte 3): byte 3 (the header version), a compression byte (0: none, 5: zlib), the 16-byte schema
//! version id, then the payload in the data format of that schema version — an Avro datum, JSON text, or a
//! Protobuf message after the varint index of its type (Glue numbers a file's message types, nested ones too,
//! sorted by full name). The schemas come from `codec.glue_schemas` or `codec.glue` ([`crate::decode::glue`]).
//!
//! A zlib payload inflates within the batch's budget (`codec.max_inflated_mib`, shared with Avro container
//! files) and the per-block cap of [`avro::MAX_BLOCK_BYTES`]; the copy its message then makes is charged to
//! `codec.max_decoded_mib` ([`memory`]).

use std::sync::Arc;

use super::{Context, ValueFormat, json};
use crate::decode::glue::{GlueSchema, VersionId};
use crate::decode::{CodecConfig, DecodeError, Decoded, avro, memory, protobuf};
use crate::message::Message;

/// The first byte of a Glue-framed value.
pub const GLUE_HEADER_VERSION: u8 = 3;
/// The compression byte: none.
pub const COMPRESSION_NONE: u8 = 0;
/// The compression byte: zlib.
pub const COMPRESSION_ZLIB: u8 = 5;

/// Glue's header: the compression byte, the schema version id, and the payload; `None` when `bytes` do not
/// start with byte 3 or are shorter than the header.
pub fn split(bytes: &[u8]) -> Option<(u8, VersionId, &[u8])> {
    match bytes {
        [GLUE_HEADER_VERSION, compression, rest @ ..] if rest.len() >= 16 => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&rest[..16]);
            Some((*compression, id, &rest[16..]))
        }
        _ => None,
    }
}

/// The Glue format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Glue;

impl Glue {
    /// `None` when no schema can be known (said in `problems`).
    pub(crate) fn build(cfg: &CodecConfig, problems: &mut Vec<String>) -> Option<Self> {
        if cfg.glue_schemas.is_empty() && cfg.glue.is_none() {
            problems.push(
                "codec.value = \"glue\" needs codec.glue_schemas (schema version id → schema file) or codec.glue"
                    .into(),
            );
            return None;
        }
        Some(Glue)
    }
}

impl ValueFormat for Glue {
    fn decode<'a>(
        &'a self,
        bytes: &'a [u8],
        cx: &'a Context<'_>,
    ) -> Result<Decoded<'a>, DecodeError> {
        let Some((compression, id, payload)) = split(bytes) else {
            return Err(DecodeError::Permanent(
                "value is not in AWS Glue's wire format (byte 3, compression byte, 16-byte schema version id, payload)"
                    .into(),
            ));
        };
        let schema = cx.schemas.glue(&id)?;
        match compression {
            COMPRESSION_NONE => decode_payload(payload, schema, cx),
            COMPRESSION_ZLIB => {
                let mut budget = cx.budget.get();
                let inflated = avro::inflate_zlib(payload, "value (Glue, zlib)", &mut budget);
                cx.budget.set(budget);
                let inflated = inflated?;
                // The payload is this function's: the messages own their strings, a copy charged against the
                // batch's budget before it is made (a Protobuf message owns its strings already).
                let decoded = decode_payload(&inflated, schema, cx)?;
                if !matches!(schema, GlueSchema::Protobuf(_)) {
                    let mut budget = cx.budget.get();
                    let cost = decoded
                        .messages
                        .iter()
                        .fold(0usize, |t, m| t.saturating_add(memory::message_cost(m)));
                    if cost > budget.decoded_left() {
                        return Err(DecodeError::Permanent(format!(
                            "value (Glue, zlib): {}",
                            budget.row_error("its message", cost)
                        )));
                    }
                    budget.add_decoded(cost);
                    cx.budget.set(budget);
                }
                let owned = decoded.into_owned();
                // Decoded is invariant (SmallVec): rebuilt, each message coerces.
                Ok(Decoded {
                    messages: owned
                        .messages
                        .into_iter()
                        .map(|m| m as Message<'a>)
                        .collect(),
                    schema: owned.schema,
                })
            }
            other => Err(DecodeError::Permanent(format!(
                "value is Glue-framed with compression byte {other} (known: 0 none, 5 zlib)"
            ))),
        }
    }
}

/// A payload in its schema version's data format.
fn decode_payload<'a>(
    payload: &'a [u8],
    schema: &'a GlueSchema,
    cx: &Context<'_>,
) -> Result<Decoded<'a>, DecodeError> {
    match schema {
        GlueSchema::Avro(writer) => {
            let reader = cx.schemas.reader();
            avro::decode_datum(payload, writer, reader.map(|r| &**r)).map(|v| {
                Decoded::one(v).with_schema(Some(Arc::clone(reader.unwrap_or(writer).schema())))
            })
        }
        GlueSchema::Json => json::decode(payload).map(Decoded::one),
        GlueSchema::Protobuf(messages) => {
            let mut pos = 0;
            let index = protobuf::varint(payload, &mut pos).ok_or_else(|| {
                DecodeError::Permanent(
                    "value is Glue-framed Protobuf, but its message index is truncated".into(),
                )
            })?;
            let desc = usize::try_from(index)
                .ok()
                .and_then(|i| messages.get(i))
                .ok_or_else(|| {
                    DecodeError::Permanent(format!(
                        "unknown message index {index} in a Glue Protobuf schema of {} message types",
                        messages.len()
                    ))
                })?;
            super::protobuf::within_budget(&payload[pos..], desc, cx).map(Decoded::one)
        }
    }
}
