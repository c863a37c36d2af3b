//! What the kernel says about a process in /proc: CPU time, resident memory, open fds, its name; and
//! the host's available memory. These are the measurements `stress` reports and `kill` prints.

use std::{fs, io, time::Duration};

/// CPU time the process has used (utime + stime from /proc/PID/stat, all its threads).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_cpu_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec(),
    ))
}

/// utime + stime, in clock ticks, from the text of /proc/PID/stat.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The name (field 2) is in parentheses and may itself hold spaces and parentheses: count the
    // fields after the last ')'. There the state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// USER_HZ: the unit of /proc/PID/stat's times (100 on every mainstream Linux).
fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Resident memory of the process (VmRSS), in bytes. A kernel thread or zombie has none: 0.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status_kib(&text, "VmRSS:").unwrap_or(0) * 1024)
}

/// Anonymous resident memory of the process (RssAnon): what it allocated and touched, without the
/// pages of its executable and libraries that VmRSS also counts.
pub fn rss_anon_bytes(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status_kib(&text, "RssAnon:").unwrap_or(0) * 1024)
}

/// How many of the process's file descriptors are open on `target` (links in /proc/PID/fd).
pub fn fds_on(pid: u32, target: &str) -> io::Result<u64> {
    let mut n = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == target) {
            n += 1;
        }
    }
    Ok(n)
}

/// A "Key:   123 kB" line of /proc/PID/status or /proc/meminfo, in KiB.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The process's name (/proc/PID/comm), or "?" when it is gone.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// The process's name as /proc/PID/stat has it (field 2, between the first '(' and the last ')';
/// the kernel cuts it to 15 bytes). Reading stat touches neither the process's memory nor its
/// executable, so it returns at once even for a process whose binary is on a stalled mount.
pub fn stat_comm(pid: u32) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    comm_in_stat(&text).map(str::to_owned).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

/// The name field of a /proc/PID/stat text.
fn comm_in_stat(stat: &str) -> Option<&str> {
    let (_, rest) = stat.split_once('(')?;
    let (name, _) = rest.rsplit_once(')')?;
    Some(name)
}

/// Runs `lookup` on a worker thread and waits at most `limit` for its answer: None when it did not
/// come in time. For a look at another process that can block (its executable's attributes, a path
/// it names: both reach whatever file system holds them, and a stalled FUSE or NFS mount never
/// answers); the worker is left behind, blocked, and goes with the process.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    lookup: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kchaos-lookup".into())
        .spawn(move || {
            let _ = tx.send(lookup());
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

/// `lookup` of each of `pids` on a worker of its own, all within one deadline: however many do not
/// answer, this takes `limit` at most. Returns the answers (in the order they came) and the pids
/// whose lookup did not answer in time (their workers are left behind, as [`within`]'s).
pub fn within_each<T: Send + 'static>(
    pids: &[u32],
    limit: std::time::Duration,
    lookup: impl Fn(u32) -> T + Send + Sync + 'static,
) -> (Vec<(u32, T)>, Vec<u32>) {
    let lookup = std::sync::Arc::new(lookup);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut asked = Vec::new();
    for &pid in pids {
        let (tx, lookup) = (tx.clone(), lookup.clone());
        let spawned = std::thread::Builder::new()
            .name("kchaos-lookup".into())
            .spawn(move || {
                let _ = tx.send((pid, lookup(pid)));
            });
        if spawned.is_ok() {
            asked.push(pid);
        }
    }
    drop(tx);
    let deadline = std::time::Instant::now() + limit;
    let mut answers = Vec::new();
    while answers.len() < asked.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(answer) = rx.recv_timeout(left) else {
            break;
        };
        answers.push(answer);
    }
    let silent = pids
        .iter()
        .filter(|p| !answers.iter().any(|(a, _)| a == *p))
        .copied()
        .collect();
    (answers, silent)
}

/// The process's command line, arguments joined by spaces (empty for kernel threads and zombies).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The host's MemAvailable (/proc/meminfo), in bytes: what can be allocated without swapping.
pub fn mem_available() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    status_kib(&text, "MemAvailable:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no MemAvailable in /proc/meminfo",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_past_an_odd_name() {
        let stat =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 1 0 99 1000 200";
        assert_eq!(stat_cpu_ticks(stat), Some(267));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn reads_the_name_past_parentheses_and_spaces() {
        assert_eq!(comm_in_stat("42 (a) b (c) S 1 2 3"), Some("a) b (c"));
        assert_eq!(comm_in_stat("42 (kchaos) S 1"), Some("kchaos"));
        assert_eq!(comm_in_stat("42 kchaos S 1"), None);
        assert_eq!(
            stat_comm(std::process::id()).unwrap(),
            comm(std::process::id())
        );
    }

    #[test]
    fn a_lookup_that_blocks_is_given_up_at_its_limit() {
        let start = std::time::Instant::now();
        let slow = within(Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(30));
            1
        });
        assert_eq!(slow, None);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(within(Duration::from_secs(5), || 7), Some(7));
    }

    /// However many lookups hang, all of them together take their one limit; the others answer.
    #[test]
    fn lookups_that_block_cost_one_limit_together() {
        let pids: Vec<u32> = (1..=20).collect();
        let start = std::time::Instant::now();
        let (answers, silent) = within_each(&pids, Duration::from_millis(300), |pid| {
            if pid.is_multiple_of(2) {
                std::thread::sleep(Duration::from_secs(60));
            }
            pid * 10
        });
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let mut answered: Vec<(u32, u32)> = answers;
        answered.sort();
        assert_eq!(
            answered,
            (1..=20u32)
                .filter(|p| !p.is_multiple_of(2))
                .map(|p| (p, p * 10))
                .collect::<Vec<_>>()
        );
        assert_eq!(silent, (1..=10u32).map(|p| p * 2).collect::<Vec<_>>());
    }

    #[test]
    fn reads_kib_lines() {
        let status = "Name:\tcat\nVmPeak:\t    9000 kB\nVmRSS:\t    1888 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1888));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn measures_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(rss_anon_bytes(me).unwrap() > 0);
        let _held = std::fs::File::open("/dev/zero").unwrap();
        assert!(fds_on(me, "/dev/zero").unwrap() >= 1);
        assert!(cpu_time(me).is_ok());
        assert!(!comm(me).is_empty());
        assert!(mem_available().unwrap() > 0);
    }
}
