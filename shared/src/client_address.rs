//! Which address a request comes from, for per-address limits (the gateway's anonymous rate
//! limit, auth's login limit, the hub's connection caps).
//!
//! It is the connecting peer unless that peer is a trusted proxy: `X-Forwarded-For` is written
//! by whoever sends the request, so believing it from anyone would let an attacker pick a fresh
//! address for every request. Only when the peer is one of the configured trusted proxies is the
//! header read, **from the right** (the entry the nearest proxy appended), skipping further
//! trusted proxies; the first address not among them is the client. Entries to its left were
//! written by the client and are ignored.
//!
//! Limits count an IPv6 client by its /64 ([`limit_key`]): a single subscriber usually holds a
//! whole /64 and could otherwise rotate through 2^64 addresses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The header proxies append the client's address to, unless configured otherwise.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Decides the client address of a request.
#[derive(Debug, Clone)]
pub struct ClientAddressPolicy {
    trusted_proxies: Vec<IpNet>,
    header: HeaderName,
}

impl Default for ClientAddressPolicy {
    /// Trusts no proxy: the peer is the client.
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl ClientAddressPolicy {
    /// Reads `X-Forwarded-For` only from these proxies (none: never).
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            trusted_proxies,
            header: X_FORWARDED_FOR,
        }
    }

    /// Reads `header` (e.g. `x-real-ip`) instead of `X-Forwarded-For`, with the same rules.
    pub fn with_header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Parses a comma-separated list of addresses and CIDR networks (`10.0.0.0/8, ::1`); the
    /// word `none` (or nothing) is the empty list.
    pub fn parse_list(raw: &str) -> Result<Vec<IpNet>, String> {
        if raw.trim().eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is not an IP address or CIDR network"))
            })
            .collect()
    }

    pub fn trusts_any(&self) -> bool {
        !self.trusted_proxies.is_empty()
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }

    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.is_trusted(peer) {
            return peer;
        }
        // Every such header, in order, as one list, read from the right.
        let forwarded: Vec<&str> = headers
            .get_all(&self.header)
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

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4 peers)
/// count as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The unit a per-address limit counts: the address itself for IPv4, its /64 for IPv6.
pub fn limit_key(address: IpAddr) -> String {
    match canonical(address) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
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

    fn trusting(list: &str) -> ClientAddressPolicy {
        ClientAddressPolicy::new(ClientAddressPolicy::parse_list(list).unwrap())
    }

    #[test]
    fn lists_parse_addresses_and_networks() {
        let list = ClientAddressPolicy::parse_list(" 10.0.0.1 , fd00::/8,").unwrap();
        assert_eq!(list.len(), 2);
        assert!(ClientAddressPolicy::parse_list("none").unwrap().is_empty());
        assert!(ClientAddressPolicy::parse_list("10.0.0.0/33").is_err());
        assert!(ClientAddressPolicy::parse_list("gateway").is_err());
    }

    #[test]
    fn by_default_the_header_is_ignored() {
        let policy = ClientAddressPolicy::default();
        let ip = policy.client_address(peer("198.51.100.7"), &forwarded(&["203.0.113.1"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_proxy_is_believed_about_the_hop_it_saw() {
        let policy = trusting("10.0.0.0/8");
        // The client forged the first entry; the proxy appended the real one.
        let headers = forwarded(&["1.2.3.4, 203.0.113.9"]);
        let ip = policy.client_address(peer("10.0.0.2"), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        // Two trusted hops, in two headers.
        let headers = forwarded(&["1.2.3.4", "203.0.113.9, 10.0.0.5"]);
        let ip = policy.client_address(peer("10.0.0.2"), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        // A mapped IPv4 peer is the IPv4 address.
        let ip = policy.client_address(peer("::ffff:10.0.0.2"), &forwarded(&["203.0.113.9"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn another_header_follows_the_same_rules() {
        let policy = trusting("10.0.0.0/8").with_header(HeaderName::from_static("x-real-ip"));
        let mut headers = HeaderMap::new();
        headers.insert("x-real-ip", "1.2.3.4, 203.0.113.9".parse().unwrap());
        let ip = policy.client_address(peer("10.0.0.2"), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        let ip = policy.client_address(peer("203.0.113.50"), &headers);
        assert_eq!(ip, "203.0.113.50".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_untrusted_peer_cannot_forward() {
        let policy = trusting("10.0.0.0/8");
        let ip = policy.client_address(peer("203.0.113.50"), &forwarded(&["10.0.0.1"]));
        assert_eq!(ip, "203.0.113.50".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_stops_at_the_last_known_hop() {
        let policy = trusting("10.0.0.0/8");
        let ip = policy.client_address(peer("10.0.0.2"), &forwarded(&["unknown"]));
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        assert_eq!(limit_key(a), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(mapped), "192.0.2.7");
    }
}
