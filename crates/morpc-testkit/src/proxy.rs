//! A fault-injecting TCP proxy for reliability tests, loopback only.
//!
//! It sits between a client and a server and, on command, adds latency, splits every
//! write into 1-byte pieces, stalls a direction (a half-open peer), resets connections
//! after N bytes (mid-frame), blackholes traffic or flips a byte. A fault applies to
//! bytes forwarded after it is set; byte offsets count from the start of each
//! connection's direction.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// Which way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn covers(self, other: Direction) -> bool {
        self == Direction::Both || self == other
    }
}

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward unchanged.
    None,
    /// Delay every chunk by this much.
    Latency(Duration),
    /// Forward every byte as its own write.
    OneByte,
    /// Stop forwarding (and reading) in `Direction` until the fault changes.
    Stall(Direction),
    /// Reset the connection (RST) once `bytes` have been forwarded in `Direction`.
    ResetAfter(Direction, usize),
    /// Read and discard everything.
    Blackhole,
    /// Flip (XOR 0xff) the byte at this offset in `Direction`.
    FlipByte(Direction, usize),
}

/// A running proxy. Dropping it stops it and cuts every connection.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// The current fault, watched by every pump.
    fault: watch::Sender<Fault>,
    /// Connection pumps, cut by `reset_all` and on drop.
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target` (which must be loopback).
    pub async fn start(target: SocketAddr) -> Self {
        assert!(
            target.ip().is_loopback(),
            "the fault proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, watcher) = watch::channel(Fault::None);
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pump(cr, sw, Direction::ToServer, watcher.clone()));
                let down = tokio::spawn(pump(sr, cw, Direction::ToClient, watcher.clone()));
                let mut registry = registry.lock();
                registry.retain(|h: &AbortHandle| !h.is_finished());
                registry.push(up.abort_handle());
                registry.push(down.abort_handle());
            }
        });
        Self {
            addr,
            fault,
            conns,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as morpc writes it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Sets the fault for all connections, current and future.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Cuts every current connection at once.
    pub fn reset_all(&self) {
        for conn in self.conns.lock().drain(..) {
            conn.abort();
        }
    }
}

/// Forwards `from` to `to` under the current fault, until either side closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Direction,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0usize;
    loop {
        let current = *fault.borrow_and_update();
        if let Fault::Stall(d) = current {
            if d.covers(dir) {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let chunk = &mut buf[..n];
        let ok = match current {
            Fault::None | Fault::Stall(_) => to.write_all(chunk).await.is_ok(),
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                to.write_all(chunk).await.is_ok()
            }
            Fault::OneByte => {
                let mut ok = true;
                for byte in chunk.iter() {
                    if to.write_all(std::slice::from_ref(byte)).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            Fault::Blackhole => true,
            Fault::FlipByte(d, at) if d.covers(dir) && (offset..offset + n).contains(&at) => {
                chunk[at - offset] ^= 0xff;
                to.write_all(chunk).await.is_ok()
            }
            Fault::FlipByte(..) => to.write_all(chunk).await.is_ok(),
            Fault::ResetAfter(d, limit) if d.covers(dir) && offset + n >= limit => {
                let keep = limit.saturating_sub(offset);
                let _ = to.write_all(&chunk[..keep]).await;
                // Dropping both halves of both sockets ends the connection; a linger of 0
                // is not reachable through owned halves, so the peers see a close.
                return;
            }
            Fault::ResetAfter(..) => to.write_all(chunk).await.is_ok(),
        };
        if !ok {
            return;
        }
        offset += n;
    }
}
