//! `--metrics`: a real Prometheus server (Debian's `prometheus`, started here on loopback with a
//! config this test writes) scrapes a `kchaos net` drop run, and the dropped-packet total it stored
//! is the figure of kchaos's JSON report; the shipped Grafana dashboard's queries name only metrics a
//! real run serves.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    RunDir, TempDir, TempFile, lab::LabCgroup, loopback_echo_server, root_or_skip, skip, tag,
    traffic,
};
use serde_json::Value;

/// A free TCP port on loopback (free when asked; nothing else on this host races for it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET `path` from `addr` over HTTP/1.0: the status and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback scraping `target` every second, with its config and data in a
/// TempDir; killed and reaped on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: kchaos\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut p = Self { child, addr, dir };
        let start = Instant::now();
        while !matches!(http_get(&p.addr, "/-/ready"), Ok((200, _))) {
            if start.elapsed() > Duration::from_secs(60)
                || p.child.try_wait().ok().flatten().is_some()
            {
                panic!("prometheus did not become ready: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Targets reach the scrape loop some seconds after the start (discovery updates are
        // batched): wait until it has tried this one (it is down until kchaos serves it).
        while !p.scraping() {
            if start.elapsed() > Duration::from_secs(60) {
                panic!("prometheus never scraped {target}: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// Whether the scrape loop has tried the target yet.
    fn scraping(&self) -> bool {
        let Ok((200, body)) = http_get(&self.addr, "/api/v1/targets") else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["activeTargets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["health"] != "unknown"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of a PromQL query with one result, if it has one.
    fn query_one(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .ok()?;
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query JSON");
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// The raw answer to a query (for messages).
    fn samples(&self, promql: &str) -> String {
        http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .map(|(_, body)| body)
        .unwrap_or_else(|e| format!("query {promql}: {e}"))
    }

    /// Polls `promql` (up to 20 s) until it gives `want`; the last value seen.
    fn wait_for(&self, promql: &str, want: f64) -> Option<f64> {
        let start = Instant::now();
        loop {
            let got = self.query_one(promql);
            if got == Some(want) || start.elapsed() > Duration::from_secs(20) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_or_skip(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("prometheus").is_file()));
    if !found {
        skip(
            test,
            "no prometheus on PATH (Debian's prometheus package; `cargo xtask test` installs it on \
             the host)",
        );
    }
    found
}

#[test]
fn prometheus_stores_the_dropped_total_of_the_json_report() {
    let test = "prometheus_stores_the_dropped_total_of_the_json_report";
    if !root_or_skip(test) || !prometheus_or_skip(test) {
        return;
    }
    let cg = LabCgroup::create(&format!("kchaos-metrics-{}", tag("p"))).unwrap();
    let (_server, to) = loopback_echo_server();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prom = Prometheus::start(metrics);
    let report = TempFile::new("metrics.json");
    let runs = RunDir::new();
    let name = format!("prom-{}", tag("r"));
    let running = runs.start(&[
        "net",
        "--cgroup",
        &cg.path.display().to_string(),
        "--drop",
        "40",
        "--duration",
        "4s",
        "--name",
        &name,
        "--json",
        report.s(),
        "--metrics",
        &metrics.to_string(),
        "--metrics-linger",
        "10s",
        "--quiet",
    ]);
    let v = traffic(
        Some(&cg.path),
        None,
        &[
            "udp-echo",
            "--to",
            &to.to_string(),
            "--count",
            "500",
            "--rate",
            integration_tests::udp_rate(),
        ],
    );
    let (sent, received) = (v["sent"].as_u64().unwrap(), v["received"].as_u64().unwrap());
    assert!(received < sent, "nothing was dropped: {v}");
    let (code, lines, err) = running.finish();
    assert_eq!(code, 0, "kchaos net: {lines:?} {err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report.0).unwrap()).unwrap();
    let dropped = r["faults"][0]["counters"]["egress.dropped"]
        .as_u64()
        .expect("dropped in the report");
    assert_eq!(dropped, sent - received, "{r}");

    // Stale-marked once kchaos is gone, so the last stored sample is asked for.
    let run = format!("run=\"{name}\"");
    let stored = prom.wait_for(
        &format!(
            "last_over_time(kchaos_net_packets_dropped_total{{{run},direction=\"egress\"}}[5m])"
        ),
        dropped as f64,
    );
    assert_eq!(
        stored,
        Some(dropped as f64),
        "prometheus log: {}",
        prom.log()
    );
    // The last scrape came after the fault was disarmed, and more than one scrape saw it.
    assert_eq!(
        prom.query_one(&format!("last_over_time(kchaos_fault_armed{{{run}}}[5m])")),
        Some(0.0)
    );
    assert_eq!(
        prom.query_one(&format!("max_over_time(kchaos_fault_armed{{{run}}}[5m])")),
        Some(1.0),
        "{}",
        prom.samples(&format!("kchaos_fault_armed{{{run}}}[5m]"))
    );
    let scrapes = prom
        .query_one(&format!("count_over_time(kchaos_fault_armed{{{run}}}[5m])"))
        .unwrap_or(0.0);
    // Scraped every 1 s over the 4 s fault and the 10 s linger: about 14 on an idle machine. 3 is a
    // floor, not a speed: it shows the series was scraped more than once while the run lived, and a
    // scrape a busy machine delays by seconds still lands within the 14 s.
    assert!(scrapes >= 3.0, "only {scrapes} scrapes of the run");
    assert_eq!(
        prom.query_one(&format!(
            "last_over_time(kchaos_experiment_phase{{{run},phase=\"ended\"}}[5m])"
        )),
        Some(1.0),
        "{}",
        prom.samples(&format!("kchaos_experiment_phase{{{run}}}[5m]"))
    );
    assert_eq!(runs.records(), Vec::<PathBuf>::new());
}

/// Every metric name the dashboard's queries (and variable queries) use.
fn dashboard_metrics(dashboard: &Value, out: &mut BTreeSet<String>) {
    match dashboard {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(q)) => names_in(q, out),
                    _ => dashboard_metrics(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

fn names_in(promql: &str, out: &mut BTreeSet<String>) {
    let mut rest = promql;
    while let Some(at) = rest.find("kchaos_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
}

/// The metric names in a text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../integrations/grafana/kchaos.json")
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_kchaos_serves() {
    let test = "the_grafana_dashboard_queries_only_metrics_kchaos_serves";
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let mut wanted = BTreeSet::new();
    dashboard_metrics(&dashboard, &mut wanted);
    assert!(wanted.len() >= 15, "{wanted:?}");
    for p in dashboard["panels"].as_array().expect("panels") {
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] != "row" {
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "{p}");
        }
    }
    if !root_or_skip(test) {
        return;
    }
    // A real run with every kind the dashboard shows: a net drop, a CPU stress, refused connects,
    // and a TCP probe; its /metrics read while all are armed.
    let cg = LabCgroup::create(&format!("kchaos-dash-{}", tag("g"))).unwrap();
    let probe_target = TcpListener::bind("127.0.0.1:0").unwrap();
    let scenario = TempFile::with(
        "dashboard.yaml",
        &format!(
            "title: dashboard metrics\n\
             targets:\n  - name: app\n    cgroup: {cg}\n\
             steady_state:\n  before: 500ms\n  after: 500ms\n  probes:\n    - name: port\n      \
             tcp: {probe}\n      interval: 100ms\n      timeout: 300ms\n      tolerance:\n        \
             success_rate: 50%\n        window: 2s\n\
             faults:\n  - name: loss\n    targets: [app]\n    at: 0s\n    for: 3s\n    net:\n      \
             drop: 10%\n  - name: busy\n    targets: [app]\n    at: 0s\n    for: 3s\n    stress:\n      \
             cpu: 1\n      cpu_load: 10%\n  - name: refused\n    targets: [app]\n    at: 0s\n    \
             for: 3s\n    syscall:\n      syscalls: [connect]\n      errno: ECONNREFUSED\n      \
             percent: 50%\n\
             budget:\n  max_duration: 20s\n  max_injected_events: 100000\n",
            cg = cg.path.display(),
            probe = probe_target.local_addr().unwrap(),
        ),
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let runs = RunDir::new();
    let mut running = runs.spawn(&[
        "run",
        scenario.s(),
        "--metrics",
        &metrics.to_string(),
        "--name",
        &format!("dash-{}", tag("d")),
        "--accept-risk",
    ]);
    running.wait_for("phase.during", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = http_get(&metrics.to_string(), "/metrics").expect("scraping kchaos");
    assert_eq!(status, 200, "{text}");
    let (code, lines, err) = running.finish();
    assert_eq!(code, 0, "kchaos run: {lines:#?} {err}");
    let served = exposed(&text);
    let missing: Vec<&String> = wanted.iter().filter(|m| !served.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics kchaos does not serve: {missing:?}\nserved: {served:?}"
    );
    assert_eq!(runs.records(), Vec::<PathBuf>::new());
}
