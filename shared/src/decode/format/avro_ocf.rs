//! Avro Object Container Files (`codec.value = "avro-ocf"`): a file carries its writer schema, and every
//! record in it becomes a message. What one batch's files may inflate and decode to, in total, is
//! `codec.max_inflated_mib` and `codec.max_decoded_mib` ([`budget`]); a file past it is dead-lettered.

use std::sync::Arc;

use super::{Context, Decoding, ValueFormat};
use crate::decode::avro::{self, Budget};
use crate::decode::{CodecConfig, Decoded, Messages};

/// The container-file format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvroOcf;

impl AvroOcf {
    pub(crate) fn build() -> Self {
        AvroOcf
    }
}

/// What each batch's container files may inflate and decode to.
pub(crate) fn budget(cfg: &CodecConfig) -> Budget {
    Budget::new(
        avro::mib(
            cfg.max_inflated_mib
                .unwrap_or(avro::DEFAULT_MAX_INFLATED_MIB),
        ),
        avro::mib(cfg.max_decoded_mib.unwrap_or(avro::DEFAULT_MAX_DECODED_MIB)),
    )
}

impl ValueFormat for AvroOcf {
    fn decode<'a>(&'a self, bytes: &'a [u8], cx: &'a Context<'_>) -> Decoding<'a> {
        let reader = cx.schemas.reader();
        let mut budget = cx.budget.get();
        let decoded = avro::decode_ocf(bytes, reader.map(|r| &**r), &mut budget);
        cx.budget.set(budget);
        decoded.map(|(writer, messages)| Decoded {
            // The reader schema, when set, is what the messages were resolved to.
            schema: Some(reader.map_or(writer, |r| Arc::clone(r.schema()))),
            messages: Messages::from_vec(messages),
        })
    }
}
