//! The tables behind a [`Sink`]: created when missing and compared with the config before the first batch
//! ([`preflight`]).

use super::*;

impl Sink {
    /// The preflight, once per instance before the first batch (asked again on the next batch if it did not
    /// pass): every table is created if missing, then compared with the config ([`preflight`]).
    pub async fn preflight(&self) -> Result<(), PreflightError> {
        match self
            .ready
            .get_or_try_init(|| async {
                let server = preflight::Server::detect(&self.db).await?;
                self.max_packet
                    .store(server.max_packet, std::sync::atomic::Ordering::Relaxed);
                let mut problems = Vec::new();
                for expected in self.expected_tables() {
                    match self.found_or_created(&expected, &server).await? {
                        Ok(found) if self.is_dead_letter_table(&expected) => {
                            // An older table gets the columns redrive needs (see [`redrive`]).
                            let (found, refused) =
                                self.dead_letter_columns(&expected, found, &server).await?;
                            problems.extend(
                                preflight::compare(&expected, &found, &server)
                                    .into_iter()
                                    .filter(|p| !refused.iter().any(|r| r.column == p.column)),
                            );
                            problems.extend(refused);
                        }
                        Ok(found) => {
                            problems.extend(preflight::compare(&expected, &found, &server))
                        }
                        Err(missing) => problems.push(missing),
                    }
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(PreflightError::Misconfigured(problems))
                }
            })
            .await
            .map(|_| ())
        {
            // The preflight is the first thing a batch asks of the database: a connection failure shows here.
            Err(PreflightError::Database(e)) if connection_failure(&e) => {
                Err(PreflightError::Database(self.unreachable(e).await))
            }
            // A missing database or grant: no retry cures it.
            Err(PreflightError::Database(e)) => match setup_refusal(&e) {
                Some(problem) => Err(PreflightError::Misconfigured(vec![problem])),
                None => Err(PreflightError::Database(e)),
            },
            other => other,
        }
    }

    /// The table as the catalog lists it, after creating it if it was missing. Only a table the catalog does
    /// not list is created: an existing one needs no CREATE grant, and the least-privileged user has none.
    /// `Ok(Err(problem))`: missing, and the user may not create it.
    pub(super) async fn found_or_created(
        &self,
        expected: &preflight::Expected,
        server: &preflight::Server,
    ) -> Result<Result<preflight::Found, Problem>, DbErr> {
        if let Some(found) = preflight::inspect(&self.db, expected, server).await? {
            return Ok(Ok(found));
        }
        if !self.options.create_tables {
            return Ok(Err(preflight::not_created(expected)));
        }
        let create = preflight::create_statement(expected, server);
        let refused = self.db.execute_unprepared(&create).await.err();
        // PostgreSQL's IF NOT EXISTS can still fail when another instance creates the same table at the same
        // moment: then the table is there now.
        match (
            preflight::inspect(&self.db, expected, server).await,
            refused,
        ) {
            (Ok(Some(found)), _) => Ok(Ok(found)),
            // The server refused the CREATE (a privilege, a key it cannot index): every retry would too.
            (Ok(None), Some(e)) => match preflight::create_refused(&e) {
                Some(said) => Ok(Err(preflight::missing(expected, redact_quoted(&said)))),
                None => Err(e),
            },
            (Err(e), _) => Err(e),
            (Ok(None), None) => Err(DbErr::Custom(format!(
                "table {} is still missing after CREATE TABLE",
                expected.def.name
            ))),
        }
    }

    /// Whether the database would create a missing table, asked without creating anything: PostgreSQL and
    /// SQLite run the CREATE TABLE in a transaction rolled back (their DDL is transactional); MySQL and
    /// MariaDB, whose CREATE TABLE commits, create it as a TEMPORARY table of this session and drop it, which
    /// finds the definitions they refuse (a key too long to index, a JSON key) but not a missing CREATE
    /// privilege. `Some(reason)`: refused.
    pub(super) async fn would_create(
        &self,
        expected: &preflight::Expected,
        server: &preflight::Server,
    ) -> Result<Option<String>, DbErr> {
        let create = preflight::create_statement(expected, server);
        let mysql = server.backend == DbBackend::MySql;
        let create = if mysql {
            create.replacen("CREATE TABLE", "CREATE TEMPORARY TABLE", 1)
        } else {
            create
        };
        let txn = self.db.begin().await?;
        if mysql {
            // The CREATE privilege, asked with a CREATE … LIKE of a table that does not exist: the server checks
            // the privilege first (1142 "CREATE command denied"), then finds no source (1146), creating nothing.
            let like = format!(
                "CREATE TABLE `{0}` LIKE `msk_sync_absent_{1}`",
                expected.def.name,
                std::process::id()
            );
            if let Err(e) = txn.execute_unprepared(&like).await
                && let Some(said) = preflight::create_denied(&e)
                && said.contains("CREATE")
            {
                txn.rollback().await?;
                return Ok(Some(redact_quoted(&said)));
            }
        }
        let said = match txn.execute_unprepared(&create).await {
            Ok(_) if mysql => {
                txn.execute_unprepared(&format!(
                    "DROP TEMPORARY TABLE IF EXISTS `{}`",
                    expected.def.name
                ))
                .await?;
                None
            }
            Ok(_) => None,
            // Without the CREATE TEMPORARY TABLES privilege the definition cannot be tried this way.
            Err(e) if mysql && preflight::create_denied(&e).is_some() => None,
            Err(e) => match preflight::create_refused(&e) {
                Some(said) => Some(redact_quoted(&said)),
                None => return Err(e),
            },
        };
        txn.rollback().await?;
        Ok(said)
    }

    /// What `config check --database-url` reports: the problems, and the tables that do not exist yet (the
    /// first batch creates them). Creates nothing.
    pub async fn check(&self) -> Result<(Vec<Problem>, Vec<String>), DbErr> {
        match self.check_tables().await {
            Err(e) => match setup_refusal(&e) {
                Some(problem) => Ok((vec![problem], Vec::new())),
                None => Err(e),
            },
            done => done,
        }
    }

    pub(super) async fn check_tables(&self) -> Result<(Vec<Problem>, Vec<String>), DbErr> {
        let server = preflight::Server::detect(&self.db).await?;
        let mut problems = Vec::new();
        let mut missing = Vec::new();
        for expected in self.expected_tables() {
            match preflight::inspect(&self.db, &expected, &server).await? {
                Some(found) if self.is_dead_letter_table(&expected) => {
                    // Columns the first batch adds are not a problem: listed with what is not there yet.
                    let to_add = self.dead_letter_columns_to_add(&expected, &found);
                    problems.extend(
                        preflight::compare(&expected, &found, &server)
                            .into_iter()
                            .filter(|p| {
                                !p.column.as_deref().is_some_and(|c| {
                                    to_add.is_some() && dead_letter::ADDED_LATER.contains(&c)
                                })
                            }),
                    );
                    missing.extend(to_add);
                }
                Some(found) => problems.extend(preflight::compare(&expected, &found, &server)),
                None if !self.options.create_tables => {
                    problems.push(preflight::not_created(&expected))
                }
                None => {
                    if let Some(said) = self.would_create(&expected, &server).await? {
                        problems.push(preflight::missing(&expected, said));
                    }
                    missing.push(expected.def.name)
                }
            }
        }
        Ok((problems, missing))
    }

    pub(super) fn is_dead_letter_table(&self, expected: &preflight::Expected) -> bool {
        !expected.deletes && expected.def.name == self.options.dead_letter_table
    }

    /// Every table the mappings write, then the dead-letter table (its columns as [`dead_letter`] defines them),
    /// and the tombstones when a mapping has a version column.
    pub(crate) fn expected_tables(&self) -> Vec<preflight::Expected> {
        let backend = self.backend();
        let name = &self.options.dead_letter_table;
        let tombstones = self
            .mappings
            .iter()
            .any(|m| m.version().is_some())
            .then(|| {
                preflight::Expected::new(
                    version::tombstone_def(),
                    version::create_tombstone_table(backend),
                    true,
                )
            });
        self.mappings
            .iter()
            .map(|m| preflight::Expected::new(m.table().clone(), m.create_table(backend), true))
            .chain([preflight::Expected::new(
                dead_letter::table_def(name),
                dead_letter::create_table(name, backend),
                false,
            )])
            .chain(tombstones)
            .collect()
    }

    /// [`Sink::preflight`] for callers that only tell transient errors from success; a mismatch becomes a
    /// [`DbErr::Custom`] with its message. [`crate::pipeline::Handler`] calls the preflight itself first.
    pub async fn ensure_tables(&self) -> Result<(), DbErr> {
        self.preflight().await.map_err(|e| match e {
            PreflightError::Database(e) => e,
            e @ PreflightError::Misconfigured(_) => DbErr::Custom(e.to_string()),
        })
    }
}
