//! The command line as a Unix tool: the real binary, run as a shell would run it (pipes, standard input, a
//! terminal, NO_COLOR).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_entity-sync"));
    cmd.current_dir(repo())
        .env_remove("NO_COLOR")
        .env_remove("DATABASE_URL")
        .env_remove("MSK_SYNC_CONFIG")
        .env_remove("RUST_LOG");
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())
}

/// A reader that goes away (`| head -1`) ends the command quietly, with exit 0: the read end of its stdout is
/// closed before it writes anything, so every write fails with EPIPE.
#[test]
fn a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let commands: [&[&str]; 3] = [
        &["config", "reference"],
        &[
            "replay",
            "--dry-run",
            "--database-url",
            &url,
            "events/mixed-partitions.json",
        ],
        &[
            "replay",
            "--database-url",
            &url,
            "events/mixed-partitions.json",
        ],
    ];
    for args in commands {
        let mut child = binary()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// `-` is the event on standard input.
#[test]
fn dash_reads_the_event_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let event = std::fs::read(repo().join("events/mixed-partitions.json")).unwrap();
    let mut child = binary()
        .args(["replay", "--database-url", &sqlite(&dir), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&event).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"upserted\": 6"), "{stdout}");
    // Not an event: the message names standard input, and nothing is applied.
    let mut child = binary()
        .args(["replay", "--database-url", &sqlite(&dir), "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{}").unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: -: "), "{stderr}");
}

/// The error and the log lines of `command`, run on a terminal (a pseudo-terminal from `script`) or not.
fn stderr_of(terminal: bool, no_color: bool) -> String {
    // An unknown flag (clap's coloured error) and a config that cannot be read (a log line at warn would do too;
    // the error line is ours).
    let args = "replay --bogus events/mixed-partitions.json";
    let output = if terminal {
        let bin = env!("CARGO_BIN_EXE_entity-sync");
        let mut cmd = Command::new("script");
        cmd.current_dir(repo())
            .args(["-qec", &format!("{bin} {args}"), "/dev/null"])
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output()
            .expect("script (util-linux) runs the binary on a pseudo-terminal")
    } else {
        let mut cmd = binary();
        cmd.args(args.split(' '));
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output().unwrap()
    };
    assert_eq!(output.status.code(), Some(2));
    // script merges the terminal's output into its stdout.
    String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned()
}

/// Colour only on a terminal, and never with NO_COLOR. The terminal case without NO_COLOR is the control: it
/// shows that colour, when there is some, is seen.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    assert!(
        stderr_of(true, false).contains('\x1b'),
        "control: a terminal gets colour"
    );
    for (terminal, no_color) in [(true, true), (false, false), (false, true)] {
        let text = stderr_of(terminal, no_color);
        assert!(
            text.contains("--bogus"),
            "terminal {terminal}, NO_COLOR {no_color}: {text}"
        );
        assert!(
            !text.contains('\x1b'),
            "terminal {terminal}, NO_COLOR {no_color}: {text:?}"
        );
    }
}
