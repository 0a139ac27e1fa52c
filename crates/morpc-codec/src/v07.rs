//! `Framing::V07` (MatrixOne morpc since v0.7.0):
//!
//! ```text
//! u32 len | u8 flag | [u64 checksum] | [u32 payload_len] | [custom headers] | [u32 stream_seq]
//!         | body | [payload]
//! ```
//! Each bracketed field is present when its flag bit is set; see [`flags`](crate::flags).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::codec::LEN_PREFIX;
use crate::frame::flags::{
    CANCEL, CHECKSUM, COMPRESS, CUSTOM_HEADERS, KNOWN, PAYLOAD, PING, PONG, STREAM_SEQ,
};
use crate::headers::{DeadlineHeader, HeaderCodec, TraceHeader};
use crate::{
    CodecConfig, CodecError, FlagChecking, Frame, FrameBody, FrameError, FrameHeaders, Message, lz4,
};

/// The most bytes before a body with the default headers: prefix, flag, checksum,
/// payload length, deadline and trace headers, stream sequence.
const HEAD_MAX: usize = LEN_PREFIX + 1 + 8 + 4 + DeadlineHeader::LEN + TraceHeader::LEN + 4;

/// Appends `frame` (length prefix left zero for the caller) and returns its payload.
#[inline]
pub(crate) fn encode<M: Message>(
    config: &CodecConfig,
    frame: &Frame<M>,
    dst: &mut BytesMut,
) -> Result<Option<Bytes>, CodecError> {
    let msg = match &frame.body {
        FrameBody::Message(msg) => Some(msg),
        FrameBody::Cancel(_) if !config.is_cancel_extension() => {
            return Err(CodecError::Unsupported {
                what: "cancel frames without the cancel extension",
                framing: crate::Framing::V07,
            });
        }
        FrameBody::Ping(_) | FrameBody::Pong(_) | FrameBody::Cancel(_) => None,
    };
    let body_len = msg.map_or(8, Message::encoded_len);
    if body_len > config.body_limit() {
        return Err(CodecError::FrameTooLarge {
            size: body_len,
            max: config.body_limit(),
        });
    }
    let payload = msg.and_then(Message::payload);
    if body_len == 0 && payload.is_some_and(|p| !p.is_empty()) {
        return Err(FrameError::EmptyBodyWithPayload.into());
    }
    // Everything before the body goes out in one write: prefix (left zero), flag
    // (set last), checksum (filled in last), payload length, MatrixOne's two default
    // headers and the stream sequence.
    dst.reserve(HEAD_MAX + body_len);
    let start = dst.len();
    let mut head = [0u8; HEAD_MAX];
    let mut n = LEN_PREFIX + 1;
    let mut flag = 0;
    let checksum_pos = config.is_checksum().then(|| {
        flag |= CHECKSUM;
        n += 8;
        start + n - 8
    });
    let payload_len_pos = payload.map(|_| {
        flag |= PAYLOAD;
        n += 4;
        start + n - 4
    });
    let default_headers = config.has_default_headers();
    if default_headers {
        flag |= CUSTOM_HEADERS;
        head[n..n + DeadlineHeader::LEN].copy_from_slice(&DeadlineHeader::bytes(&frame.headers));
        n += DeadlineHeader::LEN;
        head[n..n + TraceHeader::LEN].copy_from_slice(&TraceHeader::bytes(&frame.headers));
        n += TraceHeader::LEN;
        if let Some(seq) = frame.stream_seq {
            flag |= STREAM_SEQ;
            head[n..n + 4].copy_from_slice(&seq.to_be_bytes());
            n += 4;
        }
    }
    dst.extend_from_slice(&head[..n]);
    if !default_headers {
        if !config.header_codecs().is_empty() {
            flag |= CUSTOM_HEADERS;
            for codec in config.header_codecs() {
                codec.encode(&frame.headers, dst);
            }
        }
        if let Some(seq) = frame.stream_seq {
            flag |= STREAM_SEQ;
            dst.put_u32(seq);
        }
    }
    let flag_pos = start + LEN_PREFIX;

    let body_start = dst.len();
    let compress = config.is_compression() && msg.is_some();
    match &frame.body {
        FrameBody::Message(msg) if compress => {
            flag |= COMPRESS;
            let mut plain = BytesMut::with_capacity(body_len);
            msg.encode(&mut plain);
            lz4::compress_into(&plain, dst);
        }
        FrameBody::Message(msg) => msg.encode(dst),
        FrameBody::Ping(id) => {
            flag |= PING;
            dst.put_u64(*id);
        }
        FrameBody::Pong(id) => {
            flag |= PONG;
            dst.put_u64(*id);
        }
        FrameBody::Cancel(id) => {
            flag |= CANCEL;
            dst.put_u64(*id);
        }
    }

    let payload = payload.map(|p| {
        if compress && !p.is_empty() {
            let mut packed = BytesMut::new();
            lz4::compress_into(p, &mut packed);
            packed.freeze()
        } else {
            p.clone()
        }
    });
    if let (Some(pos), Some(p)) = (payload_len_pos, &payload) {
        let len = u32::try_from(p.len()).map_err(|_| CodecError::FrameTooLarge {
            size: p.len(),
            max: u32::MAX as usize,
        })?;
        dst[pos..pos + 4].copy_from_slice(&len.to_be_bytes());
    }
    if let Some(pos) = checksum_pos {
        let sum = checksum(&dst[body_start..], payload.as_deref().unwrap_or_default());
        dst[pos..pos + 8].copy_from_slice(&sum.to_be_bytes());
    }
    dst[flag_pos] = flag;
    Ok(payload)
}

/// Decodes one frame (length prefix already removed, so `rest` is not empty).
#[inline]
pub(crate) fn decode<M: Message>(
    config: &CodecConfig,
    mut rest: Bytes,
) -> Result<Frame<M>, CodecError> {
    // The fields before the body are read off the slice, and the frame advanced past
    // them once.
    let head: &[u8] = &rest;
    let flag = head[0];
    let mut at = 1;
    let known = if config.is_cancel_extension() {
        KNOWN | CANCEL
    } else {
        KNOWN
    };
    if flag & !known != 0 && config.flags() == FlagChecking::Strict {
        return Err(CodecError::UnknownFlag(flag));
    }
    let cancel = config.is_cancel_extension() && flag & CANCEL != 0;
    if flag & COMPRESS != 0 && !config.is_compression() {
        return Err(CodecError::CompressionNotEnabled);
    }
    if u8::from(flag & PING != 0) + u8::from(flag & PONG != 0) + u8::from(cancel) > 1 {
        return Err(FrameError::ConflictingKinds.into());
    }
    let expected_sum = match flag & CHECKSUM {
        0 => None,
        _ => Some(u64::from_be_bytes(field(head, &mut at, "checksum")?)),
    };
    let payload_len = match flag & PAYLOAD {
        0 => None,
        _ => Some(u32::from_be_bytes(field(head, &mut at, "payload length")?) as usize),
    };
    let mut headers = FrameHeaders::default();
    if flag & CUSTOM_HEADERS != 0 {
        if config.has_default_headers() {
            // MatrixOne's two headers, without a dynamic call each.
            at += DeadlineHeader.decode(&head[at..], &mut headers)?;
            at += TraceHeader.decode(&head[at..], &mut headers)?;
        } else {
            if config.header_codecs().is_empty() {
                return Err(FrameError::UnexpectedHeaders.into());
            }
            for codec in config.header_codecs() {
                let used = codec.decode(&head[at..], &mut headers)?;
                if used > head.len() - at {
                    return Err(FrameError::Truncated { section: "headers" }.into());
                }
                at += used;
            }
        }
    }
    let stream_seq = match flag & STREAM_SEQ {
        0 => None,
        _ => Some(u32::from_be_bytes(field(head, &mut at, "stream sequence")?)),
    };
    rest.advance(at);
    let payload = match payload_len {
        Some(n) if n > rest.len() => {
            return Err(FrameError::SizeBeyondFrame {
                claimed: n,
                available: rest.len(),
            }
            .into());
        }
        Some(n) => Some(rest.split_off(rest.len() - n)),
        None => None,
    };
    let mut body = rest;
    if body.is_empty() && payload.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(FrameError::EmptyBodyWithPayload.into());
    }
    if let Some(expected) = expected_sum {
        let actual = checksum(&body, payload.as_deref().unwrap_or_default());
        if actual != expected {
            return Err(CodecError::ChecksumMismatch { expected, actual });
        }
    }
    let mut payload = payload;
    if flag & COMPRESS != 0 {
        body = lz4::decompress(&body, config.body_limit())?.into();
        if let Some(p) = payload.as_mut().filter(|p| !p.is_empty()) {
            *p = lz4::decompress(p, config.frame_limit())?.into();
        }
    }

    let body = if flag & PING != 0 {
        FrameBody::Ping(control_id(&body)?)
    } else if flag & PONG != 0 {
        FrameBody::Pong(control_id(&body)?)
    } else if cancel {
        FrameBody::Cancel(control_id(&body)?)
    } else {
        FrameBody::Message(M::decode(body, payload)?)
    };
    Ok(Frame {
        body,
        headers,
        stream_seq,
    })
}

/// The `N` bytes of a fixed-size field at `*at` of `head`, moving `at` past them.
#[inline]
fn field<const N: usize>(
    head: &[u8],
    at: &mut usize,
    section: &'static str,
) -> Result<[u8; N], CodecError> {
    let bytes = head
        .get(*at..*at + N)
        .ok_or(FrameError::Truncated { section })?;
    *at += N;
    Ok(bytes.try_into().expect("N bytes"))
}

/// The ping id a ping or pong body carries.
fn control_id(body: &[u8]) -> Result<u64, CodecError> {
    let id: [u8; 8] = body
        .try_into()
        .map_err(|_| FrameError::BadControlBody(body.len()))?;
    Ok(u64::from_be_bytes(id))
}

/// xxHash64 (seed 0) over body ‖ payload as they are on the wire.
fn checksum(body: &[u8], payload: &[u8]) -> u64 {
    if payload.is_empty() {
        return xxh64(body, 0);
    }
    let mut hasher = Xxh64::new(0);
    hasher.update(body);
    hasher.update(payload);
    hasher.digest()
}
