//! planet-sync: the typed Planet sync (see the crate doc). Lambda mode under the Lambda runtime, else the CLI.

// mimalloc: every message becomes a JSON tree, and glibc's malloc and free took a quarter of decode time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    msk_sync::run::main(planet_sync::app()).await
}
