//! Process and machine counters read from `/proc`: CPU time, threads and memory of one process
//! (`/proc/<pid>/stat`, `/proc/<pid>/status`), the machine's CPU time (`/proc/stat`) and the
//! kernel's UDP error counters (`/proc/net/snmp`).
//!
//! Used by `baton-bench` and `baton-attack` to sample a relay process. Everything here is
//! Linux-only; on other systems the readers return `None` and the report
//! leaves those figures out.

/// Clock ticks per second of the CPU times in `/proc` (`USER_HZ`). The kernel fixes it at 100
/// for user space on every architecture Linux supports today, independently of `CONFIG_HZ`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User plus system CPU time of all its threads so far, in seconds.
    pub cpu_s: f64,
    /// Threads it runs.
    pub threads: u32,
    /// Resident memory now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident memory so far, KiB (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`, or those of this process for `None`.
pub fn process(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(ProcSample {
        cpu_s: ticks as f64 / CLOCK_TICKS_PER_SEC,
        threads: status_field(&status, "Threads:").unwrap_or(1) as u32,
        rss_kib: status_field(&status, "VmRSS:")?,
        hwm_kib: status_field(&status, "VmHWM:")?,
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces or parentheses, so fields are counted from the
/// last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime(14) stime(15): indices 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The first number after `key` in a `/proc/<pid>/status` text (`VmRSS:  1234 kB`).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One reading of the whole machine's CPU time (`/proc/stat`, first line).
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    /// Seconds of CPU time spent busy (everything but idle and iowait), summed over CPUs.
    pub busy_s: f64,
    /// Seconds the hypervisor ran something else while this machine's virtual CPUs had work
    /// (steal time), summed over CPUs: every thread on a stolen CPU stalls, timers included.
    pub steal_s: f64,
}

/// Reads the aggregate `cpu` line of `/proc/stat`.
pub fn machine() -> Option<MachineSample> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(MachineSample {
        busy_s: total.saturating_sub(idle) as f64 / CLOCK_TICKS_PER_SEC,
        steal_s: values.get(7).copied().unwrap_or(0) as f64 / CLOCK_TICKS_PER_SEC,
    })
}

/// The kernel's machine-wide UDP error counters (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpErrors {
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf: u64,
    /// Datagrams not sent because a socket's send buffer was full.
    pub sndbuf: u64,
}

/// Reads the `Udp:` header and value lines of `/proc/net/snmp`.
pub fn udp_errors() -> Option<UdpErrors> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().skip(1).collect();
    let values: Vec<u64> = udp
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i).copied())
            .unwrap_or(0)
    };
    Some(UdpErrors {
        rcvbuf: get("RcvbufErrors"),
        sndbuf: get("SndbufErrors"),
    })
}

/// Datagrams the kernel dropped for the UDP sockets bound to local `port` (the `drops` column
/// of `/proc/net/udp` and `/proc/net/udp6`): a full receive buffer, mostly.
pub fn udp_socket_drops(port: u16) -> Option<u64> {
    let wanted = format!(":{port:04X}");
    let mut found = false;
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1).is_some_and(|local| local.ends_with(&wanted)) {
                found = true;
                drops += fields
                    .last()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    found.then_some(drops)
}

/// The machine's 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 99";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
    }

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1024));
        assert_eq!(status_field(status, "VmHWM:"), Some(2048));
        assert_eq!(status_field(status, "Threads:"), Some(3));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }
}
