//! Targets by name: `--container NAME` and `--pid` against containers a real runtime (Podman, from
//! Debian's registry, running an image built here from busybox-static) started on a network this
//! test made, and `--pod NAMESPACE/NAME --container NAME` sparing a sidecar that shares the pod's
//! network namespace (kubelet's layout made by the test: cgroups under the cgroup2 mount, pod log
//! directories in a temp dir).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use integration_tests::{
    RunDir, StopAll, TempDir, TempFile, in_vm, lab, root_or_skip, skb_programs_in_tree, skip, tag,
    traffic,
};
use lab::{EchoServer, Lab, LabCgroup};

/// Datagrams per measurement: at 30 % the standard deviation of the loss is 0.32 pp, so 30 ± 2 pp is
/// over 6 sigma.
const PACKETS: u64 = 20_000;

/// Datagrams per second to an echo on the host (through the runtime's bridge and firewall): at 20000/s
/// a busy 2-core host loses some with no fault (the echo's socket overflows while it waits for a core);
/// the VM's own rate under emulation.
fn rate() -> &'static str {
    if in_vm() {
        integration_tests::udp_rate()
    } else {
        "5000"
    }
}

fn podman(args: &[&str]) -> Result<String, String> {
    let out = Command::new("podman")
        .arg("--log-level=error")
        // For every command alike (run, restart, rm): with cgroupfs a container's --cgroup-parent is
        // a plain path under the cgroup2 root, one the test made.
        .args(["--cgroup-manager", "cgroupfs"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("podman {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Podman and runc (crun refuses hybrid cgroup hosts), installed from Debian's registry when
/// missing; Err says why they cannot be had here.
fn install_podman() -> Result<(), String> {
    if have("podman") && have("runc") && Path::new("/bin/busybox").exists() {
        return Ok(());
    }
    if in_vm() {
        return Err("podman is not in the VM image (and the VM has no package registry)".into());
    }
    if !have("apt-get") {
        return Err("podman is not installed and there is no apt-get to install it".into());
    }
    let out = Command::new("timeout")
        .args([
            "600",
            "apt-get",
            "install",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=300",
            "-o",
            "Acquire::Retries=0",
            "podman",
            "runc",
            "busybox-static",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !out.status.success() || !have("podman") || !have("runc") {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "installing podman from apt failed: {}",
            err.lines().last().unwrap_or("no message")
        ));
    }
    Ok(())
}

/// What the test made with podman: an image, a network, containers, and the cgroup they live under.
/// Removed on drop, also when an assertion failed.
struct Pod {
    image: String,
    network: String,
    containers: Vec<String>,
    /// The containers' `--cgroup-parent`: without one, Podman's cgroupfs manager makes
    /// `libpod_parent` at the cgroup2 root and never removes it. Dropped (removed) after the
    /// containers, as the last field.
    parent: LabCgroup,
}

impl Drop for Pod {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "0", c]);
        }
        let _ = podman(&["network", "rm", "-f", &self.network]);
        let _ = podman(&["rmi", "-f", &self.image]);
        remove_v1_twins(&self.parent.path);
    }
}

/// On a hybrid host (cgroup v1 controllers beside the v2 mount), Podman's cgroupfs manager makes the
/// containers' `--cgroup-parent` in every v1 hierarchy too, and `rm` leaves those behind. Removes the
/// ones named like `parent` (ours alone: the name is the test's own).
fn remove_v1_twins(parent: &Path) {
    let Ok(mount) = chaos_userspace::engine::cgroup::v2_mount() else {
        return;
    };
    let Ok(rel) = parent.strip_prefix(&mount) else {
        return;
    };
    for hierarchy in chaos_userspace::kinds::stress::hybrid::v1_mount_points() {
        let twin = hierarchy.join(rel);
        if let Err(e) = chaos_userspace::engine::journal::remove_cgroup(&twin) {
            eprintln!("containers: could not remove {}: {e}", twin.display());
        }
    }
}

/// An image of busybox-static alone, imported from a tarball made here (no registry is reachable).
fn build_image(made: &mut Pod) -> Result<(), String> {
    let root = TempDir::new("podman-rootfs");
    let bin = root.0.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| format!("busybox: {e}"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    let tarball = root.0.join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(root.0.join("rootfs"))
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("tar of the rootfs failed".into());
    }
    podman(&["import", &tarball.display().to_string(), &made.image])?;
    Ok(())
}

/// A running container: its name, main pid, cgroup (v2) and network namespace.
struct Container {
    name: String,
    pid: u32,
    cgroup: PathBuf,
    netns: PathBuf,
}

fn run_container(made: &mut Pod, name: &str) -> Result<Container, String> {
    made.containers.push(name.to_owned());
    let parent = format!(
        "/{}",
        made.parent.path.file_name().unwrap().to_string_lossy()
    );
    podman(&[
        "--runtime",
        "runc",
        "run",
        "-d",
        "--name",
        name,
        "--cgroup-parent",
        &parent,
        "--network",
        &made.network,
        // Podman asks for the host's maximum; a sandboxed host may refuse raising it.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &made.image,
        "/bin/sleep",
        "3600",
    ])?;
    let pid: u32 = podman(&["inspect", "-f", "{{.State.Pid}}", name])?
        .parse()
        .map_err(|e| format!("pid of {name}: {e}"))?;
    let rel = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| e.to_string())?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .ok_or_else(|| format!("{name} has no cgroup v2"))?;
    let mount = chaos_userspace::engine::cgroup::v2_mount().map_err(|e| e.to_string())?;
    let cgroup = mount.join(rel.trim_start_matches('/'));
    if cgroup == mount || !rel.contains(&podman(&["inspect", "-f", "{{.Id}}", name])?) {
        return Err(format!(
            "podman put {name} in cgroup v2 {rel}, not one of its own: kchaos cannot single it out here"
        ));
    }
    Ok(Container {
        name: name.to_owned(),
        pid,
        netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        cgroup,
    })
}

/// Podman, an image, a network and two containers on it; Err says why they cannot be had here.
fn podman_lab(t: &str) -> Result<(Pod, Container, Container, IpAddr), String> {
    install_podman()?;
    let mut made = Pod {
        image: format!("localhost/kchaos-test-{t}:latest"),
        network: format!("kchaos-{t}"),
        containers: Vec::new(),
        parent: LabCgroup::create(&format!("kchaos-podman-{t}"))
            .map_err(|e| format!("a cgroup for the containers: {e}"))?,
    };
    build_image(&mut made)?;
    podman(&["network", "create", &made.network])?;
    let gateway: IpAddr = podman(&[
        "network",
        "inspect",
        "-f",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
        &made.network,
    ])?
    .parse()
    .map_err(|e| format!("the network's gateway: {e}"))?;
    let a = run_container(&mut made, &format!("kchaos-{t}-a"))?;
    let b = run_container(&mut made, &format!("kchaos-{t}-b"))?;
    Ok((made, a, b, gateway))
}

/// Loss in percent of `PACKETS` UDP datagrams a container sends to the echo at `to` (the container's
/// own traffic: from its cgroup and its network namespace).
fn loss_of(c: &Container, to: SocketAddr) -> (f64, u64, u64) {
    let (sent, received) = echoes(&c.cgroup, &c.netns, to);
    (
        100.0 * (sent - received) as f64 / sent as f64,
        sent,
        received,
    )
}

/// `PACKETS` datagrams at `rate()` from inside `cgroup` and `netns` to the echo at `to`: (sent,
/// echoes received).
fn echoes(cgroup: &Path, netns: &Path, to: SocketAddr) -> (u64, u64) {
    let v = traffic(
        Some(cgroup),
        Some(netns),
        &[
            "udp-echo",
            "--to",
            &to.to_string(),
            "--count",
            &PACKETS.to_string(),
            "--rate",
            rate(),
        ],
    );
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no '{k}' in {v}"));
    (n("sent"), n("received"))
}

/// A new container's first datagrams are lost while its bridge port and neighbour entries settle:
/// sends a few until every one comes back (up to 10 s).
fn warm_up(c: &Container, to: SocketAddr) {
    for _ in 0..50 {
        let v = traffic(
            Some(&c.cgroup),
            Some(&c.netns),
            &[
                "udp-echo",
                "--to",
                &to.to_string(),
                "--count",
                "100",
                "--rate",
                "1000",
            ],
        );
        if v["received"] == 100 {
            return;
        }
    }
    panic!(
        "{}: the echo on the bridge never answered all of 100 datagrams",
        c.name
    );
}

fn drop_30_hits_one_container(
    runs: &RunDir,
    target: &[&str],
    a: &Container,
    b: &Container,
    to: SocketAddr,
) {
    let report = TempFile::new("containers.json");
    let mut args = vec!["net"];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--drop", "30", "--json", report.s(), "--quiet"]);
    let _stop = StopAll(runs);
    let running = runs.start(&args);
    let (loss_a, sent_a, got_a) = loss_of(a, to);
    let (loss_b, sent_b, got_b) = loss_of(b, to);
    let (code, lines) = running.terminate();
    println!(
        "{target:?}: {} sent {sent_a} received {got_a} loss {loss_a:.2}%; {} sent {sent_b} received {got_b} loss {loss_b:.2}%",
        a.name, b.name
    );
    assert_eq!(code, 143, "kchaos net output: {lines:?}");
    // Each datagram is dropped on its own draw (the echoes are not faulted, and a container on
    // the host loses nothing else): the loss is binomial.
    integration_tests::stats::assert_binomial(
        &format!("{}: datagrams lost", a.name),
        sent_a - got_a,
        sent_a,
        0.3,
    );
    assert_eq!(got_b, sent_b, "{} (not targeted) lost packets", b.name);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.0).expect("report")).expect("json");
    assert_eq!(
        v["targets"][0]["path"].as_str(),
        Some(a.cgroup.to_str().unwrap()),
        "the report names the container's cgroup: {v}"
    );
    assert_eq!(
        skb_programs_in_tree(&a.cgroup),
        0,
        "a program is left on {}",
        a.name
    );
}

#[test]
fn drop_by_container_name_and_by_pid_hits_that_container_alone() {
    const NAME: &str = "drop_by_container_name_and_by_pid_hits_that_container_alone";
    if !root_or_skip(NAME) {
        return;
    }
    let t = tag("c");
    let (_made, a, b, gateway) = match podman_lab(&t) {
        Ok(lab) => lab,
        Err(why) => return skip(NAME, &why),
    };
    let port = std::net::UdpSocket::bind((gateway, 0))
        .and_then(|s| s.local_addr())
        .expect("a free port on the bridge")
        .port();
    let to = SocketAddr::new(gateway, port);
    let _echo = EchoServer::start_in(None, to).expect("an echo on the bridge");
    warm_up(&a, to);
    warm_up(&b, to);
    // Without a fault, nothing is lost (so what is lost below is the fault's).
    for c in [&a, &b] {
        let (loss, ..) = loss_of(c, to);
        assert_eq!(loss, 0.0, "{} loses packets with no fault", c.name);
    }

    let runs = RunDir::new();
    drop_30_hits_one_container(&runs, &["--container", &a.name], &a, &b, to);
    let pid = a.pid.to_string();
    drop_30_hits_one_container(&runs, &["--pid", &pid], &a, &b, to);
    // An id prefix, as podman ps shows it.
    let id = podman(&["inspect", "-f", "{{.Id}}", &a.name]).unwrap();
    drop_30_hits_one_container(&runs, &["--container", &id[..12]], &a, &b, to);

    // A name no runtime knows: refused, listing what is there.
    let out = runs.run(&["net", "--container", "kchaos-no-such", "--drop", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--container kchaos-no-such: no container of that name or id; known here:")
            && err.contains(&format!("{} (podman/cri-o", a.name)),
        "{err}"
    );

    // A restart gives the container a new cgroup (here at the same path, with a new id): the run
    // does not follow it, it ends at once saying its target is gone.
    let running = runs.start(&[
        "net",
        "--container",
        &a.name,
        "--drop",
        "30",
        "--duration",
        "60s",
        "--quiet",
    ]);
    let restarted = std::time::Instant::now();
    podman(&["restart", "-t", "0", &a.name]).expect("podman restart");
    let (code, lines, stderr) = running.finish();
    let took = restarted.elapsed();
    let all = format!("{}\n{stderr}", lines.join("\n"));
    println!("after the restart kchaos ended in {took:?} with {code}: {all}");
    assert_ne!(code, 0, "{all}");
    assert!(
        all.contains("is gone") && all.contains("does not follow"),
        "{all}"
    );
    assert!(
        took.as_secs() < 15,
        "the run went on {took:?} after its target went"
    );
}

const APP: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const SIDECAR: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";

#[test]
fn pod_container_drop_spares_its_sidecar_in_the_same_netns() {
    const NAME: &str = "pod_container_drop_spares_its_sidecar_in_the_same_netns";
    if !root_or_skip(NAME) {
        return;
    }
    let lab = Lab::create(&tag("p")).unwrap();
    // kubelet's systemd layout (burstable), under the lab's cgroup so it goes with the lab.
    let uid = format!("c0ffee00-0000-4000-8000-{:012x}", std::process::id());
    let pod_cg = lab.cgroup.path.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    let app = pod_cg.join(format!("cri-containerd-{APP}.scope"));
    let sidecar = pod_cg.join(format!("cri-containerd-{SIDECAR}.scope"));
    for d in [&app, &sidecar] {
        std::fs::create_dir_all(d).unwrap();
    }
    // kubelet's pod log directory and container links, in a stand-in for /.
    let state = TempDir::new("pod-state");
    for c in ["app", "sidecar"] {
        std::fs::create_dir_all(
            state
                .0
                .join(format!("var/log/pods/kchaos-test_web-0_{uid}/{c}")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(state.0.join("var/log/containers")).unwrap();
    for (c, id) in [("app", APP), ("sidecar", SIDECAR)] {
        std::fs::write(
            state
                .0
                .join(format!("var/log/containers/web-0_kchaos-test_{c}-{id}.log")),
            "",
        )
        .unwrap();
    }
    // Both containers in the lab's namespace (the pod's), talking to an echo on the host side.
    let to = SocketAddr::from((lab.host_addr, 7000));
    let _echo = EchoServer::start_in(None, to).unwrap();
    let netns = lab.netns.path();
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let running = runs.start_env(
        &[
            "net",
            "--pod",
            "kchaos-test/web-0",
            "--container",
            "app",
            "--drop",
            "30",
            "--quiet",
        ],
        &[("KCHAOS_STATE_ROOT", state.0.to_str().unwrap())],
    );
    let (sent_a, got_a) = echoes(&app, &netns, to);
    let (sent_s, got_s) = echoes(&sidecar, &netns, to);
    let (code, lines) = running.terminate();
    let loss = 100.0 * (sent_a - got_a) as f64 / sent_a as f64;
    println!(
        "app: sent {sent_a} received {got_a} loss {loss:.2}%; sidecar: sent {sent_s} received {got_s}"
    );
    assert_eq!(code, 143, "{lines:?}");
    // Binomial, as in `drop_30_hits_one_container` above.
    integration_tests::stats::assert_binomial("app: datagrams lost", sent_a - got_a, sent_a, 0.3);
    assert_eq!(got_s, sent_s, "the sidecar lost packets");
    assert_eq!(skb_programs_in_tree(&lab.cgroup.path), 0);

    // A container the pod does not have: refused, naming the ones it has.
    let out = Command::new(integration_tests::kchaos())
        .args([
            "net",
            "--pod",
            "kchaos-test/web-0",
            "--container",
            "proxy",
            "--drop",
            "5",
        ])
        .env("KCHAOS_STATE_ROOT", &state.0)
        .env("KCHAOS_RUN_DIR", &runs.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("its containers: app, sidecar"), "{err}");
}
