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
//! - `envelope` (kafkaesk's, and `debezium`: Debezium's change events), `key` (record keys) and `b64`
//!   (base64): the pieces around a value's format.
//! - [`avro`]: the Avro binary decoder the Avro formats share.
//! - [`memory`]: what a batch may hold (its budgets, derived from the function's memory under Lambda) and
//!   what a message or row costs on its way to the statement.

pub mod avro;
mod b64;
mod config;
mod debezium;
mod envelope;
mod format;
pub mod glue;
mod key;
pub mod memory;
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
pub use registry::RegistryConfig;
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
    /// The configuration is wrong outside the record (a registry secret without a password): the batch fails
    /// as misconfigured, and retries fail alike until a person fixes it.
    #[error("{0}")]
    Misconfigured(String),
}

impl Codec {
    /// Fetches, before a batch is decoded, the registry schemas its Confluent-framed values (and Avro keys)
    /// name. A registry that cannot answer fails the batch (transient); an id it does not know dead-letters its
    /// records, until a later batch asks again (see [`registry`]).
    pub async fn prefetch(&self, event: &MskEvent<'_>) -> Result<(), DecodeError> {
        if self.schemas.glue.config().is_some() {
            // Glue-framed values, whatever codec.value says: Lambda's SOURCE mode names them in metadata.
            let wanted: BTreeSet<glue::VersionId> = event
                .records
                .iter()
                .filter_map(|r| b64::head(r.value.as_deref()?))
                .filter_map(|head| format::glue::split(&head).map(|(_, id, _)| id))
                .collect();
            self.schemas.glue.fetch(wanted).await?;
        }
        if !self.schemas.has_registry() {
            return Ok(());
        }
        let values = self.value.confluent();
        let keys = matches!(self.key, KeyFormat::Avro | KeyFormat::Protobuf);
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

    /// `codec.envelope`.
    pub fn envelope(&self) -> Option<Envelope> {
        self.envelope
    }

    /// `codec.registry.password_secret`, for the runtime to connect a [`registry::CredentialsSource`].
    pub fn registry_password_secret(&self) -> Option<&str> {
        self.schemas.registry()?.password_secret()
    }

    /// Connects what reads `codec.registry.password_secret` (once; `false` when one is connected already, or
    /// the codec has no registry). Without one, a request to the registry fails as misconfigured.
    pub fn connect_registry_credentials(
        &self,
        source: Arc<dyn registry::CredentialsSource>,
    ) -> bool {
        self.schemas.registry().is_some_and(|r| r.connect(source))
    }

    /// The AWS Glue settings (`codec.glue`), for the runtime to connect a [`glue::GlueSource`].
    pub fn glue_config(&self) -> Option<&glue::GlueConfig> {
        self.schemas.glue.config()
    }

    /// Connects where Glue schema versions are fetched from (once; `false` when one is connected already).
    /// Without one, a batch that needs a version fetched fails (transient) saying so.
    pub fn connect_glue(&self, source: Arc<dyn glue::GlueSource>) -> bool {
        self.schemas.glue.connect(source)
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

impl<'c> Decoder<'c> {
    /// Another decoder of the same batch, for another thread: the same schemas, and its own fresh copy of
    /// the batch's budget (see [`avro::Budget::fits_together`]).
    pub fn fresh(&self) -> Decoder<'c> {
        Decoder {
            codec: self.codec,
            cx: Context {
                schemas: self.cx.schemas.clone(),
                budget: Cell::new(self.codec.budget),
            },
        }
    }

    /// What this decoder's budget has drawn so far.
    pub fn budget(&self) -> avro::Budget {
        self.cx.budget.get()
    }

    /// Whether mapping `message` fits in what the batch may still hold (`codec.max_decoded_mib`): a `json`
    /// column of the whole message costs its tree and its text ([`memory::json_cost_of`]). Nothing is charged
    /// yet: the row is, once made ([`Decoder::charge_row`]). The reason, when not, is the dead letter's.
    pub(crate) fn room_for(&self, message: &Message<'_>) -> Result<(), String> {
        let budget = self.cx.budget.get();
        let cost = memory::json_cost_of(message);
        if cost > budget.decoded_left() {
            return Err(budget.row_error("the message", cost));
        }
        Ok(())
    }

    /// Charges a planned row (or key) against what the batch may hold, for each of its copies on the way to
    /// the statement ([`memory::ROW_COPIES`]); a row that would go past it is refused, with the reason.
    pub(crate) fn charge_row(&self, row: &[sea_orm::sea_query::Value]) -> Result<(), String> {
        let mut budget = self.cx.budget.get();
        let cost = memory::row_cost(row).saturating_mul(memory::ROW_COPIES);
        if cost > budget.decoded_left() {
            return Err(budget.row_error("the row", cost));
        }
        budget.add_decoded(cost);
        self.cx.budget.set(budget);
        Ok(())
    }

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
        let key = self.codec.key.decode(key, buf, &self.cx)?;
        Ok(match self.codec.envelope {
            // Debezium's keys come in JsonConverter's wrapper too when it writes schemas.
            Some(Envelope::Debezium) => key.map(debezium::unwrap_key),
            _ => key,
        })
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

    fn planet_proto() -> prost_reflect::MessageDescriptor {
        let (pool, _) = protobuf::compile(&[Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/schemas/planet.proto"
        ))
        .to_path_buf()])
        .unwrap();
        pool.get_message_by_name("servicea.Planet").unwrap()
    }

    /// A servicea.Planet, encoded by prost-reflect.
    fn planet_message(uuid: &str) -> Vec<u8> {
        use prost::Message as _;
        use prost_reflect::{DynamicMessage, Value};
        let desc = planet_proto();
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("planet_uuid", Value::String(uuid.into()));
        m.set_field_by_name("planet_name", Value::String("Arrakis".into()));
        m.set_field_by_name("population", Value::I64(-9_007_199_254_740_993));
        let loc_desc = desc.get_field_by_name("location").unwrap();
        let prost_reflect::Kind::Message(loc_desc) = loc_desc.kind() else {
            panic!("location is a message")
        };
        let mut loc = DynamicMessage::new(loc_desc);
        loc.set_field_by_name("galaxy", Value::String("Known".into()));
        m.set_field_by_name("location", Value::Message(loc));
        m.encode_to_vec()
    }

    fn confluent(id: u32, indexes: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(indexes);
        out.extend_from_slice(body);
        out
    }

    fn permanent(c: &Codec, bytes: &[u8]) -> String {
        match c.decode(bytes, None) {
            Err(DecodeError::Permanent(m)) => m,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn protobuf_values_bare_and_confluent_framed() {
        let c = codec(
            "value = \"protobuf\"\nproto = [\"schemas/planet.proto\"]\nmessage = \"servicea.Planet\"\n\
             schemas = { \"7\" = \"schemas/planet.proto\" }\n",
        );
        let body = planet_message("p1");
        let expected = serde_json::json!({
            "planetUuid": "p1", "planetName": "Arrakis", "published": false,
            "location": {"galaxy": "Known", "sector": ""}, "population": -9_007_199_254_740_993_i64
        });
        let d = c.decode(&body, None).unwrap();
        assert_eq!(d.messages[0], expected);
        assert!(d.schema.is_none());
        // Confluent: indexes [0] written as the count 0, and as the list [0] (count 1, index 0).
        assert_eq!(
            c.decode(&confluent(7, &[0], &body), None).unwrap().messages[0],
            expected
        );
        assert_eq!(
            c.decode(&confluent(7, &[2, 0], &body), None)
                .unwrap()
                .messages[0],
            expected
        );
        // [0, 0]: Planet.Location.
        let loc = c
            .decode(&confluent(7, &[4, 0, 0], &[0x0a, 1, b'G']), None)
            .unwrap();
        assert_eq!(
            loc.messages[0],
            serde_json::json!({"galaxy": "G", "sector": ""})
        );
        assert!(permanent(&c, &confluent(8, &[0], &body)).contains("unknown schema id 8"));
        assert!(permanent(&c, &confluent(7, &[2, 4], &body)).contains("unknown message index [2]"));
        assert!(permanent(&c, &confluent(7, &[], &[])).contains("message-index list is truncated"));
        // A string field cut short, and a varint where a string is due.
        let m = permanent(&c, &[0x12, 5, b'p']);
        assert!(
            m.contains("servicea.Planet") && m.contains("buffer underflow"),
            "{m}"
        );
        let m = permanent(&c, &[0x10, 1]);
        assert!(m.contains("wire type"), "{m}");
        // Without codec.message, only framed values decode.
        let framed_only =
            codec("value = \"protobuf\"\nschemas = { \"7\" = \"schemas/planet.proto\" }\n");
        assert!(permanent(&framed_only, &body).contains("codec.message is not set"));
        assert_eq!(
            framed_only
                .decode(&confluent(7, &[0], &body), None)
                .unwrap()
                .messages[0],
            expected
        );
    }

    #[test]
    fn protobuf_field_names_as_declared_on_request() {
        let c = codec(
            "value = \"protobuf\"\nproto = [\"schemas/planet.proto\"]\nmessage = \"servicea.Planet\"\n\
             proto_field_names = true\n",
        );
        let d = c.decode(&planet_message("p1"), None).unwrap();
        assert_eq!(d.messages[0]["planet_uuid"], "p1");
        assert!(d.messages[0].get("planetUuid").is_none());
    }

    #[test]
    fn auto_tells_confluent_protobuf_from_confluent_avro() {
        let (datum, _) = planet_datum();
        let c = codec(
            "value = \"auto\"\nschemas = { \"1\" = \"schemas/planet.avsc\", \"7\" = \"schemas/planet.proto\" }\n",
        );
        let avro = c.decode(&confluent(1, &[], &datum), None).unwrap();
        assert_eq!(avro.messages[0]["planetName"], "Arrakis");
        assert!(avro.schema.is_some());
        let proto = c
            .decode(&confluent(7, &[0], &planet_message("p9")), None)
            .unwrap();
        assert_eq!(proto.messages[0]["planetUuid"], "p9");
        assert_eq!(c.decode(br#"{"a":1}"#, None).unwrap().messages[0]["a"], 1);
    }

    #[test]
    fn protobuf_keys() {
        let c = codec(
            "value = \"json\"\nkey = \"protobuf\"\nproto = [\"schemas/planet.proto\"]\n\
             key_message = \"servicea.Planet.Location\"\nschemas = { \"7\" = \"schemas/planet.proto\" }\n",
        );
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let key = c.decode_key(Some(&b64(&[0x0a, 1, b'G']))).unwrap().unwrap();
        assert_eq!(key, serde_json::json!({"galaxy": "G", "sector": ""}));
        let framed = c
            .decode_key(Some(&b64(&confluent(7, &[0], &planet_message("k1")))))
            .unwrap()
            .unwrap();
        assert_eq!(framed["planetUuid"], "k1");
        let err = c.decode_key(Some(&b64(&[0x0a, 9]))).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.starts_with("key: ") && m.contains("buffer underflow")),
            "{err:?}"
        );
    }

    #[test]
    fn protobuf_config_problems_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.proto"),
            "syntax = \"proto3\";\n\nmessage A {\n  int32 = 1;\n}\n",
        )
        .unwrap();
        let build = |text: &str| {
            toml::from_str::<CodecConfig>(text)
                .unwrap()
                .build(Some(dir.path()))
                .unwrap_err()
        };
        let problems = build("value = \"protobuf\"\nproto = [\"bad.proto\"]\nmessage = \"A\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("codec.proto: bad.proto:4:"),
            "{problems:?}"
        );
        let problems = build("value = \"protobuf\"\n");
        assert!(problems[0].contains("needs codec.message"), "{problems:?}");
        let problems = build("value = \"protobuf\"\nmessage = \"A\"\n");
        assert!(problems[0].contains("needs codec.proto"), "{problems:?}");
        let c: CodecConfig = toml::from_str(
            "value = \"protobuf\"\nproto = [\"schemas/planet.proto\"]\nmessage = \"servicea.Moon\"\n",
        )
        .unwrap();
        let problems = c
            .build(Some(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../events"
            ))))
            .unwrap_err();
        assert!(
            problems[0].contains("no message type \"servicea.Moon\"")
                && problems[0].contains("servicea.Planet"),
            "{problems:?}"
        );
    }

    const GLUE_AVRO: &str = "b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const GLUE_PROTO: &str = "c0ffee00-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const GLUE_JSON: &str = "d00d0000-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn glue_framed(uuid: &str, compression: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![3, compression];
        out.extend_from_slice(&glue::parse_uuid(uuid).unwrap());
        if compression == 5 {
            out.extend(miniz_oxide::deflate::compress_to_vec_zlib(payload, 6));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    fn glue_codec(value: &str, extra: &str) -> Codec {
        codec(&format!(
            "value = \"{value}\"\n{extra}glue_schemas = {{ \"{GLUE_AVRO}\" = \"schemas/planet.avsc\", \
             \"{GLUE_PROTO}\" = \"schemas/planet.proto\", \"{GLUE_JSON}\" = \"schemas/planet.schema.json\" }}\n"
        ))
    }

    #[test]
    fn glue_framed_avro_json_and_protobuf_compressed_or_not() {
        let (datum, schema) = planet_datum();
        // Glue numbers the file's message types sorted by full name: Planet 0, Planet.Location 1.
        let mut proto = vec![0];
        proto.extend(planet_message("p2"));
        let json = br#"{"planetUuid":"p3","planetName":"Caladan"}"#;
        for value in ["glue", "auto"] {
            let c = glue_codec(value, "");
            for compression in [0, 5] {
                let d = c
                    .decode(&glue_framed(GLUE_AVRO, compression, &datum), None)
                    .unwrap();
                assert_eq!(d.messages[0]["planetName"], "Arrakis");
                assert_eq!(
                    d.schema.as_deref(),
                    Some(&*schema),
                    "Avro values keep their schema"
                );
                let d = c
                    .decode(&glue_framed(GLUE_PROTO, compression, &proto), None)
                    .unwrap();
                assert_eq!(d.messages[0]["planetUuid"], "p2");
                assert_eq!(d.messages[0]["population"], -9_007_199_254_740_993_i64);
                let d = c
                    .decode(&glue_framed(GLUE_JSON, compression, json), None)
                    .unwrap();
                assert_eq!(d.messages[0]["planetName"], "Caladan");
            }
            let loc = c
                .decode(&glue_framed(GLUE_PROTO, 0, &[1, 0x0a, 1, b'G']), None)
                .unwrap();
            assert_eq!(loc.messages[0]["galaxy"], "G");
            let unknown = "00000000-0000-0000-0000-000000000001";
            let m = permanent(&c, &glue_framed(unknown, 0, &datum));
            assert!(
                m.contains("unknown Glue schema version 00000000-0000-0000-0000-000000000001"),
                "{m}"
            );
            assert!(
                permanent(&c, &glue_framed(GLUE_AVRO, 9, &datum)).contains("compression byte 9")
            );
            assert!(
                permanent(&c, &glue_framed(GLUE_PROTO, 0, &[7]))
                    .contains("unknown message index 7")
            );
            assert!(
                permanent(&c, &glue_framed(GLUE_PROTO, 0, &[0x80])).contains("index is truncated")
            );
            let mut corrupt = glue_framed(GLUE_AVRO, 5, &datum);
            corrupt.truncate(corrupt.len() - 4);
            corrupt.push(0xff);
            assert!(permanent(&c, &corrupt).contains("deflate data is corrupt"));
        }
        assert!(
            permanent(&glue_codec("glue", ""), b"{}").contains("not in AWS Glue's wire format")
        );
    }

    #[test]
    fn glue_zlib_inflates_within_the_batch_budget() {
        let c = glue_codec("glue", "max_inflated_mib = 1\n");
        // 2 MiB of spaces after a JSON object: valid JSON, 2 KiB compressed.
        let mut json = br#"{"planetUuid":"p3"}"#.to_vec();
        json.extend(std::iter::repeat_n(b' ', 2 << 20));
        let bomb = glue_framed(GLUE_JSON, 5, &json);
        assert!(bomb.len() < 8 << 10);
        let m = permanent(&c, &bomb);
        assert!(m.contains("codec.max_inflated_mib = 1 MiB"), "{m}");
        // Half a MiB twice in one batch: the second is over.
        let half = {
            let mut j = br#"{"a":1}"#.to_vec();
            j.extend(std::iter::repeat_n(b' ', 600 << 10));
            glue_framed(GLUE_JSON, 5, &j)
        };
        let decoder = c.decoder();
        assert!(decoder.decode(&half, None).is_ok());
        assert!(matches!(
            decoder.decode(&half, None),
            Err(DecodeError::Permanent(_))
        ));
    }

    #[test]
    fn glue_source_mode_metadata_and_config_problems() {
        let (datum, _) = planet_datum();
        let c = glue_codec("auto", "");
        let meta = SchemaMetadata {
            schema_id: Some(GLUE_AVRO.into()),
            data_format: Some("AVRO".into()),
        };
        let d = c
            .decode(&glue_framed(GLUE_AVRO, 0, &datum), Some(&meta))
            .unwrap();
        assert_eq!(d.messages[0]["planetUuid"], "p1");
        // Lambda's SOURCE mode with a Protobuf schema: the message as produced.
        let proto = codec(
            "value = \"auto\"\nproto = [\"schemas/planet.proto\"]\nmessage = \"servicea.Planet\"\n",
        );
        let meta = SchemaMetadata {
            schema_id: Some("12".into()),
            data_format: Some("PROTOBUF".into()),
        };
        let d = proto.decode(&planet_message("p5"), Some(&meta)).unwrap();
        assert_eq!(d.messages[0]["planetUuid"], "p5");
        let problems = toml::from_str::<CodecConfig>(
            "value = \"glue\"\nglue_schemas = { \"nope\" = \"x.avsc\" }\n",
        )
        .unwrap()
        .build(None)
        .unwrap_err();
        assert!(
            problems[0].contains("\"nope\" is not a schema version id"),
            "{problems:?}"
        );
        let problems = toml::from_str::<CodecConfig>("value = \"glue\"\n")
            .unwrap()
            .build(None)
            .unwrap_err();
        assert!(
            problems[0].contains("needs codec.glue_schemas"),
            "{problems:?}"
        );
    }

    /// A fetched version comes from the connected source once; an unknown one is permanent; a source that
    /// fails is transient; without a source the batch says the build cannot reach Glue.
    #[tokio::test]
    async fn glue_versions_are_fetched_once_per_instance() {
        use std::sync::Mutex;
        #[derive(Debug, Default)]
        struct Fake {
            asked: Mutex<Vec<String>>,
        }
        impl glue::GlueSource for Fake {
            fn schema_version<'a>(
                &'a self,
                id: &'a str,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<glue::GlueSchemaVersion, DecodeError>>
                        + Send
                        + 'a,
                >,
            > {
                self.asked.lock().unwrap().push(id.to_string());
                Box::pin(async move {
                    match id {
                        GLUE_JSON => Ok(glue::GlueSchemaVersion {
                            data_format: "JSON".into(),
                            definition: "{}".into(),
                            schema_arn: Some("arn:aws:glue:eu-west-1:1:schema/reg/planet".into()),
                        }),
                        GLUE_AVRO => Err(DecodeError::Transient("Glue: throttled".into())),
                        _ => Err(DecodeError::Permanent(format!("no schema version {id}"))),
                    }
                })
            }
        }
        let c = codec("value = \"auto\"\nglue = { registry = \"reg\" }\n");
        let event = |values: &[Vec<u8>]| {
            let records: Vec<serde_json::Value> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::json!({"topic": "t", "partition": 0, "offset": i, "timestamp": 0,
                        "value": base64::engine::general_purpose::STANDARD.encode(v)})
                })
                .collect();
            serde_json::json!({"eventSource": "aws:kafka", "records": {"t-0": records}}).to_string()
        };
        let json = glue_framed(GLUE_JSON, 0, br#"{"a":1}"#);
        let text = event(&[json.clone(), json.clone()]);
        let parsed = MskEvent::parse(&text).unwrap();
        let err = c.prefetch(&parsed).await.unwrap_err();
        assert!(
            matches!(&err, DecodeError::Transient(m) if m.contains("feature \"aws\"")),
            "{err:?}"
        );
        let fake = Arc::new(Fake::default());
        assert!(c.connect_glue(fake.clone()));
        c.prefetch(&parsed).await.unwrap();
        c.prefetch(&parsed).await.unwrap();
        assert_eq!(
            fake.asked.lock().unwrap().len(),
            1,
            "once per id per instance"
        );
        assert_eq!(c.decode(&json, None).unwrap().messages[0]["a"], 1);
        let unknown = glue_framed(GLUE_PROTO, 0, &[0]);
        let text = event(std::slice::from_ref(&unknown));
        c.prefetch(&MskEvent::parse(&text).unwrap()).await.unwrap();
        assert!(permanent(&c, &unknown).contains("no schema version"));
        let text = event(&[glue_framed(GLUE_AVRO, 0, &[0])]);
        let err = c
            .prefetch(&MskEvent::parse(&text).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DecodeError::Transient(m) if m.contains("throttled")),
            "{err:?}"
        );
    }

    /// Fields without presence are in the tree with their defaults: two bytes (an empty nested message) can
    /// be a wide object. Protobuf values draw on the batch's max_decoded_mib.
    #[test]
    fn protobuf_defaults_cannot_inflate_past_the_batch_budget() {
        let dir = tempfile::tempdir().unwrap();
        let fields: String = (1..=50)
            .map(|i| format!("  int64 field_number_{i} = {i};\n"))
            .collect();
        std::fs::write(
            dir.path().join("wide.proto"),
            format!("syntax = \"proto3\";\nmessage Wide {{\n{fields}}}\nmessage Many {{ repeated Wide items = 1; }}\n"),
        )
        .unwrap();
        let c = toml::from_str::<CodecConfig>(
            "value = \"protobuf\"\nproto = [\"wide.proto\"]\nmessage = \"Many\"\nmax_decoded_mib = 1\n",
        )
        .unwrap()
        .build(Some(dir.path()))
        .unwrap();
        // 2 000 empty items (4 KB): 100 000 fields in the tree, several MiB.
        let bomb: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 2_000).flatten().collect();
        let m = permanent(&c, &bomb);
        assert!(m.contains("codec.max_decoded_mib = 1 MiB"), "{m}");
        // A few items decode, and draw on the same batch budget until it is spent.
        let few: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 50).flatten().collect();
        let decoder = c.decoder();
        let d = decoder.decode(&few, None).unwrap();
        assert_eq!(d.messages[0]["items"].as_array().unwrap().len(), 50);
        assert_eq!(d.messages[0]["items"][0]["fieldNumber50"], 0);
        let mut refused = false;
        for _ in 0..100 {
            if decoder.decode(&few, None).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the batch's budget is shared by its values");
    }
}
