//! Route netlink (rtnetlink): the links of a network namespace and their qdiscs, read and changed
//! with netlink messages instead of running `ip`/`tc` and parsing their text.
//!
//! The messages are netlink-packet-route's types on a blocking netlink-sys socket, not the
//! `rtnetlink` crate: that one is built on tokio's async sockets, while every caller here is
//! synchronous (planning, installing and restoring fq, the `kchaos probe` checks, restoring from
//! `Drop`), and one request followed by reading its replies is all they need.
//!
//! A netlink socket talks to the network namespace it was created in, whichever thread uses it
//! afterwards. So the socket of another namespace is made on a short-lived thread that entered it
//! (setns), and a scratch namespace is one a short-lived thread unshared: nothing but the socket
//! holds it, so it vanishes when the socket is closed.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    thread,
};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator, parse_string,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::{
    errno::Errno,
    sched::{CloneFlags, setns, unshare},
};

/// The length of a netlink message header (struct nlmsghdr).
const NLMSG_HDRLEN: usize = 16;
/// The extended-ack attribute holding the kernel's explanation of an error (NLMSGERR_ATTR_MSG).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// fq's attributes inside TCA_OPTIONS (include/uapi/linux/pkt_sched.h): netlink-packet-route has
/// types for a few qdiscs' options only, and fq is not among them.
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
/// clsact's handle, `ffff:` (TC_H_MAKE(TC_H_CLSACT, 0)), as tc sends it.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// How many times a dump is asked again when the kernel says the set changed while it was dumped.
const DUMP_TRIES: usize = 3;

/// A failed netlink exchange: what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("opening the network namespace {}: {source}", path.display())]
    OpenNetns { path: PathBuf, source: io::Error },
    #[error("entering the network namespace {}: {source}", path.display())]
    EnterNetns { path: PathBuf, source: Errno },
    #[error("making a scratch network namespace: {0}")]
    ScratchNetns(Errno),
    #[error("starting a thread to enter a network namespace: {0}")]
    Thread(io::Error),
    #[error("the thread entering a network namespace panicked")]
    ThreadPanicked,
    #[error("opening a route netlink socket: {0}")]
    Socket(io::Error),
    #[error("{doing}: {source}")]
    Io { doing: String, source: io::Error },
    #[error("{doing}: {refusal}")]
    Kernel { doing: String, refusal: Refusal },
    #[error("{doing}: the kernel's reply could not be decoded: {why}")]
    Decode { doing: String, why: String },
}

impl RtnlError {
    /// The errno the kernel refused the request with, if it did.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            RtnlError::Kernel { refusal, .. } => Some(refusal.errno),
            _ => None,
        }
    }
}

/// The kernel's "no" to a request: its errno, its own words when it gave some (extended ack), and
/// a hint of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errno: Errno,
    pub message: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{message} ({:?})", self.errno)?,
            None => write!(f, "{} ({:?})", self.errno.desc(), self.errno)?,
        }
        match &self.hint {
            Some(hint) => write!(f, "; {hint}"),
            None => Ok(()),
        }
    }
}

/// A network device, as RTM_GETLINK tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub loopback: bool,
    /// The ifindex of the other end of a veth pair (IFLA_LINK) when that end is in another network
    /// namespace (IFLA_LINK_NETNSID): the device that carries this one's traffic there.
    pub peer_elsewhere: Option<u32>,
}

/// A device's qdisc: its kind ("fq", "noqueue", ...) and handle (major << 16 | minor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
}

/// fq's queue limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqLimits {
    /// Packets in the whole qdisc (TCA_FQ_PLIMIT, tc's `limit`).
    pub limit: u32,
    /// Packets in one flow (TCA_FQ_FLOW_PLIMIT, tc's `flow_limit`).
    pub flow_limit: u32,
}

/// A route netlink socket in one network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    /// The datagram being read and where its next message starts: a datagram holds several.
    received: Vec<u8>,
    read: usize,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn here() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        socket.bind_auto().map_err(RtnlError::Socket)?;
        // Errors come back with the kernel's own words (extended ack, 4.12+) after only the
        // header of the request (cap ack). Kernels without them still send the errno, so the
        // options are a nicety and their failure is not one.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self {
            socket,
            seq: 0,
            received: Vec::new(),
            read: 0,
        })
    }

    /// A socket in the network namespace at `ns_path` (/proc/PID/ns/net, /run/netns/NAME).
    pub fn in_netns(ns_path: &Path) -> Result<Self, RtnlError> {
        let ns = fs::File::open(ns_path).map_err(|source| RtnlError::OpenNetns {
            path: ns_path.to_owned(),
            source,
        })?;
        let path = ns_path.to_owned();
        // setns on a thread of its own: the namespace of the thread that asked is never changed.
        on_own_thread(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|source| RtnlError::EnterNetns { path, source })
        })
    }

    /// A socket in a new, empty network namespace (only `lo`, down) that vanishes when the socket
    /// is dropped: a place to try a qdisc without touching any real device.
    pub fn in_scratch_netns() -> Result<Self, RtnlError> {
        on_own_thread(|| unshare(CloneFlags::CLONE_NEWNET).map_err(RtnlError::ScratchNetns))
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let doing = "listing the network devices";
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), doing)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .map(|link| Link {
                index: link.header.index,
                name: link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                up: link.header.flags.contains(LinkFlags::Up),
                loopback: link.header.flags.contains(LinkFlags::Loopback),
                peer_elsewhere: link
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)))
                    .then(|| {
                        link.attributes.iter().find_map(|a| match a {
                            LinkAttribute::Link(i) => Some(*i),
                            _ => None,
                        })
                    })
                    .flatten(),
            })
            .collect())
    }

    /// The loopback device: every namespace has one, and it is all a scratch namespace has.
    pub fn loopback(&mut self) -> Result<Link, RtnlError> {
        self.links()?
            .into_iter()
            .find(|l| l.loopback)
            .ok_or_else(|| RtnlError::Io {
                doing: "finding the loopback device".into(),
                source: io::Error::other("the network namespace has none"),
            })
    }

    /// The link named `name`, if the namespace has one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, RtnlError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// The root qdisc of `link`; None when the kernel shows none (a device that is down has the
    /// built-in noop, which dumps leave out).
    pub fn root_qdisc(&mut self, link: &Link) -> Result<Option<Qdisc>, RtnlError> {
        let doing = format!("reading the root qdisc of {}", link.name);
        // The kernel dumps the qdiscs of every device whatever tcm_ifindex says (unless the
        // socket asks for strict checking): the filter is ours.
        let index = ifindex(link)?;
        let replies = self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index)),
            &doing,
        )?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.header.index == index && q.header.parent == TcHandle::ROOT =>
            {
                Some(Qdisc {
                    kind: q.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(kind) => Some(kind.clone()),
                        _ => None,
                    })?,
                    handle: q.header.handle.into(),
                })
            }
            _ => None,
        }))
    }

    /// Makes fq with `handle` the root qdisc of `link`, replacing what is there.
    pub fn replace_root_fq(
        &mut self,
        link: &Link,
        handle: u32,
        limits: FqLimits,
    ) -> Result<(), RtnlError> {
        self.qdisc_request(
            RouteNetlinkMessage::NewQueueDiscipline(fq_message(link, handle, limits)?),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("replacing the root qdisc of {} with fq", link.name),
            Some("fq"),
        )
    }

    /// Deletes the root qdisc of `link` if its handle is `handle` (the kernel checks, so a qdisc
    /// someone put there meanwhile is left alone: EINVAL); the device's default comes back.
    pub fn delete_root_qdisc(&mut self, link: &Link, handle: u32) -> Result<(), RtnlError> {
        self.qdisc_request(
            RouteNetlinkMessage::DelQueueDiscipline(TcMessage::from_parts(
                tc_header(link, handle, TcHandle::ROOT)?,
                Vec::new(),
            )),
            0,
            format!("deleting the root qdisc of {}", link.name),
            None,
        )
    }

    /// Adds a clsact qdisc to `link` (fails with EEXIST when it has one).
    pub fn add_clsact(&mut self, link: &Link) -> Result<(), RtnlError> {
        self.qdisc_request(
            RouteNetlinkMessage::NewQueueDiscipline(TcMessage::from_parts(
                tc_header(link, CLSACT_HANDLE, TcHandle::CLSACT)?,
                vec![TcAttribute::Kind("clsact".into())],
            )),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding a clsact qdisc to {}", link.name),
            Some("clsact"),
        )
    }

    /// Deletes the clsact qdisc of `link`.
    pub fn delete_clsact(&mut self, link: &Link) -> Result<(), RtnlError> {
        self.qdisc_request(
            RouteNetlinkMessage::DelQueueDiscipline(TcMessage::from_parts(
                tc_header(link, CLSACT_HANDLE, TcHandle::CLSACT)?,
                Vec::new(),
            )),
            0,
            format!("deleting the clsact qdisc of {}", link.name),
            None,
        )
    }

    /// Sends a qdisc change and waits for the kernel's verdict. `kind` names the qdisc a refusal
    /// may mean is missing from the kernel.
    fn qdisc_request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        doing: String,
        kind: Option<&str>,
    ) -> Result<(), RtnlError> {
        self.request(message, flags, &doing).map_err(|e| match e {
            // The kernel answers an unknown kind with ENOENT ("Specified qdisc kind is unknown"),
            // a kind that cannot go there with EOPNOTSUPP.
            RtnlError::Kernel { doing, mut refusal }
                if matches!(refusal.errno, Errno::ENOENT | Errno::EOPNOTSUPP) =>
            {
                refusal.hint = kind.map(missing_kind_hint);
                RtnlError::Kernel { doing, refusal }
            }
            other => other,
        })
    }

    /// Sends one request that changes something and waits for its acknowledgement.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        doing: &str,
    ) -> Result<(), RtnlError> {
        let seq = self.send(message, NLM_F_ACK | flags, doing)?;
        loop {
            let (header, payload) = self.next_reply(seq, doing)?;
            if let NetlinkPayload::Error(e) = payload {
                return match e.code {
                    None => Ok(()),
                    Some(code) => Err(RtnlError::Kernel {
                        doing: doing.to_owned(),
                        refusal: Refusal {
                            errno: Errno::from_raw(-code.get()),
                            message: error_message_text(header.flags, &e.header),
                            hint: None,
                        },
                    }),
                };
            }
        }
    }

    /// Sends a dump request and collects every message of the answer.
    fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        doing: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(message.clone(), NLM_F_DUMP, doing)?;
            let mut messages = Vec::new();
            let mut interrupted = false;
            loop {
                let (header, payload) = self.next_reply(seq, doing)?;
                // The set changed while it was dumped: what came may be inconsistent.
                interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                match payload {
                    NetlinkPayload::InnerMessage(m) => messages.push(m),
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(RtnlError::Kernel {
                            doing: doing.to_owned(),
                            refusal: Refusal {
                                errno: Errno::from_raw(-done.code),
                                message: (header.flags & NLM_F_ACK_TLVS != 0)
                                    .then(|| extack_text(&done.extended_ack))
                                    .flatten(),
                                hint: None,
                            },
                        });
                    }
                    NetlinkPayload::Done(_) => break,
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(RtnlError::Kernel {
                                doing: doing.to_owned(),
                                refusal: Refusal {
                                    errno: Errno::from_raw(-code.get()),
                                    message: error_message_text(header.flags, &e.header),
                                    hint: None,
                                },
                            });
                        }
                    }
                    _ => {}
                }
            }
            if !interrupted {
                return Ok(messages);
            }
        }
        Err(RtnlError::Io {
            doing: doing.to_owned(),
            source: io::Error::other(format!(
                "the kernel's answer was interrupted by changes {DUMP_TRIES} times in a row"
            )),
        })
    }

    /// Sends `message` as a request with `flags`; returns its sequence number.
    fn send(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        doing: &str,
    ) -> Result<u32, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        // Port 0 is the kernel.
        self.socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| RtnlError::Io {
                doing: doing.to_owned(),
                source,
            })?;
        Ok(self.seq)
    }

    /// The next message answering request `seq`. Messages of other sequence numbers are late
    /// answers to an earlier request that was given up on (an error in the middle of a dump): they
    /// are skipped.
    fn next_reply(
        &mut self,
        seq: u32,
        doing: &str,
    ) -> Result<(NetlinkHeader, NetlinkPayload<RouteNetlinkMessage>), RtnlError> {
        let decode = |why: String| RtnlError::Decode {
            doing: doing.to_owned(),
            why,
        };
        loop {
            if self.read >= self.received.len() {
                // recv_from_full peeks at the size first, so a long datagram is never truncated.
                let (bytes, _) = self
                    .socket
                    .recv_from_full()
                    .map_err(|source| RtnlError::Io {
                        doing: doing.to_owned(),
                        source,
                    })?;
                self.received = bytes;
                self.read = 0;
            }
            let start = self.read;
            let (length, message_seq) = match NetlinkBuffer::new_checked(&self.received[start..]) {
                Ok(b) => (b.length() as usize, b.sequence_number()),
                Err(e) => {
                    // Nothing after a broken header can be found: drop the rest of the datagram.
                    self.read = self.received.len();
                    return Err(decode(e.to_string()));
                }
            };
            self.read = (start + nlmsg_align(length)).min(self.received.len());
            if message_seq != seq {
                continue;
            }
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.received[start..])
                    .map_err(|e| decode(e.to_string()))?;
            return Ok(message.into_parts());
        }
    }
}

/// Runs `enter` (which moves the thread to another network namespace) on a thread of its own and
/// opens the socket there; the thread ends, the socket stays in that namespace.
fn on_own_thread(
    enter: impl FnOnce() -> Result<(), RtnlError> + Send + 'static,
) -> Result<Rtnl, RtnlError> {
    thread::Builder::new()
        .name("kchaos-netns".into())
        .spawn(move || {
            enter()?;
            Rtnl::here()
        })
        .map_err(RtnlError::Thread)?
        .join()
        .map_err(|_| RtnlError::ThreadPanicked)?
}

fn ifindex(link: &Link) -> Result<i32, RtnlError> {
    i32::try_from(link.index).map_err(|_| RtnlError::Io {
        doing: format!("addressing {}", link.name),
        source: io::Error::other(format!("ifindex {} is out of range", link.index)),
    })
}

fn tc_header(link: &Link, handle: u32, parent: TcHandle) -> Result<TcHeader, RtnlError> {
    Ok(TcHeader {
        index: ifindex(link)?,
        handle: handle.into(),
        parent,
        ..TcHeader::default()
    })
}

/// An fq qdisc with `handle` at the root of `link`.
fn fq_message(link: &Link, handle: u32, limits: FqLimits) -> Result<TcMessage, RtnlError> {
    let options = [
        (TCA_FQ_PLIMIT, limits.limit),
        (TCA_FQ_FLOW_PLIMIT, limits.flow_limit),
    ]
    .into_iter()
    .map(|(kind, value)| TcOption::Other(DefaultNla::new(kind, value.to_ne_bytes().to_vec())))
    .collect();
    Ok(TcMessage::from_parts(
        tc_header(link, handle, TcHandle::ROOT)?,
        vec![
            TcAttribute::Kind("fq".into()),
            TcAttribute::Options(options),
        ],
    ))
}

/// What to check when the kernel refuses a qdisc kind.
fn missing_kind_hint(kind: &str) -> String {
    // clsact lives in sch_ingress; the others in sch_<kind>.
    let module = match kind {
        "clsact" => "ingress".to_owned(),
        other => other.to_owned(),
    };
    format!(
        "is sch_{module} built (CONFIG_NET_SCH_{})?",
        module.to_ascii_uppercase()
    )
}

fn nlmsg_align(length: usize) -> usize {
    (length + 3) & !3
}

/// The kernel's explanation in an NLMSG_ERROR, whose payload after the errno is the request (its
/// header alone when capped), then the extended-ack attributes when `flags` says there are some.
fn error_message_text(flags: u16, after_errno: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        NetlinkBuffer::new_checked(after_errno).ok()?.length() as usize
    };
    extack_text(after_errno.get(nlmsg_align(echoed)..)?)
}

/// NLMSGERR_ATTR_MSG among extended-ack attributes.
fn extack_text(attributes: &[u8]) -> Option<String> {
    NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|text| !text.is_empty())
}

/// Named network namespaces for tests, with `ip`/`tc` inside them as the outside checkers.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        path::{Path, PathBuf},
        process::Command,
    };

    /// A named network namespace for one test, removed when dropped; `ip`/`tc` inside it are the
    /// outside checkers.
    pub struct TestNetns {
        name: String,
    }

    impl TestNetns {
        pub fn new(tag: &str) -> Self {
            let name = format!("kchaos-rtnl-{}-{tag}", std::process::id());
            run("ip", &["netns", "add", &name]);
            Self { name }
        }

        pub fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.name)
        }

        pub fn ip(&self, args: &[&str]) -> String {
            run("ip", &[&["-n", self.name.as_str()], args].concat())
        }

        pub fn tc(&self, args: &[&str]) -> String {
            run("tc", &[&["-n", self.name.as_str()], args].concat())
        }

        /// A veth device, up (its peer `<name>p` stays down). veth rather than dummy: kernels
        /// built without the dummy driver exist (this project's test host is one).
        pub fn veth(&self, name: &str) {
            let peer = format!("{name}p");
            self.ip(&["link", "add", name, "type", "veth", "peer", &peer]);
            self.ip(&["link", "set", name, "up"]);
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    pub fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when running as root; prints the SKIP line otherwise.
    pub fn root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            println!("SKIP {test}: needs root");
        }
        root
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestNetns, root, run};
    use super::*;

    #[test]
    fn lists_links_with_their_flags() {
        if !root("lists_links_with_their_flags") {
            return;
        }
        let ns = TestNetns::new("links");
        ns.veth("kcup0");
        ns.ip(&["link", "add", "kcdown0", "type", "veth", "peer", "kcdown0p"]);
        let links = Rtnl::in_netns(&ns.path()).unwrap().links().unwrap();
        let find = |name: &str| links.iter().find(|l| l.name == name).unwrap();
        assert!(find("lo").loopback);
        assert!(find("kcup0").up && !find("kcup0").loopback);
        assert!(!find("kcdown0").up && !find("kcup0p").up);
        // The same index `ip` shows ("3: kcup0: <...").
        let shown = ns.ip(&["-o", "link", "show", "kcup0"]);
        assert_eq!(
            shown.split(':').next().unwrap().trim(),
            find("kcup0").index.to_string()
        );
        assert_eq!(links.len(), 5, "{links:?}");
        // Our own namespace's links are not these.
        assert!(Rtnl::here().unwrap().link("kcup0").unwrap().is_none());
    }

    #[test]
    fn reads_the_root_qdisc_tc_set() {
        if !root("reads_the_root_qdisc_tc_set") {
            return;
        }
        let ns = TestNetns::new("root");
        ns.veth("kcq0");
        let mut rtnl = Rtnl::in_netns(&ns.path()).unwrap();
        let link = rtnl.link("kcq0").unwrap().unwrap();
        let kind = |rtnl: &mut Rtnl| rtnl.root_qdisc(&link).unwrap().unwrap();
        assert_eq!(
            kind(&mut rtnl),
            Qdisc {
                kind: "noqueue".into(),
                handle: 0
            }
        );
        ns.tc(&[
            "qdisc", "replace", "dev", "kcq0", "root", "handle", "7:", "pfifo",
        ]);
        assert_eq!(
            kind(&mut rtnl),
            Qdisc {
                kind: "pfifo".into(),
                handle: 0x7_0000
            }
        );
        // Kinds whose options are nested attributes (htb) or a plain struct (pfifo_fast) decode
        // too. (This test host's kernel has neither fq_codel nor sfq nor prio.)
        ns.tc(&[
            "qdisc", "replace", "dev", "kcq0", "root", "handle", "1:", "htb",
        ]);
        assert_eq!(kind(&mut rtnl).kind, "htb");
        ns.tc(&[
            "qdisc",
            "replace",
            "dev",
            "kcq0",
            "root",
            "handle",
            "4b43:",
            "pfifo_fast",
        ]);
        assert_eq!(
            kind(&mut rtnl),
            Qdisc {
                kind: "pfifo_fast".into(),
                handle: 0x4b43_0000
            }
        );
        // A clsact beside it is not the root.
        ns.tc(&["qdisc", "add", "dev", "kcq0", "clsact"]);
        assert_eq!(kind(&mut rtnl).kind, "pfifo_fast");
        // Deleting with another handle is refused by the kernel; with its own it goes.
        assert!(rtnl.delete_root_qdisc(&link, 0x7_0000).is_err());
        rtnl.delete_root_qdisc(&link, 0x4b43_0000).unwrap();
        assert_eq!(kind(&mut rtnl).kind, "noqueue");
        // A device that is down has the built-in noop, which the kernel does not show.
        ns.ip(&["link", "add", "kcq1", "type", "veth", "peer", "kcq1p"]);
        let down = rtnl.link("kcq1").unwrap().unwrap();
        assert_eq!(rtnl.root_qdisc(&down).unwrap(), None);
    }

    #[test]
    fn reads_a_multiqueue_root() {
        if !root("reads_a_multiqueue_root") {
            return;
        }
        let ns = TestNetns::new("mq");
        ns.ip(&[
            "link",
            "add",
            "kcmq0",
            "numtxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "kcmq1",
            "numtxqueues",
            "4",
        ]);
        ns.ip(&["link", "set", "kcmq0", "up"]);
        ns.ip(&["link", "set", "kcmq1", "up"]);
        ns.tc(&[
            "qdisc", "replace", "dev", "kcmq0", "root", "handle", "1:", "mq",
        ]);
        let mut rtnl = Rtnl::in_netns(&ns.path()).unwrap();
        let link = rtnl.link("kcmq0").unwrap().unwrap();
        // mq's children (parent 1:N) are not the root.
        assert_eq!(rtnl.root_qdisc(&link).unwrap().unwrap().kind, "mq");
    }

    #[test]
    fn adds_and_deletes_clsact() {
        if !root("adds_and_deletes_clsact") {
            return;
        }
        let ns = TestNetns::new("clsact");
        ns.veth("kcc0");
        let mut rtnl = Rtnl::in_netns(&ns.path()).unwrap();
        let link = rtnl.link("kcc0").unwrap().unwrap();
        rtnl.add_clsact(&link).unwrap();
        let shown = ns.tc(&["qdisc", "show", "dev", "kcc0"]);
        assert!(
            shown.contains("qdisc clsact ffff: parent ffff:fff1"),
            "{shown}"
        );
        let again = rtnl.add_clsact(&link).unwrap_err();
        assert_eq!(again.errno(), Some(Errno::EEXIST), "{again}");
        assert!(
            again
                .to_string()
                .starts_with("adding a clsact qdisc to kcc0: "),
            "{again}"
        );
        rtnl.delete_clsact(&link).unwrap();
        let shown = ns.tc(&["qdisc", "show", "dev", "kcc0"]);
        assert!(!shown.contains("clsact"), "{shown}");
        let gone = rtnl.delete_clsact(&link).unwrap_err();
        assert!(gone.errno().is_some(), "{gone}");
    }

    #[test]
    /// Either branch asserts what the kernel did: without sch_fq (this host) its refusal, explained
    /// and with nothing changed; with it, the install and the delete. (Unit tests run on the host
    /// only; kchaos's own fq install runs in the VM through the delay and EDT tests.)
    fn fq_installs_and_deletes_or_the_refusal_is_explained() {
        if !root("fq_installs_and_deletes_or_the_refusal_is_explained") {
            return;
        }
        let ns = TestNetns::new("fq");
        ns.veth("kcf0");
        let mut rtnl = Rtnl::in_netns(&ns.path()).unwrap();
        let link = rtnl.link("kcf0").unwrap().unwrap();
        let limits = FqLimits {
            limit: 200_000,
            flow_limit: 100_000,
        };
        if let Err(e) = rtnl.replace_root_fq(&link, 0x4b43_0000, limits) {
            let text = e.to_string();
            assert!(
                matches!(e.errno(), Some(Errno::ENOENT | Errno::EOPNOTSUPP)),
                "{text}"
            );
            assert!(
                text.starts_with("replacing the root qdisc of kcf0 with fq: ")
                    && text.contains("sch_fq")
                    && text.contains("CONFIG_NET_SCH_FQ"),
                "{text}"
            );
            // Nothing changed.
            assert_eq!(rtnl.root_qdisc(&link).unwrap().unwrap().kind, "noqueue");
            return;
        }
        let shown = ns.tc(&["qdisc", "show", "dev", "kcf0", "root"]);
        assert!(
            shown.contains("qdisc fq 4b43: root")
                && shown.contains("limit 200000p")
                && shown.contains("flow_limit 100000p"),
            "{shown}"
        );
        assert_eq!(
            rtnl.root_qdisc(&link).unwrap().unwrap(),
            Qdisc {
                kind: "fq".into(),
                handle: 0x4b43_0000
            }
        );
        rtnl.delete_root_qdisc(&link, 0x4b43_0000).unwrap();
        let shown = ns.tc(&["qdisc", "show", "dev", "kcf0", "root"]);
        assert!(shown.contains("qdisc noqueue 0: root"), "{shown}");
    }

    #[test]
    fn scratch_namespace_is_empty_and_separate() {
        if !root("scratch_namespace_is_empty_and_separate") {
            return;
        }
        let mut scratch = Rtnl::in_scratch_netns().unwrap();
        let links = scratch.links().unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(links[0].loopback && !links[0].up);
        assert_eq!(scratch.loopback().unwrap(), links[0]);
        scratch.add_clsact(&links[0]).unwrap();
        // Our own lo got no clsact.
        let ours = run("tc", &["qdisc", "show", "dev", "lo"]);
        assert!(!ours.contains("clsact"), "{ours}");
    }

    #[test]
    fn a_missing_device_is_named() {
        if !root("a_missing_device_is_named") {
            return;
        }
        let mut scratch = Rtnl::in_scratch_netns().unwrap();
        let ghost = Link {
            index: 999,
            name: "ghost0".into(),
            up: true,
            loopback: false,
            peer_elsewhere: None,
        };
        let e = scratch.add_clsact(&ghost).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENODEV), "{e}");
        assert!(
            e.to_string()
                .starts_with("adding a clsact qdisc to ghost0: "),
            "{e}"
        );
        let e = Rtnl::in_netns(Path::new("/nonexistent/ns")).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
    }

    /// The fq request as the kernel gets it, byte for byte: this test host has no sch_fq to try it
    /// on, so the encoding is checked against what `tc qdisc replace ... fq limit 200000 flow_limit
    /// 100000` sends (TCA_OPTIONS holding TCA_FQ_PLIMIT and TCA_FQ_FLOW_PLIMIT, u32 each).
    #[cfg(target_endian = "little")]
    #[test]
    fn encodes_fq_like_tc() {
        use netlink_packet_core::Emitable as _;
        let link = Link {
            index: 7,
            name: "eth0".into(),
            up: true,
            loopback: false,
            peer_elsewhere: None,
        };
        let limits = FqLimits {
            limit: 200_000,
            flow_limit: 100_000,
        };
        let message = fq_message(&link, 0x4b43_0000, limits).unwrap();
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // struct tcmsg: family, padding, ifindex 7, handle 4b43:0, parent ffff:ffff, info 0
            0, 0, 0, 0, 7, 0, 0, 0, 0x00, 0x00, 0x43, 0x4b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
            // TCA_KIND "fq\0", padded to 4 bytes
            7, 0, 1, 0, b'f', b'q', 0, 0,
            // TCA_OPTIONS { TCA_FQ_PLIMIT 200000, TCA_FQ_FLOW_PLIMIT 100000 }
            20, 0, 2, 0,
            8, 0, 1, 0, 0x40, 0x0d, 0x03, 0x00,
            8, 0, 2, 0, 0xa0, 0x86, 0x01, 0x00,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn refusals_read_well() {
        let with_words = Refusal {
            errno: Errno::ENOENT,
            message: Some("Specified qdisc kind is unknown".into()),
            hint: Some(missing_kind_hint("fq")),
        };
        assert_eq!(
            with_words.to_string(),
            "Specified qdisc kind is unknown (ENOENT); is sch_fq built (CONFIG_NET_SCH_FQ)?"
        );
        let bare = Refusal {
            errno: Errno::EOPNOTSUPP,
            message: None,
            hint: Some(missing_kind_hint("clsact")),
        };
        assert_eq!(
            bare.to_string(),
            "Operation not supported on transport endpoint (EOPNOTSUPP); is sch_ingress built (CONFIG_NET_SCH_INGRESS)?"
        );
    }

    #[test]
    fn finds_the_kernels_words_after_the_echoed_request() {
        let mut payload = vec![0u8; NLMSG_HDRLEN]; // the echoed header, capped
        let text = b"Specified qdisc kind is unknown\0";
        let nla_len = 4 + text.len();
        payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(
            error_message_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).as_deref(),
            Some("Specified qdisc kind is unknown")
        );
        assert_eq!(error_message_text(NLM_F_CAPPED, &payload), None);
        assert_eq!(error_message_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &[]), None);
    }
}
