//! `changeType` → what to do with the entity (bedrock's `EndpointWithKafkaSync` routing, kept exactly).
//!
//! Create of an existing entity updates it and update of a missing one creates it, so both are an upsert;
//! a delete of a missing entity is not an error.

use crate::message::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Upsert,
    Delete,
}

/// How much of an unknown changeType its reason quotes. The changeType is the one message value a reason
/// quotes (bedrock's `Unknown changeType X`), so it is cut: a producer cannot make a reason long. Control
/// characters in it are escaped wherever the reason is written (the dead-letter table, JSON, log lines).
pub const QUOTED_CHANGE_TYPE_CHARS: usize = 64;

fn unknown(change_type: &str) -> String {
    let quoted = crate::text::bounded(change_type, QUOTED_CHANGE_TYPE_CHARS);
    format!("Unknown changeType {quoted}")
}

pub fn route(message: &Message<'_>) -> Result<Change, String> {
    match message.get("changeType") {
        // Bedrock reads the field with dict.get, so JSON null behaves like an absent field.
        None | Some(Message::Null) => Ok(Change::Upsert),
        Some(Message::String(s)) if s == "UPDATED" || s == "CREATED" => Ok(Change::Upsert),
        Some(Message::String(s)) if s == "DELETED" => Ok(Change::Delete),
        Some(Message::String(s)) => Err(unknown(s)),
        Some(other) => Err(unknown(&other.to_json_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(value: serde_json::Value) -> Result<Change, String> {
        super::route(&Message::from(value))
    }

    #[test]
    fn routes_like_bedrock() {
        assert_eq!(route(json!({})), Ok(Change::Upsert));
        assert_eq!(route(json!({"changeType": null})), Ok(Change::Upsert));
        assert_eq!(route(json!({"changeType": "UPDATED"})), Ok(Change::Upsert));
        assert_eq!(route(json!({"changeType": "CREATED"})), Ok(Change::Upsert));
        assert_eq!(route(json!({"changeType": "DELETED"})), Ok(Change::Delete));
        assert_eq!(
            route(json!({"changeType": "ARCHIVED"})),
            Err("Unknown changeType ARCHIVED".to_string())
        );
        // Case matters, as in bedrock.
        assert!(route(json!({"changeType": "deleted"})).is_err());
        assert_eq!(
            route(json!({"changeType": 3})),
            Err("Unknown changeType 3".to_string())
        );
    }

    #[test]
    fn the_quoted_change_type_is_bounded() {
        let long = route(json!({"changeType": "A".repeat(10_000)})).unwrap_err();
        assert_eq!(
            long,
            format!(
                "Unknown changeType {}…",
                "A".repeat(QUOTED_CHANGE_TYPE_CHARS - 1)
            )
        );
        let object = route(json!({"changeType": {"k": "v".repeat(1_000)}})).unwrap_err();
        assert!(
            object.chars().count() <= 19 + QUOTED_CHANGE_TYPE_CHARS,
            "{object}"
        );
    }
}
