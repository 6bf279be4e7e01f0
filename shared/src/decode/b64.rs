//! Base64, as the event carries record keys and values.

use base64::Engine;

use super::DecodeError;

/// The standard alphabet with padding is what Lambda sends; a producer's unpadded value is accepted too.
///
/// Every record's value goes through here, so the padded form, which is nearly all of them, is decoded with
/// SIMD (perf on a 6 MB JSON batch: the base64 crate's decoder took 9 % of the time, base64-simd's 1.7 %).
/// Anything it refuses goes to the base64 crate, which decides the error (or accepts the unpadded form); a
/// test checks both agree on what is valid.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    base64_decode_into(text, &mut out)?;
    Ok(out)
}

/// [`base64_decode`] into `out` (cleared first), so that a batch's loop reuses one buffer.
pub fn base64_decode_into(text: &str, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    out.clear();
    if base64_simd::STANDARD
        .decode_append(text.as_bytes(), out)
        .is_ok()
    {
        return Ok(());
    }
    out.clear();
    STANDARD
        .decode_vec(text, out)
        .or_else(|first| {
            out.clear();
            STANDARD_NO_PAD.decode_vec(text, out).map_err(|_| first)
        })
        .map_err(|e| DecodeError::Permanent(format!("value is not valid base64: {e}")))
}

/// The first bytes of a base64 field (at least 18, when it has them: enough for Confluent framing's header and
/// AWS Glue's), decoded without the rest; `None` when they are not base64.
pub(crate) fn head(text: &str) -> Option<Vec<u8>> {
    // 24 base64 characters hold 18 bytes.
    let head = text.get(..24.min(text.len()))?;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()
}

/// The record key as text, when it is UTF-8 (the common string key); `None` otherwise.
pub fn key_text(base64_key: Option<&str>) -> Option<String> {
    let bytes = base64_decode(base64_key?).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_errors_are_permanent_and_say_so() {
        let err = base64_decode("not base64!").unwrap_err();
        assert!(matches!(&err, DecodeError::Permanent(m) if m.contains("not valid base64")));
        assert_eq!(base64_decode("e30").unwrap(), b"{}");
        assert_eq!(base64_decode("e30=").unwrap(), b"{}");
    }

    /// The SIMD fast path must accept exactly what the base64 crate accepts, with the same bytes.
    #[test]
    fn simd_base64_agrees_with_the_base64_crate() {
        use base64::engine::general_purpose::STANDARD;
        let mut cases: Vec<String> = vec![
            "".into(),
            "=".into(),
            "==".into(),
            "e30=".into(),
            "e30".into(),
            "e3==".into(),
            "e31=".into(), // non-zero trailing bits
            "QR==".into(), // non-zero trailing bits
            "QQ==".into(),
            "QQ=".into(),
            "QQ===".into(),
            "Q===".into(),
            "e30=e30=".into(), // padding inside
            " e30=".into(),
            "e3 0=".into(),
            "e30=\n".into(),
            "e-_=".into(), // URL-safe alphabet
            "e30\u{e9}".into(),
        ];
        // Every length and tail around the SIMD block sizes.
        for n in 0..200usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = STANDARD.encode(&bytes);
            cases.push(text.clone());
            if let Some(last) = text.trim_end_matches('=').chars().last() {
                let mut bent = text.trim_end_matches('=').to_string();
                bent.pop();
                // The neighbouring symbol often leaves non-zero trailing bits.
                let next = if last == 'A' { 'B' } else { 'A' };
                bent.push(next);
                bent.push_str(&text[text.trim_end_matches('=').len()..]);
                cases.push(bent);
            }
            cases.push(format!("{text}*"));
            cases.push(format!("*{text}"));
        }
        for case in &cases {
            let simd = base64_simd::STANDARD.decode_to_vec(case).ok();
            let crate_ = STANDARD.decode(case).ok();
            assert_eq!(simd, crate_, "{case:?}");
        }
    }

    #[test]
    fn key_text_is_utf8_or_none() {
        assert_eq!(key_text(Some("a2V5")).as_deref(), Some("key"));
        assert_eq!(key_text(Some("/w==")), None);
        assert_eq!(key_text(None), None);
    }
}
