//! Which address a request comes from, for the per-address login limit.
//!
//! It is the connecting peer unless that peer is a trusted proxy: `X-Forwarded-For` is set by
//! whoever sends the request, so trusting it from anyone would let an attacker pick a fresh
//! address for every guess. The proxies in front of auth (the gateway, a load balancer) are
//! listed in `AUTH_TRUSTED_PROXIES` (default: loopback, where the all-in-one gateway connects
//! from); only for requests whose peer is one of them is
//! `X-Forwarded-For` is read from the right (the entry the nearest proxy appended), skipping
//! further trusted proxies, and the first address not among them is the client. Entries to its
//! left were written by the client and are ignored.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// An address or a network in CIDR form (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    base: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (address, prefix) = match raw.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw, None),
        };
        let base: IpAddr = address
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address or CIDR network"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{raw}` has an invalid prefix length"))?,
        };
        Ok(Self { base, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        match (canonical(self.base), address) {
            (IpAddr::V4(base), IpAddr::V4(address)) => {
                prefix_matches(&base.octets(), &address.octets(), self.prefix)
            }
            (IpAddr::V6(base), IpAddr::V6(address)) => {
                prefix_matches(&base.octets(), &address.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4 peers)
/// compare as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_matches(base: &[u8], address: &[u8], prefix: u8) -> bool {
    let full_bytes = usize::from(prefix / 8);
    let rest_bits = prefix % 8;
    if base[..full_bytes] != address[..full_bytes] {
        return false;
    }
    if rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest_bits);
    (base[full_bytes] & mask) == (address[full_bytes] & mask)
}

/// Decides the client address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientAddressPolicy {
    trusted_proxies: Vec<IpNetwork>,
}

impl ClientAddressPolicy {
    /// Trusts `X-Forwarded-For` only from these proxies (none: never).
    pub fn new(trusted_proxies: Vec<IpNetwork>) -> Self {
        Self { trusted_proxies }
    }

    /// Parses a comma-separated list of addresses and networks.
    pub fn parse_list(raw: &str) -> Result<Vec<IpNetwork>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(IpNetwork::parse)
            .collect()
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(address))
    }

    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.is_trusted(peer) {
            return peer;
        }
        // Every X-Forwarded-For header, in order, as one list, read from the right.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            let Ok(address) = entry.parse::<IpAddr>() else {
                // Garbage where a proxy should have written an address: stop at what we know.
                break;
            };
            client = canonical(address);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn networks_parse_and_match() {
        let net = IpNetwork::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let odd = IpNetwork::parse("192.168.0.0/23").unwrap();
        assert!(odd.contains("192.168.1.255".parse().unwrap()));
        assert!(!odd.contains("192.168.2.0".parse().unwrap()));
        let single = IpNetwork::parse("::1").unwrap();
        assert!(single.contains("::1".parse().unwrap()));
        assert!(!single.contains("127.0.0.1".parse().unwrap()));
        assert!(
            IpNetwork::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpNetwork::parse("10.0.0.0/33").is_err());
        assert!(IpNetwork::parse("gateway").is_err());
        assert!(ClientAddressPolicy::parse_list(" 10.0.0.1 , fd00::/8,").is_ok());
    }

    #[test]
    fn by_default_the_header_is_ignored() {
        let policy = ClientAddressPolicy::default();
        let ip = policy.client_address(peer("198.51.100.7"), &forwarded(&["203.0.113.1"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_proxy_is_believed_about_the_hop_it_saw() {
        let policy = ClientAddressPolicy::new(vec![IpNetwork::parse("10.0.0.0/8").unwrap()]);
        // The client forged the first entry; the proxy appended the real one.
        let headers = forwarded(&["1.2.3.4, 203.0.113.9"]);
        let ip = policy.client_address(peer("10.0.0.2"), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        // Two trusted hops, in two headers.
        let headers = forwarded(&["1.2.3.4", "203.0.113.9, 10.0.0.5"]);
        let ip = policy.client_address(peer("10.0.0.2"), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_untrusted_peer_cannot_forward() {
        let policy = ClientAddressPolicy::new(vec![IpNetwork::parse("10.0.0.0/8").unwrap()]);
        let ip = policy.client_address(peer("203.0.113.50"), &forwarded(&["10.0.0.1"]));
        assert_eq!(ip, "203.0.113.50".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_stops_at_the_last_known_hop() {
        let policy = ClientAddressPolicy::new(vec![IpNetwork::parse("10.0.0.0/8").unwrap()]);
        let ip = policy.client_address(peer("10.0.0.2"), &forwarded(&["unknown"]));
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
