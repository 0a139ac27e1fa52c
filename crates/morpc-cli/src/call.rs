//! `morpc call ADDR`: one request (a MatrixOne `RawMessage`: the id, then the body, and an
//! optional payload), and the reply shown as text or hex.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use morpc::prelude::{RawMessage, SendOptions};

use crate::exit::{Failure, read_input, runtime};
use crate::show::{as_text, hex, hex_preview, micros, parse_hex};
use crate::wire::ConnectArgs;

/// The arguments of `morpc call`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("request").required(true).args(["body", "body_file", "body_hex"])))]
pub(crate) struct CallArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// The request body, as text.
    #[arg(long)]
    body: Option<String>,
    /// The request body, read from a file (`-`: stdin).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// The request body, as hex.
    #[arg(long)]
    body_hex: Option<String>,
    /// A payload read from a file, carried after the body (V07 flag 0x01; V05 payload
    /// frames).
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Show the reply's body as hex even when it is text.
    #[arg(long)]
    hex: bool,
    /// Print the reply as one JSON object.
    #[arg(long)]
    json: bool,
}

impl CallArgs {
    /// The request message.
    fn message(&self) -> Result<RawMessage, Failure> {
        let body: Bytes = match (&self.body, &self.body_file, &self.body_hex) {
            (Some(text), _, _) => Bytes::from(text.clone().into_bytes()),
            (_, Some(path), _) => read_input(path)?.into(),
            (_, _, Some(text)) => parse_hex(text)
                .map_err(|e| Failure::Usage(format!("--body-hex: {e}")))?
                .into(),
            (None, None, None) => unreachable!("clap requires one of the body flags"),
        };
        let payload = match &self.payload_file {
            Some(path) => Some(Bytes::from(read_input(path)?)),
            None => None,
        };
        Ok(RawMessage {
            id: 0,
            body,
            payload,
        })
    }
}

/// Runs `morpc call`.
pub(crate) fn run(args: CallArgs) -> Result<(), Failure> {
    let msg = args.message()?;
    let (reply, elapsed) = runtime()?.block_on(async {
        let client = args.conn.client().await?;
        let started = Instant::now();
        let reply = client
            .request(
                &args.conn.addr,
                msg,
                SendOptions::timeout(args.conn.timeout),
            )
            .await;
        let elapsed = started.elapsed();
        client.close();
        reply
            .map(|r| (r, elapsed))
            .map_err(|e| Failure::Remote(format!("call to {} failed: {e}", args.conn.addr)))
    })?;
    let text = (!args.hex).then(|| as_text(&reply.body)).flatten();
    let payload = reply.payload.as_deref();
    if args.json {
        let out = serde_json::json!({
            "id": reply.id,
            "elapsed_us": micros(elapsed),
            "body_len": reply.body.len(),
            "body_text": text,
            "body_hex": hex(&reply.body),
            "payload_len": payload.map(<[u8]>::len),
            "payload_hex": payload.map(hex),
        });
        println!("{out}");
        return Ok(());
    }
    match text {
        Some(text) => println!("{text}"),
        None => println!("{}", hex(&reply.body)),
    }
    eprintln!(
        "reply {} in {:.1} µs: body {} bytes{}",
        reply.id,
        micros(elapsed),
        reply.body.len(),
        match payload {
            Some(p) => format!(", payload {} bytes: {}", p.len(), hex_preview(p)),
            None => String::new(),
        }
    );
    Ok(())
}
