//! entity-sync: any topic → any table, as the config file's `[[sync]]` sections say. Lambda mode under the
//! Lambda runtime, else the CLI.

/// The repository's msk-sync.toml, built in: a deployment carries its config in the bootstrap, and a file
/// named by --config / MSK_SYNC_CONFIG / ./msk-sync.toml still takes precedence.
const CONFIG: &str = include_str!("../../../msk-sync.toml");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let app = msk_sync::App::declarative("entity-sync").with_embedded_config(CONFIG);
    msk_sync::main(app).await
}
