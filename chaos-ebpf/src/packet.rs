//! Reading the few header fields the network faults match on.
//!
//! A cgroup_skb program sees the packet from its network header on; a TC program from its link
//! header, whose length depends on the device, so it finds the network header from the IP length
//! field instead (the packet ends where IP says it does at egress). Only fixed offsets are read (IPv6
//! extension headers are not walked), so parsing is bounded and loop-free.

use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET, helpers::bpf_skb_load_bytes_relative,
    programs::sk_buff::SkBuff,
};
use chaos_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HDR_LEN: usize = 40;

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
    /// Offset of the first byte after the transport header (TCP, UDP, ICMP), or after the IP header
    /// for other protocols: where a payload starts, if the packet is longer.
    pub payload: u32,
}

/// Where the IP header starts for a TC program: the link header's length, found as the packet's
/// length less what IP says it carries. None for what is not IP (or an IPv6 jumbogram).
#[inline(always)]
pub fn tc_network_offset(skb: &SkBuff) -> Option<usize> {
    let len = skb.len() as usize;
    let mut field = [0u8; 2];
    let (at, fixed) = match l3_proto(skb) {
        ETH_P_IP => (2, 0),
        ETH_P_IPV6 => (4, IPV6_HDR_LEN),
        _ => return None,
    };
    // SAFETY: the helper writes at most the 2 bytes of `field`, a buffer of this frame; the offset is
    // relative to the network header the kernel set.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            skb.skb as *const _,
            at,
            field.as_mut_ptr() as *mut _,
            2,
            BPF_HDR_START_NET,
        )
    };
    let carried = u16::from_be_bytes(field) as usize + fixed;
    if rc != 0 || carried == fixed || carried > len {
        return None;
    }
    Some(len - carried)
}

#[inline(always)]
fn l3_proto(skb: &SkBuff) -> u16 {
    // SAFETY: the context pointer is valid for the whole program run.
    u16::from_be(unsafe { (*skb.skb).protocol } as u16)
}

/// Reads the headers at `l3` (0 for cgroup_skb). `egress` picks the peer: the destination of what
/// the target sends, the source of what it receives. `payload` (a constant where it is inlined)
/// asks for `Peer::payload` too, which costs TCP a load; without it, that field is 0.
#[inline(always)]
pub fn parse(skb: &SkBuff, egress: bool, l3: usize, payload: bool) -> Option<Peer> {
    let proto = l3_proto(skb);
    if proto == ETH_P_IP {
        let ip: Ipv4Hdr = skb.load(l3).ok()?;
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
        let l4 = l3 + ((ip.version_ihl & 0x0f) as usize) * 4;
        let (peer_port, local_port, l4_len) = if first_fragment {
            transport(skb, ip.protocol, l4, egress, payload)
        } else {
            (0, 0, 0)
        };
        Some(Peer {
            proto: ip.protocol,
            addr,
            peer_port,
            local_port,
            payload: if payload { (l4 + l4_len) as u32 } else { 0 },
        })
    } else if proto == ETH_P_IPV6 {
        let ip: Ipv6Hdr = skb.load(l3).ok()?;
        let addr = if egress { ip.daddr } else { ip.saddr };
        let l4 = l3 + IPV6_HDR_LEN;
        let (peer_port, local_port, l4_len) = transport(skb, ip.next_header, l4, egress, payload);
        Some(Peer {
            proto: ip.next_header,
            addr,
            peer_port,
            local_port,
            payload: if payload { (l4 + l4_len) as u32 } else { 0 },
        })
    } else {
        None
    }
}

/// (peer port, local port, transport header length): ports for TCP and UDP, zeros otherwise.
#[inline(always)]
fn transport(skb: &SkBuff, proto: u8, l4: usize, egress: bool, payload: bool) -> (u16, u16, usize) {
    if proto == PROTO_ICMP || proto == PROTO_ICMPV6 {
        return (0, 0, 8);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (0, 0, 0);
    }
    let Ok(p) = skb.load::<[u8; 4]>(l4) else {
        return (0, 0, 0);
    };
    let src = u16::from_be_bytes([p[0], p[1]]);
    let dst = u16::from_be_bytes([p[2], p[3]]);
    // TCP's header length is its data offset (byte 12, upper nibble); a TCP header is at least 20
    // bytes, so the byte is there.
    let len = if !payload {
        0
    } else if proto == PROTO_TCP {
        skb.load::<u8>(l4 + 12)
            .map_or(20, |b| ((b >> 4) as usize) * 4)
    } else {
        8
    };
    if egress {
        (dst, src, len)
    } else {
        (src, dst, len)
    }
}
