//! `publish`: the records of event files produced to their topics and partitions, as a producer made them.

use super::*;

/// The producer's context: only the quiet logging, shared with `publish` (librdkafka's wrapper of the
/// context does not hand it back).
pub(super) struct ProducerContext {
    pub(super) quiet: Arc<Quiet>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.quiet.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(&error, reason);
    }
}

/// Produces every record of `events` to its topic and partition, with its key, headers, timestamp and
/// decoded value (a tombstone stays a tombstone), partitions in offset order. Every record is checked
/// before the first is sent, so a bad file publishes nothing. A record not delivered within `timeout`
/// (`message.timeout.ms`; `-X` may override it) fails. Returns how many records were published; the error of a
/// publish that did not deliver everything says how many were delivered and which were not.
pub async fn publish(
    brokers: &str,
    properties: &[(String, String)],
    timeout: Duration,
    events: Vec<MskEvent<'_>>,
) -> Result<usize, String> {
    struct Outgoing<'e> {
        record: &'e Record<'e>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
    }
    let timeout_ms = timeout.as_millis();
    // librdkafka reads 0 as "no limit", which is what this bound is for.
    if timeout_ms == 0 {
        return Err("the delivery timeout must be at least 1ms".into());
    }
    let mut outgoing = Vec::new();
    for event in &events {
        for record in event.ordered() {
            let decode = |what: &str, text: &Option<std::borrow::Cow<'_, str>>| {
                text.as_deref()
                    .map(crate::decode::base64_decode)
                    .transpose()
                    .map_err(|e| format!("{} {what}: {e}", record.coordinates()))
            };
            let key = decode("key", &record.key)?;
            let value = decode("value", &record.value)?;
            let headers = record
                .headers
                .pairs()
                .map_err(|e| format!("{} {e}", record.coordinates()))?;
            outgoing.push(Outgoing {
                record,
                key,
                value,
                headers,
            });
        }
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // One request in flight per connection: a retried send can never overtake the next one, so every
        // partition keeps the event's offset order (without needing the broker to support idempotence).
        .set("max.in.flight.requests.per.connection", "1")
        .set(
            "message.timeout.ms",
            timeout_ms.min(i32::MAX as u128).to_string(),
        );
    for (k, v) in properties {
        config.set(k, v);
    }
    let quiet = Arc::new(Quiet::default());
    let producer: FutureProducer<ProducerContext> = config
        .create_with_context(ProducerContext {
            quiet: Arc::clone(&quiet),
        })
        .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
    let mut deliveries = Vec::with_capacity(outgoing.len());
    let mut failed: Vec<(&Record<'_>, String)> = Vec::new();
    for o in &outgoing {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &o.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut message = FutureRecord::<[u8], [u8]>::to(&o.record.topic)
            .partition(o.record.partition)
            .timestamp(o.record.timestamp)
            .headers(headers);
        if let Some(k) = &o.key {
            message = message.key(k.as_slice());
        }
        if let Some(v) = &o.value {
            message = message.payload(v.as_slice());
        }
        // A full queue drains as deliveries complete; any other refusal (a partition the topic lacks) is this
        // record's failure, and the others are still sent and accounted for.
        let queued = loop {
            match producer.send_result(message) {
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other,
            }
        };
        match queued {
            Ok(delivery) => deliveries.push((o.record, delivery)),
            Err((e, _)) => failed.push((o.record, format!("not queued: {e}"))),
        }
    }
    for (record, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                failed.push((
                    record,
                    format!(
                        "not delivered within {:.1} s (the delivery timeout)",
                        timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Err((e, _))) => failed.push((record, format!("not delivered: {e}"))),
            Err(_) => failed.push((record, "the producer went away before delivery".into())),
        }
    }
    if failed.is_empty() {
        producer
            .flush(timeout)
            .map_err(|e| format!("cannot flush the producer: {e}"))?;
        return Ok(outgoing.len());
    }
    let last = quiet
        .last_error()
        .map(|e| format!("; last client error: {e}"))
        .unwrap_or_default();
    Err(format!(
        "published {} of {} records to {brokers}; not delivered: {}{last}",
        outgoing.len() - failed.len(),
        outgoing.len(),
        undelivered(failed)
    ))
}

/// The records not delivered, as `topic-partition offsets a-b, c (reason)`, one group per partition and reason,
/// at most [`MAX_LISTED`] of them.
fn undelivered(mut failed: Vec<(&Record<'_>, String)>) -> String {
    const MAX_LISTED: usize = 20;
    failed.sort_by(|(a, ra), (b, rb)| {
        (&a.topic, a.partition, ra, a.offset).cmp(&(&b.topic, b.partition, rb, b.offset))
    });
    /// A partition ("topic-partition"), a reason, and its records' offsets as ranges.
    type Group<'r> = (String, &'r str, Vec<(i64, i64)>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (record, reason) in &failed {
        let at = record.partition_key();
        match groups.last_mut() {
            Some((g, r, ranges)) if *g == at && *r == reason.as_str() => match ranges.last_mut() {
                Some((_, end)) if *end + 1 == record.offset => *end = record.offset,
                _ => ranges.push((record.offset, record.offset)),
            },
            _ => groups.push((at, reason, vec![(record.offset, record.offset)])),
        }
    }
    let mut text = format!("{} records:", failed.len());
    for (at, reason, ranges) in groups.iter().take(MAX_LISTED) {
        let offsets = ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        text.push_str(&format!(" {at} offsets {offsets} ({reason});"));
    }
    if groups.len() > MAX_LISTED {
        text.push_str(&format!(
            " and {} more partitions;",
            groups.len() - MAX_LISTED
        ));
    }
    text.pop();
    text
}
