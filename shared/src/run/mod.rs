//! The ways into the handler: Lambda ([`lambda`], when the Lambda runtime started the binary) and the command
//! line ([`cli`]: `replay`, `config check`, and `consume` / `publish` on a Kafka broker with the `kafka` feature:
//! [`local`]). A function's `main` builds an [`App`] and calls [`main`].

pub mod cli;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "kafka")]
pub mod local;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Config;
use crate::pipeline::{Handler, Pipeline};
use crate::sync::declarative::DeclarativeMapping;
use crate::sync::{Mapping, Sink, SinkOptions};

/// The embedded default database: a SQLite file in the working directory, created on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://msk-sync.db?mode=rwc";
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// Where a function's syncs come from.
pub enum Syncs {
    /// The `[[sync]]` sections of the config file (entity-sync).
    Declarative,
    /// Mappings compiled into the binary, each with its topic patterns (planet-sync).
    Typed(Vec<(Vec<String>, Arc<dyn Mapping>)>),
}

/// One function binary: its name (for messages) and its syncs.
pub struct App {
    pub name: &'static str,
    pub syncs: Syncs,
    /// A config compiled into the binary: used when no file is named or found, which is how a Lambda
    /// deployment of entity-sync carries its msk-sync.toml.
    pub embedded_config: Option<&'static str>,
}

/// Why a handler could not be built: always a bad invocation (exit 2), never worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

impl App {
    pub fn declarative(name: &'static str) -> Self {
        Self {
            name,
            syncs: Syncs::Declarative,
            embedded_config: None,
        }
    }

    pub fn with_embedded_config(mut self, toml: &'static str) -> Self {
        self.embedded_config = Some(toml);
        self
    }

    pub fn typed(name: &'static str, syncs: Vec<(Vec<String>, Arc<dyn Mapping>)>) -> Self {
        Self {
            name,
            syncs: Syncs::Typed(syncs),
            embedded_config: None,
        }
    }

    /// Loads the config (`explicit`, else `MSK_SYNC_CONFIG`, else `./msk-sync.toml`, else the one built
    /// in); a declarative function cannot run without one, a typed function falls back to defaults.
    pub fn load_config(&self, explicit: Option<&Path>) -> Result<Config, SetupError> {
        let checked = |config: Config, at: &str| {
            let problems = config.problems();
            if problems.is_empty() {
                Ok(config)
            } else {
                Err(SetupError(
                    problems
                        .iter()
                        .map(|p| format!("{at}: {p}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ))
            }
        };
        match (Config::locate(explicit), self.embedded_config) {
            (Some(path), _) => {
                let config = Config::from_file(&path).map_err(|e| SetupError(e.to_string()))?;
                checked(config, &path.display().to_string())
            }
            (None, Some(text)) => {
                let at = "built-in config";
                let config =
                    Config::from_toml(text).map_err(|e| SetupError(format!("{at}: {e}")))?;
                checked(config, at)
            }
            (None, None) if matches!(self.syncs, Syncs::Declarative) => Err(SetupError(format!(
                "{}: no config: pass --config FILE, set {}, or create ./{}",
                self.name,
                crate::config::CONFIG_ENV,
                crate::config::DEFAULT_CONFIG_FILE
            ))),
            (None, None) => Ok(Config::default()),
        }
    }

    /// The compiled pipeline: codec, topic routing and mappings.
    pub fn pipeline(&self, config: &Config) -> Result<Pipeline, SetupError> {
        let mappings: Vec<(Vec<String>, Arc<dyn Mapping>)> = match &self.syncs {
            Syncs::Typed(m) => m.clone(),
            Syncs::Declarative => {
                if config.syncs.is_empty() {
                    return Err(SetupError(
                        "the config has no [[sync]] section: nothing to apply".into(),
                    ));
                }
                let mut out = Vec::new();
                let mut problems = Vec::new();
                for (i, sync) in config.syncs.iter().enumerate() {
                    match DeclarativeMapping::compile(sync, &crate::config::sync_label(i, sync)) {
                        Ok(m) => out.push((sync.topics.clone(), Arc::new(m) as Arc<dyn Mapping>)),
                        Err(p) => problems.extend(p),
                    }
                }
                if !problems.is_empty() {
                    return Err(SetupError(problems.join("\n")));
                }
                out
            }
        };
        let filters = config
            .build_filters()
            .map_err(|p| SetupError(p.join("\n")))?;
        let masks = config.build_masks().map_err(|p| SetupError(p.join("\n")))?;
        let codec = config.build_codec().map_err(|p| SetupError(p.join("\n")))?;
        Pipeline::new(codec, mappings)
            .and_then(|p| p.with_filters(filters))
            .and_then(|p| p.with_masks(masks))
            .map_err(|p| SetupError(p.join("\n")))
    }

    /// The full handler; the pool connects lazily, so this never touches the database.
    pub async fn handler(
        &self,
        config: &Config,
        database_url: Option<&str>,
    ) -> Result<Handler, SetupError> {
        let pipeline = self.pipeline(config)?;
        let url = database_url
            .map(str::to_string)
            .or_else(|| {
                std::env::var(DATABASE_URL_ENV)
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .or_else(|| config.database.url.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let mut options = SinkOptions::default();
        if let Some(t) = &config.database.dead_letter_table {
            options.dead_letter_table = t.clone();
        }
        if let Some(n) = config.database.max_rows_per_statement {
            options.max_rows_per_statement = n;
        }
        if let Some(s) = config.database.tombstone_retention_seconds {
            options.tombstone_retention = std::time::Duration::from_secs(s);
        }
        let sink = Sink::open(&url, pipeline.mappings().to_vec(), options)
            .await
            .map_err(|e| SetupError(format!("database URL {}: {e}", redact(&url))))?;
        Ok(Handler::new(pipeline, sink))
    }
}

/// A URL fit for a message: the password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The `main` of every function binary: Lambda mode when the Lambda runtime started us, else the CLI.
pub async fn main(app: App) -> ExitCode {
    #[cfg(feature = "lambda")]
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args_os().len() <= 1 {
        return lambda::run(app).await;
    }
    // Not locked for the whole run: the local runner's thread writes progress lines and logs to stderr too.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    ExitCode::from(cli::run(&app, std::env::args_os(), &mut out, &mut err).await)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}
