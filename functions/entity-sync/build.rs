//! The commit the binary is built from, for `--version`: `MSK_SYNC_COMMIT` when set (a build from a source archive,
//! or CI), else `git rev-parse` of the checkout, else "unknown" (a clone without .git still builds).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MSK_SYNC_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // A new commit or checkout changes HEAD or its reflog: rebuild then (paths as git resolves them, worktrees too).
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::env::var("MSK_SYNC_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MSK_SYNC_COMMIT={commit}");
}
