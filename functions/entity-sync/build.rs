//! The commit the binary is built from, for `--version`: `MSK_SYNC_COMMIT` when set (a build from a source archive,
//! or CI), else `git rev-parse` of the checkout, else "unknown" (a clone without .git still builds).

use std::path::{Component, Path, PathBuf};
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
    // Relative to the package, as cargo resolves them in whichever checkout builds: a target directory shared by
    // two checkouts (CI's cache) must not watch the other checkout's HEAD, which stays still while this one moves.
    let package = std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).ok();
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
            let p = PathBuf::from(p);
            let watched = package
                .as_deref()
                .and_then(|package| relative(&p, package))
                .unwrap_or(p);
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    let commit = std::env::var("MSK_SYNC_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MSK_SYNC_COMMIT={commit}");
}

/// `path` as seen from `from` (`../../.git/HEAD`), both absolute; None when they share nothing but the root.
fn relative(path: &Path, from: &Path) -> Option<PathBuf> {
    let mut base = from;
    let mut up = PathBuf::new();
    while !path.starts_with(base) {
        base = base.parent()?;
        up.push(Component::ParentDir);
    }
    // Sharing only the root: an absolute path says more.
    base.parent()?;
    Some(up.join(path.strip_prefix(base).ok()?))
}
