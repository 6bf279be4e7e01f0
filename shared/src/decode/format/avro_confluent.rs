//! Confluent's wire format (`codec.value = "avro-confluent"`): byte 0, a 4-byte big-endian schema id, then the
//! datum. Ids are looked up in `codec.schemas`, else asked of `codec.registry` before the batch.

use super::{Context, Decoding, ValueFormat, avro_raw};
use crate::decode::avro;
use crate::decode::{CodecConfig, DecodeError};

/// The Confluent-framed format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvroConfluent;

impl AvroConfluent {
    /// `None` when there is nowhere to find schemas (said in `problems`).
    pub(crate) fn build(cfg: &CodecConfig, problems: &mut Vec<String>) -> Option<Self> {
        if cfg.schemas.is_empty() && cfg.registry.is_none() {
            problems.push(
                "codec.value = \"avro-confluent\" needs codec.schemas (schema id → .avsc) or codec.registry".into(),
            );
            return None;
        }
        Some(AvroConfluent)
    }
}

impl ValueFormat for AvroConfluent {
    fn decode<'a>(&'a self, bytes: &'a [u8], cx: &'a Context<'_>) -> Decoding<'a> {
        match avro::split_confluent(bytes) {
            None => Err(DecodeError::Permanent(
                "value is not in the Confluent wire format (magic byte 0, 4-byte schema id, datum)"
                    .into(),
            )),
            Some((id, body)) => avro_raw::datum(body, cx.schemas.by_id(id)?, cx),
        }
    }
}
