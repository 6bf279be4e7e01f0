//! Debezium change events (`codec.envelope = "debezium"`): JSON values with and without JsonConverter's
//! `{"schema": …, "payload": …}` wrapper (the schema drives the conversion of dates, times and decimals), and
//! JSON keys in the same wrapper.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use msk_sync::decode::{Codec, CodecConfig, Envelope, Format, KeyFormat};

static DEBEZIUM: LazyLock<Codec> = LazyLock::new(|| {
    CodecConfig {
        value: Format::Json,
        envelope: Some(Envelope::Debezium),
        key: KeyFormat::Json,
        ..CodecConfig::default()
    }
    .build(None)
    .unwrap_or_else(|p| panic!("{p:?}"))
});

fuzz_target!(|data: &[u8]| {
    let _ = DEBEZIUM.decode(data, None);
    let key = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = DEBEZIUM.decode_key(Some(&key));
});
