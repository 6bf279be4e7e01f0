//! Which sync (or per-topic setting) a topic belongs to: exact names first, then globs in config order, then
//! the `*` default.

use std::collections::HashMap;

use globset::{Glob, GlobMatcher};

#[derive(Debug, Clone, Default)]
pub struct TopicRouter {
    exact: HashMap<String, usize>,
    globs: Vec<(GlobMatcher, usize)>,
    default: Option<usize>,
}

impl TopicRouter {
    /// `patterns[i]` are the patterns of target `i`. Errors list every bad glob.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> Result<Self, Vec<String>> {
        let mut router = Self::default();
        let mut problems = Vec::new();
        for (target, pattern) in patterns {
            if pattern == "*" {
                router.default.get_or_insert(target);
            } else if pattern.contains(['*', '?', '[', '{']) {
                match Glob::new(pattern) {
                    Ok(g) => router.globs.push((g.compile_matcher(), target)),
                    Err(e) => problems.push(format!("topic pattern {pattern:?}: {e}")),
                }
            } else if pattern.is_empty() {
                problems.push("topic pattern is empty".to_string());
            } else {
                router.exact.entry(pattern.to_string()).or_insert(target);
            }
        }
        if problems.is_empty() {
            Ok(router)
        } else {
            Err(problems)
        }
    }

    pub fn route(&self, topic: &str) -> Option<usize> {
        self.exact
            .get(topic)
            .copied()
            .or_else(|| {
                self.globs
                    .iter()
                    .find(|(g, _)| g.is_match(topic))
                    .map(|(_, t)| *t)
            })
            .or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_glob_beats_default() {
        let r = TopicRouter::new([
            (0, "*"),
            (1, "orders.*"),
            (2, "orders.eu"),
            (3, "orders.e?"),
        ])
        .unwrap();
        assert_eq!(r.route("orders.eu"), Some(2));
        assert_eq!(r.route("orders.us"), Some(1));
        assert_eq!(r.route("planets"), Some(0));
        let none = TopicRouter::new([(0, "a")]).unwrap();
        assert_eq!(none.route("b"), None);
        assert!(TopicRouter::new([(0, "a[")]).is_err());
    }
}
