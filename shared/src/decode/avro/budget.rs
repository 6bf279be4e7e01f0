//! What the container files of one batch may still inflate and decode to.

use super::*;

/// What the container files of one batch may still inflate and decode to. A batch's decoder holds one
/// ([`super::Codec::decoder`]); every container file it reads draws on it, and a file that would go past it
/// fails (permanent: its record is dead-lettered, with a reason naming the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub(super) max_inflated: usize,
    pub(super) max_decoded: usize,
    pub(super) inflated: usize,
    pub(super) decoded: usize,
    /// The function's memory in MiB, when the limits were derived from it ([`crate::decode::memory::derived`]).
    pub(super) derived_from: Option<u64>,
}

impl Budget {
    /// A fresh budget: at most `max_inflated` bytes inflated and `max_decoded` bytes of messages, in total.
    pub fn new(max_inflated: usize, max_decoded: usize) -> Self {
        Self {
            max_inflated,
            max_decoded,
            inflated: 0,
            decoded: 0,
            derived_from: None,
        }
    }

    /// The same limits, said to be derived from a function of `memory_mib` (the refusals say so).
    pub(crate) fn derived_from(self, memory_mib: Option<u64>) -> Self {
        Self {
            derived_from: memory_mib,
            ..self
        }
    }

    /// How the refusals name where a limit comes from.
    pub(crate) fn source(&self) -> String {
        match self.derived_from {
            Some(mb) => format!(
                ", derived from the function's {mb} MB ({}); set it in [codec] to change it",
                crate::decode::memory::FUNCTION_MEMORY_ENV
            ),
            None => String::new(),
        }
    }

    /// The refusal of `what`, which would cost `cost` bytes of the batch's memory: a message too large to map,
    /// a row too large to hold with its copies.
    pub(crate) fn row_error(&self, what: &str, cost: usize) -> String {
        format!(
            "{what} would take the batch past what its messages and rows may hold: it needs about {} MiB \
             (with its copies on the way to the statement) and the batch has {} MiB left \
             (codec.max_decoded_mib = {} MiB in total per batch{})",
            cost.div_ceil(1 << 20),
            self.decoded_left() >> 20,
            self.max_decoded >> 20,
            self.source()
        )
    }

    /// The default limits ([`DEFAULT_MAX_INFLATED_MIB`], [`DEFAULT_MAX_DECODED_MIB`]).
    pub fn default_limits() -> Self {
        Self::new(mib(DEFAULT_MAX_INFLATED_MIB), mib(DEFAULT_MAX_DECODED_MIB))
    }

    /// Bytes inflated so far.
    pub fn inflated(&self) -> usize {
        self.inflated
    }

    /// Estimated bytes of messages decoded so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// Whether budgets drawn on separately, each from a fresh copy of one budget (one per thread, each
    /// decoding a run of the batch's records), stay within that budget taken together. Then one budget drawn
    /// on by every record in batch order would have let each record draw what it drew (what was drawn before
    /// it is at most the total) and refused exactly what was refused (a refusing copy had at least as much
    /// left as the one budget would have had), so the records' fates are the same. Otherwise the caller
    /// decodes the batch again with one budget.
    pub fn fits_together(parts: &[Budget]) -> bool {
        let Some(first) = parts.first() else {
            return true;
        };
        let (inflated, decoded) = parts.iter().fold((0usize, 0usize), |(i, d), b| {
            (i.saturating_add(b.inflated), d.saturating_add(b.decoded))
        });
        inflated <= first.max_inflated && decoded <= first.max_decoded
    }

    /// Estimated bytes of messages the batch may still decode to.
    pub(crate) fn decoded_left(&self) -> usize {
        self.max_decoded.saturating_sub(self.decoded)
    }

    /// Counts `bytes` more of decoded messages (estimated by the caller, within [`Budget::decoded_left`]).
    pub(crate) fn add_decoded(&mut self, bytes: usize) {
        self.decoded = self.decoded.saturating_add(bytes);
    }

    /// `codec.max_decoded_mib`.
    pub(crate) fn max_decoded_mib(&self) -> usize {
        self.max_decoded >> 20
    }

    pub(super) fn inflated_error(&self, subject: &str) -> DecodeError {
        permanent(format!(
            "{subject}: inflating it would take the batch's container files past their limit \
             (codec.max_inflated_mib = {} MiB in total per batch{})",
            self.max_inflated >> 20,
            self.source()
        ))
    }

    pub(super) fn decoded_error(&self, subject: &str) -> DecodeError {
        permanent(format!(
            "{subject}: its messages would take the batch's container files past their limit \
             (codec.max_decoded_mib = {} MiB of decoded messages in total per batch{})",
            self.max_decoded >> 20,
            self.source()
        ))
    }
}
