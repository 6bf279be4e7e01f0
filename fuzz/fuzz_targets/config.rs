//! The config parser: any TOML text is a config or a list of problems. Configs that name files (schemas) are
//! only parsed: reading `/dev/zero` as a schema is the operator's own doing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msk_sync::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let codec = &config.codec;
    let names_files = !codec.schemas.is_empty()
        || codec.raw_schema.is_some()
        || codec.reader_schema.is_some()
        || codec.registry.is_some();
    if !names_files {
        let _ = config.problems();
    }
});
