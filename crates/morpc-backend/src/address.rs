//! Addresses (`host:port` or `unix:///path`) and dialling them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::BackendError;

/// Where a backend connects: a TCP `host:port` or a Unix socket `unix:///path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address such as `127.0.0.1:9000` or `node-1:9000`.
    Tcp(String),
    /// A Unix domain socket path (written `unix:///path`).
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, BackendError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(BackendError::InvalidAddress(s.to_owned()));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(s.to_owned()))
            }
            _ => Err(BackendError::InvalidAddress(s.to_owned())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl From<std::net::SocketAddr> for Address {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::Tcp(addr.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_forms() {
        assert_eq!(
            "127.0.0.1:80".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:80".into())
        );
        assert_eq!(
            "[::1]:80".parse::<Address>().unwrap(),
            Address::Tcp("[::1]:80".into())
        );
        assert_eq!(
            "unix:///tmp/a.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Address::Unix("/tmp/a.sock".into()).to_string(),
            "unix:///tmp/a.sock"
        );
        for bad in ["", "host", "host:", ":80", "host:99999", "unix://"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }
}
