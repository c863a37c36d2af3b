//! Reading the few header fields the network faults match on.
//!
//! A cgroup_skb program sees the packet from its network header on, in both directions. Only fixed
//! offsets are read (IPv6 extension headers are not walked), so parsing is bounded and loop-free.

use aya_ebpf::programs::SkBuffContext;
use chaos_common::{PROTO_TCP, PROTO_UDP};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The packet as seen from the target: who is on the other end, and on which ports.
pub struct Peer {
    pub proto: u8,
    /// IPv6, or IPv4 mapped as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    pub peer_port: u16,
    pub local_port: u16,
}

/// `egress` picks the peer: the destination of what the target sends, the source of what it receives.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext, egress: bool) -> Option<Peer> {
    // SAFETY: the context pointer is valid for the whole program run.
    let l3 = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    if l3 == ETH_P_IP {
        let ip: Ipv4Hdr = ctx.load(0).ok()?;
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        let peer = if egress { ip.daddr } else { ip.saddr };
        addr[12] = peer[0];
        addr[13] = peer[1];
        addr[14] = peer[2];
        addr[15] = peer[3];
        // A non-first fragment carries no L4 header.
        let first_fragment = u16::from_be_bytes(ip.frag_off) & 0x1fff == 0;
        let l4 = ((ip.version_ihl & 0x0f) as usize) * 4;
        let (peer_port, local_port) = if first_fragment {
            ports(ctx, ip.protocol, l4, egress)
        } else {
            (0, 0)
        };
        Some(Peer {
            proto: ip.protocol,
            addr,
            peer_port,
            local_port,
        })
    } else if l3 == ETH_P_IPV6 {
        let ip: Ipv6Hdr = ctx.load(0).ok()?;
        let addr = if egress { ip.daddr } else { ip.saddr };
        let (peer_port, local_port) = ports(ctx, ip.next_header, 40, egress);
        Some(Peer {
            proto: ip.next_header,
            addr,
            peer_port,
            local_port,
        })
    } else {
        None
    }
}

/// (peer port, local port) for TCP and UDP; zeros otherwise.
#[inline(always)]
fn ports(ctx: &SkBuffContext, proto: u8, l4: usize, egress: bool) -> (u16, u16) {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (0, 0);
    }
    match ctx.load::<[u8; 4]>(l4) {
        Ok(p) => {
            let src = u16::from_be_bytes([p[0], p[1]]);
            let dst = u16::from_be_bytes([p[2], p[3]]);
            if egress { (dst, src) } else { (src, dst) }
        }
        Err(_) => (0, 0),
    }
}
