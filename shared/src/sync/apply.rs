//! Writing one batch in one transaction: bulk statements, row by row when the database refuses a row as data,
//! retries on lock conflicts, and what a transaction does besides ([`Extra`]).

use super::*;

/// Why [`Sink::apply`] did not apply a batch, or cannot tell whether it did. Both are transient: applying a
/// batch twice gives the same tables, so a retry is always safe.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Rolled back (or never begun): nothing of the batch was written.
    #[error("batch not applied (retry it): {0}")]
    NotApplied(#[from] DbErr),
    /// COMMIT was sent and the connection failed before its answer came: the server may have committed
    /// the batch or not, and reporting "not applied" would be a lie half the time.
    #[error("commit outcome unknown — the batch may have been applied; retrying is safe: {0}")]
    CommitUnknown(DbErr),
    /// Rolled back because the database refused the statement for its setup, not for a row (a missing
    /// privilege, a missing database: [`setup_refusal`]): every retry would be refused alike, so this is the
    /// misconfigured class, not a transient failure.
    #[error("batch not applied, and retrying cannot help until the database is fixed: {0}")]
    Misconfigured(Problem),
    /// `redrive`: this many of the chunk's dead letters were applied by another `redrive` since they were
    /// read; rolled back, so that the chunk is read again without them.
    #[error("{0} dead letter(s) of this chunk were redriven by another process meanwhile")]
    Claimed(usize),
}

/// Commits `txn`, telling a refusal (the server answered: rolled back) from a lost answer.
pub(super) async fn commit(txn: DatabaseTransaction) -> Result<(), ApplyError> {
    txn.commit().await.map_err(|e| {
        if database_error(&e).is_some() {
            ApplyError::NotApplied(e)
        } else {
            ApplyError::CommitUnknown(e)
        }
    })
}

/// What a batch's transaction does besides writing its changes and dead letters.
pub(crate) enum Extra<'x> {
    /// A batch: commit.
    Commit,
    /// `redrive`: the dead-letter rows these messages had ((record, message_index)). Those not dead-lettered
    /// again are deleted in the same transaction; the others are rewritten with their new reason and attempt
    /// count, the first of each record taking its raw data.
    Redrive(&'x [(&'x redrive::RecordKey, u32)]),
    /// `replay --plan`: every upserted row read before and after, then the transaction rolled back.
    Plan(&'x mut plan::Probe),
}

impl Sink {
    /// Writes one batch in one transaction: every mapping's upserts and deletes, and the dead letters. On any
    /// error the transaction rolls back and nothing of the batch is written.
    ///
    /// A row the database refuses as data would fail the batch on every retry and block its partitions, so
    /// when the bulk attempt fails with such an error, the batch is applied again row by row (each in a
    /// savepoint) and the refused rows are dead-lettered through `reject`, which builds the dead letter of an
    /// [`Origin`]. Any other error (connection, deadlock, timeout, permissions) is returned for a retry.
    pub async fn apply<'e>(
        &self,
        changes: &[Changes],
        dead_letters: &[DeadLetter<'e>],
        reject: &(dyn Fn(Origin, &str) -> DeadLetter<'e> + Sync),
    ) -> Result<Applied, ApplyError> {
        self.apply_with(changes, dead_letters, reject, &mut Extra::Commit)
            .await
    }

    /// [`Sink::apply`], with what else the transaction does ([`Extra`]).
    pub(crate) async fn apply_with<'e>(
        &self,
        changes: &[Changes],
        dead_letters: &[DeadLetter<'e>],
        reject: &(dyn Fn(Origin, &str) -> DeadLetter<'e> + Sync),
        extra: &mut Extra<'_>,
    ) -> Result<Applied, ApplyError> {
        match self
            .apply_retrying(changes, dead_letters, reject, extra)
            .await
        {
            Err(ApplyError::NotApplied(e)) if connection_failure(&e) => {
                Err(ApplyError::NotApplied(self.unreachable(e).await))
            }
            Err(ApplyError::NotApplied(e)) => match setup_refusal(&e) {
                Some(problem) => Err(ApplyError::Misconfigured(problem)),
                None => Err(ApplyError::NotApplied(e)),
            },
            other => other,
        }
    }

    /// [`Sink::apply`] but for naming the server of a connection failure.
    pub(super) async fn apply_retrying<'e>(
        &self,
        changes: &[Changes],
        dead_letters: &[DeadLetter<'e>],
        reject: &(dyn Fn(Origin, &str) -> DeadLetter<'e> + Sync),
        extra: &mut Extra<'_>,
    ) -> Result<Applied, ApplyError> {
        self.ensure_tables().await?;
        let mut retries = 0;
        loop {
            let done = if self.any_too_large(changes) {
                // Rows no statement can carry: the row-by-row path dead-letters them and applies the rest.
                self.apply_row_by_row(changes, dead_letters, reject, extra)
                    .await
            } else {
                match self.apply_bulk(changes, dead_letters, extra).await {
                    Err(ApplyError::NotApplied(e)) if data_error(&e).is_some() => {
                        tracing::warn!(error = %redact_quoted(&e.to_string()), "the database refused a row: applying the batch row by row");
                        self.apply_row_by_row(changes, dead_letters, reject, extra)
                            .await
                    }
                    other => other,
                }
            };
            match done {
                // Key order makes lock cycles between writers of one table rare, not impossible (gap locks,
                // an upsert of a key another writer deletes): the database picked this batch as the victim
                // and rolled it back, and running it again at once usually succeeds.
                Err(ApplyError::NotApplied(e))
                    if lock_conflict(&e) && retries < LOCK_CONFLICT_RETRIES =>
                {
                    retries += 1;
                    self.lock_conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = jittered_backoff(retries);
                    tracing::warn!(retry = retries, retry_in_ms = wait.as_millis() as u64, error = %redact_quoted(&e.to_string()),
                        "lock conflict with another writer: batch rolled back, applying it again");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// A connection failure that names the server and the cause. The pool hides the cause: it retries a
    /// refused connection until its timeout and then reports only "pool timed out", so one plain TCP
    /// connection attempt finds it out.
    pub(super) async fn unreachable(&self, e: DbErr) -> DbErr {
        let Some(address) = &self.address else {
            return e;
        };
        let probe = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(address.as_str()),
        )
        .await;
        let cause = match probe {
            // A session that was there and ended under a statement: not a session that never came.
            Ok(Ok(_)) if session_lost(&e) => "it accepts TCP connections, but closed this batch's session in \
                the middle of the batch (the session was killed, the server restarted, or on MySQL / MariaDB a \
                statement was larger than max_allowed_packet); the batch was rolled back"
                .to_string(),
            Ok(Ok(_)) => format!(
                "it accepts TCP connections, but no database session was established within {} s",
                self.options.connect_timeout.as_secs()
            ),
            Ok(Err(io)) => io.to_string(),
            Err(_) => "TCP connection attempt timed out after 3 s".to_string(),
        };
        DbErr::Conn(sea_orm::RuntimeErr::Internal(format!(
            "database at {address}: {cause} ({e})"
        )))
    }

    /// Batches rolled back by a deadlock or serialization failure and applied again, since the sink opened.
    pub fn lock_conflicts(&self) -> usize {
        self.lock_conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) async fn apply_bulk(
        &self,
        changes: &[Changes],
        dead_letters: &[DeadLetter<'_>],
        extra: &mut Extra<'_>,
    ) -> Result<Applied, ApplyError> {
        let backend = self.backend();
        let txn = self.db.begin().await?;
        self.before_writes(&txn, changes, extra).await?;
        let mut applied = Applied::default();
        for (mapping, changes) in self.mappings.iter().zip(changes) {
            if let Some(v) = mapping.version() {
                self.apply_versioned(&txn, mapping.as_ref(), v, changes, false, &mut applied)
                    .await?;
                continue;
            }
            let table = mapping.table();
            let (upserts, deletes) = changes.split();
            applied.upserted += upserts.len();
            applied.deleted += deletes.len();
            let max_rows = self.options.max_rows_per_statement;
            let budget = self.packet_budget();
            let (up_arrays, up_chunks) =
                statements(backend, &upserts, table.columns.len(), max_rows, budget);
            let (del_arrays, del_chunks) =
                statements(backend, &deletes, table.key.len(), max_rows, budget);
            let upserts = up_chunks.into_iter().map(|chunk| {
                let chunk: Vec<&[SqlValue]> = chunk.iter().map(|(row, _)| *row).collect();
                match &up_arrays {
                    Some(types) => Ok(unnest::upsert(table, types, &chunk)),
                    None => Ok(backend.build(&upsert_statement(table, &chunk)?)),
                }
            });
            let deletes = del_chunks.into_iter().map(|chunk| {
                let chunk: Vec<&[SqlValue]> = chunk.iter().map(|(key, _)| *key).collect();
                match &del_arrays {
                    Some(types) => Ok(unnest::delete(table, types, &chunk)),
                    None => Ok(backend.build(&delete_statement(table, &chunk))),
                }
            });
            execute_all(&txn, upserts.chain(deletes)).await?;
        }
        self.write_dead_letters(&txn, dead_letters, extra).await?;
        applied.dead_lettered = dead_letters.len();
        self.finish(txn, changes, dead_letters, extra).await?;
        Ok(applied)
    }

    pub(super) async fn apply_row_by_row<'e>(
        &self,
        changes: &[Changes],
        dead_letters: &[DeadLetter<'e>],
        reject: &(dyn Fn(Origin, &str) -> DeadLetter<'e> + Sync),
        extra: &mut Extra<'_>,
    ) -> Result<Applied, ApplyError> {
        let txn = self.db.begin().await?;
        self.before_writes(&txn, changes, extra).await?;
        let mut applied = Applied::default();
        for (mapping, changes) in self.mappings.iter().zip(changes) {
            if let Some(v) = mapping.version() {
                self.apply_versioned(&txn, mapping.as_ref(), v, changes, true, &mut applied)
                    .await?;
                continue;
            }
            let table = mapping.table();
            let (upserts, deletes) = changes.split();
            let ops = upserts.into_iter().map(|(row, o)| (true, row, o));
            for (is_upsert, values, origin) in
                ops.chain(deletes.into_iter().map(|(key, o)| (false, key, o)))
            {
                if let Some(reason) = self.too_large(values) {
                    applied
                        .rejected
                        .push((origin, format!("{}: {reason}", table.name)));
                    continue;
                }
                let savepoint = txn.begin().await?;
                let done = if is_upsert {
                    savepoint
                        .execute(&upsert_statement(table, &[values])?)
                        .await
                } else {
                    savepoint.execute(&delete_statement(table, &[values])).await
                };
                match done {
                    Ok(_) => {
                        savepoint.commit().await?;
                        if is_upsert {
                            applied.upserted += 1
                        } else {
                            applied.deleted += 1
                        }
                    }
                    Err(e) => match data_error(&e) {
                        Some(reason) => {
                            savepoint.rollback().await?;
                            applied
                                .rejected
                                .push((origin, format!("{}: {reason}", table.name)));
                        }
                        None => return Err(e.into()),
                    },
                }
            }
        }
        let mut all: Vec<DeadLetter<'e>> = dead_letters.to_vec();
        all.extend(
            applied
                .rejected
                .iter()
                .map(|(origin, reason)| reject(*origin, reason)),
        );
        dead_letter::share_raw(&mut all);
        self.write_dead_letters(&txn, &all, extra).await?;
        applied.dead_lettered = all.len();
        self.finish(txn, changes, &all, extra).await?;
        Ok(applied)
    }

    pub(super) async fn write_dead_letters(
        &self,
        txn: &impl ConnectionTrait,
        dead_letters: &[DeadLetter<'_>],
        extra: &Extra<'_>,
    ) -> Result<(), DbErr> {
        let table = dead_letter::table_def(&self.options.dead_letter_table);
        let rows = self.rows_per_statement(self.backend(), table.columns.len());
        // Every column but the key and `created_at`: a replay writes the same values again, and a record
        // that reuses coordinates (a hand-made event) never pairs its reason with another record's value.
        // `attempts` too only in a redrive: a replay that dead-letters a message again keeps its count.
        let redrive = matches!(extra, Extra::Redrive(_));
        let update: Vec<&str> = table
            .non_key_columns()
            .filter(|c| redrive || *c != "attempts")
            .collect();
        let Some(budget) = self.packet_budget() else {
            for chunk in table::in_statements(dead_letters, rows) {
                let rows: Vec<Vec<SqlValue>> = chunk.iter().map(DeadLetter::row).collect();
                let rows: Vec<&[SqlValue]> = rows.iter().map(Vec::as_slice).collect();
                txn.execute(&upsert_statement_only(&table, &rows, &update)?)
                    .await?;
            }
            return Ok(());
        };
        // MySQL / MariaDB: statements under max_allowed_packet, and a dead letter whose raw data alone is over
        // it is written without (its reason says so), so that writing dead letters never fails on size.
        let built: Vec<Vec<SqlValue>> = dead_letters
            .iter()
            .map(|d| {
                let row = d.row();
                match self.too_large(&row) {
                    Some(why) => {
                        d.row_without_raw(&format!("its raw key and value are not kept: {why}"))
                    }
                    None => row,
                }
            })
            .collect();
        for chunk in table::in_packets(&built, rows, Some(budget), |r| table::row_bytes(r)) {
            let rows: Vec<&[SqlValue]> = chunk.iter().map(Vec::as_slice).collect();
            txn.execute(&upsert_statement_only(&table, &rows, &update)?)
                .await?;
        }
        Ok(())
    }

    /// What [`Extra`] does once the transaction is open, before any write: `--plan` reads the rows as they are.
    pub(super) async fn before_writes(
        &self,
        txn: &DatabaseTransaction,
        changes: &[Changes],
        extra: &mut Extra<'_>,
    ) -> Result<(), ApplyError> {
        match extra {
            Extra::Plan(probe) => probe.read(self, txn, changes, plan::When::Before).await?,
            Extra::Redrive(selected) => {
                let gone = self.claim_dead_letters(txn, selected).await?;
                if gone > 0 {
                    return Err(ApplyError::Claimed(gone));
                }
            }
            Extra::Commit => {}
        }
        Ok(())
    }

    /// Ends a batch's transaction as [`Extra`] says: commit, commit after deleting the redriven dead letters,
    /// or (`--plan`) read the rows as they became and roll back.
    pub(super) async fn finish(
        &self,
        txn: DatabaseTransaction,
        changes: &[Changes],
        written: &[DeadLetter<'_>],
        extra: &mut Extra<'_>,
    ) -> Result<(), ApplyError> {
        match extra {
            Extra::Commit => commit(txn).await,
            Extra::Redrive(selected) => {
                let again: std::collections::HashSet<(String, i32, i64, u32, u32)> = written
                    .iter()
                    .map(|d| {
                        let topic = dead_letter::topic_key(&d.record.topic).0.into_owned();
                        let r = d.record;
                        (topic, r.partition, r.offset, d.occurrence, d.at.index)
                    })
                    .collect();
                let resolved: Vec<(&redrive::RecordKey, u32)> = selected
                    .iter()
                    .filter(|(k, index)| {
                        !again.contains(&(
                            k.topic_key.clone(),
                            k.partition,
                            k.offset,
                            k.occurrence,
                            *index,
                        ))
                    })
                    .copied()
                    .collect();
                self.delete_dead_letters(&txn, &resolved).await?;
                commit(txn).await
            }
            Extra::Plan(probe) => {
                probe.read(self, &txn, changes, plan::When::After).await?;
                txn.rollback().await?;
                Ok(())
            }
        }
    }

    pub(super) fn rows_per_statement(&self, backend: DbBackend, columns: usize) -> usize {
        rows_per_statement(backend, columns, self.options.max_rows_per_statement)
    }

    /// MySQL / MariaDB: the bytes one statement's values may take, `max_allowed_packet` less room for the
    /// rest of the packet; `None` when there is no such limit (PostgreSQL, SQLite) or it is not known yet.
    pub(super) fn packet_budget(&self) -> Option<usize> {
        match self.max_packet.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n.saturating_sub(PACKET_SLACK).max(1)),
        }
    }

    /// Why a row cannot be sent at all: its values alone are over [`Sink::packet_budget`].
    pub(super) fn too_large(&self, row: &[SqlValue]) -> Option<String> {
        let budget = self.packet_budget()?;
        let bytes = table::row_bytes(row);
        (bytes > budget).then(|| {
            format!(
                "the row takes {bytes} bytes, more than one statement may carry on this server \
                 (max_allowed_packet = {}): raise max_allowed_packet to apply it",
                self.max_packet.load(std::sync::atomic::Ordering::Relaxed)
            )
        })
    }

    /// Whether any row of the batch is [`Sink::too_large`]: such a batch goes row by row, where it is refused.
    pub(super) fn any_too_large(&self, changes: &[Changes]) -> bool {
        self.packet_budget().is_some()
            && changes.iter().any(|c| {
                c.ops.iter().flatten().any(|(op, _)| match op {
                    Op::Upsert(row) | Op::Delete(row) => self.too_large(row).is_some(),
                })
            })
    }
}
/// How often [`Sink::apply`] runs a batch again after a deadlock or serialization failure before it fails
/// the batch as transient.
pub(super) const LOCK_CONFLICT_RETRIES: u32 = 4;

/// 50 ms, 100 ms, 200 ms… plus up to as much again at random, so that two writers that collided do not
/// collide again in step.
pub(super) fn jittered_backoff(retry: u32) -> Duration {
    let base = 50u64 << Ord::min(retry.saturating_sub(1), 6);
    // A randomly keyed hasher is randomness enough for a jitter, without a crate for it.
    let noise = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(base + noise % (base + 1))
}
