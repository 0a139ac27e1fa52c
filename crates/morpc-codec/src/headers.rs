//! V07 custom headers: the per-frame metadata between the fixed fields and the body.
//!
//! A codec holds an ordered list of [`HeaderCodec`]s; when the list is not empty every
//! frame sets flag `0x04` and each codec writes its bytes in order. The defaults, in
//! MatrixOne's order, are [`DeadlineHeader`] and [`TraceHeader`]; users may append their own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{CodecError, FrameError};

/// Metadata carried by a frame's custom headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameHeaders {
    /// Time left until the sender's deadline (V07 deadline header, a relative duration).
    /// `None` means no deadline. The receiver rebuilds a local deadline from it.
    pub deadline: Option<Duration>,
    /// The sender's tracing span context; all zeros when there is no span.
    pub trace: TraceContext,
    /// Values of user-registered header codecs, by codec name.
    pub extensions: Vec<(&'static str, Bytes)>,
}

impl FrameHeaders {
    /// Headers carrying only a deadline (remaining time).
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline: Some(deadline),
            ..Self::default()
        }
    }

    /// The value stored under `name` by a user header codec.
    pub fn extension(&self, name: &str) -> Option<&Bytes> {
        self.extensions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Stores `value` under `name`, replacing an earlier value.
    pub fn set_extension(&mut self, name: &'static str, value: Bytes) {
        match self.extensions.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.extensions.push((name, value)),
        }
    }
}

/// A span context as MatrixOne propagates it: trace id (16 bytes) ‖ span id (8 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The 128-bit trace id.
    pub trace_id: [u8; 16],
    /// The 64-bit span id.
    pub span_id: [u8; 8],
}

impl TraceContext {
    /// Whether this is the all-zeros "no span" context.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The trace id as lower-case hex (32 digits), as tracing systems print it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as lower-case hex (16 digits).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One custom header of a V07 frame.
///
/// Codecs are called in registration order; each writes its bytes on encode and, on
/// decode, reads its bytes from the front of `src` and returns how many it consumed.
pub trait HeaderCodec: Send + Sync + fmt::Debug + 'static {
    /// Writes this header's bytes for `headers` into `dst`.
    fn encode(&self, headers: &FrameHeaders, dst: &mut BytesMut);

    /// Reads this header from the front of `src` into `headers`; returns the bytes used.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] or [`FrameError::MalformedHeader`] (as
    /// [`CodecError::InvalidFrame`]) when `src` does not hold a valid header.
    fn decode(&self, src: &[u8], headers: &mut FrameHeaders) -> Result<usize, CodecError>;
}

/// The ordered list of header codecs of a codec configuration.
pub type HeaderCodecs = Vec<Arc<dyn HeaderCodec>>;

/// The default header codecs, in MatrixOne's order: deadline, then trace.
pub fn default_header_codecs() -> HeaderCodecs {
    vec![Arc::new(DeadlineHeader), Arc::new(TraceHeader)]
}

/// Wire value a missing deadline is written as: the largest remaining time, which Go
/// peers saturate to "no deadline" and which we decode back to `None`.
const NO_DEADLINE: i64 = i64::MAX;

/// Deadline header: 8 bytes, i64 big-endian, the remaining time in nanoseconds.
///
/// A missing deadline is written as `i64::MAX` (read back as `None`); a value ≤ 0 from a
/// peer means the deadline has already passed and is read as `Some(Duration::ZERO)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineHeader;

impl DeadlineHeader {
    /// Its size on the wire.
    pub(crate) const LEN: usize = 8;

    /// The header's bytes.
    #[inline]
    pub(crate) fn bytes(headers: &FrameHeaders) -> [u8; Self::LEN] {
        let nanos = match headers.deadline {
            Some(left) => i64::try_from(left.as_nanos()).unwrap_or(NO_DEADLINE),
            None => NO_DEADLINE,
        };
        nanos.to_be_bytes()
    }
}

impl HeaderCodec for DeadlineHeader {
    #[inline]
    fn encode(&self, headers: &FrameHeaders, dst: &mut BytesMut) {
        dst.put_slice(&Self::bytes(headers));
    }

    #[inline]
    fn decode(&self, src: &[u8], headers: &mut FrameHeaders) -> Result<usize, CodecError> {
        let bytes: [u8; Self::LEN] =
            src.get(..Self::LEN)
                .and_then(|b| b.try_into().ok())
                .ok_or(FrameError::Truncated {
                    section: "deadline header",
                })?;
        headers.deadline = match i64::from_be_bytes(bytes) {
            NO_DEADLINE => None,
            nanos => Some(Duration::from_nanos(nanos.max(0) as u64)),
        };
        Ok(Self::LEN)
    }
}

/// Size of a span context on the wire.
const TRACE_LEN: usize = 24;

/// Trace header: one length byte (24) then trace id ‖ span id; all zeros without a span.
/// A length byte of 0 (no span context) is accepted on decode, as Go does.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeader;

impl TraceHeader {
    /// Its size on the wire: the length byte and the span context.
    pub(crate) const LEN: usize = 1 + TRACE_LEN;

    /// The header's bytes.
    #[inline]
    pub(crate) fn bytes(headers: &FrameHeaders) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = TRACE_LEN as u8;
        out[1..17].copy_from_slice(&headers.trace.trace_id);
        out[17..].copy_from_slice(&headers.trace.span_id);
        out
    }
}

impl HeaderCodec for TraceHeader {
    #[inline]
    fn encode(&self, headers: &FrameHeaders, dst: &mut BytesMut) {
        dst.put_slice(&Self::bytes(headers));
    }

    #[inline]
    fn decode(&self, src: &[u8], headers: &mut FrameHeaders) -> Result<usize, CodecError> {
        let truncated = FrameError::Truncated {
            section: "trace header",
        };
        let (&len, rest) = src.split_first().ok_or(truncated)?;
        match usize::from(len) {
            0 => {
                headers.trace = TraceContext::default();
                Ok(1)
            }
            TRACE_LEN => {
                let ctx = rest.get(..TRACE_LEN).ok_or(truncated)?;
                headers.trace.trace_id.copy_from_slice(&ctx[..16]);
                headers.trace.span_id.copy_from_slice(&ctx[16..]);
                Ok(Self::LEN)
            }
            _ => Err(FrameError::MalformedHeader("trace").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_header_round_trips_and_clamps_negative() {
        let mut dst = BytesMut::new();
        let headers = FrameHeaders::with_deadline(Duration::from_secs(1));
        DeadlineHeader.encode(&headers, &mut dst);
        assert_eq!(&dst[..], &1_000_000_000i64.to_be_bytes());
        let mut out = FrameHeaders::default();
        assert_eq!(DeadlineHeader.decode(&dst, &mut out).unwrap(), 8);
        assert_eq!(out.deadline, Some(Duration::from_secs(1)));

        DeadlineHeader
            .decode(&(-5i64).to_be_bytes(), &mut out)
            .unwrap();
        assert_eq!(out.deadline, Some(Duration::ZERO));

        dst.clear();
        DeadlineHeader.encode(&FrameHeaders::default(), &mut dst);
        DeadlineHeader.decode(&dst, &mut out).unwrap();
        assert_eq!(out.deadline, None);
    }

    #[test]
    fn trace_header_rejects_odd_lengths_and_truncation() {
        let mut out = FrameHeaders::default();
        assert_eq!(TraceHeader.decode(&[0], &mut out).unwrap(), 1);
        assert!(TraceHeader.decode(&[5, 0, 0, 0, 0, 0], &mut out).is_err());
        assert!(TraceHeader.decode(&[24, 1, 2], &mut out).is_err());
        assert!(TraceHeader.decode(&[], &mut out).is_err());
    }

    #[test]
    fn trace_ids_print_as_hex() {
        let ctx = TraceContext {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
        };
        assert_eq!(ctx.trace_id_hex(), "ab".repeat(16));
        assert_eq!(ctx.span_id_hex(), "01".repeat(8));
    }

    #[test]
    fn extensions_replace_by_name() {
        let mut h = FrameHeaders::default();
        h.set_extension("tenant", Bytes::from_static(b"a"));
        h.set_extension("tenant", Bytes::from_static(b"b"));
        assert_eq!(h.extensions.len(), 1);
        assert_eq!(h.extension("tenant").unwrap(), &Bytes::from_static(b"b"));
        assert!(h.extension("other").is_none());
    }
}
