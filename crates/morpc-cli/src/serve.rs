//! `morpc serve --echo ADDR`: an echo server (every request and stream message is written
//! back unchanged, payload included), until Ctrl-C or SIGTERM.

use std::io::Write;

use clap::Args;
use morpc::prelude::{HandlerError, RawMessage, Request, RpcServer, ServerConfig, sync_handler};

use crate::exit::{Failure, runtime};
use crate::wire::{TlsServerArgs, WireArgs};

/// The arguments of `morpc serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Answer every request with itself (the one mode today; required so that a future
    /// mode is never chosen by default).
    #[arg(long, required = true)]
    echo: bool,
    /// Listen address: `host:port` (port 0 picks one) or `unix:///path`.
    addr: String,
    #[command(flatten)]
    wire: WireArgs,
    #[command(flatten)]
    tls: TlsServerArgs,
}

/// Runs `morpc serve`. Prints `LISTENING <address>` once it accepts connections.
pub(crate) fn run(args: ServeArgs) -> Result<(), Failure> {
    debug_assert!(args.echo, "clap requires --echo");
    let mut config = ServerConfig::new()
        .codec(args.wire.codec())
        .name("morpc-serve");
    if let Some(tls) = args.tls.config()? {
        config = config.tls(tls);
    }
    runtime()?.block_on(async {
        let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
        let server = RpcServer::start(&args.addr, config, echo)
            .await
            .map_err(|e| Failure::Usage(format!("cannot serve on {}: {e}", args.addr)))?;
        println!("LISTENING {}", server.local_addr());
        let _ = std::io::stdout().flush();
        stopped().await;
        eprintln!("morpc: shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// Resolves at Ctrl-C or (on Unix) SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
