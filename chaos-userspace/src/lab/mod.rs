//! A throwaway network lab: a server namespace joined to this one by a veth pair, and a target cgroup.
//! Everything it makes is removed when it is dropped (also after a panic); traffic stays inside it.

pub mod demo;
pub mod syscall_helper;
pub mod traffic;

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::engine::{cgroup, journal};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    crate::engine::netns::run_checked(Command::new("ip").args(args)).map(|_| ())
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that lives in this namespace; sockets it makes belong here.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<io::Result<T>>> {
        let file = fs::File::open(self.path())?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of every veth pair, and so the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A cgroup made for a lab or test, removed (with anything still in it) on drop.
pub struct LabCgroup {
    pub path: PathBuf,
}

impl LabCgroup {
    pub fn create(name: &str) -> io::Result<Self> {
        let path = cgroup::v2_mount()?.join(name);
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// A child cgroup, removed with this one.
    pub fn child(&self, name: &str) -> io::Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir(&p)?;
        Ok(p)
    }
}

impl Drop for LabCgroup {
    fn drop(&mut self) {
        if let Err(e) = journal::remove_cgroup(&self.path) {
            eprintln!("lab: could not remove {}: {e}", self.path.display());
        }
    }
}

/// A UDP echo server in a namespace; counts what it received. Stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<io::Result<()>>>>,
}

impl EchoServer {
    /// Starts it in the namespace `ns`, or in this process's own when `None`.
    pub fn start_in(ns: Option<&Netns>, addr: SocketAddr) -> io::Result<Self> {
        match ns {
            Some(ns) => Self::start(ns, addr),
            None => Self::start_with(|f| Ok(std::thread::spawn(move || Ok(f()))), addr),
        }
    }

    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<Self> {
        Self::start_with(|f| ns.spawn(f), addr)
    }

    fn start_with(
        spawn: impl FnOnce(
            Box<dyn FnOnce() -> io::Result<()> + Send>,
        ) -> io::Result<JoinHandle<io::Result<io::Result<()>>>>,
        addr: SocketAddr,
    ) -> io::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, s) = (received.clone(), stop.clone());
        let thread = spawn(Box::new(move || -> io::Result<()> {
            let sock = match UdpSocket::bind(addr) {
                Ok(sock) => sock,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            // A large receive buffer, so a busy host's scheduling delays don't lose datagrams that a
            // test then counts as the fault's.
            let size: libc::c_int = 8 << 20;
            // SAFETY: setsockopt with a valid int option value on our own socket.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let _ = tx.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    r.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
            Ok(())
        }))?;
        rx.recv()
            .map_err(|_| io::Error::other("echo server thread died"))??;
        Ok(Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The standard lab: namespace `<name>` with addresses .2 and .3 on a veth to this namespace (.1), in
/// 10.254.<subnet>.0/24, and a target cgroup `<name>`.
pub struct Lab {
    pub name: String,
    pub host_addr: Ipv4Addr,
    pub server_addr: Ipv4Addr,
    pub alt_addr: Ipv4Addr,
    pub host_if: String,
    // Field order is drop order: the cgroup (and its processes) go before the namespace.
    pub cgroup: LabCgroup,
    pub netns: Netns,
}

impl Lab {
    /// Makes the lab. `tag` (a few characters) keeps device names unique and under 15 characters.
    pub fn create(tag: &str) -> io::Result<Self> {
        let subnet = free_subnet()?;
        let name = format!("kchaos-lab-{tag}");
        let netns = Netns::create(&name)?;
        let host_if = format!("kc{tag}h");
        let ns_if = format!("kc{tag}n");
        let cgroup = LabCgroup::create(&name)?;
        let lab = Self {
            host_addr: Ipv4Addr::new(10, 254, subnet, 1),
            server_addr: Ipv4Addr::new(10, 254, subnet, 2),
            alt_addr: Ipv4Addr::new(10, 254, subnet, 3),
            host_if: host_if.clone(),
            name,
            cgroup,
            netns,
        };
        ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            &lab.netns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.host_addr),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        let n = lab.netns.name.clone();
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{}/24", lab.server_addr),
            "dev",
            &ns_if,
        ])?;
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{}/24", lab.alt_addr),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &n, "link", "set", &ns_if, "up"])?;
        Ok(lab)
    }
}

impl Lab {
    /// Adds IPv6 to the veth (no duplicate address detection, so the addresses work at once):
    /// (this namespace's end, the lab namespace's end) in fd00:254:<subnet>::/64.
    pub fn add_ipv6(&self) -> io::Result<(Ipv6Addr, Ipv6Addr)> {
        let subnet = u16::from(self.host_addr.octets()[2]);
        let host = Ipv6Addr::new(0xfd00, 0x254, subnet, 0, 0, 0, 0, 1);
        let server = Ipv6Addr::new(0xfd00, 0x254, subnet, 0, 0, 0, 0, 2);
        // The pair is named kc<tag>h here and kc<tag>n there.
        let stem = self.host_if.strip_suffix('h').unwrap_or(&self.host_if);
        let ns_if = format!("{stem}n");
        ip(&[
            "addr",
            "add",
            &format!("{host}/64"),
            "dev",
            &self.host_if,
            "nodad",
        ])?;
        ip(&[
            "-n",
            &self.netns.name,
            "addr",
            "add",
            &format!("{server}/64"),
            "dev",
            &ns_if,
            "nodad",
        ])?;
        Ok((host, server))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespace's drop takes the veth pair with it; this covers a half-made pair.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A 10.254.x.0/24 no device on this host uses yet.
fn free_subnet() -> io::Result<u8> {
    let out =
        crate::engine::netns::run_checked(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|i| 10 + (start + i) % 200)
        .find(|s| !used.contains(&format!("10.254.{s}.")))
        .ok_or_else(|| io::Error::other("no free 10.254.x.0/24 subnet for a lab"))
}
