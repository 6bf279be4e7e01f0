//! Text out of JSON and bytes, shared by the event and the messages: strings borrowed from serde where it can
//! lend them, and UTF-8 checks of whole buffers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Visitor};

/// `bytes` as text: SIMD-checked, with std's error (which says where) when they are not UTF-8.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    simdutf8::basic::from_utf8(bytes).or_else(|_| std::str::from_utf8(bytes))
}

/// A string (a field name, a topic), borrowed when the deserializer can lend it.
pub(crate) struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// `text` as it may be written anywhere a database, a log line or a terminal reads it: control characters
/// (NUL included, which PostgreSQL refuses in text) escaped as a JSON string escapes them (`\n`, `\u0000`), and
/// `\` as `\\`, so the escaping can be undone and two different texts never read the same. Borrowed when
/// there is nothing to escape, which is almost always.
pub(crate) fn escaped(text: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\\' || c.is_control();
    let Some(first) = text.find(needs) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The inverse of [`escaped`]: what a dead-letter column holds, back to the text msk-sync was given. A text
/// that [`escaped`] did not produce (edited by hand) is returned as it is rather than refused.
pub(crate) fn unescaped(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    // `escaped` writes JSON string escapes for everything but `"`: quote those, and JSON reads it back.
    let quoted = format!("\"{}\"", text.replace('"', "\\\""));
    match serde_json::from_str::<String>(&quoted) {
        Ok(back) => Cow::Owned(back),
        Err(_) => Cow::Borrowed(text),
    }
}

/// `text` cut to at most `max` (≥ 1) characters, the cut marked with `…`.
pub(crate) fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = text
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(0, |(i, _)| i);
            Cow::Owned(format!("{}…", &text[..keep]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_borrowed_when_clean_and_reversible_otherwise() {
        assert!(matches!(escaped("servicea.planet"), Cow::Borrowed(_)));
        assert_eq!(escaped("X\0Y"), "X\\u0000Y");
        assert_eq!(escaped("a\nb\tc\u{7f}\u{85}"), "a\\nb\\tc\\u007f\\u0085");
        // A literal backslash-u never reads like an escaped NUL.
        assert_eq!(escaped("X\\u0000Y"), "X\\\\u0000Y");
        assert_eq!(escaped("é…🦀"), "é…🦀");
    }

    #[test]
    fn unescaping_gives_back_exactly_what_was_escaped() {
        for text in [
            "servicea.planet",
            "X\0Y",
            "a\nb\tc\u{7f}\u{85}",
            "X\\u0000Y",
            "say \"hi\" \\\"",
            "{\"a\": [1, 2]}\n",
            "é…🦀",
        ] {
            assert_eq!(unescaped(&escaped(text)), text, "{text:?}");
        }
    }

    #[test]
    fn bounding_counts_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("ééé🦀", 3), "éé…");
        assert_eq!(bounded("", 0), "");
    }
}
