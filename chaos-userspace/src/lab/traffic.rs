//! `kchaos traffic`: small traffic generators the demo, the tests and scenarios run inside a cgroup
//! (and optionally a netns), reporting what they saw as one JSON line.

use std::{
    collections::HashSet,
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::units;

#[derive(Debug, clap::Args)]
pub struct TrafficArgs {
    /// Join this cgroup first (so the traffic is the cgroup's).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Join this network namespace first (a path such as /run/netns/NAME).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
pub enum Mode {
    /// Send numbered, self-checking UDP datagrams to an echo server; count the distinct echoes, the
    /// repeated ones (duplicates) and the ones with a changed bit (corrupted).
    UdpEcho {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Datagrams per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// How long to wait for late echoes after the last send.
        #[arg(long, default_value = "500ms", value_parser = units::parse_duration)]
        wait: Duration,
        /// Also report round-trip times (µs) of each echo (`rtt_us`, in the order the echoes came)
        /// and the sequence number of each (`rtt_seq`, same order).
        #[arg(long)]
        rtt: bool,
    },
    /// Bind a UDP port and count datagrams for a while.
    UdpSink {
        #[arg(long)]
        bind: SocketAddr,
        /// The longest it listens.
        #[arg(long = "for", value_parser = units::parse_duration)]
        duration: Duration,
        /// Stop once this many datagrams arrived.
        #[arg(long)]
        count: Option<u64>,
        /// Stop when standard input ends (then read what is still queued): the caller says when
        /// everything it waited for was sent, instead of a window fixed from the start, which a
        /// starved host's late sender overruns.
        #[arg(long)]
        until_eof: bool,
    },
    /// Send UDP datagrams one way (no echo).
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        /// Source address and port to send from (default: any).
        #[arg(long)]
        from: Option<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
    },
    /// Stream TCP data to a sink for a while; report the bytes written.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long = "for", value_parser = units::parse_duration)]
        duration: Duration,
    },
    /// Call one operation N times and report the errno each call saw (connect, bind, socket, sendmsg,
    /// recvmsg, open, read, write, fsync, mmap, mkdir, unlink, rename, fork).
    Syscalls {
        #[arg(long)]
        op: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Directory for the files file operations use (default: the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Try one TCP connect; report success or the errno.
    TcpConnect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
        timeout: Duration,
    },
}

/// Joins the cgroup and namespace, then generates the traffic; prints one JSON object.
pub fn run(args: &TrafficArgs) -> Result<()> {
    let join = || -> Result<()> {
        if let Some(cg) = &args.cgroup {
            crate::engine::cgroup::add_process(cg, std::process::id())
                .with_context(|| format!("joining {}", cg.display()))?;
        }
        Ok(())
    };
    // The syscall helper joins by itself, after making the files it needs (which a fault on the
    // directory would otherwise refuse).
    if !matches!(args.mode, Mode::Syscalls { .. }) {
        join()?;
    }
    if let Some(ns) = &args.netns {
        let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        // SAFETY: single-threaded here; setns moves this thread (the only one) into the namespace.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
    }
    let value = match args.mode {
        Mode::UdpEcho {
            to,
            count,
            rate,
            wait,
            rtt,
        } => udp_echo(to, count, rate, wait, rtt)?,
        Mode::UdpSink {
            bind,
            duration,
            count,
            until_eof,
        } => udp_sink(bind, duration, count, until_eof)?,
        Mode::UdpSend {
            to,
            from,
            count,
            rate,
        } => udp_send(to, from, count, rate)?,
        Mode::TcpSend { to, duration } => tcp_send(to, duration)?,
        Mode::TcpConnect { to, timeout } => tcp_connect(to, timeout),
        Mode::Syscalls {
            ref op,
            count,
            ref dir,
        } => crate::lab::syscall_helper::run(op, count, dir.as_deref(), &join)?,
    };
    report(&value.to_string())
}

/// Prints the result line. A write fault on the target hits this write(2) too, so a failure is retried
/// (up to 1000 times): the result must come out, whatever rate the fault runs at.
fn report(line: &str) -> Result<()> {
    use std::io::Write as _;
    let bytes = format!("{line}\n");
    let mut last = None;
    for _ in 0..1000 {
        // One write call per try, so a short or failed write never leaves half a line behind.
        // SAFETY: writes our own buffer to fd 1.
        let n = unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
        if n == bytes.len() as isize {
            return Ok(());
        }
        last = Some(io::Error::last_os_error());
    }
    let _ = std::io::stderr().flush();
    Err(last.unwrap_or_else(|| io::Error::other("short write"))).context("writing the result")
}

fn bind_any(to: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    // Big buffers, so the socket itself never loses what the fault did not.
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a valid int option value.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                4,
            );
        }
    }
    Ok(sock)
}

/// Sleeps as needed to keep `sent` datagrams at `rate` per second since `start`.
fn pace(start: Instant, sent: u64, rate: u64) {
    let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
    if let Some(ahead) = due.checked_sub(start.elapsed())
        && ahead > Duration::from_micros(200)
    {
        std::thread::sleep(ahead);
    }
}

fn udp_echo(
    to: SocketAddr,
    count: u64,
    rate: u64,
    wait: Duration,
    rtt: bool,
) -> Result<serde_json::Value> {
    let sock = bind_any(to)?;
    let recv_sock = sock.try_clone()?;
    let start = Instant::now();
    // The receiver reads until `wait` (plus a second of grace) after the last send, measured from
    // when the sending really ended: on a starved host (a VM under TCG, a busy core) sending falls
    // behind its pace, and a deadline fixed from the start would count the late tail as lost.
    let sent_all_at_ns = Arc::new(AtomicU64::new(0));
    let sending_done = Arc::clone(&sent_all_at_ns);
    let grace = wait + Duration::from_secs(1);
    let receiver = std::thread::spawn(move || {
        let mut got = Echoes::default();
        let mut buf = [0u8; 64];
        let _ = recv_sock.set_read_timeout(Some(Duration::from_millis(20)));
        let open = || match sending_done.load(Ordering::Acquire) {
            0 => true,
            ended => start.elapsed() < Duration::from_nanos(ended) + grace,
        };
        while open() && (got.seen.len() as u64) < count {
            if let Ok(n) = recv_sock.recv(&mut buf) {
                got.take(&buf[..n], start);
            }
        }
        // Every echo is in; copies of the last ones may still be on their way: read on until the
        // socket is quiet for one read timeout.
        while open()
            && let Ok(n) = recv_sock.recv(&mut buf)
        {
            got.take(&buf[..n], start);
        }
        got
    });
    let mut send_errors = 0u64;
    for seq in 0..count {
        pace(start, seq, rate);
        let msg = echo_message(seq, start.elapsed().as_nanos() as u64);
        if sock.send_to(&msg, to).is_err() {
            send_errors += 1;
        }
    }
    // At least 1 ns: 0 means "still sending".
    sent_all_at_ns.store(
        (start.elapsed().as_nanos() as u64).max(1),
        Ordering::Release,
    );
    let Echoes {
        seen,
        rtts,
        duplicates,
        corrupted,
        order,
    } = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    // Runs of consecutive sequence numbers that never came back: the loss bursts.
    let mut bursts = 0u64;
    let mut prev_lost = false;
    for seq in 0..count {
        let lost = !seen.contains(&seq);
        if lost && !prev_lost {
            bursts += 1;
        }
        prev_lost = lost;
    }
    let received = seen.len() as u64;
    let mut v = serde_json::json!({
        "sent": count,
        "received": received,
        "send_errors": send_errors,
        "loss_bursts": bursts,
        "duplicates": duplicates,
        "corrupted": corrupted,
        "reordered": overtakers(&order),
    });
    if rtt {
        v["rtt_us"] = serde_json::json!(rtts);
        v["rtt_seq"] = serde_json::json!(order);
    }
    Ok(v)
}

/// How many echoes came before one of a datagram sent earlier (netem's reorder: a packet that
/// skipped the delay overtakes those still waiting).
fn overtakers(order: &[u64]) -> u64 {
    let mut earliest_after = u64::MAX;
    let mut n = 0;
    for &seq in order.iter().rev() {
        if earliest_after < seq {
            n += 1;
        }
        earliest_after = earliest_after.min(seq);
    }
    n
}

/// Marks an echo message as whole: a single flipped bit anywhere in it breaks `seq ^ sent ^ CHECK`.
const ECHO_CHECK: u64 = 0x6b63_6861_6f73_2121;

/// An echo datagram: sequence number, send time (ns since the start), and their check word.
fn echo_message(seq: u64, sent_ns: u64) -> [u8; 24] {
    let mut msg = [0u8; 24];
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    msg[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    msg[16..].copy_from_slice(&(seq ^ sent_ns ^ ECHO_CHECK).to_le_bytes());
    msg
}

/// What came back to a udp-echo client.
#[derive(Default)]
struct Echoes {
    /// Distinct sequence numbers echoed whole.
    seen: HashSet<u64>,
    /// Round-trip times (µs) of the first echo of each.
    rtts: Vec<u64>,
    /// Whole echoes of a sequence number already seen (a duplicated datagram).
    duplicates: u64,
    /// Echoes whose bytes are not a message this client sent (a flipped bit).
    corrupted: u64,
    /// Sequence numbers in the order their first echo came.
    order: Vec<u64>,
}

impl Echoes {
    fn take(&mut self, msg: &[u8], start: Instant) {
        let word = |i: usize| {
            msg.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let (Some(seq), Some(sent_ns), Some(check), 24) = (word(0), word(1), word(2), msg.len())
        else {
            self.corrupted += 1;
            return;
        };
        if seq ^ sent_ns ^ ECHO_CHECK != check {
            self.corrupted += 1;
        } else if self.seen.insert(seq) {
            self.order.push(seq);
            self.rtts
                .push((start.elapsed().as_nanos() as u64).saturating_sub(sent_ns) / 1000);
        } else {
            self.duplicates += 1;
        }
    }
}

fn udp_sink(
    bind: SocketAddr,
    duration: Duration,
    count: Option<u64>,
    until_eof: bool,
) -> Result<serde_json::Value> {
    let sock = bind_any(bind).and_then(|s| {
        drop(s);
        UdpSocket::bind(bind)
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let eof = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if until_eof {
        let eof = Arc::clone(&eof);
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            eof.store(true, Ordering::Release);
        });
    }
    // Tell the caller the port is open (it waits for this line before sending).
    println!("{{\"ready\":true}}");
    let start = Instant::now();
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    while start.elapsed() < duration
        && count.is_none_or(|n| received < n)
        && !eof.load(Ordering::Acquire)
    {
        if sock.recv(&mut buf).is_ok() {
            received += 1;
        }
    }
    // What the kernel already queued counts too: read until the socket is quiet for a read timeout.
    while start.elapsed() < duration && sock.recv(&mut buf).is_ok() {
        received += 1;
    }
    Ok(serde_json::json!({"received": received}))
}

fn udp_send(
    to: SocketAddr,
    from: Option<SocketAddr>,
    count: u64,
    rate: u64,
) -> Result<serde_json::Value> {
    let sock = match from {
        Some(from) => UdpSocket::bind(from).with_context(|| format!("binding {from}"))?,
        None => bind_any(to)?,
    };
    let start = Instant::now();
    let mut errors = 0u64;
    for seq in 0..count {
        pace(start, seq, rate);
        if sock.send_to(&seq.to_le_bytes(), to).is_err() {
            errors += 1;
        }
    }
    Ok(serde_json::json!({"sent": count, "send_errors": errors}))
}

fn tcp_send(to: SocketAddr, duration: Duration) -> Result<serde_json::Value> {
    use std::io::Write as _;
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    let chunk = vec![0x5au8; 128 << 10];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the sink to read everything (it closes after EOF), so the bytes were delivered.
    let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    let secs = start.elapsed().as_secs_f64();
    Ok(
        serde_json::json!({"bytes": bytes, "secs": secs, "gbit_per_s": bytes as f64 * 8.0 / secs / 1e9}),
    )
}

fn tcp_connect(to: SocketAddr, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => serde_json::json!({"connected": true, "ms": start.elapsed().as_secs_f64() * 1e3}),
        Err(e) => {
            serde_json::json!({"connected": false, "errno": e.raw_os_error(), "error": e.to_string(), "ms": start.elapsed().as_secs_f64() * 1e3})
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn overtakers_are_the_echoes_ahead_of_an_earlier_one() {
        assert_eq!(super::overtakers(&[0, 1, 2, 3]), 0);
        // 3 skipped the queue: it came before 1 and 2.
        assert_eq!(super::overtakers(&[0, 3, 1, 2]), 1);
        assert_eq!(super::overtakers(&[2, 3, 0, 1]), 2);
        assert_eq!(super::overtakers(&[]), 0);
    }
}
