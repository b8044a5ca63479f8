//! KSR.ipops: IP address tests (Kamailio `ipops` module, its KEMI names).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.ipops.is_ip(ip)` | `int (str)` | 1 an IPv4, IPv6 or IPv6 reference (`[v6]`), -1 otherwise |
//! | `KSR.ipops.is_pure_ip(ip)` | `int (str)` | 1 an IPv4 or IPv6 (no brackets), -1 otherwise |
//! | `KSR.ipops.is_ip4(ip)` | `int (str)` | 1 an IPv4, -1 otherwise |
//! | `KSR.ipops.is_ip6(ip)` | `int (str)` | 1 an IPv6 (no brackets), -1 otherwise |
//! | `KSR.ipops.is_ip6_reference(ip)` | `int (str)` | 1 an IPv6 reference (`[v6]`), -1 otherwise |
//! | `KSR.ipops.ip_type(ip)` | `int (str)` | 1 IPv4, 2 IPv6, 3 IPv6 reference, -1 not an IP |
//! | `KSR.ipops.detailed_ip_type(ip, pv)` | `int (str, str)` | 1, the IPv4 or IPv6 type name written to pv (see below); -1 not an IP or pv not writable |
//! | `KSR.ipops.detailed_ipv4_type(ip, pv)` | `int (str, str)` | as `detailed_ip_type`, IPv4 only |
//! | `KSR.ipops.detailed_ipv6_type(ip, pv)` | `int (str, str)` | as `detailed_ip_type`, IPv6 (or reference) only |
//! | `KSR.ipops.compare_ips(ip1, ip2)` | `int (str, str)` | 1 the same address (an IPv6 may be compared with a reference), -1 otherwise |
//! | `KSR.ipops.compare_pure_ips(ip1, ip2)` | `int (str, str)` | 1 the same address, references refused; -1 otherwise |
//! | `KSR.ipops.ip_is_in_subnet(ip, nets)` / `is_in_subnet(ip, nets)` | `int (str, str)` | 1 `ip` (an IPv4 or IPv6, not a reference) inside one of the comma-separated CIDR subnets (`10.0.0.0/8,192.168.0.0/16`; no `/len` = the host), -1 otherwise |
//! | `KSR.ipops.is_ip_rfc1918(ip)` | `int (str)` | 1 an RFC 1918 private IPv4, -1 otherwise |
//! | `KSR.ipops.dns_sys_match_ip(hostname, ipaddr)` | `int (str, str)` | 1 `ipaddr` among the addresses the system resolver (getaddrinfo, `/etc/hosts`) gives for `hostname`; -1 not among them; -3 `ipaddr` not an IP; -4 the lookup failed or timed out |
//! | `KSR.ipops.dns_int_match_ip(hostname, ipaddr)` | `int (str, str)` | as `dns_sys_match_ip`, through the resolver of `[ipops] resolv_conf` (A and AAAA, `/etc/hosts` first) |
//! | `KSR.ipops.dns_query(hostname, pvid)` | `int (str, str)` | 1 the system resolver's addresses stored in `$dns(pvid=>...)`; -2 hostname over 255 bytes; -3 `pv_containers_max` containers in use; -4 the lookup failed or timed out (`count` 0) |
//! | `KSR.ipops.ptr_query(ip, pvid)` | `int (str, str)` | 1 the system resolver's host name for `ip` in `$ptrquery(pvid=>hostname)` (Kamailio 6.0, not in 5.6); -2 `ip` over 46 bytes; -3 no container free; -4 not an IP; -6 no name, the lookup failed or timed out (`count` 0) |
//! | `KSR.ipops.srv_query(srvcname, pvid)` | `int (str, str)` | 1 the SRV records stored in `$srvquery(pvid=>...)` (a name without records: 1, `count` 0); -2 empty name; -3 no container free; -4 the resolver failed or timed out (`count` 0) |
//! | `KSR.ipops.naptr_query(domain, pvid)` | `int (str, str)` | as `srv_query`, the NAPTR records in `$naptrquery(pvid=>...)` |
//! | `KSR.ipops.dns_set_local_ttl(vttl)` | `int (int)` | 1 (accepted; no effect: there is no internal DNS cache to set) |
//!
//! Detailed types, as Kamailio names them: IPv4 `PUBLIC`, `PRIVATE` (RFC
//! 1918, and 0.0.0.0/8 as Kamailio classes it), `SHARED` (100.64/10),
//! `LOOPBACK`, `LINK-LOCAL`, `RESERVED`, `TEST-NET`, `6TO4-RELAY`,
//! `MULTICAST`, `BROADCAST`; IPv6 (IANA's address space and special
//! registries) `UNSPECIFIED`, `LOOPBACK`, `IPV4MAP`, `DISCARD`, `BMWG`,
//! `TEREDO`, `DOCUMENTATION`, `ORCHID`, `6TO4`, `GLOBAL-UNICAST`,
//! `UNIQUE-LOCAL-UNICAST`, `LINK-LOCAL-UNICAST`, `MULTICAST`, `RESERVED`.
//! Addresses are taken as written (no trimming, no leading zeros), as
//! Kamailio 5.6 does; every value in this module's tests was checked against
//! it.
//!
//! DNS (code in `ipops_dns.rs`): a lookup suspends the route, never the
//! shard, while the control runtime resolves it (`[ipops] dns_timeout_ms`,
//! default 2000). Pseudo-variables: `$dns(pvid=>count|ipv4|ipv6|addr[i]|type[i])`
//! (`type` 4 or 6), `$srvquery(pvid=>count|port[i]|priority[i]|target[i]|weight[i])`
//! sorted by priority then weight (heaviest first),
//! `$naptrquery(pvid=>count|order[i]|pref[i]|flags[i]|services[i]|regex[i]|replace[i])`
//! sorted by order then preference,
//! `$ptrquery(pvid=>count|hostname|addr|type|ipv4|ipv6)`; `i` a number or `$var(name)`, negative
//! from the end; at most 32 records, strings cut at 64 bytes, as Kamailio.
//! Counted: `ipops.dns_lookups`, `ipops.dns_failures`, `ipops.dns_timeouts`,
//! `ipops.dns_truncated`, `ipops.containers_full`; timed: `ipops_dns_wait`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use mlua::{Lua, Table};

use super::{PvValue, Shared};

/// A one-address test.
type Test1 = fn(&str) -> bool;
/// A two-argument test.
type Test2 = fn(&str, &str) -> bool;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let one: [(&str, Test1); 6] = [
        ("is_ip", |s| parse(s).is_some()),
        ("is_pure_ip", |s| matches!(parse(s), Some((_, false)))),
        ("is_ip4", |s| matches!(parse(s), Some((IpAddr::V4(_), _)))),
        ("is_ip6", |s| {
            matches!(parse(s), Some((IpAddr::V6(_), false)))
        }),
        ("is_ip6_reference", |s| {
            matches!(parse(s), Some((IpAddr::V6(_), true)))
        }),
        ("is_ip_rfc1918", |s| match parse(s) {
            Some((IpAddr::V4(a), false)) => a.is_private(),
            _ => false,
        }),
    ];
    for (name, f) in one {
        t.set(
            name,
            lua.create_function(move |_, ip: mlua::String| Ok(rc(f(&ip.to_str()?))))?,
        )?;
    }
    t.set(
        "ip_type",
        lua.create_function(|_, ip: mlua::String| {
            Ok(match parse(&ip.to_str()?) {
                Some((IpAddr::V4(_), _)) => 1,
                Some((IpAddr::V6(_), false)) => 2,
                Some((IpAddr::V6(_), true)) => 3,
                None => -1,
            })
        })?,
    )?;
    let two: [(&str, Test2); 4] = [
        ("compare_ips", |a, b| match (parse(a), parse(b)) {
            (Some((x, _)), Some((y, _))) => x == y,
            _ => false,
        }),
        ("compare_pure_ips", |a, b| match (parse(a), parse(b)) {
            (Some((x, false)), Some((y, false))) => x == y,
            _ => false,
        }),
        ("ip_is_in_subnet", in_subnets),
        ("is_in_subnet", in_subnets),
    ];
    for (name, f) in two {
        t.set(
            name,
            lua.create_function(move |_, (a, b): (mlua::String, mlua::String)| {
                Ok(rc(f(&a.to_str()?, &b.to_str()?)))
            })?,
        )?;
    }
    for (name, family) in [
        ("detailed_ip_type", None),
        ("detailed_ipv4_type", Some(4)),
        ("detailed_ipv6_type", Some(6)),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (ip, pv): (mlua::String, mlua::String)| {
                let kind = match (parse(&ip.to_str()?), family) {
                    (Some((IpAddr::V4(a), false)), None | Some(4)) => ipv4_type(a),
                    (Some((IpAddr::V6(a), _)), None | Some(6)) => ipv6_type(a),
                    _ => return Ok(-1),
                };
                let value = Some(PvValue::Str(kind.as_bytes().to_vec()));
                match super::pv::set(&s, &pv.to_str()?, value) {
                    Ok(true) => Ok(1),
                    _ => Ok(-1),
                }
            })?,
        )?;
    }
    super::ipops_dns::register(lua, &t, shared)?;
    ksr.set("ipops", t)?;
    Ok(())
}

fn rc(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

/// An IPv4, an IPv6 or an IPv6 reference (`[v6]`, flagged true).
pub(super) fn parse(s: &str) -> Option<(IpAddr, bool)> {
    // no trimming: Kamailio refuses " 1.2.3.4"
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| (IpAddr::V6(a), true));
    }
    // Rust's parser takes exactly dotted-quad IPv4 and RFC 4291 IPv6 text
    s.parse::<IpAddr>().ok().map(|a| (a, false))
}

/// `ip` inside one of the comma-separated `net[/len]` subnets.
fn in_subnets(ip: &str, nets: &str) -> bool {
    // the address itself must be pure (Kamailio refuses a reference here)
    let Some((ip, false)) = parse(ip) else {
        return false;
    };
    nets.split(',').any(|net| {
        let net = net.trim();
        let (addr, len) = match net.split_once('/') {
            Some((a, l)) => match l.trim().parse::<u8>() {
                Ok(l) => (a, Some(l)),
                Err(_) => return false,
            },
            None => (net, None),
        };
        match (ip, parse(addr)) {
            (IpAddr::V4(a), Some((IpAddr::V4(n), _))) => {
                let len = len.unwrap_or(32);
                len <= 32 && prefix_eq(&a.octets(), &n.octets(), len)
            }
            (IpAddr::V6(a), Some((IpAddr::V6(n), _))) => {
                let len = len.unwrap_or(128);
                len <= 128 && prefix_eq(&a.octets(), &n.octets(), len)
            }
            _ => false,
        }
    })
}

/// The first `len` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// `net/len` as (network octets, len); a helper for the tables below.
fn v4_in(a: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    prefix_eq(&a.octets(), &net, len)
}

/// RFC 5735 / RFC 6598 class of an IPv4 address, most specific range first.
fn ipv4_type(a: Ipv4Addr) -> &'static str {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([255, 255, 255, 255], 32, "BROADCAST"),
        ([203, 0, 113, 0], 24, "TEST-NET"),
        ([198, 51, 100, 0], 24, "TEST-NET"),
        ([192, 88, 99, 0], 24, "6TO4-RELAY"),
        ([192, 0, 2, 0], 24, "TEST-NET"),
        ([192, 0, 0, 0], 24, "RESERVED"),
        ([192, 168, 0, 0], 16, "PRIVATE"),
        ([169, 254, 0, 0], 16, "LINK-LOCAL"),
        ([198, 18, 0, 0], 15, "RESERVED"),
        ([172, 16, 0, 0], 12, "PRIVATE"),
        ([100, 64, 0, 0], 10, "SHARED"),
        ([127, 0, 0, 0], 8, "LOOPBACK"),
        ([10, 0, 0, 0], 8, "PRIVATE"),
        ([0, 0, 0, 0], 8, "PRIVATE"),
        ([240, 0, 0, 0], 4, "RESERVED"),
        ([224, 0, 0, 0], 4, "MULTICAST"),
    ];
    RANGES
        .iter()
        .find(|(net, len, _)| v4_in(a, *net, *len))
        .map(|(_, _, name)| *name)
        .unwrap_or("PUBLIC")
}

/// IANA class of an IPv6 address, most specific range first.
fn ipv6_type(a: Ipv6Addr) -> &'static str {
    const RANGES: &[(u128, u8, &str)] = &[
        (0, 128, "UNSPECIFIED"),
        (1, 128, "LOOPBACK"),
        (0xffff_0000_0000, 96, "IPV4MAP"),
        (0x0100 << 112, 64, "DISCARD"),
        (0x2001_0002 << 96, 48, "BMWG"),
        (0x2001_0db8 << 96, 32, "DOCUMENTATION"),
        (0x2001_0000 << 96, 32, "TEREDO"),
        (0x2001_0010 << 96, 28, "ORCHID"),
        (0x2002 << 112, 16, "6TO4"),
        (0xfec0 << 112, 10, "RESERVED"),
        (0xfe80 << 112, 10, "LINK-LOCAL-UNICAST"),
        (0xfe00 << 112, 9, "RESERVED"),
        (0xff00 << 112, 8, "MULTICAST"),
        (0, 8, "RESERVED"),
        (0x0100 << 112, 8, "RESERVED"),
        (0xfc00 << 112, 7, "UNIQUE-LOCAL-UNICAST"),
        (0x0200 << 112, 7, "RESERVED"),
        (0x0400 << 112, 6, "RESERVED"),
        (0xf800 << 112, 6, "RESERVED"),
        (0x0800 << 112, 5, "RESERVED"),
        (0xf000 << 112, 5, "RESERVED"),
        (0x1000 << 112, 4, "RESERVED"),
        (0xe000 << 112, 4, "RESERVED"),
        (0x2000 << 112, 3, "GLOBAL-UNICAST"),
    ];
    let bits = u128::from(a);
    RANGES
        .iter()
        .find(|(net, len, _)| {
            let mask = if *len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(*len))
            };
            bits & mask == *net & mask
        })
        .map(|(_, _, name)| *name)
        .unwrap_or("RESERVED")
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, request, run};
    use super::*;

    #[test]
    fn address_forms() {
        assert!(parse("1.2.3.4").is_some());
        assert_eq!(parse("[::1]").map(|p| p.1), Some(true));
        assert_eq!(parse("::1").map(|p| p.1), Some(false));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "[1.2.3.4]",
            "256.1.1.1",
            "[::1",
            "example.com",
            "::g",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn subnets_and_types() {
        assert!(in_subnets("10.0.123.123", "10.0.123.1/24"));
        assert!(in_subnets("192.168.0.9", "10.0.0.0/16, 192.168.0.0/24"));
        assert!(!in_subnets("10.1.0.1", "10.0.0.0/16"));
        assert!(in_subnets("10.1.0.1", "0.0.0.0/0"));
        assert!(in_subnets("2001:db8::5", "2001:db8::/32"));
        assert!(in_subnets("2001:db8::5", "[2001:db8::5]"));
        // as Kamailio 5.6 answers (checked by running it)
        assert!(!in_subnets("[2001:db8::5]", "2001:db8::5"));
        assert!(parse(" 1.2.3.4").is_none());
        assert!(parse("01.2.3.4").is_none());
        assert!(!in_subnets("10.0.0.1", "2001:db8::/32"));
        assert!(!in_subnets("10.0.0.1", "10.0.0.0/33,10.0.0.0/x"));
        assert_eq!(ipv4_type("192.168.1.2".parse().unwrap()), "PRIVATE");
        assert_eq!(ipv4_type("100.64.0.1".parse().unwrap()), "SHARED");
        assert_eq!(ipv4_type("8.8.8.8".parse().unwrap()), "PUBLIC");
        assert_eq!(ipv4_type("192.0.2.7".parse().unwrap()), "TEST-NET");
        assert_eq!(ipv4_type("255.255.255.255".parse().unwrap()), "BROADCAST");
        assert_eq!(ipv4_type("239.1.1.1".parse().unwrap()), "MULTICAST");
        assert_eq!(ipv6_type("::".parse().unwrap()), "UNSPECIFIED");
        assert_eq!(ipv6_type("::1".parse().unwrap()), "LOOPBACK");
        assert_eq!(ipv6_type("::ffff:1.2.3.4".parse().unwrap()), "IPV4MAP");
        assert_eq!(ipv6_type("2001:db8::1".parse().unwrap()), "DOCUMENTATION");
        assert_eq!(ipv6_type("2001:0:1::1".parse().unwrap()), "TEREDO");
        assert_eq!(ipv6_type("2002::1".parse().unwrap()), "6TO4");
        assert_eq!(ipv6_type("2a00:1450::1".parse().unwrap()), "GLOBAL-UNICAST");
        assert_eq!(ipv6_type("fe80::1".parse().unwrap()), "LINK-LOCAL-UNICAST");
        assert_eq!(
            ipv6_type("fd00::1".parse().unwrap()),
            "UNIQUE-LOCAL-UNICAST"
        );
        assert_eq!(ipv6_type("ff02::1".parse().unwrap()), "MULTICAST");
    }

    #[test]
    fn ksr_ipops() {
        let eng = engine(
            r#"function ksr_request_route()
                a = KSR.ipops.is_ip("[::1]") b = KSR.ipops.is_pure_ip("[::1]")
                c = KSR.ipops.is_ip4("1.2.3.4") d = KSR.ipops.is_ip6("1.2.3.4")
                e = KSR.ipops.ip_type("[2001:db8::1]") f = KSR.ipops.ip_type("x")
                g = KSR.ipops.compare_ips("1080:0000:0000:0000:0008:0800:200C:417A", "[1080::8:800:200C:417A]")
                h = KSR.ipops.compare_pure_ips("::1", "[::1]")
                i = KSR.ipops.is_in_subnet(KSR.kx.get_srcip(), "192.0.2.0/24")
                j = KSR.ipops.is_ip_rfc1918("172.20.1.1")
                k = KSR.ipops.detailed_ip_type("192.168.1.2", "$var(t)")
                l = (KSR.pv.get("$var(t)") == "PRIVATE") and 1 or -1
                m = KSR.ipops.detailed_ipv6_type("1.2.3.4", "$var(t)")
                n = KSR.ipops.is_ip6_reference("[::1]")
            end"#,
        );
        run(&eng, &request("OPTIONS sip:192.0.2.20 SIP/2.0", None, &[]));
        for (name, want) in [
            ("a", 1),
            ("b", -1),
            ("c", 1),
            ("d", -1),
            ("e", 3),
            ("f", -1),
            ("g", 1),
            ("h", -1),
            ("i", 1),
            ("j", 1),
            ("k", 1),
            ("l", 1),
            ("m", -1),
            ("n", 1),
        ] {
            assert_eq!(global_int(&eng, name), want, "{name}");
        }
    }
}
