//! The event read in one pass with serde seeds: records borrow their strings from the payload text when the
//! deserializer lends them, the partition lists are read straight into one list, and timestamps are read as
//! integers (never through an f64).

use super::*;

impl<'de> Deserialize<'de> for MskEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventSeed.deserialize(d)
    }
}

/// Reads an event; strings are borrowed when the deserializer lends them (JSON text without escapes).
pub(super) struct EventSeed;

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = MskEvent<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<MskEvent<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = MskEvent<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an MSK event")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MskEvent<'de>, A::Error> {
        let mut event_source = None;
        let mut event = MskEvent::default();
        let mut records = None;
        while let Some(name) = map.next_key_seed(Name)? {
            match name.as_ref() {
                "eventSource" => event_source = Some(map.next_value_seed(Name)?),
                "eventSourceArn" => event.event_source_arn = map.next_value_seed(Optional(Name))?,
                "bootstrapServers" => {
                    event.bootstrap_servers = map.next_value_seed(Optional(Name))?
                }
                "records" => {
                    let mut list = Vec::new();
                    map.next_value_seed(Partitions(&mut list))?;
                    records = Some(list);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        event.event_source = event_source.ok_or_else(|| de::Error::missing_field("eventSource"))?;
        event.records = records.ok_or_else(|| de::Error::missing_field("records"))?;
        Ok(event)
    }
}

/// `null` (or nothing), else what the inner seed reads.
pub(super) struct Optional<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Optional<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Optional<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A key or value: base64 text. Most of a batch's bytes are in these strings, so they are read as bytes:
/// serde_json then finds the closing quote with SIMD (memchr) instead of checking every byte for the control
/// characters JSON forbids in strings. Nothing is lost by that: the payload is UTF-8 (checked whole) and a
/// control character is not base64, so decoding the value dead-letters its record with that reason.
pub(super) struct Base64Text;

impl<'de> DeserializeSeed<'de> for Base64Text {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for Base64Text {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("base64 text")
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        // Borrowed: the string had no escape, so these are the event's own bytes, where JSON allows no
        // control character (serde_json's wording).
        if crate::text::has_control(v) {
            return Err(E::custom(
                "control character (\\u0000-\\u001F) found while parsing a string",
            ));
        }
        crate::text::utf8(v)
            .map(Cow::Borrowed)
            .map_err(|_| E::custom("a key or value is not UTF-8 text"))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        // Unescaped already: a control character here may have been an escape (valid JSON, and the record's
        // base64 is then bad) or raw; [`MskEvent::check_escaped`] tells them apart. The text is UTF-8, so only
        // an escape can make these bytes not UTF-8: a lone surrogate.
        String::from_utf8(v.to_vec()).map(Cow::Owned).map_err(|_| {
            E::custom(
                "a key or value holds a \\u escape of a lone UTF-16 surrogate (\\ud800 to \\udfff not in a \
                 high-low pair), which is not a character",
            )
        })
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The `records` map: every partition's list, appended to one list.
pub(super) struct Partitions<'l, 'de>(&'l mut Vec<Record<'de>>);

impl<'de> DeserializeSeed<'de> for Partitions<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Partitions<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of \"<topic>-<partition>\" to record lists")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key_seed(Name)? {
            if let Some(twice) = repeated_partition(&mut seen, key) {
                return Err(de::Error::custom(twice));
            }
            map.next_value_seed(List(&mut *self.0))?;
        }
        Ok(())
    }
}

/// `key` added to the partition keys `seen` so far, or the error when it is there already. The records map
/// repeating a key is refused, not read as JSON parsers read a repeated key (the last wins): the first list's
/// records would be dropped without a trace, and Lambda never repeats a key (a partition's records are one
/// list).
pub(crate) fn repeated_partition<'de>(
    seen: &mut std::collections::HashSet<Cow<'de, str>>,
    key: Cow<'de, str>,
) -> Option<String> {
    if seen.contains(&key) {
        return Some(format!(
            "the records map lists {:?} twice (each partition's records must be one list)",
            crate::text::bounded(&crate::text::escaped(&key), 200)
        ));
    }
    seen.insert(key);
    None
}

pub(super) struct List<'l, 'de>(&'l mut Vec<Record<'de>>);

impl<'de> DeserializeSeed<'de> for List<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(mut record) = seq.next_element_seed(RecordSeed)? {
            share_topic(self.0.last(), &mut record);
            self.0.push(record);
        }
        Ok(())
    }
}

/// A record whose topic reads as the record before it takes that record's topic slice, so the records of a
/// partition list share one: [`MskEvent::order`] then tells partitions apart by address, without reading
/// 11,000 topic strings scattered over a 6 MB payload (a cache miss each). Here the two are fresh in cache.
pub(crate) fn share_topic<'de>(prev: Option<&Record<'de>>, record: &mut Record<'de>) {
    if let (Some(prev), Cow::Borrowed(topic)) = (prev, &record.topic)
        && let Cow::Borrowed(before) = prev.topic
        && before == *topic
    {
        record.topic = Cow::Borrowed(before);
    }
}

/// The same topic: by address first (records of one partition list share their topic's slice).
pub(super) fn same_topic(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

pub(super) struct RecordSeed;

impl<'de> DeserializeSeed<'de> for RecordSeed {
    type Value = Record<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RecordSeed.deserialize(d)
    }
}

impl<'de> Visitor<'de> for RecordSeed {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kafka record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let mut r = Record::default();
        let (mut topic, mut partition, mut offset, mut timestamp) = (None, None, None, None);
        while let Some(name) = map.next_key_seed(Name)? {
            match name.as_ref() {
                "topic" => topic = Some(map.next_value_seed(Name)?),
                "partition" => partition = Some(map.next_value()?),
                "offset" => offset = Some(map.next_value()?),
                "timestamp" => timestamp = Some(map.next_value_seed(Millis)?),
                "timestampType" => r.timestamp_type = map.next_value_seed(Optional(Name))?,
                "key" => r.key = map.next_value_seed(Optional(Base64Text))?,
                "value" => r.value = map.next_value_seed(Optional(Base64Text))?,
                "headers" => r.headers = map.next_value_seed(RawHeaders)?,
                "valueSchemaMetadata" => r.value_schema_metadata = map.next_value()?,
                "keySchemaMetadata" => r.key_schema_metadata = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        r.topic = topic.ok_or_else(|| de::Error::missing_field("topic"))?;
        r.partition = partition.ok_or_else(|| de::Error::missing_field("partition"))?;
        r.offset = offset.ok_or_else(|| de::Error::missing_field("offset"))?;
        r.timestamp = timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?;
        Ok(r)
    }
}

/// Timestamps are integers in every event we have seen; a float (some producers' JSON) is rounded, not truncated.
/// Lambda sends a number; aws_lambda_events serializes a string. Accept both, exactly.
pub(super) struct Millis;

impl<'de> DeserializeSeed<'de> for Millis {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Millis {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("epoch milliseconds")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("timestamp {v} is not epoch milliseconds")))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<i64, E> {
        if f.is_finite() && f.abs() < 9.0e15 {
            Ok(f.round() as i64)
        } else {
            Err(E::custom(format!(
                "timestamp {f} is not epoch milliseconds"
            )))
        }
    }
    fn visit_str<E: de::Error>(self, t: &str) -> Result<i64, E> {
        let bad = || E::custom(format!("timestamp {t:?} is not epoch milliseconds"));
        let n: serde_json::Number = t.trim().parse().map_err(|_| bad())?;
        match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(i),
            (None, Some(f)) => self.visit_f64(f).map_err(|_: E| bad()),
            _ => Err(bad()),
        }
    }
}

/// The `headers` field, kept as its JSON text (see [`Headers`]); `null` or `[]` is no headers.
pub(super) struct RawHeaders;

impl<'de> DeserializeSeed<'de> for RawHeaders {
    type Value = Headers<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Headers<'de>, D::Error> {
        let raw = <&'de serde_json::value::RawValue>::deserialize(d)?.get();
        Ok(Headers(
            (raw != "null" && raw != "[]")
                .then_some(raw)
                .map(Cow::Borrowed),
        ))
    }
}

/// Header bytes arrive as JSON numbers; the AWS type reads them as i8, Java producers' tooling as 0..255.
/// Accept both and keep the byte. `headers` is a list of maps (one header each, as Lambda sends them), or null.
pub(super) struct HeaderList;

pub(super) type HeaderPairs<'de> = Vec<(Cow<'de, str>, Vec<u8>)>;

impl<'de> DeserializeSeed<'de> for HeaderList {
    type Value = HeaderPairs<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeaderList {
    type Value = HeaderPairs<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of headers")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while seq.next_element_seed(HeaderMap(&mut out))?.is_some() {}
        Ok(out)
    }
}

/// One element of `headers`: name → byte array, appended to the record's headers.
pub(super) struct HeaderMap<'l, 'de>(&'l mut HeaderPairs<'de>);

impl<'de> DeserializeSeed<'de> for HeaderMap<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderMap<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a header: name → byte array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key_seed(Name)? {
            let value = map.next_value_seed(Bytes(&name))?;
            self.0.push((name, value));
        }
        Ok(())
    }
}

pub(super) struct Bytes<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for Bytes<'_> {
    type Value = Vec<u8>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Bytes<'_> {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the bytes of header {} as numbers", self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut value = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(4096));
        while let Some(b) = seq.next_element::<i64>()? {
            if !(-128..=255).contains(&b) {
                return Err(de::Error::custom(format!(
                    "header {}: {b} is not a byte",
                    self.0
                )));
            }
            value.push(b as u8);
        }
        Ok(value)
    }
}
