//! The config file (TOML) and its validation.
//!
//! ```toml
//! [database]                      # all optional; the URL usually comes from --database-url / DATABASE_URL
//! dead_letter_table = "msk_sync_dead_letter"
//! max_rows_per_statement = 2000
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

use crate::decode::CodecConfig;
use crate::sync::declarative::{DeclarativeMapping, SyncConfig};
use crate::sync::table::check_ident;

/// Where the config comes from when no `--config` is given.
pub const CONFIG_ENV: &str = "MSK_SYNC_CONFIG";
pub const DEFAULT_CONFIG_FILE: &str = "msk-sync.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The value format of every topic.
    #[serde(default)]
    pub codec: CodecConfig,
    #[serde(default, rename = "sync")]
    pub syncs: Vec<SyncConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Used when neither --database-url nor DATABASE_URL is set.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub dead_letter_table: Option<String>,
    #[serde(default)]
    pub max_rows_per_statement: Option<usize>,
}

/// A config that cannot be used; the message lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::from_toml(&text).map_err(|ConfigError(p)| {
            ConfigError(
                p.into_iter()
                    .map(|p| format!("{}: {p}", path.display()))
                    .collect(),
            )
        })
    }

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

    /// Every problem in the config, each on its own line; empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(t) = &self.database.dead_letter_table
            && let Err(e) = check_ident("database.dead_letter_table", t)
        {
            problems.push(e);
        }
        if self.database.max_rows_per_statement == Some(0) {
            problems.push("database.max_rows_per_statement must be at least 1".into());
        }
        for (i, sync) in self.syncs.iter().enumerate() {
            if let Err(p) = DeclarativeMapping::compile(sync, &sync_label(i, sync)) {
                problems.extend(p);
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
        problems
    }
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
    fn unknown_keys_are_errors_with_a_location() {
        let err = Config::from_toml("[database]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `urll`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
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
            columns = [{ name = "id", path = "$.id", type = "uuid" }]
            "#,
        )
        .unwrap();
        let p = cfg.problems().join("\n");
        assert!(p.contains("database.dead_letter_table"), "{p}");
        assert!(
            p.contains("sync 1 (t): column 1 (\"id\"): unknown type \"uuid\""),
            "{p}"
        );
    }
}
