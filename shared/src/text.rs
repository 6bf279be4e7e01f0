//! Text out of JSON and bytes, shared by the event and the messages: strings borrowed from serde where it can
//! lend them, and UTF-8 checks of whole buffers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Visitor};

/// `bytes` as text: SIMD-checked, with std's error (which says where) when they are not UTF-8.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    simdutf8::basic::from_utf8(bytes).or_else(|_| std::str::from_utf8(bytes))
}

/// Whether `bytes` hold a control character (U+0000 to U+001F), which JSON forbids raw inside a string.
/// Branch-free within 64-byte chunks, so that it runs at memory speed over a batch's values.
pub(crate) fn has_control(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .any(|chunk| chunk.iter().fold(false, |seen, &b| seen | (b < 0x20)))
}

/// serde_json's error as said to a person: its wording where it is clear, and where it is not (a lone
/// surrogate escape such as `\ud800`, which serde_json calls "unexpected end of hex escape") what is wrong.
/// The position (`at line 1 column 5`) is kept.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for unclear in [
        "unexpected end of hex escape",
        "lone leading surrogate in hex escape",
    ] {
        if let Some(rest) = text.strip_prefix(unclear) {
            return format!(
                "a \\u escape of a lone UTF-16 surrogate (\\ud800 to \\udfff not in a high-low pair), which \
                 is not a character{rest}"
            );
        }
    }
    text
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
    fn control_characters_are_found_anywhere() {
        assert!(!has_control(b""));
        assert!(!has_control("abc+/=é…🦀 \x7f".as_bytes()));
        for at in [0, 1, 63, 64, 65, 200] {
            for c in [0u8, 1, b'\t', b'\n', 0x1f] {
                let mut bytes = vec![b'A'; 201];
                bytes[at] = c;
                assert!(has_control(&bytes), "{c} at {at}");
            }
        }
    }

    #[test]
    fn lone_surrogates_are_named() {
        for text in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
        ] {
            let e = serde_json::from_str::<String>(text).unwrap_err();
            let said = json_error(&e);
            assert!(
                said.starts_with("a \\u escape of a lone UTF-16 surrogate")
                    && said.contains(" at line 1 column"),
                "{text}: {said}"
            );
        }
        let e = serde_json::from_str::<String>("\"a").unwrap_err();
        assert_eq!(json_error(&e), e.to_string());
    }

    #[test]
    fn bounding_counts_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("ééé🦀", 3), "éé…");
        assert_eq!(bounded("", 0), "");
    }
}
