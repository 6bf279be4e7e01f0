//! Datum bytes to messages in one pass: every length checked against the bytes left, nesting bounded, the
//! errors built only on the error path.

use super::*;

/// An object's field: its name and value.
pub(super) const FIELD_SLOT: usize = std::mem::size_of::<(Cow<'static, str>, Message<'static>)>();

/// Why bytes do not decode; built only on the error path.
pub(super) struct Bad {
    /// The bytes end too soon (or a length points past them).
    pub(super) truncated: bool,
    pub(super) what: String,
    pub(super) at: usize,
    /// Field names, innermost first.
    pub(super) path: Vec<String>,
    /// The innermost record.
    pub(super) record: Option<String>,
}

pub(super) type Res<T> = Result<T, Box<Bad>>;

impl Bad {
    pub(super) fn within(mut self: Box<Self>, record: &str, field: &str) -> Box<Self> {
        self.path.push(field.to_string());
        self.record.get_or_insert_with(|| record.to_string());
        self
    }

    /// `"{subject} is truncated (N bytes): …"` or `"{subject} does not match its schema (N bytes): …"`.
    pub(super) fn to_error(&self, subject: &str, len: usize) -> DecodeError {
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
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    /// Array items so far that took no bytes.
    pub(super) empty_items: u64,
    /// What resolving the values so far would cost apache-avro (see [`MAX_RESOLVE_COST`]).
    pub(super) resolve_cost: u64,
    /// The estimated memory of the messages decoded so far, and how much they may take (a container file's
    /// [`Budget`]; unlimited for a datum, whose messages are linear in the record's own bytes).
    pub(super) decoded: usize,
    pub(super) max_decoded: usize,
    /// The error being returned is the budget's, not the data's.
    pub(super) over_budget: bool,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
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
    pub(super) fn charge(&mut self, at: usize, bytes: usize) -> Res<()> {
        self.decoded = self.decoded.saturating_add(bytes);
        if self.decoded > self.max_decoded {
            self.over_budget = true;
            return Err(self.bad(at, "the decoded messages are over budget"));
        }
        Ok(())
    }

    pub(super) fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[cold]
    pub(super) fn fail(&self, truncated: bool, at: usize, what: String) -> Box<Bad> {
        Box::new(Bad {
            truncated,
            what,
            at,
            path: Vec::new(),
            record: None,
        })
    }

    #[cold]
    pub(super) fn bad(&self, at: usize, what: impl Into<String>) -> Box<Bad> {
        self.fail(false, at, what.into())
    }

    #[cold]
    pub(super) fn short(&self, at: usize, what: impl Into<String>) -> Box<Bad> {
        self.fail(true, at, what.into())
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
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
    pub(super) fn varint(&mut self) -> Res<u64> {
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
    pub(super) fn long(&mut self) -> Res<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    #[inline]
    pub(super) fn int(&mut self) -> Res<i32> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.bad(at, "an int is out of the 32-bit range"))
    }

    /// A length-prefixed byte string; the length is checked against the bytes left before anything else.
    #[inline]
    pub(super) fn bytes(&mut self, what: &str) -> Res<&'a [u8]> {
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
    pub(super) fn string(&mut self) -> Res<&'a str> {
        let at = self.pos;
        let bytes = self.bytes("string")?;
        std::str::from_utf8(bytes).map_err(|_| self.bad(at, "a string is not valid UTF-8"))
    }

    /// The item count of the next array or map block (`None` at the end). Items that take bytes cannot be
    /// more than the bytes left; items that take none are capped at [`MAX_EMPTY_ITEMS`].
    pub(super) fn block(&mut self, empty_items: bool, what: &str) -> Res<Option<usize>> {
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

pub(super) fn b64(bytes: &[u8]) -> Message<'static> {
    Message::from(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(super) fn number(f: f64) -> Message<'static> {
    serde_json::Number::from_f64(f).map_or(Message::Null, Message::Number)
}

/// Two's-complement big-endian bytes as decimal digits.
pub(super) fn unscaled(bytes: &[u8]) -> String {
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
    pub(super) fn deeper(c: &Cursor<'_>, depth: usize) -> Res<usize> {
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
    pub(super) fn value<'a>(
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
                    crate::decode::INJECTED_FIELDS
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
    pub(super) fn logical<'a>(node: &Node, c: &mut Cursor<'a>, at: usize) -> Res<Message<'a>> {
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
