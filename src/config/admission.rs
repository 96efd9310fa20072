//! `[admission]`: who renders first when renders must wait (see `crate::admission` for the model).
//! Typed and validated here, like every other section: a network that does not parse, a share that
//! is not positive or a header that is not a header name stops the server at start, naming the key.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// `[admission]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// The request header that names the client, set by the fronting proxy: `X-Real-IP` (one
    /// address), `X-Forwarded-For` (its rightmost address, the one the proxy added) or `Forwarded`
    /// (its last `for=`). Empty: the peer address of the connection. Only set it when every request
    /// comes through that proxy, or clients can name themselves. Env: `IIIFD_ADMISSION__CLIENT_HEADER`.
    pub client_header: String,
    /// IPv4 clients are grouped by this prefix length (one client per /24 by default), so one
    /// harvester with many addresses is one client. Env: `IIIFD_ADMISSION__IPV4_PREFIX`.
    pub ipv4_prefix: u8,
    /// IPv6 clients are grouped by this prefix length. Env: `IIIFD_ADMISSION__IPV6_PREFIX`.
    pub ipv6_prefix: u8,
    /// Renders one client may have queued or running; past it its requests get 429 with
    /// `Retry-After` at once. Env: `IIIFD_ADMISSION__PER_CLIENT_QUEUE`.
    pub per_client_queue: usize,
    /// Render threads kept for the cheap lane (tiles, listed sizes, thumbnails), beside
    /// `render.workers`; 0 = one per CPU core. They run at the normal CPU priority, the other render
    /// threads below it, so a viewer's tile is computed ahead of a harvester's full-size render.
    /// Env: `IIIFD_ADMISSION__RESERVED_WORKERS`.
    pub reserved_workers: usize,
    /// A viewer-shaped render is cheap when it decodes and writes at most this many pixels;
    /// anything larger is heavy. Env: `IIIFD_ADMISSION__CHEAP_MAX_PIXELS`.
    pub cheap_max_pixels: u64,
    /// Client classes, first match wins; a client no class matches is in the class `default`.
    /// Env: `IIIFD_ADMISSION__CLASSES` (a TOML array of tables).
    pub classes: Vec<ClientClass>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            client_header: String::new(),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            per_client_queue: 32,
            reserved_workers: 0,
            cheap_max_pixels: 4 << 20,
            classes: Vec::new(),
        }
    }
}

/// `[[admission.classes]]`: clients matched by network or User-Agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientClass {
    /// The class's name in metrics and logs (letters, digits, `-`, `_`); `default` is taken.
    pub name: String,
    /// Networks whose clients are in the class (`192.0.2.0/24`, `2001:db8::/32`, or one address).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// User-Agent globs (`*GPTBot*`; `*` any run, `?` one character), matched without regard to case.
    #[serde(default)]
    pub user_agents: Vec<String>,
    /// The class's share of the render workers when classes compete (the default class has 1).
    #[serde(default = "one")]
    pub share: f64,
    /// Its clients' `per_client_queue` (0: the section's).
    #[serde(default)]
    pub per_client_queue: usize,
    /// Its clients see every image at most this wide (0: no bound), as a `degraded` access rule.
    #[serde(default)]
    pub max_width: u32,
    /// Its clients see every image at most this many pixels (0: no bound).
    #[serde(default)]
    pub max_area: u64,
}

fn one() -> f64 {
    1.0
}

/// A network: an address and a prefix length, its host bits zero. Written `addr/len`, or a bare
/// address (all its bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    len: u8,
}

impl Network {
    /// Parse `addr/len` or `addr`.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let written: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or network"))?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        // An IPv4 network written in IPv6 (`::ffff:192.0.2.0/120`) is that IPv4 network: clients
        // are compared as IPv4.
        let (addr, len) = match written.to_canonical() {
            IpAddr::V4(v4) if written.is_ipv6() && len >= 96 => (IpAddr::V4(v4), len - 96),
            _ => (written, len),
        };
        Ok(Network {
            addr: mask(addr, len),
            len,
        })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

/// `ip` with all but its first `len` bits zero.
pub(crate) fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & keep).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & keep).into())
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Network::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl AdmissionConfig {
    /// The bytes one decode of a cheap render may allocate: its pixels at 8 bytes each (16-bit
    /// RGBA, the widest a decoder produces). A reserved thread's render that needs more is handed
    /// to the other threads (see `crate::pipeline`).
    pub(crate) fn cheap_decode_bytes(&self) -> u64 {
        self.cheap_max_pixels.saturating_mul(8)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        let header = &self.client_header;
        if !header.is_empty() && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return bad(
                "admission.client_header",
                "must be empty or a header name".into(),
            );
        }
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            return bad(
                "admission",
                "ipv4_prefix must be 0 to 32 and ipv6_prefix 0 to 128".into(),
            );
        }
        if self.per_client_queue == 0 {
            return bad("admission.per_client_queue", "must be at least 1".into());
        }
        if self.cheap_max_pixels == 0 {
            return bad("admission.cheap_max_pixels", "must be above 0".into());
        }
        let mut names = vec!["default"];
        for (i, c) in self.classes.iter().enumerate() {
            let key = format!("admission.classes[{i}]");
            let name_ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return bad(
                    &format!("{key}.name"),
                    "must be 1-64 letters, digits, '-' or '_'".into(),
                );
            }
            if names.contains(&c.name.as_str()) {
                return bad(
                    &format!("{key}.name"),
                    format!(
                        "'{}' is taken (`default` is the unmatched clients' class)",
                        c.name
                    ),
                );
            }
            names.push(&c.name);
            if c.networks.is_empty() && c.user_agents.is_empty() {
                return bad(&key, "needs networks or user_agents to match".into());
            }
            if c.user_agents.iter().any(|p| p.is_empty()) {
                return bad(
                    &format!("{key}.user_agents"),
                    "a pattern must not be empty".into(),
                );
            }
            if !(c.share.is_finite() && c.share > 0.0 && c.share <= 1e6) {
                return bad(
                    &format!("{key}.share"),
                    "must be a number above 0 (1 is the default class's)".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_mask_and_match() -> Result<(), String> {
        let n = Network::parse("192.0.2.77/24")?;
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert!(n.contains("192.0.2.200".parse().map_err(|_| "ip")?));
        assert!(!n.contains("192.0.3.1".parse().map_err(|_| "ip")?));
        // An IPv4 client seen through an IPv6 socket is still an IPv4 client.
        assert!(n.contains("::ffff:192.0.2.9".parse().map_err(|_| "ip")?));
        let v6 = Network::parse("2001:db8::/32")?;
        assert!(v6.contains("2001:db8:1::5".parse().map_err(|_| "ip")?));
        assert!(!v6.contains("192.0.2.1".parse().map_err(|_| "ip")?));
        assert_eq!(Network::parse("10.1.2.3")?.to_string(), "10.1.2.3/32");
        let mapped = Network::parse("::ffff:192.0.2.0/120")?;
        assert_eq!(mapped.to_string(), "192.0.2.0/24");
        assert!(mapped.contains("192.0.2.9".parse().map_err(|_| "ip")?));
        assert!(Network::parse("0.0.0.0/0")?.contains("8.8.8.8".parse().map_err(|_| "ip")?));
        for bad in ["10.0.0.0/33", "::/129", "example.org/8", "10.0.0.0/x", ""] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
