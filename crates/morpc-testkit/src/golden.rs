//! The Go golden vectors: `data/vectors-v05.txt` and `data/vectors-v07.txt`.
//!
//! Format: one `[name]` section per vector, `key = value` lines, `#` comments; hex may
//! contain spaces. See the header of each file for the meaning of the keys.

use std::collections::HashMap;

/// The V05 vectors' text.
pub const V05: &str = include_str!("../data/vectors-v05.txt");
/// The V07 vectors' text.
pub const V07: &str = include_str!("../data/vectors-v07.txt");

/// One vector.
#[derive(Debug, Clone)]
pub struct Vector {
    /// The section name.
    pub name: String,
    /// Its `key = value` fields.
    pub fields: HashMap<String, String>,
}

impl Vector {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The frame bytes.
    pub fn frame(&self) -> Vec<u8> {
        hex(self.get("frame").expect("every vector has a frame"))
    }

    /// The `expect` value.
    pub fn expect(&self) -> &str {
        self.get("expect").expect("every vector has an expectation")
    }

    /// The error kind of an `expect = error:KIND` vector.
    pub fn error_kind(&self) -> Option<&str> {
        self.expect().strip_prefix("error:")
    }

    /// Whether the vector's `codec` line turns `option` (`checksum`, `compress`) on.
    pub fn codec_option(&self, option: &str) -> Option<bool> {
        self.get("codec")?
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == option)
            .map(|(_, v)| v == "on")
    }
}

/// Parses a vector file.
pub fn parse(text: &str) -> Vec<Vector> {
    let mut out: Vec<Vector> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push(Vector {
                name: name.to_owned(),
                fields: HashMap::new(),
            });
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let vector = out.last_mut().expect("a field belongs to a section");
        vector
            .fields
            .insert(key.trim().to_owned(), value.trim().to_owned());
    }
    out
}

/// Decodes hex digits, ignoring whitespace.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd hex string {s:?}");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}
