//! The `[codec]` section, and what it builds: a [`Codec`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{self, Format, avro_ocf};
use super::schemas::Schemas;
use super::{Codec, Envelope, KeyFormat, SchemaFiles, registry};

/// The `[codec]` section: which format record values are in, and the schemas Avro needs.
///
/// ```toml
/// [codec]
/// value = "auto"                              # json | avro-ocf | avro-confluent | avro-raw | protobuf | glue | auto (default)
/// schemas = { "1" = "schemas/planet.avsc" }   # Confluent schema id → .avsc or .proto file
/// proto = ["schemas/planet.proto"]            # .proto files, compiled at start
/// message = "servicea.Planet"                 # the message type of unframed Protobuf values
/// glue_schemas = { "b7b4…" = "schemas/planet.avsc" }        # Glue schema version id → schema file
/// glue = { registry = "my-registry", region = "eu-west-1" } # … or fetched from AWS Glue
/// raw_schema = "schemas/planet.avsc"          # the writer schema of avro-raw values
/// reader_schema = "schemas/planet-v2.avsc"    # optional: resolve every Avro value to this schema
/// max_inflated_mib = 256                      # what a batch's compressed values may inflate to, in total
/// max_decoded_mib = 512                       # … and its messages and rows take (default: from the function's memory)
/// threads = 2                                 # the most threads a batch decodes on (default: the CPUs)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    /// The format of record values.
    #[serde(default)]
    pub value: Format,
    /// Confluent schema id → `.avsc` file.
    #[serde(default)]
    #[schemars(example = serde_json::json!({"1": "schemas/planet.avsc", "7": "schemas/planet.proto"}))]
    pub schemas: BTreeMap<String, PathBuf>,
    /// The writer schema of `avro-raw` values (and of bare datums whose metadata names no known id).
    #[serde(default)]
    #[schemars(example = &"schemas/planet.avsc")]
    pub raw_schema: Option<PathBuf>,
    /// Optional: every Avro value is resolved to this schema.
    #[serde(default)]
    #[schemars(example = &"schemas/planet-v2.avsc")]
    pub reader_schema: Option<PathBuf>,
    /// A Confluent-compatible schema registry for ids not in `schemas`.
    #[serde(default)]
    pub registry: Option<registry::RegistryConfig>,
    /// `"kafkaesk"`: values are `{"schema": "name:version", "data": {…}}`; the message is `data`, with
    /// `kafkaeskSchemaName` and `kafkaeskSchemaVersion` added for mappings.
    #[serde(default)]
    #[schemars(example = &"kafkaesk")]
    pub envelope: Option<Envelope>,
    /// `.proto` files (relative to the config; imports resolve from their folders) for Protobuf values and keys.
    #[serde(default)]
    #[schemars(example = ["schemas/planet.proto"])]
    pub proto: Vec<PathBuf>,
    /// The message type (`package.Message`) of Protobuf values that are not framed (a framing names its own).
    #[serde(default)]
    #[schemars(example = &"servicea.Planet")]
    pub message: Option<String>,
    /// The message type of Protobuf keys that are not framed.
    #[serde(default)]
    #[schemars(example = &"servicea.PlanetKey")]
    pub key_message: Option<String>,
    /// Protobuf field names as declared in the .proto file, instead of the JSON mapping's lowerCamelCase.
    #[serde(default)]
    #[schemars(example = true)]
    pub proto_field_names: bool,
    /// AWS Glue Schema Registry: schema version id (a UUID) → `.avsc`, `.proto` or `.json` file.
    #[serde(default)]
    #[schemars(example = serde_json::json!({"b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b": "schemas/planet.avsc"}))]
    pub glue_schemas: BTreeMap<String, PathBuf>,
    /// AWS Glue Schema Registry to fetch schema versions from (GetSchemaVersion), for ids not in `glue_schemas`.
    #[serde(default)]
    pub glue: Option<super::glue::GlueConfig>,
    /// How record keys are read: `string` (UTF-8 text, the default), `json`, or `avro` (Confluent-framed, schemas
    /// as for values). Mappings see the decoded key (`from = "key"`, `from = "key:$.id"`).
    #[serde(default)]
    #[schemars(example = &"json")]
    pub key: KeyFormat,
    /// What the compressed values of one batch (deflated Avro container files, zlib Glue payloads) may
    /// inflate to, in total, in MiB; a record past it is dead-lettered. Default: under Lambda, a quarter of the
    /// function's memory less 64 MiB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`; see docs/src/memory.md), else
    /// [`super::avro::DEFAULT_MAX_INFLATED_MIB`] (also the most it is derived to).
    #[serde(default)]
    #[schemars(extend("default" = super::avro::DEFAULT_MAX_INFLATED_MIB), example = 1024)]
    pub max_inflated_mib: Option<u64>,
    /// The estimated memory of what one batch's values become on their way to the statement, in total, in
    /// MiB: the messages of container files and Protobuf values, and every row planned, three times (the row,
    /// the statement's values, the driver's bind buffers); a record past it is dead-lettered. Default: under
    /// Lambda, half of the function's memory less 64 MiB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`; see
    /// docs/src/memory.md), else [`super::avro::DEFAULT_MAX_DECODED_MIB`] (also the most it is derived to).
    #[serde(default)]
    #[schemars(extend("default" = super::avro::DEFAULT_MAX_DECODED_MIB), example = 2048)]
    pub max_decoded_mib: Option<u64>,
    /// The most threads one batch is decoded on (default: the CPUs the process may use; see
    /// [`crate::pipeline::Pipeline::plan_batch`]). `1` decodes on the handler's thread only.
    #[serde(default)]
    #[schemars(range(min = 1, max = crate::threads::MAX_THREADS), example = 2)]
    pub threads: Option<usize>,
}

impl CodecConfig {
    /// Reads the schemas (paths relative to `base`) and builds the codec, or lists every problem.
    pub fn build(&self, base: Option<&Path>) -> Result<Codec, Vec<String>> {
        self.build_with(&mut SchemaFiles::new(base))
    }

    /// [`CodecConfig::build`] with the schema files of a whole config's compile, each read once.
    pub fn build_with(&self, files: &mut SchemaFiles) -> Result<Codec, Vec<String>> {
        let mut problems = Vec::new();
        let schemas = Schemas::build(self, files, &mut problems);
        let value = format::Value::build(self, &schemas, &mut problems);
        if let Some(n) = self.threads
            && !(1..=crate::threads::MAX_THREADS).contains(&n)
        {
            problems.push(format!(
                "codec.threads must be between 1 and {}",
                crate::threads::MAX_THREADS
            ));
        }
        let memory = super::memory::function_memory_mib();
        if let Some(warning) = memory.and_then(|mb| avro_ocf::over_function(self, mb)) {
            // Explicit values win: the operator may know the batches; said once, at start.
            tracing::warn!(%warning, "the decode budget is over the function's memory");
        }
        match value {
            Some(value) if problems.is_empty() => Ok(Codec {
                value,
                key: self.key,
                envelope: self.envelope,
                schemas,
                budget: avro_ocf::budget_for(self, memory),
            }),
            _ => Err(problems),
        }
    }
}
