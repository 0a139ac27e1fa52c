//! A minimal morpc peer for the backend tests, written directly over the codec (no
//! `morpc-server`): it echoes requests, answers pings, numbers stream responses, and can
//! be told to stay silent, drop connections or answer out of order.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use morpc_backend::codec::{Codec, CodecConfig, Frame, FrameBody, RawMessage};
use morpc_backend::{Address, Backend, BackendConfig};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// How the peer treats requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo every request at once.
    Echo,
    /// Read everything, answer nothing (pings neither).
    Silent,
    /// Hold requests and answer each read's batch in reverse order.
    Reverse,
    /// Accept and never read (a half-open peer): the client's writes back up.
    Stall,
}

/// What the peer observed.
#[derive(Debug, Default)]
pub struct Seen {
    /// Ids of every request frame, in arrival order.
    pub ids: Mutex<Vec<u64>>,
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Deadline headers seen, in arrival order.
    pub deadlines: Mutex<Vec<Option<Duration>>>,
    /// Sum of payload bytes received.
    pub payload_bytes: AtomicUsize,
    /// Ids of every cancel frame, in arrival order.
    pub cancels: Mutex<Vec<u64>>,
}

/// Serves one in-memory connection in `mode`; returns the client's end and what the
/// peer sees.
pub fn pipe_peer(mode: Mode, codec: CodecConfig) -> (tokio::io::DuplexStream, Arc<Seen>) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let seen = Arc::new(Seen::default());
    tokio::spawn(serve(
        server,
        mode,
        Codec::new(codec),
        seen.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    (client, seen)
}

/// A running test peer.
pub struct Peer {
    pub addr: Address,
    pub seen: Arc<Seen>,
    /// While set, every accepted connection is closed after its first read.
    pub drop_connections: Arc<AtomicBool>,
    /// The accept loop.
    task: Option<JoinHandle<()>>,
    /// The connection tasks, aborted with the peer.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        for conn in self.conns.lock().drain(..) {
            conn.abort();
        }
    }
}

impl Peer {
    /// Starts a TCP peer on `127.0.0.1:0`.
    pub async fn tcp(mode: Mode, codec: CodecConfig) -> Self {
        Self::tcp_on("127.0.0.1:0".parse().unwrap(), mode, codec).await
    }

    /// Starts a TCP peer on `addr` (to restart on the same port).
    pub async fn tcp_on(addr: SocketAddr, mode: Mode, codec: CodecConfig) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        Self::start(Listener::Tcp(listener), Address::from(local), mode, codec)
    }

    /// Starts a Unix-socket peer at `path`.
    pub async fn unix(path: &std::path::Path, mode: Mode, codec: CodecConfig) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        Self::start(
            Listener::Unix(listener),
            Address::Unix(path.to_owned()),
            mode,
            codec,
        )
    }

    /// Serves every connection `listener` accepts.
    fn start(listener: Listener, addr: Address, mode: Mode, codec: CodecConfig) -> Self {
        let seen = Arc::new(Seen::default());
        let drop_connections = Arc::new(AtomicBool::new(false));
        let (s, d) = (seen.clone(), drop_connections.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let codec = Codec::new(codec);
        let task = tokio::spawn(async move {
            while let Some(stream) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let conn = tokio::spawn(serve(stream, mode, codec.clone(), s.clone(), d.clone()));
                c.lock().push(conn.abort_handle());
            }
        });
        Self {
            addr,
            seen,
            drop_connections,
            task: Some(task),
            conns,
        }
    }

    /// The TCP socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        match &self.addr {
            Address::Tcp(a) => a.parse().unwrap(),
            Address::Unix(_) => panic!("not a TCP peer"),
        }
    }

    /// A backend for this peer.
    pub async fn backend(&self, config: BackendConfig<RawMessage>) -> Backend<RawMessage> {
        Backend::create(self.addr.clone(), config).await.unwrap()
    }

    /// Stops accepting and closes every connection; returns once the port is free.
    pub async fn stop(mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        let _ = task.await;
        for conn in self.conns.lock().drain(..) {
            conn.abort();
        }
    }
}

/// A connected byte stream of either kind.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TCP or Unix listener.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The next connection, or `None` when the listener fails.
    async fn accept(&self) -> Option<Box<dyn Io>> {
        match self {
            Self::Tcp(l) => {
                let (stream, _) = l.accept().await.ok()?;
                stream.set_nodelay(true).ok()?;
                Some(Box::new(stream))
            }
            Self::Unix(l) => Some(Box::new(l.accept().await.ok()?.0)),
        }
    }
}

/// A request whose body is `push:N` makes the peer answer with N numbered responses.
/// `gap:N` does the same but skips sequence number 2. One whose body starts with
/// `pong-first` is answered with a pong carrying its id first.
fn push_count(body: &Bytes) -> Option<usize> {
    let n = body
        .strip_prefix(b"push:")
        .or_else(|| body.strip_prefix(b"gap:"))?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mode: Mode,
    codec: Codec,
    seen: Arc<Seen>,
    drop_connections: Arc<AtomicBool>,
) {
    if mode == Mode::Stall {
        let _keep_open = stream;
        std::future::pending::<()>().await;
        return;
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    // Next response sequence number per stream id.
    let mut stream_seq: HashMap<u64, u32> = HashMap::new();
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if drop_connections.load(Ordering::SeqCst) {
            return;
        }
        let mut answers = Vec::new();
        loop {
            let frame: Frame<RawMessage> = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            match frame.body {
                FrameBody::Ping(id) if mode != Mode::Silent => answers.push(Frame::pong(id)),
                FrameBody::Cancel(id) => seen.cancels.lock().push(id),
                FrameBody::Ping(_) | FrameBody::Pong(_) => {}
                FrameBody::Message(msg) => {
                    seen.ids.lock().push(msg.id);
                    seen.deadlines.lock().push(frame.headers.deadline);
                    if let Some(p) = &msg.payload {
                        seen.payload_bytes.fetch_add(p.len(), Ordering::SeqCst);
                    }
                    if mode == Mode::Silent {
                        continue;
                    }
                    let count = if frame.stream_seq.is_some() {
                        push_count(&msg.body).unwrap_or(1)
                    } else {
                        1
                    };
                    let gap = msg.body.starts_with(b"gap");
                    // A confused peer: a pong carrying the request's id before its answer.
                    if msg.body.starts_with(b"pong-first") {
                        answers.push(Frame::pong(msg.id));
                    }
                    for _ in 0..count {
                        let mut reply = Frame::message(msg.clone());
                        if frame.stream_seq.is_some() {
                            let seq = stream_seq.entry(msg.id).or_insert(1);
                            if gap && *seq == 2 {
                                *seq += 1; // skip one: the client must notice
                            }
                            reply.stream_seq = Some(*seq);
                            *seq += 1;
                        }
                        answers.push(reply);
                    }
                }
                _ => {}
            }
        }
        if mode == Mode::Reverse {
            answers.reverse();
        }
        for frame in &answers {
            if let Some(p) = codec.encode(frame, &mut out).unwrap() {
                out.extend_from_slice(&p);
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// A raw message with `body`.
pub fn msg(body: impl Into<Bytes>) -> RawMessage {
    RawMessage::new(body)
}

/// Installs a test tracing subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
