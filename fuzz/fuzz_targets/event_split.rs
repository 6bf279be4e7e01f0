//! The event's several-thread reader (`shared/src/event/split.rs`) against serde's one pass over the whole
//! text: whatever the bytes, every number of shares reads the event serde reads, or the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msk_sync::event::MskEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let whole = MskEvent::parse_serial(text);
    for threads in 1..=4 {
        // Shares of any size, so that a small input is cut as a 6 MB one is.
        let split = MskEvent::parse_with(text, threads, 1);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{threads} threads"),
            (Ok(_), Err(e)) => panic!("serde reads it, {threads} threads do not: {e}"),
            // A record read on its own may nest a few levels deeper (the module doc says why): the shares
            // may then read an event, or find another fault in it, where serde stops at the depth.
            (Err(a), _) if a.0.contains("recursion limit") => {}
            (Err(a), Err(b)) => assert_eq!(a.0, b.0, "{threads} threads"),
            (Err(e), Ok(_)) => panic!("{threads} threads read what serde does not: {e}"),
        }
    }
});
