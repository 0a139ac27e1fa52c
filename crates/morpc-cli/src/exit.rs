//! How a subcommand fails, and the exit code each failure means.

use std::process::ExitCode;

/// Why a subcommand did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The remote side, or the data, failed: exit code 1.
    Remote(String),
    /// The command was used wrongly (arguments, files, framing): exit code 2, as for
    /// the argument errors clap reports itself.
    Usage(String),
    /// Failed, and the output already said why (a lost ping, a bad frame): exit code 1.
    Reported,
}

impl Failure {
    /// Prints the reason to stderr and returns the exit code.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::Remote(why) => {
                eprintln!("morpc: {why}");
                ExitCode::from(1)
            }
            Self::Usage(why) => {
                eprintln!("morpc: {why}");
                ExitCode::from(2)
            }
            Self::Reported => ExitCode::from(1),
        }
    }
}

/// A tokio runtime for one subcommand.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the runtime: {e}")))
}

/// Reads a file named on the command line (`-` is stdin).
pub(crate) fn read_input(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut out = Vec::new();
        std::io::stdin()
            .read_to_end(&mut out)
            .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
        return Ok(out);
    }
    std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}
