//! The value formats, one file each: [`json`], [`avro_ocf`] (Avro container files), [`avro_confluent`]
//! (Confluent framing: magic byte, schema id, datum) and [`avro_raw`] (a bare datum of one configured schema).
//! Each holds what its settings build to, has a `build`, and implements [`ValueFormat`]; [`Value`] is the one
//! dispatch over them. A new format is a new file here and an arm in [`Value`] and [`Format`].

pub(crate) mod avro_confluent;
pub(crate) mod avro_ocf;
pub(crate) mod avro_raw;
pub(crate) mod glue;
pub(crate) mod json;
pub(crate) mod protobuf;

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::avro::{self, Budget};
use super::schemas::{BatchSchemas, Schemas};
use super::{CodecConfig, DecodeError, Decoded};
use crate::event::SchemaMetadata;

/// `codec.value`: the format of record values.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object per record ([`json`]).
    Json,
    /// An Avro Object Container File per record, which may hold many messages ([`avro_ocf`]).
    AvroOcf,
    /// Confluent's wire format: byte 0, a 4-byte schema id, the datum ([`avro_confluent`]).
    AvroConfluent,
    /// A bare Avro datum of `codec.raw_schema` ([`avro_raw`]).
    AvroRaw,
    /// Protobuf: Confluent-framed, or a bare message of `codec.message` ([`protobuf`]).
    Protobuf,
    /// AWS Glue Schema Registry's framing: byte 3, compression, schema version id, payload ([`glue`]).
    Glue,
    /// In this order: OCF magic → container file; byte 3 and a Glue header → Glue; byte 0 and a schema id that
    /// is a .proto → Confluent Protobuf; byte 0 and any other id → Confluent Avro; else JSON.
    #[default]
    Auto,
}

/// What a format decodes with, for one batch: the schemas, and what the batch's container files may still
/// inflate and decode to (a cell: the decoder decodes through `&self`, as its messages borrow from it).
#[derive(Debug)]
pub(crate) struct Context<'c> {
    pub(crate) schemas: BatchSchemas<'c>,
    pub(crate) budget: Cell<Budget>,
}

/// What decoding one record value gives: its messages, or why not.
pub(crate) type Decoding<'a> = Result<Decoded<'a>, DecodeError>;

/// One value format: a record value's bytes into its messages, whose strings borrow from the bytes and whose
/// field names borrow from the schemas in `cx`.
pub(crate) trait ValueFormat {
    fn decode<'a>(&'a self, bytes: &'a [u8], cx: &'a Context<'_>) -> Decoding<'a>;
}

/// The configured value format, built.
#[derive(Debug)]
pub(crate) enum Value {
    Json(json::Json),
    AvroOcf(avro_ocf::AvroOcf),
    AvroConfluent(avro_confluent::AvroConfluent),
    AvroRaw(avro_raw::AvroRaw),
    Protobuf(protobuf::Protobuf),
    Glue(glue::Glue),
    /// Chooses by the bytes, as [`Format::Auto`] says.
    Auto,
}

impl Value {
    /// The format `cfg.value` names; `None` when something it needs is missing (said in `problems`).
    pub(crate) fn build(
        cfg: &CodecConfig,
        schemas: &Schemas,
        problems: &mut Vec<String>,
    ) -> Option<Self> {
        Some(match cfg.value {
            Format::Json => Value::Json(json::Json::build()),
            Format::AvroOcf => Value::AvroOcf(avro_ocf::AvroOcf::build()),
            Format::AvroConfluent => {
                Value::AvroConfluent(avro_confluent::AvroConfluent::build(cfg, problems)?)
            }
            Format::AvroRaw => Value::AvroRaw(avro_raw::AvroRaw::build(cfg, schemas, problems)?),
            Format::Protobuf => Value::Protobuf(protobuf::Protobuf::build(cfg, problems)?),
            Format::Glue => Value::Glue(glue::Glue::build(cfg, problems)?),
            Format::Auto => Value::Auto,
        })
    }

    /// Whether values may be Confluent-framed (their schema ids are fetched from a registry before a batch).
    pub(crate) fn confluent(&self) -> bool {
        matches!(
            self,
            Value::AvroConfluent(_) | Value::Protobuf(_) | Value::Auto
        )
    }

    /// Decodes one record value. `meta` is the record's `valueSchemaMetadata`, which Lambda's schema-registry
    /// integration sets: the value is then either already JSON or the bare datum of `schemaId` (any Avro
    /// format; see [`avro_raw::decode_with_metadata`]).
    pub(crate) fn decode<'a>(
        &'a self,
        bytes: &'a [u8],
        meta: Option<&SchemaMetadata>,
        cx: &'a Context<'_>,
    ) -> Decoding<'a> {
        if let Some(meta) = meta.filter(|m| m.data_format.is_some())
            && !matches!(self, Value::Json(_))
        {
            // SOURCE mode with a Glue registry: the value as the producer wrote it, Glue header and all.
            let glue_id = meta
                .schema_id
                .as_deref()
                .and_then(crate::decode::glue::parse_uuid);
            if glue_id.is_some() && glue::split(bytes).map(|(_, id, _)| id) == glue_id {
                return glue::Glue.decode(bytes, cx);
            }
            // SOURCE mode of a Protobuf schema: the message, Confluent-framed or bare.
            if meta.data_format.as_deref() == Some("PROTOBUF") && bytes.first() != Some(&b'{') {
                return protobuf::Protobuf.decode(bytes, cx);
            }
            return avro_raw::decode_with_metadata(bytes, meta, cx);
        }
        match self {
            Value::Json(f) => f.decode(bytes, cx),
            Value::AvroOcf(f) => f.decode(bytes, cx),
            Value::AvroConfluent(f) => f.decode(bytes, cx),
            Value::AvroRaw(f) => f.decode(bytes, cx),
            Value::Protobuf(f) => f.decode(bytes, cx),
            Value::Glue(f) => f.decode(bytes, cx),
            Value::Auto if bytes.starts_with(avro::OCF_MAGIC) => {
                avro_ocf::AvroOcf.decode(bytes, cx)
            }
            // JSON text never starts with byte 3 (nor 0): this is Glue framing, known id or not.
            Value::Auto if glue::split(bytes).is_some() => glue::Glue.decode(bytes, cx),
            Value::Auto
                if avro::split_confluent(bytes).is_some_and(|(id, _)| cx.schemas.is_proto(id)) =>
            {
                protobuf::Protobuf.decode(bytes, cx)
            }
            // JSON text never starts with a zero byte: this is Confluent framing, known id or not.
            Value::Auto if avro::split_confluent(bytes).is_some() => {
                avro_confluent::AvroConfluent.decode(bytes, cx)
            }
            Value::Auto => json::Json.decode(bytes, cx),
        }
    }
}
