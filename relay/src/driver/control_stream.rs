//! The control stream, one bidirectional stream per connection. Its reader takes length-prefixed
//! frames (at most `max_control_frame`), decodes them and sends them to the control task as
//! `Input::Request`, paced by a [`RequestBudget`]; its writer batches the control task's
//! `ServerMessage`s into writes.
//!
//! Runs inside each connection's task on the endpoint's data-plane lane thread; reaches the
//! control plane only through the `inputs` channel and the connection's control queue.

use std::time::Duration;

use baton_protocol::{frame, ClientMessage, CloseCode, ServerMessage};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use crate::control::{ConnId, Input};

/// Serves the control stream until the connection ends. Returns a close code if the client
/// broke the protocol.
pub(super) async fn control_stream(
    conn: &quinn::Connection,
    shared: &Shared,
    id: ConnId,
    mut outgoing: mpsc::Receiver<ServerMessage>,
) -> Option<CloseCode> {
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(streams) => streams,
        Err(_) => return None,
    };
    let reader = async {
        // A client has little to say; a token bucket keeps a chatty one from monopolising
        // the control task (it is slowed down, not cut off).
        let mut budget = RequestBudget::new();
        loop {
            let mut prefix = [0u8; frame::LEN_PREFIX];
            match recv.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => return Some(CloseCode::Normal),
                Err(quinn::ReadExactError::FinishedEarly(_)) => {
                    return Some(CloseCode::ProtocolViolation)
                }
                Err(quinn::ReadExactError::ReadError(_)) => return None,
            }
            let len = match frame::check_len(prefix, shared.max_control_frame) {
                Ok(len) => len,
                Err(e) => {
                    warn!(cause = %e, "bad control frame");
                    return Some(CloseCode::ProtocolViolation);
                }
            };
            let mut body = Vec::new();
            if read_body(&mut recv, len, &mut body).await.is_err() {
                return Some(CloseCode::ProtocolViolation);
            }
            let msg = match ClientMessage::decode(&body) {
                Ok(msg) => msg,
                Err(e) => {
                    warn!(cause = %e, "undecodable control message");
                    return Some(CloseCode::ProtocolViolation);
                }
            };
            budget.take().await;
            let auth = shared.auth.check(&msg, crate::auth::unix_now());
            if shared
                .inputs
                .send(Input::Request {
                    conn: id,
                    msg,
                    auth,
                })
                .await
                .is_err()
            {
                return None;
            }
        }
    };
    let writer = async {
        let mut buf = BytesMut::new();
        while let Some(msg) = outgoing.recv().await {
            buf.clear();
            msg.encode_frame(&mut buf);
            // Batch whatever else is queued into the same write.
            while let Ok(more) = outgoing.try_recv() {
                more.encode_frame(&mut buf);
            }
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
        None
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Reads a frame body of `len` bytes (already checked against `max_control_frame`) into `body`,
/// which grows as bytes arrive: a client that announces a large frame and sends a few bytes
/// makes the relay hold a few bytes, not the announced length.
async fn read_body<R: AsyncRead + Unpin>(
    recv: &mut R,
    len: usize,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    recv.take(want).read_to_end(body).await?;
    if body.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Control requests a connection may make in a burst, and their refill interval.
const REQUEST_BURST: u32 = 32;
const REQUEST_REFILL: Duration = Duration::from_millis(50);

/// A token bucket of control requests: [`REQUEST_BURST`] at once, one more every
/// [`REQUEST_REFILL`].
struct RequestBudget {
    tokens: u32,
    last: tokio::time::Instant,
}

impl RequestBudget {
    fn new() -> Self {
        RequestBudget {
            tokens: REQUEST_BURST,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        let earned =
            (now.duration_since(self.last).as_millis() / REQUEST_REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(REQUEST_BURST);
            self.last = now;
        }
        if self.tokens == 0 {
            tokio::time::sleep(REQUEST_REFILL).await;
            self.last = tokio::time::Instant::now();
            self.tokens = 1;
        }
        self.tokens -= 1;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_frame_body_takes_memory_as_its_bytes_arrive_not_as_announced() {
        let announced = 1 << 20;
        let (mut client, mut relay) = tokio::io::duplex(64);
        client.write_all(&[7; 10]).await.unwrap();
        let mut body = Vec::new();
        // One poll: it reads the 10 bytes there are, then waits for the rest.
        let done = read_body(&mut relay, announced, &mut body).now_or_never();
        assert!(done.is_none(), "the body is not complete");
        assert_eq!(body.len(), 10);
        assert!(
            body.capacity() < 4096,
            "{} bytes held for 10 received",
            body.capacity()
        );
        // A whole body arrives: it is read exactly.
        let mut body = Vec::new();
        let (mut client, mut relay) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move { client.write_all(&vec![9; announced]).await });
        read_body(&mut relay, announced, &mut body).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(body, vec![9; announced]);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let mut short: &[u8] = &[1, 2, 3];
        let mut body = Vec::new();
        assert!(read_body(&mut short, 5, &mut body).await.is_err());
    }
}
