//! The flags every subcommand that speaks the wire shares: the framing and its options,
//! and TLS, turned into the library's configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use morpc::backend::rustls;
use morpc::backend::rustls::pki_types::pem::PemObject;
use morpc::backend::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use morpc::backend::{BackendConfig, TlsClient};
use morpc::prelude::{ClientConfig, CodecConfig, Framing, RawMessage, RpcClient};

use crate::exit::Failure;

/// A wire framing, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FramingArg {
    /// MatrixOne morpc v0.5.0.
    V05,
    /// MatrixOne morpc since v0.7.0.
    V07,
}

impl From<FramingArg> for Framing {
    fn from(f: FramingArg) -> Self {
        match f {
            FramingArg::V05 => Framing::V05,
            FramingArg::V07 => Framing::V07,
        }
    }
}

/// Framing flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct WireArgs {
    /// Wire framing (both ends must use the same).
    #[arg(long, value_enum, default_value = "v07")]
    pub(crate) framing: FramingArg,
    /// Send V07 frames with an xxHash64 checksum: the default, as the library's (received
    /// checksums are always verified).
    #[arg(long, overrides_with = "no_checksum")]
    checksum: bool,
    /// Send V07 frames without a checksum.
    #[arg(long)]
    no_checksum: bool,
    /// LZ4-compress V07 frames, and accept compressed ones.
    #[arg(long, visible_alias = "compression")]
    compress: bool,
}

impl WireArgs {
    /// The codec configuration.
    pub(crate) fn codec(&self) -> CodecConfig {
        CodecConfig::new(self.framing.into())
            .checksum(self.framing == FramingArg::V07 && !self.no_checksum)
            .compression(self.compress)
    }
}

/// Client TLS flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsClientArgs {
    /// Connect with TLS (needs `--ca-file`).
    #[arg(long)]
    tls: bool,
    /// The name the server's certificate must carry (default: the address's host).
    #[arg(long, requires = "tls")]
    server_name: Option<String>,
    /// PEM file of the certificates to trust.
    #[arg(long, requires = "tls")]
    ca_file: Option<PathBuf>,
}

/// The flags of a subcommand that connects to a server.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// The server: `host:port` or `unix:///path`.
    pub(crate) addr: String,
    /// How long to wait for each answer (and to connect).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) wire: WireArgs,
    #[command(flatten)]
    tls: TlsClientArgs,
}

impl ConnectArgs {
    /// A client of the server, connected (or the reason it could not connect).
    pub(crate) async fn client(&self) -> Result<RpcClient<RawMessage>, Failure> {
        let mut backend = BackendConfig::new()
            .codec(self.wire.codec())
            .connect_timeout(self.timeout)
            .default_timeout(self.timeout);
        if self.tls.tls {
            backend = backend.tls(self.tls_client()?);
        }
        let config = ClientConfig::new()
            .max_backends_per_host(1)
            .default_timeout(self.timeout)
            .initial_backends(&self.addr, 1);
        let client = RpcClient::new(config, backend).await;
        if client.backend_count(&self.addr) == 0 {
            // Connecting failed: one send tells why, with the library's error.
            let why = match client.ready(&self.addr).await {
                Ok(()) => return Ok(client),
                Err(e) => e,
            };
            return Err(Failure::Remote(format!(
                "cannot connect to {}: {why}",
                self.addr
            )));
        }
        Ok(client)
    }

    /// The TLS settings of `--tls`.
    fn tls_client(&self) -> Result<TlsClient, Failure> {
        let ca = self.tls.ca_file.as_deref().ok_or_else(|| {
            Failure::Usage("--tls needs --ca-file (the certificates to trust)".into())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots
                .add(cert)
                .map_err(|e| Failure::Usage(format!("{}: {e}", ca.display())))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = match &self.tls.server_name {
            Some(name) => name.clone(),
            None => host_of(&self.addr),
        };
        TlsClient::new(Arc::new(config), &name).map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// The host part of a `host:port` address (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> String {
    let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Server TLS flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsServerArgs {
    /// PEM file of the server's certificate chain (serves TLS; needs `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the server's private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsServerArgs {
    /// The rustls server configuration, when TLS was asked for.
    pub(crate) fn config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, Failure> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Failure::Usage(format!("{}: {e}", key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::Usage(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
        Ok(Some(Arc::new(config)))
    }
}

/// The crypto provider (ring, the one the library is built with).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_its_name_for_tls() {
        assert_eq!(host_of("localhost:9000"), "localhost");
        assert_eq!(host_of("tcp://node-1:9000"), "node-1");
        assert_eq!(host_of("[::1]:9000"), "::1");
    }
}
