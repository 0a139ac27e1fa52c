//! Command-line wire options shared by the echo examples.

use clap::{Args, ValueEnum};
use morpc::prelude::{CodecConfig, Framing};

/// The framing names accepted on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Wire {
    V05,
    V07,
}

/// `--framing v05|v07 [--no-checksum] [--compression]`: the library's defaults (V07 with
/// a checksum) unless told otherwise.
#[derive(Debug, Args)]
pub(crate) struct WireArgs {
    /// Wire framing.
    #[arg(long, value_enum, default_value = "v07")]
    pub(crate) framing: Wire,
    /// Send V07 frames with an xxHash64 checksum: the default, as the library's (received
    /// checksums are always verified). Kept for scripts that pass it.
    #[arg(long, overrides_with = "no_checksum")]
    pub(crate) checksum: bool,
    /// Send V07 frames without a checksum.
    #[arg(long)]
    pub(crate) no_checksum: bool,
    /// LZ4-compress V07 frames, and accept compressed ones.
    #[arg(long)]
    pub(crate) compression: bool,
}

/// A log subscriber writing to stdout: colours only on a terminal, so pipes and files get
/// plain text; `RUST_LOG` filters, `default` when it is not set.
// Not every example that shares these options logs.
#[allow(dead_code)]
pub(crate) fn init_logs(default: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

impl WireArgs {
    /// The codec configuration these options describe.
    pub(crate) fn codec(&self) -> CodecConfig {
        match self.framing {
            Wire::V05 => CodecConfig::new(Framing::V05),
            Wire::V07 => CodecConfig::new(Framing::V07)
                .checksum(!self.no_checksum)
                .compression(self.compression),
        }
    }
}
