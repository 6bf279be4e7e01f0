//! The schemas a codec decodes with: the configured ones (`codec.schemas` by Confluent id — `.avsc` or
//! `.proto` files —, `raw_schema`, `reader_schema`, the `proto` files and their `message` types), compiled once,
//! and the ids a [`registry`](super::registry) answered, fetched before a batch and kept for the instance.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost_reflect::{FileDescriptor, MessageDescriptor};

use super::avro::AvroSchema;
use super::glue::{GlueSchema, GlueSchemas, VersionId};
use super::protobuf::{self, Naming};
use super::registry::{RegistrySchema, SchemaRegistry};
use super::{CodecConfig, DecodeError, SchemaFiles};

/// A schema by Confluent id: Avro, or a compiled .proto file.
#[derive(Debug, Clone)]
pub(crate) enum ById {
    Avro(Arc<AvroSchema>),
    Protobuf(FileDescriptor),
}

/// A registry's answer for one id: the schema, or why not (an unknown id dead-letters its records).
type Answer = Result<ById, String>;

/// What Protobuf values and keys decode with.
#[derive(Debug, Default)]
pub(crate) struct Proto {
    /// `codec.message`: the type of bare (unframed) values.
    pub(crate) message: Option<MessageDescriptor>,
    /// `codec.key_message`: the type of bare keys.
    pub(crate) key_message: Option<MessageDescriptor>,
    pub(crate) naming: Naming,
}

/// The schemas of a codec.
#[derive(Debug, Default)]
pub(crate) struct Schemas {
    by_id: HashMap<u32, ById>,
    pub(crate) proto: Proto,
    /// AWS Glue's schemas, by schema version id.
    pub(crate) glue: GlueSchemas,
    /// The writer schema of `avro-raw` values, and of bare datums whose metadata names no known id.
    pub(crate) raw: Option<Arc<AvroSchema>>,
    /// Every Avro value is resolved to this schema when set.
    pub(crate) reader: Option<Arc<AvroSchema>>,
    registry: Option<SchemaRegistry>,
    /// Registry answers for this instance, readable while decoding (which does not wait).
    fetched: RwLock<HashMap<u32, Answer>>,
}

impl Schemas {
    /// Reads and compiles the configured schemas and sets up the registry; what is wrong goes to `problems`.
    pub(crate) fn build(
        cfg: &CodecConfig,
        files: &mut SchemaFiles,
        problems: &mut Vec<String>,
    ) -> Self {
        let read =
            |files: &mut SchemaFiles, what: &str, path: &Path| -> Result<Arc<AvroSchema>, String> {
                let (path, schema) = files.get(path);
                let schema =
                    schema.map_err(|e| format!("codec.{what}: {}: {e}", path.display()))?;
                AvroSchema::new(schema)
                    .map(Arc::new)
                    .map_err(|e| format!("codec.{what}: {}: {e}", path.display()))
            };
        // Every .proto file the config names is compiled once, into one pool.
        let proto_paths: Vec<&Path> = cfg
            .proto
            .iter()
            .chain(cfg.schemas.values().filter(|p| is_proto(p)))
            .chain(cfg.glue_schemas.values().filter(|p| is_proto(p)))
            .map(PathBuf::as_path)
            .collect();
        let compiled = compile_protos(&proto_paths, files, problems);
        let mut by_id = HashMap::new();
        for (id, path) in &cfg.schemas {
            match id.parse::<u32>() {
                Ok(n) if is_proto(path) => {
                    // A file that did not compile is in `problems` already.
                    if let Some(file) = compiled.as_ref().and_then(|c| c.file(files, path)) {
                        by_id.insert(n, ById::Protobuf(file));
                    }
                }
                Ok(n) => match read(files, &format!("schemas.{id}"), path) {
                    Ok(s) => {
                        by_id.insert(n, ById::Avro(s));
                    }
                    Err(e) => problems.push(e),
                },
                Err(_) => problems.push(format!(
                    "codec.schemas: {id:?} is not a schema id (a number)"
                )),
            }
        }
        let glue = GlueSchemas::build(
            &cfg.glue_schemas,
            cfg.glue.as_ref(),
            files,
            compiled.as_ref(),
            problems,
        );
        let mut message = |what: &str, name: Option<&String>| {
            let name = name?;
            match &compiled {
                Some(c) => protobuf::message_by_name(&c.pool, name)
                    .map_err(|e| problems.push(format!("codec.{what}: {e}")))
                    .ok(),
                None if cfg.proto.is_empty() => {
                    problems.push(format!(
                        "codec.{what} = {name:?} needs codec.proto (the .proto files that define it)"
                    ));
                    None
                }
                // The files did not compile: said already.
                None => None,
            }
        };
        let proto = Proto {
            message: message("message", cfg.message.as_ref()),
            key_message: message("key_message", cfg.key_message.as_ref()),
            naming: Naming {
                proto_field_names: cfg.proto_field_names,
            },
        };
        let mut optional = |what: &str, path: Option<&Path>| {
            path.and_then(|p| read(files, what, p).map_err(|e| problems.push(e)).ok())
        };
        let raw = optional("raw_schema", cfg.raw_schema.as_deref());
        let reader = optional("reader_schema", cfg.reader_schema.as_deref());
        let registry = cfg
            .registry
            .as_ref()
            .and_then(|r| SchemaRegistry::new(r).map_err(|e| problems.push(e)).ok());
        Self {
            by_id,
            proto,
            glue,
            raw,
            reader,
            registry,
            fetched: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn registry(&self) -> Option<&SchemaRegistry> {
        self.registry.as_ref()
    }

    pub(crate) fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Asks the registry for the ids in `wanted` not known yet. A registry that cannot answer fails the batch
    /// (transient); an id it does not know is remembered as unknown, until a later batch asks again (see
    /// [`registry`](super::registry)).
    pub(crate) async fn fetch(&self, wanted: BTreeSet<u32>) -> Result<(), DecodeError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        for id in wanted {
            // A schema is for good; a failure is asked of the registry again, which keeps it for a while only.
            let known = self.by_id.contains_key(&id)
                || self
                    .fetched
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&id)
                    .is_some_and(Result::is_ok);
            if known {
                continue;
            }
            let answer = match registry.schema(id).await {
                Ok(RegistrySchema::Avro(s)) => AvroSchema::new(s)
                    .map(|s| ById::Avro(Arc::new(s)))
                    .map_err(|e| format!("schema id {id}: {e}")),
                Ok(RegistrySchema::Protobuf(file)) => Ok(ById::Protobuf(file)),
                Err(DecodeError::Permanent(e)) => Err(e),
                Err(transient) => return Err(transient),
            };
            self.fetched
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, answer);
        }
        Ok(())
    }

    /// The schemas one batch decodes with: the registry's answers so far are copied out, so that decoding
    /// never waits for a lock and the batch's messages can borrow their field names from them.
    pub(crate) fn for_batch(&self) -> BatchSchemas<'_> {
        let fetched = if self.registry.is_some() {
            self.fetched
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        } else {
            HashMap::new()
        };
        BatchSchemas {
            schemas: self,
            fetched,
            glue: self.glue.for_batch(),
        }
    }
}

/// The schemas of one batch (see [`Schemas::for_batch`]).
#[derive(Debug, Clone)]
pub(crate) struct BatchSchemas<'c> {
    schemas: &'c Schemas,
    fetched: HashMap<u32, Answer>,
    glue: HashMap<VersionId, Result<GlueSchema, String>>,
}

impl<'c> BatchSchemas<'c> {
    /// The schema of a Confluent schema id: configured, else the registry's answer.
    pub(crate) fn any_by_id(&self, id: u32) -> Result<&ById, DecodeError> {
        if let Some(s) = self.schemas.by_id.get(&id) {
            return Ok(s);
        }
        match self.fetched.get(&id) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(DecodeError::Permanent(e.clone())),
            None => Err(DecodeError::Permanent(format!("unknown schema id {id}"))),
        }
    }

    /// The Avro schema of a Confluent schema id.
    pub(crate) fn by_id(&self, id: u32) -> Result<&Arc<AvroSchema>, DecodeError> {
        match self.any_by_id(id)? {
            ById::Avro(s) => Ok(s),
            ById::Protobuf(_) => Err(DecodeError::Permanent(format!(
                "schema id {id} is a Protobuf schema, not Avro"
            ))),
        }
    }

    /// The .proto file of a Confluent schema id.
    pub(crate) fn proto_by_id(&self, id: u32) -> Result<&FileDescriptor, DecodeError> {
        match self.any_by_id(id)? {
            ById::Protobuf(f) => Ok(f),
            ById::Avro(_) => Err(DecodeError::Permanent(format!(
                "schema id {id} is an Avro schema, not Protobuf"
            ))),
        }
    }

    /// Whether a Confluent schema id is known to be Protobuf (`auto` reads such values as Protobuf).
    pub(crate) fn is_proto(&self, id: u32) -> bool {
        matches!(self.any_by_id(id), Ok(ById::Protobuf(_)))
    }

    /// The Glue schema of a schema version id: configured, else fetched before the batch.
    pub(crate) fn glue(&self, id: &VersionId) -> Result<&GlueSchema, DecodeError> {
        if let Some(s) = self.schemas.glue.local(id) {
            return Ok(s);
        }
        match self.glue.get(id) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(DecodeError::Permanent(e.clone())),
            None => Err(DecodeError::Permanent(format!(
                "unknown Glue schema version {} (not in codec.glue_schemas{})",
                super::glue::format_uuid(id),
                if self.schemas.glue.config().is_some() {
                    ", and not fetched from codec.glue"
                } else {
                    "; codec.glue is not set"
                }
            ))),
        }
    }

    pub(crate) fn proto(&self) -> &'c Proto {
        &self.schemas.proto
    }

    pub(crate) fn raw(&self) -> Option<&'c Arc<AvroSchema>> {
        self.schemas.raw.as_ref()
    }

    pub(crate) fn reader(&self) -> Option<&'c Arc<AvroSchema>> {
        self.schemas.reader.as_ref()
    }
}

/// Whether a schema file is a .proto file (else Avro, or JSON for Glue).
pub(crate) fn is_proto(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("proto"))
}

/// The .proto files of a config, compiled into one pool.
pub(crate) struct Compiled {
    pub(crate) pool: prost_reflect::DescriptorPool,
    /// Resolved path → its file in the pool.
    files: HashMap<PathBuf, FileDescriptor>,
}

impl Compiled {
    /// The compiled file a config path names.
    pub(crate) fn file(&self, files: &SchemaFiles, path: &Path) -> Option<FileDescriptor> {
        self.files.get(&files.resolve(path)).cloned()
    }
}

/// Compiles `paths` (relative to the config) in one go; `None` when there are none or they do not compile
/// (said in `problems`, with file and line).
pub(crate) fn compile_protos(
    paths: &[&Path],
    files: &SchemaFiles,
    problems: &mut Vec<String>,
) -> Option<Compiled> {
    if paths.is_empty() {
        return None;
    }
    let mut resolved: Vec<PathBuf> = Vec::new();
    for p in paths {
        let r = files.resolve(p);
        if !resolved.contains(&r) {
            resolved.push(r);
        }
    }
    // Files are known to the compiler by their names within their folders: two of one name would be one.
    let mut names: HashMap<&std::ffi::OsStr, &Path> = HashMap::new();
    for r in &resolved {
        if let Some(name) = r.file_name()
            && let Some(other) = names.insert(name, r)
        {
            problems.push(format!(
                "codec.proto: {} and {} have the same file name; rename one",
                other.display(),
                r.display()
            ));
            return None;
        }
    }
    match protobuf::compile(&resolved) {
        Ok((pool, descriptors)) => Some(Compiled {
            pool,
            files: resolved.into_iter().zip(descriptors).collect(),
        }),
        Err(e) => {
            problems.push(format!("codec.proto: {e}"));
            None
        }
    }
}
