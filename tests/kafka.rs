//! The local runner (`consume`, `publish`) on Kafka brokers.
//!
//! - librdkafka's in-process mock cluster for the runner's mechanics: batch size, window and payload limit,
//!   retries of a failing batch, commits only after success, a stop in the middle of a batch, and a database
//!   outage against PostgreSQL behind a proxy.
//! - tansu, a standalone Kafka-compatible broker, end to end: `publish` (and an independent producer, Python's
//!   confluent-kafka) then the `consume` binary into SQLite; a runner killed with SIGKILL mid-stream and
//!   restarted; two runners in one group over six partitions. The broker binary is `$MSK_SYNC_TANSU`, else
//!   `~/.cargo/bin/tansu`, else `tansu` on PATH (`cargo xtask setup` builds it). A missing broker fails these
//!   tests, it never skips them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use msk_sync::event::MskEvent;
use msk_sync::pipeline::HandlerError;
use msk_sync::report::BatchReport;
use msk_sync::run::local::{self, BatchHandler, ConsumeError, ConsumeOptions};
use msk_sync_tests::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::process::{Child, Command};

const TOPIC: &str = "servicea.planet";
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// A broker address where nothing listens. A privileged port: a free port of the ephemeral range can be the
/// client's own source port, and a client connected to itself waits for answers for minutes.
const NOTHING_LISTENS: &str = "127.0.0.1:1";

/// A handler that keeps every call's event, fails the first `fail_first` calls as a database outage would,
/// and can raise `stop` (as SIGTERM does) while it handles its first batch.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<MskEvent<'static>>>,
    fail_first: usize,
    fail_always: bool,
    stop_during_first: Option<Arc<AtomicBool>>,
    succeeded: AtomicUsize,
    /// How long each call takes, as a database would.
    delay: Duration,
}

impl BatchHandler for Recorder {
    fn handle(
        &self,
        event: &MskEvent<'_>,
    ) -> impl Future<Output = Result<BatchReport, HandlerError>> + Send {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(event.clone().into_owned());
            calls.len()
        };
        if let Some(stop) = &self.stop_during_first {
            stop.store(true, Ordering::SeqCst);
        }
        let result = if self.fail_always || n <= self.fail_first {
            Err(HandlerError::Transient("database away (test)".into()))
        } else {
            self.succeeded.fetch_add(1, Ordering::SeqCst);
            Ok(BatchReport::default())
        };
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            result
        }
    }
}

impl Recorder {
    fn calls(&self) -> Vec<MskEvent<'static>> {
        self.calls.lock().unwrap().clone()
    }
}

/// Every record of an event as (topic, partition, offset).
fn coordinates(event: &MskEvent<'_>) -> Vec<(String, i32, i64)> {
    event
        .records
        .iter()
        .map(|r| (r.topic.to_string(), r.partition, r.offset))
        .collect()
}

fn mock_cluster(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("mock topic");
    cluster
}

/// A mock cluster with `TOPIC` in `partitions` partitions, holding `planet_event(TOPIC, partitions, n, padding)`;
/// and its bootstrap servers.
async fn mock_with_planets(
    partitions: i32,
    n: usize,
    padding: usize,
) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = mock_cluster(TOPIC, partitions);
    let brokers = cluster.bootstrap_servers();
    let published = local::publish(
        &brokers,
        &[],
        PUBLISH_TIMEOUT,
        vec![planet_event(TOPIC, partitions, n, padding)],
    )
    .await
    .unwrap();
    assert_eq!(published, n);
    (cluster, brokers)
}

/// An MSK event with `n` planet records spread over `partitions` (for `publish`), each padded with
/// `padding` bytes in its value and as many in a header.
fn planet_event(topic: &str, partitions: i32, n: usize, padding: usize) -> MskEvent<'static> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut records: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for i in 0..n {
        let p = (i % partitions as usize) as i32;
        let list = records.entry(format!("{topic}-{p}")).or_default();
        let value = serde_json::json!({
            "changeType": "CREATED", "planetUuid": format!("p{i}"), "planetName": format!("Planet {i}"),
            "padding": "x".repeat(padding),
        });
        list.push(serde_json::json!({
            "topic": topic, "partition": p, "offset": list.len(), "timestamp": 1_764_000_000_000_i64 + i as i64,
            "timestampType": "CREATE_TIME", "key": b64.encode(format!("p{i}")), "value": b64.encode(value.to_string()),
            "headers": [{"source": [116, 101, 115, 116]}, {"blob": vec![120; padding]}],
        }));
    }
    MskEvent::from_value(serde_json::json!({"eventSource": "SelfManagedKafka", "records": records}))
        .unwrap()
}

fn options(brokers: &str, group: &str) -> ConsumeOptions {
    let mut o = ConsumeOptions::new(brokers, group, vec![TOPIC.into()]);
    o.exit_when_idle = Some(Duration::from_secs(20));
    o.properties = vec![("session.timeout.ms".into(), "6000".into())];
    o
}

/// Committed offsets of `group` for the first `partitions` partitions of `topic` (-1: nothing committed).
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

async fn run_recorder(
    recorder: Arc<Recorder>,
    options: ConsumeOptions,
    stop: Arc<AtomicBool>,
) -> Result<local::Summary, ConsumeError> {
    // A runner that never returns (a batch window that never closes) fails the test instead of hanging CI.
    tokio::time::timeout(
        Duration::from_secs(90),
        local::consume(recorder, options, stop, Box::new(std::io::sink())),
    )
    .await
    .expect("the runner did not return within 90 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_batches_follow_size_window_and_payload_limits() {
    let (_cluster, brokers) = mock_with_planets(3, 250, 10).await;

    // Size: at most 100 records a batch; every record once, each partition in offset order; MSK shape.
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "size");
    o.batch_window = Duration::from_millis(300);
    o.max_records = Some(250);
    let summary = run_recorder(Arc::clone(&recorder), o, Arc::default())
        .await
        .unwrap();
    assert_eq!((summary.records, summary.retries), (250, 0));
    let calls = recorder.calls();
    assert!(calls.len() >= 3, "{} batches", calls.len());
    let mut seen = BTreeSet::new();
    for event in &calls {
        assert_eq!(event.event_source, "SelfManagedKafka");
        assert_eq!(event.bootstrap_servers.as_deref(), Some(brokers.as_str()));
        assert!(event.record_count() <= 100);
        // As Lambda would send it: records listed by "<topic>-<partition>", offsets ascending.
        let json = serde_json::to_value(event).unwrap();
        for (key, records) in json["records"].as_object().unwrap() {
            let records = records.as_array().unwrap();
            let offsets: Vec<i64> = records
                .iter()
                .map(|r| r["offset"].as_i64().unwrap())
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{key}: {offsets:?}"
            );
            for r in records {
                assert_eq!(
                    key,
                    &format!("{}-{}", r["topic"].as_str().unwrap(), r["partition"])
                );
                assert_eq!(
                    r["headers"],
                    serde_json::json!([{"source": b"test".to_vec()}, {"blob": vec![b'x'; 10]}])
                );
            }
        }
        for r in &event.records {
            assert_eq!(
                r.headers.pairs().unwrap(),
                vec![
                    ("source".to_string(), b"test".to_vec()),
                    ("blob".to_string(), vec![b'x'; 10])
                ]
            );
        }
        for c in coordinates(event) {
            assert!(seen.insert(c.clone()), "{c:?} delivered twice");
        }
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(committed(&brokers, "size", TOPIC, 3), vec![84, 83, 83]);

    // Window: 5 records do not wait for a batch of 10 000.
    local::publish(
        &brokers,
        &[],
        PUBLISH_TIMEOUT,
        vec![planet_event(TOPIC, 1, 5, 10)],
    )
    .await
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "window");
    o.batch_size = 10_000;
    o.batch_window = Duration::from_millis(300);
    o.max_records = Some(255);
    run_recorder(Arc::clone(&recorder), o, Arc::default())
        .await
        .unwrap();
    let records: usize = recorder.calls().iter().map(MskEvent::record_count).sum();
    assert_eq!(records, 255);

    // Payload: records of ~140 kB in the event (20 kB values, 20 kB headers, which JSON writes as numbers)
    // never make an event larger than Lambda's 6 MB. (The mock broker keeps only ~5 MB of a partition.)
    let (_cluster, brokers) = mock_with_planets(1, 100, 20_000).await;
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "payload");
    o.batch_window = Duration::from_secs(2);
    o.max_records = Some(100);
    run_recorder(Arc::clone(&recorder), o, Arc::default())
        .await
        .unwrap();
    let sizes: Vec<(usize, usize)> = recorder
        .calls()
        .iter()
        .map(|e| (e.record_count(), serde_json::to_vec(e).unwrap().len()))
        .collect();
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert!(
        sizes
            .iter()
            .all(|(_, bytes)| *bytes <= local::MAX_BATCH_BYTES),
        "{sizes:?}"
    );
    // Full batches come close to the limit: the estimate is not wildly pessimistic.
    assert!(sizes[0].1 > local::MAX_BATCH_BYTES * 9 / 10, "{sizes:?}");
    assert_eq!(sizes.iter().map(|s| s.0).sum::<usize>(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_failed_batches_are_retried_and_never_committed() {
    let (_cluster, brokers) = mock_with_planets(2, 40, 10).await;

    // Three failures, then success: the same batch every time, committed once it applied.
    let recorder = Arc::new(Recorder {
        fail_first: 3,
        ..Recorder::default()
    });
    let mut o = options(&brokers, "retry");
    o.max_records = Some(40);
    let summary = run_recorder(Arc::clone(&recorder), o, Arc::default())
        .await
        .unwrap();
    assert_eq!((summary.records, summary.retries), (40, 3));
    let calls = recorder.calls();
    assert!(calls.len() >= 4);
    for retry in &calls[1..4] {
        assert_eq!(
            coordinates(retry),
            coordinates(&calls[0]),
            "a retry is the same batch"
        );
    }
    assert_eq!(committed(&brokers, "retry", TOPIC, 2), vec![20, 20]);

    // A batch that never applies is never committed; a stop while it fails exits as unfinished.
    let recorder = Arc::new(Recorder {
        fail_always: true,
        ..Recorder::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let (stop, recorder) = (Arc::clone(&stop), Arc::clone(&recorder));
        tokio::spawn(async move {
            while recorder.calls().len() < 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let result = run_recorder(Arc::clone(&recorder), options(&brokers, "never"), stop).await;
    stopper.await.unwrap();
    assert!(
        matches!(result, Err(ConsumeError::Unfinished(_))),
        "{result:?}"
    );
    assert_eq!(committed(&brokers, "never", TOPIC, 2), vec![-1, -1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_stop_finishes_and_commits_the_batch_in_hand() {
    let (_cluster, brokers) = mock_with_planets(1, 30, 10).await;
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Arc::new(Recorder {
        stop_during_first: Some(Arc::clone(&stop)),
        ..Recorder::default()
    });
    let mut o = options(&brokers, "stop");
    o.batch_size = 10;
    let summary = run_recorder(Arc::clone(&recorder), o, stop).await.unwrap();
    assert_eq!((summary.batches, summary.records), (1, 10));
    assert_eq!(committed(&brokers, "stop", TOPIC, 1), vec![10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_rebalance_hands_partitions_over_without_losing_records() {
    let (_cluster, brokers) = mock_with_planets(6, 3_000, 10).await;
    let runner = |recorder: &Arc<Recorder>| {
        let mut o = options(&brokers, "rebalance");
        o.batch_size = 20;
        o.exit_when_idle = Some(Duration::from_secs(8));
        tokio::spawn(run_recorder(Arc::clone(recorder), o, Arc::default()))
    };
    let slow = || {
        Arc::new(Recorder {
            delay: Duration::from_millis(20),
            ..Recorder::default()
        })
    };
    let (first, second) = (slow(), slow());
    let a = runner(&first);
    while first.calls().len() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second member joins mid-stream: the group rebalances while the first is applying batches.
    let b = runner(&second);
    let (sa, sb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(sa.records > 0 && sb.records > 0, "{sa:?} {sb:?}");
    let mut seen = BTreeSet::new();
    for event in first.calls().iter().chain(second.calls().iter()) {
        seen.extend(coordinates(event));
    }
    assert_eq!(
        seen.len(),
        3_000,
        "every record applied by one member or the other"
    );
    assert_eq!(
        committed(&brokers, "rebalance", TOPIC, 6)
            .iter()
            .sum::<i64>(),
        3_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_idle_time_counts_from_the_first_assignment() {
    // The topic comes 3 s after the runner starts, so its group cannot assign partitions before that: a runner
    // that counted idle time from its start would stop after 1 s with nothing read.
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "late");
    o.exit_when_idle = Some(Duration::from_secs(1));
    o.assignment_timeout = Some(Duration::from_secs(60));
    // A subscribed topic that does not exist is looked for again at this interval (default 5 min).
    o.properties
        .push(("topic.metadata.refresh.interval.ms".into(), "500".into()));
    let runner = tokio::spawn(run_recorder(Arc::clone(&recorder), o, Arc::default()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !runner.is_finished(),
        "the runner stopped before it had partitions: {:?}",
        runner.await
    );
    cluster.create_topic(TOPIC, 2, 1).expect("mock topic");
    local::publish(
        &brokers,
        &[],
        PUBLISH_TIMEOUT,
        vec![planet_event(TOPIC, 2, 10, 10)],
    )
    .await
    .unwrap();
    let summary = runner.await.unwrap().unwrap();
    assert_eq!(summary.records, 10, "{summary:?}");
    assert_eq!(committed(&brokers, "late", TOPIC, 2), vec![5, 5]);
}

/// `entity-sync consume` of `TOPIC` (or `--topic` in `args`) into `db` until it exits by itself, logging at
/// the default level: (exit code, stderr).
async fn consume_until_exit(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(runner_binary())
        .args(["consume", "--database-url", &db.url, "--config"])
        .arg(default_config())
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start entity-sync consume");
    finished(child).await
}

/// A target table that does not match the config holds the partition and stops the runner with exit 2 (the
/// misconfigured class): nothing applied, nothing dead-lettered, nothing committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_table_stops_the_runner_with_exit_2() {
    use sea_orm::ConnectionTrait;
    let (_cluster, brokers) = mock_with_planets(2, 10, 10).await;
    let db = TestDb::new(Backend::Postgres, "kafka_misconfigured").await;
    db.conn
        .execute_unprepared("CREATE TABLE servicea_planet (uuid TEXT, name TEXT)")
        .await
        .unwrap();
    let (code, stderr) = consume_until_exit(
        &db,
        &[
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--group",
            "misconfigured",
            "--exit-when-idle",
            "5s",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("misconfigured"), "{stderr}");
    assert!(
        stderr.contains("table servicea_planet: expected a primary key or unique index"),
        "{stderr}"
    );
    assert_eq!(db.count("servicea_planet").await, 0);
    assert_eq!(db.count_if_exists("msk_sync_dead_letter").await, 0);
    assert_eq!(
        committed(&brokers, "misconfigured", TOPIC, 2),
        vec![-1, -1],
        "nothing committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_never_gets_partitions_fails_naming_the_broker_or_the_topic() {
    let db = TestDb::new(Backend::Sqlite, "kafka_unassigned").await;
    let cluster = mock_cluster(TOPIC, 1);
    let up = cluster.bootstrap_servers();
    let down = NOTHING_LISTENS.to_string();
    let unresolvable = "msk-sync-no-such-host.invalid:9092";
    let limits = ["--exit-when-idle", "1s", "--assignment-timeout", "4s"];
    let run = |brokers: String, topic: &'static str| {
        let db = &db;
        async move {
            let mut args = vec!["--brokers", &brokers, "--topic", topic];
            args.extend(limits);
            consume_until_exit(db, &args).await
        }
    };
    let ((down_code, down_err), (dns_code, dns_err), (topic_code, topic_err)) = tokio::join!(
        run(down.clone(), TOPIC),
        run(unresolvable.to_string(), TOPIC),
        run(up.clone(), "servicea.missing"),
    );

    assert_eq!(down_code, Some(1), "{down_err}");
    assert!(
        down_err.contains("no partitions were assigned within 4 s")
            && down_err.contains(&format!("the broker at {down} does not answer")),
        "{down_err}"
    );
    // librdkafka reports the refused connection every few milliseconds: each kind of error is logged once,
    // not the ~40 lines a second it used to be (~300 over these 4 s plus the 5 s metadata request).
    let lines = down_err.lines().count();
    assert!(
        lines <= 8,
        "{lines} lines while the broker was down:\n{down_err}"
    );
    assert!(!down_err.contains("records applied"), "{down_err}");

    assert_eq!(dns_code, Some(1), "{dns_err}");
    assert!(
        dns_err.contains(&format!("the broker at {unresolvable} does not answer")),
        "{dns_err}"
    );
    assert!(dns_err.lines().count() <= 8, "{dns_err}");

    assert_eq!(topic_code, Some(1), "{topic_err}");
    assert!(
        topic_err.contains(&format!("topic servicea.missing does not exist on {up}")),
        "{topic_err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_says_what_was_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three-partitions.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&planet_event(TOPIC, 3, 9, 10)).unwrap(),
    )
    .unwrap();
    let file = file.display().to_string();
    let publish = |brokers: String| {
        let file = file.clone();
        async move {
            let args = ["publish", "--brokers", &brokers, "--timeout", "2s", &file];
            // Without a delivery timeout this took librdkafka's default, 300 s.
            tokio::time::timeout(Duration::from_secs(60), cli(&entity_sync(), &args))
                .await
                .expect("publish did not return within 60 s")
        }
    };

    // The broker is down: nothing delivered, within the timeout, and the message names the broker.
    let down = NOTHING_LISTENS.to_string();
    let run = publish(down.clone()).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "published 0 of 9 records to {down}; not delivered: 9 records:"
        )) && run.stderr.contains("not delivered within 2.0 s"),
        "{}",
        run.stderr
    );

    // The topic has 2 partitions, the file 3: partition 2's records are listed, the others delivered.
    let cluster = mock_cluster(TOPIC, 2);
    let brokers = cluster.bootstrap_servers();
    let run = publish(brokers.clone()).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("published 6 of 9 records to {brokers}; not delivered: 3 records: {TOPIC}-2 offsets 0-2 (")),
        "{}",
        run.stderr
    );
    // The 6 delivered are there.
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "partial");
    o.max_records = Some(6);
    let summary = run_recorder(Arc::clone(&recorder), o, Arc::default())
        .await
        .unwrap();
    assert_eq!(summary.records, 6);
}

/// The generated planet batch (`msk-sync-bench`'s generator) written to a file, and the planets that
/// replaying it gives: per-partition order decides the end state, because a planet keeps its partition.
async fn generated(
    dir: &Path,
    records: usize,
    partitions: i32,
) -> (PathBuf, Vec<(String, String)>) {
    let event = msk_sync_bench::generate(&msk_sync_bench::GenConfig {
        records,
        entities: records / 10,
        partitions,
        topic: TOPIC.into(),
        format: msk_sync_bench::Format::Json,
        seed: 7,
    });
    let file = dir.join(format!("generated-{records}-{partitions}.json"));
    std::fs::write(&file, event.to_string()).unwrap();
    let reference = TestDb::new(Backend::Sqlite, "reference").await;
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &reference.url,
            "--config",
            &default_config(),
            &file.display().to_string(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let planets = reference.planets().await;
    assert!(planets.len() > 10);
    (file, planets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_database_outage_is_retried_until_the_runner_catches_up() {
    let db = TestDb::new(Backend::Postgres, "kafka_outage").await;
    let (file, expected) = generated(db.dir.path(), 3_000, 6).await;
    let cluster = mock_cluster(TOPIC, 6);
    let brokers = cluster.bootstrap_servers();
    let bytes = std::fs::read(&file).unwrap();
    let event = MskEvent::from_slice(&bytes).unwrap();
    local::publish(&brokers, &[], PUBLISH_TIMEOUT, vec![event])
        .await
        .unwrap();

    let (proxy, proxied) = ToggleProxy::in_front_of(&db).await;
    let handler = Arc::new(entity_sync_handler(&proxied).await);
    let mut o = options(&brokers, "outage");
    o.batch_size = 50;
    // Shorter than the outage's retries (0.5 + 1 + 2 + 4 s): time spent retrying a batch is not idle time.
    o.exit_when_idle = Some(Duration::from_secs(3));
    let runner = tokio::spawn(local::consume(
        handler,
        o,
        Arc::default(),
        Box::new(std::io::sink()),
    ));
    // Take the database away once the first batches are in, for long enough to fail a few tries.
    let started = Instant::now();
    while db.count_if_exists("servicea_planet").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_up(false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_up(true).await;
    let summary = runner.await.unwrap().unwrap();
    assert!(summary.retries >= 2, "{summary:?}");
    assert_eq!(summary.records, 3_000, "{summary:?}");
    assert_eq!(db.planets().await, expected);
    assert_eq!(
        committed(&brokers, "outage", TOPIC, 6).iter().sum::<i64>(),
        3_000
    );
}

// ---- tansu, end to end ----

fn tansu() -> PathBuf {
    let candidates = [
        std::env::var_os("MSK_SYNC_TANSU").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH")
                .and_then(|path| std::env::split_paths(&path).map(|p| p.join("tansu")).find(|p| p.is_file()))
        })
        .unwrap_or_else(|| {
            panic!("tansu not found (MSK_SYNC_TANSU, ~/.cargo/bin, PATH): `cargo xtask setup` builds it")
        })
}

/// A tansu broker with in-memory storage on a free port, stopped when dropped.
struct Broker {
    child: Child,
    url: String,
    brokers: String,
}

impl Broker {
    async fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        let brokers = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(&brokers).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            url,
            brokers,
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &self.url,
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stops the runners whose flags it holds when dropped: a runner's loop blocks its worker thread, so a test that
/// fails while one runs would otherwise never end (the runtime waits for it) and never say why.
struct StopOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for stop in &self.0 {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// entity-sync built with the local runner, as a user runs it.
fn runner_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "entity-sync",
                "--features",
                "kafka",
                "--message-format",
                "json",
            ])
            .current_dir(repo())
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| !set_for_this_package(k)))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo build entity-sync");
        assert!(
            out.status.success(),
            "cargo build -p entity-sync --features kafka failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["target"]["name"] == "entity-sync")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("the entity-sync executable")
    })
}

/// `entity-sync consume` into `db`, with stderr captured.
fn spawn_consume(brokers: &str, db: &TestDb, group: &str, extra: &[&str]) -> Child {
    spawn_consume_at(brokers, &db.url, &default_config(), group, extra)
}

/// `entity-sync consume` into the database at `url` with the config file `config`, with stderr captured.
fn spawn_consume_at(brokers: &str, url: &str, config: &str, group: &str, extra: &[&str]) -> Child {
    Command::new(runner_binary())
        .args([
            "consume",
            "--brokers",
            brokers,
            "--topic",
            TOPIC,
            "--group",
            group,
            "--database-url",
            url,
            "--config",
            config,
            "--progress-every",
            "1s",
            "-X",
            "session.timeout.ms=6000",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start entity-sync consume")
}

/// Waits for a runner to exit by itself: (exit code, stderr).
async fn finished(child: Child) -> (Option<i32>, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the runner did not exit within 120 s")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The records a runner reported as applied ("consume: done: N records applied …").
fn applied(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("consume: done: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"))
}

/// `publish` with one record per producer batch: tansu 0.6 (memory storage) does not serve a fetch that starts
/// inside a multi-record batch, so a group that committed in the middle of one could never resume (seen here:
/// a consumer restarted after committing offset 40 of a 300-record batch got no record and a lag of 260).
async fn publish_file(brokers: &str, file: &Path) {
    let file = file.display().to_string();
    let args = [
        "publish",
        "--brokers",
        brokers,
        "-X",
        "batch.num.messages=1",
        &file,
    ];
    let run = cli(&entity_sync(), &args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// The Python interpreter with confluent-kafka (an independent producer): `$MSK_SYNC_TEST_PYTHON`, else the
/// venv `cargo xtask setup` makes.
fn python() -> PathBuf {
    std::env::var_os("MSK_SYNC_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/msk-sync-ci-venv/bin/python"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no Python with confluent-kafka (MSK_SYNC_TEST_PYTHON, ~/.cache/msk-sync-ci-venv): `cargo xtask setup` makes it")
        })
}

const PYTHON_PRODUCER: &str = r#"
import json, sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1]})
for i in range(2):
    v = {"changeType": "CREATED", "planetUuid": f"py-{i}", "planetName": f"From Python {i}"}
    p.produce("servicea.planet", key=f"py-{i}", value=json.dumps(v), partition=i, headers=[("source", b"python")])
assert p.flush(30) == 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_publish_then_consume_replays_events_and_a_signal_exits_cleanly() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 3).await;
    let db = TestDb::new(Backend::Sqlite, "tansu_events").await;
    publish_file(&broker.brokers, &event_file("mixed-partitions.json")).await;
    let py = Command::new(python())
        .args(["-c", PYTHON_PRODUCER, &broker.brokers])
        .output()
        .await
        .unwrap();
    assert!(
        py.status.success(),
        "python producer: {}",
        String::from_utf8_lossy(&py.stderr)
    );

    let reference = TestDb::new(Backend::Sqlite, "tansu_events_ref").await;
    assert_eq!(replay(&reference, &["mixed-partitions.json"]).await.code, 0);
    let mut expected = reference.planets().await;
    expected.extend((0..2).map(|i| (format!("py-{i}"), format!("From Python {i}"))));
    expected.sort();

    // No --exit-when-idle: the runner consumes until SIGTERM, then finishes its batch and exits 0.
    let runner = spawn_consume(&broker.brokers, &db, "events", &[]);
    let started = Instant::now();
    while db.planets_if_exists().await != expected {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "got {:?}",
            db.planets_if_exists().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Progress lines come every second (--progress-every 1s): let at least one be due before the signal.
    let started_at = started.elapsed();
    if started_at < Duration::from_millis(2_500) {
        tokio::time::sleep(Duration::from_millis(2_500) - started_at).await;
    }
    let pid = runner.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, stderr) = finished(runner).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("signal received"), "{stderr}");
    assert!(
        stderr.contains("consume: consuming 3 partitions:") && stderr.contains("lag:"),
        "progress lines:\n{stderr}"
    );
    assert_eq!(applied(&stderr), 13);
    assert_eq!(
        committed(&broker.brokers, "events", TOPIC, 3)
            .iter()
            .sum::<i64>(),
        13
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_exit_when_idle_waits_for_the_first_assignment() {
    // Joining a group on tansu takes about 20 s: a 3 s idle limit counted from the start stopped the runner
    // with nothing applied.
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 3).await;
    let db = TestDb::new(Backend::Sqlite, "tansu_idle").await;
    publish_file(&broker.brokers, &event_file("mixed-partitions.json")).await;
    let runner = spawn_consume(&broker.brokers, &db, "idle", &["--exit-when-idle", "3s"]);
    let (code, stderr) = finished(runner).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(applied(&stderr), 11, "{stderr}");
    let reference = TestDb::new(Backend::Sqlite, "tansu_idle_ref").await;
    assert_eq!(replay(&reference, &["mixed-partitions.json"]).await.code, 0);
    assert_eq!(db.planets().await, reference.planets().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_a_runner_killed_mid_stream_loses_nothing() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 4).await;
    let db = TestDb::new(Backend::Sqlite, "tansu_kill").await;
    let (file, expected) = generated(db.dir.path(), 4_000, 4).await;
    publish_file(&broker.brokers, &file).await;

    let mut first = spawn_consume(&broker.brokers, &db, "kill", &["--batch-size", "20"]);
    let started = Instant::now();
    while db.count_if_exists("servicea_planet").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "nothing applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.start_kill().unwrap(); // SIGKILL: no batch finished, no commit, no leaving the group
    first.wait().await.unwrap();
    let done: i64 = committed(&broker.brokers, "kill", TOPIC, 4)
        .iter()
        .map(|o| o.max(&0))
        .sum();
    assert!(
        done < 4_000,
        "the runner was not killed mid-stream ({done} committed)"
    );

    let second = spawn_consume(
        &broker.brokers,
        &db,
        "kill",
        // The killed member holds its partitions until its session (6 s) times out; idleness outlasts that.
        &["--batch-size", "20", "--exit-when-idle", "10s"],
    );
    let (code, stderr) = finished(second).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(applied(&stderr) >= 4_000 - done as u64, "{stderr}");
    assert_eq!(db.planets().await, expected);
    assert_eq!(
        committed(&broker.brokers, "kill", TOPIC, 4)
            .iter()
            .sum::<i64>(),
        4_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_two_runners_in_one_group_share_six_partitions() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 6).await;
    let db = TestDb::new(Backend::Postgres, "tansu_group").await;
    let (file, expected) = generated(db.dir.path(), 6_000, 6).await;

    // Both join first and settle on three partitions each; then the records come. (Published first, they
    // could all be applied by the member that joined first before the other one is in.)
    let args = ["--batch-size", "50", "--exit-when-idle", "15s"];
    let a = spawn_consume(&broker.brokers, &db, "pair", &args);
    let b = spawn_consume(&broker.brokers, &db, "pair", &args);
    tokio::time::sleep(Duration::from_secs(8)).await;
    publish_file(&broker.brokers, &file).await;
    let ((code_a, err_a), (code_b, err_b)) = tokio::join!(finished(a), finished(b));
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{err_a}\n{err_b}");
    let (na, nb) = (applied(&err_a), applied(&err_b));
    assert!(
        na > 0 && nb > 0,
        "both runners took partitions: {na} + {nb}"
    );
    assert!(na + nb >= 6_000, "{na} + {nb}");
    assert_eq!(db.planets().await, expected);
    assert_eq!(
        committed(&broker.brokers, "pair", TOPIC, 6)
            .iter()
            .sum::<i64>(),
        6_000
    );
}

// ---- faults: deadlines, signals, partitions ----

/// A TCP proxy to a database server that forwards faithfully until a client sends `pattern`; from then on it
/// stops answering: nothing more is forwarded either way, but every connection stays open and new ones are
/// accepted and never answered, as a server or network that hangs would. `heal` makes new connections work
/// again (the hung ones stay hung).
struct StallProxy {
    port: u16,
    stalled: Arc<AtomicBool>,
    healed: Arc<AtomicBool>,
}

impl StallProxy {
    async fn start(upstream: String, pattern: &'static [u8]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let healed = Arc::new(AtomicBool::new(false));
        let (flag, heal) = (Arc::clone(&stalled), Arc::clone(&healed));
        tokio::spawn(async move {
            let mut hung = Vec::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) && !heal.load(Ordering::SeqCst) {
                    hung.push(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let watch = if heal.load(Ordering::SeqCst) {
                    None
                } else {
                    Some(Arc::clone(&flag))
                };
                tokio::spawn(stall_pump(client, server, pattern, watch));
            }
        });
        Self {
            port,
            stalled,
            healed,
        }
    }

    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }
}

async fn stall_pump(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    pattern: &'static [u8],
    stall: Option<Arc<AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        if stall.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            // Hold both ends open, answer nothing.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        tokio::select! {
            n = client.read(&mut up) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                if let Some(stall) = &stall
                    && up[..n].windows(pattern.len()).any(|w| w == pattern)
                {
                    stall.store(true, Ordering::SeqCst);
                    continue;
                }
                if server.write_all(&up[..n]).await.is_err() { return; }
            }
            n = server.read(&mut down) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                if client.write_all(&down[..n]).await.is_err() { return; }
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// A progress writer the test can read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_database_that_stops_answering_mid_statement_fails_the_batch_at_its_deadline() {
    let db = TestDb::new(Backend::Postgres, "kafka_stall").await;
    let (_cluster, brokers) = mock_with_planets(2, 40, 10).await;
    let upstream = host_port(&server_url(Backend::Postgres));
    let proxy = StallProxy::start(upstream.clone(), b"INSERT INTO").await;
    let url = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let handler = Arc::new(entity_sync_handler(&url).await);
    let mut o = options(&brokers, "stall");
    o.batch_timeout = Duration::from_secs(3);
    o.progress_every = Duration::from_secs(1);
    o.exit_when_idle = Some(Duration::from_secs(3));
    let lines = Lines::default();
    let runner = tokio::spawn(local::consume(
        handler,
        o,
        Arc::default(),
        Box::new(lines.clone()),
    ));
    let started = Instant::now();
    while !proxy.stalled() {
        assert!(started.elapsed() < Duration::from_secs(60), "no INSERT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hung statement holds the batch for its deadline, and the progress line says so meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.heal();
    let summary = tokio::time::timeout(Duration::from_secs(90), runner)
        .await
        .expect("the runner hangs on a database that stopped answering")
        .unwrap()
        .unwrap();
    assert!(summary.retries >= 1, "{summary:?}");
    assert_eq!(summary.records, 40, "{summary:?}");
    assert_eq!(db.count("servicea_planet").await, 40);
    let progress = lines.text();
    assert!(
        progress.contains("on the database for a batch of") && progress.contains("(deadline 3 s)"),
        "{progress}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_sigterm_ends_a_runner_whose_database_stopped_answering() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 3).await;
    let db = TestDb::new(Backend::Postgres, "tansu_stall").await;
    let upstream = host_port(&server_url(Backend::Postgres));
    let proxy = StallProxy::start(upstream.clone(), b"INSERT INTO").await;
    let url = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    // A batch deadline longer than the test: only the signal can end the wait.
    let config = db.dir.path().join("msk-sync.toml");
    let text = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[database]\nbatch_timeout_seconds = 600\n"),
    )
    .unwrap();
    publish_file(&broker.brokers, &event_file("mixed-partitions.json")).await;
    let runner = spawn_consume_at(
        &broker.brokers,
        &url,
        &config.display().to_string(),
        "stall",
        &[],
    );
    let started = Instant::now();
    while !proxy.stalled() {
        assert!(started.elapsed() < Duration::from_secs(90), "no INSERT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let pid = runner.id().unwrap();
    let signalled = Instant::now();
    for _ in 0..2 {
        // As an operator would: a second SIGTERM must not be needed, nor hurt.
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
    let (code, stderr) = finished(runner).await;
    let took = signalled.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(6),
        "SIGTERM took {took:?}\n{stderr}"
    );
    assert!(stderr.contains("signal received"), "{stderr}");
    assert!(
        stderr.contains("on the database for a batch of") && stderr.contains("rolled back"),
        "{stderr}"
    );
    assert!(db.planets_if_exists().await.is_empty());
    assert_eq!(
        committed(&broker.brokers, "stall", TOPIC, 3),
        vec![-1, -1, -1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_runner_whose_partitions_the_group_took_away_is_not_idle() {
    // The group takes the runner's partitions and gives none back (here: the topic's metadata turns to
    // "unknown topic"); --exit-when-idle must not end that as a success with the stream unapplied.
    let (cluster, brokers) = mock_with_planets(2, 20, 10).await;
    let recorder = Arc::new(Recorder::default());
    let mut o = options(&brokers, "taken");
    o.exit_when_idle = Some(Duration::from_secs(2));
    o.assignment_timeout = Some(Duration::from_secs(6));
    o.progress_every = Duration::from_secs(1);
    o.properties
        .push(("topic.metadata.refresh.interval.ms".into(), "500".into()));
    let lines = Lines::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = tokio::spawn(local::consume(
        Arc::clone(&recorder),
        o,
        Arc::clone(&stop),
        Box::new(lines.clone()),
    ));
    let started = Instant::now();
    while recorder.succeeded.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster
        .topic_error(
            TOPIC,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the runner did not stop")
        .unwrap();
    let progress = lines.text();
    match outcome {
        Err(ConsumeError::NotAssigned(e)) => {
            assert!(e.contains("took this runner's partitions"), "{e}");
            assert!(e.contains("records applied"), "{e}");
        }
        other => panic!("expected NotAssigned, got {other:?}\n{progress}"),
    }
    assert!(
        progress.contains("no partitions: the group took them"),
        "{progress}"
    );
    assert!(progress.contains("0 partitions held"), "{progress}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_interval_under_a_second_or_a_namespace_cloudwatch_refuses_is_a_bad_invocation()
{
    let db = TestDb::new(Backend::Sqlite, "kafka_progress").await;
    let (code, stderr) = consume_until_exit(
        &db,
        &[
            "--brokers",
            NOTHING_LISTENS,
            "--topic",
            TOPIC,
            "--progress-every",
            "0s",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--progress-every"), "{stderr}");

    for namespace in ["AWS/Lambda", "costs$", "*"] {
        let out = Command::new(runner_binary())
            .args(["consume", "--emf", "--database-url", &db.url, "--config"])
            .arg(default_config())
            .args(["--brokers", NOTHING_LISTENS, "--topic", TOPIC])
            .env("MSK_SYNC_METRICS_NAMESPACE", namespace)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{namespace}: {stderr}");
        assert!(stderr.contains("MSK_SYNC_METRICS_NAMESPACE"), "{stderr}");
    }
}

/// The last progress line that starts with `consume: {state}`, and the numbers it gives as (partitions held,
/// records in hand, fetched ahead by the client).
fn progress_numbers(line: &str) -> (u64, u64, u64) {
    let number_before = |what: &str| -> u64 {
        let at = line
            .find(what)
            .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
        line[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
    };
    (
        number_before(" partitions held"),
        number_before(" records in hand"),
        number_before(" fetched ahead by the client"),
    )
}

/// Partitions the group assigns to a runner while a batch of its waits for a retry (the database is down)
/// are paused at once, and stay paused through the retries: their backlog is not fetched into memory while
/// nothing can be applied. It is applied once the database is back. (Issue 37, item 3: RSS went from 20 to
/// 116 MB in 5 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_partitions_assigned_while_a_batch_is_retried_are_not_fetched() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 4).await;
    let db = TestDb::new(Backend::Postgres, "tansu_paused").await;
    let (file, expected) = generated(db.dir.path(), 2_000, 4).await;
    publish_file(&broker.brokers, &file).await;

    // Runner A on PostgreSQL behind a proxy that is down from the start; a connection attempt gives up
    // after 1 s (connect_timeout_seconds), so A spends its time in the retries' backoff.
    let (proxy, proxied) = ToggleProxy::in_front_of(&db).await;
    let config = db.dir.path().join("msk-sync.toml");
    let text = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[database]\nconnect_timeout_seconds = 1\n"),
    )
    .unwrap();
    let handler = Arc::new(
        entity_sync()
            .load(Some(&config))
            .unwrap()
            .handler(Some(&proxied))
            .await
            .unwrap(),
    );
    proxy.set_up(false).await;
    let batch_size = 50;
    let mut o = options(&broker.brokers, "paused");
    o.batch_size = batch_size;
    o.progress_every = Duration::from_secs(1);
    o.exit_when_idle = Some(Duration::from_secs(5));
    let a_lines = Lines::default();
    let a_stop = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(local::consume(
        handler,
        o.clone(),
        Arc::clone(&a_stop),
        Box::new(a_lines.clone()),
    ));
    // Runner B in the same group fails every batch; it holds half the partitions until it stops.
    let b_stop = Arc::new(AtomicBool::new(false));
    // A failing assertion stops both runners, so that the test ends and says why.
    let _stop = StopOnDrop(vec![Arc::clone(&a_stop), Arc::clone(&b_stop)]);
    let b_lines = Lines::default();
    let b = tokio::spawn(local::consume(
        Arc::new(Recorder {
            fail_always: true,
            ..Recorder::default()
        }),
        o,
        Arc::clone(&b_stop),
        Box::new(b_lines.clone()),
    ));
    let last = |lines: &Lines| lines.text().lines().last().unwrap_or_default().to_string();
    let started = Instant::now();
    // The group has split the partitions, and A is waiting to retry a batch (its first progress lines may
    // say "consuming": a preflight attempt and its backoff can fall between two lines).
    while !(last(&a_lines).contains(" 2 partitions held")
        && last(&b_lines).contains(" 2 partitions held")
        && a_lines.text().contains("retrying a failed batch"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the group did not split the partitions, or A never retried:\nA:\n{}\nB:\n{}",
            a_lines.text(),
            b_lines.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B leaves the group: its two partitions go to A, while A's batch waits for a retry.
    b_stop.store(true, Ordering::SeqCst);
    // B stops either with its batch unfinished or, when a rebalance took that batch's partitions from it
    // meanwhile (a busy machine delays heartbeats), with the batch dropped: neither is what this test is about.
    let b_outcome = tokio::time::timeout(Duration::from_secs(30), b)
        .await
        .expect("runner B did not stop")
        .unwrap();
    assert!(
        matches!(b_outcome, Err(ConsumeError::Unfinished(_)))
            || matches!(&b_outcome, Ok(s) if s.records == 0 && s.dropped_on_revoke > 0),
        "{b_outcome:?}"
    );
    let mark = a_lines.text().len();
    let started = Instant::now();
    // Five progress lines with the four partitions held while retrying: the statistics (every second)
    // have seen the new partitions by then.
    let retrying_with_four = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("consume: retrying a failed batch")
                    && l.contains(" 4 partitions held")
            })
            .count()
    };
    while retrying_with_four(&a_lines.text()[mark..]) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "A did not take B's partitions while retrying:\n{}",
            &a_lines.text()[mark..]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = a_lines.text();
    for line in seen
        .lines()
        .filter(|l| l.starts_with("consume: retrying a failed batch"))
    {
        let (_, in_hand, ahead) = progress_numbers(line);
        assert!(
            in_hand <= batch_size as u64 && ahead <= batch_size as u64,
            "records fetched while the database is away: {line}\n{seen}"
        );
    }

    // The database comes back: A applies every record, B's former partitions too.
    proxy.set_up(true).await;
    let summary = tokio::time::timeout(Duration::from_secs(120), a)
        .await
        .expect("runner A did not finish")
        .unwrap()
        .unwrap();
    assert_eq!(summary.records, 2_000, "{summary:?}\n{}", a_lines.text());
    assert!(summary.retries >= 2, "{summary:?}");
    assert_eq!(db.planets().await, expected);
    assert_eq!(
        committed(&broker.brokers, "paused", TOPIC, 4)
            .iter()
            .sum::<i64>(),
        2_000
    );
}

/// A runner whose partitions the group gives to another member, and assigns none back, is not idle: with
/// `--exit-when-idle` it exits 1 after `--assignment-timeout` saying so and how much it applied, and its
/// progress lines say it has no partitions (issue 37, item 4: it exited 0, "done", with most of the stream
/// unapplied). The other member's client id sorts first, so librdkafka's range assignor gives it the topic's
/// only partition (tansu's member ids are the client id and a UUID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_a_runner_whose_partitions_another_member_took_exits_1_saying_so() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 1).await;
    let db = TestDb::new(Backend::Sqlite, "tansu_taken").await;
    let (file, expected) = generated(db.dir.path(), 200, 1).await;
    publish_file(&broker.brokers, &file).await;
    let runner = spawn_consume(
        &broker.brokers,
        &db,
        "taken",
        &["--exit-when-idle", "60s", "--assignment-timeout", "8s"],
    );
    let started = Instant::now();
    while db.planets_if_exists().await != expected {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the runner did not apply the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let taker = std::thread::spawn({
        let (brokers, stop) = (broker.brokers.clone(), Arc::clone(&stop));
        move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "taken")
                .set("client.id", "a-taker")
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "6000")
                .create()
                .unwrap();
            consumer.subscribe(&[TOPIC]).unwrap();
            let mut held = false;
            while !stop.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
                held |= consumer.assignment().is_ok_and(|a| a.count() > 0);
            }
            held
        }
    });
    let (code, stderr) = finished(runner).await;
    stop.store(true, Ordering::SeqCst);
    let took = taker.join().unwrap();
    assert!(took, "the other member never got the partition:\n{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the group took this runner's partitions and assigned none for 8 s, with 200 records applied"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("consume: no partitions: the group took them"),
        "{stderr}"
    );
    assert!(!stderr.contains("consume: done:"), "{stderr}");
}

/// `replay` keeps the batch deadline too: a database that stops answering mid-statement fails the file's
/// batch as transient (exit 1) at `batch_timeout_seconds`, rolled back, instead of hanging the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_fails_at_the_batch_deadline_when_the_database_stops_answering() {
    let db = TestDb::new(Backend::Postgres, "replay_stall").await;
    let upstream = host_port(&server_url(Backend::Postgres));
    let proxy = StallProxy::start(upstream.clone(), b"INSERT INTO").await;
    let url = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let config = db.dir.path().join("msk-sync.toml");
    let text = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[database]\nbatch_timeout_seconds = 3\n"),
    )
    .unwrap();
    let file = event_file("mixed-partitions.json").display().to_string();
    let started = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        cli(
            &entity_sync(),
            &[
                "replay",
                "--database-url",
                &url,
                "--config",
                &config.display().to_string(),
                &file,
            ],
        ),
    )
    .await
    .expect("replay hangs on a database that stopped answering");
    assert!(proxy.stalled(), "no INSERT reached the proxy");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "the database did not finish it within 3 s (database.batch_timeout_seconds); rolled back"
        ),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(db.planets_if_exists().await.is_empty());
}

/// The server keeps `statement_timeout_seconds`: a statement that waits on a lock past it is cancelled
/// by PostgreSQL, and the batch fails as transient long before the batch deadline, naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_cancelled_by_the_server() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::new(Backend::Postgres, "statement_timeout").await;
    // The table, made by a first replay.
    assert_eq!(replay(&db, &["mixed-partitions.json"]).await.code, 0);
    let config = db.dir.path().join("msk-sync.toml");
    let text = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[database]\nstatement_timeout_seconds = 1\nbatch_timeout_seconds = 60\n"),
    )
    .unwrap();
    let lock = db.conn.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE servicea_planet IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &db.url,
            "--config",
            &config.display().to_string(),
            &event_file("mixed-partitions.json").display().to_string(),
        ],
    )
    .await;
    let took = started.elapsed();
    lock.rollback().await.unwrap();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("statement timeout"), "{}", run.stderr);
    assert!(took < Duration::from_secs(20), "{took:?}: {}", run.stderr);
}

/// A server that accepts connections and never answers (a hung host) fails each connection attempt at
/// `connect_timeout_seconds`, naming the server and the deadline, long before the batch deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_answers_fails_at_the_connect_timeout() {
    let db = TestDb::new(Backend::Postgres, "connect_timeout").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let config = db.dir.path().join("msk-sync.toml");
    let text = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[database]\nconnect_timeout_seconds = 2\nbatch_timeout_seconds = 60\n"),
    )
    .unwrap();
    let started = Instant::now();
    let run = cli(
        &entity_sync(),
        &[
            "replay",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:{port}/test"),
            "--config",
            &config.display().to_string(),
            &event_file("mixed-partitions.json").display().to_string(),
        ],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "database at 127.0.0.1:{port}: it accepts TCP connections, but no database session was \
             established within 2 s"
        )),
        "{}",
        run.stderr
    );
    assert!(took < Duration::from_secs(20), "{took:?}: {}", run.stderr);
}
