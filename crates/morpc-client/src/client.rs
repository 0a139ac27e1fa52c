//! `RpcClient`: an address table of pools, backend selection and growth, retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use morpc_backend::connection::{bounded_capacity, deadline_after, now};
use morpc_backend::{
    Address, Backend, BackendConfig, BackendError, BackendFactory, RemoteBackendFactory,
    SendOptions, SendRejected,
};
use morpc_codec::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::{Breaker, BreakerState};
use crate::response::Outcome;
use crate::target::Target;
use crate::target::Targets;
use crate::{ClientConfig, ClientError, ClientResponse, ClientStream, StreamOptions};

/// Where a send that could not complete at once goes on from.
pub(crate) struct SlowSend<Req> {
    /// The message, never written yet.
    pub(crate) msg: Req,
    /// The options, with the deadline resolved.
    pub(crate) opts: SendOptions,
    /// The breaker bookkeeping (its probe slot, if it took one).
    pub(crate) outcome: Outcome,
    /// The deadline.
    pub(crate) deadline: Instant,
}

/// What a send that could not complete from the published names hands on to the
/// lookup under the table's lock (`RpcClient::send_looked_up`).
pub(crate) enum Unsent<Req> {
    /// The name was not published: nothing was checked yet.
    Unknown(Req, SendOptions),
    /// Admitted by the target's breaker, with no backend with room: the slow path's
    /// starting point.
    Admitted(SlowSend<Req>),
}

/// A send the client and its address's breaker let through (`RpcClient::admit`).
pub(crate) struct Admitted {
    /// The options, with the deadline resolved.
    pub(crate) opts: SendOptions,
    /// The breaker bookkeeping (its probe slot, if it took one).
    pub(crate) outcome: Outcome,
    /// The deadline.
    pub(crate) deadline: Instant,
}

/// State shared by the client handle, its background tasks and its futures.
pub(crate) struct Inner<Req, Resp> {
    /// The configuration.
    pub(crate) config: ClientConfig,
    /// Creates backends.
    factory: Arc<dyn BackendFactory<Req, Resp>>,
    /// Address → its pool and breaker.
    pub(crate) targets: Targets<Req, Resp>,
    /// Set by `close()`, `shutdown()` or the last handle's drop: one load per send, where
    /// the token's `is_cancelled` takes a lock.
    closed_flag: Arc<AtomicBool>,
    /// Bounds concurrent creations (`create_queue_size`).
    creations: Arc<Semaphore>,
    /// Cancelled by `close()`.
    closed: CancellationToken,
}

/// A client of morpc servers: keeps up to `max_backends_per_host` connections per
/// address, picks one round-robin per send, grows the pool in the background when a
/// connection is busy, retries sends rejected before they were written, closes idle
/// connections, and optionally trips a circuit breaker per address.
///
/// Cloning is cheap and shares the pools. Dropping the last clone stops new sends and
/// lets every connection close once its response futures and streams are gone (they keep
/// it open until then). [`close`](RpcClient::close) closes every connection at once
/// (pending requests fail with [`ClientError::ClientClosed`]);
/// [`shutdown`](RpcClient::shutdown) lets what is in flight finish first, within a grace
/// period.
pub struct RpcClient<Req, Resp = Req> {
    /// Closes the client when the last clone goes away.
    handle: Arc<Handle<Req, Resp>>,
}

impl<Req, Resp> Clone for RpcClient<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for RpcClient<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("config", &self.handle.inner.config)
            .field("addresses", &self.handle.inner.targets.len())
            .field("closed", &self.handle.inner.closed.is_cancelled())
            .finish()
    }
}

/// Owner of the shared state on the user side.
struct Handle<Req, Resp> {
    /// The shared state.
    inner: Arc<Inner<Req, Resp>>,
}

impl<Req, Resp> Drop for Handle<Req, Resp> {
    fn drop(&mut self) {
        // No new sends; the pools let go of their backends, each of which closes once
        // its futures and streams are gone.
        drop(self.inner.take_targets());
    }
}

impl<Req, Resp> Inner<Req, Resp> {
    /// Stops new sends and takes every address's pool out of the table.
    fn take_targets(&self) -> Vec<Arc<Target<Req, Resp>>> {
        self.closed_flag.store(true, Ordering::Release);
        self.closed.cancel();
        self.targets.drain()
    }

    fn close(&self) {
        for target in self.take_targets() {
            target.pool.close_all();
        }
    }
}

impl<Req: Message, Resp: Message> RpcClient<Req, Resp> {
    /// A client creating [`RemoteBackendFactory`] backends with `backend` configuration.
    /// Creates the configured initial backends before returning (failures are logged).
    ///
    /// The client connects every backend before it uses it, whatever `backend`'s
    /// `connect_on_create` says: a send to an address that cannot be reached is then
    /// retried by the client's [`RetryPolicy`](crate::RetryPolicy) within its deadline,
    /// instead of failing with the first connect error of a backend connecting lazily.
    pub async fn new(config: ClientConfig, backend: BackendConfig<Req>) -> Self {
        let backend = backend.connect_on_create(true);
        Self::with_factory(config, Arc::new(RemoteBackendFactory::new(backend))).await
    }
}

impl<Req: Message, Resp: Message> RpcClient<Req, Resp> {
    /// A client creating backends with `factory`.
    pub async fn with_factory(
        config: ClientConfig,
        factory: Arc<dyn BackendFactory<Req, Resp>>,
    ) -> Self {
        let inner = Arc::new(Inner {
            creations: Arc::new(Semaphore::new(bounded_capacity(config.create_queue_size))),
            config,
            factory,
            targets: Targets::default(),
            closed_flag: Arc::new(AtomicBool::new(false)),
            closed: CancellationToken::new(),
        });
        if !inner.config.max_idle.is_zero() {
            tokio::spawn(idle_cleanup(Arc::downgrade(&inner), inner.closed.clone()));
        }
        let client = Self {
            handle: Arc::new(Handle { inner }),
        };
        client.create_initial_backends().await;
        client
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<Req, Resp>> {
        &self.handle.inner
    }

    async fn create_initial_backends(&self) {
        let initial = self.inner().config.initial_backends.clone();
        for (address, count) in initial {
            let Ok(address) = address.parse::<Address>() else {
                tracing::warn!(%address, "invalid initial backend address");
                continue;
            };
            let target = self
                .inner()
                .targets
                .of_address(&address, |a| self.new_target(a));
            let count = count.min(self.inner().config.max_backends_per_host.max(1));
            for _ in 0..count {
                match self.inner().factory.create(&address).await {
                    Ok(backend) => target.pool.add(backend),
                    Err(e) => tracing::warn!(%address, error = %e, "cannot create initial backend"),
                }
            }
        }
    }

    /// An empty pool and a fresh breaker for `address`.
    fn new_target(&self, address: &Address) -> Target<Req, Resp> {
        let breaker = self.inner().config.breaker.clone();
        Target::new(address.clone(), breaker.map(|b| Arc::new(Breaker::new(b))))
    }

    /// The pool and breaker of the address named `name`, created empty on first use.
    #[inline]
    pub(crate) fn target_named(&self, name: &str) -> Result<Arc<Target<Req, Resp>>, ClientError> {
        self.inner().targets.named(name, |a| self.new_target(a))
    }

    #[inline]
    pub(crate) fn check_open(&self) -> Result<(), ClientError> {
        if self.inner().closed_flag.load(Ordering::Acquire) {
            Err(ClientError::ClientClosed)
        } else {
            Ok(())
        }
    }

    /// Starts creating one backend for `target` in the background.
    fn spawn_creation(&self, target: Arc<Target<Req, Resp>>) {
        let inner = self.inner().clone();
        let span = tracing::debug_span!("morpc.create_backend", address = %target.pool.address());
        tokio::spawn(
            async move {
                let result = match inner.creations.clone().acquire_owned().await {
                    Ok(_permit) => inner.factory.create(target.pool.address()).await,
                    Err(_) => Err(BackendError::BackendClosed),
                };
                if inner.closed.is_cancelled() {
                    if let Ok(backend) = &result {
                        backend.close();
                    }
                }
                target.pool.creation_done(result);
            }
            .instrument(span),
        );
    }

    /// A usable backend of `target` now, if there is one; starts creating one when the
    /// pool asks for it. `Ok(None)`: one is being created, worth waiting for.
    #[inline]
    fn pick_now(
        &self,
        target: &Arc<Target<Req, Resp>>,
    ) -> Result<Option<Backend<Req, Resp>>, ClientError> {
        self.check_open()?;
        let config = &self.inner().config;
        let pool = &target.pool;
        let pick = pool.pick(config.max_backends_per_host.max(1), config.auto_create);
        if pick.create {
            self.spawn_creation(target.clone());
        }
        if let Some(backend) = pick.backend {
            return Ok(Some(backend));
        }
        if !pick.creating {
            return Err(match pool.recent_failure() {
                Some(e) => e.into(),
                None => ClientError::NoAvailableBackend(pool.address().clone()),
            });
        }
        Ok(None)
    }

    /// Finds a backend for `target` by `deadline`, creating one when needed.
    pub(crate) async fn select(
        &self,
        target: &Arc<Target<Req, Resp>>,
        deadline: Instant,
    ) -> Result<Backend<Req, Resp>, ClientError> {
        // The common case arms no waiter; the wait is boxed, so it does not grow every
        // send future.
        match self.pick_now(target)? {
            Some(backend) => Ok(backend),
            None => Box::pin(self.wait_for_backend(target, deadline)).await,
        }
    }

    /// Waits for a backend of `target` being created, until `deadline`.
    async fn wait_for_backend(
        &self,
        target: &Arc<Target<Req, Resp>>,
        deadline: Instant,
    ) -> Result<Backend<Req, Resp>, ClientError> {
        loop {
            // Armed before looking again, so a creation finishing in between is seen.
            let changed = target.pool.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(backend) = self.pick_now(target)? {
                return Ok(backend);
            }
            tokio::select! {
                biased;
                () = self.inner().closed.cancelled() => return Err(ClientError::ClientClosed),
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(ClientError::NoAvailableBackend(target.pool.address().clone()));
                }
            }
        }
    }

    /// A backend of `address` (parsed, with the client open), picked or created by
    /// `deadline`.
    async fn backend_for(
        &self,
        address: &str,
        deadline: Instant,
    ) -> Result<Backend<Req, Resp>, ClientError> {
        let target = self.target_named(address)?;
        self.select(&target, deadline).await
    }

    /// Sends a request to `address` and returns the future of its response.
    ///
    /// Picks a backend (creating the first one within the deadline). A send rejected
    /// before it was written — its backend closed under it, busy, or not connectable —
    /// is retried on another backend with bounded, jittered backoff within the deadline.
    /// Requests already written are never re-sent.
    ///
    /// # Errors
    /// [`ClientError::ClientClosed`], [`ClientError::CircuitOpen`],
    /// [`ClientError::NoAvailableBackend`], or the last backend error.
    pub async fn send(
        &self,
        address: &str,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        match self.send_now(address, msg, opts) {
            Ok(response) => Ok(response),
            Err(Ok(unsent)) => self.send_looked_up(address, unsent).await,
            Err(Err(e)) => Err(e),
        }
    }

    /// The synchronous part of [`send`](RpcClient::send): a name sent to before is looked
    /// up in the published names, and a send that finds a backend with room completes
    /// within that one borrow (no lock taken, no reference count touched). Anything else
    /// (no such backend, a first send) comes back to be looked up under the table's
    /// lock, where forgetting unused targets sees it.
    #[inline]
    #[allow(clippy::result_large_err)]
    fn send_now(
        &self,
        address: &str,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ClientResponse<Resp>, Result<Unsent<Req>, ClientError>> {
        let names = self.inner().targets.names();
        match names.get(address) {
            Some(target) => match self.try_send_now(target, msg, opts, false) {
                Ok(response) => Ok(response),
                Err(Ok(slow)) => Err(Ok(Unsent::Admitted(slow))),
                Err(Err(e)) => Err(Err(e)),
            },
            None => Err(Ok(Unsent::Unknown(msg, opts))),
        }
    }

    /// The rest of a send [`send_now`](Self::send_now) could not complete: the target
    /// looked up (or added) under the table's lock, then sent to. A send a breaker
    /// admitted already goes on from there when that is the target's breaker (the
    /// target it saw may have been forgotten and another added for the name since: then
    /// it is admitted anew; without breakers, nothing of the admission is the target's).
    async fn send_looked_up(
        &self,
        address: &str,
        unsent: Unsent<Req>,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        let target = self.target_named(address)?;
        match unsent {
            Unsent::Admitted(slow) if slow.outcome.is_for(&target.breaker) => {
                Box::pin(self.send_slow(&target, slow)).await
            }
            Unsent::Admitted(slow) => self.send_to_target(&target, slow.msg, slow.opts).await,
            Unsent::Unknown(msg, opts) => self.send_to_target(&target, msg, opts).await,
        }
    }

    /// [`send`](RpcClient::send) to a target already looked up.
    pub(crate) async fn send_to_target(
        &self,
        target: &Arc<Target<Req, Resp>>,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        // Only the slow path is a future of its own (boxed): a send that finds a backend
        // with room completes synchronously, and the caller's future stays small.
        let slow = match self.try_send_now(target, msg, opts, true) {
            Ok(response) => return Ok(response),
            Err(slow) => slow?,
        };
        Box::pin(self.send_slow(target, slow)).await
    }

    /// The synchronous part of a send: checks, the deadline, the breaker, and a backend
    /// with room right now (with `may_pick`, from the pool's locked pick too, which may
    /// start a creation, when none is ready). What is left (no backend yet, a full
    /// queue, a rejection to retry) comes back as the slow path's starting point.
    #[inline]
    #[allow(clippy::result_large_err)]
    fn try_send_now(
        &self,
        target: &Arc<Target<Req, Resp>>,
        msg: Req,
        opts: SendOptions,
        may_pick: bool,
    ) -> Result<ClientResponse<Resp>, Result<SlowSend<Req>, ClientError>> {
        let Admitted {
            opts,
            outcome,
            deadline,
        } = match self.admit(target, opts) {
            Ok(admitted) => admitted,
            Err(e) => return Err(Err(e)),
        };
        // Traced sends take the slow path, which runs in their span.
        let msg = if tracing::level_enabled!(tracing::Level::DEBUG) {
            msg
        } else {
            // The common case: an open backend with room, picked without a lock; else
            // the pool's full pick (which may start a creation).
            let ready = target.pool.ready();
            let picked;
            let backend = match &ready {
                Some(backend) => Some(&**backend),
                None if may_pick => {
                    picked = self.pick_now(target).ok().flatten();
                    picked.as_ref()
                }
                None => None,
            };
            match backend {
                Some(backend) => match backend.try_send(msg, opts.clone()) {
                    Ok(future) => return Ok(ClientResponse::new(future, outcome)),
                    // Full, or closed under us: the slow path waits or picks again.
                    Err(SendRejected { message, .. }) => message,
                },
                None => msg,
            }
        };
        Err(Ok(SlowSend {
            msg,
            opts,
            outcome,
            deadline,
        }))
    }

    /// Lets a send through, or not: the client must be open and the address's breaker
    /// must admit it. Resolves its deadline. From here on, dropping the send gives a
    /// probe slot back (`Outcome`'s drop).
    #[inline]
    pub(crate) fn admit(
        &self,
        target: &Arc<Target<Req, Resp>>,
        opts: SendOptions,
    ) -> Result<Admitted, ClientError> {
        self.check_open()?;
        let deadline = opts.resolve_deadline(self.inner().config.default_timeout);
        let opts = opts.with_deadline(deadline);
        let admission = match &target.breaker {
            Some(breaker) => match breaker.allow() {
                Some(admission) => Some(admission),
                None => return Err(ClientError::CircuitOpen(target.pool.address().clone())),
            },
            None => None,
        };
        let outcome = Outcome::new(
            target.breaker.clone(),
            admission,
            self.inner().closed_flag.clone(),
        );
        Ok(Admitted {
            opts,
            outcome,
            deadline,
        })
    }

    /// The rest of a send that could not complete at once: in its span when tracing at
    /// debug, waiting for a backend or for queue room, retrying rejections.
    pub(crate) async fn send_slow(
        &self,
        target: &Arc<Target<Req, Resp>>,
        slow: SlowSend<Req>,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return self.send_with_retries(target, slow).await;
        }
        let trace = slow.opts.trace();
        let address = target.pool.address();
        let span = if trace.is_empty() {
            tracing::debug_span!("morpc.send", address = %address, id = tracing::field::Empty)
        } else {
            tracing::debug_span!(
                "morpc.send",
                address = %address,
                id = tracing::field::Empty,
                trace_id = %trace.trace_id_hex(),
                span_id = %trace.span_id_hex(),
            )
        };
        self.send_with_retries(target, slow).instrument(span).await
    }

    /// Picks a backend and queues the request, retrying rejections of messages never
    /// written with backoff within the deadline.
    async fn send_with_retries(
        &self,
        target: &Arc<Target<Req, Resp>>,
        slow: SlowSend<Req>,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        let SlowSend {
            mut msg,
            opts,
            outcome,
            deadline,
        } = slow;
        let config = &self.inner().config;
        let address = target.pool.address();
        let mut attempt = 0;
        loop {
            let error = match self.select(target, deadline).await {
                Ok(backend) => match backend.send_or_return(msg, opts.clone()).await {
                    Ok(future) => {
                        tracing::Span::current().record("id", future.id());
                        return Ok(ClientResponse::new(future, outcome));
                    }
                    Err(SendRejected { error, message }) => {
                        msg = message;
                        ClientError::Backend(error)
                    }
                },
                Err(e) => e,
            };
            attempt += 1;
            let retryable = matches!(
                error,
                ClientError::Backend(
                    BackendError::BackendClosed
                        | BackendError::Unusable
                        | BackendError::Busy
                        | BackendError::Connect { .. }
                ) | ClientError::NoAvailableBackend(_)
            );
            let pause = config.retry.backoff(attempt - 1);
            if !retryable
                || attempt >= config.retry.max_attempts
                || deadline_after(now(), pause) >= deadline
            {
                let error = outcome.map_error(error);
                outcome.record(Some(&error));
                return Err(error);
            }
            tracing::debug!(%address, attempt, error = %error, "retrying send");
            tokio::select! {
                biased;
                () = self.inner().closed.cancelled() => return Err(ClientError::ClientClosed),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Waits until a backend of `address` exists and has room in its send queue
    /// (creating one if needed): the readiness behind the `tower` service's `poll_ready`.
    ///
    /// # Errors
    /// As [`send`](RpcClient::send) when no backend becomes ready.
    pub async fn ready(&self, address: &str) -> Result<(), ClientError> {
        let deadline = deadline_after(now(), self.inner().config.default_timeout);
        let backend = self.backend_for(address, deadline).await?;
        backend.ready().await.map_err(Into::into)
    }

    /// Sends a request and waits for its response.
    ///
    /// # Errors
    /// As [`send`](RpcClient::send), or the response future's error.
    pub async fn request(
        &self,
        address: &str,
        msg: Req,
        opts: SendOptions,
    ) -> Result<Resp, ClientError> {
        // The send's synchronous part first, and only its rest (boxed) as a future: the
        // request's future holds little more than the response's while it waits.
        let response = match self.send_now(address, msg, opts) {
            Ok(response) => response,
            Err(Ok(unsent)) => Box::pin(self.send_looked_up(address, unsent)).await?,
            Err(Err(e)) => return Err(e),
        };
        response.await
    }

    /// Sends a one-way message (no response) to `address`.
    ///
    /// # Errors
    /// As [`send`](RpcClient::send) (without retries once queued).
    pub async fn send_oneway(
        &self,
        address: &str,
        msg: Req,
        opts: SendOptions,
    ) -> Result<(), ClientError> {
        let target = self.target_named(address)?;
        self.send_oneway_to_target(&target, msg, opts).await
    }

    /// [`send_oneway`](RpcClient::send_oneway) to a target already looked up.
    pub(crate) async fn send_oneway_to_target(
        &self,
        target: &Arc<Target<Req, Resp>>,
        msg: Req,
        opts: SendOptions,
    ) -> Result<(), ClientError> {
        let deadline = opts.resolve_deadline(self.inner().config.default_timeout);
        let backend = self.select(target, deadline).await?;
        backend
            .send_oneway(msg, opts.with_deadline(deadline))
            .await
            .map_err(Into::into)
    }

    /// Opens a stream to `address` as `opts` say: its receive buffer, whether its backend
    /// is dedicated to it until it closes (Go's `NewStream(lock)`: other sends and locked
    /// streams use other backends), and how long opening may take.
    ///
    /// ```no_run
    /// # use morpc_client::{RpcClient, StreamOptions};
    /// # use morpc_codec::RawMessage;
    /// # async fn demo(client: RpcClient<RawMessage>) -> Result<(), morpc_client::ClientError> {
    /// let stream = client
    ///     .new_stream("127.0.0.1:9000", StreamOptions::new().buffer(64).lock(true))
    ///     .await?;
    /// # drop(stream); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`send`](RpcClient::send); [`ClientError::NoAvailableBackend`] when every
    /// backend is locked and the pool is full.
    pub async fn new_stream(
        &self,
        address: &str,
        opts: StreamOptions,
    ) -> Result<ClientStream<Req, Resp>, ClientError> {
        let StreamOptions {
            buffer,
            lock,
            timeout,
        } = opts;
        let target = self.target_named(address)?;
        let span = tracing::debug_span!("morpc.stream", address = %target.pool.address(), id = tracing::field::Empty);
        async {
            let timeout = timeout.unwrap_or(self.inner().config.default_timeout);
            let deadline = deadline_after(now(), timeout);
            loop {
                let backend = self.select(&target, deadline).await?;
                if lock && !target.pool.lock_backend(&backend) {
                    continue;
                }
                let stream = match backend.new_stream(buffer) {
                    Ok(stream) => stream,
                    Err(e) => {
                        if lock {
                            target.pool.unlock_backend(&backend);
                        }
                        return Err(e.into());
                    }
                };
                tracing::Span::current().record("id", stream.id());
                return Ok(ClientStream::new(
                    stream,
                    lock.then(|| (target.clone(), backend)),
                ));
            }
        }
        .instrument(span)
        .await
    }

    /// Pings a backend of `address`; returns the round-trip time.
    ///
    /// # Errors
    /// As [`send`](RpcClient::send).
    pub async fn ping(&self, address: &str, timeout: Duration) -> Result<Duration, ClientError> {
        let backend = self
            .backend_for(address, deadline_after(now(), timeout))
            .await?;
        backend.ping(timeout).await.map_err(Into::into)
    }

    /// Closes and forgets every backend of `address`.
    pub fn close_backend(&self, address: &str) {
        if let Some(target) = self.inner().targets.remove(address) {
            target.pool.close_all();
        }
    }

    /// Number of addresses the client keeps a pool (and breaker) for. An address whose
    /// backends were all closed as idle, with no creation running and a closed circuit,
    /// is forgotten by the idle cleanup.
    pub fn address_count(&self) -> usize {
        self.inner().targets.len()
    }

    /// Number of live backends for `address`.
    pub fn backend_count(&self, address: &str) -> usize {
        let target = self.inner().targets.find(address);
        target.map_or(0, |t| t.pool.len())
    }

    /// The circuit state of `address`, when the breaker is enabled and the address known.
    pub fn breaker_state(&self, address: &str) -> Option<BreakerState> {
        let target = self.inner().targets.find(address)?;
        target.breaker.as_ref().map(|b| b.state())
    }

    /// Closes the client: every backend closes, pending requests fail with
    /// [`ClientError::ClientClosed`], later calls fail the same way. Idempotent; never
    /// blocks.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Closes the client gracefully: new sends fail with [`ClientError::ClientClosed`] at
    /// once, every backend lets its in-flight requests and open streams finish within
    /// `grace` (see [`Backend::shutdown`]), then closes. Returns whether everything
    /// finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let backends: Vec<Backend<Req, Resp>> = self
            .inner()
            .take_targets()
            .iter()
            .flat_map(|target| target.pool.backends())
            .collect();
        let drained = futures::future::join_all(backends.iter().map(|b| b.shutdown(grace))).await;
        drained.into_iter().all(|done| done)
    }
}

/// The idle-cleanup task of a client: once per `max_idle / 2` until the client closes, it
/// closes backends idle for `max_idle` and forgets addresses left with nothing (so the
/// address table does not grow with every address ever used).
async fn idle_cleanup<Req: Message, Resp: Message>(
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
