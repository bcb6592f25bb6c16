//! Who is calling: the address a request comes from, and the rules that admit it.
//!
//! The socket's peer is the caller unless it is one of `server.trusted_proxies`. Only then
//! are `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` believed: anyone else
//! could write them. `X-Forwarded-For` is read from the right, skipping trusted proxies, so a
//! caller cannot choose its own address by sending the header itself.

use http::HeaderMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let written = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an address or address/prefix"))?;
        let width = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {width}"))?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 block 10.0.0.0/8 written in IPv6.
        let network = canonical(written);
        let prefix = match (written, network) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix >= 96 => prefix - 96,
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                return Err(format!(
                    "{text:?}: an IPv4-mapped block needs a prefix of 96 or more"
                ))
            }
            _ => prefix,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => same_prefix(
                u32::from(network).into(),
                u32::from(address).into(),
                32,
                self.prefix,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                same_prefix(network.into(), address.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn same_prefix(network: u128, address: u128, width: u8, prefix: u8) -> bool {
    let host_bits = u32::from(width - prefix);
    (network ^ address).checked_shr(host_bits).unwrap_or(0) == 0
}

/// IPv4 addresses reached over an IPv6 socket (`::ffff:192.0.2.1`) are compared as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether any block in `blocks` holds `address`.
pub fn any_contains(blocks: &[Cidr], address: IpAddr) -> bool {
    blocks.iter().any(|block| block.contains(address))
}

/// The caller as far as the gateway can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `None` only for a peer that is not an IP socket.
    pub address: Option<IpAddr>,
    /// The scheme and host the caller used, when a trusted proxy says so.
    pub forwarded_proto: Option<String>,
    pub forwarded_host: Option<String>,
}

/// Works out the caller of a request from `peer`, the socket's other end.
pub fn caller(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Caller {
    let Some(peer) = peer.map(canonical) else {
        return Caller::default();
    };
    if !any_contains(trusted, peer) {
        return Caller {
            address: Some(peer),
            ..Caller::default()
        };
    }
    Caller {
        address: Some(forwarded_for(peer, headers, trusted)),
        forwarded_proto: last_value(headers, "x-forwarded-proto")
            .map(|proto| proto.to_ascii_lowercase())
            .filter(|proto| matches!(proto.as_str(), "http" | "https")),
        forwarded_host: last_value(headers, "x-forwarded-host").filter(|host| plain_host(host)),
    }
}

/// The nearest address in `X-Forwarded-For` that is not a trusted proxy. Entries are read
/// from the right, the hop closest to the gateway first; an entry that does not parse ends
/// the walk at the last address that did, since nothing left of it can be trusted.
fn forwarded_for(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();

    let mut nearest = peer;
    for entry in entries.iter().rev() {
        let Some(address) = parse_entry(entry) else {
            break;
        };
        nearest = address;
        if !any_contains(trusted, address) {
            break;
        }
    }
    nearest
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|socket| canonical(socket.ip()))
}

/// The last value of a header that proxies may append to: the one the nearest (trusted)
/// proxy wrote, where earlier ones may come from the caller.
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    (!last.is_empty()).then(|| last.to_string())
}

/// A host, with an optional port, and nothing that could change what a URL means.
fn plain_host(host: &str) -> bool {
    host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn blocks(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain_what_they_should() {
        let v4: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(v4.contains(ip("10.1.255.7")));
        assert!(!v4.contains(ip("10.2.0.1")));
        assert!(
            v4.contains(ip("::ffff:10.1.2.3")),
            "mapped addresses count as IPv4"
        );

        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(
            !all.contains(ip("2001:db8::1")),
            "IPv4 blocks hold no IPv6 address"
        );

        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));

        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));

        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.5"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("written.by.caller, Hooks.Example.com"),
        );
        let trusted = blocks(&["10.0.0.0/8"]);

        let direct = caller(Some(ip("198.51.100.4")), &headers, &trusted);
        assert_eq!(direct.address, Some(ip("198.51.100.4")));
        assert_eq!(direct.forwarded_host, None);

        // 1.1.1.1 was written by the caller itself; 203.0.113.5 is who reached the proxy.
        let proxied = caller(Some(ip("10.0.0.1")), &headers, &trusted);
        assert_eq!(proxied.address, Some(ip("203.0.113.5")));
        assert_eq!(proxied.forwarded_proto.as_deref(), Some("https"));
        assert_eq!(
            proxied.forwarded_host.as_deref(),
            Some("Hooks.Example.com"),
            "the value the proxy appended, as written"
        );
    }

    #[test]
    fn a_garbled_forwarded_entry_stops_the_walk() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, not-an-ip, [2001:db8::7]:443"),
        );
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("evil.com/path"),
        );
        let trusted = blocks(&["127.0.0.1", "2001:db8::/64"]);
        let seen = caller(Some(ip("127.0.0.1")), &headers, &trusted);
        assert_eq!(seen.address, Some(ip("2001:db8::7")));
        assert_eq!(
            seen.forwarded_host, None,
            "a host with a path is not believed"
        );
    }
}
