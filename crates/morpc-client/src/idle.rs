//! The idle-cleanup task of an `RpcClient`: closes backends idle for `max_idle`, and
//! forgets addresses left with nothing (so the address table does not grow with every
//! address ever used).

use std::sync::Weak;
use std::time::Duration;

use morpc_codec::Message;
use tokio_util::sync::CancellationToken;

use crate::client::Inner;
use crate::target::Target;

/// Closes idle backends of every pool, once per `max_idle / 2`, until the client closes.
pub(crate) async fn idle_cleanup<Req: Message, Resp: Message>(
    inner: Weak<Inner<Req, Resp>>,
    closed: CancellationToken,
) {
    let period = match inner.upgrade() {
        Some(inner) => {
            (inner.config.max_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::select! {
            biased;
            () = closed.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let targets = inner.targets.all();
        for target in targets {
            target.pool.close_idle(inner.config.max_idle);
        }
        // An address in use holds its entry (a send in progress, a locked stream): only
        // entries nobody else holds are forgotten.
        inner.targets.forget_unused(Target::is_forgettable);
    }
}
