//! `cargo run -p msk-sync-bench --bin gen-event -- [json|avro] [BYTES | --records N]` prints an MSK event of at
//! most BYTES (default: Lambda's 6 MB payload limit), or of N records, for measuring `replay` (peak memory, time)
//! on a full batch. The benchmarks run it too, so that generating a batch leaves nothing in their own heap.

use msk_sync_bench::{Format, GenConfig, LAMBDA_PAYLOAD_LIMIT, generate, generate_to_size};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let format = match args.next().as_deref() {
        None | Some("json") => Format::Json,
        Some("avro") => Format::Avro,
        Some(other) => {
            eprintln!("gen-event: unknown format {other:?} (json or avro)");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = GenConfig {
        format,
        ..GenConfig::default()
    };
    let number = |what: &str, text: Option<String>| {
        text.unwrap_or_default()
            .parse::<usize>()
            .map_err(|e| eprintln!("gen-event: {what}: {e}"))
    };
    let (event, records) = match args.next() {
        None => generate_to_size(LAMBDA_PAYLOAD_LIMIT, cfg),
        Some(flag) if flag == "--records" => match number("N", args.next()) {
            Ok(records) => (generate(&GenConfig { records, ..cfg }), records),
            Err(()) => return std::process::ExitCode::from(2),
        },
        Some(bytes) => match number("BYTES", Some(bytes)) {
            Ok(bytes) => generate_to_size(bytes, cfg),
            Err(()) => return std::process::ExitCode::from(2),
        },
    };
    eprintln!("gen-event: {records} records");
    println!("{event}");
    std::process::ExitCode::SUCCESS
}
