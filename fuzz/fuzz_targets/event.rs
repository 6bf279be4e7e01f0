//! The event parser, as `replay` reads a file (and Lambda a payload): any bytes are an event or an error, and
//! an event is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msk_sync::event::MskEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = MskEvent::from_slice(data) else {
        return;
    };
    // Only JSON is an event: what the reader accepts (keys and values read as bytes, shares on threads),
    // serde_json's strict reading accepts too: no raw control character in a string, no lone surrogate.
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(data) {
        // The split reader reads each record with a deserializer of its own: a few levels deeper.
        assert!(e.to_string().contains("recursion limit"), "accepted, but not JSON: {e}");
    }
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
