//! Shared test plumbing: a fresh database per test on each backend, the real CLI run in-process, and a TCP
//! proxy that cuts a database connection in the middle of a batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use msk_sync::report::BatchReport;
use msk_sync::run::App;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MariaDb,
}

/// The servers the tests use; `cargo xtask setup` starts them. A server that is down fails the test, never skips it.
pub fn server_url(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => unreachable!("SQLite is embedded"),
        Backend::Postgres => std::env::var("MSK_SYNC_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
        Backend::MariaDb => std::env::var("MSK_SYNC_TEST_MARIADB")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
    }
}

/// Drops (`drop`) and creates database `name` on `backend`'s server, through its `test` database.
async fn create_database(backend: Backend, drop: &str, name: &str) {
    let admin_url = format!("{}/test", server_url(backend));
    let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("{backend:?} at {admin_url} is not reachable (`cargo xtask setup` starts it): {e}")
    });
    admin.execute_unprepared(drop).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
}

/// One `#[tokio::test]` per backend for each case: `async fn case(backend: Backend)` in the calling file.
#[macro_export]
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $case() { super::$case($crate::Backend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $case() { super::$case($crate::Backend::Postgres).await } )* }
        mod mariadb { $( #[tokio::test] async fn $case() { super::$case($crate::Backend::MariaDb).await } )* }
    };
}

/// The repository root (this crate lives in its tests/ folder).
pub fn repo() -> &'static Path {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests)
}

pub fn event_file(name: &str) -> PathBuf {
    repo().join("events").join(name)
}

/// A database of its own for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub conn: DatabaseConnection,
    /// Keeps the SQLite file alive; holds the config files a test writes.
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend, name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_name = format!("msk_{}_{}", name, std::process::id()).to_lowercase();
        let url = match backend {
            Backend::Sqlite => {
                format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display())
            }
            Backend::Postgres => {
                create_database(
                    backend,
                    &format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"),
                    &db_name,
                )
                .await;
                format!("{}/{db_name}?sslmode=disable", server_url(backend))
            }
            Backend::MariaDb => {
                create_database(
                    backend,
                    &format!("DROP DATABASE IF EXISTS {db_name}"),
                    &db_name,
                )
                .await;
                format!("{}/{db_name}", server_url(backend))
            }
        };
        let conn = Database::connect(&url)
            .await
            .expect("connect to the test database");
        Self {
            backend,
            url,
            conn,
            dir,
        }
    }

    pub fn db_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// `SELECT cols FROM table ORDER BY order`, every value as text (NULL as "NULL").
    pub async fn rows(&self, table: &str, cols: &[&str], order: &str) -> Vec<Vec<String>> {
        self.rows_by(table, cols, &[order]).await
    }

    /// [`Self::rows`] ordered by several columns.
    pub async fn rows_by(&self, table: &str, cols: &[&str], order: &[&str]) -> Vec<Vec<String>> {
        let cast = if self.backend == Backend::MariaDb {
            "CHAR"
        } else {
            "TEXT"
        };
        let q = |c: &str| {
            if self.backend == Backend::MariaDb {
                format!("`{c}`")
            } else {
                format!("\"{c}\"")
            }
        };
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST({} AS {cast})", q(c)))
            .collect();
        let order: Vec<String> = order.iter().map(|c| q(c)).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            select.join(", "),
            q(table),
            order.join(", ")
        );
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(self.db_backend(), sql))
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (0..cols.len())
                    .map(|i| {
                        r.try_get_by_index::<Option<String>>(i)
                            .unwrap()
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect()
            })
            .collect()
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.try_count(table)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    /// Rows in `table`, 0 while the table does not exist yet (another process creates it).
    pub async fn count_if_exists(&self, table: &str) -> i64 {
        self.try_count(table).await.unwrap_or(0)
    }

    async fn try_count(&self, table: &str) -> Result<i64, sea_orm::DbErr> {
        let q = if self.backend == Backend::MariaDb {
            format!("`{table}`")
        } else {
            format!("\"{table}\"")
        };
        let sql = format!("SELECT COUNT(*) FROM {q}");
        let row = self
            .conn
            .query_one_raw(Statement::from_string(self.db_backend(), sql))
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("no row from COUNT(*)".into()))?;
        row.try_get_by_index::<i64>(0)
    }

    /// [`Self::planets`], empty while the table does not exist yet.
    pub async fn planets_if_exists(&self) -> Vec<(String, String)> {
        if self.count_if_exists("servicea_planet").await == 0 {
            return Vec::new();
        }
        self.planets().await
    }

    /// Planets as (uuid, name), by uuid.
    pub async fn planets(&self) -> Vec<(String, String)> {
        self.rows("servicea_planet", &["uuid", "name"], "uuid")
            .await
            .into_iter()
            .map(|mut r| {
                let name = r.pop().unwrap();
                (r.pop().unwrap(), name)
            })
            .collect()
    }

    /// Dead letters as (offset, error), by offset.
    pub async fn dead_letters(&self) -> Vec<(i64, String)> {
        self.rows(
            "msk_sync_dead_letter",
            &["kafka_offset", "error"],
            "kafka_offset",
        )
        .await
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].clone()))
        .collect()
    }

    /// The sample config `events/{sample}` with every `(from, to)` of `edits` replaced and its schema path made
    /// absolute, written as `name` in the test's directory.
    pub fn sample_config(&self, sample: &str, edits: &[(&str, &str)], name: &str) -> PathBuf {
        let schema = repo().join("events/schemas/planet.avsc");
        let text = edits.iter().fold(
            std::fs::read_to_string(repo().join("events").join(sample)).unwrap(),
            |text, (from, to)| text.replace(from, to),
        );
        self.write(
            name,
            &text.replace("schemas/planet.avsc", &schema.display().to_string()),
        )
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// What one CLI run printed and returned.
pub struct Run {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The batch reports printed on stdout, one per event file.
    pub fn reports(&self) -> Vec<BatchReport> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<BatchReport>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("stdout is not a stream of reports ({e}):\n{}", self.stdout))
    }
}

/// Runs a function binary's command line in-process: the same code path as the binary, minus `main`.
pub async fn cli(app: &App, args: &[&str]) -> Run {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("fn").chain(args.iter().copied());
    let code = msk_sync::run::cli::run(app, argv, &mut out, &mut err).await;
    Run {
        code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

pub fn entity_sync() -> App {
    App::declarative("entity-sync")
}

/// entity-sync's handler with the repository's msk-sync.toml, on `database_url`.
pub async fn entity_sync_handler(database_url: &str) -> msk_sync::pipeline::Handler {
    let app = entity_sync();
    app.load(Some(&repo().join("msk-sync.toml")))
        .unwrap()
        .handler(Some(database_url))
        .await
        .unwrap()
}

pub fn default_config() -> String {
    repo().join("msk-sync.toml").display().to_string()
}

/// `replay` with entity-sync and the repository's msk-sync.toml.
pub async fn replay(db: &TestDb, events: &[&str]) -> Run {
    let config = default_config();
    replay_with(&entity_sync(), db, Some(&config), events).await
}

pub async fn replay_with(app: &App, db: &TestDb, config: Option<&str>, events: &[&str]) -> Run {
    let files: Vec<String> = events
        .iter()
        .map(|e| event_file(e).display().to_string())
        .collect();
    let mut args = vec!["replay", "--database-url", db.url.as_str()];
    if let Some(c) = config {
        args.extend(["--config", c]);
    }
    args.extend(files.iter().map(String::as_str));
    cli(app, &args).await
}

/// entity-sync's `replay` of `events` into `db` with the config file `config`.
pub async fn replay_config(db: &TestDb, config: &Path, events: &[&str]) -> Run {
    let config = config.display().to_string();
    replay_with(&entity_sync(), db, Some(&config), events).await
}

/// A TCP proxy to a database server that forwards faithfully until the client has sent `pattern` `nth` times
/// in all, then drops every connection without forwarding that packet and refuses new ones: the database
/// "goes away" in the middle of a batch.
pub struct CutProxy {
    pub port: u16,
    pub cut: Arc<AtomicBool>,
}

impl CutProxy {
    pub async fn start(upstream: String, pattern: &'static [u8], nth: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    return; // dropping the listener refuses further connections
                }
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(pump(
                    client,
                    server,
                    pattern,
                    nth,
                    Arc::clone(&seen),
                    Arc::clone(&flag),
                ));
            }
        });
        Self { port, cut }
    }

    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    pattern: &'static [u8],
    nth: usize,
    seen: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
) {
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        if cut.load(Ordering::SeqCst) {
            return;
        }
        tokio::select! {
            n = client.read(&mut up) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                let hits = up[..n].windows(pattern.len()).filter(|w| *w == pattern).count();
                if hits > 0 && seen.fetch_add(hits, Ordering::SeqCst) + hits >= nth {
                    cut.store(true, Ordering::SeqCst);
                    return;
                }
                if server.write_all(&up[..n]).await.is_err() { return; }
            }
            n = server.read(&mut down) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                if client.write_all(&down[..n]).await.is_err() { return; }
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The host:port of a server URL such as `postgres://user@host:port`.
pub fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap().to_string()
}

impl TestDb {
    /// Tables in the test database (SQLite only: used to prove that nothing was written).
    pub async fn count_tables(&self) -> i64 {
        assert_eq!(self.backend, Backend::Sqlite);
        let sql = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'";
        let row = self
            .conn
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }
}

/// A TCP proxy that can take its upstream "down": while down it drops every open connection and refuses
/// new ones at once, as a database host that went away would.
pub struct ToggleProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl ToggleProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicUsize::new(0));
        let (flag, gen_) = (Arc::clone(&up), Arc::clone(&generation));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let born = gen_.load(Ordering::SeqCst);
                let (flag, gen_) = (Arc::clone(&flag), Arc::clone(&gen_));
                tokio::spawn(async move {
                    // Reuses the cut proxy's pump: "cut" is "taken down since this connection was made".
                    let cut = Arc::new(AtomicBool::new(false));
                    let watcher = Arc::clone(&cut);
                    tokio::spawn(async move {
                        while flag.load(Ordering::SeqCst) && gen_.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        watcher.store(true, Ordering::SeqCst);
                    });
                    pump(
                        client,
                        server,
                        b"\0never\0matches\0",
                        usize::MAX,
                        Arc::new(AtomicUsize::new(0)),
                        cut,
                    )
                    .await;
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    /// A proxy in front of `db`'s server (PostgreSQL or MariaDB), and `db`'s URL through it.
    pub async fn in_front_of(db: &TestDb) -> (Self, String) {
        let upstream = host_port(&server_url(db.backend));
        let proxy = Self::start(upstream.clone()).await;
        let url = db
            .url
            .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
        (proxy, url)
    }

    /// Returns once open connections have been dropped.
    pub async fn set_up(&self, up: bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.up.store(up, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// A variable cargo sets for this test binary (its package's manifest dir, name, version…). Build scripts
/// watch some of them (ring reruns when `CARGO_MANIFEST_DIR` changes): passed on to a nested `cargo build` /
/// `cargo run` / `cargo lambda watch`, they would make it rebuild half the dependency tree on every run, and
/// the next plain `cargo build` again.
pub fn set_for_this_package(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("CARGO_PKG_")
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name.as_ref())
}

/// A command that runs cargo (`cargo`, `cargo lambda`) with this test's environment, less what cargo set
/// for the test's own package ([`set_for_this_package`]).
pub fn cargo_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| !set_for_this_package(k)));
    cmd
}

/// cargo-lambda: on PATH, else in the CI venv (`cargo xtask setup` installs it there); missing, the test fails.
pub fn cargo_lambda() -> PathBuf {
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/msk-sync-ci-venv/bin/cargo-lambda"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("cargo-lambda"))
            .find(|p| p.is_file())
    });
    on_path.or(venv.filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!("cargo-lambda not found (PATH, ~/.cache/msk-sync-ci-venv): `cargo xtask setup` installs it")
    })
}

/// Whether something listens on loopback `port` within `tries` attempts `every` apart.
pub async fn listening(port: u16, tries: u32, every: std::time::Duration) -> bool {
    for _ in 0..tries {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}

/// `cargo lambda watch` on a free loopback port: the Lambda runtime API, running the workspace's function
/// binaries as Lambda would. Killed when dropped.
pub struct LambdaWatch {
    pub port: u16,
    _child: tokio::process::Child,
}

impl LambdaWatch {
    /// Started with `env` for the functions and their stdout to `stdout`; returns once it listens (60 s at the
    /// most). The test's own DATABASE_URL is not passed on: a function gets only what `env` says.
    pub async fn start(env: &[(&str, &str)], stdout: std::process::Stdio) -> Self {
        let port = free_port();
        let mut cmd = cargo_command(cargo_lambda());
        cmd.arg("lambda")
            .args(["watch", "--ignore-changes", "--invoke-address", "127.0.0.1"])
            .arg("--invoke-port")
            .arg(port.to_string());
        for (k, v) in env {
            cmd.arg("--env-var").arg(format!("{k}={v}"));
        }
        let child = cmd
            .current_dir(repo())
            .env_remove("DATABASE_URL")
            .stdout(stdout)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start cargo lambda watch");
        assert!(
            listening(port, 600, std::time::Duration::from_millis(100)).await,
            "cargo lambda watch did not listen on {port}"
        );
        Self {
            port,
            _child: child,
        }
    }

    /// `cargo lambda invoke FUNCTION --data-file FILE`.
    pub async fn invoke(&self, function: &str, data_file: &Path) -> std::process::Output {
        tokio::process::Command::new(cargo_lambda())
            .arg("lambda")
            .args(["invoke", function, "--invoke-address", "127.0.0.1"])
            .arg("--invoke-port")
            .arg(self.port.to_string())
            .arg("--data-file")
            .arg(data_file)
            .current_dir(repo())
            .output()
            .await
            .expect("run cargo lambda invoke")
    }
}

/// `$MSK_SYNC_MOTO`, else moto_server in the venv `cargo xtask setup` makes; a test without it fails, naming
/// the setup (it never skips).
pub fn moto_server() -> PathBuf {
    let named = std::env::var_os("MSK_SYNC_MOTO").map(PathBuf::from);
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/msk-sync-ci-venv/bin/moto_server"));
    named
        .or(venv.filter(|p| p.is_file()))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server not found: `pip install 'moto[server]'` and set MSK_SYNC_MOTO=/path/to/moto_server \
                 (`cargo xtask test` installs it into ~/.cache/msk-sync-ci-venv)"
            )
        })
}

/// A moto server (an AWS API emulator) of the test's own, on a free loopback port; killed when dropped.
pub struct MotoServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _child: tokio::process::Child,
}

impl MotoServer {
    /// Starts moto_server with `env` added to its environment and waits until it listens.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = tokio::process::Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_server");
        assert!(
            listening(port, 600, std::time::Duration::from_millis(50)).await,
            "moto_server did not listen on port {port} within 30 s"
        );
        Self {
            port,
            _child: child,
        }
    }

    /// Its endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
