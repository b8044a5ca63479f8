//! KSR.dispatcher: load balancing over destination sets (Kamailio's
//! `dispatcher` module). Registered only when `[dispatcher]` sets
//! `list_file` or `db_url`: otherwise `KSR.dispatcher` is nil and nothing
//! runs per message.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.dispatcher.ds_select_dst(set, alg)` | `int (int, int)` | 1 a destination of `set` chosen by `alg` is in `$du` (the others in the XAVP with `flags` 2); -1 no such set, none active, or `$du` set and `force_dst` 0 |
//! | `KSR.dispatcher.ds_select_dst_limit(set, alg, limit)` | `int (int, int, int)` | as ds_select_dst, at most `limit` destinations in the XAVP |
//! | `KSR.dispatcher.ds_select_domain(set, alg)` | `int (int, int)` | as ds_select_dst, writing host and port of the R-URI |
//! | `KSR.dispatcher.ds_select_domain_limit(set, alg, limit)` | `int (int, int, int)` | as ds_select_domain, at most `limit` |
//! | `KSR.dispatcher.ds_select(set, alg)` | `int (int, int)` | 1 the selection is only in the XAVP (`ds_set_dst`/`ds_set_domain` apply the first, `ds_next_*` the next); -1 as ds_select_dst |
//! | `KSR.dispatcher.ds_select_limit(set, alg, limit)` | `int (int, int, int)` | as ds_select, at most `limit` |
//! | `KSR.dispatcher.ds_select_routes(rules, mode)` | `int (str, str)` | 1 selected over `grp=alg;grp=alg` rules, the first pushed to `$du` (mode `d`/`0`), the R-URI (`r`/`1`) or only the XAVP (`x`/`2`); -1 none |
//! | `KSR.dispatcher.ds_select_routes_limit(rules, mode, limit)` | `int (str, str, int)` | as ds_select_routes, at most `limit` |
//! | `KSR.dispatcher.ds_next_dst()` | `int ()` | 1 `$du` is the next destination of the XAVP (the failed one dropped); -1 none left |
//! | `KSR.dispatcher.ds_next_domain()` | `int ()` | as ds_next_dst, writing host and port of the R-URI |
//! | `KSR.dispatcher.ds_set_dst()` | `int ()` | 1 `$du` is the current destination of the XAVP; -1 none |
//! | `KSR.dispatcher.ds_set_domain()` | `int ()` | as ds_set_dst, for the R-URI |
//! | `KSR.dispatcher.ds_mark_dst()` | `int ()` | 1 the current destination (head of the XAVP) is marked inactive; -1 none |
//! | `KSR.dispatcher.ds_mark_dst_state(state)` | `int (str)` | 1 marked `a`, `i`, `t` (counts toward `ds_probing_threshold`) or `d`, with `p` for probing; -1 none or bad state |
//! | `KSR.dispatcher.ds_mark_addr(state, set, uri)` | `int (str, int, str)` | 1 destination `uri` of `set` marked as ds_mark_dst_state; -1 not found |
//! | `KSR.dispatcher.ds_is_from_lists()` | `int ()` | 1 the source IP and port are a destination of any set; -1 not |
//! | `KSR.dispatcher.ds_is_from_list(set)` | `int (int)` | as ds_is_from_lists, within `set` (-1: all sets) |
//! | `KSR.dispatcher.ds_is_from_list_mode(set, mode)` | `int (int, int)` | with `mode` bits 1 ignore port, 2 ignore protocol, 4 only active ones (8, 16 accepted, no effect: one socket) |
//! | `KSR.dispatcher.ds_is_from_list_uri(set, mode, uri)` | `int (int, int, str)` | as ds_is_from_list_mode, matching the host, port and transport of `uri` |
//! | `KSR.dispatcher.ds_is_active(set)` | `int (int)` | 1 `set` has an active destination; -1 not |
//! | `KSR.dispatcher.ds_is_active_uri(set, uri)` | `int (int, str)` | 1 destination `uri` of `set` is active; -1 not |
//! | `KSR.dispatcher.ds_list_exists(set)` | `int (int)` | 1 the set exists; -1 not |
//! | `KSR.dispatcher.ds_load_update()` | `int ()` | alg 10: 1 a BYE/CANCEL removed its call's load, or a 2xx to the INVITE confirmed it; -1 no such call |
//! | `KSR.dispatcher.ds_load_unset()` | `int ()` | alg 10: 1 the call's load removed; -1 no such call |
//! | `KSR.dispatcher.ds_reload()` | `int ()` | 1 the sets are read again (file: now; database: when the query answers); -1 error |
//!
//! The sets, each destination's state (active/trying/inactive/disabled,
//! probing, latency) and the round-robin positions are one state for the
//! whole server (`crate::dispatcher`). Hash algorithms use sipshard's FNV
//! hash, so a given Call-ID may land on another destination than under
//! Kamailio (the spread is the same). Destination host names are not
//! resolved (no DNS): such destinations are selectable but not probed or
//! matched by `ds_is_from_list`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use mlua::{Lua, Table};

use super::{MsgCtx, PvValue, Shared};
use crate::config::{Config, DispatcherConfig};
use crate::dispatcher::list::{self, Dest, DsSet, Proto, Transition};
use crate::dispatcher::select::{self, HashSource, SelectCtx};
use crate::dispatcher::{load::CallLoad, Dispatcher, DsList, DsParams, ProbeParams, ReplyCodes};
use crate::sip::{HdrName, Method, Scheme, SipUri};

/// The server's dispatcher for `config`, when the module is configured
/// (no sets loaded yet: see [`load`]).
pub fn build(config: &Config, now_ms: u64) -> Option<Arc<Dispatcher>> {
    let d = &config.dispatcher;
    if !d.enabled() {
        return None;
    }
    let params = DsParams {
        flags: d.flags,
        use_default: d.use_default != 0,
        force_dst: d.force_dst != 0,
        xavp_dst: d.xavp_dst.clone(),
        xavp_dst_mode: d.xavp_dst_mode,
        xavp_ctx: d.xavp_ctx.clone(),
        xavp_ctx_mode: d.xavp_ctx_mode,
        hash_size: d.ds_hash_size,
        limits: list::ListLimits {
            max_sets: d.max_sets,
            max_destinations: d.max_destinations,
        },
    };
    let timeout_ms = if d.ds_ping_fr_timer > 0 {
        d.ds_ping_fr_timer.saturating_mul(1000)
    } else {
        config.tm.fr_timer_ms
    };
    let probe = ProbeParams {
        interval_ms: d.ds_ping_interval.saturating_mul(1000),
        timeout_ms,
        t1_ms: config.tm.t1_ms,
        t2_ms: config.tm.t2_ms,
        mode: d.ds_probing_mode,
        probing_threshold: d.ds_probing_threshold,
        inactive_threshold: d.ds_inactive_threshold,
        reply_codes: ReplyCodes::parse(&d.ds_ping_reply_codes).unwrap_or_default(),
        latency_stats: d.ds_ping_latency_stats != 0,
        alpha: f64::from(d.ds_latency_estimator_alpha) / 1000.0,
        from: d.ds_ping_from.clone(),
        max_pending: d.max_pending_pings,
    };
    let calls = CallLoad::new(d.max_calls, d.ds_hash_initexpire, d.ds_hash_expire);
    let mut salt = [0u8; 4];
    let _ = getrandom::getrandom(&mut salt);
    Some(Arc::new(Dispatcher::new(
        params,
        probe,
        calls,
        now_ms,
        u32::from_le_bytes(salt),
    )))
}

/// Reads the sets (file or database) into `ds`: (destinations, skipped rows).
pub async fn load(
    ds: &Dispatcher,
    cfg: &DispatcherConfig,
    db: Option<&crate::db::DbHandle>,
) -> Result<(usize, usize), String> {
    let rows = if !cfg.list_file.is_empty() {
        let text = std::fs::read_to_string(&cfg.list_file)
            .map_err(|e| format!("dispatcher list_file {}: {e}", cfg.list_file))?;
        let (rows, skipped) = DsList::parse_file(&text);
        for s in &skipped {
            tracing::warn!(file = %cfg.list_file, line = s.line, "dispatcher: {}", s.why);
        }
        rows
    } else {
        let Some(db) = db else {
            return Err("dispatcher db_url: no database".into());
        };
        let cols = [
            cfg.setid_col.as_str(),
            cfg.destination_col.as_str(),
            cfg.flags_col.as_str(),
            cfg.priority_col.as_str(),
            cfg.attrs_col.as_str(),
        ];
        db.dispatcher_load(&cfg.table_name, cols, cfg.max_destinations)
            .map_err(|e| format!("loading dispatcher: {e}"))?
            .await
            .map_err(|e| format!("loading dispatcher from {}: {e}", cfg.table_name))?
    };
    Ok(install(ds, &rows))
}

fn install(ds: &Dispatcher, rows: &[crate::dispatcher::DsRow]) -> (usize, usize) {
    let (new, skipped) = DsList::from_rows(rows, ds.params.limits);
    for s in skipped.iter().take(20) {
        tracing::warn!(row = s.line, "dispatcher: destination skipped: {}", s.why);
    }
    let n = new.len();
    ds.replace(new);
    (n, skipped.len())
}

/// The list as one shard sees it: re-taken only when a reload bumped the
/// generation (one atomic load per call otherwise).
struct ShardView {
    ds: Arc<Dispatcher>,
    gen: Cell<u64>,
    list: RefCell<Arc<DsList>>,
    /// Selection scratch (no allocation per call).
    picks: RefCell<Vec<usize>>,
    cfg: DispatcherConfig,
}

impl ShardView {
    fn list(&self) -> Arc<DsList> {
        let g = self.ds.generation();
        if g != self.gen.get() {
            *self.list.borrow_mut() = self.ds.list();
            self.gen.set(g);
        }
        self.list.borrow().clone()
    }
}

/// Where a selection puts its first destination.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Push {
    Dst,
    Domain,
    XavpOnly,
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let Some(ds) = shared.services.tables.dispatcher.clone() else {
        return Ok(());
    };
    let view = Rc::new(ShardView {
        gen: Cell::new(ds.generation()),
        list: RefCell::new(ds.list()),
        cfg: shared.services.tables.dispatcher_cfg.clone(),
        ds,
        picks: RefCell::new(Vec::with_capacity(16)),
    });
    let t = lua.create_table()?;
    macro_rules! f {
        ($name:literal, $args:ty, |$s:ident, $v:ident, $a:pat_param| $body:expr) => {{
            let $s = shared.clone();
            let $v = view.clone();
            t.set(
                $name,
                lua.create_function(move |_, $a: $args| -> mlua::Result<i64> { Ok($body) })?,
            )?;
        }};
    }
    f!("ds_select_dst", (i64, i64), |s, v, (set, alg)| select_one(
        &s,
        &v,
        set,
        alg,
        0,
        Push::Dst
    ));
    f!(
        "ds_select_dst_limit",
        (i64, i64, i64),
        |s, v, (set, alg, lim)| select_one(&s, &v, set, alg, lim, Push::Dst)
    );
    f!("ds_select_domain", (i64, i64), |s, v, (set, alg)| {
        select_one(&s, &v, set, alg, 0, Push::Domain)
    });
    f!("ds_select_domain_limit", (i64, i64, i64), |s,
                                                   v,
                                                   (
        set,
        alg,
        lim,
    )| {
        select_one(&s, &v, set, alg, lim, Push::Domain)
    });
    f!("ds_select", (i64, i64), |s, v, (set, alg)| select_one(
        &s,
        &v,
        set,
        alg,
        0,
        Push::XavpOnly
    ));
    f!(
        "ds_select_limit",
        (i64, i64, i64),
        |s, v, (set, alg, lim)| select_one(&s, &v, set, alg, lim, Push::XavpOnly)
    );
    f!("ds_select_routes", (mlua::String, mlua::String), |s,
                                                          v,
                                                          (
        rules,
        mode,
    )| {
        select_routes(&s, &v, &rules.to_string_lossy(), &mode.to_string_lossy(), 0)
    });
    f!(
        "ds_select_routes_limit",
        (mlua::String, mlua::String, i64),
        |s, v, (rules, mode, lim)| {
            select_routes(
                &s,
                &v,
                &rules.to_string_lossy(),
                &mode.to_string_lossy(),
                lim,
            )
        }
    );
    f!("ds_next_dst", (), |s, v, ()| next(&s, &v, Push::Dst, true)?);
    f!("ds_next_domain", (), |s, v, ()| next(
        &s,
        &v,
        Push::Domain,
        true
    )?);
    f!("ds_set_dst", (), |s, v, ()| next(&s, &v, Push::Dst, false)?);
    f!("ds_set_domain", (), |s, v, ()| next(
        &s,
        &v,
        Push::Domain,
        false
    )?);
    f!("ds_mark_dst", (), |s, v, ()| mark_current(&s, &v, "i")?);
    f!("ds_mark_dst_state", mlua::String, |s, v, st| mark_current(
        &s,
        &v,
        &st.to_string_lossy()
    )?);
    f!("ds_mark_addr", (mlua::String, i64, mlua::String), |_s,
                                                           v,
                                                           (
        st,
        set,
        uri,
    )| {
        mark_addr(&v, &st.to_string_lossy(), set, &uri.to_string_lossy())
    });
    f!("ds_is_from_lists", (), |s, v, ()| from_list(
        &s, &v, -1, 2, None
    )?);
    f!("ds_is_from_list", i64, |s, v, set| from_list(
        &s, &v, set, 2, None
    )?);
    f!("ds_is_from_list_mode", (i64, i64), |s, v, (set, mode)| {
        from_list(&s, &v, set, mode, None)?
    });
    f!("ds_is_from_list_uri", (i64, i64, mlua::String), |s,
                                                         v,
                                                         (
        set,
        mode,
        uri,
    )| {
        from_list(&s, &v, set, mode, Some(&uri.to_string_lossy()))?
    });
    f!("ds_is_active", i64, |_s, v, set| is_active(&v, set, None));
    f!(
        "ds_is_active_uri",
        (i64, mlua::String),
        |_s, v, (set, uri)| is_active(&v, set, Some(&uri.to_string_lossy()))
    );
    f!("ds_list_exists", i64, |_s, v, set| {
        match i32::try_from(set)
            .ok()
            .and_then(|id| v.list().set(id).map(|_| ()))
        {
            Some(()) => 1,
            None => -1,
        }
    });
    f!("ds_load_update", (), |s, v, ()| load_update(&s, &v)?);
    f!("ds_load_unset", (), |s, v, ()| load_unset(&s, &v)?);
    f!("ds_reload", (), |s, v, ()| reload(&s, &v));
    ksr.set("dispatcher", t)?;
    Ok(())
}

fn ret(b: bool) -> i64 {
    if b {
        1
    } else {
        -1
    }
}

/// Hash of a URI as Kamailio's dispatcher takes it: user only (`flags` 1)
/// or user, host and a port other than the scheme's default.
fn uri_hash(uri: &[u8], user_only: bool) -> Option<u64> {
    let u = SipUri::parse(uri).ok()?;
    let user = u.user.unwrap_or(b"");
    if user_only {
        return Some(crate::partition::hash_key(user));
    }
    let default = if u.scheme == Scheme::Sips { 5061 } else { 5060 };
    let port = u.port.filter(|&p| p != default).map(|p| p.to_string());
    Some(crate::partition::hash_parts(&[
        user,
        b"@",
        u.host,
        b":",
        port.as_deref().unwrap_or("").as_bytes(),
    ]))
}

fn message_hash(m: &MsgCtx, src: HashSource, user_only: bool) -> Option<u64> {
    let msg = m.msg();
    match src {
        HashSource::CallId => msg.call_id().map(crate::partition::hash_key),
        HashSource::FromUri => msg.from().ok().and_then(|f| uri_hash(f.uri, user_only)),
        HashSource::ToUri => msg.to().ok().and_then(|t| uri_hash(t.uri, user_only)),
        HashSource::RequestUri => m.ruri().and_then(|r| uri_hash(r, user_only)),
        HashSource::AuthUser => [HdrName::ProxyAuthorization, HdrName::Authorization]
            .iter()
            .filter_map(|&h| msg.header(h))
            .find_map(|v| crate::auth::Credentials::parse(v).ok())
            .map(|c| crate::partition::hash_key(c.username.unescaped().as_bytes())),
        HashSource::None => None,
    }
}

/// The XAVP item of destination `d` of `set`.
fn xavp_item(v: &ShardView, set: &DsSet, d: &Dest, alg10: bool) -> Vec<(String, PvValue)> {
    let mut f = vec![
        ("grp".to_string(), PvValue::Int(i64::from(set.id))),
        ("uri".to_string(), PvValue::Str(d.uri.clone().into_bytes())),
    ];
    if alg10 && !d.attrs.duid.is_empty() {
        f.push((
            "dstid".to_string(),
            PvValue::Str(d.attrs.duid.clone().into_bytes()),
        ));
    }
    if v.ds.params.xavp_dst_mode & 1 == 0 {
        f.push((
            "attrs".to_string(),
            PvValue::Str(d.attrs.body.clone().into_bytes()),
        ));
    }
    if v.ds.params.xavp_dst_mode & 2 != 0 && !d.attrs.socket.is_empty() {
        f.push((
            "socket".to_string(),
            PvValue::Str(d.attrs.socket.clone().into_bytes()),
        ));
    }
    f
}

/// Writes `uri`'s host and port into the R-URI (ds_select_domain).
fn set_domain(m: &mut MsgCtx, uri: &str) -> bool {
    let Ok(d) = SipUri::parse(uri.as_bytes()) else {
        return false;
    };
    let Some(cur) = m.ruri().map(<[u8]>::to_vec) else {
        return false;
    };
    let Ok(u) = SipUri::parse(&cur) else {
        return false;
    };
    let with_host = super::pv::rebuild_uri(&u, "$rd", Some(d.host));
    let Ok(u2) = SipUri::parse(&with_host) else {
        return false;
    };
    let port = d.port.map(|p| p.to_string());
    let new = super::pv::rebuild_uri(&u2, "$rp", port.as_deref().map(str::as_bytes));
    m.new_ruri = Some(new);
    true
}

/// Applies the first selected destination and writes the XAVPs.
fn apply(
    s: &Shared,
    v: &ShardView,
    l: &DsList,
    chosen: &[(usize, usize, bool)],
    push: Push,
) -> i64 {
    let Some((si, di, _)) = chosen.first() else {
        return -1;
    };
    let Some(first) = l.sets.get(*si).and_then(|set| set.dests.get(*di)) else {
        return -1;
    };
    // Without `flags` 2 Kamailio 5.6 stores no destination at all (and
    // `_dsctx_=>cnt` is 0): ds_next_dst and ds_mark_dst then return -1.
    let failover = v.ds.params.flags & 2 != 0;
    let items: Vec<Vec<(String, PvValue)>> = chosen
        .iter()
        .take(if failover { usize::MAX } else { 0 })
        .filter_map(|(si, di, alg10)| {
            let set = l.sets.get(*si)?;
            Some(xavp_item(v, set, set.dests.get(*di)?, *alg10))
        })
        .collect();
    let cnt = items.len() as i64;
    let p = &v.ds.params;
    let r = s.with_msg(|m| {
        match push {
            Push::Dst => m.dst_uri = Some(first.uri.clone().into_bytes()),
            Push::Domain => {
                if !set_domain(m, &first.uri) {
                    return -1;
                }
            }
            Push::XavpOnly => {}
        }
        if !m.pv.xavp_set_items(&p.xavp_dst, items) {
            return -1;
        }
        if p.xavp_ctx_mode & 1 == 0 {
            m.pv.xavp_set_items(
                &p.xavp_ctx,
                vec![vec![("cnt".to_string(), PvValue::Int(cnt))]],
            );
        }
        1
    });
    r.unwrap_or(-1)
}

/// `ds_select*`: one set, one algorithm.
fn select_one(s: &Shared, v: &ShardView, set: i64, alg: i64, limit: i64, push: Push) -> i64 {
    let rules = [(set, alg)];
    select_rules(s, v, &rules, limit, push)
}

fn select_rules(s: &Shared, v: &ShardView, rules: &[(i64, i64)], limit: i64, push: Push) -> i64 {
    let p = &v.ds.params;
    if push == Push::Dst && !p.force_dst {
        let set = s.with_msg(|m| m.dst_uri.as_ref().is_some_and(|d| !d.is_empty()));
        if set.unwrap_or(true) {
            return -1;
        }
    }
    let list = v.list();
    let limit = usize::try_from(limit).unwrap_or(0);
    let mut chosen: Vec<(usize, usize, bool)> = Vec::new();
    for &(set, alg) in rules {
        let (Ok(set), Ok(alg)) = (i32::try_from(set), i32::try_from(alg)) else {
            continue;
        };
        let Ok(si) = list.sets.binary_search_by_key(&set, |x| x.id) else {
            continue;
        };
        let Some(dset) = list.sets.get(si) else {
            continue;
        };
        if alg == 10 && p.hash_size == 0 {
            continue; // Kamailio: alg 10 needs ds_hash_size
        }
        let hash = match select::hash_source(alg) {
            HashSource::None => None,
            src => s
                .with_msg(|m| message_hash(m, src, p.flags & 1 != 0))
                .ok()
                .flatten(),
        };
        let mut picks = v.picks.borrow_mut();
        let ok = if alg == 10 {
            let calls = v.ds.calls();
            let load = |d: &Dest| calls.load(set, &d.attrs.duid);
            select::select(dset, alg, &ctx(alg, hash, &load, v, limit), &mut picks)
        } else {
            let load = |_: &Dest| 0;
            select::select(dset, alg, &ctx(alg, hash, &load, v, limit), &mut picks)
        };
        if ok.is_err() {
            continue;
        }
        if alg == 10 {
            if let Some(d) = picks.first().and_then(|&i| dset.dests.get(i)) {
                let callid = s
                    .with_msg(|m| m.msg().call_id().map(<[u8]>::to_vec))
                    .ok()
                    .flatten();
                if let Some(cid) = callid {
                    let mut calls = v.ds.calls();
                    if !calls.add(&cid, set, &d.attrs.duid, super::services::unix_now_s()) {
                        s.counters.incr(crate::stats::Counter::DsLoadFull);
                        if calls.refused.is_power_of_two() {
                            tracing::warn!(
                                refused = calls.refused,
                                max_calls = v.cfg.max_calls,
                                "dispatcher: call-load table full, call not tracked"
                            );
                        }
                    }
                }
            }
        }
        for &i in picks.iter() {
            if limit > 0 && chosen.len() >= limit {
                break;
            }
            chosen.push((si, i, alg == 10));
        }
    }
    if chosen.is_empty() {
        return -1;
    }
    apply(s, v, &list, &chosen, push)
}

fn ctx<'a>(
    alg: i32,
    hash: Option<u64>,
    load: &'a dyn Fn(&Dest) -> u32,
    v: &ShardView,
    limit: usize,
) -> SelectCtx<'a> {
    // A random number only for alg 6 (a syscall otherwise saved).
    let mut r = [0u8; 4];
    if alg == 6 {
        let _ = getrandom::getrandom(&mut r);
    }
    SelectCtx {
        hash,
        rand: u32::from_le_bytes(r),
        load,
        latency_stats: v.cfg.ds_ping_latency_stats != 0,
        use_default: v.ds.params.use_default,
        limit,
    }
}

/// `ds_select_routes(rules, mode)`: `grp=alg;grp=alg`, mode by first char.
fn select_routes(s: &Shared, v: &ShardView, rules: &str, mode: &str, limit: i64) -> i64 {
    let push = match mode.trim().bytes().next() {
        Some(b'0' | b'd' | b'D') => Push::Dst,
        Some(b'1' | b'r' | b'R') => Push::Domain,
        Some(b'2' | b'x' | b'X') => Push::XavpOnly,
        _ => return -1,
    };
    let mut parsed = Vec::new();
    for r in rules.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let Some((g, a)) = r.split_once('=') else {
            return -1;
        };
        let (Ok(g), Ok(a)) = (g.trim().parse::<i64>(), a.trim().parse::<i64>()) else {
            return -1;
        };
        if parsed.len() >= 64 {
            return -1;
        }
        parsed.push((g, a));
    }
    select_rules(s, v, &parsed, limit, push)
}

/// `ds_next_*` (`advance`) and `ds_set_*`: the head of the XAVP list.
fn next(s: &Shared, v: &ShardView, push: Push, advance: bool) -> mlua::Result<i64> {
    let name = &v.ds.params.xavp_dst;
    s.with_msg(|m| {
        // Kamailio 5.6: the head is the destination in use (also after
        // ds_select); the next one is the item after it.
        if advance {
            m.pv.xavp_drop_head(name);
        }
        let uri = match m.pv.xavp_head_field(name, "uri") {
            Some(PvValue::Str(u)) => String::from_utf8_lossy(u).into_owned(),
            _ => return -1,
        };
        match push {
            Push::Domain => ret(set_domain(m, &uri)),
            _ => {
                m.dst_uri = Some(uri.into_bytes());
                1
            }
        }
    })
}

/// The head of the XAVP list as (set, uri).
fn current(s: &Shared, v: &ShardView) -> mlua::Result<Option<(i64, String)>> {
    let name = &v.ds.params.xavp_dst;
    s.with_msg(|m| {
        let grp = match m.pv.xavp_head_field(name, "grp") {
            Some(PvValue::Int(g)) => *g,
            Some(PvValue::Str(g)) => std::str::from_utf8(g).ok()?.trim().parse().ok()?,
            None => return None,
        };
        match m.pv.xavp_head_field(name, "uri") {
            Some(PvValue::Str(u)) => Some((grp, String::from_utf8_lossy(u).into_owned())),
            _ => None,
        }
    })
}

fn mark_current(s: &Shared, v: &ShardView, state: &str) -> mlua::Result<i64> {
    Ok(match current(s, v)? {
        Some((set, uri)) => mark_addr(v, state, set, &uri),
        None => -1,
    })
}

/// Marks destination `uri` of `set` with a state text.
fn mark_addr(v: &ShardView, state: &str, set: i64, uri: &str) -> i64 {
    let Some(st) = list::parse_state(state) else {
        return -1;
    };
    let l = v.list();
    let Some(d) = i32::try_from(set)
        .ok()
        .and_then(|id| l.set(id))
        .and_then(|x| x.find(uri).and_then(|i| x.dests.get(i)))
    else {
        return -1;
    };
    let t = if st & list::TRYING != 0 {
        d.fail(v.cfg.ds_probing_threshold, st & list::PROBING != 0)
    } else {
        let before = d.state();
        d.set_state(st);
        match (before & list::INACTIVE != 0, st & list::INACTIVE != 0) {
            (false, true) => Transition::Down,
            (true, false) => Transition::Up,
            _ => Transition::None,
        }
    };
    if t != Transition::None {
        tracing::info!(set, uri, state, "dispatcher: destination marked");
    }
    1
}

fn proto_matches(d: &Dest, proto: Proto) -> bool {
    d.proto == proto
}

/// `ds_is_from_list*`: source (or `uri`) against the destinations.
fn from_list(
    s: &Shared,
    v: &ShardView,
    set: i64,
    mode: i64,
    uri: Option<&str>,
) -> mlua::Result<i64> {
    let (ip, port, proto) = match uri {
        Some(u) if !u.trim().is_empty() => {
            let Some(d) = Dest::new(u, 0, 0, "") else {
                return Ok(-1);
            };
            let Some(ip) = d.ip else { return Ok(-1) };
            (ip, d.port_or_default(), d.proto)
        }
        _ => {
            let src = s.with_msg(|m| m.src)?;
            let ip = match src.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            (ip, src.port(), Proto::Udp)
        }
    };
    let l = v.list();
    let found = l
        .sets
        .iter()
        .filter(|x| set < 0 || i64::from(x.id) == set)
        .find_map(|x| {
            x.dests
                .iter()
                .find(|d| {
                    d.ip == Some(ip)
                        && (mode & 1 != 0 || d.port_or_default() == port)
                        && (mode & 2 != 0 || proto_matches(d, proto))
                        && (mode & 4 == 0 || d.is_active())
                })
                .map(|d| (x.id, d.attrs.body.clone()))
        });
    let Some((id, attrs)) = found else {
        return Ok(-1);
    };
    if !v.cfg.setid_pvname.is_empty() {
        let _ = super::pv::set(s, &v.cfg.setid_pvname, Some(PvValue::Int(i64::from(id))));
    }
    if !v.cfg.attrs_pvname.is_empty() {
        let _ = super::pv::set(
            s,
            &v.cfg.attrs_pvname,
            Some(PvValue::Str(attrs.into_bytes())),
        );
    }
    Ok(1)
}

fn is_active(v: &ShardView, set: i64, uri: Option<&str>) -> i64 {
    let l = v.list();
    let Some(x) = i32::try_from(set).ok().and_then(|id| l.set(id)) else {
        return -1;
    };
    let any = match uri.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => x
            .find(u)
            .and_then(|i| x.dests.get(i))
            .is_some_and(Dest::is_active),
        None => x.dests.iter().any(Dest::is_active),
    };
    ret(any)
}

fn load_update(s: &Shared, v: &ShardView) -> mlua::Result<i64> {
    let now = super::services::unix_now_s();
    s.with_msg(|m| {
        let msg = m.msg();
        let Some(cid) = msg.call_id() else { return -1 };
        if msg.is_request() {
            match msg.method() {
                Some(Method::Bye | Method::Cancel) => ret(v.ds.calls().remove(cid)),
                _ => -1,
            }
        } else {
            let invite = msg.cseq().is_ok_and(|c| c.method == Method::Invite);
            let code = msg.status().unwrap_or(0);
            if invite && (200..300).contains(&code) {
                ret(v.ds.calls().confirm(cid, now))
            } else {
                -1
            }
        }
    })
}

fn load_unset(s: &Shared, v: &ShardView) -> mlua::Result<i64> {
    s.with_msg(|m| match m.msg().call_id() {
        Some(cid) => ret(v.ds.calls().remove(cid)),
        None => -1,
    })
}

/// `ds_reload()`: a file is read now; a database query goes to the
/// database thread and the sets change when it answers (the route does
/// not wait).
fn reload(s: &Shared, v: &ShardView) -> i64 {
    if !v.cfg.list_file.is_empty() {
        return match std::fs::read_to_string(&v.cfg.list_file) {
            Ok(text) => {
                let (rows, _) = DsList::parse_file(&text);
                let (n, skipped) = install(&v.ds, &rows);
                tracing::info!(destinations = n, skipped, "dispatcher reloaded");
                1
            }
            Err(e) => {
                tracing::error!(file = %v.cfg.list_file, "dispatcher reload: {e}");
                -1
            }
        };
    }
    let Some(db) = s.services.db.clone() else {
        return -1;
    };
    let ds = v.ds.clone();
    let cfg = v.cfg.clone();
    let spawned = crate::exec::spawn_local(async move {
        match load(&ds, &cfg, Some(&db)).await {
            Ok((n, skipped)) => tracing::info!(destinations = n, skipped, "dispatcher reloaded"),
            Err(e) => tracing::error!("dispatcher reload: {e}"),
        }
    });
    ret(spawned.is_ok())
}

/// A reply to one of our probes: handled here (state updated), never
/// routed. False when `msg` is not a probe reply.
pub fn on_reply(ds: &Dispatcher, msg: &crate::sip::SipMsg<'_>, now_ms: u64) -> bool {
    let Some(id) = msg
        .top_via()
        .ok()
        .and_then(|v| v.params.get(b"branch").flatten())
        .and_then(|b| ds.probe_id(b))
    else {
        return false;
    };
    let code = msg.status().unwrap_or(0);
    let list = ds.list();
    if let Some(e) = ds.prober().handle_reply(id, code, now_ms, &list) {
        log_event(&e);
    }
    true
}

fn log_event(e: &crate::dispatcher::ProbeEvent) {
    match e.transition {
        Transition::Down => {
            tracing::warn!(set = e.setid, uri = %e.uri, "dispatcher: destination down (probing)")
        }
        Transition::Up => tracing::info!(set = e.setid, uri = %e.uri, "dispatcher: destination up"),
        Transition::None => {}
    }
}

/// The probing timer: one shard runs it; sends due probes from `local`
/// through `send`, and returns when it should run next (ms on the same
/// clock as `now_ms`).
pub fn probe_tick(
    ds: &Dispatcher,
    method: &str,
    local: SocketAddr,
    now_ms: u64,
    mut send: impl FnMut(SocketAddr, Vec<u8>),
) -> Option<u64> {
    let list = ds.list();
    let mut p = ds.prober();
    let skipped = p.skipped;
    for e in p.handle_timeout(now_ms, &list) {
        log_event(&e);
    }
    if p.skipped > skipped {
        tracing::warn!(
            skipped = p.skipped,
            max_pending = p.params().max_pending,
            "dispatcher: keepalives not sent, too many in flight"
        );
    }
    while let Some(ping) = p.poll_transmit() {
        let mut out = Vec::with_capacity(400);
        ds.write_probe(&ping, method, local, &mut out);
        send(ping.dst, out);
    }
    p.poll_timeout()
}

#[cfg(test)]
mod tests {
    use crate::kemi::testutil::{engine_on, global_int, global_str, request, run, tables_with};

    fn tables(list: &str, extra: &str) -> std::sync::Arc<crate::kemi::services::SharedTables> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sipshard-ds-{}-{n}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("dispatcher.list");
        std::fs::write(&path, list).unwrap();
        let t = tables_with(&format!(
            "[dispatcher]\nlist_file = {:?}\n{extra}",
            path.display().to_string()
        ));
        let ds = t.dispatcher.clone().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(super::load(&ds, &t.dispatcher_cfg, None))
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        t
    }

    // Equal priorities are held in reverse (as Kamailio): 10.1.0.1 first.
    const LIST: &str = "1 sip:10.1.0.2:5090\n1 sip:10.1.0.1:5080\n2 sip:10.2.0.2 0 0 weight=75\n2 sip:10.2.0.1 0 0 weight=25\n";

    #[test]
    fn select_round_robin_with_failover_list_shared_by_shards() {
        let t = tables(LIST, "flags = 2\n");
        let script = r#"
            function ksr_request_route()
                rc = KSR.dispatcher.ds_select_dst(1, 4)
                du = KSR.pv.get("$du")
                first = KSR.pv.get("$xavp(_dsdst_=>uri)")
                grp = KSR.pv.get("$xavp(_dsdst_=>grp)")
                cnt = KSR.pv.get("$xavp(_dsctx_=>cnt)")
                nx = KSR.dispatcher.ds_next_dst()
                du2 = KSR.pv.get("$du")
                nx2 = KSR.dispatcher.ds_next_dst()
                none = KSR.dispatcher.ds_select_dst(9, 4)
                exists = KSR.dispatcher.ds_list_exists(2)
                missing = KSR.dispatcher.ds_list_exists(3)
            end"#;
        let a = engine_on(script, t.clone(), 0, 2);
        let b = engine_on(script, t.clone(), 1, 2);
        let msg = request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]);
        run(&a, &msg);
        assert_eq!(global_int(&a, "rc"), 1);
        assert_eq!(global_str(&a, "du"), "sip:10.1.0.1:5080");
        assert_eq!(global_str(&a, "first"), "sip:10.1.0.1:5080");
        assert_eq!(global_int(&a, "grp"), 1);
        assert_eq!(global_int(&a, "cnt"), 2);
        assert_eq!(global_int(&a, "nx"), 1);
        assert_eq!(global_str(&a, "du2"), "sip:10.1.0.2:5090");
        assert_eq!(global_int(&a, "nx2"), -1, "no third destination");
        assert_eq!(global_int(&a, "none"), -1);
        assert_eq!(global_int(&a, "exists"), 1);
        assert_eq!(global_int(&a, "missing"), -1);
        // The other shard continues the same round robin.
        run(&b, &msg);
        assert_eq!(global_str(&b, "du"), "sip:10.1.0.2:5090");
    }

    #[test]
    fn mark_and_is_active_and_from_list() {
        let t = tables(LIST, "flags = 2\n");
        let script = r#"
            function ksr_request_route()
                KSR.dispatcher.ds_select_dst(1, 8)
                m = KSR.dispatcher.ds_mark_dst()
                a1 = KSR.dispatcher.ds_is_active_uri(1, "sip:10.1.0.1:5080")
                a = KSR.dispatcher.ds_is_active(1)
                again = KSR.dispatcher.ds_select_dst(1, 8)
                du = KSR.pv.get("$du")
                bad = KSR.dispatcher.ds_mark_dst_state("x")
                KSR.dispatcher.ds_mark_addr("a", 1, "sip:10.1.0.1:5080")
                a2 = KSR.dispatcher.ds_is_active_uri(1, "sip:10.1.0.1:5080")
                f1 = KSR.dispatcher.ds_is_from_list_uri(1, 0, "sip:10.1.0.2:5090")
                f2 = KSR.dispatcher.ds_is_from_list_uri(1, 0, "sip:10.1.0.2:5091")
                f3 = KSR.dispatcher.ds_is_from_list_uri(-1, 1, "sip:10.2.0.2:9")
                f4 = KSR.dispatcher.ds_is_from_lists()
            end"#;
        let e = engine_on(script, t, 0, 1);
        run(&e, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&e, "m"), 1);
        assert_eq!(global_int(&e, "a1"), -1);
        assert_eq!(global_int(&e, "a"), 1);
        assert_eq!(global_int(&e, "again"), 1);
        assert_eq!(global_str(&e, "du"), "sip:10.1.0.2:5090");
        assert_eq!(global_int(&e, "bad"), -1);
        assert_eq!(global_int(&e, "a2"), 1);
        assert_eq!(
            (
                global_int(&e, "f1"),
                global_int(&e, "f2"),
                global_int(&e, "f3"),
                global_int(&e, "f4")
            ),
            (1, -1, 1, -1)
        );
    }

    #[test]
    fn select_domain_and_xavp_only_then_next_domain() {
        let t = tables(LIST, "flags = 2\n");
        let script = r#"
            function ksr_request_route()
                rc = KSR.dispatcher.ds_select_domain(1, 8)
                ru = KSR.pv.get("$ru")
                rc2 = KSR.dispatcher.ds_select(1, 8)
                du = KSR.pv.get("$du")
                sd = KSR.dispatcher.ds_set_domain()
                ru2 = KSR.pv.get("$ru")
                nd = KSR.dispatcher.ds_next_domain()
                ru3 = KSR.pv.get("$ru")
                nd2 = KSR.dispatcher.ds_next_domain()
            end"#;
        let e = engine_on(script, t, 0, 1);
        run(
            &e,
            &request("INVITE sip:bob@example.com;x=1 SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&e, "rc"), 1);
        assert_eq!(global_str(&e, "ru"), "sip:bob@10.1.0.1:5080;x=1");
        assert_eq!(global_int(&e, "rc2"), 1);
        assert_eq!(global_str(&e, "du"), "", "ds_select leaves $du alone");
        assert_eq!(global_int(&e, "sd"), 1);
        assert_eq!(
            global_str(&e, "ru2"),
            "sip:bob@10.1.0.1:5080;x=1",
            "the head"
        );
        // Kamailio 5.6: ds_next_domain after ds_select takes the second.
        assert_eq!(global_int(&e, "nd"), 1);
        assert_eq!(global_str(&e, "ru3"), "sip:bob@10.1.0.2:5090;x=1");
        assert_eq!(global_int(&e, "nd2"), -1);
    }

    #[test]
    fn weight_and_without_failover_flag_no_xavp() {
        let t = tables(LIST, "");
        let script = r#"
            n = { ["sip:10.2.0.1"] = 0, ["sip:10.2.0.2"] = 0 }
            function ksr_request_route()
                KSR.dispatcher.ds_select_dst(2, 9)
                local du = KSR.pv.get("$du")
                n[du] = n[du] + 1
                a = n["sip:10.2.0.1"]
                b = n["sip:10.2.0.2"]
                nx = KSR.dispatcher.ds_next_dst()
                mk = KSR.dispatcher.ds_mark_dst()
                cnt = KSR.pv.get("$xavp(_dsctx_=>cnt)")
            end"#;
        let e = engine_on(script, t, 0, 1);
        let msg = request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]);
        for _ in 0..200 {
            run(&e, &msg);
        }
        assert_eq!((global_int(&e, "a"), global_int(&e, "b")), (50, 150));
        // Kamailio 5.6 with flags 0: no _dsdst_ item, cnt 0, mark fails.
        assert_eq!(global_int(&e, "nx"), -1, "flags 0: no failover list");
        assert_eq!(global_int(&e, "mk"), -1);
        assert_eq!(global_int(&e, "cnt"), 0);
    }

    #[test]
    fn call_load_alg10() {
        let t = tables(
            "1 sip:10.1.0.2 0 0 duid=b;maxload=1\n1 sip:10.1.0.1 0 0 duid=a;maxload=1\n",
            "ds_hash_size = 4\n",
        );
        let script = r#"
            function ksr_request_route()
                if KSR.pv.get("$rm") == "BYE" then
                    up = KSR.dispatcher.ds_load_update()
                    return
                end
                rc = KSR.dispatcher.ds_select_dst(1, 10)
                du = KSR.pv.get("$du")
            end"#;
        let e = engine_on(script, t.clone(), 0, 1);
        let with_cid = |m: &str, cid: &str| {
            String::from_utf8(request(&format!("{m} sip:bob@10.0.0.1 SIP/2.0"), None, &[]))
                .unwrap()
                .replace("Call-ID: t1@192.0.2.9", &format!("Call-ID: {cid}"))
                .into_bytes()
        };
        let inv = |cid: &str| with_cid("INVITE", cid);
        run(&e, &inv("c1"));
        assert_eq!(global_str(&e, "du"), "sip:10.1.0.1");
        run(&e, &inv("c2"));
        assert_eq!(global_str(&e, "du"), "sip:10.1.0.2");
        run(&e, &inv("c3"));
        assert_eq!(global_int(&e, "rc"), -1, "both at maxload");
        let bye = with_cid("BYE", "c1");
        run(&e, &bye);
        assert_eq!(global_int(&e, "up"), 1);
        run(&e, &inv("c4"));
        assert_eq!(global_str(&e, "du"), "sip:10.1.0.1");
        assert_eq!(t.dispatcher.as_ref().unwrap().calls().len(), 2);
    }

    #[test]
    fn not_configured_means_no_module() {
        let t = tables_with("");
        assert!(t.dispatcher.is_none());
        let e = engine_on(
            "function ksr_request_route() has = KSR.dispatcher ~= nil end",
            t,
            0,
            1,
        );
        run(&e, &request("OPTIONS sip:10.0.0.1 SIP/2.0", None, &[]));
        assert!(!crate::kemi::testutil::global_bool(&e, "has"));
    }
}
