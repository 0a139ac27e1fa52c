//! Arbitrary bytes from a peer into the server's connection handling (`serve_io` over an
//! in-memory pipe): no panic, no hang, and the connection always ends once the peer
//! stops sending.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use morpc_codec::{CodecConfig, Framing, RawMessage};
use morpc_server::{HandlerError, Request, ServerConfig, serve_io, sync_handler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let codec = match selector & 1 {
        0 => CodecConfig::new(Framing::V05),
        _ => CodecConfig::new(Framing::V07).compression(selector & 2 != 0),
    }
    .max_body_size(1 << 16);
    let config = ServerConfig::new().codec(codec).concurrency(1 + usize::from(selector >> 6));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
        let serving = tokio::spawn(serve_io(server, config, echo));
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = async move {
            let _ = wr.write_all(input).await;
            let _ = wr.shutdown().await;
        };
        let reader = async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let all = async {
            tokio::join!(writer, reader);
            serving.await.expect("the connection task does not panic")
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the connection ends once the peer stops sending");
    });
});
