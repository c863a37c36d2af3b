//! Peers as users write them: `10.0.0.0/8`, `10.1.2.3:80`, `10.0.0.0/24:53`, `2001:db8::/32`,
//! `[2001:db8::1]:443`, `[2001:db8::/32]:443`; and their LPM-trie keys.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use chaos_common::{PEER_KEY_PORT_BITS, PeerKey, V4_MAPPED_PREFIX_BITS};

use crate::error::BadInput;

/// A CIDR with an optional port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    pub addr: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}/{}]:{p}", self.prefix),
            (a, Some(p)) => write!(f, "{a}/{}:{p}", self.prefix),
            (a, None) => write!(f, "{a}/{}", self.prefix),
        }
    }
}

impl Peer {
    /// Parses `CIDR[:PORT]`; `flag` names the option in errors.
    pub fn parse(text: &str, flag: &str, allow_port: bool) -> Result<Self, BadInput> {
        let bad = |why: &str| {
            BadInput::new(format!(
                "{flag} {text}: {why}; write CIDR[:PORT], e.g. 10.0.0.0/24, 10.0.0.5:80, [2001:db8::1]:443"
            ))
        };
        let (cidr, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected :PORT after ]"))?,
                ),
            };
            (inner, port)
        } else if text.matches(':').count() == 1 {
            let (c, p) = text.split_once(':').ok_or_else(|| bad("bad port"))?;
            (c, Some(p))
        } else {
            (text, None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be 1 to 65535")),
                Ok(p) => Some(p),
            },
        };
        if port.is_some() && !allow_port {
            return Err(bad("a port is not allowed here (use --port)"));
        }
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (cidr, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad(&format!("the prefix length must be 0 to {max}"))),
            },
        };
        Ok(Self { addr, prefix, port })
    }

    /// The trie key: port (0 = any) then the address, IPv4 mapped into IPv6.
    pub fn key(&self) -> (u32, PeerKey) {
        let (addr, bits) = match self.addr {
            IpAddr::V4(a) => (
                a.to_ipv6_mapped(),
                V4_MAPPED_PREFIX_BITS + self.prefix as u32,
            ),
            IpAddr::V6(a) => (a, self.prefix as u32),
        };
        let addr = mask(addr, bits);
        (
            PEER_KEY_PORT_BITS + bits,
            PeerKey {
                port: self.port.unwrap_or(0).to_be_bytes(),
                addr: addr.octets(),
            },
        )
    }
}

/// Zeroes the bits past the prefix (the trie ignores them, but a tidy key prints and compares well).
fn mask(addr: Ipv6Addr, bits: u32) -> Ipv6Addr {
    let v = u128::from(addr);
    let m = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    Ipv6Addr::from(v & m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let p = Peer::parse("10.0.0.0/24:53", "--partition", true).unwrap();
        assert_eq!((p.prefix, p.port), (24, Some(53)));
        let p = Peer::parse("10.1.2.3", "--partition", true).unwrap();
        assert_eq!((p.prefix, p.port), (32, None));
        let p = Peer::parse("[2001:db8::/32]:443", "--partition", true).unwrap();
        assert_eq!((p.prefix, p.port), (32, Some(443)));
        let p = Peer::parse("2001:db8::1", "--partition", true).unwrap();
        assert_eq!((p.prefix, p.port), (128, None));
        assert!(
            Peer::parse("10.0.0.0/33", "--dst", false)
                .unwrap_err()
                .to_string()
                .contains("0 to 32")
        );
        assert!(Peer::parse("10.0.0.1:0", "--partition", true).is_err());
        assert!(
            Peer::parse("10.0.0.1:80", "--dst", false)
                .unwrap_err()
                .to_string()
                .contains("--port")
        );
        assert!(
            Peer::parse("nothing", "--dst", false)
                .unwrap_err()
                .to_string()
                .contains("--dst nothing")
        );
    }

    #[test]
    fn keys_map_v4_and_put_the_port_first() {
        let (bits, key) = Peer::parse("10.1.2.0/24:80", "p", true).unwrap().key();
        assert_eq!(bits, 16 + 96 + 24);
        assert_eq!(key.port, 80u16.to_be_bytes());
        assert_eq!(&key.addr[10..], &[0xff, 0xff, 10, 1, 2, 0]);
        let (bits, key) = Peer::parse("10.1.2.77/24", "p", true).unwrap().key();
        assert_eq!(bits, 16 + 96 + 24);
        assert_eq!((key.port, key.addr[15]), ([0, 0], 0));
    }
}
