//! Avro Object Container Files (`codec.value = "avro-ocf"`): a file carries its writer schema, and every
//! record in it becomes a message. What one batch's files may inflate and decode to, in total, is
//! `codec.max_inflated_mib` and `codec.max_decoded_mib` ([`budget_for`]); a file past it is dead-lettered.

use std::sync::Arc;

use super::{Context, Decoding, ValueFormat};
use crate::decode::avro::{self, Budget};
use crate::decode::memory;
use crate::decode::{CodecConfig, Decoded, Messages};

/// The container-file format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvroOcf;

impl AvroOcf {
    pub(crate) fn build() -> Self {
        AvroOcf
    }
}

/// What each batch may inflate and decode to: as configured, else derived from the function's memory
/// `memory_mib` under Lambda ([`memory::derived`]), else the defaults.
pub(crate) fn budget_for(cfg: &CodecConfig, memory_mib: Option<u64>) -> Budget {
    let (inflated, decoded) = memory_mib.map_or(
        (
            avro::DEFAULT_MAX_INFLATED_MIB,
            avro::DEFAULT_MAX_DECODED_MIB,
        ),
        memory::derived,
    );
    let derived =
        memory_mib.filter(|_| cfg.max_inflated_mib.is_none() || cfg.max_decoded_mib.is_none());
    Budget::new(
        avro::mib(cfg.max_inflated_mib.unwrap_or(inflated)),
        avro::mib(cfg.max_decoded_mib.unwrap_or(decoded)),
    )
    .derived_from(derived)
}

/// The configured budgets that leave the batch more than the function has (`memory_mib` less
/// [`memory::RESERVED_MIB`]): explicit values win, and this says what they risk.
pub(crate) fn over_function(cfg: &CodecConfig, memory_mib: u64) -> Option<String> {
    let (inflated, decoded) = memory::derived(memory_mib);
    let set = cfg.max_inflated_mib.is_some() || cfg.max_decoded_mib.is_some();
    let total = cfg
        .max_inflated_mib
        .unwrap_or(inflated)
        .saturating_add(cfg.max_decoded_mib.unwrap_or(decoded));
    let usable = memory::usable_mib(memory_mib);
    (set && total > usable).then(|| {
        format!(
            "codec.max_inflated_mib + codec.max_decoded_mib = {total} MiB, more than the {usable} MiB a \
             {memory_mib} MB function has for a batch: a batch that uses them can run out of memory \
             (unset them to derive them from the function's memory)"
        )
    })
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
