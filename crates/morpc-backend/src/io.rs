//! Socket-writing helpers shared by the client and server connection writers.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Waits for the next item of `rx` and collects it, with whatever else is queued, into
/// `batch` (up to `max` items). Returns `false` once `rx` is closed and empty.
///
/// When fewer than `max` items are queued it yields once first, so that tasks woken
/// together can enqueue before the batch is cut: under tokio a writer woken for every
/// message otherwise writes one frame per syscall (measured on this project's machine:
/// the yield made a client 3.5× faster at 16 in flight and 10× at 256).
pub async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    let Some(first) = rx.recv().await else {
        return false;
    };
    batch.push(first);
    if rx.len() + 1 < max {
        tokio::task::yield_now().await;
    }
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    true
}

/// Most slices handed to one `write_vectored` call.
const MAX_IO_SLICES: usize = 64;

/// Writes every chunk in order with vectored writes (payload chunks are never copied),
/// then flushes once. Chunks are advanced past what was written.
///
/// # Errors
/// The writer's error, or `WriteZero` when it accepts no bytes.
pub async fn write_chunks<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    chunks: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    loop {
        // Empty chunks carry nothing; a write of only empty slices would return 0.
        while chunks.get(first).is_some_and(|c| c.is_empty()) {
            first += 1;
        }
        if first == chunks.len() {
            break;
        }
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let mut count = 0;
        for chunk in chunks[first..].iter().take(MAX_IO_SLICES) {
            slices[count] = IoSlice::new(chunk);
            count += 1;
        }
        let mut written = writer.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            if written >= chunk.len() {
                written -= chunk.len();
                first += 1;
            } else {
                chunk.advance(written);
                written = 0;
            }
        }
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_every_chunk_in_order_and_skips_empty_ones() {
        let mut out = Vec::new();
        let mut chunks = vec![
            Bytes::new(),
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from(vec![7u8; 100_000]),
            Bytes::from_static(b"tail"),
            Bytes::new(),
        ];
        write_chunks(&mut out, &mut chunks).await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&[7u8; 100_000]);
        want.extend_from_slice(b"tail");
        assert_eq!(out, want);
    }
}
