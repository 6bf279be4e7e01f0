//! A Confluent-compatible schema registry: `GET {url}/schemas/ids/{id}` → `{"schema": "<Avro schema JSON>"}`
//! (or `"schemaType": "PROTOBUF"` and the text of a .proto file, whose `references` — the files it imports — are
//! fetched as `GET {url}/subjects/{subject}/versions/{version}`), optional basic auth.
//!
//! A schema id never changes its schema, so a schema, once fetched, is kept for the life of the instance.
//! Everything else is classified by what the answer proves:
//!
//! - Permanent (the record is dead-lettered): only a well-formed "schema not found" — HTTP 404 with a JSON body
//!   whose `error_code` is 40403 — and a well-formed schema response whose schema is not Avro or does not parse.
//!   Even these are kept for a short time only ([`RegistryConfig::not_found_ttl_ms`], 60 s by default): a
//!   schema registered a moment later (or a registry restored from backup) is found by a later batch.
//! - Transient (the batch is retried): everything else — no connection, a reset, a timeout, HTTP 408, 429 and
//!   5xx, 401/403 (credentials may be rotated or fixed), any other status, a 404 that is not the registry's own
//!   (a proxy's), and a 200 whose body is not a schema response (a proxy's HTML page).
//!
//! Messages say what happened ("timed out after 5000 ms", "HTTP 503 Service Unavailable", "HTTP 200 but not a
//! schema response") and never quote the body.
//!
//! The basic-auth password comes from the config (`password`), an environment variable (`password_env`), or an
//! AWS Secrets Manager secret (`password_secret`). The secret is read by a [`CredentialsSource`] the runtime
//! connects (`run::registry_secret`, with the AWS SDK: decoding never imports AWS), at the first request and
//! kept for the instance; a 401 or 403 from the registry forgets it, so the next batch reads it again (a rotated
//! password). A secret whose contents give no password is the misconfigured class ([`DecodeError::Misconfigured`]),
//! a read that fails transient, as for the database secret.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::DecodeError;

/// `[codec.registry]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's base URL (`https://…`; `http://` for a registry on loopback).
    #[schemars(example = &"https://registry.example:8081")]
    pub url: String,
    /// Basic-auth user, if the registry wants one.
    #[serde(default)]
    #[schemars(example = &"msk-sync")]
    pub username: Option<String>,
    /// The password itself, or (better) the name of an environment variable that holds it.
    #[serde(default)]
    pub password: Option<String>,
    /// The environment variable that holds the basic-auth password (never the config file).
    #[serde(default)]
    #[schemars(example = &"REGISTRY_PASSWORD")]
    pub password_env: Option<String>,
    /// The ARN (or name) of an AWS Secrets Manager secret that holds the basic-auth password: the password as
    /// the secret's whole text, or JSON `{"username": …, "password": …}` (its `username`, when it has one, wins
    /// over `username` here). Read at the first request, again after the registry refuses it (rotation); needs
    /// `secretsmanager:GetSecretValue` on it (template.yaml's `RegistryPasswordSecretArn`). Not with `password` or
    /// `password_env`.
    #[serde(default)]
    #[schemars(
        example = &"arn:aws:secretsmanager:eu-west-1:123456789012:secret:msk-sync/registry-AbCdEf"
    )]
    pub password_secret: Option<String>,
    /// How long one request may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a permanent answer ("schema not found") stands before a later batch asks again, in ms.
    #[serde(default = "default_not_found_ttl_ms")]
    pub not_found_ttl_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_not_found_ttl_ms() -> u64 {
    60_000
}

/// The largest answer read from the registry (schemas are a few KB; a bigger body is not a schema response).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Basic-auth credentials read from a secret. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The secret's user name, when it holds one (else `codec.registry.username`).
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Reads the secret of `codec.registry.password_secret`: `Err(Misconfigured)` when what it holds gives no
/// password, `Err(Transient)` when it cannot be read now. Errors name the secret, never a value of it.
pub trait CredentialsSource: Send + Sync + std::fmt::Debug {
    /// Reads the secret now.
    fn credentials(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, DecodeError>> + Send + '_>>;
}

/// User name and password of basic auth.
type Auth = (String, Option<String>);

/// The client of one registry (`codec.registry`), with the schemas it answered.
#[derive(Debug)]
pub struct SchemaRegistry {
    base: String,
    auth: Option<Auth>,
    /// `password_secret`, and the user name of the config.
    secret: Option<(String, Option<String>)>,
    /// What reads the secret, connected by the runtime.
    source: OnceLock<Arc<dyn CredentialsSource>>,
    /// The secret's credentials, read at the first request and forgotten when the registry refuses them.
    from_secret: Mutex<Option<Auth>>,
    client: reqwest::Client,
    timeout_ms: u64,
    not_found_ttl: Duration,
    /// Schemas for good; permanent failures until the instant they expire.
    cache: Mutex<HashMap<u32, Answer>>,
}

/// What the registry said of an id: its schema, or a permanent failure and when it expires.
type Answer = Result<RegistrySchema, (String, Instant)>;

/// A schema the registry holds: Avro, or a compiled .proto file (Confluent framing's message indexes pick the
/// message type in it).
#[derive(Debug, Clone)]
pub enum RegistrySchema {
    /// An Avro schema.
    Avro(Arc<Schema>),
    /// A compiled .proto file, its imports included.
    Protobuf(prost_reflect::FileDescriptor),
}

/// The most .proto files one schema may pull in through its references (imports of imports included).
const MAX_REFERENCES: usize = 64;

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// A file a Protobuf schema imports: `name` as the import says it, found as `subject` at `version`.
#[derive(Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

/// The registry's error body, `{"error_code": 40403, "message": "Schema not found"}`.
#[derive(Deserialize)]
struct ErrorResponse {
    error_code: i64,
}

/// Confluent's "schema not found".
const SCHEMA_NOT_FOUND: i64 = 40403;
/// Confluent's "not found" codes: subject (40401), version (40402), schema (40403).
const NOT_FOUND: [i64; 3] = [40401, 40402, SCHEMA_NOT_FOUND];

/// A subject name as one URL path segment.
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl SchemaRegistry {
    /// The client of `cfg`; what is wrong in it (a URL that is not http(s), two passwords, an unset
    /// `password_env`) is an error naming the setting.
    pub fn new(cfg: &RegistryConfig) -> Result<Self, String> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(format!(
                "codec.registry.url {:?} is not an http(s) URL",
                cfg.url
            ));
        }
        if cfg.password_secret.is_some() && (cfg.password.is_some() || cfg.password_env.is_some()) {
            return Err(
                "codec.registry: password_secret and password / password_env name the password twice: \
                 keep one"
                    .into(),
            );
        }
        if cfg.password_secret.as_deref().is_some_and(str::is_empty) {
            return Err("codec.registry.password_secret is empty".into());
        }
        let password = match (&cfg.password, &cfg.password_env) {
            (_, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| format!("codec.registry.password_env: {var} is not set"))?,
            ),
            (p, None) => p.clone(),
        };
        // ring, the provider sqlx already links, and Mozilla's roots: no second crypto library in the binary.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .map_err(|e| format!("codec.registry: {e}"))?;
        Ok(Self {
            base: cfg.url.trim_end_matches('/').to_string(),
            auth: cfg.username.clone().map(|u| (u, password)),
            secret: cfg
                .password_secret
                .clone()
                .map(|id| (id, cfg.username.clone())),
            source: OnceLock::new(),
            from_secret: Mutex::new(None),
            client,
            timeout_ms: cfg.timeout_ms,
            not_found_ttl: Duration::from_millis(cfg.not_found_ttl_ms),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// `codec.registry.password_secret`, when set.
    pub fn password_secret(&self) -> Option<&str> {
        self.secret.as_ref().map(|(id, _)| id.as_str())
    }

    /// Connects what reads `password_secret` (once; `false` when one is connected already).
    pub fn connect(&self, source: Arc<dyn CredentialsSource>) -> bool {
        self.source.set(source).is_ok()
    }

    /// The credentials of a request: the config's, or the secret's (read now if not yet).
    async fn auth(&self) -> Result<Option<Auth>, DecodeError> {
        let Some((secret_id, config_user)) = &self.secret else {
            return Ok(self.auth.clone());
        };
        let mut cached = self.from_secret.lock().await;
        if let Some(auth) = &*cached {
            return Ok(Some(auth.clone()));
        }
        let Some(source) = self.source.get() else {
            return Err(DecodeError::Misconfigured(format!(
                "codec.registry.password_secret {secret_id}: nothing reads secrets in this build \
                 (feature \"aws\")"
            )));
        };
        let credentials = source.credentials().await?;
        let Some(user) = credentials.username.or_else(|| config_user.clone()) else {
            return Err(DecodeError::Misconfigured(format!(
                "codec.registry.password_secret {secret_id}: the secret has no \"username\" and \
                 codec.registry.username is not set"
            )));
        };
        let auth = (user, Some(credentials.password));
        *cached = Some(auth.clone());
        Ok(Some(auth))
    }

    /// The schema with this id; `Err(Permanent)` when the registry does not know it (asked again once that
    /// answer is older than the time-to-live).
    pub async fn schema(&self, id: u32) -> Result<RegistrySchema, DecodeError> {
        let mut cache = self.cache.lock().await;
        match cache.get(&id) {
            Some(Ok(schema)) => return Ok(schema.clone()),
            Some(Err((e, until))) if Instant::now() < *until => {
                return Err(DecodeError::Permanent(e.clone()));
            }
            _ => {}
        }
        match self.fetch(id).await {
            Ok(schema) => {
                cache.insert(id, Ok(schema.clone()));
                Ok(schema)
            }
            Err(DecodeError::Permanent(e)) => {
                let until = Instant::now() + self.not_found_ttl;
                cache.insert(id, Err((e.clone(), until)));
                Err(DecodeError::Permanent(e))
            }
            Err(transient) => {
                // A registry that fails now says nothing about an earlier answer: forget it, ask again next time.
                cache.remove(&id);
                Err(transient)
            }
        }
    }

    async fn fetch(&self, id: u32) -> Result<RegistrySchema, DecodeError> {
        let what = format!("schema id {id}");
        let parsed = self
            .get(&format!("/schemas/ids/{id}"), &what, || {
                format!("unknown schema id {id} (the schema registry has no such schema)")
            })
            .await?;
        match parsed.schema_type.as_deref() {
            None | Some("AVRO") => Schema::parse_str(&parsed.schema)
                .map(|s| RegistrySchema::Avro(Arc::new(s)))
                .map_err(|e| {
                    DecodeError::Permanent(format!("schema id {id}: not a valid Avro schema: {e}"))
                }),
            Some("PROTOBUF") => {
                let imports = self.references(id, parsed.references).await?;
                let name = format!("schema-{id}.proto");
                super::protobuf::compile_source(&name, &parsed.schema, &imports)
                    .map(RegistrySchema::Protobuf)
                    .map_err(|e| {
                        DecodeError::Permanent(format!(
                            "schema id {id}: not a valid .proto file: {e}"
                        ))
                    })
            }
            Some(other) => Err(DecodeError::Permanent(format!(
                "schema id {id} is a {other} schema: only Avro and Protobuf are read"
            ))),
        }
    }

    /// The texts of the files a Protobuf schema imports, their own imports too, by import name.
    async fn references(
        &self,
        id: u32,
        mut pending: Vec<Reference>,
    ) -> Result<HashMap<String, String>, DecodeError> {
        let mut texts = HashMap::new();
        while let Some(r) = pending.pop() {
            if texts.contains_key(&r.name) {
                continue;
            }
            if texts.len() >= MAX_REFERENCES {
                return Err(DecodeError::Permanent(format!(
                    "schema id {id}: references more than {MAX_REFERENCES} files"
                )));
            }
            let subject: String = url_segment(&r.subject);
            let what = format!("schema id {id}, reference {:?}", r.name);
            let parsed = self
                .get(
                    &format!("/subjects/{subject}/versions/{}", r.version),
                    &what,
                    || format!("{what}: the schema registry has no such subject version"),
                )
                .await?;
            pending.extend(parsed.references);
            texts.insert(r.name, parsed.schema);
        }
        Ok(texts)
    }

    /// GETs `path` and reads a schema response. A well-formed 404 of the registry is permanent (`not_found`
    /// says what); everything else that is not a schema response is transient.
    async fn get(
        &self,
        path: &str,
        what: &str,
        not_found: impl FnOnce() -> String,
    ) -> Result<SchemaResponse, DecodeError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .client
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = self.auth().await? {
            request = request.basic_auth(user, password);
        }
        let transient =
            |why: String| DecodeError::Transient(format!("schema registry, {what}: {why}"));
        let mut response = request
            .send()
            .await
            .map_err(|e| transient(self.failure(&e)))?;
        let status = response.status();
        if self.secret.is_some()
            && matches!(
                status,
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
            )
        {
            // The password may have been rotated: the next request reads the secret again.
            *self.from_secret.lock().await = None;
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => {
                    return Err(transient(format!(
                        "HTTP {status} with an answer larger than {} MiB",
                        MAX_ANSWER_BYTES >> 20
                    )));
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(transient(format!(
                        "HTTP {status}, then the answer broke off: {}",
                        self.failure(&e)
                    )));
                }
            }
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            // Only the registry's own "not found" proves the id unknown; a proxy's 404 proves nothing.
            return match serde_json::from_slice::<ErrorResponse>(&body) {
                Ok(e) if NOT_FOUND.contains(&e.error_code) => {
                    Err(DecodeError::Permanent(not_found()))
                }
                _ => Err(transient(format!(
                    "HTTP {status} but not the registry's \"schema not found\" (error_code {SCHEMA_NOT_FOUND})"
                ))),
            };
        }
        if !status.is_success() {
            return Err(transient(format!("HTTP {status}")));
        }
        serde_json::from_slice::<SchemaResponse>(&body).map_err(|_| {
            transient(format!(
                "HTTP {} but not a schema response",
                status.as_u16()
            ))
        })
    }

    /// What went wrong with a request, without its URL: the kind, and the innermost cause ("connection
    /// refused", "connection reset by peer").
    fn failure(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("timed out after {} ms", self.timeout_ms);
        }
        let kind = if e.is_connect() {
            "cannot connect"
        } else {
            "the request failed"
        };
        let mut innermost = None;
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            innermost = Some(c);
            cause = c.source();
        }
        match innermost {
            Some(c) => format!("{kind}: {c}"),
            None => kind.to_string(),
        }
    }
}
