//! The reader task: reads into a large buffer, decodes every complete frame per read,
//! completes futures through the pending table, feeds streams, resolves pings, and runs
//! the heartbeat.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use morpc_codec::{Frame, FrameBody, Message};

use crate::address::BoxReader;
use crate::conn_state::ConnState;
use crate::connection::{FrameReader, ReadLimits, catch_panic, message_bytes, now};
use crate::pending::{Delivery, Pending, StreamItem};
use crate::shared::{ItemKind, Shared, WriteItem};
use crate::{BackendError, ConnectionLost, SendOptions};

/// Reads until the connection breaks or is stopped; a failure breaks the connection,
/// which fails everything in flight. A panic in user code (a `Message` or header
/// decoder) breaks it too, with the panic as its cause; the writer reconnects.
pub(crate) async fn run<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    reader: BoxReader,
    conn: Arc<ConnState>,
) {
    let cause = match catch_panic("reader", read_loop(&shared, reader, &conn)).await {
        Ok(None) => return,
        Ok(Some(cause)) => cause,
        Err(panic) => {
            tracing::error!(address = %shared.address, %panic, "connection task panicked");
            ConnectionLost::TaskPanicked(panic.to_string().into())
        }
    };
    conn.break_with(&shared, cause);
}

/// The loop proper; returns why the connection broke, or `None` when stopped.
async fn read_loop<Req: Message, Resp: Message>(
    shared: &Arc<Shared<Req, Resp>>,
    reader: BoxReader,
    conn: &ConnState,
) -> Option<ConnectionLost> {
    // The heartbeat's silence limit is one of the core's read limits.
    let heartbeat = shared.config.read_timeout;
    let limits = ReadLimits {
        silence: heartbeat,
        ..ReadLimits::default()
    };
    let mut reader = FrameReader::new(
        reader,
        shared.codec.clone(),
        shared.config.read_buffer_size,
        limits,
    );
    let mut ping_every = heartbeat.map(|d| {
        let period = (d / 5).max(std::time::Duration::from_millis(1));
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    });
    let (stopped, closed) = (conn.token.cancelled(), shared.closed.cancelled());
    tokio::pin!(stopped, closed);
    loop {
        let read = tokio::select! {
            biased;
            () = &mut stopped => return None,
            () = &mut closed => return None,
            _ = tick_opt(&mut ping_every) => {
                send_heartbeat(shared);
                continue;
            }
            r = reader.read() => r,
        };
        match read {
            Ok(n) => crate::metrics::bytes_read(n),
            Err(e) => return Some(ConnectionLost::from_read(e)),
        }
        shared.touch(reader.last_read());
        loop {
            match reader.next_frame::<Resp>() {
                Ok(Some(frame)) => {
                    crate::metrics::message_received();
                    if let Some(stalled) = dispatch(shared, frame) {
                        stalled.await;
                        // The wait was ours, not the peer's silence: the heartbeat's
                        // limit starts again now.
                        reader.resume();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(address = %shared.address, error = %e, "bad frame from peer");
                    return Some(ConnectionLost::BadFrame(e));
                }
            }
        }
    }
}

/// Queues a heartbeat ping if there is room; a full queue means traffic is flowing anyway.
fn send_heartbeat<Req: Message, Resp: Message>(shared: &Shared<Req, Resp>) {
    let id = shared.next_id();
    let deadline = now() + crate::shared::PING_DEADLINE_CAP;
    let item = WriteItem::new(
        FrameBody::Ping(id),
        id,
        deadline,
        ItemKind::Heartbeat,
        SendOptions::new(),
    );
    shared.try_enqueue(item);
}

/// The reader's wait for room in a stalled stream's buffer (boxed: rare, and it would
/// otherwise grow the read loop's future).
type StreamStall<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Routes one decoded frame; returns the wait when a stream's buffer is full.
fn dispatch<'a, Req: Message, Resp: Message>(
    shared: &'a Shared<Req, Resp>,
    frame: Frame<Resp>,
) -> Option<StreamStall<'a>> {
    let Frame {
        body,
        headers,
        stream_seq,
    } = frame;
    let msg = match body {
        FrameBody::Message(msg) => msg,
        FrameBody::Pong(id) => {
            if let Some(Pending::Ping(tx, _)) = shared.pending.remove(id) {
                let _ = tx.send(Ok(()));
            }
            return None;
        }
        FrameBody::Ping(id) => {
            tracing::debug!(address = %shared.address, id, "ignoring ping from server");
            return None;
        }
        _ => return None,
    };
    let id = msg.id();
    match shared
        .pending
        .deliver(id, stream_seq, msg, message_bytes, &shared.stream_budget)
    {
        Delivery::Done => {}
        Delivery::Request(tx, msg, header_tx) => {
            // Before the response: its future takes them once it has the response.
            if let Some(header_tx) = header_tx {
                let _ = header_tx.send(headers);
            }
            // The future may have gone between the lookup and now.
            if let Err(Ok(msg)) = tx.send(Ok(msg)) {
                orphan(shared, id, msg);
            }
        }
        Delivery::StreamFull(tx, end, msg, bytes) => {
            return Some(Box::pin(wait_for_stream(shared, id, tx, end, msg, bytes)));
        }
        Delivery::Gap(pending, err) => crate::pending::fail(pending, err),
        Delivery::Unknown(msg) => orphan(shared, id, msg),
    }
    None
}

/// A response nobody waits for: to the orphan hook, or dropped.
fn orphan<Req, Resp: Message>(shared: &Shared<Req, Resp>, id: u64, msg: Resp) {
    match &shared.config.orphan_hook {
        Some(hook) => hook(crate::OrphanResponse {
            id,
            message: Box::new(msg),
        }),
        None => {
            tracing::debug!(address = %shared.address, id, "dropping message with unknown id");
        }
    }
}

/// Hands `msg` (of `bytes`) to a stream whose buffer, or the connection's stream budget,
/// is full: the reader waits (holding no lock) up to `stream_stall_timeout`, then ends
/// the stream with `StreamOverflow` so the connection goes on.
async fn wait_for_stream<Req, Resp>(
    shared: &Shared<Req, Resp>,
    id: u64,
    tx: tokio::sync::mpsc::Sender<StreamItem<Resp>>,
    end: Arc<crate::pending::StreamEnd>,
    msg: Resp,
    bytes: usize,
) {
    let stall = shared.config.stream_stall_timeout;
    let deliver = async {
        // Given back if the wait times out or the stream is gone.
        let held = shared.stream_budget.take_held(bytes).await;
        if tx.send((msg, held.charge())).await.is_ok() {
            held.keep();
        }
    };
    if tokio::time::timeout(stall, deliver).await.is_err() {
        tracing::warn!(address = %shared.address, id, "stream consumer stalled; ending the stream");
        end.set(BackendError::StreamOverflow);
        shared.pending.remove(id);
    }
}

/// Ticks the interval, or never without it.
async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
