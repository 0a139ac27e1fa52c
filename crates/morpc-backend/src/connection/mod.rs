//! The connection core: what the client backend and the server connection share, so
//! each rule about a connection exists once. The framed reader with its read limits
//! (first frame, partial frame, idle, silence), the frame writer with its write bound,
//! byte budgets, stream numbering, and the supervision of a connection's tasks. Rules that are pure logic ([`ReadTimer`],
//! [`StreamNumbering`]) take the time as an argument and are tested without sockets;
//! [`FrameReader`] and [`FrameWriter`] own the I/O.
//!
//! The server (`morpc-server`) builds its connections from these pieces; it never
//! reaches into the client backend's own modules.

mod batch_queue;
mod budget;
mod cancelled;
mod framed;
mod read_timer;
mod stream_numbering;
mod supervise;

pub use batch_queue::{BatchQueue, OwnedPermit, Permit, QueueClosed, TrySendError};
pub use budget::{ByteBudget, Held, SharedBudget, message_bytes};
pub use cancelled::Cancelled;
pub use framed::{
    FrameReader, FrameWriter, ReadError, WriteError, is_stall, next_batch, write_chunks,
    yield_to_ready_tasks,
};
pub use read_timer::{ReadLimits, ReadTimeout, ReadTimer};
pub use stream_numbering::StreamNumbering;
pub use supervise::{TaskPanic, catch_panic, panic_message};

/// The read half of a connection.
pub type BoxReader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
/// The write half of a connection.
pub type BoxWriter = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The current time from tokio's clock, so that timing rules run on paused time in tests
/// (`tokio::time::pause`); without the `test-util` feature it is `Instant::now()`.
#[inline]
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The farthest a deadline is set: about 100 years. Longer timeouts (up to
/// `Duration::MAX`, "no limit" in effect) saturate here instead of overflowing `Instant`.
pub const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + timeout`, saturated at [`FAR_FUTURE`] after `at`, so no configured or requested
/// timeout can panic.
#[inline]
pub fn deadline_after(at: std::time::Instant, timeout: std::time::Duration) -> std::time::Instant {
    at + timeout.min(FAR_FUTURE)
}

/// A queue or semaphore size as configured, brought into what tokio accepts
/// (`1..=Semaphore::MAX_PERMITS`): sizes loaded from a file cannot panic at start.
#[inline]
pub fn bounded_capacity(configured: usize) -> usize {
    configured.clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}
