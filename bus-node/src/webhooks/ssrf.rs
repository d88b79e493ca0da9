//! The SSRF guard: a webhook delivery may reach only public addresses, checked after DNS
//! resolution (a name that resolves to a private address is refused, whatever the name)
//! and on the address actually connected to (the resolver below hands the HTTP client
//! only permitted addresses, so a second lookup cannot swap in another). Refused:
//! loopback, private (RFC 1918, unique-local), link-local (which holds the cloud
//! metadata address 169.254.169.254), carrier-grade NAT, unspecified, broadcast,
//! multicast, documentation and benchmarking ranges, and IPv6 forms that embed an IPv4
//! address (mapped, NAT64, 6to4), judged by the address they embed. An operator allows
//! networks with `webhooks.allowed_networks` (CIDRs), which win over every refusal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} is a {kind} address; webhooks reach public addresses only (webhooks.allowed_networks can allow it)"
)]
pub struct Refused {
    pub address: IpAddr,
    pub kind: &'static str,
}

impl AddressPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Ok` if a delivery may connect to `address`.
    pub fn check(&self, address: IpAddr) -> Result<(), Refused> {
        if self.allowed.iter().any(|n| n.contains(&address)) {
            return Ok(());
        }
        match kind(address) {
            None => Ok(()),
            Some(kind) => Err(Refused { address, kind }),
        }
    }
}

/// The kind of a non-public address, `None` for a public one.
fn kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => kind_v4(v4),
        IpAddr::V6(v6) => kind_v6(v6),
    }
}

fn kind_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, o2, _] = a.octets();
    if a.is_unspecified() || o0 == 0 {
        Some("unspecified (\"this network\")")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_private() {
        Some("private")
    } else if a.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if o0 == 100 && (64..128).contains(&o1) {
        Some("carrier-grade NAT")
    } else if o0 == 192 && o1 == 0 && o2 == 0 {
        Some("IETF protocol assignment")
    } else if a.is_documentation() {
        Some("documentation")
    } else if o0 == 198 && (o1 == 18 || o1 == 19) {
        Some("benchmarking")
    } else if a.is_broadcast() || o0 >= 240 {
        Some("reserved or broadcast")
    } else if a.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

fn kind_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if let Some(v4) = embedded_v4(a) {
        return kind_v4(v4);
    }
    if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_loopback() {
        Some("loopback")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("unique-local (private)")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Some("site-local (private)")
    } else if a.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation")
    } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
        Some("discard-only")
    } else {
        None
    }
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let o = a.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mapped = s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff;
    let compatible = s[..6] == [0, 0, 0, 0, 0, 0] && !a.is_loopback() && !a.is_unspecified();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || compatible || nat64 {
        Some(low)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// A resolver for the delivery client that resolves with the system's resolver and
/// passes on only the addresses the policy permits; a name with none fails, naming the
/// first refusal.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    lookup: Lookup,
}

/// How names are looked up: the system's resolver, or (in tests) a resolver whose
/// answers the test controls.
pub type Lookup = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The system's resolver (`getaddrinfo`, as `tokio::net::lookup_host` runs it).
fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port on each address it gets.
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    })
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self::with_lookup(policy, system_lookup())
    }

    /// A guard over `lookup` instead of the system's resolver.
    pub fn with_lookup(policy: Arc<AddressPolicy>, lookup: Lookup) -> Self {
        Self { policy, lookup }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = lookup(host.clone())
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            let mut first_refusal = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        first_refusal.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (permitted.is_empty(), first_refusal) {
                (false, _) => {
                    let addrs: Addrs = Box::new(permitted.into_iter());
                    Ok(addrs)
                }
                // The refusal itself, so that the attempt can tell it from a failure.
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("{host} resolves to no address").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn refuses_every_non_public_address_and_allows_public_ones() {
        let policy = AddressPolicy::default();
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(policy.check(ip(refused)).is_err(), "{refused} was allowed");
        }
        for allowed in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(policy.check(ip(allowed)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn an_allowed_network_wins_over_the_refusal() {
        let net: IpNet = "10.20.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
        let policy = AddressPolicy::new(vec![net]);
        assert_eq!(policy.check(ip("10.20.3.4")), Ok(()));
        assert!(policy.check(ip("10.21.3.4")).is_err());
    }
}
