//! The event parser, as `replay` reads a file (and Lambda a payload): any bytes are an event or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msk_sync::event::MskEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = MskEvent::from_slice(data) else {
        return;
    };
    // What the pipeline reads of every record before decoding it.
    let _ = event.record_count();
    for &at in &event.order() {
        let record = &event.records[at];
        let _ = record.coordinates();
        let _ = record.partition_key();
        let _ = record.headers.pairs();
        let _ = record.headers.last("id");
        let _ = msk_sync::decode::key_text(record.key.as_deref());
    }
    let _ = event.into_owned();
});
