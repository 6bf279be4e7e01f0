//! The AWS Glue Schema Registry's schemas: by schema version id (a UUID), from local files
//! (`codec.glue_schemas`) or fetched with GetSchemaVersion (`codec.glue`), once per id per instance.
//!
//! The fetch itself is a [`GlueSource`], which the runtime connects ([`super::Codec::connect_glue`];
//! `run::glue` with the AWS SDK): decoding never imports AWS. A version id the registry does not know is
//! permanent (its records are dead-lettered) and asked again after `not_found_ttl_ms`; a registry that cannot
//! answer (down, throttling, access denied) is transient: the batch is retried. The wire format is in
//! [`super::format::glue`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prost_reflect::MessageDescriptor;
use serde::{Deserialize, Serialize};

use super::avro::AvroSchema;
use super::schemas::{Compiled, is_proto};
use super::{DecodeError, SchemaFiles, protobuf};

/// `codec.glue`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlueConfig {
    /// The registry's name: a schema version of another registry is not used.
    #[schemars(example = &"my-registry")]
    pub registry: String,
    /// The AWS region (default: the environment's, as Lambda sets it).
    #[serde(default)]
    #[schemars(example = &"eu-west-1")]
    pub region: Option<String>,
    /// Another endpoint than AWS's (a local emulator).
    #[serde(default)]
    #[schemars(example = &"http://127.0.0.1:5000")]
    pub endpoint: Option<String>,
    /// How long "no such schema version" stands before a later batch asks again, in ms.
    #[serde(default = "default_not_found_ttl_ms")]
    pub not_found_ttl_ms: u64,
}

fn default_not_found_ttl_ms() -> u64 {
    60_000
}

/// A schema version as GetSchemaVersion returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlueSchemaVersion {
    /// `AVRO`, `JSON` or `PROTOBUF`.
    pub data_format: String,
    /// The schema's text: Avro JSON, a JSON Schema, or a .proto file.
    pub definition: String,
    /// `arn:aws:glue:<region>:<account>:schema/<registry>/<schema>`, when the answer has it.
    pub schema_arn: Option<String>,
}

/// Fetches schema versions by id. `Err(Permanent)` only when the registry says there is no such version;
/// anything else that fails is `Err(Transient)`.
pub trait GlueSource: Send + Sync + std::fmt::Debug {
    /// The schema version `version_id` (a UUID, hyphenated).
    fn schema_version<'a>(
        &'a self,
        version_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<GlueSchemaVersion, DecodeError>> + Send + 'a>>;
}

/// A Glue schema, compiled.
#[derive(Debug, Clone)]
pub(crate) enum GlueSchema {
    Avro(Arc<AvroSchema>),
    /// A JSON Schema: the payload is JSON text (the schema is not checked, as for plain JSON values).
    Json,
    /// The file's message types in the order Glue's serializer numbers them ([`protobuf::glue_messages`]).
    Protobuf(Arc<Vec<MessageDescriptor>>),
}

/// A schema version id, as its 16 bytes.
pub type VersionId = [u8; 16];

/// `8-4-4-4-12` lower-case hex.
pub fn format_uuid(id: &VersionId) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A UUID's 16 bytes, with or without hyphens, any case.
pub fn parse_uuid(text: &str) -> Option<VersionId> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// A fetched answer: the schema, or a permanent failure and when it expires.
type Answer = Result<GlueSchema, (String, Instant)>;

/// The Glue schemas of a codec.
#[derive(Debug, Default)]
pub(crate) struct GlueSchemas {
    local: HashMap<VersionId, GlueSchema>,
    config: Option<GlueConfig>,
    source: OnceLock<Arc<dyn GlueSource>>,
    fetched: RwLock<HashMap<VersionId, Answer>>,
}

impl GlueSchemas {
    /// The local schema files (their .proto files compiled already, in `compiled`); problems to `problems`.
    pub(crate) fn build(
        local: &BTreeMap<String, std::path::PathBuf>,
        config: Option<&GlueConfig>,
        files: &mut SchemaFiles,
        compiled: Option<&Compiled>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut out = HashMap::new();
        for (id, path) in local {
            let Some(uuid) = parse_uuid(id) else {
                problems.push(format!(
                    "codec.glue_schemas: {id:?} is not a schema version id (a UUID)"
                ));
                continue;
            };
            let what = format!("codec.glue_schemas.{id}");
            let schema = if is_proto(path) {
                // A .proto file that did not compile is in `problems` already.
                compiled
                    .and_then(|c| c.file(files, path))
                    .map(|f| GlueSchema::Protobuf(Arc::new(protobuf::glue_messages(&f))))
            } else if is_json(path) {
                let resolved = files.resolve(path);
                match std::fs::read_to_string(&resolved)
                    .map(|t| serde_json::from_str::<serde_json::Value>(&t))
                {
                    Ok(Ok(_)) => Some(GlueSchema::Json),
                    Ok(Err(e)) => {
                        problems.push(format!("{what}: {}: not JSON: {e}", resolved.display()));
                        None
                    }
                    Err(e) => {
                        problems.push(format!("{what}: {}: cannot read: {e}", resolved.display()));
                        None
                    }
                }
            } else {
                let (resolved, schema) = files.get(path);
                match schema.and_then(AvroSchema::new) {
                    Ok(s) => Some(GlueSchema::Avro(Arc::new(s))),
                    Err(e) => {
                        problems.push(format!("{what}: {}: {e}", resolved.display()));
                        None
                    }
                }
            };
            if let Some(s) = schema {
                out.insert(uuid, s);
            }
        }
        if let Some(cfg) = config
            && cfg.registry.trim().is_empty()
        {
            problems.push("codec.glue.registry is empty".into());
        }
        Self {
            local: out,
            config: config.cloned(),
            source: OnceLock::new(),
            fetched: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> Option<&GlueConfig> {
        self.config.as_ref()
    }

    pub(crate) fn connect(&self, source: Arc<dyn GlueSource>) -> bool {
        self.source.set(source).is_ok()
    }

    /// Fetches the version ids in `wanted` that are not known yet (see the module doc).
    pub(crate) async fn fetch(&self, wanted: BTreeSet<VersionId>) -> Result<(), DecodeError> {
        let Some(cfg) = &self.config else {
            return Ok(());
        };
        for id in wanted {
            if self.local.contains_key(&id) {
                continue;
            }
            let known = match self
                .fetched
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
            {
                Some(Ok(_)) => true,
                Some(Err((_, until))) => Instant::now() < *until,
                None => false,
            };
            if known {
                continue;
            }
            let uuid = format_uuid(&id);
            let Some(source) = self.source.get() else {
                return Err(DecodeError::Transient(format!(
                    "Glue schema version {uuid}: codec.glue is set, but this build cannot reach AWS Glue \
                     (feature \"aws\")"
                )));
            };
            let answer = match source.schema_version(&uuid).await {
                Ok(version) => compile(&uuid, &version, &cfg.registry),
                Err(DecodeError::Permanent(e)) => Err(e),
                Err(transient) => return Err(transient),
            };
            let answer = answer.map_err(|e| {
                (
                    e,
                    Instant::now() + Duration::from_millis(cfg.not_found_ttl_ms),
                )
            });
            self.fetched
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, answer);
        }
        Ok(())
    }

    /// The answers so far, for one batch.
    pub(crate) fn for_batch(&self) -> HashMap<VersionId, Result<GlueSchema, String>> {
        if self.config.is_none() {
            return HashMap::new();
        }
        self.fetched
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, v.clone().map_err(|(e, _)| e)))
            .collect()
    }

    /// A schema configured locally.
    pub(crate) fn local(&self, id: &VersionId) -> Option<&GlueSchema> {
        self.local.get(id)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// A fetched schema version, compiled; the error is permanent (the version is not usable).
fn compile(uuid: &str, version: &GlueSchemaVersion, registry: &str) -> Result<GlueSchema, String> {
    let what = format!("Glue schema version {uuid}");
    // arn:aws:glue:<region>:<account>:schema/<registry>/<schema>
    if let Some(arn) = &version.schema_arn
        && let Some(path) = arn.split(":schema/").nth(1)
        && let Some(owner) = path.split('/').next()
        && owner != registry
    {
        return Err(format!(
            "{what} belongs to registry {owner:?}, not codec.glue.registry {registry:?}"
        ));
    }
    match version.data_format.as_str() {
        "AVRO" => apache_avro::Schema::parse_str(&version.definition)
            .map_err(|e| format!("{what}: not a valid Avro schema: {e}"))
            .and_then(|s| AvroSchema::new(Arc::new(s)).map_err(|e| format!("{what}: {e}")))
            .map(|s| GlueSchema::Avro(Arc::new(s))),
        "JSON" => Ok(GlueSchema::Json),
        "PROTOBUF" => protobuf::compile_source(
            &format!("glue-{uuid}.proto"),
            &version.definition,
            &HashMap::new(),
        )
        .map(|f| GlueSchema::Protobuf(Arc::new(protobuf::glue_messages(&f))))
        .map_err(|e| format!("{what}: not a valid .proto file: {e}")),
        other => Err(format!("{what}: data format {other:?} is not read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip() {
        let id = parse_uuid("B7B4A7F0-1c2d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(format_uuid(&id), "b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(parse_uuid("b7b4a7f01c2d4e5f8a9b0c1d2e3f4a5b"), Some(id));
        assert_eq!(parse_uuid("b7b4a7f0"), None);
        assert_eq!(parse_uuid("zzb4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b"), None);
    }

    #[test]
    fn fetched_versions_compile_by_data_format() {
        let avro = GlueSchemaVersion {
            data_format: "AVRO".into(),
            definition: r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#
                .into(),
            schema_arn: Some("arn:aws:glue:eu-west-1:123:schema/reg/planet".into()),
        };
        assert!(matches!(
            compile("u", &avro, "reg"),
            Ok(GlueSchema::Avro(_))
        ));
        let err = compile("u", &avro, "other").unwrap_err();
        assert!(err.contains("belongs to registry \"reg\""), "{err}");
        let proto = GlueSchemaVersion {
            data_format: "PROTOBUF".into(),
            definition: "syntax = \"proto3\";\nmessage M { int32 a = 1; }\n".into(),
            schema_arn: None,
        };
        assert!(matches!(compile("u", &proto, "reg"), Ok(GlueSchema::Protobuf(m)) if m.len() == 1));
        let bad = GlueSchemaVersion {
            data_format: "PROTOBUF".into(),
            definition: "message {".into(),
            schema_arn: None,
        };
        assert!(
            compile("u", &bad, "reg")
                .unwrap_err()
                .contains("not a valid .proto")
        );
        let json = GlueSchemaVersion {
            data_format: "JSON".into(),
            definition: "{}".into(),
            schema_arn: None,
        };
        assert!(matches!(compile("u", &json, "reg"), Ok(GlueSchema::Json)));
    }
}
