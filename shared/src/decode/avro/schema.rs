//! A writer schema compiled for decoding: named references resolved to node indices, and which nodes
//! can take zero bytes.

use super::*;

pub(super) type NodeId = usize;

/// A schema node, named references resolved to indices.
#[derive(Debug)]
pub(super) enum Node {
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
    pub(super) schema: Arc<Schema>,
    pub(super) nodes: Vec<Node>,
    /// Whether a node's values can take zero bytes.
    pub(super) empty: Vec<bool>,
    pub(super) root: NodeId,
    /// Named types, for apache-avro values (reader schemas); computed when first needed.
    pub(super) names: OnceLock<Result<HashMap<Name, Schema>, DecodeError>>,
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

    pub(super) fn names(&self) -> Result<&HashMap<Name, Schema>, DecodeError> {
        self.names
            .get_or_init(|| names(&self.schema))
            .as_ref()
            .map_err(Clone::clone)
    }
}

pub(super) struct Compiler<'s, 'n> {
    pub(super) names: &'n HashMap<Name, &'s Schema>,
    pub(super) nodes: Vec<Node>,
    pub(super) compiled: HashMap<Name, NodeId>,
}

impl Compiler<'_, '_> {
    pub(super) fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Reserves the node of a named type (once: references to it reuse it).
    pub(super) fn named(&mut self, name: &Name, ns: NamespaceRef) -> Result<NodeId, NodeId> {
        let full = name.fully_qualified_name(ns).into_owned();
        if let Some(&id) = self.compiled.get(&full) {
            return Err(id);
        }
        let id = self.push(Node::Pending);
        self.compiled.insert(full, id);
        Ok(id)
    }

    pub(super) fn compile(&mut self, schema: &Schema, ns: NamespaceRef) -> Result<NodeId, String> {
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
                    + crate::decode::INJECTED_FIELDS * FIELD_SLOT
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
pub(super) fn empty_nodes(nodes: &[Node]) -> Vec<bool> {
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
pub(super) fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_BLOCK_BYTES);
}
