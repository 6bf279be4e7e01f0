//! The MSK event as Lambda delivers it, and the one total order in which its records are applied.
//!
//! We parse the event with our own types instead of `aws_lambda_events::event::kafka::KafkaEvent`, because
//! that type (1.2) reads `timestamp` through an f64 (1545084650987 can come back as …986, and the timestamp is
//! both injected into messages and used for ordering), rejects a record without `headers`, drops
//! `valueSchemaMetadata`, and copies every string out of the payload. Here a record borrows its topic, key and
//! value from the payload text (a 6 MB batch is mostly base64 that is read once, then decoded), and the
//! partition lists are read into one list. A test below checks that every event the AWS type can express parses
//! here to the same records.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use crate::text::Name;

mod seeds;
use seeds::{EventSeed, HeaderList, same_topic};
pub(crate) use seeds::{repeated_partition, share_topic};
mod split;

/// The event sources whose payload has the MSK shape.
pub const EVENT_SOURCES: [&str; 2] = ["aws:kafka", "SelfManagedKafka"];

/// An MSK (or self-managed Kafka) event. In JSON, `records` maps `"<topic>-<partition>"` to that partition's
/// records; here they are one list, partition after partition, each partition's records in event order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MskEvent<'a> {
    /// `aws:kafka` (MSK) or `SelfManagedKafka`.
    pub event_source: Cow<'a, str>,
    /// The MSK cluster's ARN (MSK only).
    pub event_source_arn: Option<Cow<'a, str>>,
    /// The brokers, comma-separated.
    pub bootstrap_servers: Option<Cow<'a, str>>,
    /// Every record of the batch, flattened from the event's `topic-partition` lists.
    pub records: Vec<Record<'a>>,
}

/// One Kafka record, still encoded as the event carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    /// The record's topic.
    pub topic: Cow<'a, str>,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// Epoch milliseconds, read exactly (see the module doc).
    pub timestamp: i64,
    /// `CREATE_TIME` or `LOG_APPEND_TIME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_type: Option<Cow<'a, str>>,
    /// Base64 of the key bytes; absent for a record without key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Cow<'a, str>>,
    /// Base64 of the value bytes; `None` is a tombstone.
    pub value: Option<Cow<'a, str>>,
    /// The record's headers, in order.
    pub headers: Headers<'a>,
    /// Set by Lambda's schema-registry integration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_schema_metadata: Option<Box<SchemaMetadata>>,
    /// What Lambda's schema-registry integration says about the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_schema_metadata: Option<Box<SchemaMetadata>>,
}

/// A record's Kafka headers as the event carries them: the JSON text of their list, `[{"name": [bytes…]}, …]`,
/// read when a mapping or `publish` asks for them.
///
/// Every header byte is a JSON number, and most batches never read a header: parsing them all up front (and
/// allocating their bytes) was about 15 % of decoding a 6 MB batch whose records carry one 8-byte header each.
/// The event is still checked to be JSON when it is parsed; what the text says is checked when it is read
/// ([`Headers::pairs`]), so a malformed header can fail only the records whose mapping reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers<'a>(Option<Cow<'a, str>>);

impl Headers<'_> {
    /// Headers from (name, bytes) pairs, in order.
    pub fn from_pairs<'n>(
        pairs: impl IntoIterator<Item = (&'n str, &'n [u8])>,
    ) -> Headers<'static> {
        let list: Vec<BTreeMap<&str, &[u8]>> = pairs
            .into_iter()
            .map(|(name, value)| BTreeMap::from([(name, value)]))
            .collect();
        if list.is_empty() {
            return Headers(None);
        }
        // Names and byte lists always serialize.
        Headers(serde_json::to_string(&list).ok().map(Cow::Owned))
    }

    /// Every header, in event order; a name may repeat, as in Kafka. An error says which header is not a list
    /// of bytes.
    pub fn pairs(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let Some(text) = self.0.as_deref() else {
            return Ok(Vec::new());
        };
        let mut de = serde_json::Deserializer::from_str(text);
        HeaderList
            .deserialize(&mut de)
            .map(|list| {
                list.into_iter()
                    .map(|(name, value)| (name.into_owned(), value))
                    .collect()
            })
            .map_err(|e| format!("headers: {e}"))
    }

    /// The bytes of the last header named `name` (a name may repeat; the last is the newest).
    pub fn last(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .pairs()?
            .into_iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    /// Whether the record has no header.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The JSON text of the list exactly as the event carried it (`None`: no headers); what a dead letter keeps.
    pub fn json_text(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Headers from the JSON text of their list, as [`Headers::json_text`] gave it; read only when asked for,
    /// like an event's.
    pub fn from_json_text(text: Option<String>) -> Headers<'static> {
        Headers(text.map(Cow::Owned))
    }

    /// The same headers, owning their strings.
    pub fn into_owned(self) -> Headers<'static> {
        Headers(self.0.map(|t| Cow::Owned(t.into_owned())))
    }

    fn borrowed(&self) -> Headers<'_> {
        Headers(self.0.as_deref().map(Cow::Borrowed))
    }
}

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs = self.pairs().map_err(serde::ser::Error::custom)?;
        let mut seq = s.serialize_seq(Some(pairs.len()))?;
        for (name, value) in &pairs {
            seq.serialize_element(&BTreeMap::from([(name.as_str(), value.as_slice())]))?;
        }
        seq.end()
    }
}

/// A record's `keySchemaMetadata` / `valueSchemaMetadata`, set by Lambda's schema-registry integration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaMetadata {
    /// The schema's id in its registry (a number for Confluent, a UUID for Glue).
    #[serde(default)]
    pub schema_id: Option<String>,
    /// `AVRO`, `JSON` or `PROTOBUF`.
    #[serde(default)]
    pub data_format: Option<String>,
}

impl Record<'_> {
    /// The Kafka coordinates, for logs and reports.
    pub fn coordinates(&self) -> String {
        format!("{}-{}@{}", self.topic, self.partition, self.offset)
    }

    /// The key of the event's `records` map this record is listed under.
    pub fn partition_key(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// The same record, borrowing from this one.
    pub fn borrowed(&self) -> Record<'_> {
        Record {
            topic: Cow::Borrowed(&self.topic),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            timestamp_type: self.timestamp_type.as_deref().map(Cow::Borrowed),
            key: self.key.as_deref().map(Cow::Borrowed),
            value: self.value.as_deref().map(Cow::Borrowed),
            headers: self.headers.borrowed(),
            value_schema_metadata: self.value_schema_metadata.clone(),
            key_schema_metadata: self.key_schema_metadata.clone(),
        }
    }

    /// The same record, owning its strings.
    pub fn into_owned(self) -> Record<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Record {
            topic: own(self.topic),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            timestamp_type: self.timestamp_type.map(own),
            key: self.key.map(own),
            value: self.value.map(own),
            headers: self.headers.into_owned(),
            value_schema_metadata: self.value_schema_metadata,
            key_schema_metadata: self.key_schema_metadata,
        }
    }
}

/// What is wrong with an invocation payload that is not an MSK event.
#[derive(Debug, thiserror::Error)]
#[error(
    "not an MSK event: {0} (expected an object with eventSource \"aws:kafka\" or \"SelfManagedKafka\" and a records map of \"<topic>-<partition>\" to record lists)"
)]
pub struct NotAnMskEvent(pub String);

impl MskEvent<'static> {
    /// An event from an already parsed JSON value (tests, and callers that hold one).
    pub fn from_value(value: serde_json::Value) -> Result<Self, NotAnMskEvent> {
        if !value.is_object() {
            return Err(NotAnMskEvent(format!("the payload is {}", kind(&value))));
        }
        // Through the text, as Lambda delivers it: headers are kept as their JSON text.
        let text = value.to_string();
        MskEvent::parse(&text).map(MskEvent::into_owned)
    }
}

/// The CPUs this process may use (its affinity and cgroup quota), 1 when that cannot be told: the threads
/// [`MskEvent::parse`] reads on, and `codec.threads`' default (the pipeline's decode runs after this stage and
/// takes it from here).
pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl<'a> MskEvent<'a> {
    /// Parses the event's JSON text; records borrow their strings from it. A large event's records are read on
    /// as many threads as the process may use (see [`MskEvent::parse_on`]).
    pub fn parse(text: &'a str) -> Result<Self, NotAnMskEvent> {
        Self::parse_on(text, available_threads())
    }

    /// [`MskEvent::parse`] on at most `threads` threads: the records of an event of 512 KiB or more are read in
    /// shares of at least 256 KiB, one thread each (a 6 MB batch on two threads: 0.61 of serde's one pass).
    /// The shares are cut where records start and checked to meet, so the event is the one a single pass
    /// reads, with any number of threads (`event/split.rs`).
    pub fn parse_on(text: &'a str, threads: usize) -> Result<Self, NotAnMskEvent> {
        Self::parse_with(text, threads, split::MIN_SHARE)
    }

    /// [`MskEvent::parse_on`] with shares of at least `min_share` bytes: the fuzz target and tests cut small
    /// events with it.
    #[doc(hidden)]
    pub fn parse_with(
        text: &'a str,
        threads: usize,
        min_share: usize,
    ) -> Result<Self, NotAnMskEvent> {
        let event = match split::parse(text, threads, min_share) {
            Some(event) => event,
            // Not the event's usual shape, or not an event: serde reads it whole, and says what is wrong.
            None => Self::read_whole(text)?,
        };
        event.check_escaped(text)?;
        event.validate()?;
        Ok(event)
    }

    /// The event read by serde in one pass, as [`MskEvent::parse`] reads what it does not expect; tests
    /// compare the two.
    #[doc(hidden)]
    pub fn parse_serial(text: &'a str) -> Result<Self, NotAnMskEvent> {
        let event = Self::read_whole(text)?;
        event.check_escaped(text)?;
        event.validate()?;
        Ok(event)
    }

    fn read_whole(text: &'a str) -> Result<Self, NotAnMskEvent> {
        let mut de = serde_json::Deserializer::from_str(text);
        EventSeed
            .deserialize(&mut de)
            .and_then(|e| de.end().map(|()| e))
            .map_err(|e| NotAnMskEvent(crate::text::json_error(&e)))
    }

    /// The check [`seeds::Base64Text`] leaves to the end: a key or value that had an escape and holds a control
    /// character once unescaped may have held it raw, which JSON forbids. The whole text is then read again
    /// by serde_json, which refuses raw control characters in every string. Lambda's values are base64,
    /// which has no escape, so this almost never runs.
    fn check_escaped(&self, text: &str) -> Result<(), NotAnMskEvent> {
        let suspect = |f: &Option<Cow<'_, str>>| matches!(f, Some(Cow::Owned(s)) if crate::text::has_control(s.as_bytes()));
        if self
            .records
            .iter()
            .any(|r| suspect(&r.key) || suspect(&r.value))
        {
            serde_json::from_str::<IgnoredAny>(text)
                .map_err(|e| NotAnMskEvent(crate::text::json_error(&e)))?;
        }
        Ok(())
    }

    /// As [`MskEvent::parse`]; the bytes must be UTF-8 (checked once, for the whole payload).
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, NotAnMskEvent> {
        Self::from_slice_on(bytes, available_threads())
    }

    /// As [`MskEvent::parse_on`], from bytes that must be UTF-8.
    pub fn from_slice_on(bytes: &'a [u8], threads: usize) -> Result<Self, NotAnMskEvent> {
        let text = crate::text::utf8(bytes).map_err(|e| {
            NotAnMskEvent(format!(
                "the payload is not UTF-8 text (invalid byte at {})",
                e.valid_up_to()
            ))
        })?;
        Self::parse_on(text, threads)
    }

    fn validate(&self) -> Result<(), NotAnMskEvent> {
        if !EVENT_SOURCES.contains(&self.event_source.as_ref()) {
            return Err(NotAnMskEvent(format!(
                "eventSource is \"{}\"",
                self.event_source
            )));
        }
        Ok(())
    }

    /// How many records the batch holds.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// The same event, owning its strings.
    pub fn into_owned(self) -> MskEvent<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        MskEvent {
            event_source: own(self.event_source),
            event_source_arn: self.event_source_arn.map(own),
            bootstrap_servers: self.bootstrap_servers.map(own),
            records: self.records.into_iter().map(Record::into_owned).collect(),
        }
    }

    /// Indices into `records`, in the order the records are applied.
    ///
    /// Kafka orders records only within a partition, so each partition keeps its offset order and the
    /// partitions are merged by timestamp; ties go to (topic, partition, offset), which makes the order
    /// total and the same on every replay. A record with a later offset but an earlier timestamp therefore
    /// waits behind its predecessors instead of jumping ahead of them.
    pub fn order(&self) -> Vec<usize> {
        let records = &self.records;
        let same = |a: &Record<'_>, b: &Record<'_>| {
            a.partition == b.partition && same_topic(&a.topic, &b.topic)
        };
        // The event's partition lists, as read: runs of one partition in ascending offsets.
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=records.len() {
            if i == records.len()
                || !same(&records[i - 1], &records[i])
                || records[i].offset <= records[i - 1].offset
            {
                runs.push((start, i));
                start = i;
            }
        }
        let mut partitions: Vec<(&str, i32)> = runs
            .iter()
            .map(|&(s, _)| (records[s].topic.as_ref(), records[s].partition))
            .collect();
        partitions.sort_unstable();
        if partitions.windows(2).all(|w| w[0] != w[1]) {
            // Each partition is one run already (what Lambda sends): merge them as they are, each run ranked
            // by its partition's place in (topic, partition) order.
            let runs: Vec<(usize, usize, usize)> = runs
                .iter()
                .map(|&(s, e)| {
                    let p = (records[s].topic.as_ref(), records[s].partition);
                    (s, e, partitions.binary_search(&p).unwrap_or_default())
                })
                .collect();
            let identity: Vec<usize> = (0..records.len()).collect();
            return merge_order(records, &identity, &runs);
        }
        // A partition split across lists, or offsets out of order: group each partition's records, in offset
        // order, first.
        let mut grouped: Vec<usize> = (0..records.len()).collect();
        grouped.sort_by(|&a, &b| {
            let (a, b) = (&records[a], &records[b]);
            (a.topic.as_ref(), a.partition, a.offset).cmp(&(
                b.topic.as_ref(),
                b.partition,
                b.offset,
            ))
        });
        // One run per partition, in (topic, partition) order: a run's index is its partition's rank.
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=grouped.len() {
            if i == grouped.len() || !same(&records[grouped[i - 1]], &records[grouped[i]]) {
                runs.push((start, i, runs.len()));
                start = i;
            }
        }
        merge_order(records, &grouped, &runs)
    }

    /// The records in the order they are applied.
    pub fn ordered(&self) -> impl Iterator<Item = &Record<'a>> {
        self.order().into_iter().map(|i| &self.records[i])
    }
}

/// Where a record stands in the merge: (timestamp, its partition's rank, offset).
type Rank = (i64, usize, i64);

/// `grouped` (indices of `records`), whose `runs` (start, end, the partition's rank in (topic, partition)
/// order) are each one partition in offset order, in apply order: the partitions merged by timestamp, each
/// partition's own order kept. A record's place in the merge is (timestamp, topic, partition, offset), with
/// the partition's rank standing for its topic and number: integers only, no string read per record.
fn merge_order(
    records: &[Record<'_>],
    grouped: &[usize],
    runs: &[(usize, usize, usize)],
) -> Vec<usize> {
    let rank = |i: usize, partition: usize| -> Rank {
        let r = &records[grouped[i]];
        (r.timestamp, partition, r.offset)
    };
    // A min-heap of each partition's next record: (rank, position in `grouped`, end of its partition's run).
    let mut heads: BinaryHeap<Reverse<(Rank, usize, usize)>> = runs
        .iter()
        .map(|&(start, end, partition)| Reverse((rank(start, partition), start, end)))
        .collect();
    let mut out = Vec::with_capacity(grouped.len());
    while let Some(Reverse(((_, partition, _), i, end))) = heads.pop() {
        out.push(grouped[i]);
        if i + 1 < end {
            heads.push(Reverse((rank(i + 1, partition), i + 1, end)));
        }
    }
    out
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Serialize for MskEvent<'_> {
    /// The JSON Lambda sends: `records` grouped by `"<topic>-<partition>"`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut lists: BTreeMap<String, Vec<&Record<'_>>> = BTreeMap::new();
        for r in &self.records {
            lists.entry(r.partition_key()).or_default().push(r);
        }
        let fields = 2
            + usize::from(self.event_source_arn.is_some())
            + usize::from(self.bootstrap_servers.is_some());
        let mut map = s.serialize_map(Some(fields))?;
        map.serialize_entry("eventSource", &self.event_source)?;
        if let Some(arn) = &self.event_source_arn {
            map.serialize_entry("eventSourceArn", arn)?;
        }
        if let Some(servers) = &self.bootstrap_servers {
            map.serialize_entry("bootstrapServers", servers)?;
        }
        map.serialize_entry("records", &lists)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(topic: &str, partition: i32, offset: i64, timestamp: i64) -> serde_json::Value {
        json!({"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp,
               "timestampType": "CREATE_TIME", "value": "e30=", "headers": []})
    }

    fn coords(event: &MskEvent<'_>) -> Vec<(String, i32, i64)> {
        event
            .ordered()
            .map(|r| (r.topic.to_string(), r.partition, r.offset))
            .collect()
    }

    #[test]
    fn merges_partitions_by_timestamp_and_never_reorders_a_partition() {
        let event = MskEvent::from_value(json!({
            "eventSource": "aws:kafka",
            "records": {
                "t-0": [rec("t", 0, 10, 100), rec("t", 0, 11, 50), rec("t", 0, 12, 300)],
                "t-1": [rec("t", 1, 5, 60), rec("t", 1, 6, 200)],
                "u-0": [rec("u", 0, 1, 100)]
            }
        }))
        .unwrap();
        let order = coords(&event);
        // t-0@11 has the earliest timestamp but must wait for t-0@10; the tie at 100 goes to topic t.
        let expected = vec![
            ("t".to_string(), 1, 5),
            ("t".to_string(), 0, 10),
            ("t".to_string(), 0, 11),
            ("u".to_string(), 0, 1),
            ("t".to_string(), 1, 6),
            ("t".to_string(), 0, 12),
        ];
        assert_eq!(order, expected);
    }

    #[test]
    fn a_list_shares_its_topic_and_a_same_numbered_partition_of_another_topic_is_its_own() {
        // "b-0" follows "a-0" with a higher offset: only the topic tells the two partitions apart.
        let text = json!({
            "eventSource": "aws:kafka",
            "records": {
                "a-0": [rec("a", 0, 1, 10), rec("a", 0, 2, 30)],
                "b-0": [rec("b", 0, 5, 20), rec("b", 0, 6, 40)]
            }
        })
        .to_string();
        for threads in [1, 2] {
            let event = MskEvent::parse_with(&text, threads, 16).unwrap();
            let r = &event.records;
            if threads == 1 {
                // (Read in shares, a cut may fall between the two.)
                assert!(std::ptr::eq(r[0].topic.as_ref(), r[1].topic.as_ref()));
            }
            assert!(!std::ptr::eq(r[1].topic.as_ref(), r[2].topic.as_ref()));
            assert_eq!(
                coords(&event),
                vec![
                    ("a".to_string(), 0, 1),
                    ("b".to_string(), 0, 5),
                    ("a".to_string(), 0, 2),
                    ("b".to_string(), 0, 6),
                ]
            );
        }
    }

    #[test]
    fn a_partition_split_across_lists_or_out_of_offset_order_is_grouped_first() {
        // "t-0" appears under two keys, and its second list is not in offset order.
        let event = MskEvent::from_value(json!({
            "eventSource": "aws:kafka",
            "records": {
                "t-0": [rec("t", 0, 3, 30), rec("t", 0, 1, 10)],
                "t-1": [rec("t", 1, 1, 5)],
                "x": [rec("t", 0, 2, 1)]
            }
        }))
        .unwrap();
        let order = coords(&event);
        assert_eq!(
            order,
            vec![
                ("t".to_string(), 1, 1),
                ("t".to_string(), 0, 1),
                ("t".to_string(), 0, 2),
                ("t".to_string(), 0, 3),
            ]
        );
        let empty =
            MskEvent::from_value(json!({"eventSource": "aws:kafka", "records": {}})).unwrap();
        assert!(empty.order().is_empty());
    }

    #[test]
    fn ties_are_broken_by_topic_partition_offset() {
        let event = MskEvent::from_value(json!({
            "eventSource": "SelfManagedKafka",
            "records": {
                "b-1": [rec("b", 1, 7, 5)],
                "a-2": [rec("a", 2, 9, 5)],
                "a-1": [rec("a", 1, 3, 5), rec("a", 1, 4, 5)]
            }
        }))
        .unwrap();
        let order = coords(&event);
        assert_eq!(
            order,
            vec![
                ("a".to_string(), 1, 3),
                ("a".to_string(), 1, 4),
                ("a".to_string(), 2, 9),
                ("b".to_string(), 1, 7)
            ]
        );
    }

    #[test]
    fn timestamp_is_exact_and_headers_optional() {
        let event = MskEvent::from_value(json!({
            "eventSource": "aws:kafka",
            "records": {"t-0": [{"topic": "t", "partition": 0, "offset": 1, "timestamp": 1545084650987i64, "value": null}]}
        }))
        .unwrap();
        let r = &event.records[0];
        assert_eq!(r.timestamp, 1545084650987);
        assert!(r.headers.is_empty());
        assert_eq!(r.value, None);
    }

    #[test]
    fn header_bytes_accept_signed_and_unsigned() {
        let event = MskEvent::from_value(json!({
            "eventSource": "aws:kafka",
            "records": {"t-0": [{"topic": "t", "partition": 0, "offset": 1, "timestamp": 1,
                "headers": [{"a": [104, -1]}, {"a": [255]}]}]}
        }))
        .unwrap();
        let headers = &event.records[0].headers;
        assert_eq!(
            headers.pairs().unwrap(),
            vec![
                ("a".to_string(), vec![104u8, 255]),
                ("a".to_string(), vec![255u8])
            ]
        );
        assert_eq!(headers.last("a"), Ok(Some(vec![255u8])));
        assert_eq!(headers.last("b"), Ok(None));
        let again = Headers::from_pairs([("a", &[104u8, 255][..]), ("a", &[255u8][..])]);
        assert_eq!(again.pairs(), headers.pairs());
    }

    #[test]
    fn timestamps_as_text_or_float_and_bad_values() {
        let read = |timestamp: serde_json::Value, headers: serde_json::Value| {
            MskEvent::from_value(json!({"eventSource": "aws:kafka", "records": {"t-0": [
                {"topic": "t", "partition": 0, "offset": 1, "timestamp": timestamp, "headers": headers}]}}))
            .map(|e| e.records[0].clone())
        };
        assert_eq!(
            read(json!("1545084650987"), json!(null)).unwrap().timestamp,
            1545084650987
        );
        assert_eq!(
            read(json!(1545084650987.6), json!([])).unwrap().timestamp,
            1545084650988
        );
        assert_eq!(read(json!(" 17.4 "), json!([])).unwrap().timestamp, 17);
        for bad in [json!("soon"), json!(true), json!(1e300), json!(u64::MAX)] {
            let e = read(bad.clone(), json!([])).unwrap_err().to_string();
            assert!(e.contains("not an MSK event"), "{bad}: {e}");
        }
        // Headers are checked when they are read: a malformed one fails only whoever reads it.
        let headers = |h: serde_json::Value| read(json!(1), h).unwrap().headers;
        let e = headers(json!([{"h": [256]}])).pairs().unwrap_err();
        assert!(e.contains("header h: 256 is not a byte"), "{e}");
        assert!(headers(json!([{"h": "text"}])).pairs().is_err());
        assert!(headers(json!({"h": [1]})).last("h").is_err());
        assert!(headers(json!(null)).is_empty());
        assert_eq!(headers(json!([])).pairs(), Ok(vec![]));
    }

    #[test]
    fn records_borrow_from_the_payload_and_serialize_back_to_the_same_event() {
        let text = serde_json::json!({
            "eventSource": "SelfManagedKafka", "bootstrapServers": "b:9092",
            "records": {
                "t-1": [rec("t", 1, 5, 60), rec("t", 1, 6, 200)],
                "t-0": [{"topic": "t", "partition": 0, "offset": 1, "timestamp": 1, "key": "a2V5",
                         "value": null, "headers": [{"h": [1, 2]}, {"h": [3]}],
                         "valueSchemaMetadata": {"schemaId": "7", "dataFormat": "AVRO"}}]
            }
        })
        .to_string();
        let event = MskEvent::parse(&text).unwrap();
        assert_eq!(event.record_count(), 3);
        // Partition lists one after the other, in the event's order.
        let listed: Vec<(i32, i64)> = event
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        assert_eq!(listed, vec![(1, 5), (1, 6), (0, 1)]);
        let r = &event.records[0];
        assert!(matches!(r.topic, Cow::Borrowed("t")));
        assert!(matches!(r.value, Some(Cow::Borrowed("e30="))));
        let r = &event.records[2];
        assert_eq!(r.value, None);
        assert!(matches!(r.key, Some(Cow::Borrowed("a2V5"))));
        assert_eq!(
            r.headers.pairs().unwrap(),
            vec![
                ("h".to_string(), vec![1u8, 2]),
                ("h".to_string(), vec![3u8])
            ]
        );
        assert_eq!(
            r.value_schema_metadata
                .as_deref()
                .and_then(|m| m.schema_id.as_deref()),
            Some("7")
        );
        let back = serde_json::to_value(&event).unwrap();
        let again: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["records"]["t-0"], again["records"]["t-0"]);
        assert_eq!(back["records"]["t-1"], again["records"]["t-1"]);
        assert_eq!(back["bootstrapServers"], "b:9092");
        let again = MskEvent::from_value(back).unwrap();
        assert_eq!(
            again.ordered().collect::<Vec<_>>(),
            event.ordered().collect::<Vec<_>>()
        );
    }

    /// JSON forbids raw control characters in strings, and every JSON parser refuses them: so does the event
    /// reader, in keys and values too (which it reads as bytes, for speed), on one thread or several. Escaped
    /// ones are valid JSON: the record is then refused later, by base64, with its reason.
    #[test]
    fn a_raw_control_character_in_any_string_is_invalid_json() {
        let record = |value: &str| {
            format!(
                "{{\"topic\":\"t\",\"partition\":0,\"offset\":1,\"timestamp\":1,\"key\":\"a2V5\",\"value\":\"{value}\"}}"
            )
        };
        let event = |records: &[String]| {
            format!(
                "{{\"eventSource\":\"aws:kafka\",\"records\":{{\"t-0\":[{}]}}}}",
                records.join(",")
            )
        };
        let fine: Vec<String> = (0..40).map(|_| record("e30=")).collect();
        for c in ['\t', '\u{1}', '\0', '\n', '\u{1f}'] {
            for field in ["value", "key", "topic"] {
                for at in [0, 39] {
                    let mut records = fine.clone();
                    records[at] = records[at].replacen(
                        &format!("\"{field}\":\""),
                        &format!("\"{field}\":\"{c}"),
                        1,
                    );
                    let text = event(&records);
                    for threads in [1, 2, 4] {
                        let err = MskEvent::parse_with(&text, threads, 64).unwrap_err();
                        assert!(
                            err.0.contains("control character"),
                            "{c:?} in {field} of record {at}, {threads} threads: {err}"
                        );
                    }
                    assert!(MskEvent::parse_serial(&text).is_err());
                    // After an escape in the same string, which makes serde_json unescape it into a copy.
                    let mut records = fine.clone();
                    records[at] = records[at].replacen(
                        &format!("\"{field}\":\""),
                        &format!("\"{field}\":\"\\/{c}"),
                        1,
                    );
                    let text = event(&records);
                    for threads in [1, 2, 4] {
                        let err = MskEvent::parse_with(&text, threads, 64).unwrap_err();
                        assert!(err.0.contains("control character"), "{err}");
                    }
                }
            }
        }
        // Escaped, it is JSON: the value holds the character, which base64 decoding refuses later.
        let text = event(&[record("e3\\u00010="), record("\\/\\t")]);
        let parsed = MskEvent::parse(&text).unwrap();
        assert_eq!(parsed.records[0].value.as_deref(), Some("e3\u{1}0="));
        assert_eq!(parsed.records[1].value.as_deref(), Some("/\t"));
        // Whitespace between tokens is not in a string.
        let pretty = text.replace(",", ",\n\t ");
        assert_eq!(MskEvent::parse(&pretty).unwrap(), parsed);
    }

    /// A records map that names a partition twice is refused (the last list would otherwise replace the first
    /// without a trace, or both be read as one).
    #[test]
    fn a_partition_listed_twice_is_refused() {
        let list = |offset: i64| {
            format!(
                "[{{\"topic\":\"t\",\"partition\":0,\"offset\":{offset},\"timestamp\":1,\"value\":\"e30=\"}}]"
            )
        };
        let filler: Vec<String> = (1..30).map(|p| format!("\"u-{p}\":{}", list(p))).collect();
        let text = format!(
            "{{\"eventSource\":\"aws:kafka\",\"records\":{{\"t-0\":{},{},\"t-0\":{}}}}}",
            list(1),
            filler.join(","),
            list(2)
        );
        for threads in [1, 2, 3, 8] {
            let err = MskEvent::parse_with(&text, threads, 64).unwrap_err();
            assert!(
                err.0
                    .contains("the records map lists \"t-0\" twice (each partition's records must be one list)")
                    && err.0.contains("at line 1 column"),
                "{threads} threads: {err}"
            );
        }
        // Escaped differently, the same key.
        let escaped = text.replacen("\"t-0\"", "\"t\\u002d0\"", 1);
        assert!(MskEvent::parse(&escaped).unwrap_err().0.contains("twice"));
        // Two lists of two partitions are fine.
        let two = text.replacen("\"t-0\"", "\"t-1\"", 1);
        assert_eq!(MskEvent::parse(&two).unwrap().records.len(), 31);
    }

    #[test]
    fn a_lone_surrogate_escape_says_what_is_wrong() {
        let base = r#"{"eventSource":"aws:kafka","records":{"t-0":[{"topic":"T","partition":0,"offset":1,"timestamp":1,"key":"K","value":"e30="}]}}"#;
        for (place, with) in [
            ("\"T\"", r#""t\ud800""#),
            ("\"T\"", r#""t\ud800\u0041""#),
            ("\"T\"", r#""\udc00""#),
            ("\"K\"", r#""a\ud800b""#),
            ("\"aws:kafka\"", r#""aws:kafka\udbff""#),
        ] {
            let text = base.replacen(place, with, 1);
            let err = MskEvent::parse(&text).unwrap_err().0;
            assert!(
                err.contains("lone UTF-16 surrogate") && err.contains("not a character"),
                "{with}: {err}"
            );
            assert!(!err.contains("unexpected end of hex escape"), "{err}");
        }
    }

    #[test]
    fn escaped_strings_are_read_too() {
        let text = r#"{"eventSource":"aws:kafka","records":{"t-0":[{"topic":"t1","partition":0,"offset":1,"timestamp":1,"value":"e30="}]}}"#;
        let event = MskEvent::parse(text).unwrap();
        assert_eq!(event.records[0].topic, "t1");
        assert_eq!(event.records[0].value.as_deref(), Some("e30="));
    }

    #[test]
    fn a_record_without_its_coordinates_is_not_an_event() {
        for missing in ["topic", "partition", "offset", "timestamp"] {
            let mut record = rec("t", 0, 1, 1);
            record.as_object_mut().unwrap().remove(missing);
            let err = MskEvent::from_value(
                serde_json::json!({"eventSource": "aws:kafka", "records": {"t-0": [record]}}),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("missing field `{missing}`")), "{err}");
        }
        let err = MskEvent::from_slice(
            b"{\"eventSource\": \"aws:kafka\", \"records\": {}, \"x\": \"\xff\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = MskEvent::parse(r#"{"eventSource": "aws:kafka"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `records`"), "{err}");
    }

    #[test]
    fn rejects_what_is_not_an_msk_event() {
        let sqs = MskEvent::from_value(json!({"Records": [{"eventSource": "aws:sqs"}]}));
        assert!(sqs.unwrap_err().to_string().contains("not an MSK event"));
        let other = MskEvent::from_value(json!({"eventSource": "aws:sqs", "records": {}}));
        assert!(other.unwrap_err().to_string().contains("aws:sqs"));
        assert!(MskEvent::from_value(json!([1])).is_err());
    }

    #[test]
    fn reads_every_event_the_aws_type_writes() {
        use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
        let mut record = KafkaRecord::default();
        record.topic = Some("orders".into());
        record.partition = 3;
        record.offset = 42;
        record.timestamp = aws_lambda_events::encodings::MillisecondTimestamp(
            chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        );
        record.key = Some("a2V5".into());
        record.value = Some("e30=".into());
        record.headers = vec![[("h".to_string(), vec![1i8, -2])].into_iter().collect()];
        let mut event = KafkaEvent::default();
        event.event_source = Some("aws:kafka".into());
        event.records.insert("orders-3".into(), vec![record]);
        let text = serde_json::to_vec(&event).unwrap();
        let ours = MskEvent::from_slice(&text).unwrap();
        let r = &ours.records[0];
        assert_eq!((r.topic.as_ref(), r.partition, r.offset), ("orders", 3, 42));
        assert_eq!(r.timestamp, 1_700_000_000_123);
        assert_eq!(r.key.as_deref(), Some("a2V5"));
        assert_eq!(
            r.headers.pairs().unwrap(),
            vec![("h".to_string(), vec![1u8, 254])]
        );
    }
}
