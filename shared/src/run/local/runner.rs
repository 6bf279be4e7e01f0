//! The consume loop: polling, batching, applying, retrying with every partition paused, committing, and what
//! it says while it runs.

use super::*;

pub(super) struct Runner<H> {
    pub(super) consumer: BaseConsumer<RunnerContext>,
    pub(super) handler: Arc<H>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) options: ConsumeOptions,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) progress: Box<dyn Write + Send>,
    /// Records polled but not yet in a batch (the one that would have passed the payload limit, or records
    /// that arrived while a failing batch was retried), in poll order.
    pub(super) pending: VecDeque<InHand>,
    pub(super) summary: Summary,
    /// Since when the runner holds no partition (`None` while it holds some).
    pub(super) unassigned_since: Option<Instant>,
    /// When the last progress line was written, and the records applied by then: the next line's rate is
    /// over the interval since, not since the start (which reads low for minutes after a slow group join).
    pub(super) progress_mark: Option<(Instant, u64)>,
}

/// A record in hand with the bytes it adds to the event's JSON.
pub(super) struct InHand {
    pub(super) record: Record<'static>,
    pub(super) bytes: usize,
}

/// Why gathering a batch ended without a batch.
pub(super) enum Idle {
    Stop,
    Timeout,
    Continue,
    /// No partition was assigned within `assignment_timeout`.
    NotAssigned,
}

impl<H: BatchHandler> Runner<H> {
    pub(super) fn run(mut self) -> Result<Summary, ConsumeError> {
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

    pub(super) fn reached_max_records(&self) -> bool {
        self.options
            .max_records
            .is_some_and(|max| self.summary.records >= max)
    }

    /// Polls until a batch is full, its window has passed, or the next record would pass the payload limit.
    pub(super) fn gather(
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
    pub(super) fn poll_one(&mut self, wait: Duration) -> Option<InHand> {
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
    pub(super) fn not_assigned(&self) -> String {
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
    pub(super) fn drop_revoked(&mut self, batch: &mut Vec<Record<'static>>) {
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
    pub(super) fn apply(
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

    pub(super) fn apply_until_done(
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
    pub(super) fn held(&self) -> HashSet<(String, i32)> {
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
    pub(super) fn pause_all(&self) {
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
    pub(super) fn resume_all(&self) {
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
    pub(super) fn handle_within_deadline(
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
    pub(super) fn commit(&self, batch: &[Record<'static>]) {
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

    pub(super) fn write_progress(&mut self, started: Instant, state: &str) {
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
