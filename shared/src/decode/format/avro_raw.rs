//! Bare Avro datums: of `codec.raw_schema` (`codec.value = "avro-raw"`), and of the schema Lambda's
//! schema-registry integration names in a record's `valueSchemaMetadata` ([`decode_with_metadata`]).

use std::sync::Arc;

use super::{Context, Decoding, ValueFormat, json};
use crate::decode::avro::{self, AvroSchema};
use crate::decode::schemas::Schemas;
use crate::decode::{CodecConfig, DecodeError, Decoded};
use crate::event::SchemaMetadata;

/// The raw-datum format, with its writer schema.
#[derive(Debug, Clone)]
pub(crate) struct AvroRaw {
    writer: Arc<AvroSchema>,
}

impl AvroRaw {
    /// `None` without a readable `raw_schema` (said in `problems`).
    pub(crate) fn build(
        cfg: &CodecConfig,
        schemas: &Schemas,
        problems: &mut Vec<String>,
    ) -> Option<Self> {
        if cfg.raw_schema.is_none() {
            problems.push("codec.value = \"avro-raw\" needs codec.raw_schema".into());
        }
        // An unreadable raw_schema is in `problems` already.
        let writer = Arc::clone(schemas.raw.as_ref()?);
        Some(AvroRaw { writer })
    }
}

impl ValueFormat for AvroRaw {
    fn decode<'a>(&'a self, bytes: &'a [u8], cx: &'a Context<'_>) -> Decoding<'a> {
        datum(bytes, &self.writer, cx)
    }
}

/// A datum written with `writer`, resolved to the reader schema when one is set; the messages are classified
/// by the schema they are in.
pub(crate) fn datum<'a>(
    bytes: &'a [u8],
    writer: &'a Arc<AvroSchema>,
    cx: &'a Context<'_>,
) -> Decoding<'a> {
    let reader = cx.schemas.reader();
    avro::decode_datum(bytes, writer, reader.map(|r| &**r))
        .map(|v| Decoded::one(v).with_schema(Some(Arc::clone(reader.unwrap_or(writer).schema()))))
}

/// A value with Lambda's `valueSchemaMetadata`: either already JSON (`EventRecordFormat: JSON`), which the
/// schema still classifies if known, or the bare datum (`SOURCE`) of schema `schemaId` (a configured or
/// registry id; else `raw_schema`, as Glue's ids are not numbers).
pub(crate) fn decode_with_metadata<'a>(
    bytes: &'a [u8],
    meta: &SchemaMetadata,
    cx: &'a Context<'_>,
) -> Decoding<'a> {
    let by_id = meta
        .schema_id
        .as_deref()
        .and_then(|id| id.parse::<u32>().ok());
    let known = by_id
        .and_then(|id| cx.schemas.by_id(id).ok())
        .or(cx.schemas.raw());
    if bytes.first() == Some(&b'{') {
        let decoded = json::Json.decode(bytes, cx)?;
        return Ok(decoded.with_schema(known.map(|k| Arc::clone(k.schema()))));
    }
    let writer = known.ok_or_else(|| {
        DecodeError::Permanent(format!(
            "no schema for schemaId {}: add it to codec.schemas or set codec.raw_schema",
            meta.schema_id.as_deref().unwrap_or("(none)")
        ))
    })?;
    datum(bytes, writer, cx)
}
