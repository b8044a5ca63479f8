//! KSR.permissions: address permissions (Kamailio `permissions` module,
//! `address` table). Registered only with `[permissions] enable = true`:
//! otherwise `KSR.permissions` is nil, as in a Kamailio without
//! permissions.so (Kamailio's basic script tests `if KSR.permissions then`).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.permissions.allow_source_address(group)` | `int (int)` | 1 the request's source IP and port match an entry of `group`; -1 not |
//! | `KSR.permissions.allow_source_address_group()` | `int ()` | the group of the first entry the source IP and port match; -1 none |
//! | `KSR.permissions.allow_address(group, ip, port)` | `int (int, str, int)` | 1 `ip`/`port` match an entry of `group`; -1 not |
//! | `KSR.permissions.allow_address_group(ip, port)` | `int (str, int)` | the group of the first matching entry; -1 none |
//!
//! Entries come from the `address` table (`grp, ip_addr, mask, port, tag`) of
//! `[db] url`, read at start and on `permissions.addressReload`. An entry
//! whose `mask` covers the whole address (or is 0, as Kamailio's doc says) is
//! an exact address, else a subnet; port 0 matches any port. An `ip_addr`
//! that is not an IP address is a DNS name, compared (exactly, as Kamailio)
//! with an argument that is not an IP either; no DNS lookup is made. Group
//! lookups try exact addresses first (the last loaded first, as Kamailio's
//! hash table), then subnets by group, then names (checked against Kamailio
//! 5.6 with the same address rows). The table is
//! shared by every shard and replaced whole on reload. Not implemented:
//! `allow_trusted` (the `trusted` table), address files, `peer_tag_avp`.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use mlua::{Lua, Table};

use super::Shared;
use crate::db::AddressRow;

/// What an entry matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Exact(IpAddr),
    /// Network address (already masked) and prefix length.
    Subnet(IpAddr, u8),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub grp: u32,
    target: Target,
    pub port: u16,
    pub tag: Option<String>,
    /// The row's `ip_addr` and `mask`, for the dump.
    pub ip_addr: String,
    pub mask: u8,
}

/// The loaded address table, ordered for group lookups.
#[derive(Clone, Debug, Default)]
pub struct AddrSet {
    entries: Vec<AddrEntry>,
}

fn v6(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn bits(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// `ip` with only its first `len` bits kept.
fn masked(ip: IpAddr, len: u8) -> IpAddr {
    let total = bits(&ip);
    let len = len.min(total);
    let keep = if len == 0 {
        0
    } else {
        u128::MAX << (u32::from(total - len))
    };
    match ip {
        IpAddr::V4(_) => {
            let m = (keep & 0xffff_ffff) as u32;
            IpAddr::V4(std::net::Ipv4Addr::from((v6(ip) as u32) & m))
        }
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(v6(ip) & keep)),
    }
}

/// An IPv4-mapped IPv6 source address as IPv4 (as Kamailio's `$si`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok()
}

impl AddrSet {
    /// Builds the set from rows; rows with a group outside 0..=u32::MAX, a
    /// port outside 0..=65535 or a bad mask are skipped (counted in the
    /// second value).
    pub fn from_rows(rows: &[AddressRow]) -> (AddrSet, usize) {
        let mut exact = Vec::new();
        let mut subnets = Vec::new();
        let mut names = Vec::new();
        let mut skipped = 0;
        for r in rows {
            let (Ok(grp), Ok(port)) = (u32::try_from(r.grp), u16::try_from(r.port)) else {
                skipped += 1;
                continue;
            };
            let ip_addr = r.ip_addr.trim().to_string();
            let (target, mask) = match parse_ip(&ip_addr) {
                Some(ip) => {
                    let total = bits(&ip);
                    let Ok(mask) = u8::try_from(r.mask) else {
                        skipped += 1;
                        continue;
                    };
                    if mask > total {
                        skipped += 1;
                        continue;
                    }
                    if mask == 0 || mask == total {
                        (Target::Exact(ip), total)
                    } else {
                        (Target::Subnet(masked(ip, mask), mask), mask)
                    }
                }
                None if !ip_addr.is_empty() => (Target::Name(ip_addr.clone()), 0),
                None => {
                    skipped += 1;
                    continue;
                }
            };
            let e = AddrEntry {
                grp,
                target,
                port,
                tag: r.tag.clone(),
                ip_addr,
                mask,
            };
            match e.target {
                Target::Exact(_) => exact.push(e),
                Target::Subnet(..) => subnets.push(e),
                Target::Name(_) => names.push(e),
            }
        }
        subnets.sort_by_key(|e| e.grp);
        // Kamailio finds the last loaded of several equal addresses first.
        exact.reverse();
        exact.extend(subnets);
        exact.extend(names);
        (AddrSet { entries: exact }, skipped)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[AddrEntry] {
        &self.entries
    }

    /// The first entry (of `grp`, when given) that `addr`/`port` match.
    pub fn find(&self, grp: Option<u32>, addr: &str, port: u16) -> Option<&AddrEntry> {
        let ip = parse_ip(addr);
        let name = addr.trim();
        self.entries.iter().find(|e| {
            grp.is_none_or(|g| g == e.grp)
                && (e.port == 0 || e.port == port)
                && match (&e.target, ip) {
                    (Target::Exact(a), Some(ip)) => *a == ip,
                    (Target::Subnet(net, len), Some(ip)) => {
                        bits(net) == bits(&ip) && masked(ip, *len) == *net
                    }
                    (Target::Name(n), None) => n == name,
                    _ => false,
                }
        })
    }
}

/// The address table every shard reads; replaced whole on reload.
pub struct AddressTable {
    set: RwLock<Arc<AddrSet>>,
}

impl Default for AddressTable {
    fn default() -> Self {
        AddressTable {
            set: RwLock::new(Arc::new(AddrSet::default())),
        }
    }
}

impl AddressTable {
    pub fn current(&self) -> Arc<AddrSet> {
        match self.set.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the table with `rows`; returns (entries, skipped rows).
    pub fn replace(&self, rows: &[AddressRow]) -> (usize, usize) {
        let (set, skipped) = AddrSet::from_rows(rows);
        let n = set.len();
        let new = Arc::new(set);
        match self.set.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
        (n, skipped)
    }
}

fn port_of(p: i64) -> Option<u16> {
    u16::try_from(p).ok()
}

fn allow(s: &Shared, grp: i64, addr: &str, port: i64) -> i64 {
    let (Ok(grp), Some(port)) = (u32::try_from(grp), port_of(port)) else {
        return -1;
    };
    let set = s.services.tables.permissions.current();
    if set.find(Some(grp), addr, port).is_some() {
        1
    } else {
        -1
    }
}

fn group_of(s: &Shared, addr: &str, port: i64) -> i64 {
    let Some(port) = port_of(port) else {
        return -1;
    };
    let set = s.services.tables.permissions.current();
    set.find(None, addr, port)
        .map(|e| i64::from(e.grp))
        .unwrap_or(-1)
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "allow_source_address",
        lua.create_function(move |_, grp: i64| {
            let src = s.with_msg(|m| m.src)?;
            let ip = canonical(src.ip()).to_string();
            Ok(allow(&s, grp, &ip, i64::from(src.port())))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "allow_source_address_group",
        lua.create_function(move |_, ()| {
            let src = s.with_msg(|m| m.src)?;
            let ip = canonical(src.ip()).to_string();
            Ok(group_of(&s, &ip, i64::from(src.port())))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "allow_address",
        lua.create_function(move |_, (grp, ip, port): (i64, mlua::String, i64)| {
            Ok(allow(&s, grp, &ip.to_str()?, port))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "allow_address_group",
        lua.create_function(move |_, (ip, port): (mlua::String, i64)| {
            Ok(group_of(&s, &ip.to_str()?, port))
        })?,
    )?;
    ksr.set("permissions", t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{
        engine, engine_on, global_int, request, run, run_from, tables_with,
    };

    fn row(grp: i64, ip: &str, mask: i64, port: i64) -> AddressRow {
        AddressRow {
            grp,
            ip_addr: ip.into(),
            mask,
            port,
            tag: None,
        }
    }

    fn set() -> AddrSet {
        let (s, skipped) = AddrSet::from_rows(&[
            row(1, "192.0.2.9", 32, 0),
            row(2, "10.1.0.0", 16, 5060),
            row(3, "2001:db8::", 32, 0),
            row(4, "gw.example.com", 0, 0),
            row(5, "198.51.100.7", 0, 5070),
            row(1, "not valid", 99, 0),
            row(1, "192.0.2.1", 33, 0),
            row(-1, "192.0.2.2", 32, 0),
            row(1, "192.0.2.3", 32, 70_000),
        ]);
        assert_eq!(skipped, 3, "bad mask, negative group, bad port");
        s
    }

    #[test]
    fn exact_subnet_name_and_port_matching() {
        let s = set();
        assert_eq!(s.len(), 6);
        assert!(s.find(Some(1), "192.0.2.9", 1234).is_some(), "port 0 = any");
        assert!(s.find(Some(2), "192.0.2.9", 1234).is_none(), "other group");
        assert!(s.find(Some(2), "10.1.200.3", 5060).is_some(), "in the /16");
        assert!(
            s.find(Some(2), "10.1.200.3", 5061).is_none(),
            "port differs"
        );
        assert!(
            s.find(Some(2), "10.2.0.1", 5060).is_none(),
            "outside the /16"
        );
        assert!(s.find(Some(3), "2001:db8:1::5", 1).is_some());
        assert!(s.find(Some(3), "[2001:db9::5]", 1).is_none());
        assert!(s.find(Some(4), "gw.example.com", 9).is_some());
        assert!(
            s.find(Some(4), "GW.example.com", 9).is_none(),
            "names: exact"
        );
        assert!(s.find(Some(4), "gw.example.org", 9).is_none());
        assert!(
            s.find(Some(5), "198.51.100.7", 5070).is_some(),
            "mask 0 = exact"
        );
        assert!(s.find(Some(5), "198.51.100.8", 5070).is_none());
        assert!(
            s.find(Some(1), "::ffff:192.0.2.9", 1).is_none(),
            "as Kamailio"
        );
        assert_eq!(s.find(None, "10.1.0.1", 5060).map(|e| e.grp), Some(2));
        // Equal exact addresses: the last loaded is found first (Kamailio).
        let (two, _) =
            AddrSet::from_rows(&[row(1, "192.0.2.9", 32, 0), row(8, "192.0.2.9", 32, 0)]);
        assert_eq!(two.find(None, "192.0.2.9", 1).map(|e| e.grp), Some(8));
    }

    #[test]
    fn ksr_allow_functions() {
        let tables = tables_with("[permissions]\nenable = true\n");
        tables
            .permissions
            .replace(&[row(1, "192.0.2.9", 32, 0), row(7, "192.0.2.0", 24, 5060)]);
        let eng = engine_on(
            r#"
            function ksr_request_route()
                a = KSR.permissions.allow_source_address(1)
                b = KSR.permissions.allow_source_address(2)
                g = KSR.permissions.allow_source_address_group()
                c = KSR.permissions.allow_address(7, "192.0.2.44", 5060)
                d = KSR.permissions.allow_address(7, "192.0.2.44", 5080)
                e = KSR.permissions.allow_address_group("192.0.2.44", 5060)
                f = KSR.permissions.allow_address_group("203.0.113.1", 5060)
                h = KSR.permissions.allow_address(1, "192.0.2.9", 99999)
            end"#,
            tables,
            0,
            1,
        );
        let msg = request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]);
        run(&eng, &msg);
        for (g, v) in [
            ("a", 1),
            ("b", -1),
            ("g", 1),
            ("c", 1),
            ("d", -1),
            ("e", 7),
            ("f", -1),
            ("h", -1),
        ] {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
        run_from(&eng, &msg, "192.0.2.10:5060");
        assert_eq!(global_int(&eng, "a"), -1);
        assert_eq!(global_int(&eng, "g"), 7, "the /24 of group 7 at port 5060");
    }

    #[test]
    fn module_is_nil_unless_enabled() {
        let eng = engine("function ksr_request_route() present = KSR.permissions ~= nil end");
        run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "present"), 0);
        let eng = engine_on(
            "function ksr_request_route() present = KSR.permissions ~= nil end",
            tables_with("[permissions]\nenable = true\n"),
            0,
            1,
        );
        run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "present"), 1);
    }
}
