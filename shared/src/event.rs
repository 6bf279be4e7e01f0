//! The MSK event as Lambda delivers it, and the one total order in which its records are applied.
//!
//! We parse the event with our own serde types instead of `aws_lambda_events::event::kafka::KafkaEvent`,
//! because that type (1.2) reads `timestamp` through an f64 (1545084650987 can come back as …986, and the
//! timestamp is both injected into messages and used for ordering), rejects a record without `headers`,
//! and drops `valueSchemaMetadata`. A test below checks that every event the AWS type can express parses
//! here to the same records.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The event sources whose payload has the MSK shape.
pub const EVENT_SOURCES: [&str; 2] = ["aws:kafka", "SelfManagedKafka"];

/// An MSK (or self-managed Kafka) event: `records` maps `"<topic>-<partition>"` to that partition's records.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MskEvent {
    pub event_source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    pub records: BTreeMap<String, Vec<Record>>,
}

/// One Kafka record, still encoded as the event carries it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Epoch milliseconds, read exactly (see the module doc).
    #[serde(deserialize_with = "exact_millis")]
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_type: Option<String>,
    /// Base64 of the key bytes; absent for a record without key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Base64 of the value bytes; `None` is a tombstone.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "headers")]
    pub headers: Vec<BTreeMap<String, Vec<u8>>>,
    /// Set by Lambda's schema-registry integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema_metadata: Option<SchemaMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema_metadata: Option<SchemaMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaMetadata {
    #[serde(default)]
    pub schema_id: Option<String>,
    #[serde(default)]
    pub data_format: Option<String>,
}

impl Record {
    /// Header values, in event order; a name may repeat, as in Kafka.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .flat_map(|h| h.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    /// The Kafka coordinates, for logs and reports.
    pub fn coordinates(&self) -> String {
        format!("{}-{}@{}", self.topic, self.partition, self.offset)
    }
}

/// What is wrong with an invocation payload that is not an MSK event.
#[derive(Debug, thiserror::Error)]
#[error(
    "not an MSK event: {0} (expected an object with eventSource \"aws:kafka\" or \"SelfManagedKafka\" and a records map of \"<topic>-<partition>\" to record lists)"
)]
pub struct NotAnMskEvent(pub String);

impl MskEvent {
    pub fn from_value(value: serde_json::Value) -> Result<Self, NotAnMskEvent> {
        if !value.is_object() {
            return Err(NotAnMskEvent(format!("the payload is {}", kind(&value))));
        }
        let event: MskEvent =
            serde_json::from_value(value).map_err(|e| NotAnMskEvent(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, NotAnMskEvent> {
        let event: MskEvent =
            serde_json::from_slice(bytes).map_err(|e| NotAnMskEvent(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    fn validate(&self) -> Result<(), NotAnMskEvent> {
        if !EVENT_SOURCES.contains(&self.event_source.as_str()) {
            return Err(NotAnMskEvent(format!(
                "eventSource is \"{}\"",
                self.event_source
            )));
        }
        Ok(())
    }

    pub fn record_count(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }

    /// All records in the order they are applied.
    ///
    /// Kafka orders records only within a partition, so each partition keeps its offset order and the
    /// partitions are merged by timestamp; ties go to (topic, partition, offset), which makes the order
    /// total and the same on every replay. A record with a later offset but an earlier timestamp therefore
    /// waits behind its predecessors instead of jumping ahead of them.
    pub fn ordered(self) -> Vec<Record> {
        let mut all: Vec<Record> = self.records.into_values().flatten().collect();
        // Groups each partition's records, in offset order. The event's lists are such runs already, which
        // the stable sort merges in near-linear time.
        all.sort_by(|a, b| {
            (a.topic.as_str(), a.partition, a.offset).cmp(&(
                b.topic.as_str(),
                b.partition,
                b.offset,
            ))
        });
        let order = merge_order(&all);
        let mut slots: Vec<Option<Record>> = all.into_iter().map(Some).collect();
        order.into_iter().filter_map(|i| slots[i].take()).collect()
    }
}

/// Where a record stands in the merge: timestamp first, then (topic, partition, offset) for a total order.
type Rank<'a> = (i64, &'a str, i32, i64);

fn rank(r: &Record) -> Rank<'_> {
    (r.timestamp, r.topic.as_str(), r.partition, r.offset)
}

/// The indices of `grouped` (partitions in runs, offsets ascending within) in apply order: the partitions
/// merged by timestamp, each partition's own order kept.
fn merge_order(grouped: &[Record]) -> Vec<usize> {
    // A min-heap of each partition's next record: (rank, index, end of its partition's run).
    let mut heads: BinaryHeap<Reverse<(Rank<'_>, usize, usize)>> = BinaryHeap::new();
    let mut start = 0;
    for i in 1..=grouped.len() {
        let same = |a: &Record, b: &Record| a.partition == b.partition && a.topic == b.topic;
        if i == grouped.len() || !same(&grouped[i], &grouped[start]) {
            heads.push(Reverse((rank(&grouped[start]), start, i)));
            start = i;
        }
    }
    let mut out = Vec::with_capacity(grouped.len());
    while let Some(Reverse((_, i, end))) = heads.pop() {
        out.push(i);
        if i + 1 < end {
            heads.push(Reverse((rank(&grouped[i + 1]), i + 1, end)));
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

/// Timestamps are integers in every event we have seen; a float (some producers' JSON) is rounded, not truncated.
/// Lambda sends a number; aws_lambda_events serializes a string. Accept both, exactly. (A visitor, not an
/// untagged enum: serde buffers every untagged value, and this runs once per record.)
fn exact_millis<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Millis;
    impl<'de> Visitor<'de> for Millis {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("epoch milliseconds")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v)
                .map_err(|_| E::custom(format!("timestamp {v} is not epoch milliseconds")))
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
    d.deserialize_any(Millis)
}

/// Header bytes arrive as JSON numbers; the AWS type reads them as i8, Java producers' tooling as 0..255.
/// Accept both and keep the byte. Read straight into bytes: a batch can carry a header on every record.
fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BTreeMap<String, Vec<u8>>>, D::Error> {
    struct Bytes<'a>(&'a str);
    impl<'de> DeserializeSeed<'de> for Bytes<'_> {
        type Value = Vec<u8>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Bytes<'_> {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "the bytes of header {} as numbers", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut value = Vec::with_capacity(seq.size_hint().unwrap_or(0));
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
    struct Header;
    impl<'de> Visitor<'de> for Header {
        type Value = BTreeMap<String, Vec<u8>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a header: name → byte array")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let value = map.next_value_seed(Bytes(&name))?;
                out.insert(name, value);
            }
            Ok(out)
        }
    }
    struct HeaderSeed;
    impl<'de> DeserializeSeed<'de> for HeaderSeed {
        type Value = BTreeMap<String, Vec<u8>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Header)
        }
    }
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Vec<BTreeMap<String, Vec<u8>>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of headers")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(h) = seq.next_element_seed(HeaderSeed)? {
                out.push(h);
            }
            Ok(out)
        }
    }
    d.deserialize_any(List)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(topic: &str, partition: i32, offset: i64, timestamp: i64) -> serde_json::Value {
        json!({"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp,
               "timestampType": "CREATE_TIME", "value": "e30=", "headers": []})
    }

    fn coords(records: &[Record]) -> Vec<(String, i32, i64)> {
        records
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.offset))
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
        let order = coords(&event.ordered());
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
        let order = coords(&event.ordered());
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
        let r = &event.records["t-0"][0];
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
        let pairs: Vec<_> = event.records["t-0"][0].header_pairs().collect();
        assert_eq!(pairs, vec![("a", &[104u8, 255][..]), ("a", &[255u8][..])]);
    }

    #[test]
    fn timestamps_as_text_or_float_and_bad_values() {
        let read = |timestamp: serde_json::Value, headers: serde_json::Value| {
            MskEvent::from_value(json!({"eventSource": "aws:kafka", "records": {"t-0": [
                {"topic": "t", "partition": 0, "offset": 1, "timestamp": timestamp, "headers": headers}]}}))
            .map(|e| e.records["t-0"][0].clone())
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
        let e = read(json!(1), json!([{"h": [256]}]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("header h: 256 is not a byte"), "{e}");
        assert!(read(json!(1), json!([{"h": "text"}])).is_err());
        assert!(read(json!(1), json!({"h": [1]})).is_err());
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
        let ours = MskEvent::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
        let r = &ours.records["orders-3"][0];
        assert_eq!((r.topic.as_str(), r.partition, r.offset), ("orders", 3, 42));
        assert_eq!(r.timestamp, 1_700_000_000_123);
        assert_eq!(r.key.as_deref(), Some("a2V5"));
        assert_eq!(r.header_pairs().next(), Some(("h", &[1u8, 254][..])));
    }
}
