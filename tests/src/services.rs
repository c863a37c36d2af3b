//! Services for probes and faults to hit: TCP (or minimal HTTP) servers inside a lab's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::Lab;

/// A TCP (or, with `http`, a minimal HTTP) service on a thread inside the lab's namespace; counts the
/// connections it accepted. Stops when dropped.
pub struct Service {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Service {
    /// Listens on the lab's server address at `port`; returns once it is bound.
    pub fn start(lab: &Lab, port: u16, http: bool) -> Self {
        let addr = SocketAddr::from((lab.server_addr, port));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = lab
            .netns
            .spawn(move || {
                let listener = TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            a.fetch_add(1, Ordering::Relaxed);
                            if http {
                                let _ = conn.set_nonblocking(false);
                                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                                let mut buf = [0u8; 1024];
                                let _ = conn.read(&mut buf);
                                let _ = conn.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                                );
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
            .expect("entering the lab's namespace");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("service thread")
            .expect("binding the service");
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
