//! The config file (TOML) and its validation.
//!
//! ```toml
//! [database]                      # all optional; the URL usually comes from --database-url / DATABASE_URL
//! dead_letter_table = "msk_sync_dead_letter"
//! max_rows_per_statement = 2000
//! tombstone_retention_seconds = 604800   # how long a versioned sync remembers a delete
//! connect_timeout_seconds = 10    # deadline of one connection attempt
//! statement_timeout_seconds = 30  # deadline of one statement, kept by the server
//! batch_timeout_seconds = 90      # deadline of a batch's database work, kept by msk-sync
//!
//! [[sync]]
//! topics = ["servicea.planet"]    # names or globs; "*" is the default
//! table = "servicea_planet"
//! key = ["uuid"]
//! columns = [
//!   { name = "uuid", path = "$.planetUuid" },
//!   { name = "name", path = "$.planetName" },
//! ]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

pub use crate::decode::CodecConfig;
pub use crate::filter::FilterConfig;
pub use crate::mask::MaskConfig;
pub use crate::sync::declarative::{ColumnConfig, SyncConfig};

use crate::decode::{Format, SchemaFiles};
use crate::filter::Filter;
use crate::mask::{Mask, MaskRule};
use crate::pipeline::Pipeline;
use crate::sync::declarative::DeclarativeMapping;
use crate::sync::table::check_ident;
use crate::sync::{Mapping, SinkOptions};

/// Where the config comes from when no `--config` is given.
pub const CONFIG_ENV: &str = "MSK_SYNC_CONFIG";
/// The config file used when none is named and `MSK_SYNC_CONFIG` is not set, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "msk-sync.toml";

/// A function's configuration file: database settings, codec, syncs, filters and masks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[database]` section.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The value format of every topic.
    #[serde(default)]
    pub codec: CodecConfig,
    /// The `[[sync]]` sections: which topics go to which table, and how a message becomes a row.
    #[serde(default, rename = "sync")]
    pub syncs: Vec<SyncConfig>,
    /// Emit filters: a default (`topics = ["*"]`, or no topics) and per-topic overrides.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// Masks, likewise.
    #[serde(default, rename = "mask")]
    pub masks: Vec<MaskConfig>,
    /// The directory of the config file: relative schema paths start there.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// The `[database]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Used when neither --database-url nor DATABASE_URL is set.
    #[serde(default)]
    #[schemars(example = &"postgres://app@db.example:5432/app")]
    pub url: Option<String>,
    /// The dead-letter table's name (default `msk_sync_dead_letter`).
    #[serde(default)]
    #[schemars(extend("default" = crate::sync::dead_letter::DEFAULT_TABLE), example = &"orders_dead_letter")]
    pub dead_letter_table: Option<String>,
    /// The most rows one INSERT (or keys one DELETE) carries; the bind-parameter limit may lower it.
    #[serde(default)]
    #[schemars(extend("default" = crate::sync::SinkOptions::default().max_rows_per_statement), range(min = 1), example = 500)]
    pub max_rows_per_statement: Option<usize>,
    /// How long a versioned sync remembers a delete (its tombstone), in seconds; 7 days by default.
    #[serde(default)]
    #[schemars(extend("default" = crate::sync::SinkOptions::default().tombstone_retention.as_secs()), example = 1_209_600)]
    pub tombstone_retention_seconds: Option<u64>,
    /// How long connecting (or taking a connection from the pool) may take, in seconds; 10 by default.
    #[serde(default)]
    pub connect_timeout_seconds: Option<u64>,
    /// How long one statement may run, in seconds, enforced by the server; 30 by default.
    #[serde(default)]
    pub statement_timeout_seconds: Option<u64>,
    /// How long a batch's database work may take, in seconds, enforced by msk-sync itself (a server that
    /// stops answering enforces nothing); 90 by default.
    #[serde(default)]
    pub batch_timeout_seconds: Option<u64>,
    /// `false`: a missing table is the misconfigured class instead of being created (a misspelt `table` then
    /// stops the function instead of filling a new table). Default `true`.
    #[serde(default)]
    pub create_tables: Option<bool>,
}

/// A config that cannot be used; the message lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads and parses the file at `path`; its directory is where relative schema paths start.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: cannot read: {e}", path.display())]))?;
        let mut config = Self::from_toml(&text).map_err(|ConfigError(p)| {
            ConfigError(
                p.into_iter()
                    .map(|p| format!("{}: {p}", path.display()))
                    .collect(),
            )
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses TOML text; unknown keys are errors, with their line.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string().trim_end().to_string()]))
    }

    /// The file named by `explicit`, else by `MSK_SYNC_CONFIG`, else `./msk-sync.toml` if it exists.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let local = PathBuf::from(DEFAULT_CONFIG_FILE);
        local.is_file().then_some(local)
    }

    /// The compiled filters, with their topic patterns.
    fn build_filters(&self) -> Result<Vec<(Vec<String>, Filter)>, Vec<String>> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, cfg) in self.filters.iter().enumerate() {
            match Filter::build(cfg) {
                Ok(f) => out.push((cfg.topics.clone(), f)),
                Err(p) => problems.extend(p.into_iter().map(|p| format!("filter {}: {p}", i + 1))),
            }
        }
        let patterns = self
            .filters
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.topics.iter().map(move |t| (i, t.as_str())));
        if let Err(p) = crate::topics::TopicRouter::new(patterns) {
            problems.extend(p.into_iter().map(|p| format!("filter: {p}")));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The compiled masks, with their topic patterns; each reads its schema file, if it names one (Avro
    /// messages are classified by their own schema otherwise).
    fn build_masks(
        &self,
        files: &mut SchemaFiles,
    ) -> Result<Vec<(Vec<String>, MaskRule)>, Vec<String>> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, cfg) in self.masks.iter().enumerate() {
            let at = format!("mask {}", i + 1);
            let Some(file) = &cfg.schema else {
                if matches!(self.codec.value, Format::Json | Format::Protobuf) {
                    // Protobuf values carry no classification: the .avsc file classifies their fields by name.
                    problems.push(format!(
                        "{at}: schema is missing: name the .avsc file that classifies the fields of {} values",
                        if self.codec.value == Format::Json { "JSON" } else { "Protobuf" }
                    ));
                } else {
                    // Avro values are classified by their own schema; a JSON value under this mask is
                    // dead-lettered rather than applied unmasked. The schemas known now are checked now, so a
                    // level missing from `levels` stops the start, not a batch.
                    let known = self
                        .codec
                        .schemas
                        .values()
                        .chain(self.codec.glue_schemas.values())
                        .chain(&self.codec.raw_schema)
                        .chain(&self.codec.reader_schema);
                    let (mut tried, mut classifying) = (0, 0);
                    for path in known {
                        let (path, Ok(schema)) = files.get(path) else {
                            // The codec reports unreadable schemas; .proto and JSON Schema files carry no
                            // classification.
                            continue;
                        };
                        tried += 1;
                        match Mask::build(cfg, &schema) {
                            Ok(mask) => classifying += usize::from(!mask.classifies_nothing()),
                            Err(p) => problems.extend(
                                p.into_iter()
                                    .map(|p| format!("{at} ({}): {p}", path.display())),
                            ),
                        }
                    }
                    // Values whose schemas come from the config's files, and none classifies a field: a mask of
                    // nothing. (A registry or Glue may bring schemas that do; so may container files, but
                    // `auto` is counted in: leaking a field is worse than a config check that asks for
                    // `value = "avro-ocf"`.)
                    let only_files = !matches!(self.codec.value, Format::AvroOcf)
                        && self.codec.registry.is_none()
                        && self.codec.glue.is_none();
                    if only_files && tried > 0 && classifying == 0 {
                        problems.push(format!(
                            "{at}: in the {tried} schema file(s) of [codec], {}",
                            Mask::classifies_nothing_problem(cfg)
                        ));
                    }
                    out.push((cfg.topics.clone(), MaskRule::new(cfg.clone(), None)));
                }
                continue;
            };
            let (file, schema) = files.get(file);
            match schema.map(|s| Mask::build(cfg, &s)) {
                Ok(Ok(mask)) if mask.classifies_nothing() => problems.push(format!(
                    "{at}: schema {}: {}",
                    file.display(),
                    Mask::classifies_nothing_problem(cfg)
                )),
                Ok(Ok(mask)) => {
                    out.push((cfg.topics.clone(), MaskRule::new(cfg.clone(), Some(mask))))
                }
                Ok(Err(p)) => problems.extend(p.into_iter().map(|p| format!("{at}: {p}"))),
                Err(e) => problems.push(format!("{at}: schema {}: {e}", file.display())),
            }
        }
        let patterns = self
            .masks
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.topics.iter().map(move |t| (i, t.as_str())));
        if let Err(p) = crate::topics::TopicRouter::new(patterns) {
            problems.extend(p.into_iter().map(|p| format!("mask: {p}")));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The database settings that are not the URL.
    pub fn sink_options(&self) -> SinkOptions {
        let mut options = SinkOptions::default();
        if let Some(t) = &self.database.dead_letter_table {
            options.dead_letter_table = t.clone();
        }
        if let Some(n) = self.database.max_rows_per_statement {
            options.max_rows_per_statement = n;
        }
        if let Some(s) = self.database.tombstone_retention_seconds {
            options.tombstone_retention = std::time::Duration::from_secs(s);
        }
        if let Some(s) = self.database.connect_timeout_seconds {
            options.connect_timeout = std::time::Duration::from_secs(s);
        }
        if let Some(s) = self.database.statement_timeout_seconds {
            options.statement_timeout = std::time::Duration::from_secs(s);
        }
        if let Some(s) = self.database.batch_timeout_seconds {
            options.batch_timeout = std::time::Duration::from_secs(s);
        }
        if let Some(create) = self.database.create_tables {
            options.create_tables = create;
        }
        options
    }

    /// Compiles the config into what a function instance runs with, or lists every problem in it: compiling
    /// is validating, so `config check` and a start see the same problems, and each schema file is read once.
    ///
    /// The `[[sync]]` sections are always checked; `typed` (mappings compiled into the binary, with their topic
    /// patterns) replaces them as the pipeline's mappings when given.
    pub fn compile(
        &self,
        typed: Option<Vec<Routed<Arc<dyn Mapping>>>>,
    ) -> Result<Compiled, Vec<String>> {
        let mut files = SchemaFiles::new(self.base_dir.as_deref());
        // The codec first, so that masks classify with the schemas it has read; its problems are listed after
        // the masks', as they always were.
        let codec = self.codec.build_with(&mut files);
        let mut problems = Vec::new();
        let filters = self.build_filters().map_err(|p| problems.extend(p)).ok();
        let masks = self
            .build_masks(&mut files)
            .map_err(|p| problems.extend(p))
            .ok();
        let codec = codec.map_err(|p| problems.extend(p)).ok();
        if let Some(t) = &self.database.dead_letter_table
            && let Err(e) = check_ident("database.dead_letter_table", t)
        {
            problems.push(e);
        }
        if self.database.max_rows_per_statement == Some(0) {
            problems.push("database.max_rows_per_statement must be at least 1".into());
        }
        for (key, value) in [
            (
                "connect_timeout_seconds",
                self.database.connect_timeout_seconds,
            ),
            (
                "statement_timeout_seconds",
                self.database.statement_timeout_seconds,
            ),
            ("batch_timeout_seconds", self.database.batch_timeout_seconds),
        ] {
            if value == Some(0) {
                problems.push(format!("database.{key} must be at least 1"));
            }
        }
        let sink = self.sink_options();
        let mut declarative = Vec::with_capacity(self.syncs.len());
        for (i, sync) in self.syncs.iter().enumerate() {
            match DeclarativeMapping::compile(sync, &sync_label(i, sync)) {
                Ok(m) => declarative.push((sync.topics.clone(), Arc::new(m) as Arc<dyn Mapping>)),
                Err(p) => problems.extend(p),
            }
            if sync.change.is_some()
                && self.codec.envelope == Some(crate::decode::Envelope::Debezium)
            {
                problems.push(format!(
                    "{}: change: not with codec.envelope = \"debezium\", where Debezium's op says what happened",
                    sync_label(i, sync)
                ));
            }
            // Case too: MySQL on macOS and Windows, and SQLite, do not tell table names apart by case.
            if sync.table.eq_ignore_ascii_case(&sink.dead_letter_table) {
                problems.push(format!(
                    "{}: table {:?} is the dead-letter table ({:?}): choose another table or set database.dead_letter_table",
                    sync_label(i, sync),
                    sync.table,
                    sink.dead_letter_table
                ));
            }
        }
        if let Err(p) = crate::topics::TopicRouter::new(
            self.syncs
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.topics.iter().map(move |t| (i, t.as_str()))),
        ) {
            problems.extend(p);
        }
        for (_, m) in typed.iter().flatten() {
            if let crate::change::ChangeRule::Invalid(reason) = m.change() {
                problems.push(format!("change: {reason}"));
            }
        }
        let (Some(codec), Some(filters), Some(masks), true) =
            (codec, filters, masks, problems.is_empty())
        else {
            return Err(problems);
        };
        let pipeline = Pipeline::new(codec, typed.unwrap_or(declarative))
            .and_then(|p| p.with_filters(filters))
            .and_then(|p| p.with_masks(masks))?;
        let pipeline = match self.codec.threads {
            Some(threads) => pipeline.with_threads(threads),
            None => pipeline,
        };
        Ok(Compiled {
            pipeline,
            sink,
            database_url: self.database.url.clone(),
        })
    }

    /// Every problem in the config, each on its own line; empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        self.compile(None).err().unwrap_or_default()
    }
}

/// The JSON Schema (draft 7) of the config file, generated from [`Config`] and its doc comments:
/// `entity-sync config schema` prints it, and `docs/src/msk-sync.schema.json` is a copy that editors use
/// (`#:schema` in a TOML file) and `tests/docs.rs` keeps equal to it.
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<Config>();
    schema.insert("title".into(), "msk-sync.toml".into());
    schema.insert(
        "description".into(),
        "The config file of msk-sync's functions (entity-sync, planet-sync): database settings, the value \
         format, syncs (topic → table), emit filters and masks."
            .into(),
    );
    schema.to_value()
}

/// Items chosen by topic (mappings, filters, masks), each with its topic patterns.
pub type Routed<T> = (Vec<String>, T);

/// A config compiled: what a function instance runs with, built once at its start.
#[derive(Debug)]
pub struct Compiled {
    /// Codec, filters, masks and mappings.
    pub pipeline: Pipeline,
    /// The database settings that are not the URL.
    pub sink: SinkOptions,
    /// `database.url`: used when neither `--database-url` nor `DATABASE_URL` is set.
    pub database_url: Option<String>,
}

pub(crate) fn sync_label(i: usize, sync: &SyncConfig) -> String {
    format!(
        "sync {} ({})",
        i + 1,
        sync.name.as_deref().unwrap_or(&sync.table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_threads_caps_the_decode_threads_and_cannot_be_zero() {
        let compiled = Config::from_toml("[codec]\nthreads = 3\n")
            .unwrap()
            .compile(Some(Vec::new()))
            .unwrap();
        assert_eq!(compiled.pipeline.threads(), 3);
        let problems = Config::from_toml("[codec]\nthreads = 0\n")
            .unwrap()
            .problems();
        assert!(
            problems
                .iter()
                .any(|p| p == "codec.threads must be between 1 and 256"),
            "{problems:?}"
        );
        let problems = Config::from_toml("[codec]\nthreads = 100000\n")
            .unwrap()
            .problems();
        assert!(
            problems
                .iter()
                .any(|p| p == "codec.threads must be between 1 and 256"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = Config::from_toml("[database]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `urll`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_file_alone_catches_the_dead_letter_table_and_columns_that_differ_by_case() {
        let cfg = Config::from_toml(
            r#"
            [[sync]]
            topics = ["a"]
            table = "MSK_Sync_Dead_Letter"
            key = ["id"]
            columns = [{ name = "id", path = "$.id" }, { name = "Name", path = "$.n" }, { name = "name", path = "$.m" }]
            [[sync]]
            topics = ["b"]
            table = "fine"
            key = ["id"]
            columns = [{ name = "id", path = "$.id" }]
            "#,
        )
        .unwrap();
        let p = cfg.problems().join("\n");
        assert!(
            p.contains("sync 1 (MSK_Sync_Dead_Letter): table \"MSK_Sync_Dead_Letter\" is the dead-letter table"),
            "{p}"
        );
        assert!(
            p.contains("column 3 (\"name\"): differs from column \"Name\" only by case"),
            "{p}"
        );
        assert_eq!(cfg.problems().len(), 2, "{p}");
        let cfg = Config::from_toml(
            "[database]\ndead_letter_table = \"fine\"\n[[sync]]\ntopics = [\"a\"]\ntable = \"fine\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", path = \"$.id\" }]\n",
        )
        .unwrap();
        assert_eq!(cfg.problems().len(), 1, "{:?}", cfg.problems());
    }

    #[test]
    fn problems_cover_database_and_syncs() {
        let cfg = Config::from_toml(
            r#"
            [database]
            dead_letter_table = "dead letters"
            [[sync]]
            topics = ["a"]
            table = "t"
            key = ["id"]
            columns = [{ name = "id", path = "$.id", type = "uuid4" }]
            "#,
        )
        .unwrap();
        let p = cfg.problems().join("\n");
        assert!(p.contains("database.dead_letter_table"), "{p}");
        assert!(
            p.contains("sync 1 (t): column 1 (\"id\"): unknown type \"uuid4\""),
            "{p}"
        );
    }
}
