//! JSONPath (RFC 9535, jsonpath-rust), compiled once per function instance. Plain member paths such as
//! `$.customer.id`, by far the most common in configs, skip the query engine and are looked up directly.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

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

    /// The first node the path selects, in document order.
    pub(crate) fn first<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        match self {
            Self::Members(names) => names.iter().try_fold(value, |node, name| node.get(name)),
            Self::Query(query) => js_path_process(query, value)
                .ok()?
                .into_iter()
                .next()
                .map(|hit| hit.val()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_fast_path_agrees_with_the_engine() {
        let doc = json!({"a": {"b": [1, 2], "c": null}, "x_1": true});
        for path in ["$.a.b", "$.a.c", "$.x_1", "$.a.missing", "$.a"] {
            let fast = JsonPath::compile(path).unwrap();
            assert!(matches!(fast, JsonPath::Members(_)), "{path}");
            let engine = JsonPath::Query(Box::new(parse_json_path(path).unwrap()));
            assert_eq!(fast.first(&doc), engine.first(&doc), "{path}");
        }
        let q = JsonPath::compile("$.a.b[1]").unwrap();
        assert!(matches!(q, JsonPath::Query(_)));
        assert_eq!(q.first(&doc), Some(&json!(2)));
        assert!(JsonPath::compile("$.a[").is_err());
    }
}
