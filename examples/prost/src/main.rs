//! A key-value service whose messages are protobuf types generated at build time from
//! `proto/kv.proto` (prost + protox, no system `protoc`), carried by morpc.
//!
//! ```sh
//! cargo run -p morpc-example-prost
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use morpc::codec::{Prost, prost_message_id};
use morpc::prelude::*;

/// The types generated from `proto/kv.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod kv {
    include!(concat!(env!("OUT_DIR"), "/kv.rs"));
}

prost_message_id!(kv::Request, id);
prost_message_id!(kv::Response, id);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let handler = {
        let store = store.clone();
        sync_handler(move |req: Request<Prost<kv::Request>>| {
            let kv::Request { id, key, value } = req.message.0;
            let mut store = store.lock().expect("store lock");
            let previous = if value.is_empty() {
                store.get(&key).cloned()
            } else {
                store.insert(key, value)
            };
            Ok::<_, HandlerError>(Prost(kv::Response {
                id,
                found: previous.is_some(),
                value: previous.unwrap_or_default(),
            }))
        })
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler).await?;
    let addr = server.local_addr().to_string();
    let client: RpcClient<Prost<kv::Request>, Prost<kv::Response>> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    let put = |key: &str, value: &str| {
        Prost(kv::Request {
            id: 0,
            key: key.to_owned(),
            value: value.to_owned(),
        })
    };
    client
        .request(&addr, put("greeting", "hello"), SendOptions::new())
        .await?;
    let got = client
        .request(&addr, put("greeting", ""), SendOptions::new())
        .await?
        .0;
    println!("get(greeting) -> found={} value={:?}", got.found, got.value);
    let missing = client
        .request(&addr, put("nothing", ""), SendOptions::new())
        .await?
        .0;
    println!("get(nothing)  -> found={}", missing.found);

    client.close();
    server.shutdown().await;
    Ok(())
}
