//! Avro values: Object Container Files (schema embedded, one message per record), the Confluent wire format
//! (magic byte 0, 4-byte big-endian schema id, datum) and bare datums with a configured schema.
//!
//! # Avro → JSON
//!
//! | Avro | JSON |
//! |---|---|
//! | null, boolean, string | the same |
//! | int, long | number |
//! | float, double | number; NaN and ±infinity (which JSON cannot hold) become `null` |
//! | bytes, fixed | standard base64 string |
//! | enum | its symbol |
//! | array, map | array, object |
//! | record | object, fields in schema order |
//! | union | the branch's value, unwrapped (`null` for the null branch) |
//! | date | `"YYYY-MM-DD"` |
//! | time-millis / time-micros | `"HH:MM:SS.mmm"` / `"HH:MM:SS.uuuuuu"` |
//! | timestamp-millis / -micros / -nanos, local-timestamp-* | RFC 3339 in UTC with ms / µs / ns (`Z`; local timestamps without offset) |
//! | uuid | its string |
//! | decimal (bytes or fixed), big-decimal | the exact decimal as a string, scale applied (`"12.34"`) |
//! | duration | `{"months": m, "days": d, "millis": ms}` |
//!
//! Every error is permanent for the record (dead-lettered) and never quotes the data.
//!
//! # How datums are read
//!
//! Datums never reach apache-avro's decoder unchecked: [`AvroSchema`] compiles a writer schema once (named
//! types resolved to indices) and decodes datum bytes straight to JSON in one pass, with bounded nesting
//! ([`MAX_DEPTH`]), every length checked against the bytes left before anything is allocated, zero-byte array
//! items capped ([`MAX_EMPTY_ITEMS`]) and exact consumption. Only with a reader schema (schema evolution) does a
//! datum, once it has passed that check, go through apache-avro's resolution. Container files are framed here
//! too: sync markers, exact block sizes and record counts, decompressed blocks capped at [`MAX_BLOCK_BYTES`].
//!
//! A container file's data is the producer's to choose, schema included: a deflated block of 60 KB inflates to
//! 60 MiB, and 6 bytes of zeros are a whole record of many schemas. So the container files of one batch draw
//! on one [`Budget`]: the bytes they may inflate in total, and the (estimated) memory of the messages they may
//! decode to in total. A file past either is refused, its record dead-lettered with a reason naming the limit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{
    DecimalSchema, InnerDecimalSchema, Name, NamespaceRef, ResolvedSchema, UuidSchema,
};
use apache_avro::types::Value as Avro;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde_json::{Map, Value};

use super::DecodeError;
use crate::message::{Message, Object};

/// The first bytes of an Avro Object Container File.
pub const OCF_MAGIC: &[u8; 4] = b"Obj\x01";

/// How deep records, arrays and maps may nest in one value (unions, which cannot hold a union directly, do
/// not count: they at most double the recursion).
pub const MAX_DEPTH: usize = 64;
/// Array items that take no bytes at all (null, an empty record, fixed(0)) a datum or container file may hold.
pub const MAX_EMPTY_ITEMS: u64 = 65_536;
/// How much work apache-avro's schema resolution may do for one datum: the sum, over the datum's values, of
/// the product of the branch counts of the unions around them. apache-avro tries a union's value against its
/// branches before resolving it, which is exponential in how deeply unions nest.
pub const MAX_RESOLVE_COST: u64 = 1 << 23;
/// The largest container-file block, once decompressed.
pub const MAX_BLOCK_BYTES: usize = 64 << 20;
/// What the compressed values of one batch may inflate to in total, unless `[codec] max_inflated_mib` says
/// otherwise or the function's memory gives less ([`super::memory::derived`]). Lambda hands a function at
/// most 6 MB; honest Avro does not deflate 40 to 1.
pub const DEFAULT_MAX_INFLATED_MIB: u64 = 256;
/// The estimated memory of what one batch's values become (messages, and rows with their copies) in total,
/// unless `[codec] max_decoded_mib` says otherwise or the function's memory gives less
/// ([`super::memory::derived`]).
pub const DEFAULT_MAX_DECODED_MIB: u64 = 512;

/// What the container files of one batch may still inflate and decode to. A batch's decoder holds one
/// ([`super::Codec::decoder`]); every container file it reads draws on it, and a file that would go past it
/// fails (permanent: its record is dead-lettered, with a reason naming the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    max_inflated: usize,
    max_decoded: usize,
    inflated: usize,
    decoded: usize,
    /// The function's memory in MiB, when the limits were derived from it ([`super::memory::derived`]).
    derived_from: Option<u64>,
}

impl Budget {
    /// A fresh budget: at most `max_inflated` bytes inflated and `max_decoded` bytes of messages, in total.
    pub fn new(max_inflated: usize, max_decoded: usize) -> Self {
        Self {
            max_inflated,
            max_decoded,
            inflated: 0,
            decoded: 0,
            derived_from: None,
        }
    }

    /// The same limits, said to be derived from a function of `memory_mib` (the refusals say so).
    pub(crate) fn derived_from(self, memory_mib: Option<u64>) -> Self {
        Self {
            derived_from: memory_mib,
            ..self
        }
    }

    /// How the refusals name where a limit comes from.
    pub(crate) fn source(&self) -> String {
        match self.derived_from {
            Some(mb) => format!(
                ", derived from the function's {mb} MB ({}); set it in [codec] to change it",
                super::memory::FUNCTION_MEMORY_ENV
            ),
            None => String::new(),
        }
    }

    /// The refusal of `what`, which would cost `cost` bytes of the batch's memory: a message too large to map,
    /// a row too large to hold with its copies.
    pub(crate) fn row_error(&self, what: &str, cost: usize) -> String {
        format!(
            "{what} would take the batch past what its messages and rows may hold: it needs about {} MiB \
             (with its copies on the way to the statement) and the batch has {} MiB left \
             (codec.max_decoded_mib = {} MiB in total per batch{})",
            cost.div_ceil(1 << 20),
            self.decoded_left() >> 20,
            self.max_decoded >> 20,
            self.source()
        )
    }

    /// The default limits ([`DEFAULT_MAX_INFLATED_MIB`], [`DEFAULT_MAX_DECODED_MIB`]).
    pub fn default_limits() -> Self {
        Self::new(mib(DEFAULT_MAX_INFLATED_MIB), mib(DEFAULT_MAX_DECODED_MIB))
    }

    /// Bytes inflated so far.
    pub fn inflated(&self) -> usize {
        self.inflated
    }

    /// Estimated bytes of messages decoded so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// Whether budgets drawn on separately, each from a fresh copy of one budget (one per thread, each
    /// decoding a run of the batch's records), stay within that budget taken together. Then one budget drawn
    /// on by every record in batch order would have let each record draw what it drew (what was drawn before
    /// it is at most the total) and refused exactly what was refused (a refusing copy had at least as much
    /// left as the one budget would have had), so the records' fates are the same. Otherwise the caller
    /// decodes the batch again with one budget.
    pub fn fits_together(parts: &[Budget]) -> bool {
        let Some(first) = parts.first() else {
            return true;
        };
        let (inflated, decoded) = parts.iter().fold((0usize, 0usize), |(i, d), b| {
            (i.saturating_add(b.inflated), d.saturating_add(b.decoded))
        });
        inflated <= first.max_inflated && decoded <= first.max_decoded
    }

    /// Estimated bytes of messages the batch may still decode to.
    pub(crate) fn decoded_left(&self) -> usize {
        self.max_decoded.saturating_sub(self.decoded)
    }

    /// Counts `bytes` more of decoded messages (estimated by the caller, within [`Budget::decoded_left`]).
    pub(crate) fn add_decoded(&mut self, bytes: usize) {
        self.decoded = self.decoded.saturating_add(bytes);
    }

    /// `codec.max_decoded_mib`.
    pub(crate) fn max_decoded_mib(&self) -> usize {
        self.max_decoded >> 20
    }

    fn inflated_error(&self, subject: &str) -> DecodeError {
        permanent(format!(
            "{subject}: inflating it would take the batch's container files past their limit \
             (codec.max_inflated_mib = {} MiB in total per batch{})",
            self.max_inflated >> 20,
            self.source()
        ))
    }

    fn decoded_error(&self, subject: &str) -> DecodeError {
        permanent(format!(
            "{subject}: its messages would take the batch's container files past their limit \
             (codec.max_decoded_mib = {} MiB of decoded messages in total per batch{})",
            self.max_decoded >> 20,
            self.source()
        ))
    }
}

/// MiB → bytes, saturating.
pub(crate) fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

fn permanent(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Permanent(what.to_string())
}

type NodeId = usize;

/// A schema node, named references resolved to indices.
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum {
        name: String,
        symbols: Vec<String>,
    },
    Array(NodeId),
    Map(NodeId),
    Record {
        name: String,
        fields: Vec<(String, NodeId)>,
        /// What a decoded record's object costs, its values aside (see [`Cursor::charge`]).
        footprint: usize,
    },
    Union(Vec<NodeId>),
    Date,
    TimeMillis,
    TimeMicros,
    /// Nanoseconds per unit, UTC (or local).
    Timestamp(i64, bool),
    UuidString,
    UuidBytes,
    UuidFixed(usize),
    /// Fixed size (`None`: bytes), scale.
    Decimal(Option<usize>, usize),
    BigDecimal,
    Duration(usize),
    /// A named type being compiled (only while compiling).
    Pending,
}

/// A writer schema compiled for decoding; build it once per schema and keep it.
pub struct AvroSchema {
    schema: Arc<Schema>,
    nodes: Vec<Node>,
    /// Whether a node's values can take zero bytes.
    empty: Vec<bool>,
    root: NodeId,
    /// Named types, for apache-avro values (reader schemas); computed when first needed.
    names: OnceLock<Result<HashMap<Name, Schema>, DecodeError>>,
}

impl std::fmt::Debug for AvroSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl AvroSchema {
    /// Compiles `schema`; fails only when a named reference cannot be resolved.
    pub fn new(schema: Arc<Schema>) -> Result<Self, String> {
        limit_allocations();
        let resolved =
            ResolvedSchema::try_from(&*schema).map_err(|e| format!("Avro schema: {e}"))?;
        let mut c = Compiler {
            names: resolved.get_names(),
            nodes: Vec::new(),
            compiled: HashMap::new(),
        };
        let root = c.compile(&schema, None)?;
        let nodes = c.nodes;
        let empty = empty_nodes(&nodes);
        drop(resolved);
        Ok(Self {
            schema,
            nodes,
            empty,
            root,
            names: OnceLock::new(),
        })
    }

    /// The parsed schema this was compiled from.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    fn names(&self) -> Result<&HashMap<Name, Schema>, DecodeError> {
        self.names
            .get_or_init(|| names(&self.schema))
            .as_ref()
            .map_err(Clone::clone)
    }
}

struct Compiler<'s, 'n> {
    names: &'n HashMap<Name, &'s Schema>,
    nodes: Vec<Node>,
    compiled: HashMap<Name, NodeId>,
}

impl Compiler<'_, '_> {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Reserves the node of a named type (once: references to it reuse it).
    fn named(&mut self, name: &Name, ns: NamespaceRef) -> Result<NodeId, NodeId> {
        let full = name.fully_qualified_name(ns).into_owned();
        if let Some(&id) = self.compiled.get(&full) {
            return Err(id);
        }
        let id = self.push(Node::Pending);
        self.compiled.insert(full, id);
        Ok(id)
    }

    fn compile(&mut self, schema: &Schema, ns: NamespaceRef) -> Result<NodeId, String> {
        let simple = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::BigDecimal => Node::BigDecimal,
            Schema::Uuid(UuidSchema::String) => Node::UuidString,
            Schema::Uuid(UuidSchema::Bytes) => Node::UuidBytes,
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis => Node::Timestamp(1_000_000, true),
            Schema::TimestampMicros => Node::Timestamp(1_000, true),
            Schema::TimestampNanos => Node::Timestamp(1, true),
            Schema::LocalTimestampMillis => Node::Timestamp(1_000_000, false),
            Schema::LocalTimestampMicros => Node::Timestamp(1_000, false),
            Schema::LocalTimestampNanos => Node::Timestamp(1, false),
            Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                scale,
                ..
            }) => Node::Decimal(None, *scale),
            Schema::Array(a) => {
                let id = self.push(Node::Pending);
                let items = self.compile(&a.items, ns)?;
                self.nodes[id] = Node::Array(items);
                return Ok(id);
            }
            Schema::Map(m) => {
                let id = self.push(Node::Pending);
                let values = self.compile(&m.types, ns)?;
                self.nodes[id] = Node::Map(values);
                return Ok(id);
            }
            Schema::Union(u) => {
                let id = self.push(Node::Pending);
                let branches = u
                    .variants()
                    .iter()
                    .map(|v| self.compile(v, ns))
                    .collect::<Result<_, _>>()?;
                self.nodes[id] = Node::Union(branches);
                return Ok(id);
            }
            Schema::Record(r) => {
                let id = match self.named(&r.name, ns) {
                    Ok(id) => id,
                    Err(known) => return Ok(known),
                };
                let full = r.name.fully_qualified_name(ns);
                let inner = full.namespace().map(ToString::to_string);
                let fields: Vec<(String, NodeId)> = r
                    .fields
                    .iter()
                    .map(|f| Ok((f.name.clone(), self.compile(&f.schema, inner.as_deref())?)))
                    .collect::<Result<_, String>>()?;
                // A slot per field (the values count their own) and for the injected fields, and, in a
                // container file's owned messages, a copy of each name.
                let footprint = fields.len() * std::mem::size_of::<Cow<'static, str>>()
                    + super::INJECTED_FIELDS * FIELD_SLOT
                    + fields.iter().map(|(n, _)| n.len()).sum::<usize>();
                self.nodes[id] = Node::Record {
                    name: r.name.name().to_string(),
                    fields,
                    footprint,
                };
                return Ok(id);
            }
            Schema::Enum(e) => {
                let id = match self.named(&e.name, ns) {
                    Ok(id) => id,
                    Err(known) => return Ok(known),
                };
                self.nodes[id] = Node::Enum {
                    name: e.name.name().to_string(),
                    symbols: e.symbols.clone(),
                };
                return Ok(id);
            }
            Schema::Fixed(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Duration(f)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => {
                let id = match self.named(&f.name, ns) {
                    Ok(id) => id,
                    Err(known) => return Ok(known),
                };
                self.nodes[id] = match schema {
                    Schema::Uuid(_) => Node::UuidFixed(f.size),
                    Schema::Duration(_) => Node::Duration(f.size),
                    Schema::Decimal(d) => Node::Decimal(Some(f.size), d.scale),
                    _ => Node::Fixed(f.size),
                };
                return Ok(id);
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                if let Some(&id) = self.compiled.get(&*full) {
                    return Ok(id);
                }
                let target = *self
                    .names
                    .get(&*full)
                    .ok_or_else(|| format!("Avro schema refers to unknown type {full}"))?;
                let target_ns = full.namespace().map(ToString::to_string);
                return self.compile(target, target_ns.as_deref());
            }
        };
        Ok(self.push(simple))
    }
}

/// Which nodes can be encoded in zero bytes (a least fixed point: recursive types start as not empty).
fn empty_nodes(nodes: &[Node]) -> Vec<bool> {
    let mut empty = vec![false; nodes.len()];
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            let now = match node {
                Node::Null => true,
                Node::Fixed(0) | Node::UuidFixed(0) | Node::Decimal(Some(0), _) => true,
                Node::Duration(0) => true,
                Node::Record { fields, .. } => fields.iter().all(|(_, f)| empty[*f]),
                _ => false,
            };
            if now && !empty[i] {
                empty[i] = true;
                changed = true;
            }
        }
        if !changed {
            return empty;
        }
    }
}

/// Caps apache-avro's allocations (reader-schema decoding; deflate is inflated here, see [`inflate`]) at [`MAX_BLOCK_BYTES`] for the
/// process. The limit is set once; whoever sets it first wins, hence the check after decompressing as well.
fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_BLOCK_BYTES);
}

/// An object's field: its name and value.
const FIELD_SLOT: usize = std::mem::size_of::<(Cow<'static, str>, Message<'static>)>();

/// Why bytes do not decode; built only on the error path.
struct Bad {
    /// The bytes end too soon (or a length points past them).
    truncated: bool,
    what: String,
    at: usize,
    /// Field names, innermost first.
    path: Vec<String>,
    /// The innermost record.
    record: Option<String>,
}

type Res<T> = Result<T, Box<Bad>>;

impl Bad {
    fn within(mut self: Box<Self>, record: &str, field: &str) -> Box<Self> {
        self.path.push(field.to_string());
        self.record.get_or_insert_with(|| record.to_string());
        self
    }

    /// `"{subject} is truncated (N bytes): …"` or `"{subject} does not match its schema (N bytes): …"`.
    fn to_error(&self, subject: &str, len: usize) -> DecodeError {
        let mut place = format!("at byte {}", self.at);
        if !self.path.is_empty() {
            let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
            let record = self.record.as_deref().unwrap_or("?");
            place = format!("in field {} (record {record}), {place}", path.join("."));
        }
        let what = &self.what;
        permanent(if self.truncated {
            format!("{subject} is truncated ({len} bytes): {what} {place}")
        } else {
            format!("{subject} does not match its schema ({len} bytes): {what} {place}")
        })
    }
}

/// Datum bytes being decoded.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array items so far that took no bytes.
    empty_items: u64,
    /// What resolving the values so far would cost apache-avro (see [`MAX_RESOLVE_COST`]).
    resolve_cost: u64,
    /// The estimated memory of the messages decoded so far, and how much they may take (a container file's
    /// [`Budget`]; unlimited for a datum, whose messages are linear in the record's own bytes).
    decoded: usize,
    max_decoded: usize,
    /// The error being returned is the budget's, not the data's.
    over_budget: bool,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            empty_items: 0,
            resolve_cost: 0,
            decoded: 0,
            max_decoded: usize::MAX,
            over_budget: false,
        }
    }

    /// Counts `bytes` more of decoded messages; past the budget, decoding stops before it allocates more.
    #[inline]
    fn charge(&mut self, at: usize, bytes: usize) -> Res<()> {
        self.decoded = self.decoded.saturating_add(bytes);
        if self.decoded > self.max_decoded {
            self.over_budget = true;
            return Err(self.bad(at, "the decoded messages are over budget"));
        }
        Ok(())
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[cold]
    fn fail(&self, truncated: bool, at: usize, what: String) -> Box<Bad> {
        Box::new(Bad {
            truncated,
            what,
            at,
            path: Vec::new(),
            record: None,
        })
    }

    #[cold]
    fn bad(&self, at: usize, what: impl Into<String>) -> Box<Bad> {
        self.fail(false, at, what.into())
    }

    #[cold]
    fn short(&self, at: usize, what: impl Into<String>) -> Box<Bad> {
        self.fail(true, at, what.into())
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        if n > self.left() {
            return Err(self.short(
                self.pos,
                format!("{what} of {n} bytes, {} left,", self.left()),
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// A variable-length unsigned integer: at most 10 bytes, within 64 bits.
    #[inline]
    fn varint(&mut self) -> Res<u64> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.short(start, "a number ends past the end"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.bad(
                    start,
                    "a number is longer than 10 bytes or overflows 64 bits",
                ));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        // Not reached: the tenth byte either ends the number or fails above. An error, not a panic, all the same.
        Err(self.bad(start, "a number is longer than 10 bytes"))
    }

    #[inline]
    fn long(&mut self) -> Res<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    #[inline]
    fn int(&mut self) -> Res<i32> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.bad(at, "an int is out of the 32-bit range"))
    }

    /// A length-prefixed byte string; the length is checked against the bytes left before anything else.
    #[inline]
    fn bytes(&mut self, what: &str) -> Res<&'a [u8]> {
        let at = self.pos;
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| self.bad(at, format!("{what} has a negative length")))?;
        if len > self.left() {
            return Err(self.short(at, format!("{what} of {len} bytes, {} left,", self.left())));
        }
        self.take(len, what)
    }

    #[inline]
    fn string(&mut self) -> Res<&'a str> {
        let at = self.pos;
        let bytes = self.bytes("string")?;
        std::str::from_utf8(bytes).map_err(|_| self.bad(at, "a string is not valid UTF-8"))
    }

    /// The item count of the next array or map block (`None` at the end). Items that take bytes cannot be
    /// more than the bytes left; items that take none are capped at [`MAX_EMPTY_ITEMS`].
    fn block(&mut self, empty_items: bool, what: &str) -> Res<Option<usize>> {
        let at = self.pos;
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            let size_at = self.pos;
            let size = self.long()?;
            if usize::try_from(size).map_or(true, |s| s > self.left()) {
                return Err(self.short(
                    size_at,
                    format!("{what} block of {size} bytes, {} left,", self.left()),
                ));
            }
        }
        let count = count.unsigned_abs();
        if empty_items {
            self.empty_items = self.empty_items.saturating_add(count);
            if self.empty_items > MAX_EMPTY_ITEMS {
                return Err(self.bad(
                    at,
                    format!("{what} block of {count} items that take no bytes: more than {MAX_EMPTY_ITEMS} such items"),
                ));
            }
        } else if count > self.left() as u64 {
            return Err(self.short(
                at,
                format!("{what} block of {count} items, {} bytes left,", self.left()),
            ));
        }
        usize::try_from(count)
            .map(Some)
            .map_err(|_| self.bad(at, format!("{what} block is too large")))
    }
}

fn b64(bytes: &[u8]) -> Message<'static> {
    Message::from(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn number(f: f64) -> Message<'static> {
    serde_json::Number::from_f64(f).map_or(Message::Null, Message::Number)
}

/// Two's-complement big-endian bytes as decimal digits.
fn unscaled(bytes: &[u8]) -> String {
    if bytes.len() <= 16 {
        let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut wide = [fill; 16];
        wide[16 - bytes.len()..].copy_from_slice(bytes);
        i128::from_be_bytes(wide).to_string()
    } else {
        num_bigint::BigInt::from_signed_bytes_be(bytes).to_string()
    }
}

impl AvroSchema {
    fn deeper(c: &Cursor<'_>, depth: usize) -> Res<usize> {
        if depth >= MAX_DEPTH {
            return Err(c.bad(
                c.pos,
                format!("Avro value nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(depth + 1)
    }

    /// One value of node `id`, straight to JSON (the module doc's table); strings borrow from the datum, field
    /// names and enum symbols from the schema.
    /// `unions`: the product of the branch counts of the unions around this value.
    fn value<'a>(
        &'a self,
        id: NodeId,
        c: &mut Cursor<'a>,
        depth: usize,
        unions: u64,
    ) -> Res<Message<'a>> {
        let at = c.pos;
        c.resolve_cost = c.resolve_cost.saturating_add(unions);
        // The value itself (a message, or an array's item); strings and fields add their own below.
        c.charge(at, std::mem::size_of::<Message<'static>>())?;
        Ok(match &self.nodes[id] {
            Node::Null => Message::Null,
            Node::Boolean => match c.take(1, "boolean")?[0] {
                0 => Message::Bool(false),
                1 => Message::Bool(true),
                _ => return Err(c.bad(at, "a boolean is neither 0 nor 1")),
            },
            Node::Int => Message::from(i64::from(c.int()?)),
            Node::Long => Message::from(c.long()?),
            Node::Float => {
                let b = c.take(4, "float")?;
                number(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            Node::Double => {
                let b = c.take(8, "double")?;
                let mut a = [0; 8];
                a.copy_from_slice(b);
                number(f64::from_le_bytes(a))
            }
            Node::Bytes => {
                let b = c.bytes("bytes")?;
                c.charge(at, b.len() / 3 * 4 + 4)?;
                b64(b)
            }
            Node::String => {
                let s = c.string()?;
                c.charge(at, s.len())?;
                Message::String(Cow::Borrowed(s))
            }
            Node::Fixed(n) => {
                c.charge(at, n / 3 * 4 + 4)?;
                b64(c.take(*n, "fixed")?)
            }
            Node::Enum { name, symbols } => {
                let i = c.long()?;
                let symbol = usize::try_from(i).ok().and_then(|i| symbols.get(i));
                let symbol = symbol.ok_or_else(|| {
                    c.bad(
                        at,
                        format!(
                            "enum {name} has no symbol number {i} (it has {})",
                            symbols.len()
                        ),
                    )
                })?;
                Message::String(Cow::Borrowed(symbol))
            }
            Node::Array(items) => {
                let depth = Self::deeper(c, depth)?;
                let mut out = Vec::new();
                while let Some(count) = c.block(self.empty[*items], "array")? {
                    out.reserve(count.min(1024));
                    for _ in 0..count {
                        out.push(self.value(*items, c, depth, unions)?);
                    }
                }
                Message::Array(out)
            }
            Node::Map(values) => {
                let depth = Self::deeper(c, depth)?;
                let mut entries: Vec<(Cow<'a, str>, Message<'a>)> = Vec::new();
                while let Some(count) = c.block(false, "map")? {
                    entries.reserve(count.min(1024));
                    for _ in 0..count {
                        let key = c.string()?;
                        c.charge(
                            at,
                            key.len() + FIELD_SLOT - std::mem::size_of::<Message<'_>>(),
                        )?;
                        let key = Cow::Borrowed(key);
                        entries.push((key, self.value(*values, c, depth, unions)?));
                    }
                }
                // Avro maps are unordered; sort the keys so a message always looks the same (a stable sort: the
                // last of equal keys wins, as it would in a hash map).
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Message::Object(Object::from_fields(entries))
            }
            Node::Record {
                name,
                fields,
                footprint,
            } => {
                c.charge(at, *footprint)?;
                // The message itself (depth 0) gets the pipeline's injected fields: room for them now
                // saves growing the map later.
                let spare = if depth == 0 {
                    super::INJECTED_FIELDS
                } else {
                    0
                };
                let depth = Self::deeper(c, depth)?;
                let mut out = Object::with_capacity(fields.len() + spare);
                for (f, field) in fields {
                    let v = self
                        .value(*field, c, depth, unions)
                        .map_err(|e| e.within(name, f))?;
                    out.push_unique(Cow::Borrowed(f), v);
                }
                Message::Object(out)
            }
            Node::Union(branches) => {
                let i = c.long()?;
                let branch = usize::try_from(i).ok().and_then(|i| branches.get(i));
                let branch = branch.ok_or_else(|| {
                    c.bad(
                        at,
                        format!(
                            "union branch {i} is not in the schema (it has {})",
                            branches.len()
                        ),
                    )
                })?;
                let factor = branches.len().max(2) as u64;
                self.value(*branch, c, depth, unions.saturating_mul(factor))?
            }
            logical @ (Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::Timestamp(..)
            | Node::UuidString
            | Node::UuidBytes
            | Node::UuidFixed(_)
            | Node::Decimal(..)
            | Node::BigDecimal
            | Node::Duration(_)) => Self::logical(logical, c, at)?,
            Node::Pending => return Err(c.bad(at, "the schema has an unresolved type")),
        })
    }

    /// A value of a logical type (date, time, timestamp, uuid, decimal, duration) as its JSON text or object;
    /// `at` is where the value starts, for errors.
    fn logical<'a>(node: &Node, c: &mut Cursor<'a>, at: usize) -> Res<Message<'a>> {
        let out_of_range = |c: &Cursor<'_>, e: DecodeError| match e {
            DecodeError::Permanent(m)
            | DecodeError::Transient(m)
            | DecodeError::Misconfigured(m) => c.bad(at, m),
        };
        Ok(match node {
            Node::Date => {
                let days = c.int()?;
                let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|epoch| {
                        epoch.checked_add_signed(chrono::Duration::days(i64::from(days)))
                    })
                    .ok_or_else(|| c.bad(at, "Avro date out of range"))?;
                Message::from(date.format("%Y-%m-%d").to_string())
            }
            Node::TimeMillis => {
                let ms = c.int()?;
                Message::from(time(i64::from(ms) * 1_000, 3).map_err(|e| out_of_range(c, e))?)
            }
            Node::TimeMicros => {
                let us = c.long()?;
                Message::from(time(us, 6).map_err(|e| out_of_range(c, e))?)
            }
            Node::Timestamp(unit, utc) => {
                let v = c.long()?;
                Message::from(timestamp(v, *unit, *utc).map_err(|e| out_of_range(c, e))?)
            }
            Node::UuidString => {
                let s = c.string()?;
                let uuid = apache_avro::Uuid::parse_str(s)
                    .map_err(|_| c.bad(at, "a uuid string is not a UUID"))?;
                Message::from(uuid.to_string())
            }
            Node::UuidBytes | Node::UuidFixed(_) => {
                let b = match node {
                    Node::UuidFixed(n) => c.take(*n, "uuid")?,
                    _ => c.bytes("uuid")?,
                };
                let uuid = apache_avro::Uuid::from_slice(b).map_err(|_| {
                    c.bad(at, format!("a uuid has {} bytes instead of 16", b.len()))
                })?;
                Message::from(uuid.to_string())
            }
            Node::Decimal(fixed, scale) => {
                let b = match fixed {
                    Some(n) => c.take(*n, "decimal")?,
                    None => c.bytes("decimal")?,
                };
                Message::from(scaled(&unscaled(b), *scale))
            }
            Node::BigDecimal => {
                let b = c.bytes("big-decimal")?;
                let mut inner = Cursor::new(b);
                let digits = inner.bytes("big-decimal digits");
                let scale = digits.and_then(|d| Ok((d, inner.long()?)));
                let (digits, scale) = match scale {
                    Ok(ds) if inner.left() == 0 => ds,
                    _ => return Err(c.bad(at, "a big-decimal is not digits and a scale")),
                };
                let unscaled = num_bigint::BigInt::from_signed_bytes_be(digits);
                Message::from(apache_avro::BigDecimal::new(unscaled, scale).to_string())
            }
            Node::Duration(n) => {
                let b = c.take(*n, "duration")?;
                if b.len() != 12 {
                    return Err(c.bad(
                        at,
                        format!("a duration has {} bytes instead of 12", b.len()),
                    ));
                }
                let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                Message::from(serde_json::json!({"months": u(0), "days": u(4), "millis": u(8)}))
            }
            _ => return Err(c.bad(at, "not a logical type")),
        })
    }
}

/// A bare datum written with `writer`, resolved to `reader` when given (schema evolution). The datum must be
/// consumed exactly: trailing bytes mean the schema does not fit.
pub fn decode_datum<'a>(
    bytes: &'a [u8],
    writer: &'a AvroSchema,
    reader: Option<&AvroSchema>,
) -> Result<Message<'a>, DecodeError> {
    let mut c = Cursor::new(bytes);
    let value = writer
        .value(writer.root, &mut c, 0, 1)
        .map_err(|e| e.to_error("Avro datum", bytes.len()))?;
    if c.left() > 0 {
        return Err(permanent(format!(
            "Avro datum has {} bytes left over after decoding {} bytes: it does not match its schema",
            c.left(),
            c.pos
        )));
    }
    match reader {
        None => Ok(value),
        Some(reader) => resolve(bytes, c.resolve_cost, writer, reader).map(Message::from),
    }
}

/// Schema evolution through apache-avro, for a datum that already decoded under `writer`.
fn resolve(
    datum: &[u8],
    cost: u64,
    writer: &AvroSchema,
    reader: &AvroSchema,
) -> Result<Value, DecodeError> {
    if cost > MAX_RESOLVE_COST {
        return Err(permanent(format!(
            "Avro datum ({} bytes) nests unions too deeply to be resolved to the reader schema",
            datum.len()
        )));
    }
    let datum_reader = GenericDatumReader::builder(writer.schema())
        .reader_schema(reader.schema())
        .build()
        .map_err(|e| permanent(format!("Avro reader schema: {e}")))?;
    let mut rest = datum;
    // apache-avro's errors can quote values: say only that the datum does not resolve.
    let value = datum_reader.read_value(&mut rest).map_err(|_| {
        permanent(format!(
            "Avro datum ({} bytes) cannot be resolved to the reader schema",
            datum.len()
        ))
    })?;
    if !rest.is_empty() {
        return Err(permanent(format!(
            "Avro datum ({} bytes): the reader schema left {} bytes unread",
            datum.len(),
            rest.len()
        )));
    }
    to_json(&value, reader.schema(), reader.names()?)
}

/// An Object Container File: every record becomes a message. Returns the writer schema (it classifies the
/// fields for masking) with the messages. What it inflates and decodes is drawn from `budget`, the batch's.
pub fn decode_ocf(
    bytes: &[u8],
    reader: Option<&AvroSchema>,
    budget: &mut Budget,
) -> Result<(Arc<Schema>, Vec<Message<'static>>), DecodeError> {
    let header_error =
        |what: String| permanent(format!("value is not a valid Avro container file: {what}"));
    let mut c = Cursor::new(bytes);
    let header = |e: Box<Bad>| e.to_error("Avro container file header", bytes.len());
    if c.take(4, "magic").map_err(header)? != OCF_MAGIC {
        return Err(header_error("it does not start with Obj\\x01".into()));
    }
    let (mut schema_json, mut codec) = (None, None);
    while let Some(count) = c.block(false, "metadata map").map_err(header)? {
        for _ in 0..count {
            let key = c.bytes("metadata key").map_err(header)?;
            let value = c.bytes("metadata value").map_err(header)?;
            match key {
                b"avro.schema" => schema_json = Some(value),
                b"avro.codec" => codec = Some(value),
                _ => {}
            }
        }
    }
    let sync = c.take(16, "sync marker").map_err(header)?;
    let schema_json =
        schema_json.ok_or_else(|| header_error("no avro.schema in its header".into()))?;
    let schema = std::str::from_utf8(schema_json)
        .map_err(|_| header_error("its avro.schema is not UTF-8".into()))
        .and_then(|text| {
            Schema::parse_str(text)
                .map_err(|e| header_error(format!("its avro.schema does not parse: {e}")))
        })?;
    let writer = AvroSchema::new(Arc::new(schema)).map_err(header_error)?;
    let deflate = match codec.unwrap_or(b"null") {
        b"null" => false,
        b"deflate" => true,
        other => {
            let name = String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned();
            return Err(header_error(format!(
                "codec {name:?} is not supported (null and deflate are)"
            )));
        }
    };
    let root_empty = writer.empty[writer.root];
    let mut messages = Vec::new();
    let mut empty_items = 0u64;
    let mut block = 0usize;
    while c.left() > 0 {
        block += 1;
        let subject = format!("Avro container file, block {block}");
        let frame = |e: Box<Bad>| e.to_error(&subject, bytes.len());
        let at = c.pos;
        let count = c.long().map_err(frame)?;
        let size = c.long().map_err(frame)?;
        let (Ok(count), Ok(size)) = (u64::try_from(count), usize::try_from(size)) else {
            return Err(frame(c.bad(at, "a negative record count or size")));
        };
        let data = c.take(size, "block").map_err(frame)?;
        if c.take(16, "sync marker").map_err(frame)? != sync {
            return Err(permanent(format!(
                "{subject}: its sync marker differs from the header's (byte {})",
                c.pos - 16
            )));
        }
        let data: std::borrow::Cow<'_, [u8]> = if deflate {
            inflate(data, &subject, budget)?.into()
        } else {
            data.into()
        };
        if root_empty {
            empty_items = empty_items.saturating_add(count);
            if empty_items > MAX_EMPTY_ITEMS {
                return Err(permanent(format!(
                    "{subject}: more than {MAX_EMPTY_ITEMS} records that take no bytes"
                )));
            }
        } else if count > data.len() as u64 {
            return Err(permanent(format!(
                "{subject} declares {count} records but holds {} bytes",
                data.len()
            )));
        }
        let mut d = Cursor::new(&data);
        d.empty_items = empty_items;
        d.decoded = budget.decoded;
        d.max_decoded = budget.max_decoded;
        messages.reserve(usize::try_from(count).unwrap_or(0).min(1024));
        for i in 0..count {
            let start = d.pos;
            d.resolve_cost = 0;
            let value = writer.value(writer.root, &mut d, 0, 1).map_err(|e| {
                let subject = format!("{subject}, record {}", i + 1);
                if d.over_budget {
                    // What was decoded is dropped, but the work was done: later files get what is left.
                    budget.decoded = budget.max_decoded;
                    budget.decoded_error(&subject)
                } else {
                    e.to_error(&subject, data.len())
                }
            })?;
            // The schema and the block are this function's own: the messages own their strings.
            messages.push(match reader {
                None => value.into_owned(),
                Some(reader) => Message::from(resolve(
                    &data[start..d.pos],
                    d.resolve_cost,
                    &writer,
                    reader,
                )?),
            });
        }
        if d.left() > 0 {
            return Err(permanent(format!(
                "{subject} has {} bytes left over after its {count} records",
                d.left()
            )));
        }
        empty_items = d.empty_items;
        budget.decoded = d.decoded;
    }
    Ok((Arc::clone(writer.schema()), messages))
}

/// A deflated block, inflated within the block cap ([`MAX_BLOCK_BYTES`]) and what the batch's budget has left.
fn inflate(data: &[u8], subject: &str, budget: &mut Budget) -> Result<Vec<u8>, DecodeError> {
    inflate_with(data, subject, budget, false)
}

/// zlib-wrapped deflate data (AWS Glue's compressed payloads), inflated as [`inflate`] does: within the block
/// cap and what the batch's budget has left.
pub(crate) fn inflate_zlib(
    data: &[u8],
    subject: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, DecodeError> {
    inflate_with(data, subject, budget, true)
}

fn inflate_with(
    data: &[u8],
    subject: &str,
    budget: &mut Budget,
    zlib: bool,
) -> Result<Vec<u8>, DecodeError> {
    use miniz_oxide::inflate::{
        TINFLStatus, decompress_to_vec_with_limit, decompress_to_vec_zlib_with_limit,
    };
    let left = budget.max_inflated.saturating_sub(budget.inflated);
    let limit = left.min(MAX_BLOCK_BYTES);
    let inflated = if zlib {
        decompress_to_vec_zlib_with_limit(data, limit)
    } else {
        decompress_to_vec_with_limit(data, limit)
    };
    match inflated {
        Ok(inflated) => {
            budget.inflated += inflated.len();
            Ok(inflated)
        }
        Err(e) if e.status == TINFLStatus::HasMoreOutput => {
            if limit < MAX_BLOCK_BYTES {
                // The work is done and the limit reached: the batch inflates nothing more.
                budget.inflated = budget.max_inflated;
                Err(budget.inflated_error(subject))
            } else {
                budget.inflated += limit;
                Err(permanent(format!(
                    "{subject}: its deflate data inflates past {} MiB (the limit per block)",
                    MAX_BLOCK_BYTES >> 20
                )))
            }
        }
        Err(_) => Err(permanent(format!("{subject}: its deflate data is corrupt"))),
    }
}

/// The Confluent wire format's header: schema id and datum.
pub fn split_confluent(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, datum @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => None,
    }
}

/// Named types of a schema, for resolving references while converting.
pub(crate) fn names(schema: &Schema) -> Result<HashMap<Name, Schema>, DecodeError> {
    let resolved =
        ResolvedSchema::try_from(schema).map_err(|e| permanent(format!("Avro schema: {e}")))?;
    Ok(resolved
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect())
}

/// Converts a decoded value to JSON as the module doc's table says.
pub fn to_json(
    value: &Avro,
    schema: &Schema,
    names: &HashMap<Name, Schema>,
) -> Result<Value, DecodeError> {
    let schema = match schema {
        Schema::Ref { name } => names
            .get(name)
            .ok_or_else(|| permanent(format!("Avro schema refers to unknown type {name}")))?,
        s => s,
    };
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    Ok(match (value, schema) {
        (Avro::Null, _) => Value::Null,
        (Avro::Boolean(b), _) => Value::Bool(*b),
        (Avro::Int(i), _) => Value::from(*i),
        (Avro::Long(i), _) => Value::from(*i),
        (Avro::Float(f), _) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        (Avro::Double(f), _) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        (Avro::String(s), _) => Value::String(s.clone()),
        (Avro::Enum(_, symbol), _) => Value::String(symbol.clone()),
        (Avro::Union(i, inner), Schema::Union(u)) => {
            let branch = usize::try_from(*i).ok().and_then(|i| u.variants().get(i));
            let branch = branch
                .ok_or_else(|| permanent(format!("Avro union branch {i} is not in the schema")))?;
            to_json(inner, branch, names)?
        }
        (Avro::Union(_, inner), s) => to_json(inner, s, names)?,
        (Avro::Array(items), Schema::Array(a)) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, &a.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Avro::Map(entries), Schema::Map(m)) => {
            // Avro maps are unordered; sort the keys so a message always looks the same.
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), to_json(&entries[k], &m.types, names)?);
            }
            Value::Object(out)
        }
        (Avro::Record(fields), Schema::Record(r)) => {
            let mut out = Map::new();
            for (name, v) in fields {
                let field = r.fields.iter().find(|f| &f.name == name);
                let field = field.ok_or_else(|| {
                    permanent(format!("Avro record {} has no field {name}", r.name))
                })?;
                out.insert(name.clone(), to_json(v, &field.schema, names)?);
            }
            Value::Object(out)
        }
        (Avro::Bytes(b), _) => b64(b),
        (Avro::Fixed(_, b), _) => b64(b),
        (Avro::Date(days), _) => {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| {
                    epoch.checked_add_signed(chrono::Duration::days(i64::from(*days)))
                })
                .ok_or_else(|| permanent("Avro date out of range"))?;
            Value::String(date.format("%Y-%m-%d").to_string())
        }
        (Avro::TimeMillis(ms), _) => Value::String(time(i64::from(*ms) * 1_000, 3)?),
        (Avro::TimeMicros(us), _) => Value::String(time(*us, 6)?),
        (Avro::TimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, true)?),
        (Avro::TimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, true)?),
        (Avro::TimestampNanos(v), _) => Value::String(timestamp(*v, 1, true)?),
        (Avro::LocalTimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, false)?),
        (Avro::LocalTimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, false)?),
        (Avro::LocalTimestampNanos(v), _) => Value::String(timestamp(*v, 1, false)?),
        (Avro::Uuid(u), _) => Value::String(u.to_string()),
        (Avro::Decimal(d), Schema::Decimal(ds)) => {
            let unscaled: num_bigint::BigInt = d.clone().into();
            Value::String(scaled(&unscaled.to_string(), ds.scale))
        }
        (Avro::Decimal(_), _) => return Err(permanent("Avro decimal without a decimal schema")),
        (Avro::BigDecimal(d), _) => Value::String(d.to_string()),
        (Avro::Duration(d), _) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        (Avro::Array(_) | Avro::Map(_) | Avro::Record(_), _) => {
            return Err(permanent("Avro value does not match its schema"));
        }
    })
}

/// `"-12345"` at scale 2 → `"-123.45"`.
fn scaled(digits: &str, scale: usize) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn time(micros: i64, digits: usize) -> Result<String, DecodeError> {
    let secs = u32::try_from(micros.div_euclid(1_000_000))
        .map_err(|_| permanent("Avro time out of range"))?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000)
        .map_err(|_| permanent("Avro time out of range"))?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .ok_or_else(|| permanent("Avro time out of range"))?;
    Ok(if digits == 3 {
        t.format("%H:%M:%S%.3f")
    } else {
        t.format("%H:%M:%S%.6f")
    }
    .to_string())
}

/// `value` in units of `nanos_per_unit` nanoseconds since the epoch.
fn timestamp(value: i64, nanos_per_unit: i64, utc: bool) -> Result<String, DecodeError> {
    let nanos = i128::from(value) * i128::from(nanos_per_unit);
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let t: DateTime<Utc> = DateTime::from_timestamp(secs, sub)
        .ok_or_else(|| permanent("Avro timestamp out of range"))?;
    let format = match nanos_per_unit {
        1_000_000 => "%Y-%m-%dT%H:%M:%S%.3f",
        1_000 => "%Y-%m-%dT%H:%M:%S%.6f",
        _ => "%Y-%m-%dT%H:%M:%S%.9f",
    };
    let text = t.format(format).to_string();
    Ok(if utc { format!("{text}Z") } else { text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Writer;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    fn to_avro_datum(s: &Schema, v: Avro) -> Result<Vec<u8>, apache_avro::Error> {
        GenericDatumWriter::builder(s)
            .build()?
            .write_value_to_vec(v)
    }

    fn c(s: &Schema) -> AvroSchema {
        AvroSchema::new(Arc::new(s.clone())).unwrap()
    }

    fn schema(v: Value) -> Schema {
        Schema::parse(&v).unwrap()
    }

    fn planet_schema() -> Schema {
        schema(json!({"type": "record", "name": "Planet", "fields": [
            {"name": "planetUuid", "type": "string"},
            {"name": "planetName", "type": "string"},
            {"name": "moons", "type": "int"}]}))
    }

    fn planet(i: i32) -> Avro {
        Avro::Record(vec![
            ("planetUuid".into(), Avro::String(format!("p{i}"))),
            ("planetName".into(), Avro::String(format!("Planet {i}"))),
            ("moons".into(), Avro::Int(i)),
        ])
    }

    fn ocf(s: &Schema, values: impl IntoIterator<Item = Avro>) -> Vec<u8> {
        let mut w = Writer::new(s, Vec::new()).unwrap();
        for v in values {
            w.append_value(v).unwrap();
        }
        w.into_inner().unwrap()
    }

    #[test]
    fn ocf_with_one_and_many_records() {
        let s = planet_schema();
        let (writer, one) =
            decode_ocf(&ocf(&s, [planet(1)]), None, &mut Budget::default_limits()).unwrap();
        assert_eq!(
            one,
            vec![json!({"planetUuid": "p1", "planetName": "Planet 1", "moons": 1})]
        );
        assert_eq!(*writer, s);
        let (_, many) = decode_ocf(
            &ocf(&s, (0..50).map(planet)),
            None,
            &mut Budget::default_limits(),
        )
        .unwrap();
        assert_eq!(many.len(), 50);
        assert_eq!(many[49]["planetUuid"], "p49");
        assert!(ocf(&s, [planet(1)]).starts_with(OCF_MAGIC));
    }

    #[test]
    fn ocf_with_a_corrupt_sync_marker_is_permanent() {
        let s = planet_schema();
        let mut bytes = ocf(&s, (0..3).map(planet));
        let n = bytes.len();
        bytes[n - 3] ^= 0xff; // the last 16 bytes are the block's sync marker
        let err = decode_ocf(&bytes, None, &mut Budget::default_limits()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("Avro container file")),
            "{err:?}"
        );
        assert!(decode_ocf(b"Obj\x01garbage", None, &mut Budget::default_limits()).is_err());
    }

    #[test]
    fn confluent_framing_and_raw_datums() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        let mut framed = vec![0, 0, 0, 1, 2];
        framed.extend_from_slice(&datum);
        let (id, body) = split_confluent(&framed).unwrap();
        assert_eq!(id, 258);
        assert_eq!(decode_datum(body, &c(&s), None).unwrap()["moons"], 7);
        assert_eq!(split_confluent(b"{\"a\":1}"), None);
        assert_eq!(split_confluent(&[0, 1, 2]), None);
    }

    #[test]
    fn truncated_and_trailing_datums_are_permanent() {
        let s = planet_schema();
        let datum = to_avro_datum(&s, planet(7)).unwrap();
        for cut in 1..datum.len() {
            let err = decode_datum(&datum[..cut], &c(&s), None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        // A datum that ends inside a string: the decoder alone would accept it.
        let t = schema(
            json!({"type": "record", "name": "T", "fields": [{"name": "s", "type": "string"}]}),
        );
        let one = Avro::Record(vec![("s".into(), Avro::String("Ophiuchi".into()))]);
        let short = to_avro_datum(&t, one).unwrap();
        for cut in 1..short.len() {
            let err = decode_datum(&short[..cut], &c(&t), None).unwrap_err();
            assert!(matches!(err, DecodeError::Permanent(_)), "cut at {cut}");
        }
        assert!(decode_datum(&short, &c(&t), None).is_ok());
        let mut long = datum.clone();
        long.push(0);
        let err = decode_datum(&long, &c(&s), None).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("left over")),
            "{err:?}"
        );
    }

    #[test]
    fn a_reader_schema_resolves_older_data() {
        let v1 = planet_schema();
        let v2 = schema(json!({"type": "record", "name": "Planet", "fields": [
            {"name": "planetUuid", "type": "string"},
            {"name": "planetName", "type": "string"},
            {"name": "habitable", "type": "boolean", "default": false}]}));
        let datum = to_avro_datum(&v1, planet(3)).unwrap();
        assert_eq!(
            decode_datum(&datum, &c(&v1), Some(&c(&v2))).unwrap(),
            json!({"planetUuid": "p3", "planetName": "Planet 3", "habitable": false})
        );
        let (_, msgs) = decode_ocf(
            &ocf(&v1, [planet(3)]),
            Some(&c(&v2)),
            &mut Budget::default_limits(),
        )
        .unwrap();
        assert_eq!(msgs[0]["habitable"], false);
    }

    #[test]
    fn every_avro_type_maps_to_json_as_documented() {
        let s = schema(json!({"type": "record", "name": "All", "fields": [
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "nan", "type": "double"},
            {"name": "bytes", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "fixed", "type": {"type": "fixed", "name": "F2", "size": 2}},
            {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
            {"name": "arr", "type": {"type": "array", "items": "int"}},
            {"name": "map", "type": {"type": "map", "values": "string"}},
            {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "ref", "type": "Inner"},
            {"name": "optNull", "type": ["null", "string"]},
            {"name": "optSome", "type": ["null", "string"]},
            {"name": "unionRec", "type": ["null", "Inner"]},
            {"name": "date", "type": {"type": "int", "logicalType": "date"}},
            {"name": "tms", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "tus", "type": {"type": "long", "logicalType": "time-micros"}},
            {"name": "tsms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "tsus", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "decBytes", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "decFixed", "type": {"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal",
                "precision": 18, "scale": 4}}
        ]}));
        let uuid = apache_avro::Uuid::parse_str("6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b").unwrap();
        let value = |dec_bytes: Vec<u8>| {
            Avro::Record(vec![
                ("n".into(), Avro::Null),
                ("b".into(), Avro::Boolean(true)),
                ("i".into(), Avro::Int(-7)),
                ("l".into(), Avro::Long(1 << 40)),
                ("f".into(), Avro::Float(1.5)),
                ("d".into(), Avro::Double(-0.25)),
                ("nan".into(), Avro::Double(f64::NAN)),
                ("bytes".into(), Avro::Bytes(vec![1, 2, 255])),
                ("s".into(), Avro::String("text".into())),
                ("fixed".into(), Avro::Fixed(2, vec![0xab, 0xcd])),
                ("e".into(), Avro::Enum(1, "GREEN".into())),
                ("arr".into(), Avro::Array(vec![Avro::Int(1), Avro::Int(2)])),
                (
                    "map".into(),
                    Avro::Map(
                        [
                            ("b".to_string(), Avro::String("2".into())),
                            ("a".to_string(), Avro::String("1".into())),
                        ]
                        .into(),
                    ),
                ),
                (
                    "nested".into(),
                    Avro::Record(vec![("x".into(), Avro::Int(1))]),
                ),
                ("ref".into(), Avro::Record(vec![("x".into(), Avro::Int(2))])),
                ("optNull".into(), Avro::Union(0, Box::new(Avro::Null))),
                (
                    "optSome".into(),
                    Avro::Union(1, Box::new(Avro::String("here".into()))),
                ),
                (
                    "unionRec".into(),
                    Avro::Union(1, Box::new(Avro::Record(vec![("x".into(), Avro::Int(3))]))),
                ),
                ("date".into(), Avro::Date(20416)),
                ("tms".into(), Avro::TimeMillis(45_296_789)),
                ("tus".into(), Avro::TimeMicros(45_296_789_012)),
                ("tsms".into(), Avro::TimestampMillis(1_764_000_000_123)),
                ("tsus".into(), Avro::TimestampMicros(1_764_000_000_123_456)),
                ("uuid".into(), Avro::Uuid(uuid)),
                (
                    "decBytes".into(),
                    Avro::Decimal(apache_avro::Decimal::from(dec_bytes)),
                ), // -12345
                (
                    "decFixed".into(),
                    Avro::Decimal(apache_avro::Decimal::from(vec![
                        0, 0, 0, 0, 0, 0, 0x30, 0x39,
                    ])),
                ), // 12345
            ])
        };
        let datum = to_avro_datum(&s, value(vec![0xff, 0xcf, 0xc7])).unwrap();
        let compiled = c(&s);
        let json = decode_datum(&datum, &compiled, None).unwrap();
        assert_eq!(
            json,
            json!({
                "n": null, "b": true, "i": -7, "l": 1_099_511_627_776_i64, "f": 1.5, "d": -0.25, "nan": null,
                "bytes": "AQL/", "s": "text", "fixed": "q80=", "e": "GREEN", "arr": [1, 2],
                "map": {"a": "1", "b": "2"}, "nested": {"x": 1}, "ref": {"x": 2},
                "optNull": null, "optSome": "here", "unionRec": {"x": 3},
                "date": "2025-11-24", "tms": "12:34:56.789", "tus": "12:34:56.789012",
                "tsms": "2025-11-24T16:00:00.123Z", "tsus": "2025-11-24T16:00:00.123456Z",
                "uuid": "6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b",
                "decBytes": "-123.45", "decFixed": "1.2345"
            })
        );
        // Keys in schema order.
        let keys: Vec<&str> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["n", "b", "i"]);
        // The same through apache-avro's resolution (reader schema = writer schema), which refuses a bytes
        // decimal in fewer bytes than its precision needs: -12345 in 6 bytes instead of 3.
        let padded = to_avro_datum(&s, value(vec![0xff, 0xff, 0xff, 0xff, 0xcf, 0xc7])).unwrap();
        assert_eq!(decode_datum(&padded, &c(&s), None).unwrap(), json);
        assert_eq!(decode_datum(&padded, &c(&s), Some(&c(&s))).unwrap(), json);
    }

    /// Logical types the table lists beyond the test above: the one-pass decoder and apache-avro's reading
    /// (reader schema = writer schema) give the same JSON.
    #[test]
    fn more_logical_types_match_apache_avro() {
        let s = schema(
            json!({"type": "record", "name": "More", "namespace": "ns", "fields": [
                {"name": "tsns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
                {"name": "ltms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
                {"name": "ltus", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
                {"name": "ltns", "type": {"type": "long", "logicalType": "local-timestamp-nanos"}},
                {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
                {"name": "big", "type": {"type": "bytes", "logicalType": "big-decimal"}},
                {"name": "uuidFixed", "type": {"type": "fixed", "name": "U16", "size": 16, "logicalType": "uuid"}},
                {"name": "wide", "type": {"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 3}},
                {"name": "inf", "type": "float"},
                {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "Dur"}}},
                {"name": "again", "type": ["null", "ns.Dur"]}
            ]}),
        );
        let uuid = apache_avro::Uuid::parse_str("6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b").unwrap();
        let dur = || {
            Avro::Duration(apache_avro::Duration::new(
                apache_avro::Months::new(14),
                apache_avro::Days::new(3),
                apache_avro::Millis::new(5_000),
            ))
        };
        let mut wide = vec![0x80];
        wide.extend([0x11; 19]); // 20 bytes: a negative number beyond i128
        let value = Avro::Record(vec![
            (
                "tsns".into(),
                Avro::TimestampNanos(1_764_000_000_123_456_789),
            ),
            ("ltms".into(), Avro::LocalTimestampMillis(-1)),
            (
                "ltus".into(),
                Avro::LocalTimestampMicros(1_764_000_000_123_456),
            ),
            ("ltns".into(), Avro::LocalTimestampNanos(5)),
            ("dur".into(), dur()),
            (
                "big".into(),
                Avro::BigDecimal(apache_avro::BigDecimal::new((-12345).into(), 3)),
            ),
            ("uuidFixed".into(), Avro::Uuid(uuid)),
            (
                "wide".into(),
                Avro::Decimal(apache_avro::Decimal::from(wide)),
            ),
            ("inf".into(), Avro::Float(f32::INFINITY)),
            (
                "m".into(),
                Avro::Map([("k".to_string(), Avro::Array(vec![dur(), dur()]))].into()),
            ),
            ("again".into(), Avro::Union(1, Box::new(dur()))),
        ]);
        let datum = to_avro_datum(&s, value).unwrap();
        let compiled = c(&s);
        let ours = decode_datum(&datum, &compiled, None).unwrap();
        assert_eq!(ours, decode_datum(&datum, &c(&s), Some(&c(&s))).unwrap());
        assert_eq!(ours["tsns"], "2025-11-24T16:00:00.123456789Z");
        assert_eq!(ours["ltms"], "1969-12-31T23:59:59.999");
        assert_eq!(
            ours["dur"],
            json!({"months": 14, "days": 3, "millis": 5000})
        );
        assert_eq!(ours["big"], "-12.345");
        assert_eq!(ours["uuidFixed"], "6f1c2b3a-1d2e-4f50-8a9b-0c1d2e3f4a5b");
        assert_eq!(ours["inf"], Value::Null);
        assert!(ours["wide"].as_str().unwrap().starts_with('-'));
    }

    /// Zigzag varint, as Avro writes ints and longs.
    fn zz(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
    }

    fn permanent_containing<T: std::fmt::Debug>(
        result: Result<T, DecodeError>,
        text: &str,
    ) -> String {
        match result {
            Err(DecodeError::Permanent(m)) if m.contains(text) => m,
            other => panic!("expected a permanent error with {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn deep_recursion_is_permanent_not_a_crash() {
        let s = c(&schema(
            json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]}]}),
        ));
        // 100 000 nodes: union branch 1 (the next node) each, then branch 0 (null).
        let mut deep = vec![2u8; 100_000];
        deep.push(0);
        let m = permanent_containing(decode_datum(&deep, &s, None), "nests deeper than 64 levels");
        assert!(m.contains("field next"), "{m}");
        // apache-avro never sees it when a reader schema is configured either.
        permanent_containing(
            decode_datum(&deep, &s, Some(&s)),
            "nests deeper than 64 levels",
        );
        // 64 levels of records are fine.
        let mut ok = vec![2u8; 63];
        ok.push(0);
        let v = decode_datum(&ok, &s, None).unwrap();
        assert!(v["next"]["next"].is_object());
        // apache-avro's resolution takes time exponential in the nesting of unions: 63 levels would never
        // end. It gets what it resolves quickly.
        let start = std::time::Instant::now();
        permanent_containing(decode_datum(&ok, &s, Some(&s)), "nests unions too deeply");
        let mut resolvable = vec![2u8; 8];
        resolvable.push(0);
        let v = decode_datum(&resolvable, &s, Some(&s)).unwrap();
        assert_eq!(v, decode_datum(&resolvable, &s, None).unwrap());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let mut over = vec![2u8; 64];
        over.push(0);
        permanent_containing(decode_datum(&over, &s, None), "nests deeper");
        // Arrays nest too.
        let arrays = c(&schema(json!({"type": "record", "name": "A", "fields": [
            {"name": "a", "type": {"type": "array", "items": "A"}}]})));
        let mut nested = Vec::new();
        for _ in 0..100_000 {
            nested.extend(zz(1));
        }
        permanent_containing(decode_datum(&nested, &arrays, None), "nests deeper");
    }

    #[test]
    fn huge_lengths_are_permanent_before_any_allocation() {
        let start = std::time::Instant::now();
        for t in ["string", "bytes"] {
            let s = c(&schema(json!({"type": "record", "name": "R", "fields": [
                {"name": "x", "type": t}]})));
            let mut datum = zz(1 << 30); // 1 GiB
            datum.extend_from_slice(b"abc");
            let m = permanent_containing(decode_datum(&datum, &s, None), "truncated");
            assert!(m.contains("1073741824 bytes, 3 left"), "{m}");
            permanent_containing(decode_datum(&datum, &s, Some(&s)), "truncated");
            permanent_containing(decode_datum(&zz(-5), &s, None), "negative length");
        }
        // 2^40 nulls in one array block: items that take no bytes are capped.
        let nulls = c(&schema(json!({"type": "array", "items": "null"})));
        let mut datum = zz(1 << 40);
        datum.push(0);
        permanent_containing(decode_datum(&datum, &nulls, None), "more than 65536");
        permanent_containing(
            decode_datum(&datum, &nulls, Some(&nulls)),
            "more than 65536",
        );
        // … and the cap holds across blocks; 65 536 of them are fine.
        let mut blocks = [zz(40_000), zz(40_000), vec![0]].concat();
        permanent_containing(decode_datum(&blocks, &nulls, None), "more than 65536");
        blocks = [zz(65_536), vec![0]].concat();
        assert_eq!(
            decode_datum(&blocks, &nulls, None)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            65_536
        );
        // Empty records take no bytes either.
        let empty = c(&schema(json!({"type": "array", "items":
            {"type": "record", "name": "E", "fields": [{"name": "n", "type": "null"}]}})));
        permanent_containing(decode_datum(&datum, &empty, None), "more than 65536");
        // Items that take bytes cannot outnumber the bytes left.
        let ints = c(&schema(json!({"type": "array", "items": "int"})));
        permanent_containing(decode_datum(&datum, &ints, None), "truncated");
        // A map of nulls: every key takes a byte.
        let map = c(&schema(json!({"type": "map", "values": "null"})));
        let m = permanent_containing(decode_datum(&datum, &map, None), "truncated");
        assert!(m.contains("map block of 1099511627776 items"), "{m}");
        permanent_containing(decode_datum(&datum, &map, Some(&map)), "truncated");
        // A negative block count carries a byte size, which must fit too.
        let sized = [zz(-(1 << 40)), zz(1 << 40), vec![0]].concat();
        permanent_containing(decode_datum(&sized, &map, None), "truncated");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn malformed_numbers_strings_unions_and_enums_are_permanent() {
        let long = c(&Schema::Long);
        let m = permanent_containing(
            decode_datum(&[0xff; 11], &long, None),
            "longer than 10 bytes",
        );
        assert!(m.contains("at byte 0"), "{m}");
        permanent_containing(
            decode_datum(&[0xff; 10], &long, None),
            "longer than 10 bytes",
        );
        // Ten bytes hold the whole range.
        let min = [vec![0xff; 9], vec![0x01]].concat();
        assert_eq!(decode_datum(&min, &long, None).unwrap(), json!(i64::MIN));
        permanent_containing(decode_datum(&zz(1 << 31), &c(&Schema::Int), None), "32-bit");
        permanent_containing(decode_datum(&[2], &c(&Schema::Boolean), None), "boolean");

        let text = c(&schema(json!({"type": "record", "name": "T", "fields": [
            {"name": "name", "type": "string"}]})));
        let m = permanent_containing(
            decode_datum(&[4, b'a', 0xff], &text, None),
            "not valid UTF-8",
        );
        assert!(m.contains("field name (record T)"), "{m}");
        // Errors never quote the data.
        let secret = [zz(8), b"Ophiuchi".to_vec()].concat();
        for cut in 1..secret.len() {
            let m = permanent_containing(decode_datum(&secret[..cut], &text, None), "truncated");
            assert!(!m.contains("Oph"), "{m}");
        }

        let union = c(&schema(json!(["null", "string"])));
        permanent_containing(decode_datum(&zz(2), &union, None), "union branch 2");
        permanent_containing(decode_datum(&zz(-1), &union, None), "union branch -1");
        let color = c(&schema(
            json!({"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}),
        ));
        assert_eq!(decode_datum(&zz(1), &color, None).unwrap(), "GREEN");
        permanent_containing(
            decode_datum(&zz(2), &color, None),
            "enum Color has no symbol number 2",
        );
        permanent_containing(decode_datum(&zz(-3), &color, None), "no symbol number -3");
        let uuid = c(&schema(json!({"type": "string", "logicalType": "uuid"})));
        permanent_containing(
            decode_datum(&[6, b'a', b'b', b'c'], &uuid, None),
            "not a UUID",
        );
    }

    /// A container file built by hand: header with `codec`, then `(record count, data)` blocks.
    fn hand_ocf(s: &Schema, codec: &str, blocks: &[(i64, Vec<u8>)], sync: [u8; 16]) -> Vec<u8> {
        let text = s.canonical_form();
        let mut out = OCF_MAGIC.to_vec();
        out.extend(zz(2));
        for (k, v) in [
            ("avro.schema", text.as_bytes()),
            ("avro.codec", codec.as_bytes()),
        ] {
            out.extend(zz(k.len() as i64));
            out.extend_from_slice(k.as_bytes());
            out.extend(zz(v.len() as i64));
            out.extend_from_slice(v);
        }
        out.push(0);
        out.extend_from_slice(&sync);
        for (count, data) in blocks {
            out.extend(zz(*count));
            out.extend(zz(data.len() as i64));
            out.extend_from_slice(data);
            out.extend_from_slice(&sync);
        }
        out
    }

    fn ocf_err(bytes: &[u8], text: &str) -> String {
        match decode_ocf(bytes, None, &mut Budget::default_limits()) {
            Err(DecodeError::Permanent(m)) if m.contains(text) => m,
            other => panic!("expected a permanent error with {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn container_blocks_must_hold_exactly_their_records() {
        let s = planet_schema();
        let one = to_avro_datum(&s, planet(1)).unwrap();
        let two = [one.clone(), to_avro_datum(&s, planet(2)).unwrap()].concat();
        let sync = [7; 16];
        let good = hand_ocf(&s, "null", &[(2, two.clone()), (1, one.clone())], sync);
        assert_eq!(
            decode_ocf(&good, None, &mut Budget::default_limits())
                .unwrap()
                .1
                .len(),
            3
        );
        // Leftover bytes after the declared records.
        let mut extra = two.clone();
        extra.push(0);
        let m = ocf_err(
            &hand_ocf(&s, "null", &[(2, extra)], sync),
            "1 bytes left over",
        );
        assert!(m.starts_with("Avro container file, block 1"), "{m}");
        // More records declared than the block holds.
        ocf_err(
            &hand_ocf(&s, "null", &[(3, two.clone())], sync),
            "record 3 is truncated",
        );
        ocf_err(
            &hand_ocf(&s, "null", &[(1 << 40, two.clone())], sync),
            "declares 1099511627776 records",
        );
        // A block whose sync marker is not the header's.
        let mut wrong = hand_ocf(&s, "null", &[(2, two.clone())], sync);
        let n = wrong.len();
        wrong[n - 1] ^= 1;
        ocf_err(&wrong, "sync marker differs");
        // A block shorter than its declared size, and a header cut short.
        ocf_err(&good[..good.len() - 20], "truncated");
        ocf_err(&good[..30], "header is truncated");
        // Codecs: deflate is read (through apache-avro), others are refused by name.
        ocf_err(
            &hand_ocf(&s, "snappy", &[(2, two.clone())], sync),
            "codec \"snappy\" is not supported",
        );
        let mut w = Writer::with_codec(
            &s,
            Vec::new(),
            apache_avro::Codec::Deflate(Default::default()),
        )
        .unwrap();
        for i in 0..20 {
            w.append_value(planet(i)).unwrap();
        }
        let deflated = w.into_inner().unwrap();
        let (_, msgs) = decode_ocf(&deflated, None, &mut Budget::default_limits()).unwrap();
        assert_eq!(msgs[19]["planetName"], "Planet 19");
        ocf_err(
            &hand_ocf(&s, "deflate", &[(2, two.clone())], sync),
            "deflate data is corrupt",
        );
        // A schema whose records take no bytes: their count is capped.
        let nothing = schema(json!("null"));
        ocf_err(
            &hand_ocf(&nothing, "null", &[(1 << 40, vec![])], sync),
            "more than 65536 records",
        );
        assert_eq!(
            decode_ocf(
                &hand_ocf(&nothing, "null", &[(3, vec![])], sync),
                None,
                &mut Budget::default_limits()
            )
            .unwrap()
            .1
            .len(),
            3
        );
        // A hostile datum inside a container file.
        let node = schema(json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]}]}));
        let mut deep = vec![2u8; 100_000];
        deep.push(0);
        ocf_err(
            &hand_ocf(&node, "null", &[(1, deep.clone())], sync),
            "nests deeper",
        );
        let reader = c(&node);
        assert!(matches!(
            decode_ocf(
                &hand_ocf(&node, "null", &[(1, deep)], sync),
                Some(&reader),
                &mut Budget::default_limits()
            ),
            Err(DecodeError::Permanent(_))
        ));
    }

    /// A deflated block of `zeros` zero bytes behind `prefix` (a stored block, then the compressed zeros).
    fn deflated(prefix: &[u8], zeros: usize) -> Vec<u8> {
        let len = u16::try_from(prefix.len()).unwrap();
        let mut out = vec![0];
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(prefix);
        out.extend(miniz_oxide::deflate::compress_to_vec(&vec![0; zeros], 1));
        out
    }

    #[test]
    fn the_container_files_of_a_batch_share_one_inflate_budget() {
        // A string of 1 MiB of NULs per file: 1 MiB and its length inflated each.
        let s = schema(json!("string"));
        let mib: usize = 1 << 20;
        let file = hand_ocf(
            &s,
            "deflate",
            &[(1, deflated(&zz(mib as i64), mib))],
            [3; 16],
        );
        let mut budget = Budget::new(3 * mib + 100, usize::MAX);
        for _ in 0..3 {
            let (_, m) = decode_ocf(&file, None, &mut budget).unwrap();
            assert_eq!(m[0].as_str().map(str::len), Some(mib));
        }
        assert_eq!(budget.inflated(), 3 * (mib + zz(mib as i64).len()));
        // The fourth inflates past the budget; every later one finds it spent, whatever its size.
        for bytes in [
            &file,
            &hand_ocf(&s, "deflate", &[(1, deflated(&zz(1), 1))], [3; 16]),
        ] {
            let m = permanent_containing(
                decode_ocf(bytes, None, &mut budget),
                "past their limit (codec.max_inflated_mib = 3 MiB in total per batch)",
            );
            assert!(
                m.starts_with("Avro container file, block 1: inflating it"),
                "{m}"
            );
        }
        // The per-block cap still holds under a larger budget, and a corrupt stream says so.
        let big = hand_ocf(
            &s,
            "deflate",
            &[(1, deflated(&zz(1), MAX_BLOCK_BYTES + 1))],
            [3; 16],
        );
        permanent_containing(
            decode_ocf(&big, None, &mut Budget::new(usize::MAX, usize::MAX)),
            "inflates past 64 MiB (the limit per block)",
        );
        let corrupt = hand_ocf(&s, "deflate", &[(1, vec![0xff; 8])], [3; 16]);
        permanent_containing(
            decode_ocf(&corrupt, None, &mut Budget::default_limits()),
            "deflate data is corrupt",
        );
    }

    #[test]
    fn the_container_files_of_a_batch_share_one_decoded_budget() {
        // 6 zero bytes are a whole record of this schema: a block of zeros is a great many messages.
        let s = schema(json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]}));
        let records = 10_000;
        let file = hand_ocf(
            &s,
            "null",
            &[(records, vec![0; 2 * records as usize])],
            [5; 16],
        );
        let mut budget = Budget::new(usize::MAX, 4 << 20);
        let (_, m) = decode_ocf(&file, None, &mut budget).unwrap();
        assert_eq!(m.len(), records as usize);
        let one = budget.decoded();
        assert!(
            one > records as usize * 100,
            "an estimate that counts the objects: {one}"
        );
        let mut shared = Budget::new(usize::MAX, one * 2 + one / 2);
        decode_ocf(&file, None, &mut shared).unwrap();
        decode_ocf(&file, None, &mut shared).unwrap();
        let m = permanent_containing(
            decode_ocf(&file, None, &mut shared),
            "(codec.max_decoded_mib = ",
        );
        assert!(
            m.starts_with("Avro container file, block 1, record "),
            "{m}"
        );
        // Deflated: a 64 MiB block of zeros would be 32 Mi messages (GBs); the budget stops it early.
        let zeros = hand_ocf(
            &s,
            "deflate",
            &[(32 << 20, deflated(&[], 64 << 20))],
            [5; 16],
        );
        let mut budget = Budget::default_limits();
        permanent_containing(
            decode_ocf(&zeros, None, &mut budget),
            "(codec.max_decoded_mib = 512 MiB of decoded messages in total per batch)",
        );
        assert_eq!(
            budget.decoded(),
            512 << 20,
            "spent: later files fail at once"
        );
    }

    #[test]
    fn decimal_scaling() {
        assert_eq!(scaled("5", 3), "0.005");
        assert_eq!(scaled("-5", 1), "-0.5");
        assert_eq!(scaled("12345", 0), "12345");
    }
}
