//! The sending side: [`start`] spawns a few sender tasks on the generator runtime, each walking
//! its share of the flows in phase order and writing stamped datagrams to the [`Transport`]
//! (quinn connections, UDP sockets, or TURN clients sending ChannelData); [`Running::finish`] collects their [`SendStats`] and,
//! after [`DRAIN`], the receivers' counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_protocol::datagram::{self, HEADER_LEN};
use bytes::{BufMut, BytesMut};

use super::{Flow, RecvStats, RunSpec, Shared, Stamp, STAMP_LEN};
use crate::coturn::{write_channel_header, TurnClient, CHANNEL_HEADER_LEN};

/// A sender more than this far behind its schedule skips events instead of bursting them.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// A datagram sent more than this late counts as late (the generator could not keep time).
const LATE: Duration = Duration::from_millis(5);

/// Bytes of send buffer allocated at once and shared by the datagrams cut from it, so quinn
/// sends do not allocate per datagram.
const SEND_CHUNK: usize = 64 * 1024;

/// Where a target's clients send from.
pub enum Transport {
    /// Baton: one QUIC connection per client.
    Quic(Vec<quinn::Connection>),
    /// The ceiling: one UDP socket per client, connected to the forwarder.
    Udp(Vec<Arc<tokio::net::UdpSocket>>),
    /// coturn: one UDP socket per client; hosts send ChannelData to coturn (one per peer for
    /// a broadcast), peers send plain UDP to their host's relayed address.
    Turn(Vec<TurnClient>),
}

/// What one sender task did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendStats {
    /// Datagrams handed to the transport inside the window.
    pub sent: u64,
    /// Receivers those datagrams were meant for (a broadcast counts once per peer).
    pub expected: u64,
    /// Datagrams due inside the window that the transport could not take (send buffer full).
    pub local_drops: u64,
    /// Datagrams due inside the window that were never sent: the sender fell behind.
    pub skipped: u64,
    /// Datagrams sent inside the window more than 5 ms after they were due.
    pub late: u64,
    /// The furthest behind schedule any send was, nanoseconds.
    pub max_lag_ns: u64,
}

impl SendStats {
    /// Sums two tasks' counts.
    pub fn merge(&mut self, other: &SendStats) {
        self.sent += other.sent;
        self.expected += other.expected;
        self.local_drops += other.local_drops;
        self.skipped += other.skipped;
        self.late += other.late;
        self.max_lag_ns = self.max_lag_ns.max(other.max_lag_ns);
    }

    /// Datagrams the schedule offered inside the window.
    pub fn offered(&self) -> u64 {
        self.sent + self.local_drops + self.skipped
    }
}

/// Time after the last send that receivers get before their counts are taken; datagrams later
/// than this count as lost (a game has no use for them either).
pub const DRAIN: Duration = Duration::from_secs(1);

/// A run in progress.
pub struct Running {
    shared: Arc<Shared>,
    senders: Vec<tokio::task::JoinHandle<SendStats>>,
    /// Sent so far, for progress lines.
    pub sent_progress: Arc<AtomicU64>,
    /// When the measurement window opens.
    pub window_start: Instant,
    /// When it closes and the senders stop.
    pub window_end: Instant,
}

impl Running {
    /// Waits for the senders, lets stragglers arrive, and takes the counts.
    pub async fn finish(self) -> (SendStats, RecvStats) {
        let mut send = SendStats::default();
        for handle in self.senders {
            if let Ok(stats) = handle.await {
                send.merge(&stats);
            }
        }
        tokio::time::sleep(DRAIN).await;
        (send, self.shared.collect())
    }
}

/// Starts a run: a new run id, the window, and `tasks` sender tasks sharing `flows`.
pub fn start(
    shared: &Arc<Shared>,
    transport: &Arc<Transport>,
    flows: &[Flow],
    spec: &RunSpec,
    tasks: usize,
) -> Running {
    let run = shared.run.fetch_add(1, Ordering::Relaxed) + 1;
    // Traffic starts shortly, so every task is spawned before its first event is due.
    let start_ns = shared.now_ns() + 50_000_000;
    let win_start = start_ns + spec.warmup.as_nanos() as u64;
    let win_end = win_start + spec.duration.as_nanos() as u64;
    shared.win_start.store(win_start, Ordering::Relaxed);
    shared.win_end.store(win_end, Ordering::Relaxed);
    // Counts of the previous run's stragglers go.
    drop(shared.collect());
    let period_ns = (1e9 / spec.rate.clamp(0.001, 1e6)) as u64;
    let plan = Plan {
        run,
        period_ns,
        payload: spec.payload.max(STAMP_LEN),
        start_ns,
        win_start,
        win_end,
    };
    let tasks = tasks.clamp(1, flows.len().max(1));
    let sent_progress = Arc::new(AtomicU64::new(0));
    let senders = (0..tasks)
        .map(|t| {
            let mut mine: Vec<Flow> = flows.iter().skip(t).step_by(tasks).copied().collect();
            mine.sort_by(|a, b| a.phase.total_cmp(&b.phase));
            tokio::spawn(send_flows(
                mine,
                transport.clone(),
                plan,
                shared.clone(),
                sent_progress.clone(),
            ))
        })
        .collect();
    Running {
        shared: shared.clone(),
        senders,
        sent_progress,
        window_start: shared.instant(win_start),
        window_end: shared.instant(win_end),
    }
}

/// A run's schedule as the senders see it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    run: u32,
    period_ns: u64,
    payload: usize,
    start_ns: u64,
    win_start: u64,
    win_end: u64,
}

/// Sends `flows` (sorted by phase) on schedule until the window closes.
async fn send_flows(
    mut flows: Vec<Flow>,
    transport: Arc<Transport>,
    plan: Plan,
    shared: Arc<Shared>,
    progress: Arc<AtomicU64>,
) -> SendStats {
    let mut stats = SendStats::default();
    if flows.is_empty() {
        return stats;
    }
    let phases: Vec<u64> = flows
        .iter()
        .map(|f| (f.phase * plan.period_ns as f64) as u64)
        .collect();
    let window = plan.win_start..plan.win_end;
    let max_lag = MAX_LAG.as_nanos() as u64;
    let late = LATE.as_nanos() as u64;
    let mut chunk = BytesMut::new();
    // Room for a ChannelData header in front, for coturn.
    let mut udp_buf = vec![0u8; CHANNEL_HEADER_LEN + HEADER_LEN + plan.payload];
    let (mut cursor, mut cycle) = (0usize, 0u64);
    let mut burst = 0u32;
    loop {
        let due = plan.start_ns + cycle * plan.period_ns + phases[cursor];
        if due >= plan.win_end {
            break;
        }
        let mut now = shared.now_ns();
        if due > now {
            progress.fetch_add(u64::from(burst), Ordering::Relaxed);
            burst = 0;
            tokio::time::sleep_until(shared.instant(due).into()).await;
            now = shared.now_ns();
        }
        let lag = now.saturating_sub(due);
        let flow = &mut flows[cursor];
        if lag > max_lag {
            if window.contains(&due) {
                stats.skipped += 1;
            }
        } else {
            let stamp = Stamp {
                run: plan.run,
                sender: flow.client,
                target: flow.target,
                alloc: shared.topo.alloc_of(flow.client),
                seq: flow.seq,
                sent_ns: now,
            };
            flow.seq += 1;
            let ok = send_one(
                &transport,
                flow,
                &stamp,
                plan.payload,
                &mut chunk,
                &mut udp_buf,
            );
            if window.contains(&now) {
                if ok {
                    stats.sent += 1;
                    stats.expected += u64::from(flow.fanout);
                } else {
                    stats.local_drops += 1;
                }
                if lag > late {
                    stats.late += 1;
                }
                stats.max_lag_ns = stats.max_lag_ns.max(lag);
            }
            burst += 1;
            // A sender catching up must not starve the receivers sharing its thread.
            if burst >= 256 {
                progress.fetch_add(u64::from(burst), Ordering::Relaxed);
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        cursor += 1;
        if cursor == flows.len() {
            cursor = 0;
            cycle += 1;
        }
    }
    progress.fetch_add(u64::from(burst), Ordering::Relaxed);
    stats
}

/// Sends one datagram of `flow`; `false` if the transport could not take it.
fn send_one(
    transport: &Transport,
    flow: &Flow,
    stamp: &Stamp,
    payload: usize,
    chunk: &mut BytesMut,
    udp_buf: &mut [u8],
) -> bool {
    let len = HEADER_LEN + payload;
    match transport {
        Transport::Quic(conns) => {
            let conn = &conns[flow.client as usize];
            // quinn would make room by silently dropping the oldest queued datagram; a full
            // buffer is the generator's problem and is counted as such.
            if conn.datagram_send_buffer_space() < len {
                return false;
            }
            if chunk.capacity() < len {
                *chunk = BytesMut::with_capacity(SEND_CHUNK.max(len));
            }
            chunk.put_u16(flow.header);
            stamp.write(chunk);
            chunk.put_bytes(0, payload - STAMP_LEN);
            conn.send_datagram(chunk.split().freeze()).is_ok()
        }
        Transport::Udp(sockets) => {
            let Some(buf) = udp_buf.get_mut(..len) else {
                return false;
            };
            let mut head = &mut buf[..HEADER_LEN + STAMP_LEN];
            head.put_u16(flow.header);
            stamp.write(&mut head);
            // The padding after the stamp stays zero: nothing else writes there.
            sockets[flow.client as usize].try_send(buf).is_ok()
        }
        Transport::Turn(clients) => {
            let Some(buf) = udp_buf.get_mut(..CHANNEL_HEADER_LEN + len) else {
                return false;
            };
            let mut head =
                &mut buf[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + HEADER_LEN + STAMP_LEN];
            head.put_u16(flow.header);
            stamp.write(&mut head);
            let client = &clients[flow.client as usize];
            if client.channels.is_empty() {
                // A peer: plain UDP to its host's relayed address.
                return client.socket.try_send(&buf[CHANNEL_HEADER_LEN..]).is_ok();
            }
            // A host: ChannelData on the destination's channel, or one on every peer's.
            let mut send = |channel: u16| {
                write_channel_header(buf, channel, len) && client.socket.try_send(buf).is_ok()
            };
            if flow.header == datagram::BROADCAST {
                // Every peer gets its copy, even after one could not be sent.
                let mut ok = true;
                for &channel in client.channels.iter().skip(1) {
                    ok &= send(channel);
                }
                ok
            } else {
                match client.channels.get(usize::from(flow.header)) {
                    Some(&channel) if flow.header != 0 => send(channel),
                    _ => false,
                }
            }
        }
    }
}
