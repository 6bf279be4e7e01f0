//! The ways into the handler: Lambda ([`lambda`], when the Lambda runtime started the binary) and the command
//! line ([`cli`]: `replay`, `config check`, and `consume` / `publish` on a Kafka broker with the `kafka` feature:
//! [`local`]). A function's `main` builds an [`App`] and calls [`main`].

#[cfg(feature = "aws")]
mod aws;
pub mod cli;
#[cfg(feature = "aws")]
pub mod glue;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "kafka")]
pub mod local;
mod logs;
#[cfg(feature = "aws")]
pub mod registry_secret;
#[cfg(feature = "aws")]
pub mod secret;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Compiled, Config};
use crate::pipeline::{Handler, Pipeline};
use crate::sync::typed::{FromKafkaEvent, TypedMapping};
use crate::sync::{Mapping, Sink, SinkOptions};
use sea_orm::{EntityTrait, IntoActiveModel};

/// The embedded default database: a SQLite file in the working directory, created on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://msk-sync.db?mode=rwc";
/// The environment variable of the database URL.
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
    /// The function's name, for messages, metrics and the consumer group.
    pub name: &'static str,
    /// Its syncs.
    pub syncs: Syncs,
}

/// Why a handler could not be built: always a bad invocation (exit 2), never worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

impl App {
    /// A function whose syncs are the config file's `[[sync]]` sections.
    pub fn declarative(name: &'static str) -> Self {
        Self {
            name,
            syncs: Syncs::Declarative,
        }
    }

    /// A typed function with one sync, `sync`, on every topic: each message becomes a row of entity `E` through
    /// its model's [`FromKafkaEvent`] — `App::typed::<planet::Entity>("planet-sync", "planet")`.
    pub fn typed<E>(name: &'static str, sync: &str) -> Self
    where
        E: EntityTrait + Default,
        E::Model: FromKafkaEvent + IntoActiveModel<E::ActiveModel>,
    {
        Self::with_mappings(
            name,
            vec![(
                vec!["*".to_string()],
                Arc::new(TypedMapping::<E>::new(sync)),
            )],
        )
    }

    /// A function whose syncs are mappings compiled into the binary, each with its topic patterns.
    pub fn with_mappings(name: &'static str, syncs: Vec<(Vec<String>, Arc<dyn Mapping>)>) -> Self {
        Self {
            name,
            syncs: Syncs::Typed(syncs),
        }
    }

    /// Loads the config (`explicit`, else `MSK_SYNC_CONFIG`, else `./msk-sync.toml`) and compiles it, once:
    /// every problem, each line prefixed with where the config came from. A declarative function cannot run
    /// without a config (there is no built-in one: a deployment ships its file, template.yaml in a layer), a
    /// typed function falls back to defaults.
    pub fn load(&self, explicit: Option<&Path>) -> Result<Compiled, SetupError> {
        let compiled = |config: Config, at: &str| {
            self.compile(&config).map_err(|problems| {
                SetupError(
                    problems
                        .iter()
                        .map(|p| format!("{at}: {p}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })
        };
        match Config::locate(explicit) {
            Some(path) => {
                let config = Config::from_file(&path).map_err(|e| SetupError(e.to_string()))?;
                compiled(config, &path.display().to_string())
            }
            None if matches!(self.syncs, Syncs::Declarative) => Err(SetupError(format!(
                "{}: no config: pass --config FILE, set {}, or create ./{}",
                self.name,
                crate::config::CONFIG_ENV,
                crate::config::DEFAULT_CONFIG_FILE
            ))),
            None => self
                .compile(&Config::default())
                .map_err(|p| SetupError(p.join("\n"))),
        }
    }

    /// Compiles `config` with this function's syncs: the typed ones, else the config's `[[sync]]` sections,
    /// of which a declarative function needs one at least.
    /// With feature `aws`, a codec with `codec.glue` is connected to AWS Glue here ([`glue::connect`]), and one
    /// with `codec.registry.password_secret` to Secrets Manager ([`registry_secret::connect`]).
    pub fn compile(&self, config: &Config) -> Result<Compiled, Vec<String>> {
        let compiled = match &self.syncs {
            Syncs::Typed(m) => config.compile(Some(m.clone())),
            Syncs::Declarative if config.syncs.is_empty() => Err(vec![
                "the config has no [[sync]] section: nothing to apply".into(),
            ]),
            Syncs::Declarative => config.compile(None),
        }?;
        #[cfg(feature = "aws")]
        {
            glue::connect(compiled.pipeline.codec());
            registry_secret::connect(compiled.pipeline.codec());
        }
        Ok(compiled)
    }

    /// The compiled pipeline alone, for callers that hold a [`Config`] (benchmarks).
    pub fn pipeline(&self, config: &Config) -> Result<Pipeline, SetupError> {
        self.compile(config)
            .map(|c| c.pipeline)
            .map_err(|p| SetupError(p.join("\n")))
    }

    /// The full handler of `config`; the pool connects lazily, so this never touches the database.
    pub async fn handler(
        &self,
        config: &Config,
        database_url: Option<&str>,
    ) -> Result<Handler, SetupError> {
        self.compile(config)
            .map_err(|p| SetupError(p.join("\n")))?
            .handler(database_url)
            .await
    }
}

impl Compiled {
    /// The handler of a compiled config; the URL is `database_url`, else `DATABASE_URL`, else the config's,
    /// else the embedded SQLite file. The pool connects lazily, so this never touches the database.
    pub async fn handler(self, database_url: Option<&str>) -> Result<Handler, SetupError> {
        let url = database_url
            .map(str::to_string)
            .or_else(env_database_url)
            .or(self.database_url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let sink = open_sink(&url, &self.pipeline, self.sink).await?;
        Ok(Handler::new(self.pipeline, sink))
    }
}

/// `DATABASE_URL`, when set and not empty.
pub fn env_database_url() -> Option<String> {
    std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
}

/// The pipeline's tables on `url`; the pool connects lazily. Also what a re-read secret's new URL opens.
pub async fn open_sink(
    url: &str,
    pipeline: &Pipeline,
    options: SinkOptions,
) -> Result<Sink, SetupError> {
    Sink::open(url, pipeline.mappings().to_vec(), options)
        .await
        .map_err(|e| {
            SetupError(format!(
                "database URL {}: {}",
                redact_url(url),
                scrub(&e.to_string(), url)
            ))
        })
}

/// A database URL fit for a message or a log line: the password of its user info and the value of every
/// query parameter that may hold a secret (`password`, `sslpassword`, `…token…`, `…secret…`) replaced by
/// `***`. Works on text that is not a valid URL too (an unknown scheme, an unparsable port), since those
/// are exactly the URLs that end up in error messages.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    // Longest first, so that a secret containing another is replaced whole.
    let mut spans = secret_spans(url);
    spans.sort_by_key(|&(start, _)| std::cmp::Reverse(start));
    for (start, end) in spans {
        out.replace_range(start..end, "***");
    }
    out
}

/// Kept for callers that predate [`redact_url`].
pub fn redact(url: &str) -> String {
    redact_url(url)
}

/// `text` (an error message, a log line) with every secret of `url` in it replaced by `***`: the secrets as
/// written in the URL and percent-decoded, as a driver may quote either.
pub fn scrub(text: &str, url: &str) -> String {
    let mut secrets: Vec<String> = secret_spans(url)
        .into_iter()
        .flat_map(|(start, end)| {
            let raw = &url[start..end];
            [raw.to_string(), percent_decode(raw)]
        })
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in secrets {
        out = out.replace(&secret, "***");
    }
    out
}

/// Byte ranges of `url` that hold secrets: the password of the user info (between the first `:` after
/// `scheme://` and the last `@`, so that a password with an unescaped `@` or `/` is still covered whole),
/// and the values of secret query parameters.
fn secret_spans(url: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let after_scheme = url.find("://").map_or(0, |s| s + 3);
    if let Some(at) = url.rfind('@').filter(|&at| at >= after_scheme)
        && let Some(colon) = url[after_scheme..at].find(':')
    {
        spans.push((after_scheme + colon + 1, at));
    }
    if let Some(q) = url[after_scheme..].find('?').map(|q| after_scheme + q) {
        let mut start = q + 1;
        for pair in url[q + 1..].split(['&', ';']) {
            if let Some((name, value)) = pair.split_once('=') {
                let name = percent_decode(name).to_ascii_lowercase();
                let secret = ["pass", "pwd", "secret", "token", "credential"]
                    .iter()
                    .any(|s| name.contains(s));
                if secret && !value.is_empty() {
                    let value_start = start + name_len(pair);
                    spans.push((value_start, value_start + value.len()));
                }
            }
            start += pair.len() + 1;
        }
    }
    // A password span and a query span may overlap when the password holds a `?`: keep the outer one.
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Length of `name=` in a query pair.
fn name_len(pair: &str) -> usize {
    pair.find('=').map_or(pair.len(), |i| i + 1)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Directives every log filter gets, whatever `RUST_LOG` says: sea-orm's trace-level spans around
/// connecting record the whole `ConnectOptions`, URL and password included.
pub(crate) const QUIET_DEPENDENCIES: [&str; 1] = ["sea_orm::driver=debug"];

/// The crates of the AWS SDK and its HTTP stack. At DEBUG and TRACE they log requests and answers whole: the
/// signature's canonical request with the session token, the access key id, the secret's value in the
/// answer's body. Their events below INFO are dropped whatever `RUST_LOG` asks ([`no_credentials`]).
pub(crate) const SDK_TARGETS: [&str; 9] = [
    "aws_sigv4",
    "aws_smithy",
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_",
    "aws_types",
    "hyper",
    "h2",
];

/// A filter that drops the events and spans below INFO of [`SDK_TARGETS`]: no credential at any log level.
/// A layer of its own, after the `RUST_LOG` filter, so no directive (`aws_sigv4::sign=trace`) lets them in.
pub(crate) fn no_credentials()
-> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !SDK_TARGETS.iter().any(|t| meta.target().starts_with(t))
    })
}

/// A log filter from `RUST_LOG` (else `default`), with [`QUIET_DEPENDENCIES`].
pub(crate) fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    for directive in QUIET_DEPENDENCIES {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
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
    use super::{App, redact_url, scrub};

    /// A start compiles the config once: a schema file that the codec (twice) and a mask name is read once,
    /// from loading the config to the handler.
    #[tokio::test]
    async fn a_function_instance_compiles_its_config_once() {
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/schemas/planet.avsc");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("msk-sync.toml");
        std::fs::write(
            &file,
            format!(
                r#"
                [codec]
                value = "auto"
                schemas = {{ "1" = "{schema}" }}
                raw_schema = "{schema}"
                [[mask]]
                schema = "{schema}"
                levels = ["public", "confidential", "secret"]
                emit_level = "confidential"
                [[sync]]
                topics = ["*"]
                table = "t"
                key = ["id"]
                columns = [{{ name = "id", path = "$.id" }}]
                "#
            ),
        )
        .unwrap();
        let before = crate::decode::schema_file_reads();
        let compiled = App::declarative("t").load(Some(&file)).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let handler = compiled.handler(Some(&url)).await.unwrap();
        assert_eq!(crate::decode::schema_file_reads() - before, 1);
        assert_eq!(handler.pipeline().mappings().len(), 1);
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }

    #[test]
    fn redact_hides_passwords_in_urls_that_do_not_parse_and_in_the_query() {
        let cases = [
            (
                "postgresx://app:S3cret@h:5432/db",
                "postgresx://app:***@h:5432/db",
            ),
            (
                "postgres://app:S3cret@h:notaport/db",
                "postgres://app:***@h:notaport/db",
            ),
            ("postgres://app:S3c@r/et@h/db", "postgres://app:***@h/db"),
            ("app:S3cret@h/db", "app:***@h/db"),
            (
                "sqlite://x.db?mode=rwc&password=S3cret",
                "sqlite://x.db?mode=rwc&password=***",
            ),
            (
                "postgres://h/db?user=app&password=S3cret&sslmode=disable",
                "postgres://h/db?user=app&password=***&sslmode=disable",
            ),
            (
                "mysql://h/db?sslpassword=S3cret;auth_token=T0k",
                "mysql://h/db?sslpassword=***;auth_token=***",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn scrub_removes_the_secrets_of_a_url_from_any_text() {
        let url = "postgres://app:S3c%40ret@h/db?password=Other";
        let text = "cannot connect to 'postgres://app:S3c%40ret@h/db' as app with S3c@ret or Other";
        assert_eq!(
            scrub(text, url),
            "cannot connect to 'postgres://app:***@h/db' as app with *** or ***"
        );
    }
}
