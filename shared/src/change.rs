//! What a message asks for: upsert, delete, or nothing. Three rules:
//!
//! - bedrock's (`EndpointWithKafkaSync`, the default, kept exactly): `changeType` absent, null, `"UPDATED"` or
//!   `"CREATED"` → upsert, `"DELETED"` → delete, anything else → `Unknown changeType X`;
//! - a sync's own change field (`change = { path, upsert, delete, absent }`): its values compare exactly;
//! - Debezium's (`codec.envelope = "debezium"`): the envelope's `op`, which [`crate::decode`] puts in the
//!   message as `debeziumOp`.
//!
//! Create of an existing entity updates it and update of a missing one creates it, so both are an upsert;
//! a delete of a missing entity is not an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::Message;
use crate::path::JsonPath;

/// What a message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or update the entity (either is an upsert).
    Upsert,
    /// Delete the entity (a missing one is not an error).
    Delete,
    /// Not a change to apply (a Debezium truncate, heartbeat or schema change): counted as filtered, with
    /// this reason.
    Skip(&'static str),
}

/// How much of an unknown changeType its reason quotes. The changeType is the one message value a reason
/// quotes (bedrock's `Unknown changeType X`), so it is cut: a producer cannot make a reason long. Control
/// characters in it are escaped wherever the reason is written (the dead-letter table, JSON, log lines).
pub const QUOTED_CHANGE_TYPE_CHARS: usize = 64;

fn quoted(value: &Message<'_>) -> String {
    let text = match value {
        Message::String(s) => std::borrow::Cow::Borrowed(s.as_ref()),
        other => std::borrow::Cow::Owned(other.to_json_string()),
    };
    crate::text::bounded(&text, QUOTED_CHANGE_TYPE_CHARS).into_owned()
}

fn unknown(change_type: &Message<'_>) -> String {
    format!("Unknown changeType {}", quoted(change_type))
}

/// A sync's `change` setting: where a message says what happened, and which values mean what.
///
/// ```toml
/// change = { path = "$.eventType", upsert = ["INSERT", "UPDATE"], delete = ["DELETE"], absent = "upsert" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeConfig {
    /// A JSONPath into the message (RFC 9535); the first match is the change value.
    pub path: String,
    /// The values that mean create or update (compared exactly, as JSON: `1` ≠ `"1"`).
    #[serde(default)]
    pub upsert: Vec<Value>,
    /// The values that mean delete.
    #[serde(default)]
    pub delete: Vec<Value>,
    /// What a message without the field (or with null) is: an upsert (bedrock's rule, the default) or a dead
    /// letter.
    #[serde(default)]
    pub absent: Absent,
}

/// `change.absent`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Absent {
    /// Like bedrock: no change field is an update.
    #[default]
    Upsert,
    /// No change field is an error of the record.
    DeadLetter,
}

/// A compiled change rule.
#[derive(Debug, Default)]
pub enum ChangeRule {
    /// bedrock's `changeType` routing.
    #[default]
    Bedrock,
    /// A sync's own change field.
    Field(Box<ChangeField>),
    /// Debezium's `op` (`debeziumOp` in the unwrapped message).
    Debezium,
    /// A typed sync's rule that does not compile: every message is dead-lettered with this reason, and
    /// `config check` lists it.
    Invalid(String),
}

/// A compiled [`ChangeConfig`].
#[derive(Debug)]
pub struct ChangeField {
    path: JsonPath,
    spec: String,
    upsert: Vec<Value>,
    delete: Vec<Value>,
    absent: Absent,
}

impl ChangeConfig {
    /// The compiled rule, or every problem in it.
    pub fn compile(&self) -> Result<ChangeRule, Vec<String>> {
        let mut problems = Vec::new();
        let path = JsonPath::compile(&self.path)
            .map_err(|e| problems.push(format!("change: bad JSONPath {:?}: {e}", self.path)))
            .ok();
        if self.upsert.is_empty() && self.delete.is_empty() {
            problems.push("change: list the values of upsert and delete".into());
        }
        let all: Vec<&Value> = self.upsert.iter().chain(&self.delete).collect();
        for (i, v) in all.iter().enumerate() {
            if all[..i].contains(v) {
                problems.push(format!("change: value {v} is listed twice"));
            }
            if v.is_null() {
                problems.push(
                    "change: null cannot be listed (a null field is absent: see change.absent)"
                        .into(),
                );
            }
        }
        match path {
            Some(path) if problems.is_empty() => Ok(ChangeRule::Field(Box::new(ChangeField {
                path,
                spec: self.path.clone(),
                upsert: self.upsert.clone(),
                delete: self.delete.clone(),
                absent: self.absent,
            }))),
            _ => Err(problems),
        }
    }
}

/// Debezium's `op` codes and what each is, for reasons and `--dry-run`.
pub fn debezium_op(op: &str) -> Option<(Change, &'static str)> {
    Some(match op {
        "c" => (Change::Upsert, "op c (create): upsert of after"),
        "r" => (Change::Upsert, "op r (snapshot read): upsert of after"),
        "u" => (Change::Upsert, "op u (update): upsert of after"),
        "d" => (Change::Delete, "op d (delete): delete of the key in before"),
        "t" => (
            Change::Skip("op t (truncate): truncates are not applied"),
            "op t (truncate): skipped",
        ),
        _ => return None,
    })
}

/// Why a Debezium message without `op` is skipped.
pub const NO_OP: &str =
    "no op: not a Debezium change event (a heartbeat, or a schema change), nothing to apply";

impl ChangeRule {
    /// What `message` asks for, or why it cannot be applied (the record is dead-lettered).
    pub fn route(&self, message: &Message<'_>) -> Result<Change, String> {
        match self {
            ChangeRule::Bedrock => match message.get("changeType") {
                // Bedrock reads the field with dict.get, so JSON null behaves like an absent field.
                None | Some(Message::Null) => Ok(Change::Upsert),
                Some(Message::String(s)) if s == "UPDATED" || s == "CREATED" => Ok(Change::Upsert),
                Some(Message::String(s)) if s == "DELETED" => Ok(Change::Delete),
                Some(other) => Err(unknown(other)),
            },
            ChangeRule::Field(f) => match f.path.first(message).as_deref() {
                None | Some(Message::Null) => match f.absent {
                    Absent::Upsert => Ok(Change::Upsert),
                    Absent::DeadLetter => Err(format!("no change value at {}", f.spec)),
                },
                Some(v) if f.upsert.iter().any(|u| v == u) => Ok(Change::Upsert),
                Some(v) if f.delete.iter().any(|d| v == d) => Ok(Change::Delete),
                Some(v) => Err(format!("unknown change value {} at {}", quoted(v), f.spec)),
            },
            ChangeRule::Debezium => match message.get("debeziumOp") {
                None | Some(Message::Null) => Ok(Change::Skip(NO_OP)),
                Some(Message::String(op)) => match debezium_op(op) {
                    Some((change, _)) => Ok(change),
                    None => Err(format!(
                        "unknown Debezium op {}",
                        quoted(&Message::from(op.as_ref()))
                    )),
                },
                Some(other) => Err(format!("unknown Debezium op {}", quoted(other))),
            },
            ChangeRule::Invalid(reason) => Err(reason.clone()),
        }
    }

    /// The rule in words, for `config check`.
    pub fn describe(&self) -> String {
        match self {
            ChangeRule::Bedrock => "changeType: absent, null, UPDATED or CREATED → upsert; DELETED → delete; any other value → dead letter".into(),
            ChangeRule::Field(f) => {
                let list = |v: &[Value]| v.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
                format!(
                    "{}: {} → upsert; {} → delete; absent or null → {}; any other value → dead letter",
                    f.spec,
                    list(&f.upsert),
                    list(&f.delete),
                    match f.absent {
                        Absent::Upsert => "upsert",
                        Absent::DeadLetter => "dead letter",
                    }
                )
            }
            ChangeRule::Debezium => "Debezium op: c, r, u → upsert of after; d → delete of the key in before; t (truncate) and messages without op (heartbeats, schema changes) → skipped (filtered); the tombstone after a delete → skipped".into(),
            ChangeRule::Invalid(reason) => format!("invalid: {reason}"),
        }
    }
}

/// bedrock's rule (tests and callers without a sync).
#[cfg(test)]
pub fn route(message: &Message<'_>) -> Result<Change, String> {
    ChangeRule::Bedrock.route(message)
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

    fn field(toml_text: &str) -> Result<ChangeRule, Vec<String>> {
        toml::from_str::<ChangeConfig>(toml_text).unwrap().compile()
    }

    #[test]
    fn a_change_field_of_its_own_compares_values_exactly() {
        let rule = field(
            "path = \"$.meta.eventType\"\nupsert = [\"INSERT\", \"UPDATE\", 1]\ndelete = [\"DELETE\", true]\n",
        )
        .unwrap();
        let r =
            |v: serde_json::Value| rule.route(&Message::from(json!({"meta": {"eventType": v}})));
        assert_eq!(r(json!("INSERT")), Ok(Change::Upsert));
        assert_eq!(r(json!("UPDATE")), Ok(Change::Upsert));
        assert_eq!(r(json!(1)), Ok(Change::Upsert));
        assert_eq!(r(json!("DELETE")), Ok(Change::Delete));
        assert_eq!(r(json!(true)), Ok(Change::Delete));
        assert_eq!(
            r(json!("1")),
            Err("unknown change value 1 at $.meta.eventType".into())
        );
        assert_eq!(
            r(json!("delete")),
            Err("unknown change value delete at $.meta.eventType".into())
        );
        // bedrock's words mean nothing here.
        assert!(r(json!("DELETED")).is_err());
        // Absent or null: an upsert by default, a dead letter on request.
        assert_eq!(rule.route(&Message::from(json!({}))), Ok(Change::Upsert));
        assert_eq!(r(json!(null)), Ok(Change::Upsert));
        let strict = field(
            "path = \"$.op\"\nupsert = [\"I\"]\ndelete = [\"D\"]\nabsent = \"dead-letter\"\n",
        )
        .unwrap();
        assert_eq!(
            strict.route(&Message::from(json!({"x": 1}))),
            Err("no change value at $.op".into())
        );
    }

    #[test]
    fn a_change_field_with_a_value_listed_twice_or_a_bad_path_is_refused() {
        let p = field("path = \"$.op\"\nupsert = [\"A\", \"B\"]\ndelete = [\"A\"]\n").unwrap_err();
        assert_eq!(p, vec!["change: value \"A\" is listed twice".to_string()]);
        let p = field("path = \"$.op\"\nupsert = [\"A\", \"A\"]\n").unwrap_err();
        assert_eq!(p, vec!["change: value \"A\" is listed twice".to_string()]);
        let p = field("path = \"$.[broken\"\nupsert = [\"A\"]\n").unwrap_err();
        assert!(
            p[0].starts_with("change: bad JSONPath \"$.[broken\""),
            "{p:?}"
        );
        let p = field("path = \"$.op\"\n").unwrap_err();
        assert!(p[0].contains("list the values"), "{p:?}");
        assert!(toml::from_str::<ChangeConfig>("path = \"$.op\"\nabsent = \"ignore\"\n").is_err());
    }

    #[test]
    fn debezium_ops() {
        let r = |v: serde_json::Value| ChangeRule::Debezium.route(&Message::from(v));
        for op in ["c", "r", "u"] {
            assert_eq!(r(json!({"debeziumOp": op})), Ok(Change::Upsert));
        }
        assert_eq!(r(json!({"debeziumOp": "d"})), Ok(Change::Delete));
        assert!(
            matches!(r(json!({"debeziumOp": "t"})), Ok(Change::Skip(s)) if s.contains("truncate"))
        );
        assert_eq!(r(json!({"ts_ms": 1})), Ok(Change::Skip(NO_OP)));
        assert_eq!(
            r(json!({"debeziumOp": "x"})),
            Err("unknown Debezium op x".into())
        );
    }
}
