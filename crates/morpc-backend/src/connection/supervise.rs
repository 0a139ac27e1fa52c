//! Supervision of a connection's tasks. Reader and writer run user code (`Message`
//! encode and decode, header codecs, write filters); a panic there must not leave a
//! zombie connection whose requests wait for their full deadline. The task's end,
//! normal or not, is observed and turned into a typed state change by its owner.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// A connection task that panicked, with the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} panicked: {message}")]
pub struct TaskPanic {
    /// Which task ("reader", "writer").
    pub task: &'static str,
    /// The panic's message.
    pub message: String,
}

/// Runs `future` (the task named `task`), returning its output, or the panic it ended
/// with.
///
/// A plain function returning the wrapped future, not an `async fn`: an `async fn` would
/// keep `future` twice in its state (the argument and the running copy), doubling the
/// size of a connection's task.
///
/// # Errors
/// [`TaskPanic`] when `future` panicked.
pub fn catch_panic<F: Future>(
    task: &'static str,
    future: F,
) -> impl Future<Output = Result<F::Output, TaskPanic>> {
    AssertUnwindSafe(future).catch_unwind().map(move |result| {
        result.map_err(|payload| TaskPanic {
            task,
            message: panic_message(payload.as_ref()),
        })
    })
}

/// The message of a panic payload (`&str` or `String`, as `panic!` makes them).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_value_with_its_message() {
        let ok = catch_panic("reader", async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let id = 3;
        let err = catch_panic("writer", async move {
            if id == 3 {
                panic!("bad message {id}");
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "writer panicked: bad message 3");
    }
}
