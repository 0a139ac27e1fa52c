//! Command-line wire options shared by the echo examples.

use clap::{Args, ValueEnum};
use morpc::prelude::{CodecConfig, Framing};

/// The framing names accepted on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Wire {
    V05,
    V07,
}

/// `--framing v05|v07 [--checksum] [--compression]`.
#[derive(Debug, Args)]
pub(crate) struct WireArgs {
    /// Wire framing.
    #[arg(long, value_enum, default_value = "v07")]
    pub(crate) framing: Wire,
    /// Send V07 frames with an xxHash64 checksum (received checksums are always verified).
    #[arg(long)]
    pub(crate) checksum: bool,
    /// LZ4-compress V07 frames, and accept compressed ones.
    #[arg(long)]
    pub(crate) compression: bool,
}

impl WireArgs {
    /// The codec configuration these options describe.
    pub(crate) fn codec(&self) -> CodecConfig {
        match self.framing {
            Wire::V05 => CodecConfig::new(Framing::V05),
            Wire::V07 => CodecConfig::new(Framing::V07)
                .checksum(self.checksum)
                .compression(self.compression),
        }
    }
}
