//! Protobuf values and keys (bare messages of every field kind, Confluent framing with message indexes) and
//! AWS Glue framing (Avro, JSON and Protobuf payloads, zlib or not). The first input byte picks the codec:
//! `protobuf` (bare or Confluent) or `auto` (Glue, Confluent Protobuf or Avro, JSON). Decoding is
//! deterministic: the same bytes twice give the same text (map entries in key order) or the same refusal.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use msk_sync::decode::{Codec, CodecConfig, Format, KeyFormat};

fn codec(value: Format) -> Codec {
    let proto = "tests/proto/everything.proto";
    let cfg = CodecConfig {
        value,
        key: KeyFormat::Protobuf,
        proto: vec![proto.into()],
        message: Some("everything.Everything".into()),
        key_message: Some("everything.Everything.Inner".into()),
        schemas: [
            ("1".to_string(), proto.into()),
            ("2".to_string(), "events/schemas/planet.avsc".into()),
        ]
        .into(),
        glue_schemas: [
            ("b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_string(), "events/schemas/planet.avsc".into()),
            ("c0ffee00-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_string(), proto.into()),
            ("d00d0000-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_string(), "events/schemas/planet.schema.json".into()),
        ]
        .into(),
        ..CodecConfig::default()
    };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cfg.build(Some(&repo)).unwrap_or_else(|p| panic!("{p:?}"))
}

static PROTOBUF: LazyLock<Codec> = LazyLock::new(|| codec(Format::Protobuf));
static AUTO: LazyLock<Codec> = LazyLock::new(|| codec(Format::Auto));

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let codec = if selector % 2 == 0 { &*PROTOBUF } else { &*AUTO };
    let first = codec.decode(value, None);
    // Deterministic: the same bytes are the same messages, as text too (map entries in key order), or the
    // same refusal.
    let again = codec.decode(value, None);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            let text = |d: &msk_sync::decode::Decoded<'_>| -> Vec<String> {
                d.messages.iter().map(|m| m.to_value().to_string()).collect()
            };
            assert_eq!(text(a), text(b));
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("one decode failed, the other did not: {first:?} / {again:?}"),
    }
    let key = base64::engine::general_purpose::STANDARD.encode(value);
    let _ = codec.decode_key(Some(&key));
});
