//! The control stream, one bidirectional stream per connection. Its reader takes length-prefixed
//! frames (at most `max_control_frame`), decodes them and sends them to the control task as
//! `Input::Request`, paced by a [`RequestBudget`] (`client_requests_per_second` after a burst of
//! [`crate::defaults::REQUEST_BURST`]): a request beyond it waits for its turn, and no further frame is
//! read meanwhile. Its writer batches the control task's `ServerMessage`s into writes. A client
//! that finishes the stream is reported as `Input::Finished`; the control plane decides whether
//! the connection closes.
//!
//! Runs inside each connection's task on the endpoint's data-plane lane thread; reaches the
//! control plane only through the `inputs` channel and the connection's control queue.

use std::time::Duration;

use baton_protocol::{frame, ClientMessage, CloseCode, ServerMessage};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::bucket::Rate;
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
        let mut budget = RequestBudget::new(shared.client_requests);
        loop {
            let mut prefix = [0u8; frame::LEN_PREFIX];
            match recv.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => {
                    // The client is done here. The control plane closes the connection, or
                    // (a member that moved to another node) keeps it for its datagrams; the
                    // writer goes on meanwhile.
                    if shared
                        .inputs
                        .send(Input::Finished { conn: id })
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    return std::future::pending().await;
                }
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
            if budget.take().await {
                shared.metrics.limited.client_requests.inc();
            }
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

/// A connection's control-request budget: a token bucket of `rate`, which delays the request
/// that finds it empty until its token has refilled.
struct RequestBudget {
    rate: Rate,
    /// The bucket's state (see `bucket`), in nanoseconds since `epoch`.
    tat: u64,
    epoch: tokio::time::Instant,
}

impl RequestBudget {
    fn new(rate: Rate) -> Self {
        RequestBudget {
            rate,
            tat: 0,
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Takes one request's token, waiting for it if the bucket is empty. Returns whether the
    /// request was delayed.
    async fn take(&mut self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let wait = self.rate.pace(&mut self.tat, now);
        if wait == 0 {
            return false;
        }
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        true
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

    /// When each of `count` requests, made at `at` (offsets from the start), may go ahead.
    async fn paced(rate: Rate, at: &[Duration]) -> Vec<Duration> {
        let start = tokio::time::Instant::now();
        let mut budget = RequestBudget::new(rate);
        let mut went = Vec::new();
        for offset in at {
            tokio::time::sleep_until((start + *offset).max(tokio::time::Instant::now())).await;
            budget.take().await;
            went.push(start.elapsed());
        }
        went
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_are_paced_at_the_configured_rate() {
        let ms = Duration::from_millis;
        let rate = Rate::new(
            crate::defaults::CLIENT_REQUESTS_PER_SECOND as u64,
            crate::defaults::REQUEST_BURST,
        );
        // 40 requests at once: the first 32 go at once, then one every 50 ms (20 a second).
        let went = paced(rate, &[Duration::ZERO; 40]).await;
        assert!(went[..32].iter().all(|t| *t == Duration::ZERO), "{went:?}");
        let paced_at: Vec<_> = (1..=8).map(|i| ms(50 * i)).collect();
        assert_eq!(went[32..], paced_at[..]);

        // After the burst, a request that comes 30 ms later waits only the 20 ms left of its
        // token's refill, not a whole interval.
        let mut at = vec![Duration::ZERO; 32];
        at.push(ms(30));
        let went = paced(rate, &at).await;
        assert_eq!(went[32], ms(50));

        // A client at the rate is never delayed; after a quiet second the burst is back.
        let at: Vec<_> = (0..40)
            .map(|i| ms(50 * i))
            .chain((0..32).map(|_| ms(3000)))
            .collect();
        assert_eq!(paced(rate, &at).await, at);

        // The setting sets the rate: 100 a second is one every 10 ms.
        let went = paced(Rate::new(100, 32), &[Duration::ZERO; 34]).await;
        assert_eq!(went[32..], [ms(10), ms(20)]);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let mut short: &[u8] = &[1, 2, 3];
        let mut body = Vec::new();
        assert!(read_body(&mut short, 5, &mut body).await.is_err());
    }
}
