//! The selection algorithms of `ds_select_*`: which destination of a set
//! goes first, and the order of the others (the failover list kept in the
//! `_dsdst_` XAVP). Pure: hashes, the random number and call loads are
//! inputs.

use std::sync::atomic::Ordering;

use super::list::{Dest, DsSet};

/// What the caller hashes for an algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashSource {
    CallId,
    FromUri,
    ToUri,
    RequestUri,
    /// Authorization / Proxy-Authorization username (alg 5); round robin
    /// when there is none.
    AuthUser,
    None,
}

/// The message part algorithm `alg` hashes over.
pub fn hash_source(alg: i32) -> HashSource {
    match alg {
        0 => HashSource::CallId,
        1 => HashSource::FromUri,
        2 => HashSource::ToUri,
        3 => HashSource::RequestUri,
        5 => HashSource::AuthUser,
        _ => HashSource::None,
    }
}

/// Everything a selection needs besides the set.
pub struct SelectCtx<'a> {
    /// Hash of the algorithm's [`HashSource`]; `None` when absent.
    pub hash: Option<u64>,
    /// A random number (alg 6).
    pub rand: u32,
    /// Active calls of a destination (alg 10).
    pub load: &'a dyn Fn(&Dest) -> u32,
    /// `ds_ping_latency_stats`: alg 13 lowers priorities by latency.
    pub latency_stats: bool,
    /// `use_default`: the set's last destination is only tried last.
    pub use_default: bool,
    /// Most destinations in the result (0: all).
    pub limit: usize,
}

/// Why nothing was selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectError {
    /// No destination of the set is active (or under its maxload).
    NoneActive,
}

/// Fills `out` with destination indices of `set`: the selected one first,
/// then the other active ones in failover order (and the default last with
/// `use_default`), at most `ctx.limit` when not 0.
pub fn select(
    set: &DsSet,
    alg: i32,
    ctx: &SelectCtx<'_>,
    out: &mut Vec<usize>,
) -> Result<(), SelectError> {
    out.clear();
    let n = set.dests.len();
    let (nd, default) = if ctx.use_default && n > 0 {
        (n - 1, Some(n - 1))
    } else {
        (n, None)
    };
    let dests = &set.dests;
    let active = |i: usize| dests.get(i).is_some_and(Dest::is_active);
    let mut ordered_by_latency: Vec<usize> = Vec::new();
    let first = if nd == 0 {
        None
    } else {
        let start = match alg {
            0..=3 | 5 if ctx.hash.is_some() => (ctx.hash.unwrap_or(0) % nd as u64) as usize,
            4 | 5 => set.rr.fetch_add(1, Ordering::Relaxed) as usize % nd,
            6 => ctx.rand as usize % nd,
            9 => {
                let slot = set.wslot.fetch_add(1, Ordering::Relaxed) as usize % 100;
                match set.wlist.get(slot) {
                    Some(&i) if (i as usize) < nd => i as usize,
                    _ => 0,
                }
            }
            10 => {
                // Least loaded active destination under its maxload.
                let pick = (0..nd)
                    .filter(|&i| active(i))
                    .filter_map(|i| {
                        let d = &dests[i];
                        let load = (ctx.load)(d);
                        (d.attrs.maxload == 0 || load < d.attrs.maxload).then_some((load, i))
                    })
                    .min();
                match pick {
                    Some((_, i)) => i,
                    None => return Err(SelectError::NoneActive),
                }
            }
            11 => rweight_pick(set, nd).unwrap_or(0),
            13 => {
                ordered_by_latency = latency_order(set, nd, ctx.latency_stats);
                ordered_by_latency.first().copied().unwrap_or(0)
            }
            // 8 (priority order) and the ones not implemented (Kamailio:
            // "the first entry in set is chosen").
            _ => 0,
        };
        // An inactive pick: the next active one after it.
        (0..nd).map(|k| (start + k) % nd).find(|&i| active(i))
    };
    let keep = if ctx.limit == 0 {
        usize::MAX
    } else {
        ctx.limit
    };
    let default_active = default.filter(|&d| active(d));
    let room = keep.saturating_sub(usize::from(default_active.is_some()));
    match first {
        Some(f) => {
            out.push(f);
            let room = room.max(1);
            match alg {
                10 => fill(out, (0..nd).filter(|&i| i != f), room, &active),
                13 => fill(
                    out,
                    ordered_by_latency.iter().skip(1).copied(),
                    room,
                    &active,
                ),
                _ => fill(out, (1..nd).map(|k| (f + k) % nd), room, &active),
            }
            if let Some(d) = default_active {
                if out.len() < keep {
                    out.push(d);
                }
            }
        }
        None => match default_active {
            Some(d) => out.push(d),
            None => return Err(SelectError::NoneActive),
        },
    }
    Ok(())
}

/// Appends the active indices of `it` to `out` until it holds `room`.
fn fill(
    out: &mut Vec<usize>,
    it: impl Iterator<Item = usize>,
    room: usize,
    active: &dyn Fn(usize) -> bool,
) {
    for i in it {
        if out.len() >= room {
            break;
        }
        if active(i) {
            out.push(i);
        }
    }
}

/// Alg 11: the 100-slot cycle shared among the active destinations with an
/// `rweight`, each `rweight * 100 / sum` slots (truncated; the last one
/// fills up to 100).
fn rweight_pick(set: &DsSet, nd: usize) -> Option<usize> {
    let weighted = || {
        set.dests
            .iter()
            .take(nd)
            .enumerate()
            .filter(|(_, d)| d.is_active() && d.attrs.rweight > 0)
    };
    let (sum, count) = weighted().fold((0u32, 0usize), |(s, c), (_, d)| {
        (s + d.attrs.rweight, c + 1)
    });
    if sum == 0 {
        return None;
    }
    let pos = set.wslot.fetch_add(1, Ordering::Relaxed) as usize % 100;
    let slot = u32::from(SPREAD.get(pos).copied().unwrap_or(0));
    let mut acc = 0;
    for (k, (i, d)) in weighted().enumerate() {
        acc += d.attrs.rweight * 100 / sum;
        if slot < acc || k + 1 == count {
            return Some(i);
        }
    }
    None
}

/// 0..100 in a fixed spread order (see `list::spread`).
static SPREAD: std::sync::LazyLock<[u8; 100]> = std::sync::LazyLock::new(|| {
    let mut v: [u8; 100] = std::array::from_fn(|i| i as u8);
    super::list::spread(&mut v);
    v
});

/// Alg 13: active destinations by adjusted priority, highest first
/// (`priority - latency_ms / priority`, latency being the estimate, or
/// estimate - average with `cc=1`); the best ones take turns (round robin).
fn latency_order(set: &DsSet, nd: usize, latency_stats: bool) -> Vec<usize> {
    let adjusted = |d: &Dest| -> i64 {
        let p = i64::from(d.priority);
        if !latency_stats || p <= 0 {
            return p;
        }
        let v = d.latency.view();
        let ms = if d.attrs.cc { v.est - v.avg } else { v.est };
        p - (ms.max(0.0) as i64) / p
    };
    let mut v: Vec<(i64, usize)> = set
        .dests
        .iter()
        .take(nd)
        .enumerate()
        .filter(|(_, d)| d.is_active())
        .map(|(i, d)| (adjusted(d), i))
        .collect();
    v.sort_by_key(|&(a, i)| (std::cmp::Reverse(a), i));
    let Some(&(best, _)) = v.first() else {
        return Vec::new();
    };
    let ties = v.iter().take_while(|(a, _)| *a == best).count();
    let turn = set.rr.fetch_add(1, Ordering::Relaxed) as usize % ties.max(1);
    v[..ties].rotate_left(turn);
    v.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::super::list::{DsList, ListLimits, DISABLED, INACTIVE};
    use super::*;

    fn list(text: &str) -> DsList {
        let (rows, _) = DsList::parse_file(text);
        DsList::from_rows(
            &rows,
            ListLimits {
                max_sets: 16,
                max_destinations: 64,
            },
        )
        .0
    }

    fn ctx<'a>(hash: Option<u64>, load: &'a dyn Fn(&Dest) -> u32) -> SelectCtx<'a> {
        SelectCtx {
            hash,
            rand: 7,
            load,
            latency_stats: true,
            use_default: false,
            limit: 0,
        }
    }

    fn pick(set: &DsSet, alg: i32, c: &SelectCtx<'_>) -> Vec<usize> {
        let mut out = Vec::new();
        select(set, alg, c, &mut out).unwrap();
        out
    }

    const NO_LOAD: &dyn Fn(&Dest) -> u32 = &|_| 0;

    #[test]
    fn round_robin_cycles_and_lists_the_rest_in_order() {
        let l = list("1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3\n");
        let s = &l.sets[0];
        let c = ctx(None, NO_LOAD);
        assert_eq!(pick(s, 4, &c), vec![0, 1, 2]);
        assert_eq!(pick(s, 4, &c), vec![1, 2, 0]);
        assert_eq!(pick(s, 4, &c), vec![2, 0, 1]);
        s.dests[1].set_state(INACTIVE);
        assert_eq!(pick(s, 4, &c), vec![0, 2], "inactive ones are left out");
        assert_eq!(pick(s, 4, &c), vec![2, 0], "an inactive pick moves on");
    }

    #[test]
    fn hashes_are_stable_and_limit_applies() {
        let l = list("1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3\n");
        let s = &l.sets[0];
        let c = ctx(Some(4), NO_LOAD);
        assert_eq!(pick(s, 0, &c), vec![1, 2, 0]);
        assert_eq!(pick(s, 1, &c), vec![1, 2, 0]);
        let c = SelectCtx { limit: 2, ..c };
        assert_eq!(pick(s, 0, &c), vec![1, 2]);
        // Alg 5 without a user name: round robin.
        let c = ctx(None, NO_LOAD);
        assert_eq!(pick(s, 5, &c)[0], 0);
        assert_eq!(pick(s, 5, &c)[0], 1);
        assert_eq!(pick(s, 6, &c)[0], 1, "random 7 % 3");
    }

    #[test]
    fn priority_order_and_unknown_algorithms() {
        let l = list("1 sip:10.0.0.1 0 1\n1 sip:10.0.0.2 0 9\n1 sip:10.0.0.3 0 5\n");
        let s = &l.sets[0];
        assert_eq!(s.dests[0].uri, "sip:10.0.0.2");
        let c = ctx(None, NO_LOAD);
        assert_eq!(pick(s, 8, &c), vec![0, 1, 2]);
        assert_eq!(pick(s, 99, &c), vec![0, 1, 2]);
        s.dests[0].set_state(DISABLED);
        assert_eq!(pick(s, 8, &c), vec![1, 2]);
    }

    #[test]
    fn weight_split_is_exact_per_hundred() {
        let l = list("1 sip:10.0.0.2 0 0 weight=75\n1 sip:10.0.0.1 0 0 weight=25\n");
        let s = &l.sets[0];
        let c = ctx(None, NO_LOAD);
        let mut n = [0; 2];
        for _ in 0..200 {
            n[pick(s, 9, &c)[0]] += 1;
        }
        assert_eq!(n, [50, 150]);
    }

    #[test]
    fn relative_weight_follows_active_ones() {
        let l = list(
            "1 sip:10.0.0.1 0 0 rweight=1\n1 sip:10.0.0.2 0 0 rweight=2\n1 sip:10.0.0.3 0 0 rweight=1\n",
        );
        let s = &l.sets[0];
        let c = ctx(None, NO_LOAD);
        let mut n = [0; 3];
        for _ in 0..100 {
            n[pick(s, 11, &c)[0]] += 1;
        }
        assert_eq!(n, [25, 50, 25]);
        s.dests[2].set_state(INACTIVE);
        let mut n = [0; 3];
        for _ in 0..100 {
            n[pick(s, 11, &c)[0]] += 1;
        }
        assert_eq!(n, [33, 67, 0], "Kamailio's 33/67/0 example");
    }

    #[test]
    fn call_load_picks_the_least_loaded_under_maxload() {
        let l = list(
            "1 sip:10.0.0.1 0 0 duid=a;maxload=2\n1 sip:10.0.0.2 0 0 duid=b;maxload=2\n1 sip:10.0.0.3 0 0 duid=c\n",
        );
        let s = &l.sets[0];
        let loads = |d: &Dest| match d.attrs.duid.as_str() {
            "a" => 2,
            "b" => 1,
            _ => 5,
        };
        let c = ctx(None, &loads);
        assert_eq!(pick(s, 10, &c), vec![1, 0, 2], "rest in set order");
        let full = |_: &Dest| 2;
        let l = list("1 sip:10.0.0.1 0 0 duid=a;maxload=2\n");
        let mut out = Vec::new();
        assert_eq!(
            select(&l.sets[0], 10, &ctx(None, &full), &mut out),
            Err(SelectError::NoneActive)
        );
    }

    #[test]
    fn latency_lowers_priority() {
        let l = list("1 sip:10.0.0.1 0 30\n1 sip:10.0.0.2 0 30\n1 sip:10.0.0.3 0 30\n");
        let s = &l.sets[0];
        s.dests[1].latency.record(91.0, 1.0); // 30 - 91/30 = 27
        let c = ctx(None, NO_LOAD);
        let a = pick(s, 13, &c);
        let b = pick(s, 13, &c);
        assert_eq!(a.last(), Some(&1));
        assert_eq!(b.last(), Some(&1));
        assert_ne!(a[0], b[0], "the best ones take turns");
        let off = SelectCtx {
            latency_stats: false,
            ..ctx(None, NO_LOAD)
        };
        let mut firsts: Vec<usize> = (0..3).map(|_| pick(s, 13, &off)[0]).collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 1, 2], "without stats: plain priority");
    }

    #[test]
    fn use_default_goes_last_and_alone_when_needed() {
        let l = list("1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.9\n");
        let s = &l.sets[0];
        let c = SelectCtx {
            use_default: true,
            ..ctx(Some(0), NO_LOAD)
        };
        assert_eq!(pick(s, 0, &c), vec![0, 1, 2]);
        let lim = SelectCtx {
            limit: 2,
            use_default: true,
            ..ctx(Some(0), NO_LOAD)
        };
        assert_eq!(
            pick(s, 0, &lim),
            vec![0, 2],
            "default kept within the limit"
        );
        s.dests[0].set_state(INACTIVE);
        s.dests[1].set_state(INACTIVE);
        assert_eq!(pick(s, 0, &c), vec![2]);
        s.dests[2].set_state(INACTIVE);
        let mut out = Vec::new();
        assert_eq!(select(s, 0, &c, &mut out), Err(SelectError::NoneActive));
    }
}
