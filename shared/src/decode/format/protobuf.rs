//! Protobuf values (`codec.value = "protobuf"`): Confluent-framed — byte 0, a 4-byte schema id, the
//! message-index list, the message — when the value starts with byte 0 (a bare message never does: field
//! number 0 does not exist), else a bare message of `codec.message`. Schema ids map to `.proto` files in
//! `codec.schemas` or are fetched from `codec.registry`, as for Avro. See [`crate::decode::protobuf`] for the
//! mapping to the message tree.

use prost_reflect::MessageDescriptor;

use super::{Context, ValueFormat};
use crate::decode::schemas::is_proto;
use crate::decode::{CodecConfig, DecodeError, Decoded, avro, protobuf};
use crate::message::Message;

/// The Protobuf format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Protobuf;

impl Protobuf {
    /// `None` when values could not be read at all (said in `problems`).
    pub(crate) fn build(cfg: &CodecConfig, problems: &mut Vec<String>) -> Option<Self> {
        let framed = cfg.registry.is_some() || cfg.schemas.values().any(|p| is_proto(p));
        if cfg.message.is_none() && !framed {
            problems.push(
                "codec.value = \"protobuf\" needs codec.message (the type of bare messages, with codec.proto), \
                 or codec.schemas (schema id → .proto) or codec.registry for Confluent-framed ones"
                    .into(),
            );
            return None;
        }
        Some(Protobuf)
    }
}

impl ValueFormat for Protobuf {
    fn decode<'a>(
        &'a self,
        bytes: &'a [u8],
        cx: &'a Context<'_>,
    ) -> Result<Decoded<'a>, DecodeError> {
        let proto = cx.schemas.proto();
        message(bytes, proto.message.as_ref(), "codec.message", cx).map(Decoded::one)
    }
}

/// A Protobuf value or key: Confluent-framed when it starts with byte 0, else a bare message of `bare`
/// (`setting` names where that is configured, for the error without it).
pub(crate) fn message(
    bytes: &[u8],
    bare: Option<&MessageDescriptor>,
    setting: &str,
    cx: &Context<'_>,
) -> Result<Message<'static>, DecodeError> {
    if let Some((id, body)) = avro::split_confluent(bytes) {
        let file = cx.schemas.proto_by_id(id)?;
        let (indexes, message) = protobuf::split_indexes(body)?;
        let desc = protobuf::message_by_indexes(file, &indexes)?;
        return within_budget(message, &desc, cx);
    }
    match bare {
        Some(desc) => within_budget(bytes, desc, cx),
        None => Err(DecodeError::Permanent(format!(
            "a bare Protobuf message ({} bytes, not Confluent-framed), and {setting} is not set",
            bytes.len()
        ))),
    }
}

/// A message decoded within what the batch's messages may still take (`codec.max_decoded_mib`, shared with
/// Avro container files): a message type's defaults make a few bytes a large tree.
pub(crate) fn within_budget(
    bytes: &[u8],
    desc: &MessageDescriptor,
    cx: &Context<'_>,
) -> Result<Message<'static>, DecodeError> {
    let mut budget = cx.budget.get();
    let naming = cx.schemas.proto().naming;
    let (message, cost) = protobuf::decode_within(bytes, desc, naming, budget.decoded_left())
        .map_err(|e| match e {
            DecodeError::Permanent(m) if m.ends_with("(codec.max_decoded_mib)") => {
                DecodeError::Permanent(format!(
                    "{} = {} MiB in total per batch{})",
                    m.trim_end_matches(')'),
                    budget.max_decoded_mib(),
                    budget.source()
                ))
            }
            other => other,
        })?;
    budget.add_decoded(cost);
    cx.budget.set(budget);
    Ok(message)
}
