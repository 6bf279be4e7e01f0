//! JSON values (plain, and in kafkaesk envelopes) and JSON keys.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use msk_sync::decode::{Codec, CodecConfig, Envelope, Format, KeyFormat};

fn codec(cfg: CodecConfig) -> Codec {
    cfg.build(None).unwrap_or_else(|p| panic!("{p:?}"))
}

static PLAIN: LazyLock<Codec> = LazyLock::new(|| {
    codec(CodecConfig {
        value: Format::Json,
        ..CodecConfig::default()
    })
});
static KAFKAESK: LazyLock<Codec> = LazyLock::new(|| {
    codec(CodecConfig {
        value: Format::Json,
        envelope: Some(Envelope::Kafkaesk),
        key: KeyFormat::Json,
        ..CodecConfig::default()
    })
});

fuzz_target!(|data: &[u8]| {
    let _ = PLAIN.decode(data, None);
    let _ = KAFKAESK.decode(data, None);
    let key = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = KAFKAESK.decode_key(Some(&key));
});
