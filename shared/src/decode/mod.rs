//! Record bytes → messages: base64 first, then the configured value format, one file per format.
//!
//! The `[codec]` section ([`CodecConfig`]) is built once per function instance into a [`Codec`], which then
//! only decodes, a batch at a time through a [`Decoder`]. Every error says whether the batch can go on without
//! the record ([`DecodeError::Permanent`]: the record is dead-lettered) or must be retried
//! ([`DecodeError::Transient`]).
//!
//! - `format/`: the value formats, one file each (JSON, Avro container file, Confluent framing, raw datum),
//!   each with its `build` and the one `ValueFormat` trait, and the one dispatch over them. A new format (say
//!   Protobuf) is a new file there and an arm in the dispatch.
//! - `schemas`: the Avro schemas by id, configured or fetched from a [`registry`] before a batch;
//!   `schema_files`: the `.avsc` files a config names, each read once.
//! - `envelope` (kafkaesk's), `key` (record keys) and `b64` (base64): the pieces around a value's format.
//! - [`avro`]: the Avro binary decoder the Avro formats share.

pub mod avro;
mod b64;
mod config;
mod envelope;
mod format;
mod key;
pub mod protobuf;
pub mod registry;
mod schema_files;
mod schemas;

pub use b64::{base64_decode, base64_decode_into, key_text};
pub use config::CodecConfig;
pub use envelope::Envelope;
pub use format::Format;
pub(crate) use format::json::INJECTED_FIELDS;
pub use key::KeyFormat;
pub use schema_files::SchemaFiles;
#[cfg(test)]
pub(crate) use schema_files::reads as schema_file_reads;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Arc;

use apache_avro::Schema;

use crate::event::{MskEvent, SchemaMetadata};
use crate::message::Message;
use format::Context;
use schemas::Schemas;

/// A codec ready to decode, built once per function instance; batches share it.
#[derive(Debug)]
pub struct Codec {
    value: format::Value,
    key: KeyFormat,
    envelope: Option<Envelope>,
    /// Schemas are compiled once, when configured or fetched.
    schemas: Schemas,
    /// What each batch's container files may inflate and decode to.
    budget: avro::Budget,
}

/// A record's messages: one, or an Avro container file's several.
pub type Messages<'a> = smallvec::SmallVec<[Message<'a>; 1]>;

/// The messages of one record value, and the Avro schema that describes them (it classifies fields for
/// masking) when they were Avro.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// One message, or a container file's several.
    pub messages: Messages<'a>,
    /// The schema the messages are in, when they were Avro (or Lambda named it).
    pub schema: Option<Arc<Schema>>,
}

impl<'a> Decoded<'a> {
    /// One message, without a schema.
    pub(crate) fn one(message: Message<'a>) -> Self {
        Self {
            messages: smallvec::smallvec![message],
            schema: None,
        }
    }

    pub(crate) fn with_schema(self, schema: Option<Arc<Schema>>) -> Self {
        Self { schema, ..self }
    }

    /// The same messages, owning their strings.
    pub fn into_owned(self) -> Decoded<'static> {
        Decoded {
            messages: self.messages.into_iter().map(Message::into_owned).collect(),
            schema: self.schema,
        }
    }
}

/// Decodes the records of one batch. It holds the schemas the registry answered before the batch (see
/// [`Codec::prefetch`]) for as long as the batch's messages borrow their field names from them, and what the
/// batch's container files may still inflate and decode to.
#[derive(Debug)]
pub struct Decoder<'c> {
    codec: &'c Codec,
    cx: Context<'c>,
}

/// Why a record's key or value did not decode.
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
    /// Fetches, before a batch is decoded, the registry schemas its Confluent-framed values (and Avro keys)
    /// name. A registry that cannot answer fails the batch (transient); an id it does not know dead-letters its
    /// records, until a later batch asks again (see [`registry`]).
    pub async fn prefetch(&self, event: &MskEvent<'_>) -> Result<(), DecodeError> {
        if !self.schemas.has_registry() {
            return Ok(());
        }
        let values = self.value.confluent();
        let keys = self.key == KeyFormat::Avro;
        let fields = event.records.iter().flat_map(|r| {
            [values.then_some(&r.value), keys.then_some(&r.key)]
                .into_iter()
                .flatten()
        });
        let wanted: BTreeSet<u32> = fields
            .filter_map(|field| b64::head(field.as_deref()?))
            .filter_map(|head| avro::split_confluent(&head).map(|(id, _)| id))
            .collect();
        self.schemas.fetch(wanted).await
    }

    /// The decoder of one batch (after [`Codec::prefetch`]), with the batch's budget for container files.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder {
            codec: self,
            cx: Context {
                schemas: self.schemas.for_batch(),
                budget: Cell::new(self.budget),
            },
        }
    }

    /// Decodes one record value into messages that own their strings: for callers outside a batch's loop.
    pub fn decode(
        &self,
        bytes: &[u8],
        meta: Option<&SchemaMetadata>,
    ) -> Result<Decoded<'static>, DecodeError> {
        self.decoder().decode(bytes, meta).map(Decoded::into_owned)
    }

    /// The record key (base64, as the event carries it) as the key format reads it, owning its strings.
    pub fn decode_key(&self, key: Option<&str>) -> Result<Option<Message<'static>>, DecodeError> {
        let mut buf = Vec::new();
        self.decoder()
            .decode_key(key, &mut buf)
            .map(|k| k.map(Message::into_owned))
    }
}

impl Decoder<'_> {
    /// Decodes one record value into its messages (an Avro container file may carry several); strings borrow
    /// from `bytes` and field names from the schemas.
    ///
    /// `meta` is the record's `valueSchemaMetadata`, which Lambda's schema-registry integration sets: the value
    /// is then either already JSON (`EventRecordFormat: JSON`) or the bare datum (`SOURCE`) of schema `schemaId`.
    pub fn decode<'a>(
        &'a self,
        bytes: &'a [u8],
        meta: Option<&SchemaMetadata>,
    ) -> Result<Decoded<'a>, DecodeError> {
        let decoded = self.codec.value.decode(bytes, meta, &self.cx)?;
        match self.codec.envelope {
            Some(envelope) => envelope.unwrap(decoded),
            None => Ok(decoded),
        }
    }

    /// Decodes a record value from its base64 text into `buf` (reused from record to record), then into
    /// messages that borrow from `buf`.
    pub fn decode_base64<'a>(
        &'a self,
        text: &str,
        meta: Option<&SchemaMetadata>,
        buf: &'a mut Vec<u8>,
    ) -> Result<Decoded<'a>, DecodeError> {
        base64_decode_into(text, buf)?;
        let bytes: &'a Vec<u8> = buf;
        self.decode(bytes, meta)
    }

    /// The record key (base64, as the event carries it) as `codec.key` reads it, decoded into `buf`; `None`
    /// without a key (see [`KeyFormat`]).
    pub fn decode_key<'a>(
        &'a self,
        key: Option<&str>,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<Message<'a>>, DecodeError> {
        self.codec.key.decode(key, buf, &self.cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::path::Path;

    fn codec(toml_text: &str) -> Codec {
        let cfg: CodecConfig = toml::from_str(toml_text).unwrap();
        cfg.build(Some(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events"
        ))))
        .unwrap()
    }

    fn planet_datum() -> (Vec<u8>, Arc<Schema>) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/schemas/planet.avsc"
        ))
        .unwrap();
        let schema = Schema::parse_str(&text).unwrap();
        let value = apache_avro::types::Value::Record(vec![
            (
                "changeType".into(),
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            ),
            (
                "planetUuid".into(),
                apache_avro::types::Value::String("p1".into()),
            ),
            (
                "planetName".into(),
                apache_avro::types::Value::String("Arrakis".into()),
            ),
            ("published".into(), apache_avro::types::Value::Boolean(true)),
            (
                "discoveredBy".into(),
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            ),
            (
                "location".into(),
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            ),
        ]);
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        (bytes, Arc::new(schema))
    }

    fn meta(id: &str) -> SchemaMetadata {
        SchemaMetadata {
            schema_id: Some(id.into()),
            data_format: Some("AVRO".into()),
        }
    }

    #[test]
    fn schema_metadata_selects_bare_datum_or_json() {
        let (datum, schema) = planet_datum();
        let c = codec("value = \"auto\"\nraw_schema = \"schemas/planet.avsc\"\n");
        // SOURCE mode: the bare datum, with the configured raw schema (Glue ids are not numbers).
        let d = c.decode(&datum, Some(&meta("5a1c2d3e-glue"))).unwrap();
        assert_eq!(d.messages[0]["planetName"], "Arrakis");
        assert_eq!(d.schema.as_deref(), Some(&*schema));
        // JSON mode: Lambda already converted it; the schema still comes along for masking.
        let d = c
            .decode(
                br#"{"planetUuid":"p1","planetName":"Arrakis"}"#,
                Some(&meta("7")),
            )
            .unwrap();
        assert_eq!(d.messages[0]["planetUuid"], "p1");
        assert!(d.schema.is_some());
        // Without a schema a bare datum cannot be read.
        let plain = codec("value = \"auto\"\n");
        let err = plain.decode(&datum, Some(&meta("42"))).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("no schema for schemaId 42")),
            "{err:?}"
        );
        // avro-raw without metadata.
        let raw = codec("value = \"avro-raw\"\nraw_schema = \"schemas/planet.avsc\"\n");
        assert_eq!(
            raw.decode(&datum, None).unwrap().messages[0]["planetUuid"],
            "p1"
        );
    }

    #[test]
    fn kafkaesk_envelopes_are_unwrapped() {
        let c = codec("value = \"json\"\nenvelope = \"kafkaesk\"\n");
        let d = c
            .decode(br#"{"schema":"planet:3","data":{"planetUuid":"p1"}}"#, None)
            .unwrap();
        assert_eq!(
            d.messages[0],
            serde_json::json!({"planetUuid": "p1", "kafkaeskSchemaName": "planet", "kafkaeskSchemaVersion": "3"})
        );
        for bad in [
            &br#"{"data":{}}"#[..],
            br#"{"schema":"p:1","data":[1]}"#,
            br#"{"schema":"p:1"}"#,
        ] {
            let err = c.decode(bad, None).unwrap_err();
            assert!(
                matches!(&err, DecodeError::Permanent(m) if m.starts_with("kafkaesk envelope")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn config_problems_are_listed() {
        let cfg: CodecConfig =
            toml::from_str("value = \"avro-raw\"\nschemas = { x = \"nope.avsc\" }\nreader_schema = \"missing.avsc\"\n").unwrap();
        let problems = cfg.build(None).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("\"x\" is not a schema id"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("missing.avsc: cannot read"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("needs codec.raw_schema"))
        );
    }

    #[test]
    fn avro_and_string_keys() {
        let (datum, _) = planet_datum();
        let c = codec(
            "value = \"auto\"\nkey = \"avro\"\nschemas = { \"1\" = \"schemas/planet.avsc\" }\n",
        );
        let mut framed = vec![0, 0, 0, 0, 1];
        framed.extend_from_slice(&datum);
        let key = base64::engine::general_purpose::STANDARD.encode(&framed);
        assert_eq!(
            c.decode_key(Some(&key)).unwrap().unwrap()["planetUuid"],
            "p1"
        );
        let err = c.decode_key(Some("a2V5")).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("Confluent-framed")),
            "{err:?}"
        );
        assert_eq!(c.decode_key(None).unwrap(), None);
        let plain = codec("value = \"json\"\n");
        assert_eq!(
            plain.decode_key(Some("a2V5")).unwrap(),
            Some(Message::from("key"))
        );
        assert_eq!(
            plain.decode_key(Some("/w==")).unwrap(),
            None,
            "a non-UTF-8 string key is no key"
        );
    }

    #[test]
    fn json_keys() {
        let c = codec("value = \"auto\"\nkey = \"json\"\n");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            c.decode_key(Some(&b64(br#"{"id":7}"#))).unwrap().unwrap()["id"],
            7
        );
        let permanent = |bytes: &[u8]| match c.decode_key(Some(&b64(bytes))) {
            Err(DecodeError::Permanent(m)) => m,
            other => panic!("expected a permanent error, got {other:?}"),
        };
        assert_eq!(
            permanent(b"{\"id\":\"\xff\"}"),
            "key is not valid JSON: invalid UTF-8 at byte 7"
        );
        assert!(permanent(b"{\"id\":").starts_with("key is not valid JSON: EOF"));
    }
}
