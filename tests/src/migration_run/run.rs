//! The phases of one migration run ([`run_migration`], [`Scenario`]) and what they tell an
//! observer as they go ([`Note`]).
//!
//! Runs on the caller's task: one loop consumes the fleet's channel, every wait with a
//! deadline.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{now_us, Fleet, LocalRelay, Output, PlayerSettings, RejoinTimeline, Report, Timeline};

/// How the host ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostEnd {
    /// The host leaves cleanly (`close` on its stdin: the SDK closes the QUIC connection).
    #[default]
    Clean,
    /// The host process is killed with SIGKILL: the relay notices after its host-loss timeout.
    Crash,
    /// The host's network is cut: its process is stopped with SIGSTOP, so it neither sends nor
    /// receives (nor closes anything) while it still exists; the relay notices after its
    /// host-loss timeout. Killed once the run is over.
    Cut,
}

impl fmt::Display for HostEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostEnd::Clean => "clean",
            HostEnd::Crash => "crash",
            HostEnd::Cut => "cut",
        })
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Players joining the host (the host not counted).
    pub peers: usize,
    /// How the host ends.
    pub end: HostEnd,
    /// Size of the migration snapshot the host uploads before it ends (0: none).
    pub snapshot_bytes: usize,
    /// How long everyone plays before the host ends.
    pub settle: Duration,
    /// Bring the old host back with its reconnect token after the migration.
    pub rejoin: bool,
    /// Time allowed to start the host and the peers and upload the snapshot.
    pub setup_timeout: Duration,
    /// Time allowed from the host's end to a complete migration (add the keepalive timeout
    /// for a crash).
    pub migration_timeout: Duration,
    /// Time allowed for the old host's rejoin.
    pub rejoin_timeout: Duration,
}

/// Something the runner reports as it goes, for a live display.
#[derive(Debug)]
pub enum Note<'a> {
    /// A player process started.
    Spawned {
        /// Its index.
        who: usize,
        /// Its role arguments.
        role: &'a [String],
        /// Its process id.
        pid: Option<u32>,
    },
    /// A player's report, with the player's peer id once known.
    Report {
        /// Which process.
        who: usize,
        /// Its peer id.
        peer: Option<u16>,
        /// Whether it is the process of the old host.
        old_host: bool,
        /// The report.
        report: &'a Report,
    },
    /// A line from a player that is not a report (stderr, mostly).
    Text {
        /// Which process.
        who: usize,
        /// Its peer id.
        peer: Option<u16>,
        /// The line.
        line: &'a str,
    },
    /// Everyone is in and playing; the host ends next.
    Playing {
        /// The join code.
        code: &'a str,
        /// The allocation.
        allocation: &'a str,
    },
    /// The host was told to close or killed, at `t_us`.
    HostEnded {
        /// How.
        end: HostEnd,
        /// When.
        t_us: u64,
    },
    /// The migration is complete.
    Migrated(&'a Timeline),
    /// The old host is being started again with its reconnect token.
    Rejoining {
        /// The token.
        token: &'a str,
        /// When.
        t_us: u64,
    },
}

/// A run in progress: the fleet, what is known so far, and the observer to tell.
struct Run<'o> {
    fleet: Fleet,
    timeline: Timeline,
    /// Peer id of each process, once it said `ready`.
    peers: Vec<Option<u16>>,
    host_who: usize,
    rejoin_who: Option<usize>,
    host_ready: Option<Report>,
    snapshot_stored: bool,
    joined_at_host: BTreeSet<u16>,
    ended: bool,
    observe: &'o mut dyn FnMut(Note<'_>),
}

impl Run<'_> {
    fn spawn(&mut self, role: Vec<String>) -> anyhow::Result<usize> {
        let who = self.fleet.spawn(&role)?;
        self.peers.push(None);
        (self.observe)(Note::Spawned {
            who,
            role: &role,
            pid: self.fleet.pid(who),
        });
        Ok(who)
    }

    /// Reads outputs until `done` holds, or fails with `what` at `deadline`.
    async fn until(
        &mut self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Run<'_>) -> bool,
    ) -> anyhow::Result<()> {
        while !done(self) {
            let Some(out) = self.fleet.next_before(deadline).await else {
                bail!("timed out waiting for {what}");
            };
            self.absorb(out)?;
        }
        Ok(())
    }

    /// Reads outputs for `period`.
    async fn drain_for(&mut self, period: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + period;
        while let Some(out) = self.fleet.next_before(deadline).await {
            self.absorb(out)?;
        }
        Ok(())
    }

    /// Takes one output into the timeline and tells the observer.
    fn absorb(&mut self, out: Output) -> anyhow::Result<()> {
        match out {
            Output::Report { who, report } => {
                self.record(who, &report);
                (self.observe)(Note::Report {
                    who,
                    peer: self.peers.get(who).copied().flatten(),
                    old_host: who == self.host_who,
                    report: &report,
                });
            }
            Output::Text { who, line } => (self.observe)(Note::Text {
                who,
                peer: self.peers.get(who).copied().flatten(),
                line: &line,
            }),
            Output::Exited { who } => {
                // Only the old host is meant to go; anyone else leaving spoils the run.
                if who != self.host_who {
                    bail!(
                        "player {who} (peer {:?}) exited during the run",
                        self.peers.get(who).copied().flatten()
                    );
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, who: usize, r: &Report) {
        let t = r.t_us;
        let peer = self.peers.get(who).copied().flatten();
        let tl = &mut self.timeline;
        match r.event.as_str() {
            "ready" => {
                if let Some(slot) = self.peers.get_mut(who) {
                    *slot = r.peer("peer");
                }
                if who == self.host_who {
                    self.host_ready = Some(r.clone());
                } else if Some(who) == self.rejoin_who {
                    if let Some(rejoin) = &mut tl.rejoin {
                        rejoin.ready_us = Some(t);
                        rejoin.peer = r.peer("peer");
                        rejoin.host = r.peer("host");
                        rejoin.allocation = r.str("allocation").map(str::to_owned);
                    }
                } else if let Some(p) = r.peer("peer") {
                    tl.members.insert(p);
                }
            }
            "snapshot_stored" if who == self.host_who => self.snapshot_stored = true,
            "closing" if who == self.host_who && self.ended => tl.host_closing_us = Some(t),
            "host_lost" => {
                if let Some(p) = peer {
                    tl.host_lost.entry(p).or_insert(t);
                }
                tl.elected = r.peer("elected").or(tl.elected);
                if let Some(reason) = r.str("reason") {
                    tl.lost_reason = Some(reason.to_owned());
                }
            }
            "host_migrated" => {
                if r.bool("you_are_host") == Some(true) {
                    tl.new_host = peer;
                    tl.new_host_ready_us = Some(t);
                    tl.new_allocation = r.str("allocation").map(str::to_owned);
                    tl.snapshot_len = r.u64("snapshot_len");
                    tl.snapshot_matches = r.bool("snapshot_matches");
                } else if let Some(p) = peer {
                    tl.moved.entry(p).or_insert(t);
                    if let Some(h) = r.peer("new_host") {
                        tl.moved_to.insert(p, h);
                    }
                }
            }
            "first_from_host" => {
                if let Some(p) = peer {
                    tl.first_from_host.entry(p).or_insert(t);
                }
            }
            "first_from_peer" => {
                if let Some(from) = r.peer("peer") {
                    if from == tl.old_host && tl.rejoin.is_some() {
                        if let Some(rejoin) = &mut tl.rejoin {
                            rejoin.first_datagram_at_new_host_us.get_or_insert(t);
                        }
                    } else {
                        tl.first_from_peer.entry(from).or_insert(t);
                    }
                }
            }
            "peer_joined" | "peer_rejoined" => {
                if who == self.host_who {
                    if let Some(p) = r.peer_event("peer_joined") {
                        self.joined_at_host.insert(p);
                    }
                } else if peer.is_some() && peer == tl.new_host {
                    if let Some(p) = r.peer_event("peer_rejoined") {
                        tl.rejoined_at_new_host.entry(p).or_insert(t);
                        if p == tl.old_host {
                            if let Some(rejoin) = &mut tl.rejoin {
                                rejoin.seen_by_new_host_us.get_or_insert(t);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Runs one host migration as described in the [module docs](super), reporting progress to
/// `observe`, and returns its timeline. Every player is closed (or killed) before it returns,
/// error or not.
///
/// # Errors
/// If a player cannot be started, a player other than the old host exits, or a phase does not
/// finish within its time allowance (the error says what was missing).
pub async fn run_migration(
    relay: &LocalRelay,
    players: PlayerSettings,
    scenario: &Scenario,
    observe: &mut dyn FnMut(Note<'_>),
) -> anyhow::Result<Timeline> {
    let mut run = Run {
        fleet: Fleet::new(relay, players)?,
        timeline: Timeline {
            end: scenario.end,
            ..Timeline::default()
        },
        peers: Vec::new(),
        host_who: 0,
        rejoin_who: None,
        host_ready: None,
        snapshot_stored: false,
        joined_at_host: BTreeSet::new(),
        ended: false,
        observe,
    };
    let result = drive(&mut run, scenario).await;
    run.fleet.shutdown(Duration::from_secs(3)).await;
    result.map(|()| run.timeline)
}

/// The phases of [`run_migration`].
async fn drive(run: &mut Run<'_>, scenario: &Scenario) -> anyhow::Result<()> {
    // 1. The host, its allocation and its snapshot.
    let setup_deadline = Instant::now() + scenario.setup_timeout;
    run.host_who = run.spawn(vec![
        "host".into(),
        "--snapshot-bytes".into(),
        scenario.snapshot_bytes.to_string(),
    ])?;
    let want_snapshot = scenario.snapshot_bytes > 0;
    run.until(setup_deadline, "the host's allocation", |r| {
        r.host_ready.is_some() && (r.snapshot_stored || !want_snapshot)
    })
    .await?;
    let ready = run.host_ready.clone().context("host ready")?;
    let code = ready.str("code").context("join code")?.to_owned();
    run.timeline.old_host = ready.peer("peer").context("host peer id")?;
    run.timeline.old_allocation = ready.str("allocation").unwrap_or_default().to_owned();
    run.timeline.old_host_token = ready.str("token").context("host token")?.to_owned();
    run.timeline.code = code.clone();

    // 2. The peers, until the host has seen every one join.
    for _ in 0..scenario.peers {
        run.spawn(vec!["join".into(), code.clone()])?;
    }
    let peers = scenario.peers;
    run.until(setup_deadline, "every peer to join", |r| {
        r.timeline.members.len() == peers
            && r.timeline
                .members
                .iter()
                .all(|p| r.joined_at_host.contains(p))
    })
    .await?;

    // 3. Play for a moment.
    let (code, allocation) = (
        run.timeline.code.clone(),
        run.timeline.old_allocation.clone(),
    );
    (run.observe)(Note::Playing {
        code: &code,
        allocation: &allocation,
    });
    run.drain_for(scenario.settle).await?;

    // 4. End the host.
    run.ended = true;
    let t_end = now_us();
    run.timeline.host_end_us = t_end;
    match scenario.end {
        HostEnd::Clean => run.fleet.command(run.host_who, "close").await?,
        HostEnd::Crash => run.fleet.kill(run.host_who).await?,
        HostEnd::Cut => run.fleet.stop(run.host_who)?,
    }
    (run.observe)(Note::HostEnded {
        end: scenario.end,
        t_us: t_end,
    });

    // 5. The migration.
    let deadline = Instant::now() + scenario.migration_timeout;
    let migrated = run
        .until(deadline, "the migration", |r| r.timeline.is_complete())
        .await;
    if let Err(e) = migrated {
        bail!("{e}: missing {}", run.timeline.missing());
    }
    // A clean host's own `closing` report may still be on its way.
    if scenario.end == HostEnd::Clean && run.timeline.host_closing_us.is_none() {
        let _ = run
            .until(
                Instant::now() + Duration::from_millis(500),
                "closing",
                |r| r.timeline.host_closing_us.is_some(),
            )
            .await;
    }
    let snapshot = run.timeline.clone();
    (run.observe)(Note::Migrated(&snapshot));

    // 6. The old host comes back with its reconnect token.
    if scenario.rejoin {
        let token = run.timeline.old_host_token.clone();
        let t = now_us();
        run.timeline.rejoin = Some(RejoinTimeline {
            started_us: t,
            ..RejoinTimeline::default()
        });
        (run.observe)(Note::Rejoining {
            token: &token,
            t_us: t,
        });
        let who = run.spawn(vec!["rejoin".into(), token])?;
        run.rejoin_who = Some(who);
        run.until(
            Instant::now() + scenario.rejoin_timeout,
            "the old host's rejoin",
            |r| {
                r.timeline.rejoin.as_ref().is_some_and(|j| {
                    j.ready_us.is_some()
                        && j.seen_by_new_host_us.is_some()
                        && j.first_datagram_at_new_host_us.is_some()
                })
            },
        )
        .await?;
    }
    Ok(())
}
