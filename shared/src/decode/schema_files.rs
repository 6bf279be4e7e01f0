//! The `.avsc` files a config names, read and parsed once per compile however many sections name them (the
//! codec's ids, its raw and reader schemas, a mask's classification), with relative paths resolved against the
//! config file's directory in this one place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::Schema;

/// The schema files of one compile.
#[derive(Debug, Default)]
pub struct SchemaFiles {
    base: Option<PathBuf>,
    parsed: HashMap<PathBuf, Result<Arc<Schema>, String>>,
}

#[cfg(test)]
thread_local! {
    /// Files read by this thread, for the tests that prove a config is compiled once.
    static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many schema files this thread has read so far.
#[cfg(test)]
pub(crate) fn reads() -> usize {
    READS.with(std::cell::Cell::get)
}

impl SchemaFiles {
    /// Relative paths start at `base` (the config file's directory), else at the working directory.
    pub fn new(base: Option<&Path>) -> Self {
        Self {
            base: base.map(Path::to_path_buf),
            parsed: HashMap::new(),
        }
    }

    /// `path` as the config means it.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The schema in the file `path` names (resolved), or why there is none (`cannot read: …`, `not an Avro
    /// schema: …`), for the caller to say which setting named it.
    pub fn get(&mut self, path: &Path) -> (PathBuf, Result<Arc<Schema>, String>) {
        let path = self.resolve(path);
        let parsed = self
            .parsed
            .entry(path.clone())
            .or_insert_with_key(|path| {
                #[cfg(test)]
                READS.with(|n| n.set(n.get() + 1));
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
                Schema::parse_str(&text)
                    .map(Arc::new)
                    .map_err(|e| format!("not an Avro schema: {e}"))
            })
            .clone();
        (path, parsed)
    }
}
