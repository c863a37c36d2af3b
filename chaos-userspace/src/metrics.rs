//! `--metrics ADDR`: the run's figures for Prometheus, at http://ADDR/metrics in the text exposition
//! format, encoded by the `prometheus-client` crate.
//!
//! A [`Collector`] turns the run's [`Snapshot`] into metric families at each scrape: per fault its
//! kind's counters (named by the kind's [`MetricMap`] table: `kchaos_net_packets_dropped_total`,
//! `kchaos_syscall_failed_total` ...), whether it is armed, its injected events; per run its phase,
//! injected events against the budget; per probe its results and a latency histogram. Every name has
//! the `kchaos_` prefix, counters end in `_total`, durations are seconds and sizes bytes.
//!
//! The server is a thread on a std `TcpListener` that hands each connection to a thread of its own
//! (at most [`MAX_CONNECTIONS`] at once; more are closed at once), and every connection has one
//! deadline for the whole request and answer ([`REQUEST_DEADLINE`]): a client that sends a byte
//! now and then can neither hold a scrape up nor keep a thread. The endpoint has no authentication
//! and serves only counters: bind it to loopback or to the address your Prometheus scrapes from.

use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    error::BadInput,
    kind::{self, MetricMap},
    live::{FaultState, LATENCY_BUCKETS, Live, Phase, Snapshot},
};

/// How long one connection may take, from accept to its answer written: Prometheus's default
/// scrape timeout is 10 s, so a scrape never waits on another client's connection.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; a scrape needs one.
const MAX_CONNECTIONS: u64 = 32;
/// The most of a request that is read (a scrape's is a few hundred bytes).
const REQUEST_LIMIT: usize = 16 * 1024;

type Labels = Vec<(String, String)>;

/// One metric family being built: its type, help and samples.
struct Family {
    help: String,
    metric_type: MetricType,
    samples: Vec<(Labels, f64)>,
}

/// The families of a snapshot, by name (without the `_total` a counter gets when encoded).
#[derive(Default)]
struct Families(BTreeMap<String, Family>);

impl Families {
    fn add(&mut self, name: &str, help: &str, metric_type: MetricType, labels: Labels, v: f64) {
        self.0
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.to_owned(),
                metric_type,
                samples: Vec::new(),
            })
            .samples
            .push((labels, v));
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The fault counters of a snapshot as families, by the kinds' tables.
fn fault_families(s: &Snapshot, out: &mut Families) {
    for f in &s.faults {
        let base = labels(&[("run", &s.name), ("fault", &f.name), ("kind", &f.kind)]);
        out.add(
            "kchaos_fault_armed",
            "1 while the fault is armed (injecting), else 0.",
            MetricType::Gauge,
            base.clone(),
            f64::from(u8::from(f.state == FaultState::Armed)),
        );
        out.add(
            "kchaos_fault_injected_events",
            "Events the fault injected (packets dropped, delayed or cut off, calls failed, \
             processes frozen or signalled).",
            MetricType::Counter,
            base.clone(),
            f.injected_events as f64,
        );
        let maps = kind::metric_maps(&f.kind);
        for (key, value) in &f.counters {
            let Some((map, label)) = find_map(maps, key) else {
                continue;
            };
            let mut l = base.clone();
            if let (Some(name), Some(value)) = (map.label, label) {
                l.push((name.to_owned(), value.to_owned()));
            }
            l.extend(f.labels.iter().cloned());
            let metric_type = if map.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            out.add(
                &format!("kchaos_{}", map.name),
                map.help,
                metric_type,
                l,
                *value as f64 * map.scale,
            );
        }
    }
}

/// The entry of `maps` for the counter `key`, and the label value its first part gives.
fn find_map<'a, 'k>(
    maps: &'a [MetricMap],
    key: &'k str,
) -> Option<(&'a MetricMap, Option<&'k str>)> {
    maps.iter().find_map(|m| match m.label {
        None => (m.key == key).then_some((m, None)),
        Some(_) => key
            .split_once('.')
            .filter(|(_, rest)| *rest == m.key)
            .map(|(first, _)| (m, Some(first))),
    })
}

/// Every family of a snapshot.
fn families(s: &Snapshot) -> Families {
    let mut out = Families::default();
    let run = labels(&[("run", &s.name)]);
    out.add(
        "kchaos_run_info",
        "The run: its name, command and pid (always 1).",
        MetricType::Gauge,
        labels(&[
            ("run", &s.name),
            ("command", &s.command),
            ("pid", &s.pid.to_string()),
            ("version", env!("CARGO_PKG_VERSION")),
        ]),
        1.0,
    );
    for p in Phase::ALL {
        let mut l = run.clone();
        l.push(("phase".into(), p.as_str().into()));
        out.add(
            "kchaos_experiment_phase",
            "1 for the phase the run is in (preparing, before, during, after, ended), 0 for the \
             others.",
            MetricType::Gauge,
            l,
            f64::from(u8::from(s.phase == p)),
        );
    }
    out.add(
        "kchaos_injected_events",
        "Events injected by every fault of the run so far.",
        MetricType::Counter,
        run.clone(),
        s.injected_events as f64,
    );
    if let Some(max) = s.max_injected_events {
        out.add(
            "kchaos_budget_max_injected_events",
            "The scenario's budget of injected events (max_injected_events): the run aborts \
             when kchaos_injected_events_total reaches it.",
            MetricType::Gauge,
            run.clone(),
            max as f64,
        );
    }
    if let Some(end) = s.ends_unix_ms {
        out.add(
            "kchaos_run_end_timestamp_seconds",
            "When the run ends at the latest (its timeline or budget), Unix time.",
            MetricType::Gauge,
            run.clone(),
            end as f64 / 1e3,
        );
    }
    fault_families(s, &mut out);
    for p in &s.probes {
        for (result, n) in [("ok", p.ok), ("failed", p.failed)] {
            out.add(
                "kchaos_probe_results",
                "Steady-state probe attempts, by result.",
                MetricType::Counter,
                labels(&[("run", &s.name), ("probe", &p.name), ("result", result)]),
                n as f64,
            );
        }
    }
    out
}

/// Encodes the live snapshot at each scrape.
#[derive(Debug)]
struct RunCollector(Live);

impl Collector for RunCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.copy();
        for (name, family) in families(&s).0 {
            let mut metric =
                encoder.encode_descriptor(&name, &family.help, None, family.metric_type)?;
            for (labels, v) in &family.samples {
                let mut m = metric.encode_family(labels)?;
                // Whole numbers as integers ("12", not "12.0").
                let whole = (v.fract() == 0.0 && *v >= 0.0 && *v < 9.0e15).then_some(*v as u64);
                match (family.metric_type, whole) {
                    (MetricType::Counter, Some(n)) => {
                        m.encode_counter::<NoLabelSet, u64, u64>(&n, None)?
                    }
                    (MetricType::Counter, None) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(v, None)?
                    }
                    (_, Some(n)) => m.encode_gauge(&n)?,
                    (_, None) => m.encode_gauge(v)?,
                }
            }
        }
        if !s.probes.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "kchaos_probe_latency_seconds",
                "How long steady-state probe attempts took.",
                None,
                MetricType::Histogram,
            )?;
            for p in &s.probes {
                let l = labels(&[("run", &s.name), ("probe", &p.name)]);
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .zip(p.latency_buckets.iter().copied())
                    .collect();
                metric.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                    p.latency_sum_s,
                    p.count(),
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The text a scrape gets for this snapshot.
pub fn render(live: &Live) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RunCollector(live.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// The metrics endpoint of a run.
pub struct Server {
    addr: SocketAddr,
    scrapes: Arc<AtomicU64>,
}

impl Server {
    /// Binds `addr` now (a taken port is the user's to fix: bad input, nothing attached yet) and
    /// serves `live` from a thread until the process ends.
    pub fn start(addr: SocketAddr, live: Live) -> Result<Self, BadInput> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            BadInput::new(format!(
                "--metrics {addr}: cannot listen there: {e} (pick a free port, or port 0 for any)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| BadInput::new(format!("--metrics {addr}: {e}")))?;
        let scrapes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&scrapes);
        std::thread::Builder::new()
            .name("kchaos-metrics".into())
            .spawn(move || {
                let open = Arc::new(AtomicU64::new(0));
                for stream in listener.incoming().flatten() {
                    // Past the cap the connection is dropped unanswered: closing it costs nothing,
                    // and the connections already served end by their deadline.
                    if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        open.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    let (live, counted, open) =
                        (live.clone(), Arc::clone(&counted), Arc::clone(&open));
                    let spawned = std::thread::Builder::new()
                        .name("kchaos-metrics-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(stream, &live, &counted) {
                                tracing::debug!("metrics connection: {e}");
                            }
                            open.fetch_sub(1, Ordering::SeqCst);
                        });
                    if let Err(e) = spawned {
                        tracing::debug!("metrics connection: no thread for it: {e}");
                    }
                }
            })
            .map_err(|e| BadInput::new(format!("--metrics {addr}: starting its thread: {e}")))?;
        Ok(Self { addr, scrapes })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scrapes of /metrics served so far.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::SeqCst)
    }

    /// Waits until a scrape after `since` scrapes has read the figures (as they are now), at most
    /// `max`, and a moment more for its answer to go out.
    pub fn linger(&self, since: u64, max: Duration) {
        let start = Instant::now();
        while self.scrapes() <= since && start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.scrapes() > since {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Answers one connection. A scrape of /metrics is counted before its figures are read, so a count
/// past [`Server::linger`]'s `since` means figures read after it.
fn serve(mut stream: TcpStream, live: &Live, scrapes: &AtomicU64) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    // What is left of the deadline, as a socket timeout (which may not be zero).
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "request deadline passed"))
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_LIMIT {
        stream.set_read_timeout(Some(left()?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    stream.set_write_timeout(Some(left()?))?;
    let text = String::from_utf8_lossy(&request);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            scrapes.fetch_add(1, Ordering::SeqCst);
            (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                render(live),
            )
        }
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "kchaos: metrics at /metrics\n".to_owned(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: kchaos serves /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{FaultStatus, ProbeStatus};

    fn snapshot() -> Snapshot {
        let mut probe = ProbeStatus::new("api");
        probe.observe(true, 0.004);
        probe.observe(false, 0.3);
        Snapshot {
            name: "loss".into(),
            pid: 7,
            command: "net".into(),
            phase: Phase::During,
            faults: vec![
                FaultStatus {
                    name: "net".into(),
                    kind: "net".into(),
                    state: FaultState::Armed,
                    injected_events: 12,
                    counters: [
                        ("egress.seen".to_owned(), 100),
                        ("egress.dropped".to_owned(), 12),
                        ("ingress.dropped".to_owned(), 0),
                        ("egress.delay_ns_total".to_owned(), 1_500_000_000),
                    ]
                    .into(),
                    ..FaultStatus::default()
                },
                FaultStatus {
                    name: "eio".into(),
                    kind: "syscall".into(),
                    state: FaultState::Done,
                    counters: [("openat.injected".to_owned(), 3)].into(),
                    labels: vec![("errno".into(), "EIO".into())],
                    ..FaultStatus::default()
                },
            ],
            injected_events: 15,
            max_injected_events: Some(100),
            probes: vec![probe],
            ..Snapshot::default()
        }
    }

    #[test]
    fn counters_become_families_with_their_labels() {
        let text = render(&Live::new(snapshot()));
        for line in [
            "# TYPE kchaos_net_packets_dropped_total counter",
            r#"kchaos_net_packets_dropped_total{run="loss",fault="net",kind="net",direction="egress"} 12"#,
            r#"kchaos_net_packets_dropped_total{run="loss",fault="net",kind="net",direction="ingress"} 0"#,
            r#"kchaos_net_delay_seconds_total{run="loss",fault="net",kind="net",direction="egress"} 1.5"#,
            r#"kchaos_syscall_failed_total{run="loss",fault="eio",kind="syscall",op="openat",errno="EIO"} 3"#,
            r#"kchaos_fault_armed{run="loss",fault="net",kind="net"} 1"#,
            r#"kchaos_fault_armed{run="loss",fault="eio",kind="syscall"} 0"#,
            r#"kchaos_experiment_phase{run="loss",phase="during"} 1"#,
            r#"kchaos_experiment_phase{run="loss",phase="before"} 0"#,
            r#"kchaos_injected_events_total{run="loss"} 15"#,
            r#"kchaos_budget_max_injected_events{run="loss"} 100"#,
            r#"kchaos_probe_results_total{run="loss",probe="api",result="failed"} 1"#,
            "# TYPE kchaos_probe_latency_seconds histogram",
            r#"kchaos_probe_latency_seconds_bucket{run="loss",probe="api",le="0.005"} 1"#,
            r#"kchaos_probe_latency_seconds_count{run="loss",probe="api"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_server_answers_scrapes_and_counts_them() {
        let live = Live::new(snapshot());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), live.clone()).unwrap();
        let get = |path: &str| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let before = server.scrapes();
        let page = get("/metrics");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("version=0.0.4"), "{page}");
        assert!(page.contains("kchaos_net_packets_seen_total"), "{page}");
        assert!(get("/nothing").starts_with("HTTP/1.1 404"));
        server.linger(before, Duration::from_secs(5));
        assert_eq!(server.scrapes(), before + 1);
        // Taken: bad input naming the flag.
        let err = Server::start(server.addr(), live).err().unwrap().0;
        assert!(err.contains("--metrics"), "{err}");
    }

    /// Slow clients (a byte every second, as in a slowloris) neither delay a scrape nor keep their
    /// connection past the deadline. Before: one connection at a time with a per-read timeout, so
    /// each trickling client held every scrape up indefinitely.
    #[test]
    fn slow_clients_stall_neither_scrapes_nor_threads() {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), Live::new(snapshot())).unwrap();
        let addr = server.addr();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tricklers: Vec<_> = (0..4)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let opened = Instant::now();
                    // Until the server closes it (a write fails) or the test ends.
                    while !stop.load(Ordering::SeqCst) && s.write_all(b"G").is_ok() {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    opened.elapsed()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(REQUEST_DEADLINE)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        let took = started.elapsed();
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        // Served at once, not after the tricklers' deadlines: well under one deadline (the answer
        // is a few kB on loopback; a deadline is 5 s).
        assert!(
            took < REQUEST_DEADLINE,
            "the scrape took {took:?} beside slow clients"
        );
        // Each trickler is cut off by its deadline: the server closes it, and a write after that
        // fails (the first write after the close may still succeed: a second one is refused).
        for t in tricklers {
            let held = t.join().unwrap();
            assert!(
                held < REQUEST_DEADLINE + Duration::from_secs(3),
                "a trickling client kept its connection {held:?}"
            );
        }
        stop.store(true, Ordering::SeqCst);
    }
}
