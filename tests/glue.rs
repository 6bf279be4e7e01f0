//! AWS Glue Schema Registry schema versions fetched with GetSchemaVersion from moto in server mode (a real
//! AWS API emulator): a registry is created, schemas of each data format registered (Avro in two versions,
//! Protobuf, JSON), and Glue-framed values of the returned version ids — compressed and not — decode; a
//! version id the registry does not know is dead-lettered; a registry that cannot be reached, or that denies
//! access, fails the batch as transient.
//!
//! Needs moto: `pip install 'moto[server]'` and `MSK_SYNC_MOTO=/path/to/moto_server` (`cargo xtask test`
//! installs it into ~/.cache/msk-sync-ci-venv, which is also looked at). Without it these tests fail, they do
//! not skip.

use std::sync::Arc;

use aws_sdk_glue::Client;
use aws_sdk_glue::config::{Credentials, Region};
use aws_sdk_glue::types::{Compatibility, DataFormat, RegistryId, SchemaId};
use base64::Engine as _;
use msk_sync::decode::glue::GlueConfig;
use msk_sync::decode::{Codec, CodecConfig, DecodeError};
use msk_sync::event::MskEvent;
use msk_sync::run::glue::GlueClient;
use msk_sync_tests::*;
use serde_json::json;

/// The test's own moto server (tests/common) with this file's helpers.
struct Moto(MotoServer);

const REGISTRY: &str = "msk-sync-registry";
const TEST_KEY: (&str, &str) = ("test", "test");

impl Moto {
    async fn start(env: &[(&str, &str)]) -> Self {
        Self(MotoServer::start(env).await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// A client to set the registry up with.
    async fn client(&self) -> Client {
        let credentials = Credentials::new(TEST_KEY.0, TEST_KEY.1, None, None, "test");
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(msk_sync::run::secret::http_client())
            .endpoint_url(self.url())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await;
        Client::new(&config)
    }

    /// Registers a schema (its first version) in the registry; returns the version id.
    async fn create_schema(&self, name: &str, format: DataFormat, definition: &str) -> String {
        let out = self
            .client()
            .await
            .create_schema()
            .registry_id(RegistryId::builder().registry_name(REGISTRY).build())
            .schema_name(name)
            .data_format(format)
            .compatibility(Compatibility::None)
            .schema_definition(definition)
            .send()
            .await
            .expect("create the schema in moto");
        out.schema_version_id().expect("the version id").to_string()
    }
}

fn glue_config(endpoint: &str) -> GlueConfig {
    serde_json::from_value(
        json!({"registry": REGISTRY, "region": "us-east-1", "endpoint": endpoint}),
    )
    .unwrap()
}

/// The client the codec fetches with, with the test's credentials (in-process tests cannot each set the
/// environment's).
fn glue_client(cfg: &GlueConfig, key: (&str, &str)) -> GlueClient {
    let credentials = Credentials::new(key.0, key.1, None, None, "test");
    GlueClient::new(cfg).with_config(move |loader| loader.credentials_provider(credentials.clone()))
}

fn codec(endpoint: &str, key: (&str, &str)) -> Codec {
    let cfg: CodecConfig = serde_json::from_value(json!({
        "value": "auto",
        "glue": {"registry": REGISTRY, "region": "us-east-1", "endpoint": endpoint, "not_found_ttl_ms": 0}
    }))
    .unwrap();
    let codec = cfg.build(Some(repo())).unwrap();
    assert!(codec.connect_glue(Arc::new(glue_client(&glue_config(endpoint), key))));
    codec
}

/// Glue's framing: byte 3, the compression byte, the version id's 16 bytes, the payload.
fn glue_framed(version: &str, zlib: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![3, if zlib { 5 } else { 0 }];
    out.extend(msk_sync::decode::glue::parse_uuid(version).expect("a UUID"));
    if zlib {
        out.extend(zlib_compress(payload));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// zlib with stored (uncompressed) deflate blocks: what any inflater reads, made without a compressor.
fn zlib_compress(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn event(values: &[Vec<u8>]) -> String {
    let records: Vec<serde_json::Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"topic": "servicea.planet", "partition": 0, "offset": i, "timestamp": 0,
                   "value": base64::engine::general_purpose::STANDARD.encode(v)})
        })
        .collect();
    json!({"eventSource": "aws:kafka", "records": {"servicea.planet-0": records}}).to_string()
}

/// An Avro string or bytes: zigzag length, then the bytes.
fn avro_string(s: &str) -> Vec<u8> {
    let mut out = vec![(s.len() as u8) << 1];
    out.extend(s.as_bytes());
    out
}

/// A servicea.Planet datum of events/schemas/planet.avsc.
fn avro_planet(uuid: &str, name: &str) -> Vec<u8> {
    let mut out = vec![0]; // changeType: null
    out.extend(avro_string(uuid));
    out.extend(avro_string(name));
    out.extend([1, 0, 0]); // published, discoveredBy null, location null
    out
}

/// Glue's Protobuf payload: message index 0 (servicea.Planet), then the message (fields 2 and 3).
fn proto_planet(uuid: &str, name: &str) -> Vec<u8> {
    let mut out = vec![0, 0x12, uuid.len() as u8];
    out.extend(uuid.as_bytes());
    out.extend([0x1a, name.len() as u8]);
    out.extend(name.as_bytes());
    out
}

#[tokio::test]
async fn versions_registered_in_glue_decode_avro_json_and_protobuf() {
    let moto = Moto::start(&[]).await;
    moto.client()
        .await
        .create_registry()
        .registry_name(REGISTRY)
        .send()
        .await
        .expect("create the registry in moto");
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let avro_v1 = moto
        .create_schema(
            "planet-avro",
            DataFormat::Avro,
            &read("events/schemas/planet.avsc"),
        )
        .await;
    // A second version of the same schema: a field added with a default.
    let v2 = read("events/schemas/planet.avsc").replacen(
        "\"fields\": [",
        "\"fields\": [\n    {\"name\": \"moons\", \"type\": \"int\", \"default\": 0},",
        1,
    );
    let avro_v2 = moto
        .client()
        .await
        .register_schema_version()
        .schema_id(
            SchemaId::builder()
                .registry_name(REGISTRY)
                .schema_name("planet-avro")
                .build(),
        )
        .schema_definition(v2)
        .send()
        .await
        .expect("register a second version")
        .schema_version_id()
        .unwrap()
        .to_string();
    assert_ne!(avro_v1, avro_v2);
    let proto = moto
        .create_schema(
            "planet-proto",
            DataFormat::Protobuf,
            &read("events/schemas/planet.proto"),
        )
        .await;
    let json_id = moto
        .create_schema(
            "planet-json",
            DataFormat::Json,
            &read("events/schemas/planet.schema.json"),
        )
        .await;

    let codec = codec(&moto.url(), TEST_KEY);
    let mut v2_datum = vec![6]; // moons = 3, first in version 2
    v2_datum.extend(avro_planet("p2", "Caladan"));
    let values = [
        glue_framed(&avro_v1, false, &avro_planet("p1", "Arrakis")),
        glue_framed(&avro_v2, true, &v2_datum),
        glue_framed(&proto, true, &proto_planet("p3", "Ix")),
        glue_framed(
            &json_id,
            false,
            br#"{"planetUuid":"p4","planetName":"Giedi Prime"}"#,
        ),
        glue_framed("0badc0de-0000-4000-8000-000000000000", false, b"{}"),
    ];
    let text = event(&values);
    let parsed = MskEvent::parse(&text).unwrap();
    codec
        .prefetch(&parsed)
        .await
        .expect("GetSchemaVersion from moto");
    let names: Vec<String> = values[..4]
        .iter()
        .map(|v| {
            let d = codec.decode(v, None).unwrap();
            d.messages[0]["planetName"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names, ["Arrakis", "Caladan", "Ix", "Giedi Prime"]);
    assert_eq!(
        codec.decode(&values[1], None).unwrap().messages[0]["moons"],
        3
    );
    match codec.decode(&values[4], None) {
        Err(DecodeError::Permanent(m)) => {
            assert!(m.contains("0badc0de-0000-4000-8000-000000000000"), "{m}");
            assert!(m.contains("EntityNotFoundException"), "{m}");
        }
        other => panic!("an unknown version id is a dead letter, got {other:?}"),
    }
    // A version of another registry is not used.
    moto.client()
        .await
        .create_registry()
        .registry_name("elsewhere")
        .send()
        .await
        .unwrap();
    let other = moto
        .client()
        .await
        .create_schema()
        .registry_id(RegistryId::builder().registry_name("elsewhere").build())
        .schema_name("planet-elsewhere")
        .data_format(DataFormat::Json)
        .compatibility(Compatibility::None)
        .schema_definition("{}")
        .send()
        .await
        .unwrap()
        .schema_version_id()
        .unwrap()
        .to_string();
    let value = glue_framed(&other, false, b"{}");
    codec
        .prefetch(&MskEvent::parse(&event(std::slice::from_ref(&value))).unwrap())
        .await
        .unwrap();
    match codec.decode(&value, None) {
        Err(DecodeError::Permanent(m)) => assert!(m.contains("belongs to registry"), "{m}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_registry_that_cannot_be_reached_is_transient() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let codec = codec(&closed, TEST_KEY);
    let text = event(&[glue_framed(
        "b7b4a7f0-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        false,
        b"{}",
    )]);
    match codec.prefetch(&MskEvent::parse(&text).unwrap()).await {
        Err(DecodeError::Transient(m)) => {
            assert!(m.contains("Glue schema version b7b4a7f0"), "{m}");
            assert!(m.contains("cannot reach AWS Glue"), "{m}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

#[tokio::test]
async fn access_denied_is_transient() {
    // moto checks credentials after the first two requests (the registry and the schema): the codec's
    // unknown key is refused.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "2")]).await;
    moto.client()
        .await
        .create_registry()
        .registry_name(REGISTRY)
        .send()
        .await
        .unwrap();
    let id = moto
        .create_schema("planet-json", DataFormat::Json, "{}")
        .await;
    let codec = codec(&moto.url(), ("AKIAUNKNOWNKEY000000", "nope"));
    let text = event(&[glue_framed(&id, false, b"{}")]);
    match codec.prefetch(&MskEvent::parse(&text).unwrap()).await {
        Err(DecodeError::Transient(m)) => {
            assert!(m.contains(&id), "{m}");
            assert!(
                m.contains("HTTP 403") && m.contains("InvalidClientTokenId"),
                "{m}"
            );
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
}
