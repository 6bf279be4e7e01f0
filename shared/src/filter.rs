//! The emit filter, exactly as aether's `get_approval_filter`: a message is applied only when the value at a
//! JSONPath is one of the accepted values.
//!
//! - `required = false` (the default): every message passes.
//! - Otherwise `path` is evaluated; no match → the message does not pass; else only the FIRST match is
//!   compared, and the message passes when it equals one of `values` (a single value is a list of one).
//! - Equality is JSON equality: `true` ≠ `"true"`, `true` ≠ `1`; numbers compare by value (`1` = `1.0`, as
//!   in Python).
//!
//! A message that does not pass is counted as filtered: never written, not an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::Message;
use crate::path::JsonPath;

/// One `[[filter]]` section: the default (`topics` absent or `["*"]`) or a per-topic override.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Topic names or globs this filter applies to; none or `*` makes it the default.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// Whether a message without an accepted value at `path` is dropped.
    #[serde(default)]
    #[schemars(example = true)]
    pub required: bool,
    /// The JSONPath of the value to check.
    #[serde(default)]
    #[schemars(example = &"$.published")]
    pub path: Option<String>,
    /// The accepted values at `path`.
    #[serde(default)]
    #[schemars(example = true, example = ["approved", "published"])]
    pub values: OneOrMany,
}

pub(crate) fn all_topics() -> Vec<String> {
    vec!["*".to_string()]
}

/// `values = true` means `values = [true]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(from = "Value", into = "Value")]
pub struct OneOrMany(pub Vec<Value>);

impl From<Value> for OneOrMany {
    fn from(v: Value) -> Self {
        match v {
            Value::Array(items) => Self(items),
            one => Self(vec![one]),
        }
    }
}

impl From<OneOrMany> for Value {
    fn from(v: OneOrMany) -> Self {
        Value::Array(v.0)
    }
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    rule: Option<(JsonPath, Vec<Message<'static>>)>,
}

impl Filter {
    /// Compiles a filter, or lists every problem in it.
    pub fn build(cfg: &FilterConfig) -> Result<Self, Vec<String>> {
        if !cfg.required {
            return Ok(Self::pass_all());
        }
        let mut problems = Vec::new();
        let path = match &cfg.path {
            None => {
                problems.push("required = true needs a path".to_string());
                None
            }
            Some(p) => match JsonPath::compile(p) {
                Ok(path) => Some(path),
                Err(e) => {
                    problems.push(format!("bad JSONPath {p:?}: {e}"));
                    None
                }
            },
        };
        if cfg.values.0.is_empty() {
            problems.push("required = true needs values (the accepted values at path)".to_string());
        }
        match path {
            Some(path) if problems.is_empty() => Ok(Self {
                rule: Some((
                    path,
                    cfg.values.0.iter().cloned().map(Message::from).collect(),
                )),
            }),
            _ => Err(problems),
        }
    }

    pub fn pass_all() -> Self {
        Self { rule: None }
    }

    pub fn passes(&self, message: &Message<'_>) -> bool {
        match &self.rule {
            None => true,
            Some((path, values)) => path
                .first(message)
                .is_some_and(|found| values.iter().any(|v| json_eq(&found, v))),
        }
    }
}

/// JSON equality with numbers compared by value, as aether's Python does (`1 == 1.0`), but never a boolean
/// against a number (Python's `True == 1` is not JSON's).
pub(crate) fn json_eq(a: &Message<'_>, b: &Message<'_>) -> bool {
    match (a, b) {
        (Message::Number(x), Message::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Message::Array(x), Message::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Message::Object(x), Message::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(required: bool, path: Option<&str>, values: Value) -> Filter {
        Filter::build(&FilterConfig {
            topics: all_topics(),
            required,
            path: path.map(str::to_string),
            values: OneOrMany::from(values),
        })
        .unwrap()
    }

    fn passes(f: &Filter, message: Value) -> bool {
        f.passes(&Message::from(message))
    }

    #[test]
    fn not_required_passes_everything() {
        let f = filter(false, Some("$.publish"), json!([true]));
        assert!(passes(&f, json!({})));
        assert!(passes(&f, json!({"publish": false})));
    }

    #[test]
    fn boolean_path() {
        let f = filter(true, Some("$.publish"), json!(true));
        assert!(passes(&f, json!({"publish": true})));
        assert!(!passes(&f, json!({"publish": false})));
        assert!(
            !passes(&f, json!({"publish": "true"})),
            "true is not \"true\""
        );
        assert!(!passes(&f, json!({"publish": 1})), "true is not 1");
        assert!(
            !passes(&f, json!({"other": true})),
            "a missing path does not pass"
        );
    }

    #[test]
    fn string_path_with_several_values() {
        let f = filter(true, Some("$.meta.state"), json!(["approved", "published"]));
        assert!(passes(&f, json!({"meta": {"state": "approved"}})));
        assert!(passes(&f, json!({"meta": {"state": "published"}})));
        assert!(!passes(&f, json!({"meta": {"state": "draft"}})));
        assert!(!passes(&f, json!({"meta": null})));
    }

    #[test]
    fn only_the_first_match_counts() {
        let f = filter(true, Some("$.items[*].kind"), json!("public"));
        assert!(passes(
            &f,
            json!({"items": [{"kind": "public"}, {"kind": "secret"}]})
        ));
        assert!(!passes(
            &f,
            json!({"items": [{"kind": "secret"}, {"kind": "public"}]})
        ));
        assert!(!passes(&f, json!({"items": []})));
    }

    #[test]
    fn numbers_compare_by_value_but_never_with_booleans() {
        let f = filter(true, Some("$.n"), json!([1]));
        assert!(passes(&f, json!({"n": 1})));
        assert!(passes(&f, json!({"n": 1.0})));
        assert!(!passes(&f, json!({"n": true})));
        assert!(!passes(&f, json!({"n": "1"})));
    }

    #[test]
    fn build_lists_every_problem() {
        let cfg = FilterConfig {
            topics: all_topics(),
            required: true,
            path: None,
            values: OneOrMany(vec![]),
        };
        assert_eq!(Filter::build(&cfg).unwrap_err().len(), 2);
        let cfg = FilterConfig {
            topics: all_topics(),
            required: true,
            path: Some("$.a[".into()),
            values: OneOrMany(vec![json!(1)]),
        };
        let err = Filter::build(&cfg).unwrap_err();
        assert!(err[0].starts_with("bad JSONPath \"$.a[\""), "{err:?}");
    }

    #[test]
    fn config_accepts_one_value_or_a_list() {
        let one: FilterConfig =
            toml::from_str("required = true\npath = \"$.a\"\nvalues = true\n").unwrap();
        assert_eq!(one.values.0, vec![json!(true)]);
        let many: FilterConfig =
            toml::from_str("required = true\npath = \"$.a\"\nvalues = [\"x\", 2]\n").unwrap();
        assert_eq!(many.values.0, vec![json!("x"), json!(2)]);
        assert_eq!(one.topics, vec!["*"]);
    }
}
