//! The write side of one server connection: a task that takes responses from the
//! session queue in batches, numbers stream responses, encodes each batch into a
//! `FrameWriter` and writes it, closing a peer that accepts no bytes for the write
//! timeout; written bytes go back to the write budget.

use std::sync::Arc;
use std::time::Duration;

use morpc_backend::connection::{BatchQueue, ByteBudget, Cancelled, FrameWriter};
use morpc_codec::{FrameBody, Framing, Message};

use crate::CloseReason;
use crate::control::{ConnControl, NO_EXPIRY};
use crate::metrics;
use crate::session::Outgoing;
use crate::shared::{ServerShared, Streams};

/// Writes queued responses in batches until every session is gone (then flushes and
/// shuts the socket down) or the connection is closed. A peer that accepts no bytes for
/// the write timeout closes the connection.
pub(crate) async fn write_loop<H, Resp: Message>(
    shared: Arc<ServerShared<H, Resp>>,
    mut writer: FrameWriter,
    queue: Arc<BatchQueue<Outgoing<Resp>>>,
    streams: Streams,
    budget: Arc<ByteBudget>,
    control: Arc<ConnControl>,
) {
    let batch_size = shared.config.batch_send_size.max(1);
    let numbered = shared.codec.framing() == Framing::V07;
    let stall = shared.config.write_timeout;
    let mut batch: Vec<Outgoing<Resp>> = Vec::with_capacity(batch_size);
    let mut stopped = Cancelled::new(&control.token);
    loop {
        let more = tokio::select! {
            biased;
            () = &mut stopped => break,
            more = morpc_backend::connection::next_batch(&queue, &mut batch, batch_size) => more,
        };
        if !more {
            let _ = writer.shutdown().await;
            break;
        }
        if numbered {
            number_stream_responses(&streams, &mut batch);
        }
        let messages = batch.len();
        // Counted first: the loop may stop early, and the whole batch goes back.
        let charged: usize = batch.iter().map(|o| o.charge).sum();
        // One clock reading serves the batch's deadline headers.
        let mut now = None;
        // Encoded where they lie in the batch (each is about 170 bytes: moving it out
        // first was one more copy a response), then dropped together.
        for Outgoing { frame, expiry, .. } in batch.iter_mut() {
            let expiry = *expiry;
            if let FrameBody::Message(m) = &frame.body {
                if shared
                    .config
                    .filter
                    .as_ref()
                    .is_some_and(|filter| !filter(m))
                {
                    continue;
                }
                control.check_response_id(m.id());
            }
            if expiry != NO_EXPIRY {
                let now =
                    *now.get_or_insert_with(|| control.nanos(morpc_backend::connection::now()));
                frame.headers.deadline = Some(Duration::from_nanos(expiry.saturating_sub(now)));
            }
            if let Err(e) = writer.encode(&shared.codec, frame) {
                // Sessions refuse oversized responses; what still cannot be encoded
                // closes the connection, so its client learns at once instead of at
                // its deadline.
                tracing::warn!(error = %e, "cannot encode a response; closing the connection");
                control.close_with(CloseReason::Unencodable(e));
                break;
            }
        }
        batch.clear();
        if writer.is_empty() {
            budget.release(charged);
            continue;
        }
        let written = tokio::select! {
            biased;
            () = &mut stopped => None,
            r = writer.flush(stall) => Some(r),
        };
        budget.release(charged);
        let Some(written) = written else { break };
        match written {
            Ok(sent) => metrics::batch_written(&shared.name, messages, sent),
            Err(e) => {
                metrics::partly_written(&shared.name, writer.last_written());
                let reason = CloseReason::from(e);
                tracing::debug!(%reason, "write failed");
                control.close_with(reason);
                break;
            }
        }
    }
    // What is still queued is dropped with the connection (and a batch a stop
    // interrupted before it was encoded): give its bytes back.
    queue.close_and_take(&mut batch);
    budget.release(batch.drain(..).map(|o| o.charge).sum());
}

/// Gives each response to a known stream id the stream's next sequence number.
fn number_stream_responses<Resp: Message>(streams: &Streams, batch: &mut [Outgoing<Resp>]) {
    let mut streams = streams.lock();
    if streams.is_empty() {
        return;
    }
    for Outgoing { frame, .. } in batch {
        if let FrameBody::Message(m) = &frame.body {
            if let Some(seq) = streams.next_seq(m.id()) {
                frame.stream_seq = Some(seq);
            }
        }
    }
}
