//! One accepted connection, built from the connection core
//! ([`morpc_backend::connection`]): `serve` wires the connection's read side
//! (`reader.rs`, on the connection's own task) to its write side (`writer.rs`, a task of
//! its own) through the session queue.

use std::sync::Arc;
use std::time::Duration;

use morpc_backend::connection::{
    BatchQueue, ByteBudget, FrameReader, FrameWriter, StreamNumbering, bounded_capacity,
    catch_panic,
};
use morpc_backend::{BoxReader, BoxWriter};
use morpc_codec::Message;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::control::ConnControl;
use crate::reader::ConnReader;
use crate::session::SessionShared;
use crate::shared::{ServerShared, Streams};
use crate::{CloseReason, Handler};

/// Serves one connection until it closes; returns why it closed.
pub(crate) async fn serve<Req, Resp, H>(
    shared: Arc<ServerShared<H, Resp>>,
    reader: BoxReader,
    writer: BoxWriter,
    remote: String,
    control: Arc<ConnControl>,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let config = &shared.config;
    let streams: Streams = Arc::new(Mutex::new(StreamNumbering::new(config.max_streams)));
    let queue = Arc::new(BatchQueue::new(bounded_capacity(
        config.session_buffer_size,
    )));
    let budget = Arc::new(ByteBudget::new(
        config.max_queued_write_bytes,
        Some(shared.budget.clone()),
    ));
    // The queue closes (and a shutdown's flush ends) once every session clone is gone.
    let writer_task = tokio::spawn({
        let write = crate::writer::write_loop(
            shared.clone(),
            FrameWriter::new(writer),
            queue.clone(),
            streams.clone(),
            budget.clone(),
            control.clone(),
        );
        let control = control.clone();
        async move {
            // A panic in user code (a response's encoder, the filter) closes the
            // connection with a typed reason instead of leaving it without a writer.
            if let Err(panic) = catch_panic("writer", write).await {
                control.close_with(CloseReason::TaskPanicked(panic.to_string().into()));
            }
        }
    });
    let session = Arc::new(SessionShared {
        queue,
        remote,
        control: control.clone(),
        write_timeout: config.write_timeout,
        budget,
        codec: shared.codec.clone(),
        server: shared.name.clone(),
    });
    let reader = FrameReader::new(
        reader,
        shared.codec.clone(),
        config.read_buffer_size,
        shared.read_limits(),
    );
    let read = ConnReader::new(&shared, &session, &streams, reader).run();
    let (reason, reader) = match catch_panic("reader", read).await {
        Ok((reason, reader)) => (reason, Some(reader)),
        Err(panic) => (CloseReason::TaskPanicked(panic.to_string().into()), None),
    };
    drop(session);
    // A shutdown flushes: the writer ends once every session clone is gone and the queue
    // is written (the server's grace period bounds this). Anything else closes at once.
    if !matches!(reason, CloseReason::Shutdown) {
        control.close_with(reason.clone());
    }
    let _ = writer_task.await;
    if matches!(reason, CloseReason::Shutdown) && control.cause().is_none() {
        if let Some(reader) = reader {
            linger(reader.into_io(), &shared.closed).await;
        }
    }
    // The first cause recorded (the writer's timeout, an eviction, or the reader's own
    // reason) explains the close better than what the reader saw afterwards.
    let reason = control.cause().unwrap_or(reason);
    control.token.cancel();
    reason
}

/// Longest a gracefully closed connection waits for its peer to close.
const LINGER: Duration = Duration::from_secs(2);

/// A lingering close, after a shutdown flushed the connection and sent its FIN: reads and
/// discards what the peer still sends (requests this server will not serve) until the
/// peer closes too, at most `LINGER` or until the server closes. Closing with unread
/// bytes in the receive buffer makes the kernel reset the connection, and a reset can
/// destroy the responses just written before the peer has read them.
async fn linger(mut io: BoxReader, closed: &CancellationToken) {
    let mut sink = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::select! {
        biased;
        () = closed.cancelled() => {}
        _ = tokio::time::timeout(LINGER, drain) => {}
    }
}
