//! Who the client is: the socket's peer, or, behind trusted proxies, the address they saw.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::anyhow;
use axum::extract::{ConnectInfo, FromRequestParts};
use http::{HeaderMap, request::Parts};
use ipnet::IpNet;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses addresses (`10.0.0.1`, `::1`) and CIDR ranges (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow!(
                            "KEEL_TRUSTED_PROXIES: {entry:?} is not an IP address or a CIDR range"
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that came from `peer` with `headers`: `peer` itself unless it
    /// is trusted; then the right-most `X-Forwarded-For` entry that is not a trusted proxy
    /// (entries left of it may be made up by the client). An unreadable entry ends the walk
    /// at the last trusted hop.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|value| {
                let entries: Vec<&str> = value
                    .to_str()
                    .map_or_else(|_| vec![""], |text| text.split(',').rev().collect());
                entries
            });
        for entry in entries {
            let Some(ip) = parse_entry(entry.trim()) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address, as the rate-limit layer determined it (with the trusted-proxy
/// rule); without that layer, the socket's peer, or `0.0.0.0` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The socket's peer of a request, if known.
    pub fn peer(extensions: &http::Extensions) -> IpAddr {
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or_else(|| ClientIp(canonical(Self::peer(&parts.extensions)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let none = proxies(&[]);
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            none.client(ip("198.51.100.7"), &headers),
            ip("198.51.100.7")
        );
        let some = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            some.client(ip("198.51.100.7"), &headers),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_wins() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]);
        // The client made up the left-most entry; the proxy appended the real one.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        // Several header lines are one list.
        let headers = forwarded(&["1.1.1.1", "203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &headers), ip("203.0.113.9"));
        // Ports, brackets and IPv6.
        let headers = forwarded(&["[2001:db9::5]:4711, 2001:db8::9"]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &headers), ip("2001:db9::5"));
        let headers = forwarded(&["203.0.113.9:443"]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &headers), ip("203.0.113.9"));
        // A mapped IPv4 peer is its IPv4 address.
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.1"), &forwarded(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_or_missing_entries_stop_at_the_last_trusted_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        let headers = forwarded(&["203.0.113.9, not-an-ip, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
        let headers = forwarded(&["unknown"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
        // Only trusted hops: the left-most is as far as we can see.
        let headers = forwarded(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.3"));
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_name() {
        let error = TrustedProxies::parse(&["10.0.0.0/33".to_owned()]).unwrap_err();
        assert!(
            error.to_string().contains("KEEL_TRUSTED_PROXIES"),
            "{error}"
        );
        assert!(TrustedProxies::parse(&["proxy.local".to_owned()]).is_err());
    }
}
