//! Who the client is, by address. Behind a reverse proxy every connection comes from the
//! proxy, so when the peer is one of `http.trusted_proxies` the address is taken from
//! `Forwarded` (RFC 7239) or, without it, `X-Forwarded-For`: the right-most address that
//! is not itself a trusted proxy (the left-most ones are whatever the client claimed).
//! From any other peer those headers are ignored, so a client cannot pick its own address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::FORWARDED;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::AppState;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address, worked out when a handler asks for it (an extractor, so the
/// requests that do not ask pay nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The client of a request with these `parts`, under `proxies`.
    pub fn of(parts: &Parts, proxies: &TrustedProxies) -> Self {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Self(proxies.client(peer, &parts.headers))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, &state.proxies))
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, the address the connection came from.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Right to left: each hop was added by the proxy in front of the previous one.
        for hop in forwarded_for(headers).into_iter().rev() {
            let Some(ip) = hop else {
                // A hop that is not an address (`unknown`, an obfuscated name, garbage):
                // nothing left of it can be believed.
                return client;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// The `for` addresses of `Forwarded`, or else of `X-Forwarded-For`, left to right;
/// `None` for an entry that is not an address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded = values(FORWARDED.as_str());
    if !forwarded.is_empty() {
        return forwarded
            .into_iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, node)| parse_node(node.trim().trim_matches('"')))
            })
            .collect();
    }
    values(X_FORWARDED_FOR)
        .into_iter()
        .map(parse_node)
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1` or `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    node.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            proxies(&[]).client(ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
        assert_eq!(
            proxies(&["10.0.0.0/8"]).client(ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let p = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        // The client claimed 1.2.3.4; the outer proxy saw 203.0.113.9; an inner one 10.0.0.2.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // Several header lines read as one list.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(
            p.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Only proxies: the left-most.
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.2")]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("10.0.0.7"));
    }

    #[test]
    fn forwarded_wins_and_its_forms_are_read() {
        let p = proxies(&["127.0.0.1/32"]);
        let h = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http, for="[2001:db8::17]:4711""#,
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("2001:db8::17"));
        let h = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("192.0.2.60"));
    }

    #[test]
    fn a_hop_that_is_not_an_address_stops_the_walk() {
        let p = proxies(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage")]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }

    #[test]
    fn v4_mapped_peers_count_as_v4() {
        let p = proxies(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(p.client(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.9"));
    }
}
