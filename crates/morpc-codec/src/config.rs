//! Codec configuration: framing, checksum, compression, limits and header codecs.

use std::sync::Arc;

use crate::Framing;
use crate::headers::{HeaderCodec, HeaderCodecs, default_header_codecs};

/// How the decoder treats flag bits it does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum FlagChecking {
    /// Reject unknown flag bits with [`CodecError::UnknownFlag`](crate::CodecError::UnknownFlag)
    /// (the default).
    #[default]
    Strict,
    /// Ignore unknown bits as Go does (in V05 every flag but `0x01` reads as a plain frame).
    Lenient,
}

/// Go's V05 limit: the whole frame after the length prefix, 10 MiB.
pub const V05_DEFAULT_MAX_FRAME: usize = 10 * 1024 * 1024;
/// Go's V07 limit on a message body, 100 MiB − 1, checked before sending.
pub const V07_DEFAULT_MAX_BODY: usize = 100 * 1024 * 1024 - 1;
/// Slack Go allows on top of the V07 body limit for a received frame's length prefix.
pub const V07_FRAME_SLACK: usize = 10 * 1024 * 1024;

/// Configuration of a [`Codec`](crate::Codec). The setters consume and return the
/// configuration, so it doubles as its own builder:
///
/// ```
/// use morpc_codec::{CodecConfig, Framing};
/// let config = CodecConfig::new(Framing::V07).checksum(true).compression(false);
/// assert!(config.is_checksum());
/// ```
///
/// With the `serde` feature it loads from a file; absent keys keep their defaults and
/// the header codecs are always the two defaults (custom ones are added in code).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct CodecConfig {
    /// Which wire framing to speak.
    framing: Framing,
    /// Whether V07 frames carry an xxHash64 checksum (flag 0x02) on send.
    checksum: bool,
    /// Whether V07 bodies and payloads are LZ4-block compressed (flag 0x08) on send, and
    /// whether compressed frames are accepted on receive.
    compression: bool,
    /// Size limit; `None` picks the framing's Go default (see [`CodecConfig::max_body_size`]).
    max_body_size: Option<usize>,
    /// Strict or lenient handling of unknown flag bits.
    flag_checking: FlagChecking,
    /// Whether the opt-in cancel extension (flag 0x80) is spoken.
    cancel_extension: bool,
    /// V07 custom header codecs, in wire order.
    #[cfg_attr(feature = "serde", serde(skip, default = "default_header_codecs"))]
    headers: HeaderCodecs,
    /// Whether `headers` are exactly the two defaults (deadline, then trace): frames then
    /// encode and decode them without a dynamic call per header.
    #[cfg_attr(feature = "serde", serde(skip, default = "default_headers_on"))]
    default_headers: bool,
}

/// The default of `CodecConfig::default_headers` when a configuration is loaded (its
/// header codecs are then the defaults).
#[cfg(feature = "serde")]
fn default_headers_on() -> bool {
    true
}

impl Default for CodecConfig {
    /// V07 with checksum, no compression, the deadline and trace headers and Go's limits:
    /// what MatrixOne nodes configure.
    fn default() -> Self {
        Self::new(Framing::V07)
    }
}

impl CodecConfig {
    /// The defaults for `framing`: V07 with checksum on, compression off, deadline and
    /// trace headers; V05 plain. Go's size limits in both cases; strict flag checking.
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            checksum: framing == Framing::V07,
            compression: false,
            max_body_size: None,
            flag_checking: FlagChecking::Strict,
            cancel_extension: false,
            headers: match framing {
                Framing::V05 => Vec::new(),
                Framing::V07 => default_header_codecs(),
            },
            default_headers: framing == Framing::V07,
        }
    }

    /// Enables or disables the V07 checksum on sent frames. Received frames with flag
    /// 0x02 are always verified.
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }

    /// Enables or disables V07 LZ4 block compression.
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Sets the size limit. In V05 it bounds the frame length prefix (Go: 10 MiB); in V07
    /// it bounds a message body before sending and after decompression, and a received
    /// length prefix may be up to this plus 10 MiB (Go: 100 MiB − 1).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = Some(bytes);
        self
    }

    /// Sets strict or lenient flag checking.
    pub fn flag_checking(mut self, mode: FlagChecking) -> Self {
        self.flag_checking = mode;
        self
    }

    /// Enables the morpc-rs cancel extension (V07 only): frames with flag 0x80 carry the
    /// id of a request whose response is no longer wanted (its future was dropped, or it
    /// timed out after it was written), so a morpc-rs server can stop its handler. Both
    /// ends must enable it. Off by default: a morpc-rs server without it, in strict flag
    /// checking, closes the connection on such a frame; Go main ignores the bit (its
    /// server keeps working).
    pub fn cancel_extension(mut self, on: bool) -> Self {
        self.cancel_extension = on;
        self
    }

    /// Whether the cancel extension is enabled.
    pub fn is_cancel_extension(&self) -> bool {
        self.cancel_extension
    }

    /// Appends a custom header codec after the already registered ones.
    pub fn header_codec(mut self, codec: Arc<dyn HeaderCodec>) -> Self {
        self.headers.push(codec);
        self.default_headers = false;
        self
    }

    /// Removes every header codec (V07 frames then never set flag 0x04). Not what Go
    /// peers expect: MatrixOne always registers the deadline and trace headers.
    ///
    /// **Never use it against a Go main server**: a V07 frame without headers (flag
    /// `0x00`) makes Go hand its handler a nil context, and the usual `cs.Write(ctx, …)`
    /// then panics the whole Go process. See `docs/wire-format.md`.
    pub fn without_headers(mut self) -> Self {
        self.headers.clear();
        self.default_headers = false;
        self
    }

    /// The framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether sent V07 frames carry a checksum.
    pub fn is_checksum(&self) -> bool {
        self.checksum
    }

    /// Whether compression is enabled.
    pub fn is_compression(&self) -> bool {
        self.compression
    }

    /// The flag checking mode.
    pub fn flags(&self) -> FlagChecking {
        self.flag_checking
    }

    /// The registered header codecs, in wire order.
    pub fn header_codecs(&self) -> &[Arc<dyn HeaderCodec>] {
        &self.headers
    }

    /// Whether the header codecs are exactly the two defaults, deadline then trace.
    pub(crate) fn has_default_headers(&self) -> bool {
        self.default_headers
    }

    /// The effective body limit (see [`CodecConfig::max_body_size`]).
    pub fn body_limit(&self) -> usize {
        self.max_body_size.unwrap_or(match self.framing {
            Framing::V05 => V05_DEFAULT_MAX_FRAME,
            Framing::V07 => V07_DEFAULT_MAX_BODY,
        })
    }

    /// The largest length prefix accepted on receive.
    pub fn frame_limit(&self) -> usize {
        match self.framing {
            Framing::V05 => self.body_limit(),
            Framing::V07 => self.body_limit().saturating_add(V07_FRAME_SLACK),
        }
    }
}
