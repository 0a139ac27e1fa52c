//! `morpc decode`: reads frames (raw bytes or hex text) and prints each one: its length,
//! flags, checksum verdict, headers, stream sequence, body and payload sizes and a hex
//! preview. A bad frame is reported with its offset, and decoding goes on at the next
//! frame wherever the length prefix allows.

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use morpc::codec::{
    Codec, CodecError, FlagChecking, FrameBody, FrameHeaders, Message, OpaqueMessage,
    default_header_codecs, flags,
};
use morpc::prelude::{CodecConfig, Framing};

use crate::exit::{Failure, read_input};
use crate::show::{as_text, hex, hex_preview, looks_like_hex, parse_hex};
use crate::wire::FramingArg;

/// How the input is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InputFormat {
    /// Hex text if it is only hex digits, whitespace and `#` comment lines; raw otherwise.
    Auto,
    /// The bytes as they were on the wire.
    Raw,
    /// Hex digits; whitespace and lines starting with `#` are ignored.
    Hex,
}

/// The arguments of `morpc decode`.
#[derive(Debug, Args)]
pub(crate) struct DecodeArgs {
    /// The file to read (`-` or none: stdin).
    input: Option<PathBuf>,
    /// The framing the frames were written in.
    #[arg(long, value_enum, default_value = "v07")]
    framing: FramingArg,
    /// How the input is written.
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// Print one JSON object per frame, one per line.
    #[arg(long)]
    json: bool,
}

/// Runs `morpc decode`. Exit code 1 when any frame was bad.
pub(crate) fn run(args: DecodeArgs) -> Result<(), Failure> {
    let input = read_input(args.input.as_deref().unwrap_or("-".as_ref()))?;
    let hex_input = match args.format {
        InputFormat::Hex => true,
        InputFormat::Raw => false,
        InputFormat::Auto => looks_like_hex(&input),
    };
    let bytes = if hex_input {
        let text = String::from_utf8(input)
            .map_err(|_| Failure::Usage("the hex input is not UTF-8".into()))?;
        parse_hex(&text).map_err(|e| Failure::Usage(format!("hex input: {e}")))?
    } else {
        input
    };
    let reports = decode_all(args.framing.into(), &bytes);
    let bad = reports.iter().filter(|r| r.error.is_some()).count();
    for report in &reports {
        if args.json {
            println!("{}", report.json());
        } else {
            report.print();
        }
    }
    if !args.json {
        println!(
            "{} frame{}, {bad} with errors, {} bytes",
            reports.iter().filter(|r| r.length.is_some()).count(),
            if reports.len() == 1 { "" } else { "s" },
            bytes.len()
        );
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

/// What one frame (or one unreadable stretch of input) holds.
#[derive(Debug, Default)]
struct FrameReport {
    /// Where it starts in the input.
    offset: usize,
    /// Its length prefix (the frame without the prefix), when one could be read.
    length: Option<usize>,
    /// The flag byte.
    flag: Option<u8>,
    /// The checksum the frame carries.
    checksum: Option<u64>,
    /// Whether the checksum matched (`None`: not checked).
    checksum_ok: Option<bool>,
    /// The custom-headers section as it is on the wire.
    headers_raw: Option<Bytes>,
    /// The headers, decoded.
    headers: Option<FrameHeaders>,
    /// The stream sequence number.
    stream_seq: Option<u32>,
    /// message, ping, pong or cancel.
    kind: Option<&'static str>,
    /// The message (or control frame) id.
    id: Option<u64>,
    /// The body as on the wire.
    body_wire_len: Option<usize>,
    /// The body after decompression (its bytes, for the preview).
    body: Option<Bytes>,
    /// The payload after decompression.
    payload: Option<Bytes>,
    /// What is wrong with it.
    error: Option<String>,
}

/// Decodes every frame of `input`.
fn decode_all(framing: Framing, input: &[u8]) -> Vec<FrameReport> {
    let config = CodecConfig::new(framing)
        .compression(true)
        .flag_checking(FlagChecking::Lenient)
        .cancel_extension(true);
    let codec = Codec::new(config);
    let mut reports = Vec::new();
    let mut offset = 0;
    while offset < input.len() {
        let rest = &input[offset..];
        let mut report = FrameReport {
            offset,
            ..FrameReport::default()
        };
        let Some(prefix) = rest.get(..LEN_PREFIX) else {
            report.error = Some(format!(
                "{} bytes left, too few for a length prefix",
                rest.len()
            ));
            reports.push(report);
            break;
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            report.error = Some("zero length prefix: the next frame cannot be found".into());
            reports.push(report);
            break;
        }
        report.length = Some(len);
        let Some(frame) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else {
            report.error = Some(format!(
                "truncated: the length prefix claims {len} bytes, {} follow",
                rest.len() - LEN_PREFIX
            ));
            reports.push(report);
            break;
        };
        inspect(&codec, Bytes::copy_from_slice(frame), &mut report);
        if len > codec.config().frame_limit() && report.error.is_none() {
            report.error = Some(format!(
                "{len} bytes exceeds the default frame limit of {} bytes",
                codec.config().frame_limit()
            ));
        }
        reports.push(report);
        offset += LEN_PREFIX + len;
    }
    reports
}

/// Fills `report` from one frame (without its length prefix): the layout first, as far
/// as it can be read, then the codec's own verdict.
fn inspect(codec: &Codec, frame: Bytes, report: &mut FrameReport) {
    let layout = match codec.framing() {
        Framing::V07 => v07_layout(&frame, report),
        _ => v05_layout(&frame, report),
    };
    match codec.decode_split::<Dump>(frame) {
        Ok(decoded) => {
            if report.checksum.is_some() {
                report.checksum_ok = Some(true);
            }
            report.headers = Some(decoded.headers);
            report.stream_seq = decoded.stream_seq;
            let (kind, id) = match decoded.body {
                FrameBody::Message(m) => {
                    let id = m.id();
                    report.body = Some(m.message.bytes);
                    report.payload = m.payload;
                    ("message", id)
                }
                FrameBody::Ping(id) => ("ping", id),
                FrameBody::Pong(id) => ("pong", id),
                FrameBody::Cancel(id) => ("cancel", id),
                _ => ("unknown", 0),
            };
            report.kind = Some(kind);
            report.id = Some(id);
        }
        Err(e) => {
            if matches!(e, CodecError::ChecksumMismatch { .. }) {
                report.checksum_ok = Some(false);
            }
            report.error = Some(e.to_string());
        }
    }
    if let (Err(why), None) = (layout, &report.error) {
        report.error = Some(why);
    }
}

/// Reads a V07 frame's sections: `flag | [checksum] | [payload len] | [headers] |
/// [stream seq] | body | [payload]`.
fn v07_layout(frame: &[u8], report: &mut FrameReport) -> Result<(), String> {
    let flag = frame[0];
    report.flag = Some(flag);
    let mut pos = 1;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        let field = frame
            .get(pos..pos + n)
            .ok_or_else(|| format!("truncated in the {what} field"))?;
        pos += n;
        Ok(field)
    };
    if flag & flags::CHECKSUM != 0 {
        let field = take(8, "checksum")?;
        report.checksum = Some(u64::from_be_bytes(field.try_into().expect("8 bytes")));
    }
    let payload_len = match flag & flags::PAYLOAD {
        0 => None,
        _ => Some(
            u32::from_be_bytes(take(4, "payload length")?.try_into().expect("4 bytes")) as usize,
        ),
    };
    if flag & flags::CUSTOM_HEADERS != 0 {
        let start = pos;
        let mut headers = FrameHeaders::default();
        for header in default_header_codecs() {
            let used = header
                .decode(frame.get(pos..).unwrap_or_default(), &mut headers)
                .map_err(|e| e.to_string())?;
            pos += used;
        }
        report.headers_raw = frame.get(start..pos).map(Bytes::copy_from_slice);
        report.headers = Some(headers);
    }
    if flag & flags::STREAM_SEQ != 0 {
        let field = frame
            .get(pos..pos + 4)
            .ok_or("truncated in the stream sequence field")?;
        report.stream_seq = Some(u32::from_be_bytes(field.try_into().expect("4 bytes")));
        pos += 4;
    }
    let rest = frame.len().saturating_sub(pos);
    let payload = payload_len.unwrap_or(0);
    if payload > rest {
        return Err(format!(
            "the payload length claims {payload} bytes, {rest} are left"
        ));
    }
    report.body_wire_len = Some(rest - payload);
    Ok(())
}

/// Reads a V05 frame's sections: `flag | [msize] | message | [payload]`.
fn v05_layout(frame: &[u8], report: &mut FrameReport) -> Result<(), String> {
    let flag = frame[0];
    report.flag = Some(flag);
    let rest = frame.len() - 1;
    report.body_wire_len = Some(match flag {
        0x01 => {
            let field = frame
                .get(1..5)
                .ok_or("truncated in the message size field")?;
            let size = u32::from_be_bytes(field.try_into().expect("4 bytes")) as usize;
            if size > rest - 4 {
                return Err(format!(
                    "the message size claims {size} bytes, {} are left",
                    rest - 4
                ));
            }
            size
        }
        _ => rest,
    });
    Ok(())
}

/// The names of the flag bits set in a V07 flag byte.
fn flag_names(flag: u8) -> Vec<&'static str> {
    [
        (flags::PAYLOAD, "payload"),
        (flags::CHECKSUM, "checksum"),
        (flags::CUSTOM_HEADERS, "headers"),
        (flags::COMPRESS, "compressed"),
        (flags::STREAM_SEQ, "stream-seq"),
        (flags::PING, "ping"),
        (flags::PONG, "pong"),
        (flags::CANCEL, "cancel"),
    ]
    .into_iter()
    .filter(|(bit, _)| flag & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

impl FrameReport {
    /// Prints the report as text.
    fn print(&self) {
        let Some(len) = self.length else {
            println!(
                "@{}: error: {}",
                self.offset,
                self.error.as_deref().unwrap_or("?")
            );
            return;
        };
        println!(
            "@{}: frame of {} bytes ({len} after the length prefix)",
            self.offset,
            len + LEN_PREFIX
        );
        if let Some(flag) = self.flag {
            println!("  flag     {flag:#04x} [{}]", flag_names(flag).join(", "));
        }
        if let Some(sum) = self.checksum {
            let verdict = match self.checksum_ok {
                Some(true) => "ok",
                Some(false) => "MISMATCH",
                None => "not checked",
            };
            println!("  checksum {sum:#018x} {verdict}");
        }
        if let Some(h) = &self.headers {
            let deadline = match h.deadline {
                Some(left) => format!("{} left", humantime::format_duration(truncate(left))),
                None => "none".into(),
            };
            println!("  deadline {deadline}");
            if !h.trace.is_empty() {
                println!(
                    "  trace    {} span {}",
                    h.trace.trace_id_hex(),
                    h.trace.span_id_hex()
                );
            }
        }
        if let Some(raw) = &self.headers_raw {
            println!("  headers  {} bytes: {}", raw.len(), hex_preview(raw));
        }
        if let Some(seq) = self.stream_seq {
            println!("  stream   seq {seq}");
        }
        if let (Some(kind), Some(id)) = (self.kind, self.id) {
            println!("  {kind:<8} id {id} ({id:#018x})");
        }
        if let Some(body) = &self.body {
            let wire = match self.body_wire_len {
                Some(n) if n != body.len() => format!(" ({n} on the wire)"),
                _ => String::new(),
            };
            let text = as_text(body.get(8..).unwrap_or_default())
                .filter(|t| !t.is_empty())
                .map(|t| format!("  {:?}", t.chars().take(40).collect::<String>()))
                .unwrap_or_default();
            println!(
                "  body     {} bytes{wire}: {}{text}",
                body.len(),
                hex_preview(body)
            );
        } else if let Some(n) = self.body_wire_len {
            println!("  body     {n} bytes on the wire");
        }
        if let Some(payload) = &self.payload {
            println!(
                "  payload  {} bytes: {}",
                payload.len(),
                hex_preview(payload)
            );
        }
        if let Some(error) = &self.error {
            println!("  error    {error}");
        }
    }

    /// The report as one JSON object.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offset": self.offset,
            "length": self.length,
            "flag": self.flag,
            "flags": self.flag.map(flag_names),
            "checksum": self.checksum.map(|s| format!("{s:#018x}")),
            "checksum_ok": self.checksum_ok,
            "deadline_ns": self.headers.as_ref().and_then(|h| h.deadline).map(|d| d.as_nanos() as u64),
            "trace_id": self.headers.as_ref().filter(|h| !h.trace.is_empty()).map(|h| h.trace.trace_id_hex()),
            "span_id": self.headers.as_ref().filter(|h| !h.trace.is_empty()).map(|h| h.trace.span_id_hex()),
            "headers_hex": self.headers_raw.as_deref().map(hex),
            "stream_seq": self.stream_seq,
            "kind": self.kind,
            "id": self.id,
            "body_len": self.body.as_ref().map(Bytes::len),
            "body_wire_len": self.body_wire_len,
            "body_hex": self.body.as_deref().map(hex),
            "payload_len": self.payload.as_ref().map(Bytes::len),
            "error": self.error,
        })
    }
}

/// A deadline rounded to the microsecond, for display.
fn truncate(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// A message of any layout: its bytes as [`OpaqueMessage`] keeps them (the id is their
/// first 8 bytes, MatrixOne's layout, or 0), and the payload the frame carried, which
/// `OpaqueMessage` does not keep.
#[derive(Debug)]
struct Dump {
    /// The body.
    message: OpaqueMessage,
    /// The payload, if the frame had one.
    payload: Option<Bytes>,
}

impl Message for Dump {
    fn id(&self) -> u64 {
        self.message.id()
    }

    fn set_id(&mut self, id: u64) {
        self.message.set_id(id);
    }

    fn encoded_len(&self) -> usize {
        self.message.encoded_len()
    }

    fn encode(&self, dst: &mut BytesMut) {
        self.message.encode(dst);
    }

    fn decode(body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        Ok(Self {
            message: OpaqueMessage::new(body),
            payload,
        })
    }

    fn payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A V07 frame of a message `id ‖ body`, encoded by the library.
    fn v07(config: CodecConfig, id: u64, body: &[u8], payload: Option<&[u8]>) -> Vec<u8> {
        let mut msg = Dump {
            message: OpaqueMessage::new([&[0; 8][..], body].concat()),
            payload: payload.map(Bytes::copy_from_slice),
        };
        msg.set_id(id);
        let mut buf = BytesMut::new();
        let codec = Codec::new(config);
        let payload = codec
            .encode(&morpc::codec::Frame::message(msg), &mut buf)
            .unwrap();
        let mut out = buf.to_vec();
        out.extend_from_slice(payload.as_deref().unwrap_or_default());
        out
    }

    #[test]
    fn frames_are_reported_one_by_one_and_a_bad_one_does_not_stop_the_next() {
        let mut input = v07(CodecConfig::new(Framing::V07), 7, b"hello", None);
        let mut corrupt = v07(CodecConfig::new(Framing::V07), 8, b"world", None);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff; // the checksum no longer matches
        input.extend_from_slice(&corrupt);
        input.extend_from_slice(&v07(
            CodecConfig::new(Framing::V07)
                .checksum(false)
                .compression(true),
            9,
            &[b'x'; 300],
            Some(b"payload"),
        ));
        let reports = decode_all(Framing::V07, &input);
        assert_eq!(reports.len(), 3);
        assert_eq!(
            (reports[0].id, reports[0].checksum_ok),
            (Some(7), Some(true))
        );
        assert!(reports[0].error.is_none());
        assert_eq!(reports[1].checksum_ok, Some(false));
        assert!(reports[1].error.as_deref().unwrap().contains("checksum"));
        assert_eq!(reports[1].offset, reports[0].length.unwrap() + LEN_PREFIX);
        let third = &reports[2];
        assert_eq!(third.id, Some(9));
        assert_eq!(
            third.body.as_ref().map(Bytes::len),
            Some(308),
            "decompressed"
        );
        assert!(third.body_wire_len.unwrap() < 308, "compressed on the wire");
        assert_eq!(third.payload.as_deref(), Some(&b"payload"[..]));
    }

    #[test]
    fn a_truncated_or_zero_length_frame_ends_the_input_with_an_error() {
        let mut input = v07(CodecConfig::new(Framing::V07), 1, b"a", None);
        input.truncate(input.len() - 2);
        let reports = decode_all(Framing::V07, &input);
        assert_eq!(reports.len(), 1);
        assert!(reports[0].error.as_deref().unwrap().contains("truncated"));
        let reports = decode_all(Framing::V07, &[0, 0, 0, 0, 1]);
        assert!(reports[0].error.as_deref().unwrap().contains("zero length"));
        let reports = decode_all(Framing::V07, &[0, 0]);
        assert!(
            reports[0]
                .error
                .as_deref()
                .unwrap()
                .contains("length prefix")
        );
    }

    #[test]
    fn v05_frames_show_their_message_and_payload() {
        let input = v07(CodecConfig::new(Framing::V05), 3, b"abc", Some(b"pp"));
        let reports = decode_all(Framing::V05, &input);
        assert_eq!(reports[0].flag, Some(0x01));
        assert_eq!(reports[0].body_wire_len, Some(11));
        assert_eq!(reports[0].payload.as_deref(), Some(&b"pp"[..]));
        assert!(reports[0].error.is_none());
    }
}
