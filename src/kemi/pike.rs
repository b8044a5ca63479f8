//! KSR.pike: flood detection per source IP (Kamailio `pike` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.pike.pike_check_req()` | `int ()` | 1 the source IP is not blocked; -1 blocked (detected before); -2 blocked, first detection |
//! | `KSR.pike.pike_check_ip(ip)` | `int (str)` | as pike_check_req for `ip`; -1 also for a text that is not an IP address |
//!
//! Each check counts a request from the IP in the current
//! `sampling_time_unit`. As Kamailio's leaf rule, an IP is blocked when the
//! current or the previous unit, or their average, reaches
//! `reqs_density_per_unit`; it is unblocked at the first unit boundary where
//! that no longer holds, and forgotten `remove_latency` seconds after its last
//! request. sipshard counts per IP only and blocks at exactly
//! `reqs_density_per_unit`: Kamailio's IP tree grows one address byte per
//! request before it counts the IP itself, so it blocks between x and 3x
//! (measured with Kamailio 5.6, x = 5: a fresh IPv4 source is blocked at its
//! 9th request, -2, then -1; sipshard at its 5th). The state is
//! shared by every shard (lock-striped by IP), and at most `max_ips` IPs are
//! tracked: beyond it the least recently seen IP of the stripe is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use mlua::{Lua, Table};

use super::Shared;
use crate::config::PikeConfig;
use crate::partition::Striped;

#[derive(Clone, Debug, Default)]
struct Leaf {
    /// Index of the sampling unit `curr` counts.
    unit: u64,
    prev: u32,
    curr: u32,
    red: bool,
    last_s: u64,
}

/// One IP's state, for `pike.top`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PikeEntry {
    pub ip: IpAddr,
    pub hits_prev: u32,
    pub hits_curr: u32,
    pub blocked: bool,
    /// Unix second the IP is forgotten without further requests.
    pub expires: u64,
}

/// Per-IP request counters shared by every shard.
pub struct Pike {
    cfg: PikeConfig,
    stripes: Striped<HashMap<IpAddr, Leaf>>,
    per_stripe: usize,
}

/// Stripes of the pike table.
const STRIPES: usize = super::services::STRIPES;

impl Pike {
    pub fn new(cfg: &PikeConfig) -> Pike {
        Pike {
            cfg: cfg.clone(),
            stripes: Striped::new(STRIPES, |_| HashMap::new()),
            per_stripe: cfg.max_ips.div_ceil(STRIPES).max(1),
        }
    }

    fn key(ip: &IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn hot(&self, l: &Leaf) -> bool {
        let max = self.cfg.reqs_density_per_unit;
        l.prev >= max || l.curr >= max || (l.prev + l.curr) / 2 >= max
    }

    /// Moves `l` to `unit`, unblocking it at a boundary where it is not hot.
    fn shift(&self, l: &mut Leaf, unit: u64) {
        let d = unit.saturating_sub(l.unit);
        if d == 0 {
            return;
        }
        if d == 1 {
            l.prev = l.curr;
        } else {
            l.prev = 0;
        }
        l.curr = 0;
        l.unit = unit;
        if l.red && !self.hot(l) {
            l.red = false;
        }
    }

    /// Counts one request from `ip` at `now_s`; 1, -1 or -2 as
    /// pike_check_req.
    pub fn check(&self, ip: IpAddr, now_s: u64) -> i32 {
        let unit = now_s / self.cfg.sampling_time_unit.max(1);
        let mut stripe = self.stripes.get(&Self::key(&ip));
        let latency = self.cfg.remove_latency;
        if !stripe.contains_key(&ip) && stripe.len() >= self.per_stripe {
            stripe.retain(|_, l| l.last_s.saturating_add(latency) >= now_s);
            if stripe.len() >= self.per_stripe {
                if let Some(oldest) = stripe
                    .iter()
                    .min_by_key(|(_, l)| l.last_s)
                    .map(|(ip, _)| *ip)
                {
                    stripe.remove(&oldest);
                }
            }
        }
        let l = stripe.entry(ip).or_insert_with(|| Leaf {
            unit,
            last_s: now_s,
            ..Leaf::default()
        });
        if l.last_s.saturating_add(latency) < now_s {
            *l = Leaf {
                unit,
                last_s: now_s,
                ..Leaf::default()
            };
        }
        self.shift(l, unit);
        l.last_s = now_s;
        l.curr = l.curr.saturating_add(1);
        if l.red {
            return -1;
        }
        if self.hot(l) {
            l.red = true;
            return -2;
        }
        1
    }

    /// IPs tracked now (forgotten ones may linger until their stripe is
    /// touched or swept).
    pub fn len(&self) -> usize {
        self.stripes.fold(0, |n, s| n + s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets IPs idle for `remove_latency` in stripes `shard, shard+shards..`.
    pub fn sweep(&self, shard: usize, shards: usize, now_s: u64) -> usize {
        let latency = self.cfg.remove_latency;
        let mut n = 0;
        for i in self.stripes.parts_of(shard, shards) {
            let mut s = self.stripes.at(i);
            let before = s.len();
            s.retain(|_, l| l.last_s.saturating_add(latency) >= now_s);
            n += before - s.len();
        }
        n
    }

    /// The tracked IPs: `hot_only` lists the blocked ones (Kamailio's
    /// `pike.top` "HOT"), else all. At most `max`.
    pub fn top(&self, hot_only: bool, now_s: u64, max: usize) -> Vec<PikeEntry> {
        let unit = now_s / self.cfg.sampling_time_unit.max(1);
        let latency = self.cfg.remove_latency;
        let mut out = Vec::new();
        for i in 0..self.stripes.parts() {
            let s = self.stripes.at(i);
            for (ip, l) in s.iter() {
                if out.len() >= max {
                    return out;
                }
                if l.last_s.saturating_add(latency) < now_s {
                    continue;
                }
                let mut l = l.clone();
                self.shift(&mut l, unit);
                if hot_only && !l.red {
                    continue;
                }
                out.push(PikeEntry {
                    ip: *ip,
                    hits_prev: l.prev,
                    hits_curr: l.curr,
                    blocked: l.red,
                    expires: l.last_s.saturating_add(latency),
                });
            }
        }
        out
    }
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "pike_check_req",
        lua.create_function(move |_, ()| {
            let ip = s.with_msg(|m| m.src.ip())?;
            Ok(s.services
                .tables
                .pike
                .check(ip, super::services::unix_now_s()))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "pike_check_ip",
        lua.create_function(move |_, ip: mlua::String| {
            let ip = ip.to_str()?;
            let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
            Ok(match ip.parse::<IpAddr>() {
                Ok(ip) => s
                    .services
                    .tables
                    .pike
                    .check(ip, super::services::unix_now_s()),
                Err(_) => -1,
            })
        })?,
    )?;
    ksr.set("pike", t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{engine_on, global_int, request, run, run_from, tables_with};

    fn pike(density: u32, unit: u64, latency: u64, max_ips: usize) -> Pike {
        Pike::new(&PikeConfig {
            sampling_time_unit: unit,
            reqs_density_per_unit: density,
            remove_latency: latency,
            max_ips,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_at_the_density_then_reports_minus_one() {
        let p = pike(3, 2, 120, 100);
        let a = ip("192.0.2.1");
        assert_eq!(p.check(a, 100), 1);
        assert_eq!(p.check(a, 100), 1);
        assert_eq!(p.check(a, 101), -2, "third request in the unit: new flood");
        assert_eq!(p.check(a, 101), -1, "already detected");
        assert_eq!(
            p.check(ip("192.0.2.2"), 101),
            1,
            "other IPs are not affected"
        );
        assert_eq!(p.check(ip("2001:db8::1"), 101), 1);
    }

    #[test]
    fn unblocks_at_a_quiet_unit_boundary() {
        let p = pike(3, 2, 120, 100);
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            p.check(a, 100);
        }
        // Next unit: the previous one (4 hits) is still hot.
        assert_eq!(p.check(a, 102), -1);
        // Two units later both counters are low again: unblocked.
        assert_eq!(p.check(a, 106), 1);
    }

    #[test]
    fn forgets_after_remove_latency_and_stays_bounded() {
        let p = pike(2, 1, 10, 64);
        let a = ip("192.0.2.1");
        p.check(a, 100);
        p.check(a, 100);
        assert_eq!(p.top(true, 100, 10).len(), 1);
        assert_eq!(p.sweep(0, 1, 105), 0);
        assert_eq!(p.sweep(0, 1, 111), 1);
        assert!(p.is_empty());
        // 64 IPs at most (one per stripe): 1000 distinct sources never grow it.
        for i in 0..1000u32 {
            p.check(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 200);
        }
        assert!(p.len() <= 64, "{}", p.len());
    }

    #[test]
    fn top_lists_hot_or_all() {
        let p = pike(2, 2, 120, 100);
        p.check(ip("192.0.2.1"), 100);
        p.check(ip("192.0.2.1"), 100);
        p.check(ip("192.0.2.2"), 100);
        let hot = p.top(true, 100, 10);
        assert_eq!(hot.len(), 1);
        assert_eq!(hot[0].ip, ip("192.0.2.1"));
        assert!(hot[0].blocked);
        assert_eq!(hot[0].hits_curr, 2);
        assert_eq!(p.top(false, 100, 10).len(), 2);
    }

    #[test]
    fn ksr_functions_and_shared_state_across_shards() {
        let tables = tables_with("[pike]\nreqs_density_per_unit = 3\nsampling_time_unit = 3600\n");
        let script = r#"
            function ksr_request_route()
                rc = KSR.pike.pike_check_req()
                bad = KSR.pike.pike_check_ip("not-an-ip")
                other = KSR.pike.pike_check_ip("[2001:db8::9]")
            end"#;
        let a = engine_on(script, tables.clone(), 0, 2);
        let b = engine_on(script, tables.clone(), 1, 2);
        let msg = request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]);
        run(&a, &msg);
        assert_eq!(global_int(&a, "rc"), 1);
        assert_eq!(global_int(&a, "bad"), -1);
        assert_eq!(global_int(&a, "other"), 1);
        run(&b, &msg);
        assert_eq!(global_int(&b, "rc"), 1);
        // Third request from 192.0.2.9 on the other shard: the count is shared.
        run(&a, &msg);
        assert_eq!(global_int(&a, "rc"), -2);
        run(&b, &msg);
        assert_eq!(global_int(&b, "rc"), -1);
        run_from(&b, &msg, "192.0.2.50:5060");
        assert_eq!(global_int(&b, "rc"), 1);
    }
}
