//! Envelopes around a record's value, unwrapped after its format decoded it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{DecodeError, Decoded};
use crate::message::Message;

/// `codec.envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    /// kafkaesk (a Python Kafka framework) wraps every value as `{"schema": "name:version", "data": {…}}`; the
    /// message is `data`, with `kafkaeskSchemaName` and `kafkaeskSchemaVersion` added for mappings.
    Kafkaesk,
    /// Debezium's change events (`{before, after, source, op, ts_ms}`, in JsonConverter's
    /// `{"schema": …, "payload": …}` or not): the message is the row image (`after`, or `before` for a
    /// delete), with `debeziumOp`, `debeziumSource` and `debeziumTsMs` added; values the schema says are
    /// Debezium's dates, times and decimals are converted ([`super::debezium`]).
    Debezium,
}

impl Envelope {
    /// The messages inside the envelopes of `decoded`.
    pub(crate) fn unwrap<'a>(self, decoded: Decoded<'a>) -> Result<Decoded<'a>, DecodeError> {
        match self {
            Envelope::Kafkaesk => unwrap_kafkaesk(decoded),
            Envelope::Debezium => super::debezium::unwrap(decoded),
        }
    }
}

/// Unwraps kafkaesk's `{"schema": "name:version", "data": {…}}`.
fn unwrap_kafkaesk(mut decoded: Decoded<'_>) -> Result<Decoded<'_>, DecodeError> {
    let bad = |why: &str| DecodeError::Permanent(format!("kafkaesk envelope: {why}"));
    for message in &mut decoded.messages {
        let Message::Object(envelope) = message else {
            return Err(bad("the value is not an object"));
        };
        let Some(Message::String(schema)) = envelope.get("schema").cloned() else {
            return Err(bad("no \"schema\": \"name:version\""));
        };
        let Some(Message::Object(mut data)) = envelope.remove("data") else {
            return Err(bad("\"data\" is missing or not an object"));
        };
        let (name, version) = match schema {
            Cow::Borrowed(s) => {
                let (n, v) = s.rsplit_once(':').unwrap_or((s, ""));
                (Cow::Borrowed(n), Cow::Borrowed(v))
            }
            Cow::Owned(s) => {
                let (n, v) = s.rsplit_once(':').unwrap_or((s.as_str(), ""));
                (Cow::Owned(n.to_string()), Cow::Owned(v.to_string()))
            }
        };
        data.insert("kafkaeskSchemaName", Message::String(name));
        data.insert("kafkaeskSchemaVersion", Message::String(version));
        *message = Message::Object(data);
    }
    Ok(decoded)
}
