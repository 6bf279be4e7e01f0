//! The schema registry's basic-auth password from AWS Secrets Manager (`codec.registry.password_secret`): the
//! [`CredentialsSource`] a codec with that setting is connected to ([`connect`], from [`super::App::compile`]).
//!
//! As for the database secret ([`super::secret`]): the client is built at the first read, with the
//! environment's credentials and region (Lambda's role; `AWS_ENDPOINT_URL` too) and the same deadlines
//! ([`super::aws::timeouts`]); a read that fails (the service, the network, a policy fixed in the meantime) is
//! transient, a secret whose contents give no password is misconfigured. Nothing here logs a value of the
//! secret or quotes an answer that may hold one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_config::ConfigLoader;
use aws_sdk_secretsmanager::Client;
use serde_json::Value;

use super::aws::LazyClient;
use super::secret::describe;
use crate::decode::registry::{Credentials, CredentialsSource};
use crate::decode::{Codec, DecodeError};

/// One secret holding the registry's password.
pub struct RegistrySecret {
    secret_id: String,
    client: LazyClient<Client>,
}

impl std::fmt::Debug for RegistrySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySecret")
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

impl RegistrySecret {
    /// The secret `secret_id` (an ARN or a name); the AWS client is built at the first read.
    pub fn new(secret_id: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            client: LazyClient::new(),
        }
    }

    /// Adjusts the AWS configuration before the client is built (an endpoint, credentials), for callers that
    /// cannot use the environment, such as tests side by side in one process.
    pub fn with_config(
        mut self,
        customize: impl Fn(ConfigLoader) -> ConfigLoader + Send + Sync + 'static,
    ) -> Self {
        self.client.customize(Arc::new(customize));
        self
    }

    async fn read(&self) -> Result<Credentials, DecodeError> {
        tracing::info!(secret = %self.secret_id, "reading the schema registry's secret");
        let name = |reason: String| {
            format!(
                "codec.registry.password_secret {}: {reason}",
                self.secret_id
            )
        };
        let output = self
            .client
            .get(|loader| loader, Client::new)
            .await
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| DecodeError::Transient(name(describe(&e))))?;
        let text = output.secret_string().ok_or_else(|| {
            DecodeError::Misconfigured(name(
                "it has no SecretString (a binary secret is not read): store the password or \
                 {\"username\", \"password\"} as text"
                    .into(),
            ))
        })?;
        credentials_from_secret(text).map_err(|reason| DecodeError::Misconfigured(name(reason)))
    }
}

impl CredentialsSource for RegistrySecret {
    fn credentials(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, DecodeError>> + Send + '_>> {
        // Behind `dyn`, the SDK's deep futures are one pointer (see run/secret.rs).
        Box::pin(self.read())
    }
}

/// The credentials in a secret's text: JSON `{"username": …, "password": …}` (`username` optional), else the
/// whole text (trimmed) as the password. Errors name the field at fault, never a value.
pub fn credentials_from_secret(text: &str) -> Result<Credentials, String> {
    let text = text.trim();
    if !text.starts_with('{') {
        if text.is_empty() {
            return Err("it is empty: store the password, or {\"username\", \"password\"}".into());
        }
        return Ok(Credentials {
            username: None,
            password: text.to_string(),
        });
    }
    // Not serde's error text: it can quote a piece of the secret.
    let json: Value = serde_json::from_str(text)
        .map_err(|_| "it starts with { but is not valid JSON".to_string())?;
    let Some(object) = json.as_object() else {
        return Err("it starts with { but is not a JSON object".into());
    };
    let field = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field {name:?} is not a string")),
    };
    let password =
        field("password")?.ok_or_else(|| "field \"password\" is missing (or empty)".to_string())?;
    Ok(Credentials {
        username: field("username")?,
        password,
    })
}

/// Connects `codec` to Secrets Manager when its config has `codec.registry.password_secret`.
pub fn connect(codec: &Codec) {
    if let Some(secret_id) = codec.registry_password_secret() {
        codec.connect_registry_credentials(Arc::new(RegistrySecret::new(secret_id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_the_password_or_json_with_one() {
        let plain = credentials_from_secret(" s3cret\n").unwrap();
        assert_eq!((plain.username, plain.password.as_str()), (None, "s3cret"));
        let json = credentials_from_secret(r#"{"username":"u","password":"p@ss"}"#).unwrap();
        assert_eq!(
            (json.username.as_deref(), json.password.as_str()),
            (Some("u"), "p@ss")
        );
        let no_user = credentials_from_secret(r#"{"password":"p"}"#).unwrap();
        assert_eq!(no_user.username, None);
        assert!(!format!("{json:?}").contains("p@ss"));
    }

    #[test]
    fn a_secret_without_a_password_names_the_field_never_a_value() {
        for (secret, expected) in [
            (r#"{"username":"s3cret"}"#, "\"password\" is missing"),
            (
                r#"{"username":"u","password":""}"#,
                "\"password\" is missing",
            ),
            (r#"{"password":["s3cret"]}"#, "\"password\" is not a string"),
            (r#"{"password":"s3cret""#, "not valid JSON"),
            ("  ", "it is empty"),
        ] {
            let e = credentials_from_secret(secret).unwrap_err();
            assert!(e.contains(expected), "{secret}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
