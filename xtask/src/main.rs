//! `cargo xtask setup`: provisions what the tests need, idempotently (what is there already is kept, so a second
//! run takes seconds): the PostgreSQL and MariaDB servers with their `test` databases (started when they are
//! down), the Debian packages librdkafka's build needs, the tansu broker, and a Python venv with cargo-lambda,
//! zig, confluent-kafka, moto (the AWS API emulator) and protobuf (an independent Protobuf writer).
//!
//! `cargo xtask test [ARGS…]`: the same, then `cargo test --workspace --locked ARGS…` with the tools on PATH and
//! in the variables the tests read (`MSK_SYNC_TANSU`, `MSK_SYNC_TEST_PYTHON`, `MSK_SYNC_MOTO`). README's test command and CI's.
//!
//! `cargo xtask dist [--no-build] [--out DIR]`: the release artifacts (bootstrap zips for arm64 and x86_64,
//! SHA256SUMS, packaged templates; see [`dist`]).
//!
//! Anything that cannot be provisioned fails the run with what to do; nothing is skipped. std only, so that the
//! tool itself compiles in about a second.

mod dist;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The Kafka-compatible broker of tests/kafka.rs. `dynostore` is the smallest feature set with the in-memory
/// storage the tests use. A debug build (25 min here on 2 cores shared with other builds; the release build
/// was reported at about 30 min): the tests need a broker that works, not a fast one, and pass on it.
const TANSU_VERSION: &str = "0.6.0";
/// What tests/lambda.rs (cargo-lambda, with zig for its builds) and tests/kafka.rs (an independent producer)
/// run. CI-only tools (cfn-lint, aws-sam-cli) stay in .ci/run: the tests never call them.
/// moto in server mode is the AWS API emulator of tests/secrets.rs (Secrets Manager, IAM).
/// protobuf is the independent Protobuf writer of tests/protobuf.rs.
/// jsonschema is the independent validator of tests/docs.rs (the sample configs against msk-sync's JSON Schema).
const PYTHON_TOOLS: [&str; 6] = [
    "cargo-lambda==1.9.2",
    "ziglang==0.17.0",
    "confluent-kafka==2.16.1",
    "moto[server]==5.2.5",
    "protobuf==7.36.2",
    "jsonschema==4.26.0",
];
/// librdkafka is compiled from source (rdkafka-sys, the `kafka` feature the tests turn on).
const DEBIAN_PACKAGES: [&str; 4] = ["make", "zlib1g-dev", "libssl-dev", "pkg-config"];
const SERVER_WAIT: Duration = Duration::from_secs(60);

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: cargo xtask setup | cargo xtask test [cargo test arguments…] | cargo xtask dist [--no-build] [--out DIR]
  setup  provision what the tests need (databases, Debian packages, tansu, the Python venv); idempotent
  test   setup, then `cargo test --workspace --locked` with the tools on PATH
  dist   release artifacts in target/dist: arm64 and x86_64 bootstrap zips, SHA256SUMS, packaged templates";

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let command = args.next();
    let result = match command.as_ref().and_then(|c| c.to_str()) {
        Some("setup") => setup().map(|tools| {
            println!("\nxtask: ready. The tests read:");
            for (k, v) in tools.env() {
                println!("  {}={}", k, v.to_string_lossy());
            }
            0
        }),
        Some("test") => setup().and_then(|tools| test(&tools, args.collect())),
        Some("dist") => dist::dist(args.map(|a| a.to_string_lossy().into_owned()).collect()),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("\nxtask: {e}");
            ExitCode::from(1)
        }
    }
}

/// Where the provisioned tools are.
struct Tools {
    tansu: PathBuf,
    venv: PathBuf,
}

impl Tools {
    fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// The variables the tests read, and PATH with the venv first (cargo-lambda, and zig for its builds).
    fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut paths = vec![self.venv.join("bin")];
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        vec![
            ("MSK_SYNC_TANSU", self.tansu.clone().into_os_string()),
            ("MSK_SYNC_TEST_PYTHON", self.python().into_os_string()),
            (
                "MSK_SYNC_MOTO",
                self.venv.join("bin/moto_server").into_os_string(),
            ),
            ("PATH", env::join_paths(paths).unwrap_or_default()),
        ]
    }
}

fn setup() -> Result<Tools> {
    let started = Instant::now();
    step("PostgreSQL on 127.0.0.1:5432");
    postgres()?;
    step("MariaDB on 127.0.0.1:3306");
    mariadb()?;
    step("Debian packages for librdkafka's build");
    debian_packages()?;
    step(&format!("tansu {TANSU_VERSION}"));
    let tansu = tansu()?;
    step("Python venv (cargo-lambda, zig, confluent-kafka, moto, protobuf)");
    let venv = venv()?;
    println!(
        "xtask: provisioned in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Tools { tansu, venv })
}

fn test(tools: &Tools, extra: Vec<OsString>) -> Result<u8> {
    step("cargo test --workspace --locked");
    let mut cargo = cargo_command();
    cargo
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .current_dir(workspace());
    for (k, v) in tools.env() {
        cargo.env(k, v);
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

fn step(what: &str) {
    println!("\n== xtask: {what}");
}

/// The cargo that runs us (cargo sets `CARGO`), so that `cargo +toolchain xtask` stays on that toolchain.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo command without the variables `cargo run` set for xtask's own package (its manifest dir, name,
/// version…): build scripts watch some of them (ring reruns when `CARGO_MANIFEST_DIR` changes), so passing them
/// on would rebuild half the dependency tree now, and again at the next plain `cargo test`.
fn cargo_command() -> Command {
    let mut command = Command::new(cargo());
    for (name, _) in env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&n.as_ref())
        {
            command.env_remove(&name);
        }
    }
    command
}

fn workspace() -> &'static Path {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask)
}

fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| "HOME is not set: the tools are installed under it".to_string())
}

/// Runs a command with its output shown; an error unless it succeeds.
fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    println!("$ {shown}");
    match command.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{shown} failed ({s})")),
        Err(e) => Err(format!("cannot run {shown}: {e}")),
    }
}

/// Runs a command silently: did it succeed?
fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command's trimmed stdout, if it succeeded.
fn stdout_of(command: &mut Command) -> Option<String> {
    let out = command.stdin(Stdio::null()).stderr(Stdio::null()).output();
    out.ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn wait_for(name: &str, up: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < SERVER_WAIT {
        if up() {
            println!("{name} is up");
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!(
        "{name} was started but did not answer within {} s",
        SERVER_WAIT.as_secs()
    ))
}

/// A developer's own server (`MSK_SYNC_TEST_POSTGRES` / `MSK_SYNC_TEST_MARIADB`) is used as it is.
fn overridden(variable: &str) -> bool {
    match env::var(variable) {
        Ok(url) if !url.is_empty() => {
            println!("{variable} is set: the tests use that server; not provisioned here");
            true
        }
        _ => false,
    }
}

fn postgres() -> Result<()> {
    if overridden("MSK_SYNC_TEST_POSTGRES") {
        return Ok(());
    }
    if !on_path("psql") {
        return Err(
            "psql not found: the tests need PostgreSQL on 127.0.0.1:5432 (user postgres, trust); \
             install it (Debian: apt-get install postgresql) or set MSK_SYNC_TEST_POSTGRES"
                .into(),
        );
    }
    let psql = |sql: &str, database: &str| {
        let mut c = Command::new("psql");
        c.args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d"])
            .arg(database)
            .args(["-tAc", sql]);
        c
    };
    let up = || succeeds(&mut psql("select 1", "postgres"));
    if up() {
        println!("PostgreSQL is up");
    } else {
        // The packaged cluster, started without systemd (containers and CI have none).
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        let version = versions.first().ok_or(
            "PostgreSQL is not answering on 127.0.0.1:5432 and /etc/postgresql has no cluster to start: \
             start it, or set MSK_SYNC_TEST_POSTGRES",
        )?;
        println!("PostgreSQL is down: starting cluster {version}/main");
        run(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            version,
            "main",
            "start",
        ]))
        .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
        wait_for("PostgreSQL", up)?;
    }
    let exists = stdout_of(&mut psql(
        "select 1 from pg_database where datname = 'test'",
        "postgres",
    ));
    if exists.as_deref() != Some("1") {
        run(&mut psql("create database test", "postgres"))
            .map_err(|e| format!("cannot create PostgreSQL database test: {e}"))?;
    }
    println!("database test: ok");
    Ok(())
}

fn mariadb() -> Result<()> {
    if overridden("MSK_SYNC_TEST_MARIADB") {
        return Ok(());
    }
    if !on_path("mysql") {
        return Err("mysql not found: the tests need MariaDB on 127.0.0.1:3306 (root, no password); install it \
             (Debian: apt-get install mariadb-server) or set MSK_SYNC_TEST_MARIADB"
            .into());
    }
    let mysql = |sql: &str| {
        let mut c = Command::new("mysql");
        c.args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-e", sql]);
        c
    };
    let up = || succeeds(&mut mysql("select 1"));
    if up() {
        println!("MariaDB is up");
    } else {
        println!("MariaDB is down: starting /usr/sbin/mariadbd");
        run(Command::new("start-stop-daemon").args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ]))
        .map_err(|e| format!("cannot start MariaDB: {e}"))?;
        wait_for("MariaDB", up)?;
    }
    run(&mut mysql("create database if not exists test"))
        .map_err(|e| format!("cannot create MariaDB database test: {e}"))?;
    println!("database test: ok");
    Ok(())
}

fn debian_packages() -> Result<()> {
    if !on_path("dpkg") {
        println!(
            "not a Debian system: librdkafka's build needs make, a C compiler, pkg-config and the zlib and \
             OpenSSL headers; not checked"
        );
        return Ok(());
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .into_iter()
        .filter(|p| !succeeds(Command::new("dpkg").args(["-s", p])))
        .collect();
    if missing.is_empty() {
        println!("installed: {}", DEBIAN_PACKAGES.join(" "));
        return Ok(());
    }
    let root = stdout_of(Command::new("id").arg("-u")).as_deref() == Some("0");
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args);
        c
    };
    let cannot = |e: String| format!("cannot install {}: {e}", missing.join(" "));
    run(&mut apt(&["update", "-qq"])).map_err(cannot)?;
    run(apt(&["install", "-y", "-qq"]).args(&missing)).map_err(cannot)?;
    Ok(())
}

/// `$MSK_SYNC_TANSU` if set (a developer's own build), else `$CARGO_HOME/bin/tansu`, built once.
fn tansu() -> Result<PathBuf> {
    if let Some(own) = env::var_os("MSK_SYNC_TANSU").filter(|t| !t.is_empty()) {
        let own = PathBuf::from(own);
        return if own.is_file() {
            println!("MSK_SYNC_TANSU is set: {}", own.display());
            Ok(own)
        } else {
            Err(format!(
                "MSK_SYNC_TANSU names {}, which is not a file",
                own.display()
            ))
        };
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .map_or_else(|| home().map(|h| h.join(".cargo")), Ok)?;
    let tansu = cargo_home.join("bin/tansu");
    let version = stdout_of(Command::new(&tansu).arg("--version"));
    if let Some(v) = version.as_deref()
        && v.split_whitespace().any(|w| w == TANSU_VERSION)
    {
        println!("{}: {v}", tansu.display());
        return Ok(tansu);
    }
    if let Some(v) = version {
        println!(
            "{}: {v}, not {TANSU_VERSION}: replacing it",
            tansu.display()
        );
    }
    let started = Instant::now();
    println!("building tansu {TANSU_VERSION} (a debug build, once: up to 25 minutes on 2 cores)");
    run(cargo_command()
        .args(["install", "tansu", "--version"])
        .arg(format!("={TANSU_VERSION}"))
        .args(["--locked", "--features", "dynostore", "--debug", "--root"])
        .arg(&cargo_home))
    .map_err(|e| format!("cannot build tansu: {e}"))?;
    println!("tansu built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(tansu)
}

/// `~/.cache/msk-sync-ci-venv` (the default of tests/kafka.rs and tests/lambda.rs). A stamp of the requirements
/// it was made with keeps pip (and its network round trips) out of a second run.
fn venv() -> Result<PathBuf> {
    let venv = home()?.join(".cache/msk-sync-ci-venv");
    let stamp = venv.join("msk-sync-requirements.txt");
    let wanted = PYTHON_TOOLS.join("\n") + "\n";
    let python = venv.join("bin/python");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        println!("{}: {}", venv.display(), PYTHON_TOOLS.join(" "));
        return Ok(venv);
    }
    if !python.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).map_err(|e| {
            format!("cannot create a Python venv (Debian: apt-get install python3-venv): {e}")
        })?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_TOOLS))
    .map_err(|e| format!("cannot install the Python tools: {e}"))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(venv)
}
