//! A batch of Avro container files that inflate far beyond their size (issue 14, item 2): every record's value
//! is a container file of one deflated block that holds one record, `{"planetUuid": "p<i>", "pad": <NULs>}`,
//! a string of `pad_bytes` NULs deflating about 1000 to 1. The inflate budget of a batch
//! (`[codec] max_inflated_mib`) must stop it; `gen-inflate` writes it for `replay`.

use apache_avro::{Codec, DeflateSettings};
use base64::Engine;
use serde_json::{Value, json};

/// The writer schema of the container files.
pub const SCHEMA: &str = r#"{"type": "record", "name": "Padded", "fields": [
    {"name": "planetUuid", "type": "string"}, {"name": "pad", "type": "string"}]}"#;

/// A config that applies the event's records (their `planetUuid`; the padding is not mapped).
pub const CONFIG: &str = r#"[codec]
value = "avro-ocf"

[[sync]]
topics = ["padded"]
table = "padded"
key = ["uuid"]
columns = [{ name = "uuid", path = "$.planetUuid" }]
"#;

/// Zigzag varint, as Avro writes longs.
fn zz(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// The event: `records` records on topic `padded`, partition 0, each a container file whose record pads to
/// `pad_bytes`. The NULs are compressed once and shared: each file's own bytes go before them in a stored
/// deflate block (a deflate stream may mix block types).
pub fn event(records: usize, pad_bytes: usize) -> Value {
    let mut zeros = vec![0u8; pad_bytes];
    if Codec::Deflate(DeflateSettings::default())
        .compress(&mut zeros)
        .is_err()
    {
        zeros.clear();
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let sync = [0x5a; 16];
    let list: Vec<Value> = (0..records)
        .map(|i| {
            let uuid = format!("p{i}");
            let mut datum = zz(uuid.len() as i64);
            datum.extend_from_slice(uuid.as_bytes());
            datum.extend(zz(pad_bytes as i64));
            // A stored block, not the last (BFINAL 0, BTYPE 00), then the compressed NULs.
            let len = datum.len() as u16;
            let mut block = vec![0];
            block.extend(len.to_le_bytes());
            block.extend((!len).to_le_bytes());
            block.extend(&datum);
            block.extend(&zeros);
            let mut file = b"Obj\x01".to_vec();
            file.extend(zz(2));
            for (k, v) in [("avro.schema", SCHEMA), ("avro.codec", "deflate")] {
                file.extend(zz(k.len() as i64));
                file.extend_from_slice(k.as_bytes());
                file.extend(zz(v.len() as i64));
                file.extend_from_slice(v.as_bytes());
            }
            file.push(0);
            file.extend_from_slice(&sync);
            file.extend(zz(1));
            file.extend(zz(block.len() as i64));
            file.extend(block);
            file.extend_from_slice(&sync);
            json!({"topic": "padded", "partition": 0, "offset": i, "timestamp": 1_764_000_000_000_i64 + i as i64,
                "timestampType": "CREATE_TIME", "value": b64.encode(file), "headers": []})
        })
        .collect();
    json!({"eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/bench/00000000-0000-0000-0000-000000000000-1",
        "records": {"padded-0": list}})
}
