//! The writer task: drains the send queue in batches, connects and reconnects, encodes a
//! batch into one buffer and writes it with vectored writes (payloads never copied), one
//! flush per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use morpc_codec::{Frame, FrameBody, FrameHeaders, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::address::{BoxReader, BoxWriter};
use crate::conn_state::ConnState;
use crate::connection::{FrameWriter, catch_panic, now};
use crate::pending::fail;
use crate::shared::{ItemKind, ONE_WAY_DEADLINE, PING_DEADLINE_CAP, Shared, WriteItem};
use crate::{BackendError, ConnectionLost, metrics, reader};

/// An established connection: the write half, owned by the writer task, and the reader
/// task reading the other half.
pub(crate) struct Connection {
    /// Where batches are encoded and written.
    writer: FrameWriter,
    /// Broken flag and reader stop signal.
    state: Arc<ConnState>,
    /// The reader task; aborted when the connection is dropped.
    reader: JoinHandle<()>,
}

impl Connection {
    /// Starts the reader task for a freshly connected socket.
    pub(crate) fn start<Req: Message, Resp: Message>(
        shared: &Arc<Shared<Req, Resp>>,
        read_half: BoxReader,
        writer: BoxWriter,
    ) -> Self {
        let state = Arc::new(ConnState {
            token: CancellationToken::new(),
            broken: AtomicBool::new(false),
            epoch: shared.connections.fetch_add(1, Ordering::Relaxed) + 1,
        });
        let reader = tokio::spawn(reader::run(shared.clone(), read_half, state.clone()));
        *shared.current.lock() = Some(state.clone());
        Self {
            writer: FrameWriter::new(writer),
            state,
            reader,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.token.cancel();
        self.reader.abort();
    }
}

/// Reconnect bookkeeping between batches.
struct Reconnect {
    /// When the backend first failed to (re)connect, if it is failing now.
    failing_since: Option<Instant>,
    /// No attempt before this instant (backoff).
    next_attempt: Instant,
    /// Failed attempts in a row.
    attempts: u32,
    /// The last connect error, given to sends that arrive during the backoff.
    last_error: Option<BackendError>,
}

/// The writer task of one backend. Runs until the backend closes or becomes unusable.
///
/// A panic in user code (a `Message` encoder, a header codec, the write filter) makes
/// the backend unusable: everything in flight fails at once with
/// [`BackendError::Unusable`] and a client's pool replaces the backend.
pub(crate) async fn run<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    rx: mpsc::Receiver<WriteItem<Req>>,
    conn: Option<Connection>,
) {
    if let Err(panic) = catch_panic("writer", write_loop(shared.clone(), rx, conn)).await {
        tracing::error!(address = %shared.address, %panic, "backend task panicked; backend unusable");
        shared.mark_unusable();
    }
}

/// The writer loop proper.
async fn write_loop<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    mut rx: mpsc::Receiver<WriteItem<Req>>,
    mut conn: Option<Connection>,
) {
    let batch_size = shared.config.batch_send_size.max(1);
    let mut batch: Vec<WriteItem<Req>> = Vec::with_capacity(batch_size);
    let mut reconnect = Reconnect {
        failing_since: None,
        next_attempt: now(),
        attempts: 0,
        last_error: None,
    };
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    loop {
        // A connection broken while the writer waits (by its reader, or closed with a
        // stream) is dropped at once, so the peer sees it close.
        let broken = conn.as_ref().map(|c| c.state.token.clone());
        let more = tokio::select! {
            biased;
            () = &mut closed => break,
            () = cancelled(broken.as_ref()) => {
                conn = None;
                continue;
            }
            more = crate::io::next_batch(&mut rx, &mut batch, batch_size) => more,
        };
        if !more {
            break;
        }
        // The batch's bytes stay charged until it is written (or dropped).
        let _charged = Charged {
            shared: &shared,
            charge: batch.iter().map(|item| item.charge as usize).sum(),
        };

        if conn.as_ref().is_none_or(|c| c.state.is_broken()) {
            conn = None;
            match connect(&shared, &mut reconnect).await {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    fail_items(&shared, batch.drain(..), &err);
                    if shared.closed.is_cancelled() {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };

        // One clock reading serves the batch: expiry, deadline headers, activity.
        let now = now();
        prepare(&shared, &mut batch, now, c.state.epoch);
        let messages = batch.len();
        if !encode(&shared, &mut batch, &mut c.writer, now) {
            continue;
        }
        // Bounded by progress, not by the earliest deadline in the batch: one request
        // with little time left must not break the connection for the others.
        match c.writer.flush(shared.config.write_timeout).await {
            Ok(bytes) => {
                shared.touch(now);
                // The clock is read again only when metrics are compiled in.
                if metrics::ENABLED {
                    metrics::batch_written(messages, bytes, rx.len(), now.elapsed());
                }
            }
            Err(e) => c.state.break_with(&shared, ConnectionLost::from(e)),
        }
    }

    // Closed or unusable: nothing queued is written; everything waiting fails.
    rx.close();
    let reason = shared.closed_error();
    fail_items(&shared, batch.drain(..), &reason);
    while let Ok(item) = rx.try_recv() {
        shared.written(item.charge as usize);
        fail_items(&shared, std::iter::once(item), &reason);
    }
    shared.pending.fail_all(&reason);
    if let Some(mut c) = conn {
        let _ = c.writer.shutdown().await;
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The byte-budget charge of one batch, given back when it is dropped: once the batch is
/// written, failed or dropped, whatever path the loop takes.
struct Charged<'a, Req, Resp> {
    /// Whose budget.
    shared: &'a Shared<Req, Resp>,
    /// The batch's charges.
    charge: usize,
}

impl<Req, Resp> Drop for Charged<'_, Req, Resp> {
    fn drop(&mut self) {
        self.shared.written(self.charge);
    }
}

/// Connects once, honouring the backoff. A failure is returned at once so queued sends
/// fail fast (they were not sent and may be retried elsewhere); a backend that keeps
/// failing for the reconnect window becomes unusable.
async fn connect<Req: Message, Resp: Message>(
    shared: &Arc<Shared<Req, Resp>>,
    state: &mut Reconnect,
) -> Result<Connection, BackendError> {
    if let Some(err) = &state.last_error {
        if now() < state.next_attempt {
            return Err(err.clone());
        }
    }
    let started = now();
    let attempt = tokio::select! {
        biased;
        () = shared.closed.cancelled() => return Err(shared.closed_error()),
        r = shared.config.connect(&shared.address) => r,
    };
    metrics::connected(attempt.is_ok(), started.elapsed());
    match attempt {
        Ok((reader, writer)) => {
            if state.attempts > 0 {
                tracing::info!(address = %shared.address, attempts = state.attempts, "reconnected");
            }
            state.failing_since = None;
            state.attempts = 0;
            state.last_error = None;
            shared.touch(now());
            Ok(Connection::start(shared, reader, writer))
        }
        Err(err) => {
            let now = now();
            let since = *state.failing_since.get_or_insert(now);
            tracing::warn!(address = %shared.address, error = %err, attempts = state.attempts + 1, "connect failed");
            if now.duration_since(since) >= shared.config.reconnect.window {
                shared.mark_unusable();
                return Err(BackendError::Unusable);
            }
            state.next_attempt = now + shared.config.reconnect.backoff(state.attempts);
            state.attempts += 1;
            state.last_error = Some(err.clone());
            Err(err)
        }
    }
}

/// Drops the items that must not be written, resolving their waiters: requests and pings
/// past their deadline (`Timeout`), items the filter rejects (`Filtered`), and requests
/// and pings whose waiter is gone (dropped future). The requests and pings kept are
/// marked as written on the connection of `epoch`.
fn prepare<Req: Message, Resp>(
    shared: &Shared<Req, Resp>,
    batch: &mut Vec<WriteItem<Req>>,
    now: Instant,
    epoch: u64,
) {
    batch.retain(|item| {
        if item.kind.has_waiter() && item.deadline <= now {
            resolve(shared, item.kind, item.id, BackendError::Timeout);
            return false;
        }
        if let (Some(filter), FrameBody::Message(msg)) = (&shared.config.filter, &item.body) {
            if !filter(msg, item.arg()) {
                resolve(shared, item.kind, item.id, BackendError::Filtered);
                return false;
            }
        }
        // A request or ping nobody waits for any more is not worth writing. A stream
        // message is written even if its stream closed since it was queued: it was
        // accepted, as bytes written to a socket before closing it are.
        match item.kind {
            ItemKind::Request | ItemKind::Ping => shared.pending.mark_written(item.id, epoch),
            ItemKind::Stream | ItemKind::OneWay | ItemKind::Heartbeat | ItemKind::Cancel => true,
        }
    });
}

/// Fails the waiter of an item of `kind` with `id`, if it has one.
fn resolve<Req, Resp>(shared: &Shared<Req, Resp>, kind: ItemKind, id: u64, err: BackendError) {
    if kind.has_waiter() {
        if let Some(pending) = shared.pending.remove(id) {
            fail(pending, err);
        }
    }
}

/// Fails the waiters of `items` with `err`.
fn fail_items<Req, Resp>(
    shared: &Shared<Req, Resp>,
    items: impl Iterator<Item = WriteItem<Req>>,
    err: &BackendError,
) {
    for item in items {
        resolve(shared, item.kind, item.id, err.clone());
    }
}

/// Encodes `batch` into `out` (payloads as their own chunks) and empties it. Returns the
/// whether anything is waiting to be written.
fn encode<Req: Message, Resp>(
    shared: &Shared<Req, Resp>,
    batch: &mut Vec<WriteItem<Req>>,
    out: &mut FrameWriter,
    now: Instant,
) -> bool {
    for mut item in batch.drain(..) {
        let left = item.deadline.saturating_duration_since(now);
        let headers = FrameHeaders {
            deadline: Some(match item.kind {
                ItemKind::OneWay | ItemKind::Cancel => ONE_WAY_DEADLINE,
                ItemKind::Ping | ItemKind::Heartbeat => left.min(PING_DEADLINE_CAP),
                ItemKind::Request | ItemKind::Stream => left,
            }),
            trace: item.trace(),
            extensions: item.take_headers(),
        };
        let (id, kind) = (item.id, item.kind);
        let frame = Frame {
            body: item.body,
            headers,
            stream_seq: item.stream_seq,
        };
        match out.encode(&shared.codec, &frame) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(address = %shared.address, id, error = %e, "cannot encode message");
                resolve(shared, kind, id, e.into());
            }
        }
    }
    !out.is_empty()
}
