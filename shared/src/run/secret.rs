//! The database secret, read from AWS Secrets Manager at run time (Lambda mode, `DATABASE_SECRET_ARN`).
//!
//! The function's configuration carries the secret's ARN, never its value: the value is read at the first
//! batch, kept for the life of the instance, and read once more when the database refuses the credentials (the
//! secret was rotated), before the batch fails as transient. The secret is either a database URL or the JSON
//! that RDS and Aurora keep for a managed or rotated database user
//! (`{"engine", "host", "port", "username", "password", "dbname"}`).
//!
//! Where the database URL comes from, first found wins: `--database-url`, `DATABASE_URL` (so `replay`,
//! `consume` and tests keep working as before), `DATABASE_SECRET_ARN` (Lambda mode), the config's
//! `database.url`, the SQLite default.
//!
//! The AWS client is built at the first batch, not at start-up, so a cold start does not pay for it; the
//! credentials and region are the ones Lambda puts in the environment (`AWS_ENDPOINT_URL` too, which the tests
//! point at an emulator). Nothing here logs the secret's value or the URL made of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_config::ConfigLoader;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use sea_orm::{DbErr, RuntimeErr};
use serde_json::Value;
use tokio::sync::Mutex;

use super::aws::LazyClient;
pub use super::aws::http_client;
use super::open_sink;
use crate::event::MskEvent;
use crate::pipeline::{Handler, HandlerError, Pipeline};
use crate::report::BatchReport;
use crate::sync::SinkOptions;

/// The ARN (or name) of the secret that holds the database URL or the RDS JSON.
pub const DATABASE_SECRET_ARN_ENV: &str = "DATABASE_SECRET_ARN";

/// How long the check "did the database refuse the credentials?" may take after a failed batch. A refusal
/// comes back at once; a database that is away must not make the failed batch twice as slow.
const CREDENTIALS_CHECK: Duration = Duration::from_secs(3);

/// `DATABASE_SECRET_ARN`, when set and not empty.
pub fn env_secret_arn() -> Option<String> {
    std::env::var(DATABASE_SECRET_ARN_ENV)
        .ok()
        .filter(|s| !s.is_empty())
}

/// One secret in Secrets Manager, read on demand with a client built on first use.
pub struct SecretSource {
    secret_id: String,
    client: LazyClient<Client>,
    fallback: Fallback,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

/// Why the secret gave no database URL. The text names the secret and what was wrong, never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("database secret {secret_id}: {reason}")]
pub struct SecretError {
    /// The secret's name or ARN.
    pub secret_id: String,
    /// What was wrong, never a value of the secret.
    pub reason: String,
    /// The secret was read but what it holds cannot make a database URL (a missing field, an unknown engine,
    /// not JSON, a binary secret): an operator's error that no retry cures, the misconfigured class. Otherwise
    /// the read itself failed (the service, the network, a policy fixed in the meantime): transient.
    pub contents: bool,
}

/// The function's own settings for what an RDS secret may leave out: RDS-managed master-user secrets hold
/// only `username` and `password`. A field the secret has wins over its setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallback {
    /// `DATABASE_ENGINE`: postgres, aurora-postgresql, mysql, mariadb, aurora-mysql.
    pub engine: Option<String>,
    /// `DATABASE_HOST`.
    pub host: Option<String>,
    /// `DATABASE_PORT`.
    pub port: Option<String>,
    /// `DATABASE_NAME`.
    pub dbname: Option<String>,
}

/// The settings of [`Fallback`], by field.
pub const FALLBACK_ENV: [(&str, &str); 4] = [
    ("engine", "DATABASE_ENGINE"),
    ("host", "DATABASE_HOST"),
    ("port", "DATABASE_PORT"),
    ("dbname", "DATABASE_NAME"),
];

impl Fallback {
    /// `DATABASE_ENGINE`, `DATABASE_HOST`, `DATABASE_PORT`, `DATABASE_NAME`, those set and not empty.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            engine: var(FALLBACK_ENV[0].1),
            host: var(FALLBACK_ENV[1].1),
            port: var(FALLBACK_ENV[2].1),
            dbname: var(FALLBACK_ENV[3].1),
        }
    }

    fn get(&self, field: &str) -> Option<String> {
        match field {
            "engine" => self.engine.clone(),
            "host" => self.host.clone(),
            "port" => self.port.clone(),
            "dbname" => self.dbname.clone(),
            _ => None,
        }
    }
}

/// The setting that stands in for `field` of the secret, if there is one.
fn setting_of(field: &str) -> Option<&'static str> {
    FALLBACK_ENV
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, env)| *env)
}

impl SecretSource {
    /// The secret `secret_id` (an ARN or a name), read with the environment's region and credentials.
    pub fn new(secret_id: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            client: LazyClient::new(),
            fallback: Fallback::default(),
        }
    }

    /// Takes what the secret leaves out (engine, host, port, database) from `fallback`.
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Adjusts the AWS configuration before the client is built (an endpoint, credentials, a region): for
    /// callers that cannot use the environment, such as tests running side by side in one process.
    pub fn with_config(
        mut self,
        customize: impl Fn(ConfigLoader) -> ConfigLoader + Send + Sync + 'static,
    ) -> Self {
        self.client.customize(Arc::new(customize));
        self
    }

    /// The secret's name or ARN.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The AWS configuration the client is built from: the environment's, over rustls with `ring`.
    pub fn config_loader(&self) -> ConfigLoader {
        self.client.config_loader(|loader| loader)
    }

    async fn client(&self) -> &Client {
        self.client.get(|loader| loader, Client::new).await
    }

    /// Reads the secret now and turns it into a database URL.
    pub async fn database_url(&self) -> Result<String, SecretError> {
        // The SDK's futures nest deep enough to overflow the compiler's layout query of every future that
        // awaits them, up to a function's `main`; behind `dyn` they are one pointer.
        let read: Pin<Box<dyn Future<Output = Result<String, SecretError>> + Send + '_>> =
            Box::pin(self.read_now());
        read.await
    }

    async fn read_now(&self) -> Result<String, SecretError> {
        tracing::info!(secret = %self.secret_id, "reading the database secret");
        let error = |reason: String| SecretError {
            secret_id: self.secret_id.clone(),
            reason,
            contents: false,
        };
        let contents = |reason: String| SecretError {
            contents: true,
            ..error(reason)
        };
        let output = self
            .client()
            .await
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| error(describe(&e)))?;
        let text = output.secret_string().ok_or_else(|| {
            contents("it has no SecretString (a binary secret is not read): store the URL or the RDS JSON as text".into())
        })?;
        url_from_secret_with(text, &self.fallback).map_err(contents)
    }
}

/// What went wrong with a `GetSecretValue` call, in words that never quote the answer's body: a 2xx answer
/// carries the secret itself, so an answer the SDK could not read (a `CreatedDate` that is a string, a body
/// cut short) is described by its status and size only. A service error keeps its code and message (the
/// service's own words, which name the secret and the principal, never its value).
pub(crate) fn describe(e: &SdkError<GetSecretValueError, HttpResponse>) -> String {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let size = e
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map_or(0, <[u8]>::len);
    match e {
        SdkError::ServiceError(s) => match (s.err().code(), status) {
            // A service error has a status of 4xx or 5xx; its body is the service's error document.
            (Some(code), Some(status)) if status >= 400 => {
                format!("{code}: {}", s.err().message().unwrap_or(""))
            }
            // An error document the SDK could not read (an emulator's or a gateway's XML): its code and
            // message, as the service's own words; nothing else of the body.
            (_, Some(status)) if status >= 400 => match e
                .raw_response()
                .and_then(|r| r.body().bytes())
                .and_then(|b| xml_error(&String::from_utf8_lossy(b)))
            {
                Some(coded) => format!("HTTP {status}: {coded}"),
                None => format!(
                    "HTTP {status}: an answer of {size} bytes that is not a Secrets Manager error \
                     (not quoted)"
                ),
            },
            (_, Some(status)) => format!(
                "HTTP {status}: an answer of {size} bytes that is not a Secrets Manager response \
                 (not quoted: it may hold the secret)"
            ),
            (_, None) => "an answer that is not a Secrets Manager response".into(),
        },
        SdkError::ResponseError(_) => format!(
            "HTTP {}: an answer of {size} bytes that cannot be read (not quoted: it may hold the secret)",
            status.map_or_else(|| "?".to_string(), |s| s.to_string())
        ),
        SdkError::TimeoutError(_) => format!(
            "Secrets Manager did not answer within {} s (each attempt {} s, connecting {} s)",
            super::aws::OPERATION_TIMEOUT.as_secs(),
            super::aws::ATTEMPT_TIMEOUT.as_secs(),
            super::aws::CONNECT_TIMEOUT.as_secs()
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => format!(
            "Secrets Manager did not answer within {} s (connecting {} s)",
            super::aws::ATTEMPT_TIMEOUT.as_secs(),
            super::aws::CONNECT_TIMEOUT.as_secs()
        ),
        // Connecting, TLS, credentials, building the request: nothing of an answer is in these.
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            format!("cannot read it: {}", DisplayErrorContext(e))
        }
        _ => "cannot read it".into(),
    }
}

/// `Code: Message` of an XML error document (`<Code>…</Code>`, `<Message>…</Message>`), the message cut at
/// 300 characters; `None` without a code.
fn xml_error(body: &str) -> Option<String> {
    let element = |tag: &str| {
        let open = format!("<{tag}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].trim().to_string())
    };
    let code = element("Code")
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.'))?;
    let message: String = element("Message")
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Some(format!("{code}: {message}"))
}

/// A database URL from a secret's text: a URL as it is, or the RDS / Aurora JSON shape. Errors name the
/// field at fault, never a value.
pub fn url_from_secret(text: &str) -> Result<String, String> {
    url_from_secret_with(text, &Fallback::default())
}

/// [`url_from_secret`], with the fields an RDS JSON secret leaves out (engine, host, port, dbname) taken from
/// `fallback`. MySQL and MariaDB need a database (else every statement fails with "No database selected"):
/// a secret without `dbname` and no `DATABASE_NAME` is refused here, naming both.
pub fn url_from_secret_with(text: &str, fallback: &Fallback) -> Result<String, String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return match text.split_once("://") {
            Some((scheme, _)) if URL_SCHEMES.contains(&scheme) => Ok(text.to_string()),
            _ => Err(format!(
                "it is neither a database URL ({}://…) nor the RDS JSON \
                 ({{\"engine\", \"host\", \"port\", \"username\", \"password\", \"dbname\"}})",
                URL_SCHEMES.join("://…, ")
            )),
        };
    }
    // Not serde's error text: it can quote a piece of the secret.
    let json: Value = serde_json::from_str(text)
        .map_err(|_| "it starts with { but is not valid JSON".to_string())?;
    let Some(object) = json.as_object() else {
        return Err("it starts with { but is not a JSON object".into());
    };
    let field = |name: &str| -> Result<Option<String>, String> {
        match object.get(name) {
            // An empty field is a missing one: the function's setting stands in for both.
            None | Some(Value::Null) => Ok(fallback.get(name)),
            Some(Value::String(s)) if s.is_empty() => Ok(fallback.get(name)),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("field {name:?} is neither a string nor a number")),
        }
    };
    let required = |name: &str| {
        field(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| match setting_of(name) {
                Some(env) => format!("field {name:?} is missing (and {env} is not set)"),
                None => format!("field {name:?} is missing"),
            })
    };
    let engine = required("engine")?;
    let (scheme, default_port) = match engine.as_str() {
        "postgres" | "postgresql" | "aurora-postgresql" => ("postgres", 5432),
        "mysql" | "mariadb" | "aurora-mysql" | "aurora" => ("mysql", 3306),
        other => {
            return Err(format!(
                "field \"engine\" is {other:?}, not one supported (postgres, aurora-postgresql, mysql, mariadb, aurora-mysql)"
            ));
        }
    };
    let host = required("host")?;
    if host.contains(['/', '@', '?', '#', ' ']) {
        return Err("field \"host\" is not a host name".into());
    }
    let port = match field("port")? {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| "field \"port\" is not a port number".to_string())?,
    };
    let user = percent_encode(&required("username")?);
    let password = percent_encode(&required("password")?);
    let mut url = format!("{scheme}://{user}:{password}@{host}:{port}");
    match field("dbname")?.filter(|d| !d.is_empty()) {
        Some(db) => {
            url.push('/');
            url.push_str(&percent_encode(&db));
        }
        // PostgreSQL connects to the user's own database; MySQL to none, and then refuses every table.
        None if scheme == "mysql" => {
            return Err(format!(
                "field \"dbname\" is missing (and {} is not set): {engine} needs a database",
                FALLBACK_ENV[3].1
            ));
        }
        None => {}
    }
    Ok(url)
}

const URL_SCHEMES: &[&str] = &["postgres", "postgresql", "mysql", "mariadb", "sqlite"];

/// RFC 3986 percent-encoding of everything but the unreserved characters: a password may hold `@`, `:`, `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Did the database refuse the credentials? SQLSTATE class 28 (invalid authorization: PostgreSQL 28P01 and
/// 28000, MySQL / MariaDB 28000) or MySQL error 1045 (access denied).
pub fn credentials_refused(e: &DbErr) -> bool {
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = e
    else {
        return false;
    };
    let sea_orm::sqlx::Error::Database(db) = &**e else {
        return false;
    };
    let mysql_denied = db
        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| m.number() == 1045);
    mysql_denied || db.code().is_some_and(|c| c.starts_with("28"))
}

/// A handler whose database URL comes from a secret: read at the first batch, read again once when the
/// database refuses the credentials. What Lambda mode runs when `DATABASE_SECRET_ARN` is set.
pub struct SecretHandler {
    source: SecretSource,
    options: SinkOptions,
    // Lambda hands an instance one batch at a time; the lock only makes the swap of the pool safe.
    state: Mutex<State>,
}

struct State {
    /// Until the first batch: the compiled pipeline, waiting for a database.
    pipeline: Option<Pipeline>,
    handler: Option<Handler>,
    /// The URL the handler's pool uses, to tell whether a re-read found new credentials.
    url: String,
}

impl std::fmt::Debug for SecretHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHandler")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SecretHandler {
    /// Nothing is read or connected here: the first batch does it.
    pub fn new(pipeline: Pipeline, options: SinkOptions, source: SecretSource) -> Self {
        Self {
            source,
            options,
            state: Mutex::new(State {
                pipeline: Some(pipeline),
                handler: None,
                url: String::new(),
            }),
        }
    }

    /// Where the URL comes from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// One batch, as [`Handler::handle`]. A secret that cannot be read fails the batch as transient, one whose
    /// contents cannot make a database URL as misconfigured (nothing is written either way); neither is
    /// remembered, so an IAM policy or a secret fixed in the meantime lets the retry through.
    pub async fn handle(&self, event: &MskEvent<'_>) -> Result<BatchReport, HandlerError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        if state.handler.is_none() {
            let url = self.read().await?;
            let Some(pipeline) = state.pipeline.take() else {
                return Err(self.unusable("no pipeline to open the database with".into()));
            };
            match open_sink(&url, &pipeline, self.options.clone()).await {
                Ok(sink) => {
                    state.url = url;
                    state.handler = Some(Handler::new(pipeline, sink));
                }
                Err(e) => {
                    state.pipeline = Some(pipeline);
                    return Err(self.unusable(e.to_string()));
                }
            }
        }
        let Some(handler) = state.handler.as_mut() else {
            return Err(self.unusable("no database handler".into()));
        };
        let error = match handler.handle(event).await {
            Err(HandlerError::Transient(e)) => e,
            other => return other,
        };
        // The batch failed; was it the credentials? The handler's error is text by now, so ask the pool
        // itself: a connection with the same credentials is refused again, at once, with the database's code.
        let refused = matches!(
            tokio::time::timeout(CREDENTIALS_CHECK, handler.sink().connection().ping()).await,
            Ok(Err(e)) if credentials_refused(&e)
        );
        if !refused {
            return Err(HandlerError::Transient(error));
        }
        tracing::warn!(secret = %self.source.secret_id, "the database refused the credentials: reading the secret again (rotation)");
        let url = self.read().await?;
        if url == state.url {
            tracing::warn!(secret = %self.source.secret_id, "the secret did not change: the batch fails");
            return Err(HandlerError::Transient(error));
        }
        let sink = open_sink(&url, handler.pipeline(), self.options.clone())
            .await
            .map_err(|e| self.unusable(e.to_string()))?;
        let old = handler.replace_sink(sink);
        state.url = url;
        // Connections of the old credentials still open would keep working until they close; closing them now
        // keeps one set of credentials per instance.
        let _ = old.connection().close_by_ref().await;
        handler.handle(event).await
    }

    /// The secret's URL; what it holds being unusable is the misconfigured class, its read failing transient.
    async fn read(&self) -> Result<String, HandlerError> {
        self.source.database_url().await.map_err(|e| {
            if e.contents {
                tracing::error!(error = %e, "database secret not usable");
                HandlerError::Misconfigured(e.to_string())
            } else {
                tracing::error!(error = %e, "database secret not read");
                HandlerError::Transient(e.to_string())
            }
        })
    }

    /// The URL made of the secret cannot be opened (an unknown scheme, a URL that does not parse): what the
    /// secret holds is wrong, which no retry cures until someone fixes it.
    fn unusable(&self, reason: String) -> HandlerError {
        let e = SecretError {
            secret_id: self.source.secret_id.clone(),
            reason,
            contents: true,
        };
        tracing::error!(error = %e, "database secret not usable");
        HandlerError::Misconfigured(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_secret_is_taken_as_it_is() {
        assert_eq!(
            url_from_secret(" postgres://u:p@h:5432/db\n").unwrap(),
            "postgres://u:p@h:5432/db"
        );
        assert_eq!(
            url_from_secret("mysql://u:p@h/db").unwrap(),
            "mysql://u:p@h/db"
        );
        let e = url_from_secret("hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn rds_json_becomes_a_url_with_user_and_password_encoded() {
        let pg = r#"{"engine":"postgres","host":"db.example","port":5432,"username":"app",
                     "password":"p@ss:w/rd%","dbname":"orders","dbInstanceIdentifier":"x"}"#;
        assert_eq!(
            url_from_secret(pg).unwrap(),
            "postgres://app:p%40ss%3Aw%2Frd%25@db.example:5432/orders"
        );
        let aurora = r#"{"engine":"aurora-mysql","host":"c.cluster","port":"3307","username":"a b","password":"x","dbname":"app"}"#;
        assert_eq!(
            url_from_secret(aurora).unwrap(),
            "mysql://a%20b:x@c.cluster:3307/app"
        );
        // MySQL and MariaDB need a database: without `dbname` the secret is refused, naming the field.
        let no_db = r#"{"engine":"aurora-mysql","host":"c.cluster","username":"u","password":"x"}"#;
        let e = url_from_secret(no_db).unwrap_err();
        assert!(e.contains("dbname"), "{e}");
        let mariadb =
            r#"{"engine":"mariadb","host":"m","username":"u","password":"p","dbname":"d"}"#;
        assert_eq!(url_from_secret(mariadb).unwrap(), "mysql://u:p@m:3306/d");
        let aurora_pg =
            r#"{"engine":"aurora-postgresql","host":"h","username":"u","password":"p"}"#;
        assert_eq!(url_from_secret(aurora_pg).unwrap(), "postgres://u:p@h:5432");
    }

    #[test]
    fn bad_rds_json_names_the_field_never_a_value() {
        let cases = [
            (
                r#"{"engine":"oracle","host":"h","username":"u","password":"s3cret"}"#,
                "oracle",
            ),
            (
                r#"{"engine":"postgres","host":"h","username":"u"}"#,
                "\"password\" is missing",
            ),
            (
                r#"{"engine":"postgres","host":"h","port":"s3cret","username":"u","password":"p"}"#,
                "\"port\"",
            ),
            (
                r#"{"engine":"postgres","host":"h","username":"u","password":["s3cret"]}"#,
                "\"password\" is neither",
            ),
            (
                r#"{"engine":"postgres", "password":"s3cret""#,
                "not valid JSON",
            ),
        ];
        for (secret, expected) in cases {
            let e = url_from_secret(secret).unwrap_err();
            assert!(e.contains(expected), "{secret}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
