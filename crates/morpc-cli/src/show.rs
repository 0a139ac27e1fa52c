//! How bytes are shown: as text when they are printable UTF-8, as hex otherwise, and hex
//! previews of long values.

use std::fmt::Write;

/// Bytes shown in a preview.
pub(crate) const PREVIEW: usize = 32;

/// Lower-case hex of all of `bytes`, without separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Hex of the first [`PREVIEW`] bytes, in groups of 8, with `…` when there are more.
pub(crate) fn hex_preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(PREVIEW)];
    let mut out = shown.chunks(8).map(hex).collect::<Vec<_>>().join(" ");
    if bytes.len() > PREVIEW {
        out.push_str(" …");
    }
    out
}

/// `bytes` as text, if they are UTF-8 without control characters (other than newlines
/// and tabs).
pub(crate) fn as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r')
        .then_some(text)
}

/// Parses hex text: pairs of hex digits, whitespace ignored, lines starting with `#`
/// skipped.
pub(crate) fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).map_err(|_| format!("not hex at digit {}", 2 * i))?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex: {s:?} at digit {}", 2 * i))
        })
        .collect()
}

/// Whether `bytes` look like hex text rather than raw frames.
pub(crate) fn looks_like_hex(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut any = false;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        for c in line.chars() {
            if c.is_ascii_hexdigit() {
                any = true;
            } else if !c.is_whitespace() {
                return false;
            }
        }
    }
    any
}

/// A duration in microseconds with two decimals.
pub(crate) fn micros(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e8).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_with_whitespace_and_comments() {
        let text = "# a frame\n0000 0005\n01 0203\n";
        assert_eq!(parse_hex(text).unwrap(), [0, 0, 0, 5, 1, 2, 3]);
        assert!(looks_like_hex(text.as_bytes()));
        assert!(!looks_like_hex(b"\x00\x00\x00\x05"));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn previews_are_cut_and_text_is_printable_only() {
        assert_eq!(hex_preview(&[0xab; 9]), "abababababababab ab");
        assert!(hex_preview(&[0; 40]).ends_with('…'));
        assert_eq!(as_text(b"hello\n"), Some("hello\n"));
        assert_eq!(as_text(b"\x00\x01"), None);
    }
}
