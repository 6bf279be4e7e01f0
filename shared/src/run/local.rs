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

/// The producer's context: only the quiet logging, shared with `publish` (librdkafka's wrapper of the
/// context does not hand it back).
struct ProducerContext {
    quiet: Arc<Quiet>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.quiet.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(&error, reason);
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

struct Runner<H> {
    consumer: BaseConsumer<RunnerContext>,
    handler: Arc<H>,
    runtime: tokio::runtime::Handle,
    options: ConsumeOptions,
    stop: Arc<AtomicBool>,
    progress: Box<dyn Write + Send>,
    /// Records polled but not yet in a batch (the one that would have passed the payload limit, or records
    /// that arrived while a failing batch was retried), in poll order.
    pending: VecDeque<InHand>,
    summary: Summary,
    /// Since when the runner holds no partition (`None` while it holds some).
    unassigned_since: Option<Instant>,
    /// When the last progress line was written, and the records applied by then: the next line's rate is
    /// over the interval since, not since the start (which reads low for minutes after a slow group join).
    progress_mark: Option<(Instant, u64)>,
}

/// A record in hand with the bytes it adds to the event's JSON.
struct InHand {
    record: Record<'static>,
    bytes: usize,
}

/// Why gathering a batch ended without a batch.
enum Idle {
    Stop,
    Timeout,
    Continue,
    /// No partition was assigned within `assignment_timeout`.
    NotAssigned,
}

impl<H: BatchHandler> Runner<H> {
    fn run(mut self) -> Result<Summary, ConsumeError> {
        let started = Instant::now();
        let mut last_record = Instant::now();
        let mut next_progress = Instant::now() + self.options.progress_every;
        let result = loop {
            if self.stop.load(Ordering::Relaxed) || self.reached_max_records() {
                break Ok(());
            }
            let batch = match self.gather(&mut last_record, &mut next_progress, started) {
                Ok(batch) => batch,
                Err(Idle::Continue) => continue,
                Err(Idle::Stop | Idle::Timeout) => break Ok(()),
                Err(Idle::NotAssigned) => {
                    break Err(ConsumeError::NotAssigned(self.not_assigned()));
                }
            };
            if let Err(e) = self.apply(batch, &mut next_progress, started) {
                break Err(e);
            }
            // Applying a batch, and retrying it while the database is away, is not idle time: its partitions
            // were paused meanwhile, so their next records only start to flow now.
            last_record = Instant::now();
        };
        self.write_progress(started, "stopping");
        // Leaving the group now hands the partitions over at once instead of after the session timeout.
        self.consumer.unsubscribe();
        result.map(|()| self.summary.clone())
    }

    fn reached_max_records(&self) -> bool {
        self.options
            .max_records
            .is_some_and(|max| self.summary.records >= max)
    }

    /// Polls until a batch is full, its window has passed, or the next record would pass the payload limit.
    fn gather(
        &mut self,
        last_record: &mut Instant,
        next_progress: &mut Instant,
        started: Instant,
    ) -> Result<Vec<Record<'static>>, Idle> {
        let limit = match self.options.max_records {
            Some(max) => {
                let left = max.saturating_sub(self.summary.records);
                self.options
                    .batch_size
                    .min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => self.options.batch_size,
        };
        let mut batch: Vec<Record<'static>> = Vec::new();
        let mut bytes = EVENT_OVERHEAD;
        let mut deadline: Option<Instant> = None;
        loop {
            self.drop_revoked(&mut batch);
            if batch.len() >= limit {
                break;
            }
            let next = match self.pending.pop_front() {
                Some(next) => Some(next),
                None => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        break;
                    }
                    if now >= *next_progress {
                        let state = match (self.held().len(), self.unassigned_since) {
                            (0, Some(since))
                                if self.consumer.context().assigned.load(Ordering::Relaxed) =>
                            {
                                format!(
                                    "no partitions: the group took them {:.0} s ago and assigned none since",
                                    since.elapsed().as_secs_f64()
                                )
                            }
                            (0, _) => "waiting for partitions".to_string(),
                            (n, _) => format!("consuming {n} partitions"),
                        };
                        self.write_progress(started, &state);
                        *next_progress = now + self.options.progress_every;
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        if batch.is_empty() {
                            return Err(Idle::Stop);
                        }
                        break;
                    }
                    let wait = deadline.map_or(POLL_SLICE, |d| {
                        d.saturating_duration_since(now).min(POLL_SLICE)
                    });
                    self.poll_one(wait)
                }
            };
            let Some(next) = next else {
                // Idle time counts from the first assignment, then from the last record, batch applied or rebalance:
                // a runner waiting for the group (joining takes tansu ~20 s; a dead member's session must time
                // out) has not run dry.
                // A runner without partitions is not idle either: the group took them (a broker stall, a
                // member that joined) and the stream is not read by this runner, whatever its lag says.
                let held = self.held().len();
                let unassigned_since = match held {
                    0 => *self.unassigned_since.get_or_insert_with(Instant::now),
                    _ => {
                        self.unassigned_since = None;
                        Instant::now()
                    }
                };
                let context = self.consumer.context();
                if context.rebalanced.swap(false, Ordering::Relaxed) || held == 0 {
                    *last_record = Instant::now();
                }
                // Before the first assignment the wait counts from the start, after it from the moment the
                // last partition was taken away.
                let waiting = if context.assigned.load(Ordering::Relaxed) {
                    unassigned_since.elapsed()
                } else {
                    started.elapsed()
                };
                if held == 0
                    && self
                        .options
                        .assignment_timeout
                        .is_some_and(|limit| waiting >= limit)
                {
                    return Err(Idle::NotAssigned);
                }
                if batch.is_empty()
                    && let Some(idle) = self.options.exit_when_idle
                    && last_record.elapsed() >= idle
                {
                    return Err(Idle::Timeout);
                }
                continue;
            };
            *last_record = Instant::now();
            if !batch.is_empty() && bytes + next.bytes > self.options.max_batch_bytes {
                self.pending.push_front(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next.record);
            deadline.get_or_insert_with(|| Instant::now() + self.options.batch_window);
        }
        if batch.is_empty() {
            Err(Idle::Continue)
        } else {
            Ok(batch)
        }
    }

    /// One poll; a message becomes a record in hand, an error is logged (librdkafka retries by itself).
    fn poll_one(&mut self, wait: Duration) -> Option<InHand> {
        match self.consumer.poll(wait)? {
            Ok(message) => {
                let headers = message.headers().map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect::<Vec<_>>()
                });
                let (timestamp, timestamp_type) = match message.timestamp() {
                    Timestamp::CreateTime(t) => (t, "CREATE_TIME"),
                    Timestamp::LogAppendTime(t) => (t, "LOG_APPEND_TIME"),
                    Timestamp::NotAvailable => (-1, "NO_TIMESTAMP_TYPE"),
                };
                Some(to_record(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    timestamp,
                    timestamp_type,
                    message.key(),
                    message.payload(),
                    headers.unwrap_or_default(),
                ))
            }
            Err(e) => {
                // Mostly the client errors librdkafka also reported through the context: the same kinds.
                self.consumer.context().quiet.error(&e, "");
                None
            }
        }
    }

    /// Why no partition was assigned, from the cluster's metadata: the broker does not answer, a topic does
    /// not exist, or neither (the group has more members than partitions, or has not settled).
    fn not_assigned(&self) -> String {
        let o = &self.options;
        let waited = o.assignment_timeout.unwrap_or_default().as_secs_f64();
        let head = if self.consumer.context().assigned.load(Ordering::Relaxed) {
            format!(
                "the group took this runner's partitions and assigned none for {waited:.0} s, with {} records \
                 applied (brokers {}, group {}, topics {}): the rest of the stream is not applied by this runner",
                self.summary.records,
                o.brokers,
                o.group,
                o.topics.join(", ")
            )
        } else {
            format!(
                "no partitions were assigned within {waited:.0} s (brokers {}, group {}, topics {})",
                o.brokers,
                o.group,
                o.topics.join(", ")
            )
        };
        let last = self
            .consumer
            .context()
            .quiet
            .last_error()
            .map(|e| format!("; last client error: {e}"))
            .unwrap_or_default();
        match self.consumer.fetch_metadata(None, METADATA_TIMEOUT) {
            Err(e) => format!(
                "{head}: the broker at {} does not answer ({e}){last}",
                o.brokers
            ),
            Ok(metadata) => {
                let known: HashSet<&str> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.name())
                    .collect();
                // A pattern (^…) names no topic of its own to look for.
                let missing: Vec<&str> = o
                    .topics
                    .iter()
                    .map(String::as_str)
                    .filter(|t| !t.starts_with('^') && !known.contains(t))
                    .collect();
                if missing.is_empty() {
                    format!(
                        "{head}: the topics exist; the group may have more members than partitions, or not \
                         have settled yet{last}"
                    )
                } else {
                    format!(
                        "{head}: topic {} does not exist on {}",
                        missing.join(", "),
                        o.brokers
                    )
                }
            }
        }
    }

    /// Forgets the records in hand of every partition a rebalance took away since the last look.
    fn drop_revoked(&mut self, batch: &mut Vec<Record<'static>>) {
        let revoked: HashSet<(String, i32)> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if revoked.is_empty() {
            return;
        }
        let before = batch.len() + self.pending.len();
        let keep = |r: &Record| !revoked.contains(&(r.topic.to_string(), r.partition));
        batch.retain(keep);
        self.pending.retain(|s| keep(&s.record));
        let dropped = before - batch.len() - self.pending.len();
        if dropped > 0 {
            tracing::info!(
                records = dropped,
                "records of revoked partitions dropped: their new owner reads them from the last commit"
            );
            self.summary.dropped_on_revoke += dropped as u64;
        }
    }

    /// Applies a batch and commits its offsets; a transient failure retries it until it succeeds, the
    /// rebalance takes all its partitions away, or a signal stops the runner. From the first failure until
    /// the batch is done with, every assigned partition is paused, through the backoffs and the retries
    /// alike: nothing is fetched that cannot be applied.
    fn apply(
        &mut self,
        batch: Vec<Record<'static>>,
        next_progress: &mut Instant,
        started: Instant,
    ) -> Result<(), ConsumeError> {
        let applied = self.apply_until_done(batch, next_progress, started);
        if self.consumer.context().paused.load(Ordering::Relaxed) {
            self.resume_all();
        }
        applied
    }

    fn apply_until_done(
        &mut self,
        mut batch: Vec<Record<'static>>,
        next_progress: &mut Instant,
        started: Instant,
    ) -> Result<(), ConsumeError> {
        let mut backoff = FIRST_BACKOFF;
        let brokers = self.options.brokers.clone();
        loop {
            let event = to_event(&batch, &brokers);
            let batch_started = Instant::now();
            let outcome = self.handle_within_deadline(&event, next_progress, started)?;
            if let Some(metrics) = &self.options.emf {
                let line = metrics.line(&event, outcome.as_ref(), batch_started.elapsed());
                println!("{line}");
            }
            let error = match outcome {
                Ok(report) => {
                    self.commit(&batch);
                    self.summary.records += batch.len() as u64;
                    self.summary.batches += 1;
                    tracing::info!(
                        records = batch.len(),
                        upserted = report.upserted,
                        deleted = report.deleted,
                        dead_lettered = report.dead_lettered,
                        "batch applied"
                    );
                    return Ok(());
                }
                Err(HandlerError::Invalid(e)) => return Err(ConsumeError::Invalid(e)),
                Err(e @ HandlerError::Misconfigured(_)) => {
                    return Err(ConsumeError::Invalid(e.to_string()));
                }
                Err(HandlerError::Transient(e)) => e,
            };
            self.summary.retries += 1;
            tracing::warn!(records = batch.len(), retry_in_ms = backoff.as_millis() as u64, error = %error, "batch failed, will retry");
            // Keep polling while waiting, or the group would count this member as dead. Every assigned
            // partition is paused, also one the group assigns meanwhile (see `post_rebalance`), so nothing
            // is fetched that cannot be applied; what was polled before the pause waits in `pending`.
            self.pause_all();
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    return Err(ConsumeError::Unfinished(error));
                }
                if let Some(record) = self.poll_one(POLL_SLICE) {
                    self.pending.push_back(record);
                }
                if Instant::now() >= *next_progress {
                    self.write_progress(started, "retrying a failed batch");
                    *next_progress = Instant::now() + self.options.progress_every;
                }
            }
            // The retry runs with the partitions still paused (librdkafka would otherwise fetch ahead
            // while the database keeps failing); they resume once the batch is applied or dropped.
            self.drop_revoked(&mut batch);
            if batch.is_empty() {
                return Ok(());
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The partitions assigned to this runner now.
    fn held(&self) -> HashSet<(String, i32)> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pauses every assigned partition, and every one assigned until [`Runner::resume_all`].
    fn pause_all(&self) {
        self.consumer
            .context()
            .paused
            .store(true, Ordering::Relaxed);
        let assignment = self.consumer.assignment().unwrap_or_default();
        if let Err(e) = self.consumer.pause(&assignment) {
            tracing::warn!(error = %e, "cannot pause the assigned partitions");
        }
    }

    /// Resumes every partition assigned now.
    fn resume_all(&self) {
        self.consumer
            .context()
            .paused
            .store(false, Ordering::Relaxed);
        let assignment = self.consumer.assignment().unwrap_or_default();
        if let Err(e) = self.consumer.resume(&assignment) {
            tracing::warn!(error = %e, "cannot resume the assigned partitions");
        }
    }

    /// One call of the handler, watched: past `batch_timeout` it is dropped (its transaction rolls back) and
    /// the batch fails as transient; a signal drops it at once and stops the runner; while it runs, the
    /// progress line says what is waited on and for how long.
    fn handle_within_deadline(
        &mut self,
        event: &MskEvent<'_>,
        next_progress: &mut Instant,
        started: Instant,
    ) -> Result<Result<BatchReport, HandlerError>, ConsumeError> {
        let deadline = self.options.batch_timeout;
        let records = event.record_count();
        let began = Instant::now();
        let mut stopping: Option<Instant> = None;
        let handler = Arc::clone(&self.handler);
        let mut call = std::pin::pin!(handler.handle(event));
        loop {
            let slice = self
                .runtime
                .block_on(async { tokio::time::timeout(POLL_SLICE, &mut call).await });
            if let Ok(outcome) = slice {
                return Ok(outcome);
            }
            let waited = began.elapsed();
            if self.stop.load(Ordering::Relaxed) && stopping.is_none() {
                stopping = Some(Instant::now());
            }
            // A batch about to finish gets STOP_GRACE to do so; one waiting on a database that does not
            // answer does not hold the stop any longer.
            if stopping.is_some_and(|at| at.elapsed() >= STOP_GRACE) {
                // Dropping the call drops its transaction: rolled back, by the server when the process
                // exits and the connection closes, if not before.
                return Err(ConsumeError::Unfinished(format!(
                    "stopped after waiting {:.1} s on the database for a batch of {records} records: \
                     rolled back",
                    waited.as_secs_f64()
                )));
            }
            if waited >= deadline {
                tracing::warn!(
                    records,
                    waited_s = waited.as_secs(),
                    "the database did not finish the batch within its deadline: rolled back"
                );
                return Ok(Err(HandlerError::Transient(format!(
                    "batch not applied (retry it): the database did not finish it within {} s \
                     (database.batch_timeout_seconds); rolled back",
                    deadline.as_secs()
                ))));
            }
            if Instant::now() >= *next_progress {
                self.write_progress(
                    started,
                    &format!(
                        "waiting {:.0} s on the database for a batch of {records} records (deadline {} s)",
                        waited.as_secs_f64(),
                        deadline.as_secs()
                    ),
                );
                *next_progress = Instant::now() + self.options.progress_every;
            }
        }
    }

    /// Commits the offset after the last applied record of every partition in the batch. A failed commit
    /// only means those records come again, which idempotent upserts and deletes absorb.
    fn commit(&self, batch: &[Record<'static>]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let n = next.entry((r.topic.as_ref(), r.partition)).or_insert(0);
            *n = (*n).max(r.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(topic, partition, error = %e, "cannot name an offset to commit");
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(partitions = next.len(), error = %e, "commit failed: the batch's records will be delivered again");
        }
    }

    fn write_progress(&mut self, started: Instant, state: &str) {
        let now = Instant::now();
        let (since, before) = self.progress_mark.unwrap_or((started, 0));
        self.progress_mark = Some((now, self.summary.records));
        let interval = now.duration_since(since).as_secs_f64().max(0.001);
        let rate = self.summary.records.saturating_sub(before) as f64 / interval;
        // The lag of the partitions held now (the statistics may still list ones the group took away), and
        // how old the statistics are.
        let held = self.held();
        let lag = self
            .consumer
            .context()
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(tp, _)| held.contains(*tp))
            .map(|((t, p), lag)| format!(" {t}-{p}={lag}"))
            .collect::<String>();
        let lag_at = *self
            .consumer
            .context()
            .lag_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queued: i64 = self
            .consumer
            .context()
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(tp, _)| held.contains(*tp))
            .map(|(_, n)| n)
            .sum();
        let lag = match (lag.is_empty(), lag_at) {
            (true, _) | (_, None) => " unknown".to_string(),
            (false, Some(at)) => format!(
                "{lag} (as of {:.0} s ago)",
                now.saturating_duration_since(at).as_secs_f64()
            ),
        };
        let _ = writeln!(
            self.progress,
            "consume: {state}: {} records in {} batches ({:.0} records/s over the last {:.0} s), {} retries, \
             {} partitions held, {} records in hand, {queued} fetched ahead by the client; lag:{lag}",
            self.summary.records,
            self.summary.batches,
            rate,
            interval,
            self.summary.retries,
            held.len(),
            self.pending.len(),
        );
    }
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
