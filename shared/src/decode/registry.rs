//! A Confluent-compatible schema registry: `GET {url}/schemas/ids/{id}` → `{"schema": "<Avro schema JSON>"}`,
//! optional basic auth. Each id is fetched once per function instance and cached, failures included when they
//! are permanent.
//!
//! Errors say whether the batch can go on: an id the registry does not know (404) is permanent (the record is
//! dead-lettered); a registry that cannot be reached, times out, answers 5xx or 429, or refuses the credentials
//! (401/403: they may be rotated or fixed) is transient, and the batch is retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::DecodeError;

/// `[codec.registry]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself, or (better) the name of an environment variable that holds it.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug)]
pub struct SchemaRegistry {
    base: String,
    auth: Option<(String, Option<String>)>,
    client: reqwest::Client,
    cache: Mutex<HashMap<u32, Result<Arc<Schema>, String>>>,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

impl SchemaRegistry {
    pub fn new(cfg: &RegistryConfig) -> Result<Self, String> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(format!(
                "codec.registry.url {:?} is not an http(s) URL",
                cfg.url
            ));
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
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The schema with this id; `Err(Permanent)` when the registry does not know it.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        let mut cache = self.cache.lock().await;
        if let Some(known) = cache.get(&id) {
            return known.clone().map_err(DecodeError::Permanent);
        }
        match self.fetch(id).await {
            Ok(schema) => {
                cache.insert(id, Ok(Arc::clone(&schema)));
                Ok(schema)
            }
            Err(DecodeError::Permanent(e)) => {
                cache.insert(id, Err(e.clone()));
                Err(DecodeError::Permanent(e))
            }
            Err(transient) => Err(transient),
        }
    }

    /// The ids fetched so far (for tests and logs).
    pub async fn cached(&self) -> usize {
        self.cache.lock().await.len()
    }

    async fn fetch(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut request = self
            .client
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, password.as_deref());
        }
        let transient = |what: String| {
            DecodeError::Transient(format!("schema registry, schema id {id}: {what}"))
        };
        let response = request.send().await.map_err(|e| transient(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(DecodeError::Permanent(format!(
                "unknown schema id {id} (the schema registry has no such schema)"
            )));
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
        {
            return Err(transient(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(DecodeError::Permanent(format!(
                "schema registry, schema id {id}: HTTP {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transient(e.to_string()))?;
        let parsed: SchemaResponse = serde_json::from_slice(&body).map_err(|e| {
            DecodeError::Permanent(format!(
                "schema registry, schema id {id}: unexpected answer: {e}"
            ))
        })?;
        if parsed.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return Err(DecodeError::Permanent(format!(
                "schema id {id} is not an Avro schema"
            )));
        }
        Schema::parse_str(&parsed.schema)
            .map(Arc::new)
            .map_err(|e| {
                DecodeError::Permanent(format!("schema id {id}: not a valid Avro schema: {e}"))
            })
    }
}
