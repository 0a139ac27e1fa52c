//! [`Framing`]: which of Go morpc's two wire formats a codec speaks. Every other
//! module may name it; it depends on none of them.

/// The wire framing; both ends of a connection must use the same one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Framing {
    /// MatrixOne morpc v0.5.0: `len | flag | [msize] | message | [payload]`. No checksum,
    /// headers, stream sequence or ping.
    V05,
    /// MatrixOne morpc since v0.7.0 (the default): checksum, payload length, custom
    /// headers, stream sequence, ping/pong and LZ4 compression, each behind a flag bit.
    #[default]
    V07,
}
