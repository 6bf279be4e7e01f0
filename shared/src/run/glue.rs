//! AWS Glue Schema Registry schema versions, fetched with GetSchemaVersion through the AWS SDK: the
//! [`GlueSource`] a codec with `codec.glue` is connected to ([`connect`], from [`super::App::compile`]).
//!
//! The client is built at the first fetch, with the environment's credentials (Lambda's role) and the region
//! of `codec.glue.region` (else the environment's), over the same rustls/ring HTTPS client as Secrets
//! Manager ([`super::secret::http_client`]). Only Glue's `EntityNotFoundException` ("no such schema version")
//! and `InvalidInputException` (an id Glue cannot read) are permanent; everything else — no connection, a
//! timeout, throttling, `AccessDeniedException` (a role being fixed) — is transient: the batch is retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_config::{ConfigLoader, Region};
use aws_sdk_glue::Client;
use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata};

use super::aws::LazyClient;
use crate::decode::glue::{GlueConfig, GlueSchemaVersion, GlueSource};
use crate::decode::{Codec, DecodeError};

/// GetSchemaVersion on one registry's account and region.
pub struct GlueClient {
    config: GlueConfig,
    client: LazyClient<Client>,
}

impl std::fmt::Debug for GlueClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlueClient")
            .field("registry", &self.config.registry)
            .field("region", &self.config.region)
            .finish_non_exhaustive()
    }
}

impl GlueClient {
    /// A client for `codec.glue`; the AWS client itself is built at the first fetch.
    pub fn new(config: &GlueConfig) -> Self {
        Self {
            config: config.clone(),
            client: LazyClient::new(),
        }
    }

    /// Adjusts the AWS configuration before the client is built (credentials, for tests side by side in one
    /// process).
    pub fn with_config(
        mut self,
        customize: impl Fn(ConfigLoader) -> ConfigLoader + Send + Sync + 'static,
    ) -> Self {
        self.client.customize(Arc::new(customize));
        self
    }

    async fn client(&self) -> &Client {
        let config = &self.config;
        let adjust = |mut loader: ConfigLoader| {
            if let Some(region) = &config.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if let Some(endpoint) = &config.endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            loader
        };
        self.client.get(adjust, Client::new).await
    }

    async fn fetch(&self, id: &str) -> Result<GlueSchemaVersion, DecodeError> {
        let what = format!("Glue schema version {id}");
        let output = self
            .client()
            .await
            .get_schema_version()
            .schema_version_id(id)
            .send()
            .await
            .map_err(|e| {
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_string);
                let message = e
                    .as_service_error()
                    .and_then(|s| s.message())
                    .unwrap_or("")
                    .to_string();
                match code.as_deref() {
                    Some("EntityNotFoundException" | "InvalidInputException") => {
                        DecodeError::Permanent(format!(
                            "{what}: {}: {message}",
                            code.unwrap_or_default()
                        ))
                    }
                    Some(code) => DecodeError::Transient(format!("{what}: {code}: {message}")),
                    None => match e.raw_response() {
                        // An error body the SDK could not read (an emulator's XML, a proxy's page): as it
                        // came, cut short; it names the error, never a schema.
                        Some(r) => {
                            let body = r
                                .body()
                                .bytes()
                                .map(String::from_utf8_lossy)
                                .unwrap_or_default();
                            let body: String = body.chars().take(500).collect();
                            DecodeError::Transient(format!(
                                "{what}: HTTP {}: {body}",
                                r.status().as_u16()
                            ))
                        }
                        None => DecodeError::Transient(format!(
                            "{what}: cannot reach AWS Glue: {}",
                            DisplayErrorContext(&e)
                        )),
                    },
                }
            })?;
        let (Some(format), Some(definition)) = (output.data_format(), output.schema_definition())
        else {
            return Err(DecodeError::Transient(format!(
                "{what}: GetSchemaVersion answered without a data format or definition"
            )));
        };
        Ok(GlueSchemaVersion {
            data_format: format.as_str().to_string(),
            definition: definition.to_string(),
            schema_arn: output.schema_arn().map(str::to_string),
        })
    }
}

impl GlueSource for GlueClient {
    fn schema_version<'a>(
        &'a self,
        version_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<GlueSchemaVersion, DecodeError>> + Send + 'a>> {
        // Behind `dyn`, the SDK's deep futures are one pointer (see run/secret.rs).
        Box::pin(self.fetch(version_id))
    }
}

/// Connects `codec` to AWS Glue when its config has `codec.glue`.
pub fn connect(codec: &Codec) {
    if let Some(cfg) = codec.glue_config() {
        codec.connect_glue(Arc::new(GlueClient::new(cfg)));
    }
}
