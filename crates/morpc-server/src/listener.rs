//! Binding and accepting: TCP (`SO_REUSEADDR`, `TCP_NODELAY`) and Unix sockets (a stale
//! socket file is removed before binding).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use futures::{Stream, StreamExt};
use morpc_backend::{Address, BoxReader, BoxWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};

use crate::ServerError;

/// A byte stream a server can serve: any established connection.
pub(crate) trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// A stream of incoming connections, each with the peer's name for logs.
pub(crate) type IncomingStream =
    Pin<Box<dyn Stream<Item = io::Result<(Box<dyn Connection>, String)>> + Send>>;

/// What the accept loop accepts from.
pub(crate) enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix listener and the socket path the server removes when it stops (`None`
    /// for a listener it was given).
    Unix(UnixListener, Option<PathBuf>),
    /// Connections from elsewhere (`serve_with_incoming`).
    Incoming(IncomingStream),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(l) => f.debug_tuple("Tcp").field(l).finish(),
            Self::Unix(l, path) => f.debug_tuple("Unix").field(l).field(path).finish(),
            Self::Incoming(_) => f.write_str("Incoming"),
        }
    }
}

impl Listener {
    /// Binds `address`.
    pub(crate) async fn bind(address: &Address) -> Result<Self, ServerError> {
        let bind_error = |e: io::Error| ServerError::Bind {
            address: address.to_string(),
            source: e.into(),
        };
        match address {
            Address::Tcp(addr) => {
                let addr = tokio::net::lookup_host(addr.as_str())
                    .await
                    .map_err(bind_error)?
                    .next()
                    .ok_or_else(|| ServerError::InvalidAddress(addr.clone()))?;
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(bind_error)?;
                socket.set_reuseaddr(true).map_err(bind_error)?;
                socket.bind(addr).map_err(bind_error)?;
                Ok(Self::Tcp(socket.listen(1024).map_err(bind_error)?))
            }
            Address::Unix(path) => {
                remove_stale_socket(path).await.map_err(bind_error)?;
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                Ok(Self::Unix(listener, Some(path.clone())))
            }
        }
    }

    /// The address actually bound (the real port when binding port 0).
    pub(crate) fn local_addr(&self) -> io::Result<Address> {
        match self {
            Self::Tcp(l) => Ok(Address::from(l.local_addr()?)),
            Self::Unix(l, _) => {
                let addr = l.local_addr()?;
                let path = addr.as_pathname().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "an unnamed Unix socket")
                })?;
                Ok(Address::Unix(path.to_owned()))
            }
            Self::Incoming(_) => Ok(Address::Tcp("incoming".to_owned())),
        }
    }

    /// The socket file to remove when the server stops.
    pub(crate) fn socket_file(&self) -> Option<PathBuf> {
        match self {
            Self::Unix(_, path) => path.clone(),
            _ => None,
        }
    }

    /// Accepts one connection and the peer's address. `Ok(None)`: an incoming stream
    /// ended (no connection will come any more).
    pub(crate) async fn accept(&mut self) -> io::Result<Option<(Accepted, String)>> {
        match self {
            Self::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Some((Accepted::Tcp(stream), peer.to_string())))
            }
            Self::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                let local = l.local_addr()?;
                let name = local
                    .as_pathname()
                    .map_or_else(|| "unix".to_owned(), |p| format!("unix://{}", p.display()));
                Ok(Some((Accepted::Unix(stream), name)))
            }
            Self::Incoming(incoming) => match incoming.next().await {
                Some(Ok((io, peer))) => Ok(Some((Accepted::Other(io), peer))),
                Some(Err(e)) => Err(e),
                None => Ok(None),
            },
        }
    }
}

/// An accepted connection before its (optional) TLS handshake.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-socket connection.
    Unix(UnixStream),
    /// A connection from an incoming stream.
    Other(Box<dyn Connection>),
}

impl std::fmt::Debug for Box<dyn Connection> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

/// Longest a TLS handshake may take when the first-frame timeout is disabled.
#[cfg(feature = "rustls-ring")]
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Accepted {
    /// The connection's halves, after the TLS handshake when `tls` is set. The handshake
    /// is part of the connection's first frame: it must finish within `first_frame`
    /// (or within 10 s when that timeout is disabled).
    pub(crate) async fn into_halves(
        self,
        tls: Tls<'_>,
        first_frame: Option<std::time::Duration>,
    ) -> io::Result<(BoxReader, BoxWriter)> {
        #[cfg(feature = "rustls-ring")]
        if let Some(acceptor) = tls {
            let limit = first_frame.unwrap_or(HANDSHAKE_TIMEOUT);
            return match self {
                Self::Tcp(s) => secure(acceptor, s, limit).await,
                Self::Unix(s) => secure(acceptor, s, limit).await,
                Self::Other(s) => secure(acceptor, s, limit).await,
            };
        }
        #[cfg(not(feature = "rustls-ring"))]
        let _ = (tls, first_frame);
        Ok(match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Self::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Self::Other(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::pin(r), Box::pin(w))
            }
        })
    }
}

/// Runs the TLS handshake (bounded by `limit`) and splits the secured stream.
#[cfg(feature = "rustls-ring")]
async fn secure<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    limit: std::time::Duration,
) -> io::Result<(BoxReader, BoxWriter)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let secured = tokio::time::timeout(limit, acceptor.accept(stream))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })?;
    let (r, w) = tokio::io::split(secured);
    Ok((Box::pin(r), Box::pin(w)))
}

/// The server's TLS acceptor, if any (nothing without the `rustls-ring` feature).
#[cfg(feature = "rustls-ring")]
pub(crate) type Tls<'a> = Option<&'a tokio_rustls::TlsAcceptor>;
/// The server's TLS acceptor, if any (nothing without the `rustls-ring` feature).
#[cfg(not(feature = "rustls-ring"))]
pub(crate) type Tls<'a> = Option<&'a std::convert::Infallible>;

/// Removes a socket file nobody listens on. Refuses to touch a live socket, and
/// anything that is not a socket (a regular file, a directory, a link to one): binding
/// then fails with `AddrInUse` instead of deleting someone's file.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !file_type.is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket; not removing it",
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}
