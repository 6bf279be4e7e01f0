//! `cargo run -p msk-sync-bench --bin gen-event -- [json|avro|protobuf|glue-avro|debezium-json] [BYTES | --records N] [--seed S]`
//! prints an MSK event of at most BYTES (default: Lambda's 6 MB payload limit), or of N records, for measuring `replay` (peak
//! memory, time) on a full batch. The benchmarks run it too, so that generating a batch leaves nothing in their
//! own heap. Another seed makes another batch of the same shape (the same planets, other changes).
//!
//! `gen-event ocf N` prints one record whose value is an Avro container file of N one-byte records, all of
//! which the repository's config dead-letters (default 40,000: a 54 KB event).

use msk_sync_bench::{
    Format, GenConfig, LAMBDA_PAYLOAD_LIMIT, generate, generate_to_size, tiny_records_event,
};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let format = match args.next().as_deref() {
        None | Some("json") => Format::Json,
        Some("avro") => Format::Avro,
        Some("protobuf") => Format::Protobuf,
        Some("glue-avro") => Format::GlueAvro,
        Some("debezium-json") => Format::DebeziumJson,
        Some("ocf") => {
            let records = args.next().map_or(Ok(40_000), |n| n.parse::<usize>());
            return match records
                .map_err(|e| e.to_string())
                .and_then(|n| tiny_records_event(n).map_err(|e| e.to_string()))
            {
                Ok(event) => {
                    println!("{event}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gen-event: ocf: {e}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Some(other) => {
            eprintln!(
                "gen-event: unknown format {other:?} (json, avro, protobuf, glue-avro, debezium-json or ocf)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let mut args: Vec<String> = args.collect();
    let mut cfg = GenConfig {
        format,
        ..GenConfig::default()
    };
    if let Some(at) = args.iter().position(|a| a == "--seed") {
        match args.get(at + 1).map(|s| s.parse::<u64>()) {
            Some(Ok(seed)) => cfg.seed = seed,
            _ => {
                eprintln!("gen-event: --seed needs a number");
                return std::process::ExitCode::from(2);
            }
        }
        args.drain(at..at + 2);
    }
    let mut args = args.into_iter();
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
