//! Typed decode and encode errors of the codec layer.
//!
//! Every way a frame can be wrong has its own variant, so the connection layers can log a
//! precise reason and tests can pin the exact failure. After any decode error the byte
//! stream is out of sync: the connection that produced it must be closed.

use std::borrow::Cow;

use crate::Framing;

/// An error raised while encoding or decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame (or, when sending, a message body) is larger than the configured maximum.
    /// Raised on receive as soon as the 4 length bytes are read.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The size that was claimed or would have been written.
        size: usize,
        /// The configured limit that it exceeds.
        max: usize,
    },
    /// The frame's sections are inconsistent or truncated.
    #[error("invalid frame: {0}")]
    InvalidFrame(#[from] FrameError),
    /// The flag byte holds bits this codec does not know (strict flag checking).
    #[error("unknown flag byte {0:#04x}")]
    UnknownFlag(u8),
    /// The xxHash64 checksum carried by the frame does not match its body and payload.
    #[error("checksum mismatch: frame carries {expected:#018x}, content hashes to {actual:#018x}")]
    ChecksumMismatch {
        /// The checksum written in the frame.
        expected: u64,
        /// The checksum computed over the received body and payload.
        actual: u64,
    },
    /// A compressed frame (flag 0x08) arrived at a codec without compression enabled.
    #[error("received a compressed frame but compression is not enabled")]
    CompressionNotEnabled,
    /// The frame was well formed but the message type could not decode its body.
    #[error("invalid message: {0}")]
    InvalidMessage(Cow<'static, str>),
    /// The operation does not exist in the configured framing (for example a ping in V05).
    #[error("{what} is not supported by framing {framing:?}")]
    Unsupported {
        /// What was attempted.
        what: &'static str,
        /// The framing that lacks it.
        framing: Framing,
    },
}

/// Why a frame is structurally invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is zero: every frame has at least a flag byte.
    #[error("zero length prefix")]
    ZeroLength,
    /// A fixed-size section announced by the flag byte does not fit in the frame.
    #[error("{section} section is truncated")]
    Truncated {
        /// The section that is cut short (`checksum`, `payload length`, `headers`, ...).
        section: &'static str,
    },
    /// The payload (or, in V05, the message) size exceeds the bytes that follow it.
    #[error("section of {claimed} bytes exceeds the {available} bytes left in the frame")]
    SizeBeyondFrame {
        /// The size written in the frame.
        claimed: usize,
        /// The bytes actually left.
        available: usize,
    },
    /// A frame with an empty body but a non-empty payload.
    #[error("empty body with a non-empty payload")]
    EmptyBodyWithPayload,
    /// The flag byte marks a frame as more than one of ping, pong and cancel.
    #[error("flags mark the frame as more than one of ping, pong and cancel")]
    ConflictingKinds,
    /// A ping, pong or cancel body is not the 8-byte id.
    #[error("ping/pong/cancel body of {0} bytes, expected 8")]
    BadControlBody(usize),
    /// Flag 0x04 is set but this codec has no header codecs registered.
    #[error("frame carries custom headers but no header codec is registered")]
    UnexpectedHeaders,
    /// A custom header's content is malformed.
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// An LZ4 block is corrupt.
    #[error("corrupt LZ4 block")]
    CorruptCompression,
}
