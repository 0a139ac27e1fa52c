//! [`Cancelled`]: a wait for a cancellation token that a loop's `select!` can poll again
//! and again for almost nothing.
//!
//! A connection's read and write loops race every read or batch against their stop
//! signals. Polling `CancellationToken::cancelled()` again after it registered costs a
//! lock on the token's waiter list each time (about 170 instructions, counted: half a
//! poll a request made it 4 % of a server's CPU at 16 in flight). `Cancelled` registers
//! once, with a waker of its own, and polls the token's future again only after that
//! waker fired: any other poll is one atomic swap and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves once its token is cancelled; cheap to poll again while it is not (see the
/// module docs). Cancel-safe and `Unpin`; use it by `&mut` in a loop's `select!`.
pub struct Cancelled {
    /// The token's own wait, registered with `woken`'s waker.
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set by the token's wake-up; wakes the task that polled last.
    woken: Arc<Woken>,
    /// Whether `wait` was polled once (and so is registered).
    armed: bool,
    /// Whether it resolved.
    done: bool,
}

/// The waker `Cancelled` registers with its token.
struct Woken {
    /// Set when the token's wait was woken.
    fired: AtomicBool,
    /// The task to wake then.
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Cancelled {
    /// A wait for `token`'s cancellation.
    pub fn new(token: &CancellationToken) -> Self {
        Self {
            wait: Box::pin(token.clone().cancelled_owned()),
            woken: Arc::new(Woken {
                fired: AtomicBool::new(false),
                task: AtomicWaker::new(),
            }),
            armed: false,
            done: false,
        }
    }
}

impl std::fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancelled")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        this.woken.task.register(cx.waker());
        if this.armed && !this.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.armed = true;
        let waker = Waker::from(this.woken.clone());
        match this.wait.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(()) => {
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resolves_on_cancel_after_many_polls_and_stays_resolved() {
        let token = CancellationToken::new();
        let mut cancelled = Cancelled::new(&token);
        for _ in 0..100 {
            tokio::select! {
                biased;
                () = &mut cancelled => panic!("not cancelled yet"),
                () = tokio::task::yield_now() => {}
            }
        }
        let canceller = tokio::spawn({
            let token = token.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                token.cancel();
            }
        });
        tokio::time::timeout(Duration::from_secs(1), &mut cancelled)
            .await
            .expect("woken by the cancel");
        canceller.await.unwrap();
        // Polled again after it resolved: still resolved.
        tokio::time::timeout(Duration::from_millis(1), &mut cancelled)
            .await
            .expect("resolved");
    }

    #[tokio::test]
    async fn an_already_cancelled_token_resolves_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), Cancelled::new(&token))
            .await
            .expect("cancelled before the wait");
    }

    /// The wake-up reaches the task that polled last, on another thread.
    #[test]
    fn a_cancel_from_another_thread_wakes_the_waiting_task() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let token = CancellationToken::new();
        rt.block_on(async {
            let waiter = tokio::spawn(Cancelled::new(&token));
            tokio::task::yield_now().await;
            let t = token.clone();
            std::thread::spawn(move || t.cancel()).join().unwrap();
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken")
                .unwrap();
        });
    }
}
