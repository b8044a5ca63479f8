//! Built-in JSON-RPC methods. Names follow Kamailio where it has one.
//!
//! | method | params | result |
//! |---|---|---|
//! | `core.uptime` | – | `{"now": ctime, "up_since": ctime, "uptime": s}` (UTC) |
//! | `core.version` | – | `"sipshard 0.1.0 (x86_64/linux)"` |
//! | `core.shards` | – | `[{"id", "cpu", "uptime", "messages", "rcv_requests", "rcv_replies", "dispatch_sent", "dispatch_recv", "panics", "gauges": {..}, "tuning": {..}}]` |
//! | `stats.fetch` | `"all"` \| group \| `group:` \| full name, any number | `{"core.rcv_requests": N, ..}` summed over shards (plus `kemi.reloads`, `kemi.reloads_failed`) |
//! | `stats.reset` | – or `"all"` | `{"reset": shards}` (zeroes counters and histograms) |
//! | `ul.dump` | – | `{"aors": [..], "shards": n, "truncated": bool}` |
//! | `ul.lookup` | table, aor | the owner shard's `{"aor", "contacts"}` (usrloc db_mode 3: read from the database first); error 404 when absent, 500 when the database does not answer |
//! | `ul.rm` | table, aor | `{"removed": n}` (usrloc db_mode 1/3: the rows are deleted too, db_mode 3 reads them first); error 404 when nothing was removed |
//! | `kemi.route_latency` | – or `"hlog"` | see [`route_latency`] |
//! | `system.listMethods` | – | sorted method names |
//! | `kemi.reload`, `app_lua.*`, `kemi.status` | | see `kemi_methods.rs` |
//! | `htable.*`, `pike.top`, `flood.list`, `flood.unban`, `permissions.*` | see [`crate::rpc::modules`] | |
//!
//! Handlers ask shards through [`RpcContext::shard_call`], so a stuck shard
//! costs a caller at most [`crate::rpc::SHARD_TIMEOUT`].

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::rpc::jsonrpc::{MethodError, Params, Registry};
use crate::rpc::{owner_shard, RpcContext};
use crate::shard::control::{ControlError, ShardCmd, UlCmd};
use crate::stats::{hlog, merge_routes, Counter, LatencySummary, ShardSnapshot};

/// The only usrloc table (Kamailio's default `location`).
pub const UL_TABLE: &str = "location";
/// Longest AOR a `ul.*` call accepts.
pub const AOR_LEN_MAX: usize = 512;
/// Most AORs `ul.dump` returns; the rest are cut and `truncated` is set.
pub const UL_DUMP_AORS_MAX: usize = 100_000;
/// `kemi.route_latency` bucket series: first upper bound (ns) and growth factor.
pub const LATENCY_BUCKET_FIRST_NS: u64 = 1_000;
pub const LATENCY_BUCKET_GROWTH: f64 = 2.0;

pub(crate) fn register_builtin(r: &mut Registry) {
    r.register("core.uptime", core_uptime)
        .register("core.version", core_version)
        .register("core.shards", core_shards)
        .register("stats.fetch", stats_fetch)
        .register("stats.reset", stats_reset)
        .register("ul.dump", ul_dump)
        .register("ul.lookup", ul_lookup)
        .register("ul.rm", ul_rm)
        .register("kemi.route_latency", route_latency)
        .register("system.listMethods", list_methods);
    crate::rpc::kemi_methods::register(r);
    super::modules::register(r);
    super::dialog::register(r);
}

async fn core_uptime(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let now = SystemTime::now();
    let uptime = ctx.ctl.uptime_s();
    let since = now
        .checked_sub(Duration::try_from_secs_f64(uptime).unwrap_or_default())
        .unwrap_or(ctx.started);
    Ok(json!({"now": ctime_utc(now), "up_since": ctime_utc(since), "uptime": uptime as u64}))
}

async fn core_version(_ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    Ok(Value::String(version_string()))
}

pub fn version_string() -> String {
    format!(
        "sipshard {} ({}/{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

async fn core_shards(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let snaps = ctx.shard_call(ctx.ctl.snapshot_all(false)).await?;
    let shards: Vec<Value> = snaps
        .iter()
        .map(|s| {
            let rcv_requests = s.counters[Counter::RcvRequests as usize];
            let rcv_replies = s.counters[Counter::RcvReplies as usize];
            let gauges: Map<String, Value> = s
                .gauges
                .iter()
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect();
            json!({
                "id": s.shard,
                "cpu": s.cpu,
                "uptime": s.uptime_s,
                "messages": rcv_requests.saturating_add(rcv_replies),
                "rcv_requests": rcv_requests,
                "rcv_replies": rcv_replies,
                "dispatch_sent": s.counters[Counter::DispatchSent as usize],
                "dispatch_recv": s.counters[Counter::DispatchRecv as usize],
                "panics": s.counters[Counter::Panics as usize],
                "gauges": gauges,
                "tuning": s.tuning,
            })
        })
        .collect();
    Ok(Value::Array(shards))
}

/// Every statistic name and its sum over shards: counters, then gauges.
pub fn sum_stats(snaps: &[ShardSnapshot]) -> Vec<(String, i128)> {
    let mut out: Vec<(String, i128)> = Counter::ALL
        .iter()
        .map(|&c| {
            (
                c.name().to_string(),
                snaps
                    .iter()
                    .map(|s| i128::from(s.counters[c as usize]))
                    .sum(),
            )
        })
        .collect();
    for s in snaps {
        for (name, v) in &s.gauges {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += i128::from(*v),
                None => out.push((name.to_string(), i128::from(*v))),
            }
        }
    }
    out
}

/// Does `name` (`group.stat`) match a `stats.fetch` selector?
/// Selectors: `all`, `group`, `group:` (Kamailio), `group.stat`, `group:stat`.
fn selector_matches(selector: &str, name: &str) -> bool {
    if selector == "all" || selector == "all:" {
        return true;
    }
    let selector = selector.strip_suffix(':').unwrap_or(selector);
    match selector.split_once([':', '.']) {
        Some((group, stat)) => name.split_once('.') == Some((group, stat)),
        None => name.split_once('.').map(|(g, _)| g) == Some(selector),
    }
}

async fn stats_fetch(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(64)?;
    let mut selectors = Vec::new();
    for i in 0..params.len() {
        match params.value(i, "name") {
            Some(Value::String(s)) => selectors.push(s.clone()),
            _ => {
                return Err(MethodError::InvalidParams(
                    "stats.fetch params must be strings".into(),
                ))
            }
        }
    }
    if selectors.is_empty() {
        selectors.push("all".into());
    }
    let snaps = ctx.shard_call(ctx.ctl.snapshot_all(false)).await?;
    let mut stats = sum_stats(&snaps);
    if let Some(r) = ctx.ctl.reloader() {
        stats.extend(crate::rpc::kemi_methods::reload_stats(&*r));
    }
    let mut out = Map::new();
    for sel in &selectors {
        let before = out.len();
        let mut matched = false;
        for (name, v) in &stats {
            if selector_matches(sel, name) {
                matched = true;
                out.insert(name.clone(), json!(v));
            }
        }
        if !matched && out.len() == before {
            return Err(MethodError::InvalidParams(format!(
                "no statistic matches {sel:?}"
            )));
        }
    }
    Ok(Value::Object(out))
}

async fn stats_reset(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    match params.opt_str(0, "name")? {
        None | Some("all") => {}
        Some(other) => {
            return Err(MethodError::InvalidParams(format!(
                "only \"all\" can be reset (shards reset counters and histograms together), not {other:?}"
            )));
        }
    }
    let snaps = ctx.shard_call(ctx.ctl.snapshot_all(true)).await?;
    Ok(json!({"reset": snaps.len()}))
}

async fn ul_dump(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let n = ctx.ctl.shard_count();
    // Ask every shard first, then collect: one round trip, not n.
    let mut pending = Vec::with_capacity(n);
    for shard in 0..n {
        let (reply, rx) = oneshot::channel();
        ctx.ctl.send(
            shard,
            ShardCmd::Ul {
                cmd: UlCmd::Dump,
                reply,
            },
        )?;
        pending.push((shard, rx));
    }
    let answers = ctx
        .shard_call(async {
            let mut answers = Vec::with_capacity(n);
            for (shard, rx) in pending {
                answers.push(rx.await.map_err(|_| ControlError::ShardGone(shard))?);
            }
            Ok(answers)
        })
        .await?;
    let mut aors = Vec::new();
    let mut truncated = false;
    for answer in answers {
        let Value::Object(mut obj) = answer else {
            continue;
        };
        let Some(Value::Array(list)) = obj.remove("aors") else {
            continue;
        };
        for aor in list {
            if aors.len() >= UL_DUMP_AORS_MAX {
                truncated = true;
                break;
            }
            aors.push(aor);
        }
    }
    Ok(json!({"aors": aors, "shards": n, "truncated": truncated}))
}

/// `table`, `aor` -> (owner shard, aor).
fn ul_target(ctx: &RpcContext, params: &Params) -> Result<(usize, String), MethodError> {
    params.at_most(2)?;
    let table = params.str(0, "table")?;
    let aor = params.str(1, "aor")?;
    if table != UL_TABLE {
        return Err(MethodError::InvalidParams(format!(
            "unknown table {table:?} (only {UL_TABLE:?})"
        )));
    }
    if aor.is_empty() || aor.len() > AOR_LEN_MAX || aor.chars().any(char::is_whitespace) {
        return Err(MethodError::InvalidParams(
            "aor must be 1..=512 bytes without spaces".into(),
        ));
    }
    let shard = owner_shard(aor, ctx.ctl.shard_count())
        .ok_or_else(|| MethodError::Internal("no shards are running".into()))?;
    Ok((shard, aor.to_string()))
}

async fn ul_lookup(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    let (shard, aor) = ul_target(&ctx, &params)?;
    match ctx
        .shard_call(ctx.ctl.ul(shard, UlCmd::Lookup { aor }))
        .await?
    {
        Value::Null => Err(MethodError::NotFound("AOR not found".into())),
        // db_mode 3: the database did not answer the read
        Value::Object(o) if o.contains_key("error") => Err(MethodError::Internal(
            o.get("error")
                .and_then(Value::as_str)
                .unwrap_or("lookup failed")
                .to_string(),
        )),
        v => Ok(v),
    }
}

async fn ul_rm(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    let (shard, aor) = ul_target(&ctx, &params)?;
    let answer = ctx.shard_call(ctx.ctl.ul(shard, UlCmd::Rm { aor })).await?;
    if let Some(err) = answer.get("error").and_then(Value::as_str) {
        return Err(MethodError::Internal(err.to_string()));
    }
    if answer.get("removed").and_then(Value::as_u64) == Some(0) {
        return Err(MethodError::NotFound("AOR not found".into()));
    }
    Ok(answer)
}

/// `kemi.route_latency [hlog]`:
///
/// ```json
/// {"unit": "us", "uptime_s": 12.5, "now_s": 1700000000.25,
///  "routes": [{"route": "request_route",
///              "merged": {"cnt": 3, "sum_us": .., "min_us": .., "max_us": .., "avg_us": ..,
///                         "p50_us": .., "p90_us": .., "p99_us": .., "p999_us": .., "p9999_us": ..,
///                         "buckets": [[1.0, 0], [2.0, 3], ..], "hist": "HISTF..."},
///              "shards": [{"shard": 0, ...same fields...}]}]}
/// ```
///
/// `buckets` are `[upper_bound_us, count]` on a doubling series from 1 µs
/// (values below 1 µs fall in the first), up to the bucket holding the max.
/// `hist` (only with the `"hlog"` param) is the histogram in nanoseconds as
/// base64 V2 + DEFLATE, the `.hlog` payload. Figures are cumulative since
/// start or the last `stats.reset`.
pub async fn route_latency(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let with_hist = match params.opt_str(0, "mode")? {
        None | Some("summary") => false,
        Some("hlog") => true,
        Some(other) => {
            return Err(MethodError::InvalidParams(format!(
                "mode must be summary or hlog, not {other:?}"
            )))
        }
    };
    let snaps = ctx.shard_call(ctx.ctl.snapshot_all(false)).await?;
    let mut routes = Vec::new();
    for merged in merge_routes(&snaps) {
        let mut shards = Vec::new();
        for s in &snaps {
            for r in s.routes.iter().filter(|r| r.route == merged.route) {
                let mut v = latency_json(&r.hist, with_hist)?;
                v["shard"] = json!(s.shard);
                shards.push(v);
            }
        }
        routes.push(json!({
            "route": merged.route,
            "merged": latency_json(&merged.hist, with_hist)?,
            "shards": shards,
        }));
    }
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Ok(json!({"unit": "us", "uptime_s": ctx.ctl.uptime_s(), "now_s": now_s, "routes": routes}))
}

/// Summary, buckets and (optionally) the encoded histogram of one route.
pub fn latency_json(hist: &Histogram<u64>, with_hist: bool) -> Result<Value, MethodError> {
    let mut v = serde_json::to_value(LatencySummary::from_hist(hist))
        .map_err(|e| MethodError::Internal(e.to_string()))?;
    v["buckets"] = json!(latency_buckets(hist));
    if with_hist {
        v["hist"] =
            json!(hlog::encode_base64(hist).map_err(|e| MethodError::Internal(e.to_string()))?);
    }
    Ok(v)
}

/// `[upper_bound_us, count]` per doubling step from 1 µs up to the max.
pub fn latency_buckets(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    hist.iter_log(LATENCY_BUCKET_FIRST_NS, LATENCY_BUCKET_GROWTH)
        .map(|step| {
            (
                (step.value_iterated_to().saturating_add(1)) as f64 / 1000.0,
                step.count_since_last_iteration(),
            )
        })
        .collect()
}

async fn list_methods(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    Ok(json!(ctx.method_names))
}

/// `Wed Nov 26 18:23:05 2025`: C's `ctime` layout (Kamailio's), in UTC.
pub fn ctime_utc(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        year
    )
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn ctime_layout() {
        assert_eq!(ctime_utc(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(ctime_utc(t), "Tue Nov 14 22:13:20 2023");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(ctime_utc(leap), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn selectors() {
        assert!(selector_matches("all", "core.rcv_requests"));
        assert!(selector_matches("core", "core.rcv_requests"));
        assert!(selector_matches("core:", "core.rcv_requests"));
        assert!(selector_matches("core.rcv_requests", "core.rcv_requests"));
        assert!(selector_matches("core:rcv_requests", "core.rcv_requests"));
        assert!(!selector_matches("cor", "core.rcv_requests"));
        assert!(!selector_matches("core.rcv", "core.rcv_requests"));
        assert!(!selector_matches("sl", "core.rcv_requests"));
    }

    #[test]
    fn buckets_double_from_1us() {
        let mut h = crate::stats::new_histogram();
        for v in [500, 1_500, 1_600, 3_000, 9_000] {
            h.record(v).unwrap();
        }
        let b = latency_buckets(&h);
        assert_eq!(b[0], (1.0, 1));
        assert_eq!(b[1], (2.0, 2));
        assert_eq!(b[2], (4.0, 1));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 5);
        assert!(latency_buckets(&crate::stats::new_histogram()).is_empty());
    }
}
