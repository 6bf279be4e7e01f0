//! Avro container files (schema, codec and blocks are the producer's), within one batch's budget: a few
//! files in a row draw on the same budget, as the records of a batch do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msk_sync::decode::avro::{Budget, decode_ocf};

fuzz_target!(|data: &[u8]| {
    let mut budget = Budget::default_limits();
    for _ in 0..2 {
        let _ = decode_ocf(data, None, &mut budget);
    }
});
