//! `cargo run --release -p msk-sync-bench --bin gen-inflate -- DIR [RECORDS [PAD_MIB]]` writes DIR/inflate.json,
//! an event of RECORDS (default 20) Avro container files of one deflated block of PAD_MIB (default 60) MiB each,
//! and DIR/inflate.toml, a config that applies them: the input of the inflate-budget figure (docs/src/performance.md)
//! (`/usr/bin/time -v entity-sync replay --config DIR/inflate.toml --database-url sqlite::memory: DIR/inflate.json`).

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: gen-inflate DIR [RECORDS [PAD_MIB]]");
        return std::process::ExitCode::from(2);
    };
    let mut number = |default: usize| match args.next() {
        None => Ok(default),
        Some(n) => n
            .parse::<usize>()
            .map_err(|e| eprintln!("gen-inflate: {n:?}: {e}")),
    };
    let (Ok(records), Ok(pad_mib)) = (number(20), number(60)) else {
        return std::process::ExitCode::from(2);
    };
    let event = msk_sync_bench::inflate::event(records, pad_mib << 20);
    let written = std::fs::write(dir.join("inflate.json"), event.to_string())
        .and_then(|()| std::fs::write(dir.join("inflate.toml"), msk_sync_bench::inflate::CONFIG));
    if let Err(e) = written {
        eprintln!("gen-inflate: {}: {e}", dir.display());
        return std::process::ExitCode::FAILURE;
    }
    eprintln!("gen-inflate: {records} records of {pad_mib} MiB each");
    std::process::ExitCode::SUCCESS
}
