//! What the AWS SDK clients of [`super::secret`] and [`super::glue`] share: one HTTPS client and a client built
//! at its first use, so that a cold start does not pay for an SDK configuration it may never need, and the
//! deadlines of every call ([`timeouts`]).

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use tokio::sync::OnceCell;

/// The HTTPS client of the AWS SDK: hyper on rustls with `ring` (aws-lc-rs is the SDK's default, a C build
/// that the rest of the binary does not need), the system's root certificates.
pub fn http_client() -> aws_sdk_secretsmanager::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// How long connecting to an AWS endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt of a call may take, answer included: an endpoint that accepts TCP and never answers
/// fails the attempt here instead of holding the batch until Lambda's timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call may take with the SDK's retries.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(12);

/// The deadlines of every AWS call ([`CONNECT_TIMEOUT`], [`ATTEMPT_TIMEOUT`], [`OPERATION_TIMEOUT`]). The
/// SDK sets none by default but the connect timeout.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(ATTEMPT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// A caller's adjustment of the AWS configuration (credentials or an endpoint, for tests side by side in one
/// process).
pub(crate) type Customize = Arc<dyn Fn(ConfigLoader) -> ConfigLoader + Send + Sync>;

/// An SDK client of type `C`, built once, at the first [`LazyClient::get`].
pub(crate) struct LazyClient<C> {
    customize: Option<Customize>,
    client: OnceCell<C>,
}

impl<C> LazyClient<C> {
    pub(crate) fn new() -> Self {
        Self {
            customize: None,
            client: OnceCell::new(),
        }
    }

    pub(crate) fn customize(&mut self, customize: Customize) {
        self.customize = Some(customize);
    }

    /// The environment's configuration over [`http_client`], with `adjust` (the owner's settings) and then the
    /// caller's customization applied.
    pub(crate) fn config_loader(
        &self,
        adjust: impl FnOnce(ConfigLoader) -> ConfigLoader,
    ) -> ConfigLoader {
        let loader = adjust(
            aws_config::defaults(BehaviorVersion::latest())
                .http_client(http_client())
                .timeout_config(timeouts()),
        );
        match &self.customize {
            Some(customize) => customize(loader),
            None => loader,
        }
    }

    /// The client, made by `make` from [`LazyClient::config_loader`]'s configuration the first time.
    pub(crate) async fn get(
        &self,
        adjust: impl FnOnce(ConfigLoader) -> ConfigLoader,
        make: impl FnOnce(&SdkConfig) -> C,
    ) -> &C {
        self.client
            .get_or_init(|| async { make(&self.config_loader(adjust).load().await) })
            .await
    }
}
