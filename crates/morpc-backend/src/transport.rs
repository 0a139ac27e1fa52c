//! Dialling a backend's connection: TCP or Unix, optionally wrapped in TLS (feature
//! `rustls-ring`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::{Address, BackendError, BoxReader, BoxWriter};

impl Address {
    /// Dials the address within `timeout`, with `TCP_NODELAY` on TCP (no TLS).
    ///
    /// # Errors
    /// [`BackendError::Connect`] with the cause (`TimedOut` when `timeout` elapsed).
    pub async fn connect(&self, timeout: Duration) -> Result<(BoxReader, BoxWriter), BackendError> {
        dial(self, timeout, None).await
    }
}

/// How a backend secures its connections.
#[cfg(feature = "rustls-ring")]
#[derive(Clone)]
pub struct TlsClient {
    /// The rustls connector.
    connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry.
    server_name: rustls::pki_types::ServerName<'static>,
}

#[cfg(feature = "rustls-ring")]
impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

#[cfg(feature = "rustls-ring")]
impl TlsClient {
    /// TLS with `config` (roots, optional client certificate), checking that the server's
    /// certificate is valid for `server_name`.
    ///
    /// # Errors
    /// [`BackendError::InvalidAddress`] when `server_name` is not a DNS name or IP address.
    pub fn new(
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Self, BackendError> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|_| BackendError::InvalidAddress(server_name.to_owned()))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }
}

/// The TLS settings a dial uses (nothing without the `rustls-ring` feature).
#[cfg(feature = "rustls-ring")]
pub(crate) type Tls<'a> = Option<&'a TlsClient>;
/// The TLS settings a dial uses (nothing without the `rustls-ring` feature).
#[cfg(not(feature = "rustls-ring"))]
pub(crate) type Tls<'a> = Option<&'a std::convert::Infallible>;

/// The halves of an established connection, as a [`Connector`] returns them.
pub type Connected = (BoxReader, BoxWriter);

/// The future a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<Connected>> + Send>>;

/// How a backend establishes its connections, instead of dialling TCP or Unix itself:
/// a tunnel, an in-process pipe, a simulated network. Set with
/// [`BackendConfig::connector`](crate::BackendConfig::connector); every backend of a
/// client's pools then connects (and reconnects) through it.
///
/// The connection it returns is used as it is: the backend's TLS settings do not apply
/// (secure it in the connector), and the connect timeout bounds the call.
///
/// Implemented for closures `Fn(&Address) -> ConnectFuture`:
///
/// ```
/// use std::sync::Arc;
/// use morpc_backend::{Address, BackendConfig, ConnectFuture, Connector};
/// use morpc_backend::codec::RawMessage;
///
/// // Connects every address through an in-memory pipe served elsewhere.
/// let connector = |_: &Address| -> ConnectFuture {
///     Box::pin(async {
///         let (ours, _theirs) = tokio::io::duplex(64 * 1024);
///         let (r, w) = tokio::io::split(ours);
///         Ok((Box::pin(r) as _, Box::pin(w) as _))
///     })
/// };
/// let config: BackendConfig<RawMessage> = BackendConfig::new().connector(Arc::new(connector));
/// # let _ = config;
/// ```
pub trait Connector: Send + Sync + 'static {
    /// Establishes a connection to `address`.
    fn connect(&self, address: &Address) -> ConnectFuture;
}

impl<F> Connector for F
where
    F: Fn(&Address) -> ConnectFuture + Send + Sync + 'static,
{
    fn connect(&self, address: &Address) -> ConnectFuture {
        self(address)
    }
}

/// The connector of [`Backend::from_io`](crate::Backend::from_io): the one connection it
/// was given, then an error (such a backend cannot reconnect).
pub(crate) struct Given(pub(crate) parking_lot::Mutex<Option<Connected>>);

impl Connector for Given {
    fn connect(&self, _: &Address) -> ConnectFuture {
        let given = self.0.lock().take();
        Box::pin(async move {
            given.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    "a backend over a given connection cannot reconnect",
                )
            })
        })
    }
}

/// Connects to `address` within `timeout`: through `connector` when one is set,
/// otherwise by dialling it (TLS handshake included).
pub(crate) async fn connect(
    address: &Address,
    timeout: Duration,
    connector: Option<&dyn Connector>,
    tls: Tls<'_>,
) -> Result<(BoxReader, BoxWriter), BackendError> {
    match connector {
        Some(connector) => within(address, timeout, connector.connect(address)).await,
        None => dial(address, timeout, tls).await,
    }
}

/// Connects to `address` within `timeout` (TLS handshake included).
pub(crate) async fn dial(
    address: &Address,
    timeout: Duration,
    tls: Tls<'_>,
) -> Result<(BoxReader, BoxWriter), BackendError> {
    within(address, timeout, dial_inner(address, tls)).await
}

/// Runs the connect attempt `attempt` to `address` within `timeout`; its failure (or the
/// timeout, as `TimedOut`) becomes [`BackendError::Connect`].
async fn within(
    address: &Address,
    timeout: Duration,
    attempt: impl Future<Output = io::Result<Connected>>,
) -> Result<Connected, BackendError> {
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
    };
    result.map_err(|e| BackendError::Connect {
        address: address.to_string(),
        source: e.into(),
    })
}

async fn dial_inner(address: &Address, tls: Tls<'_>) -> io::Result<(BoxReader, BoxWriter)> {
    match address {
        Address::Tcp(addr) => {
            let stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            #[cfg(feature = "rustls-ring")]
            if let Some(tls) = tls {
                return secure(tls, stream).await;
            }
            #[cfg(not(feature = "rustls-ring"))]
            let _ = tls;
            let (r, w) = stream.into_split();
            Ok((Box::pin(r), Box::pin(w)))
        }
        Address::Unix(path) => {
            let stream = UnixStream::connect(path).await?;
            #[cfg(feature = "rustls-ring")]
            if let Some(tls) = tls {
                return secure(tls, stream).await;
            }
            let (r, w) = stream.into_split();
            Ok((Box::pin(r), Box::pin(w)))
        }
    }
}

/// Runs the TLS handshake over `stream` and splits the secured stream.
#[cfg(feature = "rustls-ring")]
async fn secure<S>(tls: &TlsClient, stream: S) -> io::Result<(BoxReader, BoxWriter)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = tls
        .connector
        .connect(tls.server_name.clone(), stream)
        .await?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::pin(r), Box::pin(w)))
}
