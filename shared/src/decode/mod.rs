//! Record bytes → JSON messages: base64 first, then the configured codec (one file per format).
//!
//! A codec is chosen in config ([`CodecConfig`]), built once per function instance into a [`Codec`], and
//! then only decodes. Every error says whether the batch can go on without the record
//! ([`DecodeError::Permanent`]: the record is dead-lettered) or must be retried ([`DecodeError::Transient`]).

pub mod avro;
mod json;
pub mod protobuf;
pub mod registry;

pub(crate) use json::INJECTED_FIELDS;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use apache_avro::Schema;

use crate::event::{MskEvent, SchemaMetadata};
use crate::message::Message;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The `[codec]` section: which format record values are in, and the schemas Avro needs.
///
/// ```toml
/// [codec]
/// value = "auto"                              # json | avro-ocf | avro-confluent | avro-raw | auto (default)
/// schemas = { "1" = "schemas/planet.avsc" }   # Confluent schema id → .avsc file
/// raw_schema = "schemas/planet.avsc"          # the writer schema of avro-raw values
/// reader_schema = "schemas/planet-v2.avsc"    # optional: resolve every Avro value to this schema
/// max_inflated_mib = 256                      # what a batch's container files may inflate to, in total
/// max_decoded_mib = 512                       # … and decode to (estimated memory of their messages)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    #[serde(default)]
    pub value: Format,
    #[serde(default)]
    pub schemas: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub raw_schema: Option<PathBuf>,
    #[serde(default)]
    pub reader_schema: Option<PathBuf>,
    /// A Confluent-compatible schema registry for ids not in `schemas`.
    #[serde(default)]
    pub registry: Option<registry::RegistryConfig>,
    /// `"kafkaesk"`: values are `{"schema": "name:version", "data": {…}}`; the message is `data`, with
    /// `kafkaeskSchemaName` and `kafkaeskSchemaVersion` added for mappings.
    #[serde(default)]
    pub envelope: Option<Envelope>,
    /// How record keys are read: `string` (UTF-8 text, the default), `json`, or `avro` (Confluent-framed, schemas
    /// as for values). Mappings see the decoded key (`from = "key"`, `from = "key:$.id"`).
    #[serde(default)]
    pub key: KeyFormat,
    /// What the deflated Avro container files of one batch may inflate to, in total, in MiB (default
    /// [`avro::DEFAULT_MAX_INFLATED_MIB`]); a record past it is dead-lettered.
    #[serde(default)]
    pub max_inflated_mib: Option<u64>,
    /// The estimated memory of the messages the container files of one batch may decode to, in total, in MiB
    /// (default [`avro::DEFAULT_MAX_DECODED_MIB`]); a record past it is dead-lettered.
    #[serde(default)]
    pub max_decoded_mib: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFormat {
    #[default]
    String,
    Json,
    Avro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    Kafkaesk,
}

/// Unwraps kafkaesk's `{"schema": "name:version", "data": {…}}`.
fn unwrap_kafkaesk(mut decoded: Decoded<'_>) -> Result<Decoded<'_>, DecodeError> {
    let bad = |why: &str| DecodeError::Permanent(format!("kafkaesk envelope: {why}"));
    for message in &mut decoded.messages {
        let Message::Object(envelope) = message else {
            return Err(bad("the value is not an object"));
        };
        let Some(Message::String(schema)) = envelope.get("schema").cloned() else {
            return Err(bad("no \"schema\": \"name:version\""));
        };
        let Some(Message::Object(mut data)) = envelope.remove("data") else {
            return Err(bad("\"data\" is missing or not an object"));
        };
        let (name, version) = match schema {
            Cow::Borrowed(s) => {
                let (n, v) = s.rsplit_once(':').unwrap_or((s, ""));
                (Cow::Borrowed(n), Cow::Borrowed(v))
            }
            Cow::Owned(s) => {
                let (n, v) = s.rsplit_once(':').unwrap_or((s.as_str(), ""));
                (Cow::Owned(n.to_string()), Cow::Owned(v.to_string()))
            }
        };
        data.insert("kafkaeskSchemaName", Message::String(name));
        data.insert("kafkaeskSchemaVersion", Message::String(version));
        *message = Message::Object(data);
    }
    Ok(decoded)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Json,
    AvroOcf,
    AvroConfluent,
    AvroRaw,
    /// OCF magic → OCF; byte 0 and a known schema id → Confluent; else JSON.
    #[default]
    Auto,
}

impl CodecConfig {
    /// Reads the schemas (paths relative to `base`) and builds the codec, or lists every problem.
    pub fn build(&self, base: Option<&Path>) -> Result<Codec, Vec<String>> {
        let mut problems = Vec::new();
        let read = |what: &str, path: &Path| -> Result<Arc<avro::AvroSchema>, String> {
            let path = match base {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.to_path_buf(),
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("codec.{what}: {}: cannot read: {e}", path.display()))?;
            let schema = Schema::parse_str(&text).map_err(|e| {
                format!("codec.{what}: {}: not an Avro schema: {e}", path.display())
            })?;
            avro::AvroSchema::new(Arc::new(schema))
                .map(Arc::new)
                .map_err(|e| format!("codec.{what}: {}: {e}", path.display()))
        };
        let mut schemas = HashMap::new();
        for (id, path) in &self.schemas {
            match id.parse::<u32>() {
                Ok(n) => match read(&format!("schemas.{id}"), path) {
                    Ok(s) => {
                        schemas.insert(n, s);
                    }
                    Err(e) => problems.push(e),
                },
                Err(_) => problems.push(format!(
                    "codec.schemas: {id:?} is not a schema id (a number)"
                )),
            }
        }
        let mut optional = |what: &str, path: &Option<PathBuf>| {
            path.as_deref()
                .and_then(|p| read(what, p).map_err(|e| problems.push(e)).ok())
        };
        let raw = optional("raw_schema", &self.raw_schema);
        let reader = optional("reader_schema", &self.reader_schema);
        if self.value == Format::AvroRaw && self.raw_schema.is_none() {
            problems.push("codec.value = \"avro-raw\" needs codec.raw_schema".into());
        }
        let registry = self.registry.as_ref().and_then(|r| {
            registry::SchemaRegistry::new(r)
                .map_err(|e| problems.push(e))
                .ok()
        });
        if self.value == Format::AvroConfluent && self.schemas.is_empty() && self.registry.is_none()
        {
            problems.push(
                "codec.value = \"avro-confluent\" needs codec.schemas (schema id → .avsc) or codec.registry".into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match self.value {
            Format::Json if self.envelope.is_none() && self.key == KeyFormat::String => Codec::Json,
            format => Codec::Avro(Arc::new(AvroCodec {
                format,
                schemas,
                raw,
                reader,
                registry,
                fetched: RwLock::new(HashMap::new()),
                envelope: self.envelope,
                key: self.key,
                budget: avro::Budget::new(
                    avro::mib(
                        self.max_inflated_mib
                            .unwrap_or(avro::DEFAULT_MAX_INFLATED_MIB),
                    ),
                    avro::mib(
                        self.max_decoded_mib
                            .unwrap_or(avro::DEFAULT_MAX_DECODED_MIB),
                    ),
                ),
            })),
        })
    }
}

/// A codec ready to decode; cheap to share between batches.
#[derive(Debug, Clone)]
pub enum Codec {
    Json,
    Avro(Arc<AvroCodec>),
}

#[derive(Debug)]
pub struct AvroCodec {
    format: Format,
    /// Schemas are compiled once, when configured or fetched.
    schemas: HashMap<u32, Arc<avro::AvroSchema>>,
    raw: Option<Arc<avro::AvroSchema>>,
    reader: Option<Arc<avro::AvroSchema>>,
    registry: Option<registry::SchemaRegistry>,
    envelope: Option<Envelope>,
    key: KeyFormat,
    /// What each batch's container files may inflate and decode to.
    budget: avro::Budget,
    /// Registry answers for this instance, readable while decoding (which does not wait).
    fetched: RwLock<HashMap<u32, Result<Arc<avro::AvroSchema>, String>>>,
}

impl AvroCodec {
    /// The registry's answers so far, for one batch's decoder.
    fn fetched(&self) -> HashMap<u32, Result<Arc<avro::AvroSchema>, String>> {
        self.fetched
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A record's messages: one, or an Avro container file's several.
pub type Messages<'a> = smallvec::SmallVec<[Message<'a>; 1]>;

/// The messages of one record value, and the Avro schema that describes them (it classifies fields for
/// masking) when they were Avro.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub messages: Messages<'a>,
    pub schema: Option<Arc<Schema>>,
}

impl Decoded<'_> {
    pub fn into_owned(self) -> Decoded<'static> {
        Decoded {
            messages: self.messages.into_iter().map(Message::into_owned).collect(),
            schema: self.schema,
        }
    }
}

/// Decodes the records of one batch. It holds the schemas the registry answered before the batch (see
/// [`Codec::prefetch`]) for as long as the batch's messages borrow their field names from them.
#[derive(Debug)]
pub struct Decoder<'c> {
    codec: &'c Codec,
    fetched: HashMap<u32, Result<Arc<avro::AvroSchema>, String>>,
    /// What the batch's container files may still inflate and decode to (the decoder decodes through `&self`:
    /// its messages borrow from it).
    budget: std::cell::Cell<avro::Budget>,
}

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
    /// Fetches, before a batch is decoded, the registry schemas its Confluent-framed values name. A registry
    /// that cannot answer fails the batch (transient); an id it does not know dead-letters its records, until
    /// a later batch asks again (see [`registry`]).
    pub async fn prefetch(&self, event: &MskEvent<'_>) -> Result<(), DecodeError> {
        let Codec::Avro(avro) = self else {
            return Ok(());
        };
        let Some(registry) = &avro.registry else {
            return Ok(());
        };
        let values = matches!(avro.format, Format::AvroConfluent | Format::Auto);
        let keys = avro.key == KeyFormat::Avro;
        let mut wanted = std::collections::BTreeSet::new();
        let fields = event.records.iter().flat_map(|r| {
            [values.then_some(&r.value), keys.then_some(&r.key)]
                .into_iter()
                .flatten()
        });
        for field in fields {
            // The framing is in the first 5 bytes: 8 base64 characters hold 6.
            let Some(head) = field.as_deref().and_then(|v| v.get(..8.min(v.len()))) else {
                continue;
            };
            let Ok(bytes) =
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(head.trim_end_matches('='))
            else {
                continue;
            };
            if let Some((id, _)) = avro::split_confluent(&bytes) {
                wanted.insert(id);
            }
        }
        for id in wanted {
            // A schema is for good; a failure is asked of the registry again, which keeps it for a while only.
            let known = avro.schemas.contains_key(&id)
                || avro
                    .fetched
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&id)
                    .is_some_and(Result::is_ok);
            if known {
                continue;
            }
            let answer = match registry.schema(id).await {
                Ok(s) => avro::AvroSchema::new(s)
                    .map(Arc::new)
                    .map_err(|e| format!("schema id {id}: {e}")),
                Err(DecodeError::Permanent(e)) => Err(e),
                Err(transient) => return Err(transient),
            };
            avro.fetched
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, answer);
        }
        Ok(())
    }

    /// The decoder of one batch (after [`Codec::prefetch`]), with the batch's budget for container files.
    pub fn decoder(&self) -> Decoder<'_> {
        let fetched = match self {
            Codec::Avro(avro) if avro.registry.is_some() => avro.fetched(),
            _ => HashMap::new(),
        };
        let budget = match self {
            Codec::Avro(avro) => avro.budget,
            Codec::Json => avro::Budget::default_limits(),
        };
        Decoder {
            codec: self,
            fetched,
            budget: std::cell::Cell::new(budget),
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
    fn schema_by_id(&self, id: u32) -> Result<&Arc<avro::AvroSchema>, DecodeError> {
        let Codec::Avro(avro) = self.codec else {
            return Err(DecodeError::Permanent(format!("unknown schema id {id}")));
        };
        if let Some(s) = avro.schemas.get(&id) {
            return Ok(s);
        }
        match self.fetched.get(&id) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(DecodeError::Permanent(e.clone())),
            None => Err(DecodeError::Permanent(format!("unknown schema id {id}"))),
        }
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
        let decoded = self.decode_value(bytes, meta)?;
        match self.codec {
            Codec::Avro(avro) if avro.envelope == Some(Envelope::Kafkaesk) => {
                unwrap_kafkaesk(decoded)
            }
            _ => Ok(decoded),
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

    /// The record key (base64, as the event carries it) as the configured key format reads it, decoded into
    /// `buf`; `None` without a key. String keys that are not UTF-8 (or not base64) are `None` too; a key declared
    /// JSON or Avro that does not decode is an error of the record.
    pub fn decode_key<'a>(
        &'a self,
        key: Option<&str>,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<Message<'a>>, DecodeError> {
        let Some(key) = key else { return Ok(None) };
        let format = match self.codec {
            Codec::Avro(avro) => avro.key,
            Codec::Json => KeyFormat::String,
        };
        let bad = |e: DecodeError| DecodeError::Permanent(format!("key: {e}"));
        let decoded = base64_decode_into(key, buf);
        let bytes: &'a Vec<u8> = buf;
        match format {
            KeyFormat::String => Ok(decoded
                .ok()
                .and_then(|()| crate::text::utf8(bytes).ok())
                .map(Message::from)),
            KeyFormat::Json => {
                decoded.map_err(bad)?;
                json::parse(bytes, 0)
                    .map(Some)
                    .map_err(|e| DecodeError::Permanent(format!("key is not valid JSON: {e}")))
            }
            KeyFormat::Avro => {
                decoded.map_err(bad)?;
                let (id, body) = avro::split_confluent(bytes).ok_or_else(|| {
                    DecodeError::Permanent(
                        "key is not Confluent-framed Avro (magic byte 0, schema id, datum)".into(),
                    )
                })?;
                let schema = self.schema_by_id(id).map_err(bad)?;
                avro::decode_datum(body, schema, None)
                    .map(Some)
                    .map_err(bad)
            }
        }
    }

    fn decode_value<'a>(
        &'a self,
        bytes: &'a [u8],
        meta: Option<&SchemaMetadata>,
    ) -> Result<Decoded<'a>, DecodeError> {
        let json = |bytes| {
            json::decode(bytes).map(|v| Decoded {
                messages: smallvec::smallvec![v],
                schema: None,
            })
        };
        let avro = match self.codec {
            Codec::Json => return json(bytes),
            Codec::Avro(avro) => avro,
        };
        let reader = avro.reader.as_deref();
        if let Some(meta) = meta.filter(|m| m.data_format.is_some()) {
            let by_id = meta
                .schema_id
                .as_deref()
                .and_then(|id| id.parse::<u32>().ok());
            let known = by_id
                .and_then(|id| self.schema_by_id(id).ok())
                .or(avro.raw.as_ref());
            if bytes.first() == Some(&b'{') {
                // JSON mode: Lambda already converted the value; the schema, if known, still classifies it.
                let mut decoded = json(bytes)?;
                decoded.schema = known.map(|k| Arc::clone(k.schema()));
                return Ok(decoded);
            }
            let writer = known.ok_or_else(|| {
                DecodeError::Permanent(format!(
                    "no schema for schemaId {}: add it to codec.schemas or set codec.raw_schema",
                    meta.schema_id.as_deref().unwrap_or("(none)")
                ))
            })?;
            return avro::decode_datum(bytes, writer, reader).map(|v| Decoded {
                messages: smallvec::smallvec![v],
                schema: Some(Arc::clone(avro.reader.as_ref().unwrap_or(writer).schema())),
            });
        }
        let ocf = |bytes| {
            let mut budget = self.budget.get();
            let decoded = avro::decode_ocf(bytes, reader, &mut budget);
            self.budget.set(budget);
            decoded.map(|(writer, messages)| Decoded {
                schema: Some(
                    avro.reader
                        .as_ref()
                        .map_or(writer, |r| Arc::clone(r.schema())),
                ),
                messages: Messages::from_vec(messages),
            })
        };
        let datum = |bytes: &'a [u8], writer: &'a Arc<avro::AvroSchema>| {
            avro::decode_datum(bytes, writer, reader).map(|v| Decoded {
                messages: smallvec::smallvec![v],
                schema: Some(Arc::clone(avro.reader.as_ref().unwrap_or(writer).schema())),
            })
        };
        let confluent = |bytes: &'a [u8]| match avro::split_confluent(bytes) {
            None => Err(DecodeError::Permanent(
                "value is not in the Confluent wire format (magic byte 0, 4-byte schema id, datum)"
                    .into(),
            )),
            Some((id, body)) => datum(body, self.schema_by_id(id)?),
        };
        match avro.format {
            Format::Json => json(bytes),
            Format::AvroOcf => ocf(bytes),
            Format::AvroConfluent => confluent(bytes),
            Format::AvroRaw => match &avro.raw {
                Some(writer) => datum(bytes, writer),
                None => Err(DecodeError::Permanent("no raw_schema configured".into())),
            },
            Format::Auto if bytes.starts_with(avro::OCF_MAGIC) => ocf(bytes),
            // JSON text never starts with a zero byte: this is Confluent framing, known id or not.
            Format::Auto if avro::split_confluent(bytes).is_some() => confluent(bytes),
            Format::Auto => json(bytes),
        }
    }
}

/// The standard alphabet with padding is what Lambda sends; a producer's unpadded value is accepted too.
///
/// Every record's value goes through here, so the padded form, which is nearly all of them, is decoded with
/// SIMD (perf on a 6 MB JSON batch: the base64 crate's decoder took 9 % of the time, base64-simd's 1.7 %).
/// Anything it refuses goes to the base64 crate, which decides the error (or accepts the unpadded form); a
/// test checks both agree on what is valid.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    base64_decode_into(text, &mut out)?;
    Ok(out)
}

/// [`base64_decode`] into `out` (cleared first), so that a batch's loop reuses one buffer.
pub fn base64_decode_into(text: &str, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    out.clear();
    if base64_simd::STANDARD
        .decode_append(text.as_bytes(), out)
        .is_ok()
    {
        return Ok(());
    }
    out.clear();
    STANDARD
        .decode_vec(text, out)
        .or_else(|first| {
            out.clear();
            STANDARD_NO_PAD.decode_vec(text, out).map_err(|_| first)
        })
        .map_err(|e| DecodeError::Permanent(format!("value is not valid base64: {e}")))
}

/// The record key as text, when it is UTF-8 (the common string key); `None` otherwise.
pub fn key_text(base64_key: Option<&str>) -> Option<String> {
    let bytes = base64_decode(base64_key?).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_errors_are_permanent_and_say_so() {
        let err = base64_decode("not base64!").unwrap_err();
        assert!(matches!(&err, DecodeError::Permanent(m) if m.contains("not valid base64")));
        assert_eq!(base64_decode("e30").unwrap(), b"{}");
        assert_eq!(base64_decode("e30=").unwrap(), b"{}");
    }

    /// The SIMD fast path must accept exactly what the base64 crate accepts, with the same bytes.
    #[test]
    fn simd_base64_agrees_with_the_base64_crate() {
        use base64::engine::general_purpose::STANDARD;
        let mut cases: Vec<String> = vec![
            "".into(),
            "=".into(),
            "==".into(),
            "e30=".into(),
            "e30".into(),
            "e3==".into(),
            "e31=".into(), // non-zero trailing bits
            "QR==".into(), // non-zero trailing bits
            "QQ==".into(),
            "QQ=".into(),
            "QQ===".into(),
            "Q===".into(),
            "e30=e30=".into(), // padding inside
            " e30=".into(),
            "e3 0=".into(),
            "e30=\n".into(),
            "e-_=".into(), // URL-safe alphabet
            "e30\u{e9}".into(),
        ];
        // Every length and tail around the SIMD block sizes.
        for n in 0..200usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = STANDARD.encode(&bytes);
            cases.push(text.clone());
            if let Some(last) = text.trim_end_matches('=').chars().last() {
                let mut bent = text.trim_end_matches('=').to_string();
                bent.pop();
                // The neighbouring symbol often leaves non-zero trailing bits.
                let next = if last == 'A' { 'B' } else { 'A' };
                bent.push(next);
                bent.push_str(&text[text.trim_end_matches('=').len()..]);
                cases.push(bent);
            }
            cases.push(format!("{text}*"));
            cases.push(format!("*{text}"));
        }
        for case in &cases {
            let simd = base64_simd::STANDARD.decode_to_vec(case).ok();
            let crate_ = STANDARD.decode(case).ok();
            assert_eq!(simd, crate_, "{case:?}");
        }
    }

    #[test]
    fn key_text_is_utf8_or_none() {
        assert_eq!(key_text(Some("a2V5")).as_deref(), Some("key"));
        assert_eq!(key_text(Some("/w==")), None);
        assert_eq!(key_text(None), None);
    }

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
