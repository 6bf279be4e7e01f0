//! planet-sync: the typed Planet sync (see the crate doc). Lambda mode under the Lambda runtime, else the CLI.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    msk_sync::main(planet_sync::app()).await
}
