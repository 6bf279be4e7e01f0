//! The local runner: the same handler on a real Kafka broker, through librdkafka (`consume`), and `publish`,
//! which puts the records of MSK event files back into a broker.
//!
//! `consume` builds batches the way Lambda's MSK event-source mapping does (up to `batch_size` records, or
//! when `batch_window` has passed since the batch's first record, or before the event would pass Lambda's
//! 6 MB payload limit) and hands each one to the handler as an [`MskEvent`] of the `SelfManagedKafka` shape,
//! so the handler cannot tell the runner from Lambda.
//!
//! Delivery is at least once. Offsets are never stored or committed automatically: a batch's offsets are
//! committed only after the handler applied it. A transient failure retries the same batch with backoff while
//! the consumer keeps polling (with its partitions paused) so that it stays in the group. A rebalance that
//! takes a partition away drops the records of that partition that are in hand: its new owner starts from
//! the last commit, so nothing is skipped, and a stale batch can never overwrite what the new owner applied.
//!
//! The consumer is a [`BaseConsumer`] on a blocking thread of its own; librdkafka calls the rebalance and
//! statistics callbacks from inside `poll`, on that thread.
//!
//! A runner that never reads anything does not report success: until the group first assigns it partitions it
//! is waiting, not idle, and if that takes longer than `assignment_timeout` it fails naming the broker or the
//! topic. librdkafka repeats a client error every few milliseconds while a broker is down; [`Quiet`] logs each
//! kind of error once per [`REPEAT_EVERY`] with the count of the ones it held back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::event::{self, MskEvent, Record};
use crate::pipeline::{Handler, HandlerError};
use crate::report::BatchReport;

mod publish;
mod runner;

pub use publish::publish;
use runner::{InHand, Runner};

/// Lambda's invocation payload limit, which also bounds an MSK event-source mapping's batch.
pub const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024;
/// The most records Lambda puts in one batch.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Settings the runner owns: letting librdkafka store or commit offsets would break at-least-once.
const MANAGED_PROPERTIES: [&str; 2] = ["enable.auto.commit", "enable.auto.offset.store"];
/// How long one `poll` may block, so that signals, deadlines and progress are looked at this often.
const POLL_SLICE: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often one kind of client error is logged while it keeps coming (a broker that is down).
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);
/// How long `consume --exit-when-idle` waits for its first partitions before it gives up.
pub const DEFAULT_ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a signal lets a batch that is being applied finish before it is dropped and rolled back.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// The shortest interval between progress lines.
pub const MIN_PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the diagnosis of a runner without partitions may wait for the cluster's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What the runner does with a batch; [`Handler`] in production, anything in tests of the runner itself.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies one batch, as [`Handler::handle`] does.
    fn handle(
        &self,
        event: &MskEvent<'_>,
    ) -> impl Future<Output = Result<BatchReport, HandlerError>> + Send;
}

impl BatchHandler for Handler {
    fn handle(
        &self,
        event: &MskEvent<'_>,
    ) -> impl Future<Output = Result<BatchReport, HandlerError>> + Send {
        Handler::handle(self, event)
    }
}

/// Where a consumer group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartPosition {
    /// The oldest record a partition holds.
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// How `consume` reads the broker and cuts batches.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The consumer group (`group.id`); offsets are committed for it.
    pub group: String,
    /// Topic names; a name that starts with `^` is a regular expression (librdkafka's convention).
    pub topics: Vec<String>,
    /// Where a group without a committed offset starts (`auto.offset.reset`).
    pub start: StartPosition,
    /// librdkafka properties, applied after the runner's own (`-X key=value`).
    pub properties: Vec<(String, String)>,
    /// The most records in one batch.
    pub batch_size: usize,
    /// How long a batch waits for more records after its first.
    pub batch_window: Duration,
    /// The most bytes of keys and values in one batch (Lambda's payload limit).
    pub max_batch_bytes: usize,
    /// Stop (exit 0) once this many records were applied and committed.
    pub max_records: Option<u64>,
    /// Stop (exit 0) when no record arrived and no batch was applied for this long, counted from the first
    /// assignment.
    pub exit_when_idle: Option<Duration>,
    /// Fail ([`ConsumeError::NotAssigned`]) when the group assigned no partition for this long after the start;
    /// `None` waits for ever, as a service waits for its broker.
    pub assignment_timeout: Option<Duration>,
    /// How often a progress line is written (at least [`MIN_PROGRESS_EVERY`]).
    pub progress_every: Duration,
    /// How long one call of the handler may take (`database.batch_timeout_seconds`): past it the batch is
    /// dropped, its transaction rolled back, and it fails as transient, to be retried.
    pub batch_timeout: Duration,
    /// Writes each batch's metrics on stdout in CloudWatch Embedded Metric Format (`consume --emf`).
    pub emf: Option<crate::metrics::Metrics>,
}

impl ConsumeOptions {
    /// The defaults, for `topics` on `brokers` as group `group`.
    pub fn new(brokers: &str, group: &str, topics: Vec<String>) -> Self {
        Self {
            brokers: brokers.to_string(),
            group: group.to_string(),
            topics,
            start: StartPosition::Earliest,
            properties: Vec::new(),
            batch_size: 100,
            batch_window: Duration::from_millis(500),
            max_batch_bytes: MAX_BATCH_BYTES,
            max_records: None,
            exit_when_idle: None,
            assignment_timeout: None,
            progress_every: Duration::from_secs(10),
            batch_timeout: crate::sync::SinkOptions::default().batch_timeout,
            emf: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records applied and committed.
    pub records: u64,
    /// Batches applied and committed.
    pub batches: u64,
    /// Handler calls that failed transiently and were retried.
    pub retries: u64,
    /// Records in hand dropped because a rebalance took their partition away (its new owner reads them).
    pub dropped_on_revoke: u64,
}

/// Why `consume` stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Bad options or a consumer librdkafka refuses: a bad invocation.
    #[error("{0}")]
    Setup(String),
    /// The handler refused a batch as invalid: retrying cannot help, and skipping it would lose records.
    #[error("batch refused: {0}")]
    Invalid(String),
    /// Stopped (signal) while a batch was failing: it was not applied and not committed.
    #[error("stopped while a batch was failing, nothing of it committed: {0}")]
    Unfinished(String),
    /// The group assigned no partition within `assignment_timeout`: the broker does not answer, the topic does
    /// not exist, or the group has more members than partitions. Nothing was read.
    #[error("{0}")]
    NotAssigned(String),
}

/// librdkafka's log lines and client errors, each kind logged at most once per [`REPEAT_EVERY`]; the latest
/// error is kept for the message of a run that fails because of it.
#[derive(Default)]
struct Quiet {
    /// Per kind: when it was last logged, and how many were held back since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
    last_error: Mutex<Option<String>>,
}

impl Quiet {
    /// Calls `log` with the number held back since the last line of this kind, unless one was logged less
    /// than [`REPEAT_EVERY`] ago.
    fn throttled(&self, kind: &str, log: impl FnOnce(u64)) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match seen.get_mut(kind) {
            Some((last, held_back)) if now.duration_since(*last) < REPEAT_EVERY => *held_back += 1,
            Some((last, held_back)) => {
                log(std::mem::take(held_back));
                *last = now;
            }
            None => {
                log(0);
                seen.insert(kind.to_string(), (now, 0));
            }
        }
    }

    /// Logs a client error. The latest one is kept for a failure's message, except the ones that would hide
    /// its cause: the summary "all brokers are down" after the refused connection, and the consumer's copies
    /// (without a reason) of errors the context already had.
    fn error(&self, error: &KafkaError, reason: &str) {
        let summary = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none() || !(summary || reason.is_empty()) {
            *last = Some(if reason.is_empty() {
                error.to_string()
            } else {
                format!("{error}: {reason}")
            });
        }
        drop(last);
        let kind = error
            .rdkafka_error_code()
            .map_or_else(|| error.to_string(), |code| format!("{code:?}"));
        self.throttled(&kind, |held_back| {
            tracing::warn!(error = %error, reason, held_back, "Kafka client error");
        });
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => self.throttled(facility, |held_back| {
                tracing::error!(target: "librdkafka", facility, held_back, "{message}");
            }),
            RDKafkaLogLevel::Warning => self.throttled(facility, |held_back| {
                tracing::warn!(target: "librdkafka", facility, held_back, "{message}");
            }),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Rebalance and statistics callbacks, which librdkafka runs inside `poll`.
#[derive(Default)]
struct RunnerContext {
    /// Partitions revoked since the loop last looked.
    revoked: Mutex<Vec<(String, i32)>>,
    /// Consumer lag per partition, from the latest statistics, and when those came.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
    lag_at: Mutex<Option<Instant>>,
    /// Records librdkafka fetched and holds for the next polls, per partition, from the same statistics:
    /// what the runner has in memory besides its records in hand.
    queued: Mutex<BTreeMap<(String, i32), i64>>,
    /// Set from a batch's first failure until it is applied or dropped (its backoffs and retries): every
    /// partition assigned meanwhile is paused at once, so that nothing is fetched that cannot be applied.
    paused: AtomicBool,
    /// Set by every rebalance: a group that is still settling is not idle.
    rebalanced: AtomicBool,
    /// Set by the first assignment of at least one partition: before it the runner waits, it is not idle.
    assigned: AtomicBool,
    quiet: Quiet,
}

impl ClientContext for RunnerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.quiet.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let mut lag = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        *self.lag_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        lag.clear();
        queued.clear();
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a negative lag is not known yet.
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), partition), p.consumer_lag);
                }
                if partition >= 0 && p.fetchq_cnt > 0 {
                    queued.insert((topic.clone(), partition), p.fetchq_cnt);
                }
            }
        }
    }
}

impl ConsumerContext for RunnerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
            for e in list.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalanced.store(true, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(list) => {
                if list.count() > 0 {
                    self.assigned.store(true, Ordering::Relaxed);
                }
                if self.paused.load(Ordering::Relaxed)
                    && let Err(e) = consumer.pause(list)
                {
                    tracing::warn!(error = %e, "cannot pause the partitions assigned during a retry");
                }
                tracing::info!(partitions = list.count(), "partitions assigned")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Runs the consumer until `stop` is set, `max_records` were applied or the consumer was idle for
/// `exit_when_idle`. Progress lines go to `progress`.
pub async fn consume<H: BatchHandler>(
    handler: Arc<H>,
    options: ConsumeOptions,
    stop: Arc<AtomicBool>,
    progress: Box<dyn Write + Send>,
) -> Result<Summary, ConsumeError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let consumer = open_consumer(&options)?;
        Runner {
            consumer,
            handler,
            runtime,
            options,
            stop,
            progress,
            pending: VecDeque::new(),
            summary: Summary::default(),
            unassigned_since: None,
            progress_mark: None,
        }
        .run()
    })
    .await
    .map_err(|e| ConsumeError::Setup(format!("the consumer thread failed: {e}")))?
}

fn open_consumer(options: &ConsumeOptions) -> Result<BaseConsumer<RunnerContext>, ConsumeError> {
    if options.topics.is_empty() {
        return Err(ConsumeError::Setup("no topic to consume".into()));
    }
    if !(1..=MAX_BATCH_SIZE).contains(&options.batch_size) {
        return Err(ConsumeError::Setup(format!(
            "batch size {} is not between 1 and {MAX_BATCH_SIZE}",
            options.batch_size
        )));
    }
    if options.progress_every < MIN_PROGRESS_EVERY {
        return Err(ConsumeError::Setup(format!(
            "--progress-every {:?} is shorter than {} s: a progress line is a summary, not a trace",
            options.progress_every,
            MIN_PROGRESS_EVERY.as_secs()
        )));
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("client.id", format!("msk-sync-{}", options.group))
        .set(
            "auto.offset.reset",
            match options.start {
                StartPosition::Earliest => "earliest",
                StartPosition::Latest => "latest",
            },
        )
        .set(
            "statistics.interval.ms",
            options
                .progress_every
                .as_millis()
                .clamp(1_000, 60_000)
                .to_string(),
        );
    for (key, value) in &options.properties {
        if MANAGED_PROPERTIES.contains(&key.as_str()) {
            return Err(ConsumeError::Setup(format!(
                "{key} cannot be set: the runner commits offsets itself, after each applied batch"
            )));
        }
        config.set(key, value);
    }
    for key in MANAGED_PROPERTIES {
        config.set(key, "false");
    }
    let consumer: BaseConsumer<RunnerContext> = config
        .create_with_context(RunnerContext::default())
        .map_err(|e| ConsumeError::Setup(format!("cannot create the Kafka consumer: {e}")))?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| ConsumeError::Setup(format!("cannot subscribe to {topics:?}: {e}")))?;
    Ok(consumer)
}

/// The JSON an event needs besides its records: `eventSource`, `bootstrapServers`, the `records` map.
const EVENT_OVERHEAD: usize = 256;

/// A Kafka message as the MSK event carries it: key and value base64, headers as byte arrays.
#[allow(clippy::too_many_arguments)]
fn to_record(
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    timestamp_type: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<(String, Vec<u8>)>,
) -> InHand {
    let key = key.map(|k| STANDARD.encode(k));
    let value = value.map(|v| STANDARD.encode(v));
    // What the record adds to the event's JSON: fixed field names and numbers, the topic twice (record and
    // map key), base64 texts, and header bytes written as decimal numbers (up to 4 characters each).
    let bytes = 160
        + 2 * topic.len()
        + key.as_ref().map_or(0, String::len)
        + value.as_ref().map_or(0, String::len)
        + headers
            .iter()
            .map(|(k, v)| k.len() + 8 + 4 * v.len())
            .sum::<usize>();
    let record = Record {
        topic: topic.to_string().into(),
        partition,
        offset,
        timestamp,
        timestamp_type: Some(timestamp_type.to_string().into()),
        key: key.map(Into::into),
        value: value.map(Into::into),
        headers: event::Headers::from_pairs(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ),
        ..Record::default()
    };
    InHand { record, bytes }
}

/// The event Lambda's self-managed Kafka event source would send for these records, borrowing them.
fn to_event<'b>(batch: &'b [Record<'static>], brokers: &'b str) -> MskEvent<'b> {
    MskEvent {
        event_source: "SelfManagedKafka".into(),
        event_source_arn: None,
        bootstrap_servers: Some(brokers.into()),
        records: batch.iter().map(Record::borrowed).collect(),
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`: the durations the command line takes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => number / 1_000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => {
            return Err(format!(
                "{text:?}: the unit must be ms, s or m (500ms, 2s, 1m)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// `key=value`, as kcat's `-X`.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not a librdkafka property key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_properties() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(
            parse_property("sasl.mechanism=SCRAM-SHA-512"),
            Ok(("sasl.mechanism".into(), "SCRAM-SHA-512".into()))
        );
        assert_eq!(parse_property("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }

    /// The runner's events are exactly the MSK shape: the AWS type reads them, and so does the handler's.
    #[test]
    fn events_have_the_self_managed_kafka_shape() {
        let records = vec![
            to_record(
                "servicea.planet",
                1,
                42,
                1_764_000_000_123,
                "CREATE_TIME",
                Some(b"p1"),
                Some(br#"{"planetUuid":"p1"}"#),
                vec![
                    ("source".into(), b"test".to_vec()),
                    ("empty".into(), vec![]),
                ],
            )
            .record,
            to_record(
                "servicea.planet",
                0,
                7,
                1,
                "CREATE_TIME",
                None,
                None,
                vec![],
            )
            .record,
        ];
        let event = to_event(&records, "127.0.0.1:9092");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["eventSource"], "SelfManagedKafka");
        assert_eq!(json["bootstrapServers"], "127.0.0.1:9092");
        let r = &json["records"]["servicea.planet-1"][0];
        assert_eq!(r["key"], "cDE=");
        assert_eq!(r["value"], "eyJwbGFuZXRVdWlkIjoicDEifQ==");
        assert_eq!(
            r["headers"][0]["source"],
            serde_json::json!([116, 101, 115, 116])
        );
        assert_eq!(r["timestampType"], "CREATE_TIME");
        assert!(json["records"]["servicea.planet-0"][0]["value"].is_null());
        let aws: aws_lambda_events::event::kafka::KafkaEvent =
            serde_json::from_value(json.clone()).unwrap();
        let aws_record = &aws.records["servicea.planet-1"][0];
        assert_eq!(aws_record.offset, 42);
        assert_eq!(aws_record.topic.as_deref(), Some("servicea.planet"));
        // The same records, grouped by partition as the JSON lists them.
        let back = MskEvent::from_value(json).unwrap();
        assert_eq!(
            back.ordered().collect::<Vec<_>>(),
            event.ordered().collect::<Vec<_>>()
        );
    }
}
