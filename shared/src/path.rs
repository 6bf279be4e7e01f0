//! JSONPath (RFC 9535, jsonpath-rust), compiled once per function instance. Plain member paths such as
//! `$.customer.id`, by far the most common in configs, skip the query engine and are looked up directly.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use std::borrow::Cow;

use crate::message::Message;

#[derive(Debug)]
pub(crate) enum JsonPath {
    Members(Vec<String>),
    Query(Box<JpQuery>),
}

impl JsonPath {
    /// Parses `path`; the error is the parser's, for a config problem listing.
    pub(crate) fn compile(path: &str) -> Result<Self, String> {
        let query = parse_json_path(path).map_err(|e| e.to_string())?;
        let members: Option<Vec<String>> = path.strip_prefix("$.").and_then(|rest| {
            rest.split('.')
                .map(|m| {
                    let plain =
                        !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    plain.then(|| m.to_string())
                })
                .collect()
        });
        Ok(match members {
            Some(names) => Self::Members(names),
            None => Self::Query(Box::new(query)),
        })
    }

    /// The first node the path selects, in document order. Member paths read the message where it is; other
    /// queries run on jsonpath-rust's `serde_json::Value`, so the message is converted for them and the node
    /// comes back owned.
    pub(crate) fn first<'m, 'a>(&self, message: &'m Message<'a>) -> Option<Cow<'m, Message<'a>>> {
        match self {
            Self::Members(names) => names
                .iter()
                .try_fold(message, |node, name| node.get(name))
                .map(Cow::Borrowed),
            Self::Query(query) => {
                let value = message.to_value();
                let hit = js_path_process(query, &value)
                    .ok()?
                    .into_iter()
                    .next()
                    .map(|hit| hit.val().clone())?;
                Some(Cow::Owned(Message::from(hit)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_fast_path_agrees_with_the_engine() {
        let doc = Message::from(json!({"a": {"b": [1, 2], "c": null}, "x_1": true}));
        for path in ["$.a.b", "$.a.c", "$.x_1", "$.a.missing", "$.a"] {
            let fast = JsonPath::compile(path).unwrap();
            assert!(matches!(fast, JsonPath::Members(_)), "{path}");
            let engine = JsonPath::Query(Box::new(parse_json_path(path).unwrap()));
            assert_eq!(fast.first(&doc), engine.first(&doc), "{path}");
        }
        let q = JsonPath::compile("$.a.b[1]").unwrap();
        assert!(matches!(q, JsonPath::Query(_)));
        assert_eq!(q.first(&doc).as_deref(), Some(&Message::from(2)));
        assert!(JsonPath::compile("$.a[").is_err());
    }
}
