//! Flood control the shard applies before a request's route runs: a
//! per-source-IP token bucket (`[flood] per_source_rate`) and bans of a
//! source after `auth_failures_max` failed authentications within
//! `auth_failures_window_s` (for `ban_time_s`; every ban expires).
//!
//! One table for the whole server, lock-striped by IP like pike's (every
//! shard sees the same source: the reuseport spread sends one source's
//! datagrams to every shard). Bounded by `max_sources`: a new source in a
//! full stripe first drops the entries that hold nothing (a full bucket, no
//! recent failure, no live ban), then the least recently seen one, banned
//! entries last; [`Check::evicted`] tells the caller to count it.
//!
//! Never: a clock or I/O here. Time comes in as `now_ms` (Unix
//! milliseconds, so `flood.list` can show when a ban ends).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::FloodConfig;
use crate::partition::Striped;

/// Stripes of the table (as the other shared tables).
const STRIPES: usize = 64;

/// What the shard does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over `per_source_rate`.
    RateLimited,
    /// The source is banned.
    Banned,
}

/// A check's verdict, and whether making room evicted another source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    pub evicted: bool,
}

/// What one failed authentication did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Counted (or banning is off, or the source is exempt).
    Counted,
    /// This failure banned the source until the given Unix millisecond.
    Banned { until_ms: u64 },
}

#[derive(Clone, Debug, Default)]
struct Source {
    /// Tokens in thousandths (one request costs 1000).
    tokens_milli: u64,
    /// When the bucket was last refilled.
    refill_ms: u64,
    last_ms: u64,
    failures: u32,
    window_start_ms: u64,
    /// 0 = not banned; else the ban ends at this Unix millisecond.
    banned_until_ms: u64,
    /// Requests dropped since the entry was made.
    dropped: u64,
}

/// One source as `flood.list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub ip: IpAddr,
    /// Unix second the ban ends; `None` when not banned.
    pub banned_until_s: Option<u64>,
    /// Failed authentications in the current window.
    pub auth_failures: u32,
    pub dropped: u64,
}

/// The shared flood-control table.
pub struct Flood {
    cfg: FloodConfig,
    /// Keyed by the address as 128 bits (IPv4 mapped into IPv6): one
    /// SipHash write per lookup.
    stripes: Striped<HashMap<u128, Source>>,
    per_stripe: usize,
    /// The latest end of any ban ever issued: while `now` is past it no
    /// source can be banned, so a check with only bans configured takes no
    /// lock.
    ban_horizon_ms: AtomicU64,
}

impl Flood {
    pub fn new(cfg: &FloodConfig) -> Flood {
        Flood {
            cfg: cfg.clone(),
            stripes: Striped::new(STRIPES, |_| HashMap::new()),
            per_stripe: cfg.max_sources.div_ceil(STRIPES).max(1),
            ban_horizon_ms: AtomicU64::new(0),
        }
    }

    /// Anything to check per request (`[flood]` configured).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    /// Whether a request needs [`Flood::check`] at all: a rate is set, or
    /// some ban was ever issued (until then a bans-only configuration costs
    /// one atomic load and no clock read).
    #[inline]
    pub fn needs_check(&self) -> bool {
        self.cfg.per_source_rate > 0 || self.ban_horizon_ms.load(Ordering::Relaxed) > 0
    }

    pub fn config(&self) -> &FloodConfig {
        &self.cfg
    }

    fn exempt(&self, ip: &IpAddr) -> bool {
        !self.cfg.exempt.is_empty() && self.cfg.exempt.contains(ip)
    }

    fn key(ip: &IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(*v6),
        }
    }

    fn ip_of(key: u128) -> IpAddr {
        let v6 = std::net::Ipv6Addr::from(key);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }

    /// The stripe of `key`: a multiplicative mix of its two halves (cheaper
    /// than hashing the bytes; within a stripe the map's SipHash keeps
    /// chosen addresses from colliding).
    fn stripe_of(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Source>> {
        let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(17);
        let mixed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.stripes
            .at((mixed >> 32) as usize % self.stripes.parts())
    }

    fn burst_milli(&self) -> u64 {
        u64::from(self.cfg.per_source_burst).saturating_mul(1000)
    }

    /// The bucket refilled to `now_ms`.
    fn refill(&self, s: &mut Source, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(s.refill_ms);
        if elapsed > 0 {
            // rate tokens/s = rate thousandths per ms
            let add = elapsed.saturating_mul(u64::from(self.cfg.per_source_rate));
            s.tokens_milli = s.tokens_milli.saturating_add(add).min(self.burst_milli());
            s.refill_ms = now_ms;
        }
    }

    /// An entry that holds nothing a fresh one would not: forgetting it
    /// changes no verdict.
    fn idle(&self, s: &Source, now_ms: u64) -> bool {
        let ban_over = s.banned_until_ms <= now_ms;
        let window_over = s.failures == 0
            || now_ms.saturating_sub(s.window_start_ms)
                >= self.cfg.auth_failures_window_s.saturating_mul(1000);
        let bucket_full = self.cfg.per_source_rate == 0 || {
            let elapsed = now_ms.saturating_sub(s.refill_ms);
            s.tokens_milli
                .saturating_add(elapsed.saturating_mul(u64::from(self.cfg.per_source_rate)))
                >= self.burst_milli()
        };
        ban_over && window_over && bucket_full
    }

    fn fresh(&self, now_ms: u64) -> Source {
        Source {
            tokens_milli: self.burst_milli(),
            refill_ms: now_ms,
            last_ms: now_ms,
            ..Source::default()
        }
    }

    /// Makes room for a new source in `stripe`; true when a source that
    /// still held state had to go.
    fn make_room(&self, stripe: &mut HashMap<u128, Source>, now_ms: u64) -> bool {
        if stripe.len() < self.per_stripe {
            return false;
        }
        stripe.retain(|_, s| !self.idle(s, now_ms));
        if stripe.len() < self.per_stripe {
            return false;
        }
        let victim = stripe
            .iter()
            .min_by_key(|(_, s)| (s.banned_until_ms > now_ms, s.last_ms))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            stripe.remove(&k);
        }
        true
    }

    /// One request from `ip` at `now_ms`: banned, over its rate, or through.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Check {
        let pass = Check {
            verdict: Verdict::Pass,
            evicted: false,
        };
        let limit = self.cfg.per_source_rate > 0;
        if !limit && now_ms >= self.ban_horizon_ms.load(Ordering::Relaxed) {
            return pass;
        }
        if self.exempt(&ip) {
            return pass;
        }
        let key = Self::key(&ip);
        let mut stripe = self.stripe_of(key);
        // One hash lookup for a known source (the common case).
        if let Some(s) = stripe.get_mut(&key) {
            return self.judge(s, now_ms, false);
        }
        if !limit {
            // Only bans are configured and this source has none.
            return pass;
        }
        let evicted = self.make_room(&mut stripe, now_ms);
        let s = stripe.entry(key).or_insert_with(|| self.fresh(now_ms));
        self.judge(s, now_ms, evicted)
    }

    /// The verdict on one request from the source `s`.
    fn judge(&self, s: &mut Source, now_ms: u64, evicted: bool) -> Check {
        s.last_ms = now_ms;
        let verdict = if s.banned_until_ms > now_ms {
            Verdict::Banned
        } else {
            s.banned_until_ms = 0;
            if self.cfg.per_source_rate > 0 {
                self.refill(s, now_ms);
                if s.tokens_milli >= 1000 {
                    s.tokens_milli -= 1000;
                    Verdict::Pass
                } else {
                    Verdict::RateLimited
                }
            } else {
                Verdict::Pass
            }
        };
        if verdict != Verdict::Pass {
            s.dropped = s.dropped.saturating_add(1);
        }
        Check { verdict, evicted }
    }

    /// A failed authentication from `ip` at `now_ms`.
    pub fn auth_failed(&self, ip: IpAddr, now_ms: u64) -> Failure {
        let max = self.cfg.auth_failures_max;
        if max == 0 || self.exempt(&ip) {
            return Failure::Counted;
        }
        let window_ms = self.cfg.auth_failures_window_s.saturating_mul(1000);
        let key = Self::key(&ip);
        let mut stripe = self.stripe_of(key);
        if !stripe.contains_key(&key) {
            self.make_room(&mut stripe, now_ms);
            stripe.insert(key, self.fresh(now_ms));
        }
        let Some(s) = stripe.get_mut(&key) else {
            return Failure::Counted;
        };
        s.last_ms = now_ms;
        if s.failures == 0 || now_ms.saturating_sub(s.window_start_ms) >= window_ms {
            s.failures = 0;
            s.window_start_ms = now_ms;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures < max || s.banned_until_ms > now_ms {
            return Failure::Counted;
        }
        let until_ms = now_ms.saturating_add(self.cfg.ban_time_s.saturating_mul(1000));
        s.banned_until_ms = until_ms;
        s.failures = 0;
        self.ban_horizon_ms.fetch_max(until_ms, Ordering::Relaxed);
        Failure::Banned { until_ms }
    }

    /// Lifts the ban of `ip` and forgets its failures; false when it was
    /// not banned.
    pub fn unban(&self, ip: IpAddr, now_ms: u64) -> bool {
        let key = Self::key(&ip);
        let mut stripe = self.stripe_of(key);
        match stripe.get_mut(&key) {
            Some(s) => {
                let was = s.banned_until_ms > now_ms;
                s.banned_until_ms = 0;
                s.failures = 0;
                was
            }
            None => false,
        }
    }

    /// Sources tracked now (idle ones may linger until swept).
    pub fn len(&self) -> usize {
        self.stripes.fold(0, |n, s| n + s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets idle sources (expired bans included) in stripes
    /// `shard, shard+shards..`; how many.
    pub fn sweep(&self, shard: usize, shards: usize, now_ms: u64) -> usize {
        let mut n = 0;
        for i in self.stripes.parts_of(shard, shards) {
            let mut s = self.stripes.at(i);
            let before = s.len();
            s.retain(|_, src| !self.idle(src, now_ms));
            n += before - s.len();
        }
        n
    }

    /// Banned sources (`banned_only`), or every source with a ban, an
    /// authentication failure in the window or a dropped request; at most
    /// `max`.
    pub fn list(&self, banned_only: bool, now_ms: u64, max: usize) -> Vec<SourceEntry> {
        let window_ms = self.cfg.auth_failures_window_s.saturating_mul(1000);
        let mut out = Vec::new();
        for i in 0..self.stripes.parts() {
            let s = self.stripes.at(i);
            for (key, src) in s.iter() {
                if out.len() >= max {
                    return out;
                }
                let banned = src.banned_until_ms > now_ms;
                let failures =
                    if src.failures > 0 && now_ms.saturating_sub(src.window_start_ms) < window_ms {
                        src.failures
                    } else {
                        0
                    };
                if !banned && (banned_only || (failures == 0 && src.dropped == 0)) {
                    continue;
                }
                out.push(SourceEntry {
                    ip: Self::ip_of(*key),
                    banned_until_s: banned.then(|| src.banned_until_ms.div_ceil(1000)),
                    auth_failures: failures,
                    dropped: src.dropped,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(rate: u32, burst: u32, fails: u32, window_s: u64, ban_s: u64, max: usize) -> Flood {
        Flood::new(&FloodConfig {
            per_source_rate: rate,
            per_source_burst: burst,
            auth_failures_max: fails,
            auth_failures_window_s: window_s,
            ban_time_s: ban_s,
            max_sources: max,
            ..FloodConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn verdicts(f: &Flood, a: IpAddr, n: usize, now_ms: u64) -> (usize, usize) {
        let mut pass = 0;
        let mut limited = 0;
        for _ in 0..n {
            match f.check(a, now_ms).verdict {
                Verdict::Pass => pass += 1,
                Verdict::RateLimited => limited += 1,
                Verdict::Banned => {}
            }
        }
        (pass, limited)
    }

    #[test]
    fn off_passes_everything_without_an_entry() {
        let f = flood(0, 10, 0, 60, 300, 100);
        assert!(!f.enabled());
        assert_eq!(verdicts(&f, ip("192.0.2.1"), 1000, 1_000), (1000, 0));
        assert_eq!(f.auth_failed(ip("192.0.2.1"), 1_000), Failure::Counted);
        assert!(f.is_empty());
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let f = flood(10, 5, 0, 60, 300, 100);
        let a = ip("192.0.2.1");
        assert_eq!(verdicts(&f, a, 8, 1_000), (5, 3), "burst of 5");
        // 10/s: 100 ms buys one request
        assert_eq!(verdicts(&f, a, 3, 1_100), (1, 2));
        assert_eq!(verdicts(&f, a, 3, 1_350), (2, 1), "250 ms: two more");
        // a long pause refills to the burst, not beyond
        assert_eq!(verdicts(&f, a, 10, 60_000), (5, 5));
        // other sources have their own bucket
        assert_eq!(verdicts(&f, ip("2001:db8::1"), 6, 60_000), (5, 1));
    }

    #[test]
    fn failures_ban_within_the_window_and_the_ban_expires() {
        let f = flood(0, 10, 3, 10, 2, 100);
        let a = ip("192.0.2.1");
        assert_eq!(f.auth_failed(a, 1_000), Failure::Counted);
        assert_eq!(f.auth_failed(a, 2_000), Failure::Counted);
        // the window (10 s) starts again: these two do not ban
        assert_eq!(f.auth_failed(a, 12_000), Failure::Counted);
        assert_eq!(f.auth_failed(a, 13_000), Failure::Counted);
        assert_eq!(f.check(a, 13_000).verdict, Verdict::Pass);
        assert_eq!(
            f.auth_failed(a, 14_000),
            Failure::Banned { until_ms: 16_000 }
        );
        assert_eq!(f.check(a, 14_001).verdict, Verdict::Banned);
        assert_eq!(f.check(ip("192.0.2.2"), 14_001).verdict, Verdict::Pass);
        let l = f.list(true, 15_000, 10);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].banned_until_s, Some(16));
        assert_eq!(l[0].dropped, 1);
        // expired
        assert_eq!(f.check(a, 16_000).verdict, Verdict::Pass);
        assert!(f.list(true, 16_000, 10).is_empty());
        assert_eq!(f.sweep(0, 1, 16_000), 1, "an expired ban is swept");
        assert!(f.is_empty());
    }

    #[test]
    fn unban_lifts_a_ban() {
        let f = flood(0, 10, 1, 10, 300, 100);
        let a = ip("192.0.2.1");
        assert!(matches!(f.auth_failed(a, 1_000), Failure::Banned { .. }));
        assert_eq!(f.check(a, 1_001).verdict, Verdict::Banned);
        assert!(f.unban(a, 1_002));
        assert!(!f.unban(a, 1_002));
        assert_eq!(f.check(a, 1_003).verdict, Verdict::Pass);
    }

    #[test]
    fn exempt_sources_are_never_limited_nor_banned() {
        let mut cfg = FloodConfig {
            per_source_rate: 1,
            per_source_burst: 1,
            auth_failures_max: 1,
            ..FloodConfig::default()
        };
        cfg.exempt = vec![ip("192.0.2.7")];
        let f = Flood::new(&cfg);
        let a = ip("192.0.2.7");
        assert_eq!(f.auth_failed(a, 1_000), Failure::Counted);
        assert_eq!(verdicts(&f, a, 100, 1_000), (100, 0));
    }

    #[test]
    fn bounded_with_bans_kept_longest() {
        // one entry per stripe
        let f = flood(1, 1, 1, 10, 300, 64);
        let banned = ip("10.0.0.1");
        assert!(matches!(
            f.auth_failed(banned, 1_000),
            Failure::Banned { .. }
        ));
        let mut evicted = 0;
        for i in 0..5000u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            // two requests: the bucket is not full, the entry holds state
            if f.check(src, 1_000).evicted {
                evicted += 1;
            }
            f.check(src, 1_000);
        }
        assert!(f.len() <= 64, "{}", f.len());
        assert!(evicted > 0, "a full table evicts (and says so)");
        // idle entries go first: a ban survives newcomers that are idle again
        let f = flood(1000, 1000, 1, 10, 300, 640);
        assert!(matches!(
            f.auth_failed(banned, 1_000),
            Failure::Banned { .. }
        ));
        for i in 0..5000u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            f.check(src, 1_000 + u64::from(i) * 10);
        }
        assert_eq!(f.check(banned, 60_000).verdict, Verdict::Banned);
    }

    #[test]
    fn list_shows_failures_and_bans() {
        let f = flood(0, 10, 5, 10, 300, 100);
        f.auth_failed(ip("192.0.2.1"), 1_000);
        f.auth_failed(ip("192.0.2.1"), 1_000);
        assert!(f.list(true, 1_000, 10).is_empty());
        let all = f.list(false, 1_000, 10);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].auth_failures, 2);
        assert_eq!(all[0].banned_until_s, None);
        assert!(f.list(false, 20_000, 10).is_empty(), "window over");
        f.auth_failed(ip("2001:db8::7"), 30_000);
        let all = f.list(false, 30_000, 10);
        assert_eq!(all[0].ip, ip("2001:db8::7"), "IPv6 listed as such");
    }
}
