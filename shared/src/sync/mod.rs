//! Applying a batch's operations to SQL: collapse per entity key, then bulk statements in one transaction.
//!
//! - [`mapping`]: the [`Mapping`] trait every sync implements;
//! - [`declarative`]: syncs described in config; [`typed`]: syncs over a sea-orm entity;
//! - [`table`]: table definitions and the identifier rule; [`dead_letter`]: the dead-letter table;
//! - [`preflight`]: every table compared with the config before the first batch (the misconfigured class);
//! - [`version`]: the version guard of syncs with a version column, tombstones, stale changes;
//! - [`unnest`]: PostgreSQL's upsert and delete with a column bound as one array;
//! - this file: the [`Changes`] of one batch and the [`Sink`] that writes them.

pub(crate) mod dead_letter;
pub(crate) mod declarative;
pub(crate) mod mapping;
pub mod normal;
pub(crate) mod plan;
pub(crate) mod preflight;
pub(crate) mod redrive;
pub(crate) mod table;
pub mod typed;
mod unnest;
pub mod version;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, OnConflict, Query, Value as SqlValue, ValueTuple,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};
use tokio::sync::OnceCell;

pub use dead_letter::DeadLetter;
pub use mapping::{Mapping, Meta};
pub use preflight::{PreflightError, Problem};
pub use table::TableDef;

/// Which message a change came from: the position of its record in the batch's order, and the message's index
/// within the record. Kept so that a row the database rejects can be dead-lettered with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The record's position in the batch's order.
    pub record: usize,
    /// The message's index within its record.
    pub index: u32,
}

/// What a batch does to one mapping's table, after collapsing: at most one operation per key.
#[derive(Debug, Default)]
pub struct Changes {
    /// Where the key columns are in an upserted row.
    key: Vec<usize>,
    ops: Vec<Option<(Op, Origin)>>,
    /// (hash of the key, slot in `ops` of its latest change). The key values are compared where they are, in
    /// the rows, never copied out.
    slots: hashbrown::HashTable<(u64, usize)>,
    hasher: hashbrown::DefaultHashBuilder,
    superseded: usize,
    /// Where the version is in an upserted row, when the mapping has one ([`version`]); a delete then carries
    /// its version after its key values.
    version: Option<usize>,
}

#[derive(Debug)]
enum Op {
    Upsert(Vec<SqlValue>),
    Delete(Vec<SqlValue>),
}

/// The key values of an operation: the key columns of an upserted row, or a delete's key.
fn key_of<'o>(key: &'o [usize], op: &'o Op) -> impl Iterator<Item = &'o SqlValue> + Clone {
    let (row, positions): (&[SqlValue], Option<&[usize]>) = match op {
        Op::Upsert(row) => (row, Some(key)),
        Op::Delete(values) => (values, None),
    };
    let picked = positions
        .into_iter()
        .flatten()
        .filter_map(move |&i| row.get(i));
    // A versioned delete carries its version after the key values.
    let all = positions
        .is_none()
        .then_some(row)
        .into_iter()
        .flatten()
        .take(key.len());
    picked.chain(all)
}

impl Changes {
    /// The changes of a table whose key columns are at `key` in its rows.
    pub fn new(key: Vec<usize>) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// As [`Changes::new`], with room for `n` changes (a batch's size), so the list and its table of keys do not
    /// grow and rehash while the batch is planned.
    pub fn with_capacity(key: Vec<usize>, n: usize) -> Self {
        let mut changes = Self::new(key);
        changes.ops.reserve(n);
        changes.slots.reserve(n, |&(h, _)| h);
        changes
    }

    /// With a version at `version` in every upserted row: within the batch, the highest version per key wins
    /// (ties: batch order), and deletes carry their version ([`Changes::delete_at`]).
    pub fn with_version(mut self, version: Option<usize>) -> Self {
        self.version = version;
        self
    }

    /// Records a delete with its version (`None` when the mapping has no version column).
    pub fn delete_at(&mut self, key: Vec<SqlValue>, version: Option<SqlValue>, origin: Origin) {
        let mut values = key;
        if self.version.is_some() {
            values.extend(version);
        }
        self.push(Op::Delete(values), origin);
    }

    /// Records an upsert of `row`; a later change of the same key replaces it.
    pub fn upsert(&mut self, row: Vec<SqlValue>, origin: Origin) {
        self.push(Op::Upsert(row), origin);
    }

    /// Records a delete of the entity whose key values are `key` (with a version column, followed by the
    /// delete's version, as [`Changes::delete_at`] puts it).
    pub fn delete(&mut self, key: Vec<SqlValue>, origin: Origin) {
        self.push(Op::Delete(key), origin);
    }

    fn push(&mut self, mut op: Op, origin: Origin) {
        // One key, one version: compared from here on (collapse, stale check, tombstones, SQL guard) and bound
        // to the statement as the column holds them.
        let klen = self.key.len();
        match &mut op {
            Op::Upsert(row) => {
                for &i in self.key.iter().chain(self.version.as_ref()) {
                    if let Some(v) = row.get_mut(i) {
                        normal::normalise(v);
                    }
                }
            }
            // A delete's key values, then (versioned) its version.
            Op::Delete(values) => values
                .iter_mut()
                .take(klen + usize::from(self.version.is_some()))
                .for_each(normal::normalise),
        }
        let mut state = self.hasher.build_hasher();
        for v in key_of(&self.key, &op) {
            v.hash(&mut state);
        }
        let hash = state.finish();
        let slot = self.ops.len();
        let (key, ops) = (&self.key, &self.ops);
        let same = |&(h, s): &(u64, usize)| {
            h == hash
                && ops[s]
                    .as_ref()
                    .is_some_and(|(other, _)| key_of(key, other).eq(key_of(key, &op)))
        };
        match self.slots.find_mut(hash, same) {
            Some((_, previous)) => {
                self.superseded += 1;
                let version = |op: &Op| version::of_op(self.version, self.key.len(), op);
                let older = self.version.is_some()
                    && self.ops[*previous]
                        .as_ref()
                        .is_some_and(|(prev, _)| version(&op) < version(prev));
                if older {
                    // A lower version than the key's change so far: it loses, wherever it is in the batch.
                    return;
                }
                // Last in batch order wins: the earlier change would be overwritten anyway, so never send it.
                // It is replaced in its slot, so the list holds one change per key, not one per message.
                self.ops[*previous] = Some((op, origin));
                return;
            }
            None => {
                self.slots.insert_unique(hash, (hash, slot), |&(h, _)| h);
            }
        }
        self.ops.push(Some((op, origin)));
    }

    /// The messages whose change survived the collapse, with whether it is an upsert (else a delete).
    pub fn origins(&self) -> impl Iterator<Item = (Origin, bool)> + '_ {
        self.ops
            .iter()
            .flatten()
            .map(|(op, origin)| (*origin, matches!(op, Op::Upsert(_))))
    }

    /// Messages whose change a later message of the same key replaced.
    pub fn superseded(&self) -> usize {
        self.superseded
    }

    /// (rows to upsert, keys to delete), each in key order, with where each came from.
    ///
    /// Key order, not batch order: two writers whose batches share keys then lock those rows in the same
    /// order, so neither can hold a row the other waits for while waiting for one the other holds (a
    /// deadlock). The order is [`cmp_values`], the same in every writer whatever the backend.
    fn split(&self) -> (Vec<Values<'_>>, Vec<Values<'_>>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (op, origin) in self.ops.iter().flatten() {
            match op {
                Op::Upsert(row) => upserts.push((row.as_slice(), *origin)),
                Op::Delete(key) => deletes.push((key.as_slice(), *origin)),
            }
        }
        let key = self.key.as_slice();
        upserts.sort_by(|(a, _), (b, _)| {
            cmp_keys(
                key.iter().filter_map(|&i| a.get(i)),
                key.iter().filter_map(|&i| b.get(i)),
            )
        });
        deletes.sort_by(|(a, _), (b, _)| cmp_keys(a.iter(), b.iter()));
        (upserts, deletes)
    }
}

/// Lexicographic [`cmp_values`] over two keys' values.
fn cmp_keys<'v>(
    a: impl Iterator<Item = &'v SqlValue>,
    b: impl Iterator<Item = &'v SqlValue>,
) -> std::cmp::Ordering {
    let mut b = b;
    for x in a {
        let Some(y) = b.next() else {
            return std::cmp::Ordering::Greater;
        };
        match cmp_values(x, y) {
            std::cmp::Ordering::Equal => {}
            other => return other,
        }
    }
    if b.next().is_some() {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Equal
    }
}

/// A total order over key values that every writer computes alike: first by kind (boolean, integer, float,
/// text, bytes, anything else), NULL first within a kind, then by value (integers by number whatever their
/// width, text by its UTF-8 bytes, floats by [`f64::total_cmp`]). It need not be the database's collation:
/// lock order only has to be the same in every writer.
fn cmp_values(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    use SqlValue as V;
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Kind<'v> {
        Bool(Option<bool>),
        Int(Option<i128>),
        Float(Option<FloatOrd>),
        Text(Option<&'v [u8]>),
        Bytes(Option<&'v [u8]>),
        /// Dates, UUIDs, JSON, decimals…: their Debug text, which names the variant and renders the value
        /// the same way in every writer. Rare as keys, so the allocation does not matter.
        Other(String),
    }
    fn kind(v: &SqlValue) -> Kind<'_> {
        match v {
            V::Bool(x) => Kind::Bool(*x),
            V::TinyInt(x) => Kind::Int(x.map(i128::from)),
            V::SmallInt(x) => Kind::Int(x.map(i128::from)),
            V::Int(x) => Kind::Int(x.map(i128::from)),
            V::BigInt(x) => Kind::Int(x.map(i128::from)),
            V::TinyUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::SmallUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::Unsigned(x) => Kind::Int(x.map(i128::from)),
            V::BigUnsigned(x) => Kind::Int(x.map(i128::from)),
            V::Float(x) => Kind::Float(x.map(|f| FloatOrd(f64::from(f)))),
            V::Double(x) => Kind::Float(x.map(FloatOrd)),
            V::String(x) => Kind::Text(x.as_deref().map(str::as_bytes)),
            V::Bytes(x) => Kind::Bytes(x.as_deref()),
            other => Kind::Other(format!("{other:?}")),
        }
    }
    kind(a).cmp(&kind(b))
}

/// An f64 ordered by [`f64::total_cmp`].
#[derive(Clone, Copy)]
struct FloatOrd(f64);

impl PartialEq for FloatOrd {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for FloatOrd {}
impl PartialOrd for FloatOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for FloatOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A row (upsert) or key (delete), with the message it came from.
type Values<'a> = (&'a [SqlValue], Origin);

/// Rows written by one applied batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserted: usize,
    /// Rows deleted.
    pub deleted: usize,
    /// Dead letters written.
    pub dead_lettered: usize,
    /// Changes the database refused as data (a value out of its column's range, an invalid byte sequence…),
    /// with the reason: they were dead-lettered instead of failing the batch forever.
    pub rejected: Vec<(Origin, String)>,
    /// Changes not applied because the row or its tombstone has a newer version ([`version`]).
    pub stale: Vec<Origin>,
}

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
async fn commit(txn: DatabaseTransaction) -> Result<(), ApplyError> {
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

/// Database settings that do not come from the URL.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The dead-letter table's name.
    pub dead_letter_table: String,
    /// Upper bound on rows per INSERT / keys per DELETE; the bind-parameter limit may lower it.
    pub max_rows_per_statement: usize,
    /// The pool's size.
    pub max_connections: u32,
    /// How long connecting (or taking a connection from the pool) may take.
    pub connect_timeout: Duration,
    /// How long one statement may run: PostgreSQL's `statement_timeout`, MariaDB's `max_statement_time`
    /// (the server cancels the statement; a server that stops answering is the batch deadline's case).
    pub statement_timeout: Duration,
    /// How long a batch's database work may take, kept by the caller (the runner, Lambda mode) on its side:
    /// it also covers a server or network that stops answering. Below the template's Lambda timeout.
    pub batch_timeout: Duration,
    /// How long a versioned sync's delete is remembered ([`version`]).
    pub tombstone_retention: Duration,
    /// Whether the preflight creates a missing table; `false`: a missing table is a [`Problem`].
    pub create_tables: bool,
    /// Whether connecting may create a SQLite file that is not there (`mode=rwc`); `replay --plan`, which
    /// leaves nothing behind, says no.
    pub create_database: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            dead_letter_table: dead_letter::DEFAULT_TABLE.to_string(),
            max_rows_per_statement: 2_000,
            // One batch at a time per instance: one connection, and one spare for table creation.
            max_connections: 2,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            batch_timeout: Duration::from_secs(90),
            tombstone_retention: version::DEFAULT_RETENTION,
            create_tables: true,
            create_database: true,
        }
    }
}

/// The database side of a function instance: a lazily connected pool and the tables its mappings write.
#[derive(Debug)]
pub struct Sink {
    db: DatabaseConnection,
    mappings: Vec<Arc<dyn Mapping>>,
    options: SinkOptions,
    ready: OnceCell<()>,
    lock_conflicts: std::sync::atomic::AtomicUsize,
    /// host:port of a database server (never the URL: it may hold a password), for connection errors.
    address: Option<String>,
    pruning: version::Pruning,
    /// MySQL / MariaDB: the server's `max_allowed_packet`, read by the preflight (0: not known, or another
    /// backend). Statements are cut to stay under it and a row over it is dead-lettered ([`Sink::packet_budget`]).
    max_packet: std::sync::atomic::AtomicUsize,
}

/// Whether a connection given back to the pool still answers within `limit`. The pool pings it anyway, with
/// no deadline: a connection whose statement was dropped at the batch deadline (a server or network that
/// stopped answering) would hold its place in the pool for good. One that does not answer is closed.
async fn answers_within<C: sea_orm::sqlx::Connection>(
    conn: &mut C,
    limit: Duration,
) -> Result<bool, sea_orm::sqlx::Error> {
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(sea_orm::sqlx::Error::PoolTimedOut),
    }
}

impl Sink {
    /// Opens the pool without connecting, so a cold start never fails on the database: the first batch
    /// connects, and a failure there is transient like any other.
    pub async fn open(
        url: &str,
        mappings: Vec<Arc<dyn Mapping>>,
        options: SinkOptions,
    ) -> Result<Self, DbErr> {
        let url = if options.create_database {
            url.to_string()
        } else {
            existing_sqlite_file(url)?
        };
        let mut connect = ConnectOptions::new(url.clone());
        connect
            .max_connections(options.max_connections)
            .min_connections(0)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy(true)
            // PostgreSQL: `statement_timeout` set in the startup packet, no round trip.
            .statement_timeout(options.statement_timeout)
            // sqlx logs statements with their values, and values are message payloads.
            .sqlx_logging(false);
        // MariaDB: `max_statement_time` (seconds) on each new connection. MySQL has no such variable (its
        // `max_execution_time` covers SELECT only): the refusal is ignored there, the batch deadline remains.
        let seconds = options.statement_timeout.as_secs_f64();
        let released = options.connect_timeout;
        connect.map_sqlx_mysql_pool_opts(move |pool| {
            pool.after_connect(move |conn, _| {
                Box::pin(async move {
                    use sea_orm::sqlx::Executor;
                    let set = format!("SET SESSION max_statement_time = {seconds}");
                    if let Err(e) = conn.execute(sea_orm::sqlx::AssertSqlSafe(set)).await {
                        tracing::debug!(error = %e, "no max_statement_time (not MariaDB)");
                    }
                    Ok(())
                })
            })
            .after_release(move |conn, _| Box::pin(answers_within(conn, released)))
        });
        connect.map_sqlx_postgres_pool_opts(move |pool| {
            pool.after_release(move |conn, _| Box::pin(answers_within(conn, released)))
        });
        let db = Database::connect(connect).await?;
        Ok(Self {
            db,
            mappings,
            options,
            ready: OnceCell::new(),
            lock_conflicts: Default::default(),
            address: server_address(&url),
            pruning: version::Pruning::default(),
            max_packet: Default::default(),
        })
    }

    /// The database's kind.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

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
    async fn found_or_created(
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
    async fn would_create(
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

    async fn check_tables(&self) -> Result<(Vec<Problem>, Vec<String>), DbErr> {
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

    fn is_dead_letter_table(&self, expected: &preflight::Expected) -> bool {
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
    async fn apply_retrying<'e>(
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
    async fn unreachable(&self, e: DbErr) -> DbErr {
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

    async fn apply_bulk(
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

    async fn apply_row_by_row<'e>(
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

    async fn write_dead_letters(
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
    async fn before_writes(
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
    async fn finish(
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

    fn rows_per_statement(&self, backend: DbBackend, columns: usize) -> usize {
        rows_per_statement(backend, columns, self.options.max_rows_per_statement)
    }

    /// MySQL / MariaDB: the bytes one statement's values may take, `max_allowed_packet` less room for the
    /// rest of the packet; `None` when there is no such limit (PostgreSQL, SQLite) or it is not known yet.
    fn packet_budget(&self) -> Option<usize> {
        match self.max_packet.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n.saturating_sub(PACKET_SLACK).max(1)),
        }
    }

    /// Why a row cannot be sent at all: its values alone are over [`Sink::packet_budget`].
    fn too_large(&self, row: &[SqlValue]) -> Option<String> {
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
    fn any_too_large(&self, changes: &[Changes]) -> bool {
        self.packet_budget().is_some()
            && changes.iter().any(|c| {
                c.ops.iter().flatten().any(|(op, _)| match op {
                    Op::Upsert(row) | Op::Delete(row) => self.too_large(row).is_some(),
                })
            })
    }
}

/// What a MySQL packet holds besides the values of its statement (command byte, statement id, flags, the
/// null bitmap and types are counted per value by [`table::value_bytes`]).
const PACKET_SLACK: usize = 4096;

/// The most rows of `columns` values a `VALUES` statement takes: the bind limit's, at most `max_rows`.
fn rows_per_statement(backend: DbBackend, columns: usize, max_rows: usize) -> usize {
    (table::bind_limit(backend) / columns.max(1)).clamp(1, max_rows.max(1))
}

/// How a table's rows (or keys) of `width` values go out. PostgreSQL takes each column as one array when the
/// rows allow it ([`unnest`]): one statement text however many rows, so a statement takes as many as `max_rows`
/// (`max_rows_per_statement`). Otherwise `VALUES` statements under the bind limit, in recurring sizes
/// ([`table::in_statements`]).
fn statements<'v, 'a>(
    backend: DbBackend,
    values: &'v [Values<'a>],
    width: usize,
    max_rows: usize,
    budget: Option<usize>,
) -> (Option<unnest::ArrayColumns>, Vec<&'v [Values<'a>]>) {
    let arrays = (backend == DbBackend::Postgres)
        .then(|| unnest::ArrayColumns::of(values.iter().map(|(v, _)| *v), width))
        .flatten();
    let chunks = match arrays {
        Some(_) => values.chunks(max_rows.max(1)).collect(),
        None => table::in_packets(
            values,
            rows_per_statement(backend, width, max_rows),
            budget,
            |(v, _)| table::row_bytes(v),
        )
        .collect(),
    };
    (arrays, chunks)
}

/// Runs `statements` in order on `txn`, building each while the database runs the one before: the building
/// (the statement's text, a copy of every value) is CPU work of this thread that would otherwise leave the
/// database idle, statement after statement. `join!` polls the statement first, which sends it and waits for
/// the answer; the next one is built in that wait. Only the first is built while the database waits, which is
/// why [`table::in_statements`] puts the smallest first. A statement that fails stops the rest: the one built
/// in its wait is dropped unsent.
async fn execute_all(
    txn: &DatabaseTransaction,
    mut statements: impl Iterator<Item = Result<Statement, DbErr>>,
) -> Result<(), DbErr> {
    let mut next = statements.next().transpose()?;
    while let Some(statement) = next {
        let (ran, built) = tokio::join!(txn.execute_raw(statement), async {
            statements.next().transpose()
        });
        ran?;
        next = built?;
    }
    Ok(())
}

/// `INSERT … VALUES (…), (…) ON CONFLICT (key) DO UPDATE SET every other column` (MySQL: ON DUPLICATE KEY).
fn upsert_statement(
    table: &TableDef,
    rows: &[&[SqlValue]],
) -> Result<sea_orm::sea_query::InsertStatement, DbErr> {
    let update: Vec<&str> = table.non_key_columns().collect();
    upsert_statement_only(table, rows, &update)
}

fn upsert_statement_only(
    table: &TableDef,
    rows: &[&[SqlValue]],
    update: &[&str],
) -> Result<sea_orm::sea_query::InsertStatement, DbErr> {
    let mut stmt = Query::insert();
    stmt.into_table(Alias::new(&table.name))
        .columns(table.columns.iter().map(Alias::new));
    for row in rows {
        stmt.values(row.iter().cloned().map(Expr::val))
            .map_err(|e| DbErr::Custom(format!("row for {}: {e}", table.name)))?;
    }
    let key = table.key_columns().map(Alias::new);
    let update = table.set_on_conflict(update).into_iter().map(Alias::new);
    stmt.on_conflict(OnConflict::columns(key).update_columns(update).to_owned());
    Ok(stmt)
}

/// `DELETE … WHERE key IN (…)`, or `(k1, k2) IN ((…), …)` for a composite key.
fn delete_statement(table: &TableDef, keys: &[&[SqlValue]]) -> sea_orm::sea_query::DeleteStatement {
    let mut stmt = Query::delete();
    stmt.from_table(Alias::new(&table.name));
    let columns: Vec<&str> = table.key_columns().collect();
    if let [column] = columns.as_slice() {
        stmt.and_where(
            Expr::col(Alias::new(*column)).is_in(keys.iter().filter_map(|k| k.first().cloned())),
        );
    } else {
        stmt.and_where(
            Expr::tuple(columns.iter().map(|c| Expr::col(Alias::new(*c))))
                .in_tuples(keys.iter().map(|k| ValueTuple::Many(k.to_vec()))),
        );
    }
    stmt
}

/// How often [`Sink::apply`] runs a batch again after a deadlock or serialization failure before it fails
/// the batch as transient.
const LOCK_CONFLICT_RETRIES: u32 = 4;

/// 50 ms, 100 ms, 200 ms… plus up to as much again at random, so that two writers that collided do not
/// collide again in step.
fn jittered_backoff(retry: u32) -> Duration {
    let base = 50u64 << Ord::min(retry.saturating_sub(1), 6);
    // A randomly keyed hasher is randomness enough for a jitter, without a crate for it.
    let noise = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(base + noise % (base + 1))
}

/// A SQLite URL that opens its file only if it exists (`mode=rwc` becomes `mode=rw`), or why not: the file is
/// missing. Any other URL as it is.
fn existing_sqlite_file(url: &str) -> Result<String, DbErr> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return Ok(url.to_string());
    }
    let options = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| DbErr::Custom(format!("SQLite URL: {e}")))?;
    let file = options.get_filename();
    let in_memory = file.as_os_str() == ":memory:" || url.contains("mode=memory");
    if !in_memory && !file.exists() {
        return Err(DbErr::Custom(format!(
            "the SQLite file {} does not exist (nothing is created here)",
            file.display()
        )));
    }
    Ok(url.replace("mode=rwc", "mode=rw"))
}

/// The host:port of a PostgreSQL or MySQL URL (default ports filled in), `None` for SQLite. Only the part
/// after the user info's last `@` is read, so a password never ends up in it.
fn server_address(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let port = match scheme {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        _ => return None,
    };
    let authority = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = authority.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    })
}

/// The connection could not be made or was lost before a statement's answer: nothing the database said.
fn connection_failure(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e.as_ref(),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut
        ),
        _ => false,
    }
}

/// A refusal about the database's setup, which no retry can cure (the misconfigured class), naming what to
/// fix: a missing database (PostgreSQL 3D000, MySQL / MariaDB 1049), a missing privilege (PostgreSQL 42501,
/// MySQL / MariaDB 1044 database, 1142 table, 1143 column), a table or column gone since the preflight
/// (PostgreSQL 42P01 / 42703, MySQL 1146 / 1054). Failed logins are not among them: a password being rotated
/// is transient.
pub(crate) fn setup_refusal(err: &DbErr) -> Option<Problem> {
    let db = database_error(err)?;
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let number = db
        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    let said = db.message().to_string();
    let (expected, what) = match (number, code.as_str()) {
        (Some(1049), _) | (None, "3D000") => (
            "the database the URL names to exist (create it, or fix the URL)",
            "the database",
        ),
        (Some(1044 | 1142 | 1143), _) | (None, "42501") => (
            "the database user to have the privilege this statement needs (GRANT it)",
            "the database user",
        ),
        (Some(1146 | 1054), _) | (None, "42P01" | "42703") => (
            "the tables and columns the preflight found to be still there",
            "the database",
        ),
        _ => return None,
    };
    Some(Problem {
        table: String::new(),
        column: None,
        expected: expected.to_string(),
        found: format!("{what} refused it: {said}"),
    })
}

/// A session lost under a statement (its socket closed or broke), as opposed to none to be had from the pool.
fn session_lost(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(e.as_ref(), sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        }
        _ => false,
    }
}

/// The database's own error behind a [`DbErr`], if the database answered with one.
fn database_error(err: &DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    use sea_orm::{RuntimeErr, sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match e.as_ref() {
        sqlx::Error::Database(db) => Some(db.as_ref()),
        _ => None,
    }
}

/// A deadlock or serialization failure: the database rolled the transaction back to let another writer
/// through, and the same batch applied again will most likely succeed. PostgreSQL 40P01 / 40001, MySQL and
/// MariaDB 1213 (deadlock) / 1205 (lock wait timeout), SQLite BUSY / LOCKED (after the pool's busy timeout).
fn lock_conflict(err: &DbErr) -> bool {
    let Some(db) = database_error(err) else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        matches!(my.number(), 1205 | 1213)
    } else if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
    } else {
        code == "40P01" || code == "40001"
    }
}

/// What the database may refuse a row for — its content or its size — on every backend, in one place. Such a
/// refusal comes back on every retry, so the row is dead-lettered instead of blocking its partitions.
mod refused {
    /// SQLSTATE classes: 22 data exception (a value out of range, invalid text, too long), 23 integrity
    /// constraint violation, 54 program limit exceeded (PostgreSQL 54000: an index row larger than a
    /// btree page allows, as a key of more than about 2,700 bytes is). MySQL and MariaDB report SQLSTATE
    /// too, but not always a telling one.
    pub const SQLSTATE_CLASSES: [&str; 3] = ["22", "23", "54"];

    /// MySQL / MariaDB error numbers about a row, several of which report SQLSTATE HY000 or 42000:
    /// 1048 column cannot be null, 1062 duplicate entry (another unique index), 1118 row size too large,
    /// 1216 / 1217 / 1451 / 1452 foreign keys, 1264 out of range, 1265 data truncated, 1292 incorrect
    /// value, 1300 invalid character string, 1366 incorrect string value, 1367 illegal value, 1406 data too
    /// long, 1411 incorrect datetime, 1690 value out of range, 3140 invalid JSON, 3819 (MySQL) / 4025
    /// (MariaDB) check constraint failed.
    pub const MYSQL: [u16; 19] = [
        1048, 1062, 1118, 1216, 1217, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1451, 1452,
        1690, 3140, 3819, 4025,
    ];

    /// SQLite primary result codes (extended codes keep them in their low byte): 18 too big, 19
    /// constraint, 20 datatype mismatch.
    pub const SQLITE: [i32; 3] = [18, 19, 20];
}

/// Why the database refused a statement, when the refusal is about the row ([`refused`]): retrying cannot
/// help, but the row can be dead-lettered. `None` for everything else.
///
/// The reason keeps the database's words, with every value it quotes redacted ([`redact_quoted`]).
fn data_error(err: &DbErr) -> Option<String> {
    use sea_orm::sqlx;
    let db = database_error(err)?;
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let sqlstate = || {
        refused::SQLSTATE_CLASSES
            .iter()
            .any(|c| code.starts_with(c))
    };
    let is_data = if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        sqlstate() || refused::MYSQL.contains(&my.number())
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.parse::<i32>()
            .is_ok_and(|c| refused::SQLITE.contains(&(c & 0xff)))
    } else {
        sqlstate()
    };
    is_data.then(|| {
        format!(
            "the database refused the row ({code}): {}",
            redact_quoted(db.message())
        )
    })
}

/// A database message with the values it quotes replaced by `...`, and the names it quotes kept: the names
/// of columns, tables, constraints, indexes, encodings and types are the database's, and an operator needs
/// them; a value is the message's.
///
/// A quoted text is a name when the word before it says so (`column "x"`, `relation "t"`, `constraint
/// "t_pkey"`, `encoding "UTF8"`, `for key 'PRIMARY'`) or when it is in backquotes (MySQL); anything else
/// quoted is a value (`…: "abc"`, `value "99999999999" is out of range`, `Duplicate entry 'k' for key`).
/// A value may hold its own quote character, so it ends at the last quote followed by ` for ` (MySQL's
/// `'…' for column`), else at the last quote of the message: a mistake redacts too much, never too little.
fn redact_quoted(message: &str) -> String {
    /// Words before a quoted name, lower case.
    const NAMES: [&str; 17] = [
        "column",
        "relation",
        "table",
        "constraint",
        "index",
        "key",
        "encoding",
        "type",
        "schema",
        "database",
        "sequence",
        "domain",
        "collation",
        "function",
        "trigger",
        "view",
        "field",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['\'', '"', '`']) {
        let (before, from) = rest.split_at(open);
        out.push_str(before);
        let q = from.as_bytes()[0] as char;
        let inside = &from[1..];
        let word = out
            .trim_end_matches(' ')
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        out.push(q);
        if q == '`' || NAMES.contains(&word.as_str()) {
            // A name: kept, up to its closing quote.
            match inside.find(q) {
                Some(close) => {
                    out.push_str(&inside[..=close]);
                    rest = &inside[close + 1..];
                }
                None => {
                    out.push_str(inside);
                    rest = "";
                }
            }
        } else {
            out.push_str("...");
            let mut closes = inside.rmatch_indices(q).map(|(i, _)| i);
            let close = closes
                .clone()
                .find(|&i| inside[i + 1..].starts_with(" for "))
                .or_else(|| closes.next());
            match close {
                Some(close) => {
                    out.push(q);
                    rest = &inside[close + 1..];
                }
                None => rest = "",
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder};

    fn s(v: &str) -> SqlValue {
        SqlValue::String(Some(v.into()))
    }

    #[test]
    fn last_change_per_key_wins() {
        let at = |record| Origin { record, index: 0 };
        let mut c = Changes::new(vec![0]);
        c.upsert(vec![s("a"), s("1")], at(0));
        c.upsert(vec![s("b"), s("1")], at(1));
        c.delete(vec![s("a")], at(2));
        c.upsert(vec![s("b"), s("2")], at(3));
        assert_eq!(c.superseded(), 2);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts, vec![(&[s("b"), s("2")][..], at(3))]);
        assert_eq!(deletes, vec![(&[s("a")][..], at(2))]);
    }

    #[test]
    fn composite_keys_collapse_on_every_key_column_and_only_on_them() {
        let at = |record| Origin { record, index: 0 };
        // Key columns 2 and 0 of the row, in that order; deletes name them in the same order.
        let mut c = Changes::new(vec![2, 0]);
        for i in 0..200 {
            c.upsert(
                vec![
                    s(&format!("a{}", i % 10)),
                    s("v"),
                    s(&format!("b{}", i % 20)),
                ],
                at(i),
            );
        }
        // (a, b) pairs repeat every 20 messages: 20 distinct keys, 180 superseded.
        assert_eq!(c.superseded(), 180);
        c.delete(vec![s("b3"), s("a3")], at(200));
        c.delete(vec![s("a3"), s("b3")], at(201)); // columns swapped: another key
        assert_eq!(c.superseded(), 181);
        let (upserts, deletes) = c.split();
        assert_eq!(upserts.len(), 19);
        assert_eq!(deletes.len(), 2);
        // Every surviving upsert is its key's last message, and (a3, b3) is deleted, not upserted.
        assert!(upserts.iter().all(|(_, o)| o.record >= 180));
        assert!(
            upserts
                .iter()
                .all(|(row, _)| (&row[0], &row[2]) != (&s("a3"), &s("b3")))
        );
    }

    #[test]
    fn rows_and_keys_are_written_in_key_order_not_batch_order() {
        let at = |record| Origin { record, index: 0 };
        // Key column 1 of the row: every writer must lock the same keys in the same order.
        let mut c = Changes::new(vec![1]);
        for (i, k) in ["m", "b", "z", "a"].into_iter().enumerate() {
            c.upsert(vec![s("v"), s(k)], at(i));
        }
        c.delete(vec![s("y")], at(4));
        c.delete(vec![s("c")], at(5));
        let (upserts, deletes) = c.split();
        let keys: Vec<&SqlValue> = upserts.iter().map(|(row, _)| &row[1]).collect();
        assert_eq!(keys, [&s("a"), &s("b"), &s("m"), &s("z")]);
        assert_eq!(deletes[0].0, &[s("c")][..]);

        // One total order over every kind of value: integers by number whatever their width, text by bytes
        // (not by a collation), NULL first, and kinds never interleaved.
        let mut values = vec![
            SqlValue::BigInt(Some(10)),
            s("b"),
            SqlValue::Int(Some(-3)),
            SqlValue::String(None),
            s("B"),
            SqlValue::TinyUnsigned(Some(7)),
            SqlValue::Double(Some(0.5)),
            SqlValue::Bool(Some(true)),
            SqlValue::Int(None),
        ];
        values.sort_by(cmp_values);
        assert_eq!(
            values,
            vec![
                SqlValue::Bool(Some(true)),
                SqlValue::Int(None),
                SqlValue::Int(Some(-3)),
                SqlValue::TinyUnsigned(Some(7)),
                SqlValue::BigInt(Some(10)),
                SqlValue::Double(Some(0.5)),
                SqlValue::String(None),
                s("B"),
                s("b"),
            ]
        );
        // Composite keys compare column by column.
        assert!(cmp_keys([s("a"), s("z")].iter(), [s("b"), s("a")].iter()).is_lt());
    }

    #[test]
    fn server_addresses_never_hold_the_password() {
        assert_eq!(
            server_address("postgres://u:p@ss@db.example:6543/x?sslmode=require").as_deref(),
            Some("db.example:6543")
        );
        assert_eq!(
            server_address("mysql://root@127.0.0.1/test").as_deref(),
            Some("127.0.0.1:3306")
        );
        assert_eq!(
            server_address("postgres://u:pw@[::1]/db").as_deref(),
            Some("[::1]:5432")
        );
        assert_eq!(server_address("sqlite://x.db?mode=rwc"), None);
    }

    #[test]
    fn postgres_arrays_go_in_one_statement_and_values_in_recurring_sizes() {
        let origin = Origin {
            record: 0,
            index: 0,
        };
        let rows: Vec<Vec<SqlValue>> = (0..1_825)
            .map(|i| vec![s(&format!("k{i}")), SqlValue::BigInt(Some(i))])
            .collect();
        let mut values: Vec<Values<'_>> = rows.iter().map(|r| (r.as_slice(), origin)).collect();
        let sizes = |backend, values: &[Values<'_>]| {
            let (arrays, chunks) = super::statements(backend, values, 2, 2_000, None);
            (
                arrays.is_some(),
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(sizes(DbBackend::Postgres, &values), (true, vec![1_825]));
        let powers = vec![1, 32, 256, 512, 1_024];
        assert_eq!(sizes(DbBackend::MySql, &values), (false, powers.clone()));
        assert_eq!(sizes(DbBackend::Sqlite, &values), (false, powers.clone()));
        // A NULL anywhere: PostgreSQL gets VALUES too.
        let null = [s("k-null"), SqlValue::BigInt(None)];
        values[900] = (&null, origin);
        assert_eq!(sizes(DbBackend::Postgres, &values), (false, powers));
        // Arrays are not bound by the bind limit, only by max_rows_per_statement.
        let (_, chunks) = super::statements(DbBackend::Postgres, &values[..900], 2, 100, None);
        assert_eq!(chunks.len(), 9);
    }

    #[test]
    fn statements() {
        let table = TableDef {
            name: "t".into(),
            columns: vec!["k1".into(), "k2".into(), "v".into()],
            key: vec![0, 1],
        };
        let up = upsert_statement(&table, &[&[s("a"), s("b"), s("c")]]).unwrap();
        assert_eq!(
            up.to_string(PostgresQueryBuilder),
            r#"INSERT INTO "t" ("k1", "k2", "v") VALUES ('a', 'b', 'c') ON CONFLICT ("k1", "k2") DO UPDATE SET "v" = "excluded"."v""#
        );
        assert_eq!(
            up.to_string(MysqlQueryBuilder),
            "INSERT INTO `t` (`k1`, `k2`, `v`) VALUES ('a', 'b', 'c') ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)"
        );
        let del = delete_statement(&table, &[&[s("a"), s("b")], &[s("c"), s("d")]]);
        assert_eq!(
            del.to_string(PostgresQueryBuilder),
            r#"DELETE FROM "t" WHERE ("k1", "k2") IN (('a', 'b'), ('c', 'd'))"#
        );
        let single = TableDef {
            name: "t".into(),
            columns: vec!["id".into()],
            key: vec![0],
        };
        let up = upsert_statement(&single, &[&[s("a")]]).unwrap();
        assert!(
            up.to_string(PostgresQueryBuilder)
                .ends_with(r#"DO UPDATE SET "id" = "excluded"."id""#)
        );
    }

    #[test]
    fn quoted_values_never_reach_a_reason_and_names_do() {
        let cases = [
            // PostgreSQL
            (
                r#"invalid input syntax for type integer: "abc""#,
                r#"invalid input syntax for type integer: "...""#,
            ),
            (
                "value too long for type character varying(5)",
                "value too long for type character varying(5)",
            ),
            (
                r#"null value in column "x" of relation "t" violates not-null constraint"#,
                r#"null value in column "x" of relation "t" violates not-null constraint"#,
            ),
            (
                r#"invalid byte sequence for encoding "UTF8": 0x00"#,
                r#"invalid byte sequence for encoding "UTF8": 0x00"#,
            ),
            (
                r#"duplicate key value violates unique constraint "t_pkey""#,
                r#"duplicate key value violates unique constraint "t_pkey""#,
            ),
            (
                r#"index row size 3016 exceeds btree version 4 maximum 2704 for index "servicea_planet_pkey""#,
                r#"index row size 3016 exceeds btree version 4 maximum 2704 for index "servicea_planet_pkey""#,
            ),
            (
                r#"value "99999999999" is out of range for type integer"#,
                r#"value "..." is out of range for type integer"#,
            ),
            (
                r#"invalid input syntax for type json: "a "quoted" b""#,
                r#"invalid input syntax for type json: "...""#,
            ),
            // MariaDB / MySQL
            (
                "Incorrect integer value: 'abc' for column `t`.`x` at row 1",
                "Incorrect integer value: '...' for column `t`.`x` at row 1",
            ),
            (
                "Data too long for column 'name' at row 1",
                "Data too long for column 'name' at row 1",
            ),
            (
                "Incorrect string value: '\\xF0\\x9F\\x98\\x80' for column `test`.`t`.`name` at row 1",
                "Incorrect string value: '...' for column `test`.`t`.`name` at row 1",
            ),
            (
                "Incorrect integer value: 'it's' for column 'x' at row 1",
                "Incorrect integer value: '...' for column 'x' at row 1",
            ),
            (
                "Duplicate entry 'k' for key 'PRIMARY'",
                "Duplicate entry '...' for key 'PRIMARY'",
            ),
            // SQLite
            (
                "NOT NULL constraint failed: t.x",
                "NOT NULL constraint failed: t.x",
            ),
            (
                "CHECK constraint failed: length(uuid) <= 2000",
                "CHECK constraint failed: length(uuid) <= 2000",
            ),
            // A quote left open hides the rest.
            ("unterminated 'sec", "unterminated '..."),
        ];
        for (message, expected) in cases {
            assert_eq!(redact_quoted(message), expected, "{message}");
        }
    }

    /// `execute_all` runs every statement in order on the transaction, and a failing one stops the rest: the
    /// statement built while it ran is never sent.
    #[tokio::test]
    async fn statements_run_in_order_and_a_failure_stops_the_rest() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let sql = |s: &str| Ok(Statement::from_string(DbBackend::Sqlite, s));
        db.execute_unprepared("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            .await
            .unwrap();
        let txn = db.begin().await.unwrap();
        // In order: the update finds the row the insert before it wrote.
        let ok = [
            sql("INSERT INTO t VALUES (1, 'a')"),
            sql("UPDATE t SET v = v || 'b' WHERE k = 1"),
            sql("INSERT INTO t VALUES (2, 'c')"),
        ];
        execute_all(&txn, ok.into_iter()).await.unwrap();
        let failing = [
            sql("INSERT INTO t VALUES (3, 'd')"),
            sql("INSERT INTO missing VALUES (4)"),
            sql("INSERT INTO t VALUES (5, 'e')"),
        ];
        let err = execute_all(&txn, failing.into_iter()).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // A statement that cannot be built stops the rest as well.
        let unbuilt = [
            sql("INSERT INTO t VALUES (6, 'f')"),
            Err(DbErr::Custom("not built".into())),
            sql("INSERT INTO t VALUES (7, 'g')"),
        ];
        let err = execute_all(&txn, unbuilt.into_iter()).await.unwrap_err();
        assert!(err.to_string().contains("not built"), "{err}");
        let rows = txn
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT k, v FROM t ORDER BY k",
            ))
            .await
            .unwrap();
        let rows: Vec<(i64, String)> = rows
            .iter()
            .map(|r| (r.try_get("", "k").unwrap(), r.try_get("", "v").unwrap()))
            .collect();
        let expected = [(1, "ab"), (2, "c"), (3, "d"), (6, "f")];
        let expected: Vec<(i64, String)> =
            expected.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(rows, expected);
    }
}
