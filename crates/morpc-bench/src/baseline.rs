//! The floor: a minimal hand-written tokio request/response with morpc's API shape.
//!
//! Frame: `u32 len | u64 id | body`. Per connection, callers register `(id, oneshot)` in
//! a map and push `(id, body)` on a bounded queue; one writer task drains the queue into
//! one buffer (after one yield, so woken callers enqueue first) and one write; one
//! reader task reads into a large buffer, splits frames zero-copy and completes the
//! oneshots. The server echoes every complete frame it has read with one write.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use morpc_backend::IdBuildHasher;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Waiting callers by id.
type Pending = Mutex<HashMap<u64, oneshot::Sender<Bytes>, IdBuildHasher>>;

/// How the baseline's writer yields before cutting a batch: whichever measured faster
/// for the workload (see `docs/performance.md`), so that the floor is as high as we know
/// how to make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YieldTo {
    /// Let the tasks that are ready run (no I/O driver poll): faster with few
    /// connections (1.72 M -> 1.90 M round trips/s at 1 × 256 in flight).
    ReadyTasks,
    /// `tokio::task::yield_now`, which waits for an I/O driver poll: faster with many
    /// connections (0.67 M -> 0.79 M at 1 000 × 16 in flight).
    IoDriver,
}

impl YieldTo {
    /// The faster choice for `conns` connections. Measured at 1 and 1 000 connections;
    /// the switch at 64 in between is a guess, not a measurement.
    pub fn for_connections(conns: usize) -> Self {
        if conns >= 64 {
            Self::IoDriver
        } else {
            Self::ReadyTasks
        }
    }
}

/// One baseline connection.
#[derive(Clone, Debug)]
pub struct BaselineClient {
    /// Callers waiting for responses.
    pending: Arc<Pending>,
    /// Requests for the writer.
    tx: mpsc::Sender<(u64, Bytes)>,
    /// Id source.
    next_id: Arc<AtomicU64>,
}

impl BaselineClient {
    /// Connects and starts the writer and reader tasks.
    pub async fn connect(addr: &str, yield_to: YieldTo) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let pending: Arc<Pending> = Arc::default();
        let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(1024);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while let Some(first) = rx.recv().await {
                match yield_to {
                    YieldTo::ReadyTasks => morpc_backend::connection::yield_to_ready_tasks().await,
                    YieldTo::IoDriver => tokio::task::yield_now().await,
                }
                let mut chunks: Vec<Bytes> = Vec::new();
                let mut push = |buf: &mut BytesMut, (id, body): (u64, Bytes)| {
                    buf.put_u32(8 + body.len() as u32);
                    buf.put_u64(id);
                    if body.len() > 4096 {
                        chunks.push(buf.split().freeze());
                        chunks.push(body);
                    } else {
                        buf.put_slice(&body);
                    }
                };
                push(&mut buf, first);
                while let Ok(item) = rx.try_recv() {
                    push(&mut buf, item);
                }
                chunks.push(buf.split().freeze());
                if morpc_backend::connection::write_chunks(&mut w, &mut chunks, None)
                    .await
                    .is_err()
                {
                    return;
                }
                buf.reserve(64 * 1024);
            }
        });
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if buf.capacity() - buf.len() < 64 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while buf.len() >= 4 {
                    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    if buf.len() < 4 + len {
                        // Make room for the whole frame at once: one growth, not many.
                        buf.reserve(4 + len - buf.len());
                        break;
                    }
                    let mut frame = buf.split_to(4 + len).freeze();
                    frame.advance(4);
                    let id = frame.get_u64();
                    let waiter = reader_pending.lock().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
            }
        });
        Ok(Self {
            pending,
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sends `body` and waits for its echo.
    pub async fn request(&self, body: Bytes) -> Option<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        self.pending.lock().insert(id, otx);
        self.tx.send((id, body)).await.ok()?;
        orx.await.ok()
    }
}

/// Serves the baseline echo on `listener` forever.
pub async fn serve(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if buf.capacity() - buf.len() < 64 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // The end of the last complete frame in the buffer.
                let mut end = 0;
                while buf.len() >= end + 4 {
                    let len = u32::from_be_bytes(buf[end..end + 4].try_into().unwrap()) as usize;
                    if buf.len() < end + 4 + len {
                        buf.reserve(end + 4 + len - buf.len());
                        break;
                    }
                    end += 4 + len;
                }
                if end > 0 {
                    let frames = buf.split_to(end);
                    if w.write_all(&frames).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn baseline_echoes_small_and_large_bodies() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener));
        let client = BaselineClient::connect(&addr, YieldTo::ReadyTasks)
            .await
            .unwrap();
        for size in [0usize, 64, 5000, 1 << 20] {
            let body = Bytes::from(vec![3u8; size]);
            let echoed = client.request(body.clone()).await.expect("echoed");
            assert_eq!(echoed, body, "size {size}");
        }
    }
}
