//! The connection core: what the client backend and the server connection share, so
//! each rule about a connection exists once. The framed reader with its read limits
//! (first frame, partial frame, idle, silence), the frame writer with its write bound,
//! byte budgets, stream numbering, and the supervision of a connection's tasks. Rules that are pure logic ([`ReadTimer`],
//! [`StreamNumbering`]) take the time as an argument and are tested without sockets;
//! [`FrameReader`] and [`FrameWriter`] own the I/O.
//!
//! The server (`morpc-server`) builds its connections from these pieces; it never
//! reaches into the client backend's own modules.

mod budget;
mod frame_reader;
mod frame_writer;
mod read_timer;
mod stream_numbering;
mod supervise;

pub use budget::{ByteBudget, Held, SharedBudget, message_bytes};
pub use frame_reader::{FrameReader, ReadError};
pub use frame_writer::{FrameWriter, WriteBound, WriteError};
pub use read_timer::{ReadLimits, ReadTimeout, ReadTimer};
pub use stream_numbering::StreamNumbering;
pub use supervise::{TaskPanic, catch_panic, panic_message};

/// The current time from tokio's clock, so that timing rules run on paused time in tests
/// (`tokio::time::pause`); without the `test-util` feature it is `Instant::now()`.
#[inline]
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
