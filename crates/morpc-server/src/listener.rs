//! Binding and accepting: TCP (`SO_REUSEADDR`, `TCP_NODELAY`) and Unix sockets (a stale
//! socket file is removed before binding).

use std::io;
use std::path::{Path, PathBuf};

use morpc_backend::{Address, BoxReader, BoxWriter};
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixStream};

use crate::ServerError;

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix listener and its socket path.
    Unix(UnixListener, PathBuf),
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
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound (the real port when binding port 0).
    pub(crate) fn local_addr(&self) -> io::Result<Address> {
        match self {
            Self::Tcp(l) => Ok(Address::from(l.local_addr()?)),
            Self::Unix(_, path) => Ok(Address::Unix(path.clone())),
        }
    }

    /// Accepts one connection: its halves and the peer's address.
    pub(crate) async fn accept(&self) -> io::Result<(BoxReader, BoxWriter, String)> {
        match self {
            Self::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                stream.set_nodelay(true)?;
                let (r, w) = stream.into_split();
                Ok((Box::pin(r), Box::pin(w), peer.to_string()))
            }
            Self::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                let (r, w) = stream.into_split();
                Ok((
                    Box::pin(r),
                    Box::pin(w),
                    format!("unix://{}", path.display()),
                ))
            }
        }
    }
}

/// Removes a socket file nobody listens on; refuses to touch a live one.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}
