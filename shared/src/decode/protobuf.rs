//! Protobuf values: a bare message of a configured type, Confluent's framing (magic byte 0, 4-byte schema id,
//! the message-index list, the message) and the message part of AWS Glue's (see [`super::glue`]).
//!
//! `.proto` files are compiled when the codec is built, in pure Rust (`protox`: no `protoc` on the machine), into
//! a descriptor pool (`prost-reflect`); a file that does not compile is a config error naming file, line and
//! column. Values are decoded against the pool by reflection and become the message tree by the proto3 JSON
//! mapping, with three deliberate choices for a database sync:
//!
//! | Protobuf | message tree |
//! |---|---|
//! | field names | the JSON name, lowerCamelCase (`planet_name` → `planetName`, or its `json_name` option); `proto_field_names = true` keeps the names as declared |
//! | fields without presence (proto3 scalars, repeated, maps) | always there, with their default when unset (`0`, `""`, `false`, `[]`, `{}`): a row must get `false`, not a missing column |
//! | fields with presence (messages, `optional`, oneof members) | only when set |
//! | int32, uint32, sint32, fixed32, sfixed32, double, bool, string | number, boolean, string; NaN and ±infinity as `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | float | the shortest text that reads back as that float32 (`0.1`, not its widening `0.10000000149011612`) |
//! | int64, uint64, sint64, fixed64, sfixed64 | number, exact (not the quoted string proto3 JSON prints: the tree holds 64-bit integers exactly) |
//! | enum | the value's name (its number when the schema has no such value) |
//! | bytes | standard base64 |
//! | repeated | array |
//! | map | object, its entries in key order (false before true, numbers by value, strings by their bytes), so that one message is always one text |
//! | google.protobuf.Timestamp | RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits (`"2024-05-01T12:00:00.500Z"`); outside years 1 to 9999, or nanos outside 0 to 999,999,999: refused |
//! | google.protobuf.Duration | seconds with 0, 3, 6 or 9 fractional digits (`"-1.500s"`); past ±10,000 years, nanos past ±999,999,999, or seconds and nanos of different signs: refused |
//! | FloatValue, DoubleValue | the wrapped value as the plain field (`"NaN"`, `"Infinity"`, `"-Infinity"` included) |
//! | other wrappers (Int64Value, StringValue, …), Struct, Value, ListValue, FieldMask, Empty | as the canonical mapping says (a wrapper is its value; a Value holding NaN or ±infinity is refused) |
//! | google.protobuf.Any | `{"@type": url, …the packed message's fields}` (a well-known type under `"value"`); a type the `.proto` files do not define, or Any packed more than [`MAX_ANY_DEPTH`] deep, is refused |
//!
//! What Python's protobuf (`json_format.MessageToDict`) refuses is refused here too: the record is
//! dead-lettered with the reason.
//!
//! Unknown fields (a newer writer's) are skipped. Every error is permanent for the record (dead-lettered), says
//! what is wrong (truncated, wrong wire type, unknown message index, nesting past prost's limit of 100 levels)
//! and never quotes the data. Every length is checked against the bytes left before anything is allocated
//! (prost), so the decoded message is at most a constant factor of the record's bytes; that factor is large
//! (a value slot, a B-tree node per message), so the decoded message is measured on the wire before it is
//! decoded ([`decoded_size`]), and its tree, where defaults fill in every field without presence, before it is
//! built ([`estimate`]): both within the batch's `max_decoded_mib` ([`decode_within`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::borrow::Cow;

use base64::Engine as _;
use miette::Diagnostic;
use prost_reflect::{DescriptorPool, DynamicMessage, FileDescriptor, MessageDescriptor};

use super::DecodeError;
use crate::message::Message;

mod well_known;

pub use well_known::MAX_ANY_DEPTH;
use well_known::{one_any_deeper, unpack, well_known, well_known_tree};

/// How many message indexes Confluent's framing may list (message types nested this deep are not written by
/// anyone; the list is read before the message, so it is capped on its own).
pub const MAX_INDEXES: usize = 32;

/// How values are written into the message tree (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Naming {
    /// Field names as declared in the .proto file instead of lowerCamelCase.
    pub proto_field_names: bool,
}

impl Naming {
    fn options(self) -> prost_reflect::SerializeOptions {
        prost_reflect::SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .skip_default_fields(false)
            .use_proto_field_name(self.proto_field_names)
    }
}

/// `.proto` files compiled into one pool, imports resolved from the folders of the files (and the well-known
/// types, which protox carries). Returns the pool and the descriptors of the named files, in order.
pub fn compile(files: &[PathBuf]) -> Result<(DescriptorPool, Vec<FileDescriptor>), String> {
    let mut includes: Vec<PathBuf> = Vec::new();
    for file in files {
        let folder = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if !includes.contains(&folder) {
            includes.push(folder);
        }
    }
    let mut compiler = protox::Compiler::new(&includes).map_err(|e| describe(&e, None))?;
    compiler.include_imports(true);
    let mut names = Vec::new();
    for file in files {
        // By its name within its own folder: imports of siblings then resolve the same file, not a second copy.
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folder = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !folder.join(&name).is_file() {
            return Err(format!("{}: cannot read: no such file", file.display()));
        }
        compiler
            .open_file(&name)
            .map_err(|e| describe(&e, Some(file)))?;
        names.push(name);
    }
    let pool = compiler.descriptor_pool();
    let descriptors = names
        .iter()
        .map(|n| {
            pool.get_file_by_name(n)
                .ok_or_else(|| format!("{n}: compiled, but not found in its own pool"))
        })
        .collect::<Result<_, _>>()?;
    Ok((pool, descriptors))
}

/// A `.proto` file given as text (a schema registry's answer), with the texts of the files it imports by name;
/// the well-known types resolve without them.
pub fn compile_source(
    name: &str,
    source: &str,
    imports: &HashMap<String, String>,
) -> Result<FileDescriptor, String> {
    // The compiler keeps its resolver ('static): the texts are copied in (a few KB, once per schema).
    struct Texts {
        main: (String, String),
        imports: HashMap<String, String>,
    }
    impl protox::file::FileResolver for Texts {
        fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
            if name == self.main.0 {
                return protox::file::File::from_source(name, &self.main.1);
            }
            match self.imports.get(name) {
                Some(text) => protox::file::File::from_source(name, text),
                None => protox::file::GoogleFileResolver::new().open_file(name),
            }
        }
    }
    let mut compiler = protox::Compiler::with_file_resolver(Texts {
        main: (name.to_string(), source.to_string()),
        imports: imports.clone(),
    });
    compiler.include_imports(true);
    compiler.open_file(name).map_err(|e| describe(&e, None))?;
    compiler
        .descriptor_pool()
        .get_file_by_name(name)
        .ok_or_else(|| format!("{name}: compiled, but not found in its own pool"))
}

/// A compile error as `file:line:column: what`, the place from the error's source span when it has one.
fn describe(e: &protox::Error, path: Option<&Path>) -> String {
    let file = e
        .file()
        .map(str::to_string)
        .or_else(|| path.map(|p| p.display().to_string()))
        .unwrap_or_else(|| "(proto)".into());
    let place = e
        .labels()
        .and_then(|mut labels| labels.next())
        .zip(e.source_code())
        .and_then(|(label, source)| source.read_span(label.inner(), 0, 0).ok())
        .map(|span| format!(":{}:{}", span.line() + 1, span.column() + 1))
        .unwrap_or_default();
    // The error's own text names the file too at times; the place leads so that it is never lost.
    format!("{file}{place}: {e}")
}

/// The message type `name` (`package.Message`) of a pool.
pub fn message_by_name(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor, String> {
    let name = name.trim_start_matches('.');
    pool.get_message_by_name(name).ok_or_else(|| {
        let mut known: Vec<String> = pool
            .all_messages()
            .filter(|m| !m.is_map_entry() && !m.full_name().starts_with("google.protobuf."))
            .map(|m| m.full_name().to_string())
            .take(20)
            .collect();
        known.sort();
        format!(
            "no message type {name:?} in the .proto files (they define: {})",
            known.join(", ")
        )
    })
}

/// Decodes one message of type `desc` into the message tree (see the module doc), unbounded: for callers with
/// a record of their own (tests, tools). The codec uses [`decode_within`].
pub fn decode(
    bytes: &[u8],
    desc: &MessageDescriptor,
    naming: Naming,
) -> Result<Message<'static>, DecodeError> {
    decode_within(bytes, desc, naming, usize::MAX).map(|(m, _)| m)
}

/// [`decode`], refusing a message whose tree would take more than `allowance` bytes (estimated), and
/// returning the estimate with it.
///
/// The wire format is compact where the tree is not: every field without presence is in the tree with its
/// default, so an empty nested message (two bytes: tag and length 0) of a type with fifty scalar fields is
/// fifty fields. The decoded message is measured before it is turned into the tree (see [`estimate`]).
pub fn decode_within(
    bytes: &[u8],
    desc: &MessageDescriptor,
    naming: Naming,
    allowance: usize,
) -> Result<(Message<'static>, usize), DecodeError> {
    let subject = || {
        format!(
            "value ({} bytes) is not a {} message",
            bytes.len(),
            desc.full_name()
        )
    };
    // prost-reflect's decoded message is itself many times the wire bytes (a value slot, a B-tree node per
    // message with a field set): measured on the wire first, it must fit with the tree made from it.
    let decoding = decoded_size(bytes, desc, allowance).ok_or_else(|| over_budget(bytes, desc))?;
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| DecodeError::Permanent(format!("{}: {}", subject(), reason(&e))))?;
    let Some(cost) = estimate(&message, allowance - decoding) else {
        return Err(over_budget(bytes, desc));
    };
    let tree = tree(&message, naming)
        .map_err(|e| DecodeError::Permanent(format!("{}: {e}", subject())))?;
    Ok((tree, cost))
}

/// The refusal of a message past the batch's budget; the caller adds the limit.
fn over_budget(bytes: &[u8], desc: &MessageDescriptor) -> DecodeError {
    DecodeError::Permanent(format!(
        "value ({} bytes, a {} message) would decode to more than the batch's messages may take \
         (codec.max_decoded_mib)",
        bytes.len(),
        desc.full_name()
    ))
}

/// An upper bound of the memory prost-reflect's [`DynamicMessage`] takes for the message in `bytes`, read off
/// the wire without decoding it; `None` past `allowance`. Bytes that are not a message are counted as far as
/// they read (decoding them then fails, having allocated no more than that).
///
/// The model: a message's set fields are a B-tree of value slots, whose nodes hold 11 and are at least half
/// full but the root; a repeated field's items a vector (up to twice their slots, as it grows); a map a hash
/// table (the same); strings, bytes and unknown fields their bytes; a packed scalar at least a byte each.
pub fn decoded_size(bytes: &[u8], desc: &MessageDescriptor, allowance: usize) -> Option<usize> {
    const VALUE: usize = std::mem::size_of::<prost_reflect::Value>();
    // A B-tree leaf: 11 keys (u32), 11 slots (a value or an unknown-field set), a parent and two counters.
    const LEAF: usize = 11 * (4 + VALUE + 8) + 16;
    const ITEM: usize = 2 * VALUE;
    const ENTRY: usize = 2 * (VALUE + std::mem::size_of::<prost_reflect::MapKey>()) + 8;
    const UNKNOWN: usize = 2 * 48;

    struct Scan {
        total: usize,
        allowance: usize,
    }
    impl Scan {
        fn add(&mut self, n: usize) -> Option<()> {
            self.total = self.total.saturating_add(n);
            (self.total <= self.allowance).then_some(())
        }
        /// One message's fields (`desc` `None`: an unknown group's); stops at the end of `bytes`, or at an
        /// end-group tag when `group`.
        fn message(
            &mut self,
            bytes: &[u8],
            pos: &mut usize,
            desc: Option<&MessageDescriptor>,
            depth: usize,
            group: bool,
        ) -> Option<()> {
            let mut entries = 0usize;
            while *pos < bytes.len() {
                let Some(tag) = varint(bytes, pos) else { break };
                let (number, wire) = (tag >> 3, tag & 7);
                let field = u32::try_from(number)
                    .ok()
                    .and_then(|n| desc.and_then(|d| d.get_field(n)));
                match wire {
                    0 | 1 | 5 => {
                        let skip = match wire {
                            0 => varint(bytes, pos).map(|_| 0),
                            1 => Some(8),
                            _ => Some(4),
                        };
                        let Some(skip) = skip else { break };
                        *pos = pos.saturating_add(skip);
                        entries += 1;
                        self.add(match &field {
                            Some(f) if f.is_list() => ITEM,
                            Some(_) => 0,
                            None => UNKNOWN,
                        })?;
                    }
                    2 => {
                        let Some(len) = varint(bytes, pos).and_then(|l| usize::try_from(l).ok())
                        else {
                            break;
                        };
                        let end = pos.saturating_add(len).min(bytes.len());
                        let body = &bytes[*pos..end];
                        *pos = end;
                        entries += 1;
                        match &field {
                            Some(f) if f.is_map() => {
                                self.add(ENTRY)?;
                                if let prost_reflect::Kind::Message(entry) = f.kind()
                                    && depth < 100
                                {
                                    self.message(body, &mut 0, Some(&entry), depth + 1, false)?;
                                }
                            }
                            Some(f) => {
                                self.add(if f.is_list() { ITEM } else { 0 })?;
                                match f.kind() {
                                    prost_reflect::Kind::Message(m) if depth < 100 => {
                                        self.message(body, &mut 0, Some(&m), depth + 1, false)?;
                                    }
                                    prost_reflect::Kind::Message(_) => {}
                                    prost_reflect::Kind::String | prost_reflect::Kind::Bytes => {
                                        self.add(body.len())?;
                                    }
                                    // Packed scalars: at least a byte each.
                                    _ => self.add(body.len().saturating_mul(ITEM))?,
                                }
                            }
                            None => self.add(UNKNOWN + body.len())?,
                        }
                    }
                    3 => {
                        entries += 1;
                        self.add(if field.as_ref().is_some_and(|f| f.is_list()) {
                            ITEM
                        } else {
                            UNKNOWN
                        })?;
                        let inner = match field.as_ref().map(|f| f.kind()) {
                            Some(prost_reflect::Kind::Message(m)) => Some(m),
                            _ => None,
                        };
                        if depth >= 100 {
                            break;
                        }
                        self.message(bytes, pos, inner.as_ref(), depth + 1, true)?;
                    }
                    4 if group => break,
                    _ => break,
                }
            }
            // At most one node per 5 entries (each node but the root is at least half full).
            self.add(entries.div_ceil(5).saturating_mul(LEAF))
        }
    }
    let mut scan = Scan {
        total: 0,
        allowance,
    };
    scan.message(bytes, &mut 0, Some(desc), 0, false)?;
    Some(scan.total)
}

/// A decoded message as the message tree, straight (a detour through `serde_json::Value` cost a third of the
/// decode): fields in number order, those without presence always, with their defaults; map entries in key
/// order; the well-known types as [`well_known_tree`] writes them.
fn tree(m: &DynamicMessage, naming: Naming) -> Result<Message<'static>, String> {
    use prost_reflect::ReflectMessage;
    let desc = m.descriptor();
    if well_known(desc.full_name()) {
        return well_known_tree(m, naming);
    }
    let mut object = crate::message::Object::with_capacity(desc.fields().len());
    fields_into(m, naming, &mut object)?;
    Ok(Message::Object(object))
}

/// The fields of `m` (not a well-known type) appended to `object`.
fn fields_into(
    m: &DynamicMessage,
    naming: Naming,
    object: &mut crate::message::Object<'static>,
) -> Result<(), String> {
    use prost_reflect::ReflectMessage;
    let desc = m.descriptor();
    for f in desc.fields() {
        if f.supports_presence() && !m.has_field(&f) {
            continue;
        }
        let name = if naming.proto_field_names {
            f.name()
        } else {
            f.json_name()
        };
        let value = m.get_field(&f);
        let kind = f.kind();
        let converted = if f.is_map() {
            let value_kind = match &kind {
                prost_reflect::Kind::Message(entry) => entry.map_entry_value_field().kind(),
                _ => return Err(format!("map field {} without an entry type", f.name())),
            };
            let prost_reflect::Value::Map(entries) = &*value else {
                return Err(format!("map field {} holds no map", f.name()));
            };
            // prost-reflect holds a map in a hash map, whose order changes from run to run: the entries are
            // written in key order (false before true, numbers by value, strings by their bytes), so that the
            // same message is always the same text.
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut fields = Vec::with_capacity(sorted.len());
            for (k, v) in sorted {
                let key = match k {
                    prost_reflect::MapKey::Bool(b) => b.to_string(),
                    prost_reflect::MapKey::I32(n) => n.to_string(),
                    prost_reflect::MapKey::I64(n) => n.to_string(),
                    prost_reflect::MapKey::U32(n) => n.to_string(),
                    prost_reflect::MapKey::U64(n) => n.to_string(),
                    prost_reflect::MapKey::String(s) => s.clone(),
                };
                fields.push((Cow::Owned(key), scalar(v, &value_kind, naming)?));
            }
            Message::Object(crate::message::Object::from_fields(fields))
        } else {
            scalar(&value, &kind, naming)?
        };
        object.insert(name.to_string(), converted);
    }
    Ok(())
}

/// One value (a list's items one by one) of kind `kind`.
fn scalar(
    v: &prost_reflect::Value,
    kind: &prost_reflect::Kind,
    naming: Naming,
) -> Result<Message<'static>, String> {
    use prost_reflect::Value as V;
    let float = |f: f64| match serde_json::Number::from_f64(f) {
        Some(n) => Message::Number(n),
        None if f.is_nan() => Message::from("NaN"),
        None if f > 0.0 => Message::from("Infinity"),
        None => Message::from("-Infinity"),
    };
    Ok(match v {
        V::Bool(b) => Message::Bool(*b),
        V::I32(n) => Message::from(i64::from(*n)),
        V::I64(n) => Message::from(*n),
        V::U32(n) => Message::Number(serde_json::Number::from(*n)),
        V::U64(n) => Message::Number(serde_json::Number::from(*n)),
        // The shortest text that reads back as this float32 (0.1, not its widening 0.10000000149011612), as
        // the mapping prints it; held as the double nearest that text.
        V::F32(f) if f.is_finite() => f
            .to_string()
            .parse::<f64>()
            .map_or_else(|_| float(f64::from(*f)), float),
        V::F32(f) => float(f64::from(*f)),
        V::F64(f) => float(*f),
        V::String(s) => Message::from(s.clone()),
        V::Bytes(b) => Message::from(base64::engine::general_purpose::STANDARD.encode(b)),
        V::EnumNumber(n) => match kind {
            prost_reflect::Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => {
                Message::Null
            }
            prost_reflect::Kind::Enum(e) => match e.get_value(*n) {
                Some(value) => Message::from(value.name().to_string()),
                None => Message::from(i64::from(*n)),
            },
            _ => Message::from(i64::from(*n)),
        },
        V::Message(m) => tree(m, naming)?,
        V::List(items) => Message::Array(
            items
                .iter()
                .map(|item| scalar(item, kind, naming))
                .collect::<Result<_, _>>()?,
        ),
        V::Map(_) => return Err("a map where a single value is due".into()),
    })
}

/// An object's field in the tree, and one value.
const FIELD: usize = std::mem::size_of::<(std::borrow::Cow<'static, str>, Message<'static>)>();
const VALUE: usize = std::mem::size_of::<Message<'static>>();

/// The estimated memory of `message`'s tree: its objects (a vector of every field of the type, as the tree
/// makes them), names, strings and items, each allocation as the allocator rounds it; `None` as soon as it
/// passes `allowance`. Walks the decoded message without allocating (but to unpack an Any).
pub fn estimate(decoded: &DynamicMessage, allowance: usize) -> Option<usize> {
    use crate::message::heap;
    use prost_reflect::ReflectMessage;
    fn value(v: &prost_reflect::Value, left: usize) -> Option<usize> {
        use prost_reflect::Value as V;
        let cost = match v {
            V::String(s) => heap(s.len()),
            V::Bytes(b) => heap(b.len().div_ceil(3) * 4),
            V::Message(m) => message(m, left)?,
            V::List(items) => {
                let mut total = heap(items.len().checked_mul(VALUE)?);
                for item in items {
                    total = total.checked_add(value(item, left.checked_sub(total)?)?)?;
                }
                total
            }
            V::Map(entries) => {
                let mut total = heap(entries.len().checked_mul(FIELD)?);
                for (k, v) in entries {
                    // The key becomes a name (a number's digits: at most 20 bytes).
                    let name = match k {
                        prost_reflect::MapKey::String(s) => heap(s.len()),
                        _ => heap(20),
                    };
                    total = total
                        .checked_add(name)?
                        .checked_add(value(v, left.checked_sub(total)?)?)?;
                }
                total
            }
            _ => 0,
        };
        (cost <= left).then_some(cost)
    }
    fn message(m: &DynamicMessage, left: usize) -> Option<usize> {
        let desc = m.descriptor();
        match desc.full_name() {
            "google.protobuf.Any" => {
                // The packed message's tree, defaults and all (a refused Any costs nothing: it fails the
                // record).
                return match unpack(m) {
                    Ok(Some((url, packed))) => {
                        let inner = one_any_deeper(|| Ok(message(&packed, left))).ok()??;
                        let cost = inner.checked_add(heap(FIELD) + heap(url.len()))?;
                        (cost <= left).then_some(cost)
                    }
                    _ => Some(0),
                };
            }
            // A string.
            "google.protobuf.Timestamp" | "google.protobuf.Duration" => return Some(heap(40)),
            _ => {}
        }
        // The object holds every field of the type (with_capacity), set or not.
        let mut total = heap(desc.fields().len().checked_mul(FIELD)?);
        for f in desc.fields() {
            if !f.supports_presence() && !m.has_field(&f) {
                // A default: its name; a scalar, or an empty list or object, allocates nothing.
                total = total.checked_add(heap(f.json_name().len()))?;
            }
        }
        if total > left {
            return None;
        }
        for (f, v) in m.fields() {
            let name = heap(f.json_name().len());
            total = total
                .checked_add(name)?
                .checked_add(value(v, left.checked_sub(total + name)?)?)?;
        }
        (total <= left).then_some(total)
    }
    message(decoded, allowance)
}

/// prost's error without its fixed "failed to decode Protobuf message: " prefix, and with its recursion limit
/// named as such.
fn reason(e: &prost::DecodeError) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text)
        .to_string();
    if text.ends_with("recursion limit reached") {
        format!("{text} (messages nest deeper than 100 levels)")
    } else {
        text
    }
}

/// Confluent's message-index list after the schema id: a zigzag varint count, then that many zigzag varint
/// indexes (a count of 0 stands for the list `[0]`, the file's first message). Returns the indexes and the
/// message bytes.
pub fn split_indexes(body: &[u8]) -> Result<(Vec<usize>, &[u8]), DecodeError> {
    let bad = |what: String| {
        DecodeError::Permanent(format!(
            "value is not Confluent-framed Protobuf: its message-index list {what}"
        ))
    };
    let mut pos = 0;
    let count = zigzag(body, &mut pos).ok_or_else(|| bad("is truncated".into()))?;
    if count == 0 {
        return Ok((vec![0], &body[pos..]));
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_INDEXES)
        .ok_or_else(|| bad(format!("has a count of {count}, not 1 to {MAX_INDEXES}")))?;
    let mut indexes = Vec::with_capacity(count);
    for _ in 0..count {
        let index = zigzag(body, &mut pos).ok_or_else(|| bad("is truncated".into()))?;
        let index =
            usize::try_from(index).map_err(|_| bad(format!("holds a negative index {index}")))?;
        indexes.push(index);
    }
    Ok((indexes, &body[pos..]))
}

/// A zigzag-encoded varint of at most 64 bits; `None` when the bytes end first or it runs past 10 bytes.
fn zigzag(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let v = varint(bytes, pos)?;
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// A plain varint of at most 64 bits.
pub(crate) fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The message type Confluent's index list names in `file`: the first index picks a top-level message, each
/// further one a message nested in the previous (map entries count, as in the descriptor).
pub fn message_by_indexes(
    file: &FileDescriptor,
    indexes: &[usize],
) -> Result<MessageDescriptor, DecodeError> {
    let unknown = || {
        DecodeError::Permanent(format!(
            "unknown message index {indexes:?} in {} (Confluent framing)",
            file.name()
        ))
    };
    let (&first, rest) = indexes.split_first().ok_or_else(unknown)?;
    let mut message = file.messages().nth(first).ok_or_else(unknown)?;
    for &i in rest {
        let child = message.child_messages().nth(i);
        message = child.ok_or_else(unknown)?;
    }
    Ok(message)
}

/// The message types of `file` as AWS Glue's Protobuf serializer numbers them: every message type, nested ones
/// too (breadth first), sorted by full name.
pub fn glue_messages(file: &FileDescriptor) -> Vec<MessageDescriptor> {
    let mut all = Vec::new();
    let mut queue: std::collections::VecDeque<MessageDescriptor> = file.messages().collect();
    while let Some(m) = queue.pop_front() {
        queue.extend(m.child_messages());
        all.push(m);
    }
    all.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const PLANET: &str = r#"
syntax = "proto3";
package servicea;
import "google/protobuf/timestamp.proto";
message Planet {
  string planet_uuid = 1;
  string planet_name = 2;
  bool published = 3;
  int64 population = 4;
  google.protobuf.Timestamp discovered_at = 5;
  message Moon { string name = 1; }
  repeated Moon moons = 6;
}
"#;

    #[test]
    fn compiles_files_and_decodes_by_the_json_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "planet.proto", PLANET);
        let (pool, files) = compile(&[path]).unwrap();
        assert_eq!(files.len(), 1);
        let desc = message_by_name(&pool, "servicea.Planet").unwrap();
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("planet_uuid", prost_reflect::Value::String("p1".into()));
        m.set_field_by_name("population", prost_reflect::Value::I64(i64::MAX));
        let bytes = m.encode_to_vec();
        let decoded = decode(&bytes, &desc, Naming::default()).unwrap();
        assert_eq!(
            decoded,
            serde_json::json!({
                "planetUuid": "p1", "planetName": "", "published": false,
                "population": i64::MAX, "moons": []
            })
        );
        let declared = decode(
            &bytes,
            &desc,
            Naming {
                proto_field_names: true,
            },
        )
        .unwrap();
        assert_eq!(declared["planet_uuid"], "p1");
        let err = message_by_name(&pool, "servicea.Nope").unwrap_err();
        assert!(err.contains("servicea.Planet"), "{err}");
    }

    #[test]
    fn compile_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "bad.proto",
            "syntax = \"proto3\";\nmessage A {\n  strin x = 1;\n}\n",
        );
        let err = compile(&[path]).unwrap_err();
        assert!(err.starts_with("bad.proto:3:"), "{err}");
        let path = write(
            dir.path(),
            "imports.proto",
            "syntax = \"proto3\";\nimport \"missing.proto\";\n",
        );
        let err = compile(&[path]).unwrap_err();
        assert!(err.starts_with("imports.proto:2:"), "{err}");
        assert!(err.contains("missing.proto"), "{err}");
        let err = compile(&[dir.path().join("none.proto")]).unwrap_err();
        assert!(err.contains("none.proto: cannot read"), "{err}");
        let err = compile_source(
            "r.proto",
            "syntax = \"proto3\";\nmessage {",
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(err.starts_with("r.proto:2:"), "{err}");
    }

    #[test]
    fn confluent_indexes_and_glue_numbering() {
        let file = compile_source(
            "n.proto",
            "syntax = \"proto3\";\npackage p;\nmessage B { message C {} message A { message D {} } }\nmessage Z {}\n",
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(split_indexes(&[0, 9]).unwrap(), (vec![0], &[9u8][..]));
        // Count 2 (zigzag 4), indexes 0 and 1 (zigzag 0, 2): B.A.
        let (indexes, rest) = split_indexes(&[4, 0, 2, 7]).unwrap();
        assert_eq!(rest, &[7]);
        assert_eq!(
            message_by_indexes(&file, &indexes).unwrap().full_name(),
            "p.B.A"
        );
        assert_eq!(message_by_indexes(&file, &[1]).unwrap().full_name(), "p.Z");
        let err = message_by_indexes(&file, &[2]).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Permanent(m) if m.contains("unknown message index [2]"))
        );
        for bad in [&[][..], &[4, 0], &[0x80], &[3, 0], &[2, 1], &[200, 1]] {
            assert!(
                matches!(split_indexes(bad), Err(DecodeError::Permanent(_))),
                "{bad:?}"
            );
        }
        let names: Vec<String> = glue_messages(&file)
            .iter()
            .map(|m| m.full_name().to_string())
            .collect();
        assert_eq!(names, ["p.B", "p.B.A", "p.B.A.D", "p.B.C", "p.Z"]);
    }

    #[test]
    fn hostile_messages_are_permanent() {
        let file = compile_source(
            "h.proto",
            "syntax = \"proto3\";\nmessage N { N next = 1; string s = 2; repeated int64 xs = 3; }\n",
            &HashMap::new(),
        )
        .unwrap();
        let desc = file.messages().next().unwrap();
        let permanent = |bytes: &[u8], text: &str| match decode(bytes, &desc, Naming::default()) {
            Err(DecodeError::Permanent(m)) => assert!(m.contains(text), "{m}"),
            other => panic!("{bytes:?}: expected a permanent error, got {other:?}"),
        };
        // Truncated string, a length far past the bytes, wrong wire type, a bad varint, tag 0.
        permanent(&[0x12, 5, b'a'], "buffer underflow");
        permanent(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f], "buffer underflow");
        permanent(&[0x15, 0, 0, 0, 0], "wire type");
        permanent(
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            "varint",
        );
        permanent(&[0x00], "N");
        // 200 levels of `next`.
        let mut deep: Vec<u8> = Vec::new();
        for _ in 0..200 {
            let mut outer = vec![0x0a];
            let mut len = deep.len();
            loop {
                let b = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    outer.push(b);
                    break;
                }
                outer.push(b | 0x80);
            }
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        permanent(&deep, "deeper than 100 levels");
    }
}
