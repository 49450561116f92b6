//! Readings taken at the edges of a measurement window, and what they add up to: CPU used by
//! the server under test (the relay or the UDP forwarder), by the load generator (this
//! process) and by everything else on the machine.

use std::time::Instant;

use serde::Serialize;

use crate::procstat::{self, MachineSample, ProcSample, UdpErrors};

/// The server under test, as far as this machine can see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Server {
    /// Its process id.
    pub pid: Option<u32>,
    /// The local UDP port it receives on.
    pub port: Option<u16>,
}

/// Counters read at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    /// The server process, when it runs on this machine.
    pub server: Option<ProcSample>,
    /// This process (the load generator).
    pub me: Option<ProcSample>,
    machine: Option<MachineSample>,
    udp: Option<UdpErrors>,
    server_drops: Option<u64>,
}

impl Sample {
    /// Reads everything now; `server` names the server's process and UDP port, when known.
    pub fn take(server: Server) -> Sample {
        Sample {
            at: Instant::now(),
            server: server.pid.and_then(|pid| procstat::process(Some(pid))),
            me: procstat::process(None),
            machine: procstat::machine(),
            udp: procstat::udp_errors(),
            server_drops: server.port.and_then(procstat::udp_socket_drops),
        }
    }
}

/// CPU use between two samples. "Cores" is CPU-seconds per wall-clock second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// CPUs of the machine.
    pub cpus: usize,
    /// CPU-seconds the server used.
    pub server_cpu_s: Option<f64>,
    /// Cores the server kept busy on average.
    pub server_cores: Option<f64>,
    /// The server's threads.
    pub server_threads: Option<u32>,
    /// CPU-seconds the load generator used.
    pub generator_cpu_s: Option<f64>,
    /// Cores the load generator kept busy on average.
    pub generator_cores: Option<f64>,
    /// Cores busy machine-wide (all processes).
    pub machine_busy_cores: Option<f64>,
    /// Cores busy with anything but the server and the generator (e.g. compilers).
    pub other_cores: Option<f64>,
}

impl Cpu {
    /// CPU use from `a` to `b`.
    pub fn between(a: &Sample, b: &Sample) -> Cpu {
        let wall_s = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let server_cpu_s = match (a.server, b.server) {
            (Some(x), Some(y)) => Some((y.cpu_s - x.cpu_s).max(0.0)),
            _ => None,
        };
        let generator_cpu_s = match (a.me, b.me) {
            (Some(x), Some(y)) => Some((y.cpu_s - x.cpu_s).max(0.0)),
            _ => None,
        };
        let machine_busy_cores = match (a.machine, b.machine) {
            (Some(x), Some(y)) => Some((y.busy_s - x.busy_s).max(0.0) / wall_s),
            _ => None,
        };
        let server_cores = server_cpu_s.map(|s| s / wall_s);
        let generator_cores = generator_cpu_s.map(|s| s / wall_s);
        let other_cores = machine_busy_cores.map(|busy| {
            (busy - server_cores.unwrap_or(0.0) - generator_cores.unwrap_or(0.0)).max(0.0)
        });
        Cpu {
            wall_s,
            cpus: procstat::cpus(),
            server_cpu_s,
            server_cores,
            server_threads: b.server.map(|s| s.threads),
            generator_cpu_s,
            generator_cores,
            machine_busy_cores,
            other_cores,
        }
    }

    /// The server's use as a fraction of what its threads could use on this machine.
    pub fn server_utilisation(&self) -> Option<f64> {
        let threads = self.server_threads? as usize;
        Some(self.server_cores? / threads.clamp(1, self.cpus) as f64)
    }

    /// The machine's busy fraction.
    pub fn machine_utilisation(&self) -> Option<f64> {
        Some(self.machine_busy_cores? / self.cpus.max(1) as f64)
    }
}

/// Kernel UDP errors between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelUdp {
    /// Datagrams dropped machine-wide because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Datagrams not sent machine-wide because a socket's send buffer was full.
    pub sndbuf_errors: u64,
    /// Of those, datagrams dropped at the server's own socket (its receive buffer overflowed:
    /// it did not read fast enough). The rest were dropped at the generator's sockets or
    /// elsewhere on the machine.
    pub server_socket_drops: Option<u64>,
}

impl KernelUdp {
    /// Errors from `a` to `b`, if the counters are readable.
    pub fn between(a: &Sample, b: &Sample) -> Option<KernelUdp> {
        let (x, y) = (a.udp?, b.udp?);
        Some(KernelUdp {
            rcvbuf_errors: y.rcvbuf.saturating_sub(x.rcvbuf),
            sndbuf_errors: y.sndbuf.saturating_sub(x.sndbuf),
            server_socket_drops: match (a.server_drops, b.server_drops) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                _ => None,
            },
        })
    }
}
