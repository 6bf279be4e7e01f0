//! The [`Changes`] of one batch: upserts and deletes collapsed to the last change per entity key, keys and
//! versions compared as their columns compare them.

use super::*;

/// What a batch does to one mapping's table, after collapsing: at most one operation per key.
#[derive(Debug, Default)]
pub struct Changes {
    /// Where the key columns are in an upserted row.
    pub(super) key: Vec<usize>,
    pub(super) ops: Vec<Option<(Op, Origin)>>,
    /// (hash of the key, slot in `ops` of its latest change). The key values are compared where they are, in
    /// the rows, never copied out.
    pub(super) slots: hashbrown::HashTable<(u64, usize)>,
    pub(super) hasher: hashbrown::DefaultHashBuilder,
    pub(super) superseded: usize,
    /// Where the version is in an upserted row, when the mapping has one ([`version`]); a delete then carries
    /// its version after its key values.
    pub(super) version: Option<usize>,
}

#[derive(Debug)]
pub(super) enum Op {
    Upsert(Vec<SqlValue>),
    Delete(Vec<SqlValue>),
}

/// The key values of an operation: the key columns of an upserted row, or a delete's key.
pub(super) fn key_of<'o>(
    key: &'o [usize],
    op: &'o Op,
) -> impl Iterator<Item = &'o SqlValue> + Clone {
    let (row, positions): (&[SqlValue], Option<&[usize]>) = match op {
        Op::Upsert(row) => (row, Some(key)),
        Op::Delete(values) => (values, None),
    };
    let picked = positions
        .into_iter()
        .flatten()
        .filter_map(move |&i| row.get(i));
    // A versioned delete carries its version after the key values.
    let all = positions
        .is_none()
        .then_some(row)
        .into_iter()
        .flatten()
        .take(key.len());
    picked.chain(all)
}

impl Changes {
    /// The changes of a table whose key columns are at `key` in its rows.
    pub fn new(key: Vec<usize>) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// As [`Changes::new`], with room for `n` changes (a batch's size), so the list and its table of keys do not
    /// grow and rehash while the batch is planned.
    pub fn with_capacity(key: Vec<usize>, n: usize) -> Self {
        let mut changes = Self::new(key);
        changes.ops.reserve(n);
        changes.slots.reserve(n, |&(h, _)| h);
        changes
    }

    /// With a version at `version` in every upserted row: within the batch, the highest version per key wins
    /// (ties: batch order), and deletes carry their version ([`Changes::delete_at`]).
    pub fn with_version(mut self, version: Option<usize>) -> Self {
        self.version = version;
        self
    }

    /// Records a delete with its version (`None` when the mapping has no version column).
    pub fn delete_at(&mut self, key: Vec<SqlValue>, version: Option<SqlValue>, origin: Origin) {
        let mut values = key;
        if self.version.is_some() {
            values.extend(version);
        }
        self.push(Op::Delete(values), origin);
    }

    /// Records an upsert of `row`; a later change of the same key replaces it.
    pub fn upsert(&mut self, row: Vec<SqlValue>, origin: Origin) {
        self.push(Op::Upsert(row), origin);
    }

    /// Records a delete of the entity whose key values are `key` (with a version column, followed by the
    /// delete's version, as [`Changes::delete_at`] puts it).
    pub fn delete(&mut self, key: Vec<SqlValue>, origin: Origin) {
        self.push(Op::Delete(key), origin);
    }

    pub(super) fn push(&mut self, mut op: Op, origin: Origin) {
        // One key, one version: compared from here on (collapse, stale check, tombstones, SQL guard) and bound
        // to the statement as the column holds them.
        let klen = self.key.len();
        match &mut op {
            Op::Upsert(row) => {
                for &i in self.key.iter().chain(self.version.as_ref()) {
                    if let Some(v) = row.get_mut(i) {
                        normal::normalise(v);
                    }
                }
            }
            // A delete's key values, then (versioned) its version.
            Op::Delete(values) => values
                .iter_mut()
                .take(klen + usize::from(self.version.is_some()))
                .for_each(normal::normalise),
        }
        let mut state = self.hasher.build_hasher();
        for v in key_of(&self.key, &op) {
            v.hash(&mut state);
        }
        let hash = state.finish();
        let slot = self.ops.len();
        let (key, ops) = (&self.key, &self.ops);
        let same = |&(h, s): &(u64, usize)| {
            h == hash
                && ops[s]
                    .as_ref()
                    .is_some_and(|(other, _)| key_of(key, other).eq(key_of(key, &op)))
        };
        match self.slots.find_mut(hash, same) {
            Some((_, previous)) => {
                self.superseded += 1;
                let version = |op: &Op| version::of_op(self.version, self.key.len(), op);
                let older = self.version.is_some()
                    && self.ops[*previous]
                        .as_ref()
                        .is_some_and(|(prev, _)| version(&op) < version(prev));
                if older {
                    // A lower version than the key's change so far: it loses, wherever it is in the batch.
                    return;
                }
                // Last in batch order wins: the earlier change would be overwritten anyway, so never send it.
                // It is replaced in its slot, so the list holds one change per key, not one per message.
                self.ops[*previous] = Some((op, origin));
                return;
            }
            None => {
                self.slots.insert_unique(hash, (hash, slot), |&(h, _)| h);
            }
        }
        self.ops.push(Some((op, origin)));
    }

    /// The messages whose change survived the collapse, with whether it is an upsert (else a delete).
    pub fn origins(&self) -> impl Iterator<Item = (Origin, bool)> + '_ {
        self.ops
            .iter()
            .flatten()
            .map(|(op, origin)| (*origin, matches!(op, Op::Upsert(_))))
    }

    /// Messages whose change a later message of the same key replaced.
    pub fn superseded(&self) -> usize {
        self.superseded
    }

    /// (rows to upsert, keys to delete), each in key order, with where each came from.
    ///
    /// Key order, not batch order: two writers whose batches share keys then lock those rows in the same
    /// order, so neither can hold a row the other waits for while waiting for one the other holds (a
    /// deadlock). The order is [`cmp_values`], the same in every writer whatever the backend.
    pub(super) fn split(&self) -> (Vec<Values<'_>>, Vec<Values<'_>>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (op, origin) in self.ops.iter().flatten() {
            match op {
                Op::Upsert(row) => upserts.push((row.as_slice(), *origin)),
                Op::Delete(key) => deletes.push((key.as_slice(), *origin)),
            }
        }
        let key = self.key.as_slice();
        upserts.sort_by(|(a, _), (b, _)| {
            cmp_keys(
                key.iter().filter_map(|&i| a.get(i)),
                key.iter().filter_map(|&i| b.get(i)),
            )
        });
        deletes.sort_by(|(a, _), (b, _)| cmp_keys(a.iter(), b.iter()));
        (upserts, deletes)
    }
}

/// Lexicographic [`cmp_values`] over two keys' values.
pub(super) fn cmp_keys<'v>(
    a: impl Iterator<Item = &'v SqlValue>,
    b: impl Iterator<Item = &'v SqlValue>,
) -> std::cmp::Ordering {
    let mut b = b;
    for x in a {
        let Some(y) = b.next() else {
            return std::cmp::Ordering::Greater;
        };
        match cmp_values(x, y) {
            std::cmp::Ordering::Equal => {}
            other => return other,
        }
    }
    if b.next().is_some() {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Equal
    }
}

/// A total order over key values that every writer computes alike: first by kind (boolean, integer, float,
/// text, bytes, anything else), NULL first within a kind, then by value (integers by number whatever their
/// width, text by its UTF-8 bytes, floats by [`f64::total_cmp`]). It need not be the database's collation:
/// lock order only has to be the same in every writer.
pub(super) fn cmp_values(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    use SqlValue as V;
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Kind<'v> {
        Bool(Option<bool>),
        Int(Option<i128>),
        Float(Option<FloatOrd>),
        Text(Option<&'v [u8]>),
        Bytes(Option<&'v [u8]>),
        /// Dates, UUIDs, JSON, decimals…: their Debug text, which names the variant and renders the value
        /// the same way in every writer. Rare as keys, so the allocation does not matter.
        Other(String),
    }
    pub(super) fn kind(v: &SqlValue) -> Kind<'_> {
        match v {
            V::Bool(x) => Kind::Bool(*x),
            V::TinyInt(x) => Kind::Int(x.map(i128::from)),
            V::SmallInt(x) => Kind::Int(x.map(i128::from)),
            V::Int(x) => Kind::Int(x.map(i128::from)),
            V::BigInt(x) => Kind::Int(x.map(i128::from)),
            V::TinyUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::SmallUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::Unsigned(x) => Kind::Int(x.map(i128::from)),
            V::BigUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::Float(x) => Kind::Float(x.map(|f| FloatOrd(f64::from(f)))),
            V::Double(x) => Kind::Float(x.map(FloatOrd)),
            V::String(x) => Kind::Text(x.as_deref().map(str::as_bytes)),
            V::Bytes(x) => Kind::Bytes(x.as_deref()),
            other => Kind::Other(format!("{other:?}")),
        }
    }
    kind(a).cmp(&kind(b))
}

/// An f64 ordered by [`f64::total_cmp`].
#[derive(Clone, Copy)]
pub(super) struct FloatOrd(f64);

impl PartialEq for FloatOrd {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for FloatOrd {}
impl PartialOrd for FloatOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for FloatOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A row (upsert) or key (delete), with the message it came from.
pub(super) type Values<'a> = (&'a [SqlValue], Origin);
