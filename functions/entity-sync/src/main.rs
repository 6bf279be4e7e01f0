//! entity-sync: any topic → any table, as the config file's `[[sync]]` sections say. Lambda mode under the
//! Lambda runtime, else the CLI. The config is a file (`--config`, `MSK_SYNC_CONFIG`, `./msk-sync.toml`), never
//! built in: template.yaml ships it in a layer (docs/src/deploy.md).

/// What `--version` prints: the binary, its version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    "entity-sync ",
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
    msk_sync::main(msk_sync::App::declarative("entity-sync")).await
}
