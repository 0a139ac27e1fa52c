//! What a frame carries, independent of how it is laid out on the wire.

use crate::FrameHeaders;

/// V07 flag bits (SPEC §2.2).
pub mod flags {
    /// The frame has a payload section (and a `payload_len` field).
    pub const PAYLOAD: u8 = 0x01;
    /// The frame carries an xxHash64 checksum of body ‖ payload.
    pub const CHECKSUM: u8 = 0x02;
    /// The frame carries the registered custom headers.
    pub const CUSTOM_HEADERS: u8 = 0x04;
    /// Body and payload are LZ4 block compressed.
    pub const COMPRESS: u8 = 0x08;
    /// The frame carries a stream sequence number.
    pub const STREAM_SEQ: u8 = 0x10;
    /// The frame is a ping; its body is the ping id.
    pub const PING: u8 = 0x20;
    /// The frame is a pong; its body is the ping id.
    pub const PONG: u8 = 0x40;
    /// Every bit Go's V07 codec defines.
    pub const KNOWN: u8 = PAYLOAD | CHECKSUM | CUSTOM_HEADERS | COMPRESS | STREAM_SEQ | PING | PONG;
    /// morpc-rs extension, unused by Go: the frame cancels the request whose id its body
    /// carries. Only with [`CodecConfig::cancel_extension`](crate::CodecConfig::cancel_extension).
    pub const CANCEL: u8 = 0x80;
}

/// What a frame's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameBody<M> {
    /// An application message.
    Message(M),
    /// A heartbeat ping carrying its id (V07 only).
    Ping(u64),
    /// The answer to the ping with this id (V07 only).
    Pong(u64),
    /// Cancels the request with this id (V07 with the opt-in cancel extension: flag 0x80,
    /// which Go peers would misread, so it is off by default).
    Cancel(u64),
}

/// One frame: its body and its metadata. The codec encodes it from and decodes it into
/// this shape; which parts reach the wire depends on the framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<M> {
    /// The message, ping or pong.
    pub body: FrameBody<M>,
    /// Custom header values (V07 only).
    pub headers: FrameHeaders,
    /// Stream sequence number (V07 only; flag 0x10).
    pub stream_seq: Option<u32>,
}

impl<M> Frame<M> {
    /// A frame for `msg` with no headers or sequence number.
    pub fn message(msg: M) -> Self {
        Self {
            body: FrameBody::Message(msg),
            headers: FrameHeaders::default(),
            stream_seq: None,
        }
    }

    /// A ping frame.
    pub fn ping(id: u64) -> Self {
        Self {
            body: FrameBody::Ping(id),
            headers: FrameHeaders::default(),
            stream_seq: None,
        }
    }

    /// A pong frame answering the ping `id`.
    pub fn pong(id: u64) -> Self {
        Self {
            body: FrameBody::Pong(id),
            headers: FrameHeaders::default(),
            stream_seq: None,
        }
    }

    /// A frame cancelling request `id` (cancel extension).
    pub fn cancel(id: u64) -> Self {
        Self {
            body: FrameBody::Cancel(id),
            headers: FrameHeaders::default(),
            stream_seq: None,
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: FrameHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the stream sequence number.
    pub fn with_stream_seq(mut self, seq: u32) -> Self {
        self.stream_seq = Some(seq);
        self
    }

    /// The message, if this is a message frame.
    pub fn into_message(self) -> Option<M> {
        match self.body {
            FrameBody::Message(m) => Some(m),
            FrameBody::Ping(_) | FrameBody::Pong(_) | FrameBody::Cancel(_) => None,
        }
    }
}
