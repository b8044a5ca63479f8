//! KSR.ipops DNS functions (their rows are in the `//!` table of
//! `ipops.rs`): each lookup goes to the DNS worker on the control runtime
//! (`crate::db::dns`) and suspends the route, never the shard, until the
//! answer comes or `[ipops] dns_timeout_ms` passes. Results live in this
//! shard's `$dns`, `$srvquery` and `$naptrquery` containers, as Kamailio
//! keeps them per worker process, at most `pv_containers_max` of each kind.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table};

use super::pv::Val;
use super::services::unix_now_s;
use super::Shared;
use crate::db::dns::{DnsAnswer, DnsError, DnsQuery, NaptrRecord, SrvRecord};
use crate::stats::Counter;

/// Longest string kept in a `$srvquery`/`$naptrquery` field (as Kamailio).
const FIELD_MAX: usize = 64;
/// Longest host name `dns_query` accepts (as Kamailio).
const HOSTNAME_MAX: usize = 255;

/// This shard's DNS result containers.
pub struct DnsState {
    dns: RefCell<HashMap<String, Vec<IpAddr>>>,
    srv: RefCell<HashMap<String, Vec<SrvRecord>>>,
    naptr: RefCell<HashMap<String, Vec<NaptrRecord>>>,
    ptr: RefCell<HashMap<String, PtrResult>>,
    /// `dns_set_local_ttl` (kept, see docs/kemi-differences.md).
    local_ttl: Cell<i64>,
    wait_name: Arc<str>,
    log_s: Cell<u64>,
}

impl Default for DnsState {
    fn default() -> Self {
        DnsState {
            dns: RefCell::new(HashMap::new()),
            srv: RefCell::new(HashMap::new()),
            naptr: RefCell::new(HashMap::new()),
            ptr: RefCell::new(HashMap::new()),
            local_ttl: Cell::new(0),
            wait_name: Arc::from("ipops_dns_wait"),
            log_s: Cell::new(0),
        }
    }
}

/// One `ptr_query` container: the address asked and its host name.
struct PtrResult {
    addr: IpAddr,
    name: Option<String>,
}

fn warn_limited(s: &Shared, what: std::fmt::Arguments<'_>) {
    let now = unix_now_s();
    if s.dns.log_s.get() != now {
        s.dns.log_s.set(now);
        tracing::warn!(shard = s.shard_id, "ipops: {what}");
    }
}

type S = mlua::String;

pub(super) fn register(lua: &Lua, t: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    for (name, sys) in [("dns_sys_match_ip", true), ("dns_int_match_ip", false)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_async_function(move |_, (host, ip): (S, S)| {
                let s = s.clone();
                async move {
                    Ok(match_ip(&s, &host.to_string_lossy(), &ip.to_string_lossy(), sys).await)
                }
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "dns_query",
        lua.create_async_function(move |_, (host, pvid): (S, S)| {
            let s = s.clone();
            async move { Ok(dns_query(&s, host.to_string_lossy(), &pvid.to_string_lossy()).await) }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "ptr_query",
        lua.create_async_function(move |_, (ip, pvid): (S, S)| {
            let s = s.clone();
            async move { Ok(ptr_query(&s, &ip.to_string_lossy(), &pvid.to_string_lossy()).await) }
        })?,
    )?;
    for (name, naptr) in [("srv_query", false), ("naptr_query", true)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_async_function(move |_, (qname, pvid): (S, S)| {
                let s = s.clone();
                async move {
                    Ok(
                        record_query(&s, qname.to_string_lossy(), &pvid.to_string_lossy(), naptr)
                            .await,
                    )
                }
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "dns_set_local_ttl",
        lua.create_function(move |_, ttl: i64| {
            s.dns.local_ttl.set(ttl);
            Ok(1)
        })?,
    )?;
    Ok(())
}

/// Sends one lookup and waits; every outcome is counted here.
async fn lookup(s: &Rc<Shared>, q: DnsQuery) -> Result<DnsAnswer, DnsError> {
    s.counters.incr(Counter::IpopsDnsLookups);
    let t0 = Instant::now();
    let answer = match s.services.dns.as_ref() {
        None => Err(DnsError::Closed),
        Some(h) => match h.lookup(q.clone()) {
            Err(e) => Err(e),
            // The worker cuts the lookup at the timeout; this bound (a
            // little later) covers a queue that does not move at all.
            Ok(fut) => crate::exec::timeout(h.timeout() + Duration::from_millis(50), fut)
                .await
                .unwrap_or(Err(DnsError::Timeout)),
        },
    };
    s.record_route_time(&s.dns.wait_name, t0.elapsed());
    match &answer {
        Ok(a) if a.truncated => {
            s.counters.incr(Counter::IpopsDnsTruncated);
            warn_limited(s, format_args!("answer for {q:?} cut at 32 records"));
        }
        Ok(_) | Err(DnsError::NotFound) => {}
        Err(DnsError::Timeout) => {
            s.counters.incr(Counter::IpopsDnsTimeouts);
            warn_limited(s, format_args!("lookup {q:?} timed out"));
        }
        Err(e) => {
            s.counters.incr(Counter::IpopsDnsFailures);
            warn_limited(s, format_args!("lookup {q:?} failed: {e}"));
        }
    }
    answer
}

async fn match_ip(s: &Rc<Shared>, host: &str, ip: &str, sys: bool) -> i32 {
    let Some((want, _)) = super::ipops::parse(ip) else {
        return -3;
    };
    let q = if sys {
        DnsQuery::SysAddrs(host.to_owned())
    } else {
        DnsQuery::IntAddrs(host.to_owned())
    };
    match lookup(s, q).await {
        Ok(a) if a.addrs.contains(&want) => 1,
        Ok(_) => -1,
        Err(_) => -4,
    }
}

/// True when container `name` of `map` may be written (it exists, or there
/// is room); a refusal is counted and logged.
fn slot<T>(s: &Shared, map: &RefCell<HashMap<String, T>>, name: &str) -> bool {
    let m = map.borrow();
    if m.contains_key(name) || m.len() < s.services.ipops_containers_max {
        return true;
    }
    drop(m);
    s.counters.incr(Counter::IpopsContainersFull);
    warn_limited(
        s,
        format_args!(
            "container {name:?} refused: {} in use ([ipops] pv_containers_max)",
            s.services.ipops_containers_max
        ),
    );
    false
}

async fn dns_query(s: &Rc<Shared>, host: String, pvid: &str) -> i32 {
    if host.len() > HOSTNAME_MAX {
        return -2;
    }
    if !slot(s, &s.dns.dns, pvid) {
        return -3;
    }
    // As Kamailio: the container is emptied before the lookup.
    s.dns.dns.borrow_mut().insert(pvid.to_owned(), Vec::new());
    match lookup(s, DnsQuery::SysAddrs(host)).await {
        Ok(a) => {
            s.dns.dns.borrow_mut().insert(pvid.to_owned(), a.addrs);
            1
        }
        Err(_) => -4,
    }
}

/// Longest text address (INET6_ADDRSTRLEN - 1, as Kamailio checks).
const IP_TEXT_MAX: usize = 46;

async fn ptr_query(s: &Rc<Shared>, ip: &str, pvid: &str) -> i32 {
    if ip.len() > IP_TEXT_MAX {
        return -2;
    }
    if !slot(s, &s.dns.ptr, pvid) {
        return -3;
    }
    let Some((addr, _)) = super::ipops::parse(ip) else {
        s.dns.ptr.borrow_mut().remove(pvid);
        return -4;
    };
    s.dns
        .ptr
        .borrow_mut()
        .insert(pvid.to_owned(), PtrResult { addr, name: None });
    let name = match lookup(s, DnsQuery::Ptr(addr)).await {
        Ok(a) => a.names.into_iter().next(),
        Err(_) => None,
    };
    let found = name.is_some();
    s.dns
        .ptr
        .borrow_mut()
        .insert(pvid.to_owned(), PtrResult { addr, name });
    if found {
        1
    } else {
        -6
    }
}

async fn record_query(s: &Rc<Shared>, qname: String, pvid: &str, naptr: bool) -> i32 {
    if qname.is_empty() {
        return -2;
    }
    let room = if naptr {
        slot(s, &s.dns.naptr, pvid)
    } else {
        slot(s, &s.dns.srv, pvid)
    };
    if !room {
        return -3;
    }
    let q = if naptr {
        DnsQuery::Naptr(qname)
    } else {
        DnsQuery::Srv(qname)
    };
    let (answer, code) = match lookup(s, q).await {
        Ok(a) => (a, 1),
        // As Kamailio: a name without records is a success with count 0.
        Err(DnsError::NotFound) => (DnsAnswer::default(), 1),
        Err(_) => (DnsAnswer::default(), -4),
    };
    let mut cut = false;
    if naptr {
        let recs = answer
            .naptr
            .into_iter()
            .map(|mut r| {
                for f in [&mut r.flags, &mut r.services, &mut r.regex, &mut r.replace] {
                    cut |= truncate(f);
                }
                r
            })
            .collect();
        s.dns.naptr.borrow_mut().insert(pvid.to_owned(), recs);
    } else {
        let recs = answer
            .srv
            .into_iter()
            .map(|mut r| {
                cut |= truncate(&mut r.target);
                r
            })
            .collect();
        s.dns.srv.borrow_mut().insert(pvid.to_owned(), recs);
    }
    if cut {
        s.counters.incr(Counter::IpopsDnsTruncated);
        warn_limited(
            s,
            format_args!("a record field of {pvid:?} cut at 64 bytes"),
        );
    }
    code
}

/// Cuts `f` to [`FIELD_MAX`] bytes (on a character boundary); true if cut.
fn truncate(f: &mut String) -> bool {
    if f.len() <= FIELD_MAX {
        return false;
    }
    let mut end = FIELD_MAX;
    while !f.is_char_boundary(end) {
        end -= 1;
    }
    f.truncate(end);
    true
}

/// Splits `pvid=>key[idx]` into its parts (`idx` None without brackets).
fn split_arg(arg: &str) -> Option<(&str, &str, Option<&str>)> {
    let (name, key) = arg.split_once("=>")?;
    let key = key.trim();
    match key.split_once('[') {
        Some((k, rest)) => Some((name.trim(), k.trim(), Some(rest.strip_suffix(']')?))),
        None => Some((name.trim(), key, None)),
    }
}

/// The record at `idx` of `len` (negative counts from the end, as Kamailio).
fn pick(s: &Shared, idx: Option<&str>, len: usize) -> Option<usize> {
    let i = match idx {
        None => 0,
        Some(t) => super::pv::index_arg(s, t)?,
    };
    let len = i64::try_from(len).ok()?;
    let i = if i < 0 { len + i } else { i };
    if (0..len).contains(&i) {
        usize::try_from(i).ok()
    } else {
        None
    }
}

fn text(v: &str) -> Val {
    Val::Str(v.as_bytes().to_vec())
}

/// `$dns(pvid=>addr|type|ipv4|ipv6|count)`, `addr`/`type` with `[index]`.
pub(super) fn pv_dns(s: &Shared, arg: &str) -> Val {
    let Some((name, key, idx)) = split_arg(arg) else {
        return Val::Null;
    };
    let map = s.dns.dns.borrow();
    let Some(addrs) = map.get(name) else {
        return Val::Null;
    };
    match key {
        "count" => Val::Int(addrs.len() as i64),
        "ipv4" => Val::Int(i64::from(addrs.iter().any(IpAddr::is_ipv4))),
        "ipv6" => Val::Int(i64::from(addrs.iter().any(IpAddr::is_ipv6))),
        "addr" | "type" => match pick(s, idx, addrs.len()).and_then(|i| addrs.get(i)) {
            Some(a) if key == "addr" => text(&a.to_string()),
            Some(a) => Val::Int(if a.is_ipv4() { 4 } else { 6 }),
            None => Val::Null,
        },
        _ => Val::Null,
    }
}

/// `$ptrquery(pvid=>count|hostname|addr|type|ipv4|ipv6)`.
pub(super) fn pv_ptrquery(s: &Shared, arg: &str) -> Val {
    let Some((name, key, idx)) = split_arg(arg) else {
        return Val::Null;
    };
    let map = s.dns.ptr.borrow();
    let Some(r) = map.get(name) else {
        return Val::Null;
    };
    let count = usize::from(r.name.is_some());
    match key {
        "count" => Val::Int(count as i64),
        "ipv4" => Val::Int(i64::from(r.addr.is_ipv4())),
        "ipv6" => Val::Int(i64::from(r.addr.is_ipv6())),
        "addr" => text(&r.addr.to_string()),
        "type" => Val::Int(if r.addr.is_ipv4() { 4 } else { 6 }),
        "hostname" => match (pick(s, idx, count), &r.name) {
            (Some(_), Some(n)) => text(n),
            _ => Val::Null,
        },
        _ => Val::Null,
    }
}

/// `$srvquery(pvid=>count|port[i]|priority[i]|target[i]|weight[i])`.
pub(super) fn pv_srvquery(s: &Shared, arg: &str) -> Val {
    let Some((name, key, idx)) = split_arg(arg) else {
        return Val::Null;
    };
    let map = s.dns.srv.borrow();
    let Some(recs) = map.get(name) else {
        return Val::Null;
    };
    if key == "count" {
        return Val::Int(recs.len() as i64);
    }
    let Some(r) = pick(s, idx, recs.len()).and_then(|i| recs.get(i)) else {
        return Val::Null;
    };
    match key {
        "port" => Val::Int(i64::from(r.port)),
        "priority" => Val::Int(i64::from(r.priority)),
        "target" => text(&r.target),
        "weight" => Val::Int(i64::from(r.weight)),
        _ => Val::Null,
    }
}

/// `$naptrquery(pvid=>count|order[i]|pref[i]|flags[i]|services[i]|regex[i]|replace[i])`.
pub(super) fn pv_naptrquery(s: &Shared, arg: &str) -> Val {
    let Some((name, key, idx)) = split_arg(arg) else {
        return Val::Null;
    };
    let map = s.dns.naptr.borrow();
    let Some(recs) = map.get(name) else {
        return Val::Null;
    };
    if key == "count" {
        return Val::Int(recs.len() as i64);
    }
    let Some(r) = pick(s, idx, recs.len()).and_then(|i| recs.get(i)) else {
        return Val::Null;
    };
    match key {
        "order" => Val::Int(i64::from(r.order)),
        "pref" => Val::Int(i64::from(r.pref)),
        "flags" => text(&r.flags),
        "services" => text(&r.services),
        "regex" => text(&r.regex),
        "replace" => text(&r.replace),
        _ => Val::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split() {
        assert_eq!(split_arg("x=>count"), Some(("x", "count", None)));
        assert_eq!(
            split_arg("x => addr[$var(i)]"),
            Some(("x", "addr", Some("$var(i)")))
        );
        assert_eq!(split_arg("x=>addr[1"), None);
        assert_eq!(split_arg("count"), None);
    }

    #[test]
    fn fields_cut_on_char_boundary() {
        let mut f = "é".repeat(40);
        assert!(truncate(&mut f));
        assert!(f.len() <= FIELD_MAX);
        let mut g = "short".to_owned();
        assert!(!truncate(&mut g));
    }
}
