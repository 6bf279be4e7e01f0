//! `cargo xtask dist [--no-build] [--out DIR]`: the release artifacts a user deploys without Rust.
//!
//! - `entity-sync-<version>-<arch>.zip` and `planet-sync-<version>-<arch>.zip` (arm64 and x86_64): the Lambda
//!   bootstrap of each function, built with `cargo lambda build --release` per binary exactly as `sam build`
//!   builds it (so after a `sam build` the arm64 build is a no-op for cargo);
//! - `template-arm64.yaml` and `template-x86_64.yaml`: template.yaml with each function's `CodeUri` pointing at its
//!   zip and the architecture fixed (no build step left: `sam deploy` uploads the zips);
//! - `config/`: deploy/config, the config layer the templates ship (edit it before deploying);
//! - `SHA256SUMS` of the zips and templates.
//!
//! `--no-build` packages the bootstraps already in target/lambda (arm64) and target/lambda-x86-64: what CI does
//! after its own builds, so that it checks the packaging without building again.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo_command, run, stdout_of, step, workspace};

const FUNCTIONS: [&str; 2] = ["entity-sync", "planet-sync"];
/// (template architecture, cargo-lambda flag, lambda dir under target/).
const ARCHES: [(&str, &str, &str); 2] = [
    ("arm64", "--arm64", "lambda"),
    ("x86_64", "--x86-64", "lambda-x86-64"),
];
/// The packaging tools xtask runs (std only: no zip or hashing crate); every Debian/Ubuntu machine has them.
const ZIP: &str = "import sys, zipfile
info = zipfile.ZipInfo('bootstrap', date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = 0o100755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(sys.argv[1], 'rb') as f, zipfile.ZipFile(sys.argv[2], 'w') as z:
    z.writestr(info, f.read())";

pub fn dist(args: Vec<String>) -> Result<u8> {
    let mut build = true;
    let mut out = workspace().join("target/dist");
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-build" => build = false,
            "--out" => {
                out = PathBuf::from(args.next().ok_or("--out needs a directory")?);
            }
            other => return Err(format!("dist: unknown argument {other:?}")),
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let target = workspace().join("target");
    if build {
        // cargo-lambda and zig are in the test venv (`cargo xtask setup`) when not on PATH.
        let mut path = std::env::var_os("PATH").unwrap_or_default();
        if let Ok(home) = crate::home() {
            let venv = home.join(".cache/msk-sync-ci-venv/bin");
            let mut paths = vec![venv];
            paths.extend(std::env::split_paths(&path));
            path = std::env::join_paths(paths).map_err(|e| e.to_string())?;
        }
        for (arch, flag, dir) in ARCHES {
            for function in FUNCTIONS {
                step(&format!(
                    "cargo lambda build --release {flag} --bin {function}"
                ));
                let mut cargo = cargo_command();
                cargo
                    .args(["lambda", "build", "--release", flag, "--bin", function])
                    .arg("--lambda-dir")
                    .arg(target.join(dir))
                    .env("PATH", &path)
                    .current_dir(workspace());
                run(&mut cargo).map_err(|e| format!("{e} (building the {arch} bootstrap)"))?;
            }
        }
    }

    step(&format!("packaging into {}", out.display()));
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut summed = Vec::new();
    for (arch, _, dir) in ARCHES {
        for function in FUNCTIONS {
            let bootstrap = target.join(dir).join(function).join("bootstrap");
            if !bootstrap.is_file() {
                return Err(format!(
                    "{} is missing: run `cargo xtask dist` without --no-build",
                    bootstrap.display()
                ));
            }
            let zip = format!("{function}-{version}-{arch}.zip");
            run(Command::new("python3")
                .args(["-c", ZIP])
                .arg(&bootstrap)
                .arg(out.join(&zip)))?;
            summed.push(zip);
        }
        let template = std::fs::read_to_string(workspace().join("template.yaml"))
            .map_err(|e| format!("cannot read template.yaml: {e}"))?;
        let name = format!("template-{arch}.yaml");
        std::fs::write(
            out.join(&name),
            packaged_template(&template, arch, version)?,
        )
        .map_err(|e| format!("cannot write {name}: {e}"))?;
        summed.push(name);
    }
    copy_dir(&workspace().join("deploy/config"), &out.join("config"))?;
    let sums = stdout_of(Command::new("sha256sum").args(&summed).current_dir(&out))
        .ok_or("sha256sum failed")?;
    std::fs::write(out.join("SHA256SUMS"), format!("{sums}\n"))
        .map_err(|e| format!("cannot write SHA256SUMS: {e}"))?;
    println!("{sums}");
    println!(
        "\nxtask: release {version} in {}. Deploy: edit config/msk-sync/msk-sync.toml, then\n  cd {} && sam deploy --guided --template-file template-arm64.yaml",
        out.display(),
        out.display()
    );
    Ok(0)
}

/// template.yaml for the zips of `arch`: each function's build metadata dropped and its `CodeUri` set to its zip,
/// the config layer's `ContentUri` to the `config/` beside it, and `Architecture` fixed to `arch`. An error if the
/// template no longer has the lines this rewrites (so a changed template cannot produce a half-packaged one).
fn packaged_template(template: &str, arch: &str, version: &str) -> Result<String> {
    let lines: Vec<&str> = template.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let (mut binary, mut code_uris, mut content_uris, mut arch_lines) = (None, 0, 0, 0);
    let mut in_architecture = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() == "Metadata:"
            && lines.get(i + 1).map(|l| l.trim()) == Some("BuildMethod: rust-cargolambda")
            && lines.get(i + 2).map(|l| l.trim()) == Some("BuildProperties:")
        {
            binary = lines
                .get(i + 3)
                .and_then(|l| l.trim().strip_prefix("Binary: "))
                .map(str::to_string);
            i += 4;
            continue;
        }
        if line.starts_with("  ") && !line.starts_with("   ") {
            in_architecture = line == "  Architecture:";
        }
        if line.trim() == "CodeUri: ." {
            let function = binary
                .take()
                .ok_or("template.yaml: a CodeUri without build metadata")?;
            out.push(format!("      CodeUri: {function}-{version}-{arch}.zip"));
            code_uris += 1;
        } else if line.trim() == "ContentUri: deploy/config" {
            out.push("      ContentUri: config".to_string());
            content_uris += 1;
        } else if in_architecture && line.trim().starts_with("Default:") {
            out.push(format!("    Default: {arch}"));
            arch_lines += 1;
        } else if in_architecture && line.trim().starts_with("AllowedValues:") {
            out.push(format!("    AllowedValues: [{arch}]"));
            arch_lines += 1;
        } else {
            out.push(line.to_string());
        }
        i += 1;
    }
    if (code_uris, content_uris, arch_lines) != (FUNCTIONS.len(), 1, 2) {
        return Err(format!(
            "template.yaml changed shape: rewrote {code_uris} CodeUri, {content_uris} ContentUri, {arch_lines} \
             Architecture lines (expected {}, 1, 2): update xtask/src/dist.rs",
            FUNCTIONS.len()
        ));
    }
    Ok(out.join("\n") + "\n")
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest)
                .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::packaged_template;

    #[test]
    fn the_packaged_template_points_at_the_zips_of_its_architecture() {
        let template = std::fs::read_to_string(super::workspace().join("template.yaml")).unwrap();
        let packaged = packaged_template(&template, "x86_64", "1.2.3").unwrap();
        assert!(packaged.contains("      CodeUri: entity-sync-1.2.3-x86_64.zip\n"));
        assert!(packaged.contains("      CodeUri: planet-sync-1.2.3-x86_64.zip\n"));
        assert!(packaged.contains("      ContentUri: config\n"));
        assert!(packaged.contains("    Default: x86_64\n    AllowedValues: [x86_64]\n"));
        assert!(!packaged.contains("BuildMethod") && !packaged.contains("CodeUri: .\n"));
        assert!(packaged_template("Resources: {}\n", "arm64", "1").is_err());
    }
}
