//! `cargo run -p msk-sync-bench --bin gen-event -- [json|avro] [BYTES]` prints an MSK event of at most BYTES
//! (default: Lambda's 6 MB payload limit), for measuring `replay` (peak memory, time) on a full batch.

use msk_sync_bench::{Format, GenConfig, LAMBDA_PAYLOAD_LIMIT, generate_to_size};

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
    let bytes = match args.next().map(|b| b.parse::<usize>()) {
        None => LAMBDA_PAYLOAD_LIMIT,
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            eprintln!("gen-event: BYTES: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (event, records) = generate_to_size(
        bytes,
        GenConfig {
            format,
            ..GenConfig::default()
        },
    );
    eprintln!("gen-event: {records} records");
    println!("{event}");
    std::process::ExitCode::SUCCESS
}
