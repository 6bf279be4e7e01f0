//! The decoded message: JSON's data model, borrowing its strings from the bytes it was decoded from.
//!
//! A message lives for one record: it is decoded, filtered, masked, routed, mapped to a row and dropped. As a
//! `serde_json::Value` it cost an allocation per key and per string and a hash map per object, which was most of
//! the decode time of a batch (perf, 6 MB JSON batch: malloc/free and the maps' hashing about half). A
//! [`Message`] borrows every string that needs no unescaping from the record's decoded value (or, for Avro,
//! field names from the compiled schema), and keeps an object's fields in a `Vec` in document order: the objects
//! of change events have a handful of fields, which a scan finds faster than a hash.
//!
//! It converts to and from `serde_json::Value` at the edges ([`Message::to_value`], `From<Value>`), serializes as
//! JSON, and is a serde `Deserializer`, so a typed mapping reads a field into any `Deserialize` type.
//!
//! Objects keep their field names unique, as JSON objects in serde_json do: when a name repeats, the last value
//! wins, at the place of the first.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};

use crate::text::Name;

/// What the allocator takes for `n` bytes (glibc's malloc: a header and 16-byte granules, 32 at least;
/// nothing for nothing): the unit in which messages and rows are counted against a batch's budget.
pub(crate) fn heap(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.saturating_add(8).next_multiple_of(16).max(32)
    }
}

/// A JSON value whose strings and field names borrow from the decoded record where they can.
#[derive(Debug, Clone, Default)]
pub enum Message<'a> {
    /// JSON null.
    #[default]
    Null,
    /// JSON true or false.
    Bool(bool),
    /// A JSON number, as serde_json holds it.
    Number(Number),
    /// A string, borrowed from the record's bytes when it can be.
    String(Cow<'a, str>),
    /// A JSON array.
    Array(Vec<Message<'a>>),
    /// A JSON object, its fields in order.
    Object(Object<'a>),
}

/// An object's fields in document order; names are unique.
#[derive(Debug, Clone, Default)]
pub struct Object<'a> {
    fields: Vec<(Cow<'a, str>, Message<'a>)>,
}

/// Past this many fields, building an object checks repeated names with a hash set instead of a scan.
const SCAN_LIMIT: usize = 32;

static NULL: Message<'static> = Message::Null;

impl<'a> Object<'a> {
    /// An empty object.
    pub fn new() -> Self {
        Self { fields: Vec::new() }
    }

    /// An empty object with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            fields: Vec::with_capacity(n),
        }
    }

    /// How many fields it has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether it has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Fields the object holds without growing.
    pub fn capacity(&self) -> usize {
        self.fields.capacity()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(k, _)| k == name)
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&Message<'a>> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The value of field `name`, to change it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Message<'a>> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether it has a field `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Sets `name`: in place when the object has it (returning the old value), else as the last field.
    pub fn insert(
        &mut self,
        name: impl Into<Cow<'a, str>>,
        value: Message<'a>,
    ) -> Option<Message<'a>> {
        let name = name.into();
        match self.position(&name) {
            Some(i) => Some(std::mem::replace(&mut self.fields[i].1, value)),
            None => {
                self.fields.push((name, value));
                None
            }
        }
    }

    /// Removes `name`, keeping the order of the other fields.
    pub fn remove(&mut self, name: &str) -> Option<Message<'a>> {
        self.position(name).map(|i| self.fields.remove(i).1)
    }

    /// Its fields, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Message<'a>)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Its values, in order, to change them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Message<'a>> {
        self.fields.iter_mut().map(|(_, v)| v)
    }

    /// Its field names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_ref())
    }

    /// Builds an object from fields in document order; a repeated name keeps its first place and last value.
    pub fn from_fields(fields: Vec<(Cow<'a, str>, Message<'a>)>) -> Self {
        let mut out = Self { fields };
        out.dedup();
        out
    }

    /// Appends a field the caller knows is not in the object yet (an Avro record's fields are unique by schema).
    pub(crate) fn push_unique(&mut self, name: Cow<'a, str>, value: Message<'a>) {
        debug_assert!(!self.contains_key(&name));
        self.fields.push((name, value));
    }

    fn dedup(&mut self) {
        let n = self.fields.len();
        if n <= SCAN_LIMIT && !self.may_repeat() {
            return;
        }
        let repeated = if n <= SCAN_LIMIT {
            (1..n).any(|i| self.fields[..i].iter().any(|(k, _)| *k == self.fields[i].0))
        } else {
            let mut seen = std::collections::HashSet::with_capacity(n);
            !self.fields.iter().all(|(k, _)| seen.insert(k.as_ref()))
        };
        if !repeated {
            return;
        }
        let mut first: HashMap<Cow<'a, str>, usize> = HashMap::with_capacity(n);
        let mut out: Vec<(Cow<'a, str>, Message<'a>)> = Vec::with_capacity(n);
        for (k, v) in self.fields.drain(..) {
            match first.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    first.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        self.fields = out;
    }

    /// Whether two names might be equal: a bit per (length, last byte), so that the usual object, whose names
    /// all differ there, is never compared name by name.
    fn may_repeat(&self) -> bool {
        let mut seen = 0u64;
        for (k, _) in &self.fields {
            let last = k.as_bytes().last().copied().unwrap_or(0);
            let bit = 1u64 << ((k.len().wrapping_mul(31) ^ usize::from(last)) % 64);
            if seen & bit != 0 {
                return true;
            }
            seen |= bit;
        }
        false
    }

    /// The same object, owning its strings.
    pub fn into_owned(self) -> Object<'static> {
        Object {
            fields: self
                .fields
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                .collect(),
        }
    }
}

impl<'a> IntoIterator for Object<'a> {
    type Item = (Cow<'a, str>, Message<'a>);
    type IntoIter = std::vec::IntoIter<(Cow<'a, str>, Message<'a>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter()
    }
}

impl<'a> Message<'a> {
    /// Parses JSON text; strings without escapes borrow from it. The top-level object gets room for `spare`
    /// more fields (the pipeline injects two).
    pub fn parse(text: &'a str, spare: usize) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let message = Seed { spare }.deserialize(&mut de)?;
        de.end()?;
        Ok(message)
    }

    /// The field `name` of an object; `None` for a missing field or a message that is not an object.
    pub fn get(&self, name: &str) -> Option<&Message<'a>> {
        match self {
            Message::Object(o) => o.get(name),
            _ => None,
        }
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Message::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The object, if this is one, to change it.
    pub fn as_object_mut(&mut self) -> Option<&mut Object<'a>> {
        match self {
            Message::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The items, if this is an array.
    pub fn as_array(&self) -> Option<&[Message<'a>]> {
        match self {
            Message::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Message::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Message::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value, if this is a number that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Message::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// The value, if this is a number that fits a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Message::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The value, if this is a number, as an `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Message::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// Whether this is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Message::Null)
    }

    /// Whether this is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, Message::Object(_))
    }

    /// What kind of JSON value this is, for error messages that must not quote values.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Null => "null",
            Message::Bool(_) => "a boolean",
            Message::Number(_) => "a number",
            Message::String(_) => "a string",
            Message::Array(_) => "an array",
            Message::Object(_) => "an object",
        }
    }

    /// The same value as a `serde_json::Value` (allocates every string).
    pub fn to_value(&self) -> Value {
        match self {
            Message::Null => Value::Null,
            Message::Bool(b) => Value::Bool(*b),
            Message::Number(n) => Value::Number(n.clone()),
            Message::String(s) => Value::String(s.to_string()),
            Message::Array(items) => Value::Array(items.iter().map(Message::to_value).collect()),
            Message::Object(o) => Value::Object(
                o.fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A message that borrows nothing.
    pub fn into_owned(self) -> Message<'static> {
        match self {
            Message::Null => Message::Null,
            Message::Bool(b) => Message::Bool(b),
            Message::Number(n) => Message::Number(n),
            Message::String(s) => Message::String(Cow::Owned(s.into_owned())),
            Message::Array(items) => {
                Message::Array(items.into_iter().map(Message::into_owned).collect())
            }
            Message::Object(o) => Message::Object(o.into_owned()),
        }
    }

    /// Compact JSON text.
    pub fn to_json_string(&self) -> String {
        // Serializing strings, numbers and maps to a Vec cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl From<Value> for Message<'static> {
    fn from(value: Value) -> Self {
        match value {
            Value::Null => Message::Null,
            Value::Bool(b) => Message::Bool(b),
            Value::Number(n) => Message::Number(n),
            Value::String(s) => Message::String(Cow::Owned(s)),
            Value::Array(items) => Message::Array(items.into_iter().map(Message::from).collect()),
            // A serde_json map has unique names already.
            Value::Object(map) => Message::Object(Object {
                fields: map
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Message::from(v)))
                    .collect(),
            }),
        }
    }
}

impl<'a> From<&'a str> for Message<'a> {
    fn from(s: &'a str) -> Self {
        Message::String(Cow::Borrowed(s))
    }
}

impl From<String> for Message<'_> {
    fn from(s: String) -> Self {
        Message::String(Cow::Owned(s))
    }
}

impl From<i64> for Message<'_> {
    fn from(n: i64) -> Self {
        Message::Number(n.into())
    }
}

impl From<bool> for Message<'_> {
    fn from(b: bool) -> Self {
        Message::Bool(b)
    }
}

impl<'a> std::ops::Index<&str> for Message<'a> {
    type Output = Message<'a>;
    /// The field `name`, or null when it is missing (as `serde_json::Value` indexes).
    fn index(&self, name: &str) -> &Message<'a> {
        self.get(name).unwrap_or(&NULL)
    }
}

impl<'a> std::ops::Index<usize> for Message<'a> {
    type Output = Message<'a>;
    fn index(&self, i: usize) -> &Message<'a> {
        match self {
            Message::Array(items) => items.get(i).unwrap_or(&NULL),
            _ => &NULL,
        }
    }
}

/// Structural equality, as serde_json's: objects compare regardless of field order, numbers by their
/// representation (`1` ≠ `1.0`; the filter's own comparison is looser, see `filter::json_eq`).
impl PartialEq for Message<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Message::Null, Message::Null) => true,
            (Message::Bool(a), Message::Bool(b)) => a == b,
            (Message::Number(a), Message::Number(b)) => a == b,
            (Message::String(a), Message::String(b)) => a == b,
            (Message::Array(a), Message::Array(b)) => a == b,
            (Message::Object(a), Message::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

impl PartialEq<Value> for Message<'_> {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Message::Null, Value::Null) => true,
            (Message::Bool(a), Value::Bool(b)) => a == b,
            (Message::Number(a), Value::Number(b)) => a == b,
            (Message::String(a), Value::String(b)) => a == b,
            (Message::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
            }
            (Message::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

impl PartialEq<str> for Message<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Message<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<bool> for Message<'_> {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

impl PartialEq<i64> for Message<'_> {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == Some(*other)
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Null => s.serialize_unit(),
            Message::Bool(b) => s.serialize_bool(*b),
            Message::Number(n) => n.serialize(s),
            Message::String(v) => s.serialize_str(v),
            Message::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Message::Object(o) => o.serialize(s),
        }
    }
}

impl Serialize for Object<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k.as_ref(), v)?;
        }
        map.end()
    }
}

/// Builds a [`Message`] from any serde `Deserializer`, borrowing what the deserializer lends.
pub(crate) struct Seed {
    /// Room for this many more fields in a top-level object.
    pub(crate) spare: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Message<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Message<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Message<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Message<'de>, E> {
        Ok(Message::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Message<'de>, E> {
        Ok(Message::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Message<'de>, E> {
        Ok(Message::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Message<'de>, E> {
        Ok(Number::from_f64(v).map_or(Message::Null, Message::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Message<'de>, E> {
        Ok(Message::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Message<'de>, E> {
        Ok(Message::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Message<'de>, E> {
        Ok(Message::String(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Message<'de>, E> {
        Ok(Message::Null)
    }
    fn visit_none<E>(self) -> Result<Message<'de>, E> {
        Ok(Message::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Message<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Seed { spare: 0 })? {
            items.push(item);
        }
        Ok(Message::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
        let mut fields = Vec::with_capacity(8 + self.spare);
        while let Some(name) = map.next_key_seed(Name)? {
            let value = map.next_value_seed(Seed { spare: 0 })?;
            fields.push((name, value));
        }
        Ok(Message::Object(Object::from_fields(fields)))
    }
}

/// A message read as serde data, so that `T::deserialize(&message)` builds any `Deserialize` type from it (the
/// typed mappings' fields). Strings are lent to the visitor.
impl<'de, 'a: 'de> Deserializer<'de> for &'de Message<'a> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Message::Null => visitor.visit_unit(),
            Message::Bool(b) => visitor.visit_bool(*b),
            Message::Number(n) => n.deserialize_any(visitor),
            Message::String(s) => visitor.visit_borrowed_str(s),
            Message::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter());
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Message::Object(o) => {
                let mut map = MapDeserializer::new(
                    o.fields
                        .iter()
                        .map(|(k, v)| (BorrowedStrDeserializer::new(k.as_ref()), v)),
                );
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Message::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Message::String(s) => visitor.visit_enum(BorrowedStrDeserializer::new(s.as_ref())),
            // `{"Variant": value}`, as serde_json reads it; rare enough to go through a Value.
            Message::Object(_) => self
                .to_value()
                .deserialize_enum(name, variants, visitor)
                .map_err(|e| de::Error::custom(e.to_string())),
            other => Err(de::Error::invalid_type(unexpected(other), &"an enum")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de, 'a: 'de> IntoDeserializer<'de, serde_json::Error> for &'de Message<'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn unexpected<'m>(m: &'m Message<'_>) -> de::Unexpected<'m> {
    match m {
        Message::Null => de::Unexpected::Unit,
        Message::Bool(b) => de::Unexpected::Bool(*b),
        Message::Number(_) => de::Unexpected::Other("number"),
        Message::String(s) => de::Unexpected::Str(s),
        Message::Array(_) => de::Unexpected::Seq,
        Message::Object(_) => de::Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// The same values as serde_json's own parser: field order, repeated names, numbers, escapes.
    #[test]
    fn parses_what_serde_json_parses() {
        let cases = [
            r#"{"a":1,"b":[1,2.5,-3,"x",null,true,{"c":{}}],"d":{"e":"\u00e9\n","f":[]}}"#,
            r#"{"z":1,"a":2,"z":3}"#,
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":1e300,"g":0.1}"#,
            r#"{"deep":[[[[{"x":[{"y":null}]}]]]],"s":"\ud83d\ude00"}"#,
            r#"  {"ws" : [ 1 , 2 ] }  "#,
            r#"[1,{"a":"b"}]"#,
            r#""text""#,
        ];
        for case in cases {
            let ours = Message::parse(case, 2).unwrap();
            let theirs: Value = serde_json::from_str(case).unwrap();
            assert_eq!(ours, theirs, "{case}");
            assert_eq!(ours.to_value(), theirs, "{case}");
            assert_eq!(ours.to_json_string(), theirs.to_string(), "order: {case}");
            assert_eq!(Message::from(theirs.clone()), ours, "{case}");
        }
        for bad in [
            r#"{"a":1} x"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            "{\"a\":\"\u{0}\"}",
        ] {
            assert!(Message::parse(bad, 0).is_err(), "{bad}");
        }
        // serde_json's recursion limit still holds: an error, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let err = Message::parse(&deep, 0).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"plain":"abc","escaped":"a\nb"}"#;
        let m = Message::parse(text, 0).unwrap();
        let o = m.as_object().unwrap();
        assert!(matches!(o.fields[0].0, Cow::Borrowed(_)));
        assert!(matches!(
            o.get("plain"),
            Some(Message::String(Cow::Borrowed("abc")))
        ));
        assert!(matches!(o.get("escaped"), Some(Message::String(Cow::Owned(s))) if s == "a\nb"));
    }

    #[test]
    fn repeated_names_keep_the_first_place_and_the_last_value_at_any_size() {
        for n in [3usize, SCAN_LIMIT + 10] {
            let mut text = String::from("{");
            for i in 0..n {
                text.push_str(&format!("\"k{i}\":{i},"));
            }
            text.push_str("\"k1\":\"last\"}");
            let ours = Message::parse(&text, 0).unwrap();
            let theirs: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(ours.to_json_string(), theirs.to_string());
            assert_eq!(ours.as_object().unwrap().len(), n);
        }
    }

    #[test]
    fn insert_and_remove_keep_order() {
        let mut m = Message::from(json!({"a": 1, "b": 2, "c": 3}));
        let o = m.as_object_mut().unwrap();
        assert_eq!(o.insert("b", Message::from(20)), Some(Message::from(2)));
        assert_eq!(o.insert("d", Message::from(4)), None);
        assert_eq!(o.remove("a"), Some(Message::from(1)));
        assert_eq!(o.remove("zz"), None);
        assert_eq!(m.to_json_string(), r#"{"b":20,"c":3,"d":4}"#);
        assert_eq!(m["c"], 3);
        assert!(m["missing"].is_null());
        assert!(m["c"]["deeper"].is_null());
    }

    #[test]
    fn deserializes_typed_values() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "camelCase")]
        struct Planet<'a> {
            planet_uuid: String,
            #[serde(borrow)]
            planet_name: Cow<'a, str>,
            moons: Option<u8>,
            mass: f64,
            tags: Vec<String>,
            kind: Kind,
            orbit: Orbit,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        enum Kind {
            Rocky,
            Gas,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Orbit {
            days: u32,
        }
        let text = r#"{"planetUuid":"p1","planetName":"Arrakis","moons":null,"mass":1e3,"tags":["a","b"],"kind":"Gas","orbit":{"days":365,"extra":true}}"#;
        let m = Message::parse(text, 0).unwrap();
        let p = Planet::deserialize(&m).unwrap();
        assert_eq!(
            p,
            Planet {
                planet_uuid: "p1".into(),
                planet_name: Cow::Borrowed("Arrakis"),
                moons: None,
                mass: 1000.0,
                tags: vec!["a".into(), "b".into()],
                kind: Kind::Gas,
                orbit: Orbit { days: 365 },
            }
        );
        assert!(matches!(p.planet_name, Cow::Borrowed(_)));
        assert!(u8::deserialize(&Message::from(300)).is_err());
        assert!(String::deserialize(&Message::from(3)).is_err());
        let tagged = Message::from(json!({"Rocky": null}));
        assert_eq!(Kind::deserialize(&tagged).unwrap(), Kind::Rocky);
    }
}
