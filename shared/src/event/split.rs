//! An event's `records` read on several threads.
//!
//! Most of a Lambda-sized batch's 6 MB is its records, and reading them with serde is a fifth to a third of
//! the CPU time a whole batch costs on two cores, all of it on one thread. So the records map is cut into
//! shares where a record starts, and each share is read on a thread of its own.
//!
//! A cut is only a guess: near each equal share of the text, the first `"topic"` that is a record's first
//! field, an object's first key inside a list (`[` or `,`, then `{`). Each share is read with the same
//! [`Record`] reader as a whole event, and must end exactly at the next cut, there expecting a record. The
//! first share starts where the event's own fields have been read and the map begins, so, share after share,
//! each starts in the state a reading of the whole text would be in at its cut, and reads the records that
//! reading would, in its order. A cut that is not a record's start (text that only looks like one) makes the
//! share before it fail. Whatever this reader does not expect, an error or not (a second `records` key, a
//! share that fails), gives `None`: the event is then read by serde alone, which says what is wrong.
//!
//! The one difference from a reading of the whole text: each record is read by a deserializer of its own, so
//! it may nest three levels deeper before serde_json's recursion limit (128) stops it. Lambda's events nest
//! five levels (a header's bytes).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny};

use super::{MskEvent, Record};
use crate::text::Name;

/// The fewest bytes of records worth a thread: below this, starting one costs about what it saves.
pub(super) const MIN_SHARE: usize = 256 * 1024;

/// The event in `text`, its records read on up to `threads` threads in shares of at least `min_share` bytes;
/// `None` when the records are not worth two shares, or the text is anything this reader does not expect
/// (see the module doc).
pub(super) fn parse(text: &str, threads: usize, min_share: usize) -> Option<MskEvent<'_>> {
    let mut r = Reader { text, pos: 0 };
    r.ws();
    r.expect(b'{')?;
    r.ws();
    let mut event = MskEvent::default();
    let (mut event_source, mut records) = (None, None);
    if !r.eat(b'}') {
        loop {
            // What serde's map reading does: a key must be a string; a field given twice keeps its last value.
            let name: Str<'_> = r.value()?;
            r.ws();
            r.expect(b':')?;
            match name.0.as_ref() {
                "eventSource" => event_source = Some(r.value::<Str<'_>>()?.0),
                "eventSourceArn" => {
                    event.event_source_arn = r.value::<Option<Str<'_>>>()?.map(|s| s.0)
                }
                "bootstrapServers" => {
                    event.bootstrap_servers = r.value::<Option<Str<'_>>>()?.map(|s| s.0)
                }
                // A second list would replace the first: rare enough to leave to serde.
                "records" if records.is_some() => return None,
                "records" => {
                    r.ws();
                    let (list, end) = records_map(text, r.pos, threads, min_share)?;
                    records = Some(list);
                    r.pos = end;
                }
                _ => {
                    r.value::<IgnoredAny>()?;
                }
            }
            r.ws();
            match r.next()? {
                b',' => r.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.ws();
    if r.pos != text.len() {
        return None;
    }
    event.event_source = event_source?;
    event.records = records?;
    Some(event)
}

/// The records map starting at `start` (its `{`), read in shares: every record, and where the map ends.
fn records_map(
    text: &str,
    start: usize,
    threads: usize,
    min_share: usize,
) -> Option<(Vec<Record<'_>>, usize)> {
    let cuts = cuts(text.as_bytes(), start, threads, min_share.max(1));
    if cuts.is_empty() {
        // One share: serde's own pass over the whole text is faster than this reader on one thread (which
        // starts a deserializer per record: 13 % slower on a 6 MB batch).
        return None;
    }
    // Share 0 runs here, from the map's `{`; share i (i ≥ 1) starts at cut i-1 and stops at cut i, the last at
    // the map's end. A share never panics on text (serde errors are values); should one, the panic is the bug,
    // and reaches the caller.
    let jobs: Vec<_> = std::iter::once((start, true, cuts.first().copied()))
        .chain((0..cuts.len()).map(|i| (cuts[i], false, cuts.get(i + 1).copied())))
        .map(|(from, at_map, stop)| move || share(text, from, at_map, stop))
        .collect();
    let shares = crate::threads::all(threads, jobs);
    let mut records = Vec::with_capacity(
        shares
            .iter()
            .map(|s| s.as_ref().map_or(0, |(r, _, _)| r.len()))
            .sum(),
    );
    let mut end = start;
    // A partition key listed twice is an error serde's pass reports (with where it is).
    let mut seen = std::collections::HashSet::new();
    for share in shares {
        let (list, keys, at) = share?;
        for key in keys {
            if super::repeated_partition(&mut seen, key).is_some() {
                return None;
            }
        }
        records.extend(list);
        end = at;
    }
    Some((records, end))
}

/// What a share read: its records, the partition keys, and where it stopped.
type Share<'a> = (Vec<Record<'a>>, Vec<Cow<'a, str>>, usize);

/// Reads records from `from`: at the records map's `{` (`at_map`), else at a record inside one of its lists.
/// With `stop`, the share must reach exactly `stop` expecting a record there, and returns `stop`; without, it
/// reads to the end of the map and returns where the map ends. The partition keys it read come along.
fn share(text: &str, from: usize, at_map: bool, stop: Option<usize>) -> Option<Share<'_>> {
    enum State {
        Key,
        Record,
        AfterList,
    }
    let mut r = Reader { text, pos: from };
    let mut out = Vec::new();
    let mut keys = Vec::new();
    let mut state = State::Record;
    if at_map {
        r.expect(b'{')?;
        r.ws();
        if r.eat(b'}') {
            return stop.is_none().then_some((out, keys, r.pos));
        }
        state = State::Key;
    }
    loop {
        state = match state {
            State::Key => {
                // serde reads a key as a string, checked as one; a key listed twice is refused (the records
                // say their topic and partition, so the key serves nothing else).
                keys.push(r.value::<Str<'_>>()?.0);
                r.ws();
                r.expect(b':')?;
                r.ws();
                r.expect(b'[')?;
                r.ws();
                if r.eat(b']') {
                    State::AfterList
                } else {
                    State::Record
                }
            }
            State::Record => {
                match stop {
                    Some(stop) if r.pos == stop => return Some((out, keys, stop)),
                    Some(stop) if r.pos > stop => return None,
                    _ => {}
                }
                let mut record = r.value::<Record<'_>>()?;
                super::share_topic(out.last(), &mut record);
                out.push(record);
                r.ws();
                match r.next()? {
                    b',' => {
                        r.ws();
                        State::Record
                    }
                    b']' => State::AfterList,
                    _ => return None,
                }
            }
            State::AfterList => {
                r.ws();
                match r.next()? {
                    b',' => {
                        r.ws();
                        State::Key
                    }
                    // The map's end: only the last share may reach it.
                    b'}' => return stop.is_none().then_some((out, keys, r.pos)),
                    _ => return None,
                }
            }
        }
    }
}

/// Where to cut the records map that starts at `start` into at most `threads` shares of at least `min_share`
/// bytes: each cut the first record start at or after an equal share's beginning (see the module doc).
fn cuts(bytes: &[u8], start: usize, threads: usize, min_share: usize) -> Vec<usize> {
    let len = bytes.len().saturating_sub(start);
    let n = threads.min(len / min_share).max(1);
    let finder = memchr::memmem::Finder::new(b"\"topic\"");
    let mut cuts: Vec<usize> = Vec::with_capacity(n - 1);
    for k in 1..n {
        let from = (start + len * k / n).max(cuts.last().map_or(start + 1, |c| c + 1));
        let until = start + len * (k + 1) / n;
        if from >= until {
            continue;
        }
        let found = finder
            .find_iter(&bytes[from..until])
            .map(|at| from + at)
            .find_map(|at| record_start(bytes, at));
        cuts.extend(found);
    }
    cuts
}

/// The `{` of the record whose first key is the `"topic"` at `at`, if the text around it reads so: `[` or `,`,
/// `{`, the key, `:` and a string.
fn record_start(bytes: &[u8], at: usize) -> Option<usize> {
    let before = |mut i: usize| {
        while i > 0 && is_ws(bytes[i - 1]) {
            i -= 1;
        }
        i.checked_sub(1).map(|i| (i, bytes[i]))
    };
    let (brace, b'{') = before(at)? else {
        return None;
    };
    let (_, b'[' | b',') = before(brace)? else {
        return None;
    };
    let mut i = at + b"\"topic\"".len();
    let mut next = || {
        while bytes.get(i).is_some_and(|&b| is_ws(b)) {
            i += 1;
        }
        i += 1;
        bytes.get(i - 1).copied()
    };
    (next()? == b':' && next()? == b'"').then_some(brace)
}

/// JSON's whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A position in the event's text, read a token or a value at a time.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        let bytes = self.text.as_bytes();
        while bytes.get(self.pos).is_some_and(|&b| is_ws(b)) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Steps over `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let next = self.peek() == Some(b);
        self.pos += usize::from(next);
        next
    }

    /// `b` must be next.
    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// One JSON value (after whitespace), read by serde; `None` if it is not a `T`.
    fn value<T: Deserialize<'a>>(&mut self) -> Option<T> {
        let text: &'a str = self.text;
        let mut values = serde_json::Deserializer::from_str(text.get(self.pos..)?).into_iter::<T>();
        let value = values.next()?.ok()?;
        self.pos += values.byte_offset();
        Some(value)
    }
}

/// A string, borrowed from the text when it has no escape (as the event's own reader takes its fields).
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name.deserialize(d).map(Str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> String {
        format!(
            r#"{{"topic":"{topic}","partition":{partition},"offset":{offset},"timestamp":{},"timestampType":"CREATE_TIME","key":"a2V5","value":"e30=","headers":[{{"topic":[1,2]}}]}}"#,
            1000 + offset
        )
    }

    fn event(lists: &[(&str, usize)]) -> String {
        let lists: Vec<String> = lists
            .iter()
            .enumerate()
            .map(|(p, (topic, n))| {
                let records: Vec<String> =
                    (0..*n).map(|o| record(topic, p as i32, o as i64)).collect();
                format!(r#""{topic}-{p}":[{}]"#, records.join(","))
            })
            .collect();
        format!(
            r#"{{"eventSource":"aws:kafka","eventSourceArn":"arn","records":{{{}}},"bootstrapServers":null}}"#,
            lists.join(",")
        )
    }

    fn serde_read(text: &str) -> MskEvent<'_> {
        MskEvent::parse_serial(text).expect("serde reads it")
    }

    #[test]
    fn every_number_of_shares_reads_what_serde_reads() {
        let text = event(&[("orders", 40), ("empty", 0), ("topic", 25), ("t", 1)]);
        let expected = serde_read(&text);
        assert!(parse(&text, 1, 1).is_none(), "one share is serde's to read");
        for threads in 2..=12 {
            let cuts = cuts(
                text.as_bytes(),
                text.find("\"records\"").unwrap(),
                threads,
                1,
            );
            assert_eq!(cuts.len(), threads - 1, "{threads} threads");
            let read = parse(&text, threads, 1).expect("the split reader reads it");
            assert_eq!(read, expected, "{threads} threads");
        }
        // Shares of at least min_share bytes: this event is not worth two of 256 KiB.
        assert!(parse(&text, 12, MIN_SHARE).is_none());
    }

    /// What the fuzz target checks, on every one-byte edit of a small event: a deleted byte, or a byte
    /// replaced by one of JSON's structural characters.
    #[test]
    fn every_one_byte_edit_reads_as_serde_reads_it() {
        let text =
            event(&[("a", 3), ("b", 0), ("c", 2)]).replace("\"eventSourceArn\":\"arn\",", "");
        let mut edits = 0;
        for at in 0..text.len() {
            let mut variants = vec![format!("{}{}", &text[..at], &text[at + 1..])];
            for c in ["{", "}", "[", "]", ",", ":", "\"", " ", "0"] {
                variants.push(format!("{}{c}{}", &text[..at], &text[at + 1..]));
            }
            for edited in &variants {
                let whole = MskEvent::parse_serial(edited);
                for threads in 2..=4 {
                    let split = MskEvent::parse_with(edited, threads, 1);
                    match (&whole, &split) {
                        (Ok(a), Ok(b)) => assert_eq!(a, b, "{edited}"),
                        (Err(a), Err(b)) => assert_eq!(a.0, b.0, "{edited}"),
                        _ => panic!("{edited}: {whole:?} but {threads} threads: {split:?}"),
                    }
                }
                edits += 1;
            }
        }
        assert!(edits > 5_000, "{edits}");
    }

    #[test]
    fn pretty_printed_events_are_cut_too() {
        let text = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&event(&[("a", 30), ("b", 30)])).unwrap(),
        )
        .unwrap();
        let start = text.find("\"records\"").unwrap();
        assert_eq!(cuts(text.as_bytes(), start, 4, 1).len(), 3);
        assert_eq!(parse(&text, 4, 1).unwrap(), serde_read(&text));
    }

    #[test]
    fn a_cut_that_is_not_a_record_start_fails_the_split_not_the_event() {
        // A key whose text reads like a record start: the cut finder takes it, the share before it overshoots.
        let text = event(&[("a", 3)]).replace(
            "\"eventSourceArn\":\"arn\"",
            r#""x":[{"topic":"not a record"}],"eventSourceArn":"arn""#,
        );
        let bytes = text.as_bytes();
        let at = text.find("[{\"topic\":\"not").unwrap() + 1;
        assert_eq!(record_start(bytes, at + 1), Some(at));
        // Its own map: the records map starts after it, so it is never a cut there; a records map that holds
        // such text in a record's unknown field is cut there and read again by serde.
        let odd = event(&[("a", 20)]).replace(
            "\"key\":\"a2V5\"",
            r#""extra":[{"topic":"x"}],"key":"a2V5""#,
        );
        for threads in 2..=8 {
            if let Some(event) = parse(&odd, threads, 1) {
                assert_eq!(event, serde_read(&odd));
            }
        }
        assert!((2..=8).any(|threads| parse(&odd, threads, 1).is_none()));
        assert_eq!(MskEvent::parse_with(&odd, 8, 1).unwrap(), serde_read(&odd));
    }

    #[test]
    fn what_the_reader_does_not_expect_is_left_to_serde() {
        let good = event(&[("a", 8)]);
        let cases = [
            good.replace("\"records\"", "\"records\":{},\"records\""),
            format!("{good} x"),
            good.replace("\"eventSource\":\"aws:kafka\",", ""),
            good.replace(",\"partition\":0", ""),
            good.replace("]}", "],}"),
            "[]".to_string(),
            String::new(),
        ];
        for text in &cases {
            assert!(parse(text, 4, 1).is_none(), "{text}");
        }
        // A duplicate `records` is not an error: serde keeps the last.
        let twice = MskEvent::parse_with(&cases[0], 4, 1).unwrap();
        assert_eq!(twice.records.len(), 8);
    }
}
