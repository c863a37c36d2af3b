//! `kchaos traffic syscalls`: calls one operation N times from inside the target and reports the errno
//! each call saw. Raw libc calls, so what is counted is exactly what the kernel returned.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

fn errno_of(rc: libc::c_long) -> Option<i32> {
    (rc < 0).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn sockaddr_v4(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

const SA_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn cstr(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_encoded_bytes())?)
}

/// Runs `op` `count` times; returns {"op","calls","ok","errnos":{errno:n},"error_at":[i...]}.
/// `join` moves the process into the target: called after the operation's files exist (so a fault on
/// their directory can't refuse the set-up) but before any socket is made (cgroup hooks go by the
/// socket's cgroup, fixed when it is created).
pub fn run(
    op: &str,
    count: u64,
    dir: Option<&Path>,
    join: &dyn Fn() -> Result<()>,
) -> Result<serde_json::Value> {
    let scratch: PathBuf = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir(),
    };
    let file = scratch.join(format!("kchaos-syscalls-{}", std::process::id()));
    let file_op = matches!(op, "open" | "read" | "write" | "fsync" | "mmap");
    if !file_op {
        join()?;
    }
    let call = prepare(op, &file)?;
    if file_op {
        join()?;
    }
    let mut errnos: BTreeMap<i32, u64> = BTreeMap::new();
    let mut error_at = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..count {
        if let Some(e) = call(i) {
            *errnos.entry(e).or_default() += 1;
            error_at.push(i);
        }
    }
    let ns_per_call = start.elapsed().as_nanos() as f64 / count.max(1) as f64;
    let _ = std::fs::remove_file(&file);
    let ok = count - error_at.len() as u64;
    Ok(
        serde_json::json!({"op": op, "calls": count, "ok": ok, "errnos": errnos, "error_at": error_at, "ns_per_call": ns_per_call}),
    )
}

type Call = Box<dyn Fn(u64) -> Option<i32>>;

/// Sets up what the operation needs (a listener, a file) and returns one call of it.
fn prepare(op: &str, file: &Path) -> Result<Call> {
    // SAFETY (all closures below): plain syscalls on fds and buffers this function owns.
    Ok(match op {
        // connect() on a UDP socket: the same syscall and the same hooks (cgroup connect4, LSM
        // socket_connect) as TCP, without a handshake, so 20k calls take milliseconds.
        "connect" => {
            let peer = UdpSocket::bind("127.0.0.1:0")?;
            let port = peer.local_addr()?.port();
            Box::new(move |_| unsafe {
                let _keep = &peer;
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let addr = sockaddr_v4(port);
                let rc = libc::connect(s, (&addr as *const libc::sockaddr_in).cast(), SA_LEN);
                let e = errno_of(rc as libc::c_long);
                libc::close(s);
                e
            })
        }
        "bind" => Box::new(|_| unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let addr = sockaddr_v4(0);
            let e = errno_of(
                libc::bind(s, (&addr as *const libc::sockaddr_in).cast(), SA_LEN) as libc::c_long,
            );
            libc::close(s);
            e
        }),
        "socket" => Box::new(|_| unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if s >= 0 {
                libc::close(s);
            }
            errno_of(s as libc::c_long)
        }),
        "sendmsg" => {
            let sink = UdpSocket::bind("127.0.0.1:0")?;
            let port = sink.local_addr()?.port();
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            Box::new(move |_| unsafe {
                let _keep = &sink;
                let addr = sockaddr_v4(port);
                let rc = libc::sendto(
                    sock.as_raw_fd(),
                    b"x".as_ptr().cast(),
                    1,
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    SA_LEN,
                );
                errno_of(rc as libc::c_long)
            })
        }
        "recvmsg" => {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            sock.connect(sock.local_addr()?)?;
            Box::new(move |_| unsafe {
                let _ = sock.send(b"x");
                let mut b = [0u8; 8];
                errno_of(libc::recv(
                    sock.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    8,
                    libc::MSG_DONTWAIT,
                ) as libc::c_long)
            })
        }
        "open" | "read" | "write" | "fsync" | "mmap" => {
            std::fs::write(file, b"kchaos")
                .with_context(|| format!("creating {}", file.display()))?;
            let path = cstr(file)?;
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
            if fd < 0 {
                bail!("opening {}: {}", file.display(), io::Error::last_os_error());
            }
            let op = op.to_owned();
            Box::new(move |_| unsafe {
                let mut b = [0u8; 1];
                let rc: libc::c_long = match op.as_str() {
                    "open" => {
                        let f = libc::open(path.as_ptr(), libc::O_RDONLY);
                        if f >= 0 {
                            libc::close(f);
                        }
                        f as libc::c_long
                    }
                    "read" => libc::pread(fd, b.as_mut_ptr().cast(), 1, 0) as libc::c_long,
                    "write" => libc::pwrite(fd, b"k".as_ptr().cast(), 1, 0) as libc::c_long,
                    "fsync" => libc::fsync(fd) as libc::c_long,
                    _ => {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            4096,
                            libc::PROT_READ,
                            libc::MAP_SHARED,
                            fd,
                            0,
                        );
                        if p == libc::MAP_FAILED {
                            -1
                        } else {
                            libc::munmap(p, 4096);
                            0
                        }
                    }
                };
                errno_of(rc)
            })
        }
        "mkdir" | "unlink" | "rename" => {
            let base = file.to_path_buf();
            let op = op.to_owned();
            Box::new(move |i| unsafe {
                let a = cstr(&base.with_extension(format!("a{i}"))).unwrap_or_default();
                let b = cstr(&base.with_extension(format!("b{i}"))).unwrap_or_default();
                match op.as_str() {
                    "mkdir" => {
                        let e = errno_of(libc::mkdir(a.as_ptr(), 0o700) as libc::c_long);
                        libc::rmdir(a.as_ptr());
                        e
                    }
                    _ => {
                        let f = libc::open(a.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                        if f >= 0 {
                            libc::close(f);
                        }
                        let e = if op == "unlink" {
                            errno_of(libc::unlink(a.as_ptr()) as libc::c_long)
                        } else {
                            let e = errno_of(libc::rename(a.as_ptr(), b.as_ptr()) as libc::c_long);
                            libc::unlink(b.as_ptr());
                            e
                        };
                        libc::unlink(a.as_ptr());
                        e
                    }
                }
            })
        }
        "fork" => Box::new(|_| unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            if pid > 0 {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            errno_of(pid as libc::c_long)
        }),
        other => bail!(
            "unknown operation '{other}': connect, bind, socket, sendmsg, recvmsg, open, read, write, fsync, mmap, mkdir, unlink, rename, fork"
        ),
    })
}
