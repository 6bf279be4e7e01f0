//! planet-sync: the typed Planet sync (see the crate doc). Lambda mode under the Lambda runtime, else the CLI.

/// What `--version` prints: the binary, its version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    "planet-sync ",
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MSK_SYNC_COMMIT"),
    ")"
);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if matches!(std::env::args().nth(1).as_deref(), Some("--version" | "-V")) {
        println!("{VERSION}");
        return std::process::ExitCode::SUCCESS;
    }
    msk_sync::main(planet_sync::app()).await
}
