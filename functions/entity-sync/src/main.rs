//! entity-sync: any topic → any table, as the config file's `[[sync]]` sections say. Lambda mode under the
//! Lambda runtime, else the CLI.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    msk_sync::run::main(msk_sync::run::App::declarative("entity-sync")).await
}
