//! Confluent framing (magic byte, schema id, datum) for values and Avro keys, with format detection (`auto`:
//! container file, Confluent or JSON) and Lambda's `valueSchemaMetadata` (first input byte picks it).
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use msk_sync::decode::{Codec, CodecConfig, Format, KeyFormat};
use msk_sync::event::SchemaMetadata;

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    let cfg = CodecConfig {
        value: Format::Auto,
        key: KeyFormat::Avro,
        schemas: [("1".to_string(), "events/schemas/planet.avsc".into())].into(),
        raw_schema: Some("events/schemas/planet.avsc".into()),
        ..CodecConfig::default()
    };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cfg.build(Some(&repo)).unwrap_or_else(|p| panic!("{p:?}"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let meta = match selector % 3 {
        0 => None,
        1 => Some(SchemaMetadata {
            schema_id: Some("1".into()),
            data_format: Some("AVRO".into()),
        }),
        _ => Some(SchemaMetadata {
            schema_id: Some("glue-5a1c".into()),
            data_format: Some("AVRO".into()),
        }),
    };
    let _ = CODEC.decode(value, meta.as_ref());
    let key = base64::engine::general_purpose::STANDARD.encode(value);
    let _ = CODEC.decode_key(Some(&key));
});
