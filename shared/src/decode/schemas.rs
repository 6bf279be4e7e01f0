//! The Avro schemas a codec decodes with: the configured ones (`codec.schemas` by Confluent id, `raw_schema`,
//! `reader_schema`), compiled once, and the ids a [`registry`](super::registry) answered, fetched before a batch
//! and kept for the instance.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::avro::AvroSchema;
use super::registry::SchemaRegistry;
use super::{CodecConfig, DecodeError, SchemaFiles};

/// A registry's answer for one id: the schema, or why not (an unknown id dead-letters its records).
type Answer = Result<Arc<AvroSchema>, String>;

/// The schemas of a codec.
#[derive(Debug, Default)]
pub(crate) struct Schemas {
    by_id: HashMap<u32, Arc<AvroSchema>>,
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
        let mut read = |what: &str, path: &Path| -> Result<Arc<AvroSchema>, String> {
            let (path, schema) = files.get(path);
            let schema = schema.map_err(|e| format!("codec.{what}: {}: {e}", path.display()))?;
            AvroSchema::new(schema)
                .map(Arc::new)
                .map_err(|e| format!("codec.{what}: {}: {e}", path.display()))
        };
        let mut by_id = HashMap::new();
        for (id, path) in &cfg.schemas {
            match id.parse::<u32>() {
                Ok(n) => match read(&format!("schemas.{id}"), path) {
                    Ok(s) => {
                        by_id.insert(n, s);
                    }
                    Err(e) => problems.push(e),
                },
                Err(_) => problems.push(format!(
                    "codec.schemas: {id:?} is not a schema id (a number)"
                )),
            }
        }
        let mut optional = |what: &str, path: Option<&Path>| {
            path.and_then(|p| read(what, p).map_err(|e| problems.push(e)).ok())
        };
        let raw = optional("raw_schema", cfg.raw_schema.as_deref());
        let reader = optional("reader_schema", cfg.reader_schema.as_deref());
        let registry = cfg
            .registry
            .as_ref()
            .and_then(|r| SchemaRegistry::new(r).map_err(|e| problems.push(e)).ok());
        Self {
            by_id,
            raw,
            reader,
            registry,
            fetched: RwLock::new(HashMap::new()),
        }
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
                Ok(s) => AvroSchema::new(s)
                    .map(Arc::new)
                    .map_err(|e| format!("schema id {id}: {e}")),
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
        }
    }
}

/// The schemas of one batch (see [`Schemas::for_batch`]).
#[derive(Debug)]
pub(crate) struct BatchSchemas<'c> {
    schemas: &'c Schemas,
    fetched: HashMap<u32, Answer>,
}

impl<'c> BatchSchemas<'c> {
    /// The schema of a Confluent schema id: configured, else the registry's answer.
    pub(crate) fn by_id(&self, id: u32) -> Result<&Arc<AvroSchema>, DecodeError> {
        if let Some(s) = self.schemas.by_id.get(&id) {
            return Ok(s);
        }
        match self.fetched.get(&id) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(DecodeError::Permanent(e.clone())),
            None => Err(DecodeError::Permanent(format!("unknown schema id {id}"))),
        }
    }

    pub(crate) fn raw(&self) -> Option<&'c Arc<AvroSchema>> {
        self.schemas.raw.as_ref()
    }

    pub(crate) fn reader(&self) -> Option<&'c Arc<AvroSchema>> {
        self.schemas.reader.as_ref()
    }
}
