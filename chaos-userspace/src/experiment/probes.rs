//! Steady-state probes: a TCP connect, a plain-HTTP GET, a command's exit code; run every interval by
//! a worker (a thread, or a `kchaos probe-agent` child inside the target cgroup so the probe's own
//! sockets see the target's faults), and judged against a tolerance (success rate, p95 latency).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::scenario::{Check, ProbeSpec, Tolerance};
use crate::engine::lifecycle::monotonic_ns;

/// One probe attempt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub probe: String,
    /// When the attempt started (CLOCK_MONOTONIC, ns; the same clock in every process).
    pub t_ns: u64,
    pub ok: bool,
    pub latency_ms: f64,
    /// What happened: "connected", "HTTP 200", "exit 0", or the error.
    pub detail: String,
}

/// An `http://` or `https://` URL with a host: what the HTTP probe takes.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| {
        format!("'{url}' is not a URL ({e}): write http://HOST[:PORT]/PATH or https://...")
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "'{url}' is not allowed: http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH only"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{url}': no host"));
    }
    if uri.port_u16() == Some(0) {
        return Err(format!("'{url}': the port must be 1 to 65535"));
    }
    Ok(())
}

/// The certificates of a PEM file (`ca:` of an https probe): the roots its server is checked against
/// instead of Mozilla's.
pub fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = crate::bounded_read::read(path, 1 << 20, "CA file").map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("ca {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "ca {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// One HTTP client per CA file (None: Mozilla's roots), shared by the attempts of every probe.
static AGENTS: LazyLock<Mutex<HashMap<Option<PathBuf>, ureq::Agent>>> =
    LazyLock::new(Default::default);

fn agent_for(ca: Option<&Path>) -> Result<ureq::Agent, String> {
    let key = ca.map(Path::to_path_buf);
    let mut agents = AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(agent) = agents.get(&key) {
        return Ok(agent.clone());
    }
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca {
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(read_ca(path)?)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // A status is a result to judge, not an error.
        .http_status_as_error(false)
        // Every attempt connects anew: a pooled connection would not meet a partition or a
        // connect() fault.
        .max_idle_connections(0)
        // A redirect is a result too (3xx counts as healthy unless expect_status says otherwise).
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent("kchaos-probe")
        .tls_config(tls.build())
        .build()
        .into();
    agents.insert(key, agent.clone());
    Ok(agent)
}

/// Runs one attempt: (ok, what happened). Latency is measured by the caller.
fn attempt(check: &Check, timeout: Duration, stop: &AtomicBool) -> (bool, String) {
    match check {
        Check::Tcp { address } => match TcpStream::connect_timeout(address, timeout) {
            Ok(_) => (true, "connected".into()),
            Err(e) => (false, e.to_string()),
        },
        Check::Http { url, statuses, ca } => match http_get(url, ca.as_deref(), timeout) {
            Ok(status) => {
                let ok = if statuses.is_empty() {
                    (200..400).contains(&status)
                } else {
                    statuses.contains(&status)
                };
                (ok, format!("HTTP {status}"))
            }
            Err(e) => (false, e),
        },
        Check::Command {
            argv,
            exit_code,
            env,
        } => match run_command(argv, env, timeout, stop) {
            Ok(code) => (code == *exit_code, format!("exit {code}")),
            Err(e) => (false, e),
        },
    }
}

/// A GET through ureq (rustls for https), within `timeout` in all; the response's status.
fn http_get(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<u16, String> {
    let response = agent_for(ca)?
        .get(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// The detail of a command attempt stopped because the probe was: not a result, never reported.
const CANCELLED: &str = "stopped: the probe ended";

/// Runs argv with `env` added to the environment (the values of the variables it refers to), in a
/// process group of its own that is killed at the timeout, at `stop`, and when the command ends.
fn run_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<i32, String> {
    let o = super::child::run(argv, env, timeout, false, Some(stop))?;
    match o.code {
        Some(code) => Ok(code),
        None if o.cancelled => Err(CANCELLED.into()),
        None => Err(format!(
            "timed out after {}",
            crate::units::format_duration(timeout)
        )),
    }
}

/// Runs the probe every interval until `stop`, handing each result to `sink` (false from it stops).
pub fn probe_loop(spec: &ProbeSpec, stop: &AtomicBool, mut sink: impl FnMut(ProbeResult) -> bool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t_ns = monotonic_ns();
        let started = Instant::now();
        let (ok, detail) = attempt(&spec.check, spec.timeout, stop);
        if !ok && detail == CANCELLED {
            return;
        }
        let result = ProbeResult {
            probe: spec.name.clone(),
            t_ns,
            ok,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            detail,
        };
        if !sink(result) {
            return;
        }
        next += spec.interval;
        let now = Instant::now();
        if next > now {
            // Sleep in slices so a stop is seen quickly.
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
            }
        } else {
            // An attempt outlasted the interval: start the next one now, and keep the rhythm from here.
            next = now;
        }
    }
}

/// A running probe: a thread, or a `kchaos probe-agent` in a target cgroup.
pub struct Worker {
    stop: Arc<AtomicBool>,
    agent: Option<Child>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Starts probing; results go to `tx`. With `cgroup`, the probe runs in a child process placed in
    /// that cgroup (`exe probe-agent`), so its sockets are the target's.
    pub fn start(
        spec: &ProbeSpec,
        cgroup: Option<&Path>,
        exe: &Path,
        tx: tokio::sync::mpsc::UnboundedSender<ProbeResult>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        match cgroup {
            None => {
                let spec = spec.clone();
                let s = stop.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("probe {}", spec.name))
                    .spawn(move || probe_loop(&spec, &s, |r| tx.send(r).is_ok()))
                    .context("starting a probe thread")?;
                Ok(Self {
                    stop,
                    agent: None,
                    threads: vec![thread],
                })
            }
            Some(cg) => {
                let mut child = Command::new(exe)
                    .arg("probe-agent")
                    .arg("--cgroup")
                    .arg(cg)
                    .arg("--spec")
                    .arg(serde_json::to_string(spec)?)
                    // Its stdin is how it learns the run ended: EOF (we close it, or we died).
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("starting the probe agent for '{}'", spec.name))?;
                let stdout = child.stdout.take().context("the probe agent's stdout")?;
                let name = spec.name.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("agent {name}"))
                    .spawn(move || {
                        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                            match serde_json::from_str::<ProbeResult>(&line) {
                                Ok(r) => {
                                    if tx.send(r).is_err() {
                                        break;
                                    }
                                }
                                Err(e) => tracing::warn!("probe agent {name}: {e}: {line}"),
                            }
                        }
                    })
                    .context("starting a probe reader thread")?;
                Ok(Self {
                    stop,
                    agent: Some(child),
                    threads: vec![thread],
                })
            }
        }
    }

    /// Stops it and waits for it (at most one attempt's timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut child) = self.agent.take() {
            // EOF on its stdin stops it: it kills its command's process group and exits. One that
            // does not within the grace (an attempt in a network timeout) is killed.
            drop(child.stdin.take());
            let deadline = Instant::now() + super::child::GRACE + Duration::from_secs(1);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `kchaos probe-agent`: joins the cgroup, then probes and prints one JSON result a line until its
/// stdin ends (the run closed it, or kchaos died: it must not outlive the run). A command attempt
/// running then is stopped with its whole process group, so nothing it started is left behind.
pub fn agent(cgroup: &Path, spec_json: &str) -> Result<()> {
    let spec: ProbeSpec = serde_json::from_str(spec_json).context("reading the probe spec")?;
    // SAFETY: getppid has no preconditions. A parent that died already leaves us orphaned.
    if unsafe { libc::getppid() } == 1 {
        return Ok(());
    }
    crate::engine::cgroup::add_process(cgroup, std::process::id())
        .with_context(|| format!("joining {}", cgroup.display()))?;
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    std::thread::Builder::new()
        .name("agent stdin".into())
        .spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::Relaxed);
        })
        .context("starting the agent's stdin watch")?;
    let mut out = std::io::stdout().lock();
    probe_loop(&spec, stop, |r| {
        serde_json::to_string(&r)
            .ok()
            .and_then(|line| writeln!(out, "{line}").and_then(|_| out.flush()).ok())
            .is_some()
    });
    Ok(())
}

/// Success rate and latency of a set of results.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub count: usize,
    pub ok: usize,
    /// Percent.
    pub success_rate: f64,
    /// Of successful attempts, nearest rank.
    pub p95_latency_ms: Option<f64>,
    pub mean_latency_ms: Option<f64>,
}

pub fn stats<'a>(results: impl IntoIterator<Item = &'a ProbeResult>) -> Stats {
    let mut count = 0;
    let mut lat: Vec<f64> = Vec::new();
    for r in results {
        count += 1;
        if r.ok {
            lat.push(r.latency_ms);
        }
    }
    lat.sort_by(f64::total_cmp);
    let ok = lat.len();
    let p95 = (!lat.is_empty()).then(|| {
        let rank = ((0.95 * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1]
    });
    Stats {
        count,
        ok,
        success_rate: if count == 0 {
            0.0
        } else {
            100.0 * ok as f64 / count as f64
        },
        p95_latency_ms: p95,
        mean_latency_ms: (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64),
    }
}

/// Whether the stats meet the tolerance; the error says how they miss it.
pub fn judge(tol: &Tolerance, s: &Stats) -> Result<(), String> {
    if s.count == 0 {
        return Err("no result".into());
    }
    if s.success_rate + 1e-9 < tol.success_rate {
        return Err(format!(
            "success {:.1}% ({}/{}) < {}%",
            s.success_rate, s.ok, s.count, tol.success_rate
        ));
    }
    if let (Some(max), Some(p95)) = (tol.p95_latency, s.p95_latency_ms)
        && p95 > max.as_secs_f64() * 1e3
    {
        return Err(format!(
            "p95 latency {p95:.1} ms > {}",
            crate::units::format_duration(max)
        ));
    }
    Ok(())
}

/// The kchaos binary, for probe agents.
pub fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the kchaos binary (for probe agents)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn r(ok: bool, ms: f64) -> ProbeResult {
        ProbeResult {
            probe: "p".into(),
            t_ns: 0,
            ok,
            latency_ms: ms,
            detail: String::new(),
        }
    }

    #[test]
    fn stats_and_tolerance() {
        let mut v: Vec<ProbeResult> = (1..=20).map(|i| r(true, i as f64)).collect();
        let s = stats(&v);
        assert_eq!((s.count, s.ok, s.success_rate), (20, 20, 100.0));
        assert_eq!(s.p95_latency_ms, Some(19.0));
        let tol = Tolerance {
            success_rate: 90.0,
            p95_latency: Some(Duration::from_millis(20)),
            window: Duration::from_secs(1),
        };
        assert!(judge(&tol, &s).is_ok());
        v.extend([r(false, 1.0), r(false, 1.0), r(false, 1.0)]);
        assert!(
            judge(&tol, &stats(&v))
                .unwrap_err()
                .contains("success 87.0%")
        );
        let slow: Vec<ProbeResult> = (0..10).map(|_| r(true, 50.0)).collect();
        assert!(judge(&tol, &stats(&slow)).unwrap_err().contains("p95"));
        assert!(judge(&tol, &stats(&[])).is_err());
    }

    #[test]
    fn http_urls() {
        for ok in [
            "http://10.0.0.1:8080/health",
            "http://[::1]/",
            "https://db.internal/ready?full=1",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("ftp://x/", "not allowed"),
            ("http://x:0/", "port"),
            ("http://x/a b", "not a URL"),
            ("/health", "not allowed"),
        ] {
            let e = check_http_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// https through rustls against a real TLS server (openssl s_server on loopback, a certificate
    /// made here): the server's own certificate as `ca` is trusted; without it, Mozilla's roots do not
    /// know it and the attempt fails in the handshake.
    #[test]
    fn https_checks_the_server_against_the_ca_file() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            eprintln!("SKIP https_checks_the_server_against_the_ca_file: no openssl here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("kchaos-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A private CA, and the server's certificate it signs (for 127.0.0.1).
        let file = |name: &str| dir.join(name);
        std::fs::write(file("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-subj",
                "/CN=kchaos-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            &[
                "req",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
            ],
            &[
                "x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            ],
        ];
        for (i, step) in steps.iter().enumerate() {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(*step).current_dir(&dir).stderr(Stdio::null());
            if i < 2 {
                cmd.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                    .args(["-nodes", "-days", "1"]);
            } else {
                cmd.args(["-CAcreateserial", "-days", "1", "-extfile", "ext"])
                    .args(["-out", "cert.pem"]);
            }
            assert!(cmd.status().unwrap().success(), "openssl {step:?}");
        }
        let (key, cert, ca) = (file("key.pem"), file("cert.pem"), file("ca.pem"));
        // Port 0: the kernel picks a free one, which the server prints.
        let mut server = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-www",
                "-naccept",
                "2",
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let port = lines
            .find_map(|l| {
                l.ok()?
                    .strip_prefix("ACCEPT 127.0.0.1:")
                    .and_then(|p| p.trim().parse::<u16>().ok())
            })
            .expect("s_server's ACCEPT line");
        let url = format!("https://127.0.0.1:{port}/");
        let trusted = attempt(
            &Check::Http {
                url: url.clone(),
                statuses: vec![],
                ca: Some(ca),
            },
            Duration::from_secs(5),
            &AtomicBool::new(false),
        );
        let unknown = attempt(
            &Check::Http {
                url,
                statuses: vec![],
                ca: None,
            },
            Duration::from_secs(5),
            &AtomicBool::new(false),
        );
        let _ = server.kill();
        let _ = server.wait();
        let not_a_cert = read_ca(&key);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            not_a_cert
                .as_ref()
                .is_err_and(|e| e.contains("no PEM certificate")),
            "{:?}",
            not_a_cert.map(|c| c.len())
        );
        assert_eq!(trusted, (true, "HTTP 200".into()));
        assert!(
            !unknown.0 && unknown.1.contains("UnknownIssuer"),
            "{unknown:?}"
        );
    }

    #[test]
    fn real_probes_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Busy"
                };
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        let http = |path: &str| Check::Http {
            url: format!("http://{addr}{path}"),
            statuses: vec![],
            ca: None,
        };
        assert_eq!(
            attempt(
                &http("/ok"),
                Duration::from_secs(2),
                &AtomicBool::new(false)
            ),
            (true, "HTTP 200".into())
        );
        assert_eq!(
            attempt(
                &http("/no"),
                Duration::from_secs(2),
                &AtomicBool::new(false)
            ),
            (false, "HTTP 503".into())
        );
        server.join().unwrap();
        // A port bound but not listening (held, so no other process can take it meanwhile): refused.
        let (fd, closed) = bound_not_listening();
        let (ok, _) = attempt(
            &Check::Tcp { address: closed },
            Duration::from_millis(500),
            &AtomicBool::new(false),
        );
        // SAFETY: fd is the socket bound_not_listening opened, closed once here.
        unsafe { libc::close(fd) };
        assert!(!ok);
        let cmd = |s: &str| Check::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), s.into()],
            exit_code: 3,
            env: BTreeMap::new(),
        };
        assert_eq!(
            attempt(
                &cmd("exit 3"),
                Duration::from_secs(2),
                &AtomicBool::new(false)
            ),
            (true, "exit 3".into())
        );
        let start = Instant::now();
        let (ok, detail) = attempt(
            &cmd("sleep 5"),
            Duration::from_millis(200),
            &AtomicBool::new(false),
        );
        assert!(!ok && detail.contains("timed out"), "{detail}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// A TCP socket bound to a loopback port without listen(2): connects to it are refused.
    fn bound_not_listening() -> (i32, std::net::SocketAddr) {
        // SAFETY: plain socket/bind/getsockname calls on a socket this function owns; the sockaddr
        // structures are zeroed and sized as the calls expect.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&raw const sa).cast(), len), 0);
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            assert_eq!(
                libc::getsockname(fd, (&raw mut got).cast(), &mut got_len),
                0
            );
            let port = u16::from_be(got.sin_port);
            (fd, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        }
    }
}
