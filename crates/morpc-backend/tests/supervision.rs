//! A panic in user code inside a connection task (a `Message` encoder or decoder) is
//! supervised: it breaks the connection with a typed cause, requests in flight fail at
//! once instead of at their deadline, and the backend recovers or reports itself
//! unusable so a pool replaces it.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use morpc_backend::codec::{CodecError, Message, RawMessage};
use morpc_backend::{Backend, BackendConfig, BackendError, ConnectionLost, SendOptions};
use morpc_codec::CodecConfig;
use support::{Mode, Peer};

/// A message whose encoder panics on body `boom-encode` and decoder on `boom-decode`.
#[derive(Debug, Clone, PartialEq)]
struct Touchy(RawMessage);

impl Message for Touchy {
    fn id(&self) -> u64 {
        self.0.id()
    }
    fn set_id(&mut self, id: u64) {
        self.0.set_id(id);
    }
    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }
    fn encode(&self, dst: &mut BytesMut) {
        assert!(self.0.body != "boom-encode", "encoder bug");
        self.0.encode(dst);
    }
    fn decode(body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        let msg = RawMessage::decode(body, payload)?;
        assert!(msg.body != "boom-decode", "decoder bug");
        Ok(Self(msg))
    }
}

fn touchy(body: &'static str) -> Touchy {
    Touchy(RawMessage::new(body))
}

/// The longest a failure may take here: far below the requests' 60 s deadline.
const PROMPT: Duration = Duration::from_secs(10);

async fn backend(peer: &Peer) -> Backend<Touchy> {
    Backend::create(
        peer.addr.clone(),
        BackendConfig::new().default_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_panicking_decoder_breaks_the_connection_and_the_backend_reconnects() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = backend(&peer).await;
    assert_eq!(
        backend
            .request(touchy("fine"), SendOptions::new())
            .await
            .unwrap(),
        touchy("fine").with_id(1)
    );
    let err = tokio::time::timeout(
        PROMPT,
        backend.request(touchy("boom-decode"), SendOptions::new()),
    )
    .await
    .expect("failed promptly, not at the deadline")
    .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::TaskPanicked(_))
        ),
        "{err}"
    );
    // The reader's panic broke only that connection: the next request reconnects.
    let again = tokio::time::timeout(PROMPT, backend.request(touchy("again"), SendOptions::new()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.0.body, "again");
    assert!(!backend.is_closed());
}

#[tokio::test]
async fn a_panicking_encoder_fails_in_flight_requests_at_once_and_marks_the_backend_unusable() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = backend(&peer).await;
    // A request the silent peer never answers is in flight when the writer panics.
    let waiting = backend
        .send(touchy("waiting"), SendOptions::new())
        .await
        .unwrap();
    let boom = backend
        .send(touchy("boom-encode"), SendOptions::new())
        .await
        .unwrap();
    for future in [waiting, boom] {
        let err = tokio::time::timeout(PROMPT, future)
            .await
            .expect("failed promptly, not at the deadline")
            .unwrap_err();
        assert!(matches!(err, BackendError::Unusable), "{err}");
    }
    assert!(backend.is_unusable());
}

trait WithId {
    fn with_id(self, id: u64) -> Self;
}

impl WithId for Touchy {
    fn with_id(mut self, id: u64) -> Self {
        self.set_id(id);
        self
    }
}
