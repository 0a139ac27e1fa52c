//! Bounds for tests on slow, shared machines: generous limits that only a real failure
//! (a hang, a future that never resolves) can reach.

use std::future::Future;
use std::time::Duration;

/// How long "promptly" may take: far below [`LONG`], far above any normal latency.
pub const PROMPT: Duration = Duration::from_secs(15);

/// A request deadline that, when reached, means the behaviour under test failed.
pub const LONG: Duration = Duration::from_secs(60);

/// Awaits `f`, panicking with `what` if it takes longer than [`PROMPT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {PROMPT:?}"))
}

/// Waits (bounded by [`PROMPT`]) until `cond` holds, checking every few milliseconds.
/// For state that has no event to await (a background task's effect).
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
