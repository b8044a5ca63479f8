//! Nonce-count replay protection (RFC 7616 §3.4 `nc`; Kamailio `nonce_count`).
//!
//! A bounded per-shard table maps each nonce seen with `qop` to the highest
//! `nc` accepted for it and a small ring of the last [`RECENT`] accepted
//! requests (`nc`, Call-ID, CSeq). A request passes when
//!
//! * its `nc` is higher than the highest seen for the nonce ([`NcCheck::Fresh`]), or
//! * it is a retransmission of a recently accepted request: same `nc`, same
//!   Call-ID, same CSeq number and method ([`NcCheck::Retransmission`]). UDP
//!   retransmits an unanswered request unchanged, credentials included.
//!
//! Anything else is a replay ([`NcCheck::Replay`] → `-6`, nonce reused).
//!
//! What is detected: reuse of an `nc` (or a lower one) with a different
//! Call-ID or CSeq, i.e. a captured request replayed as a new one, as long as
//! the nonce is still in this shard's table.
//!
//! What is not detected (documented limits, as in Kamailio whose
//! `nc_array_size` table also forgets old nonces):
//! * a verbatim replay of one of the last [`RECENT`] accepted requests is
//!   indistinguishable from a retransmission and accepted; downstream layers
//!   absorb it (a transaction layer matches it to the existing transaction,
//!   the registrar treats an equal Call-ID/CSeq as a retransmission);
//! * with [`NcTracker::check`] (expiry unknown), a nonce evicted from the
//!   table (more than `max_entries` newer nonces since) is treated as never
//!   seen: its next use is accepted. [`NcTracker::check_at`], which the
//!   auth layer uses, closes that gap: the table remembers the latest
//!   expiry among the nonces it evicted, and an unseen nonce expiring no
//!   later than that may have been evicted, so it is [`NcCheck::Forgotten`]
//!   (answered as stale: the client re-authenticates with a fresh nonce).
//! * credentials without `qop` carry no `nc` and are not tracked (only nonce
//!   expiry protects them).
//!
//! Callers must record only *verified* responses (check the digest first),
//! so that forged requests cannot burn a client's `nc` values.

use std::collections::{HashMap, VecDeque};

/// Accepted requests remembered per nonce for retransmission matching.
pub const RECENT: usize = 4;

/// Verdict on a `(nonce, nc, request)` triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcCheck {
    /// `nc` higher than any seen for the nonce (or the nonce is new): accepted
    /// and recorded.
    Fresh,
    /// Same `nc`, Call-ID and CSeq as a recently accepted request: accepted.
    Retransmission,
    /// Nonce reused: refuse with `-6`.
    Replay,
    /// Not in the table, but it may have been evicted: refuse as stale
    /// (`-4`, a fresh challenge with `stale=true`).
    Forgotten,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Recent {
    nc: u32,
    request: u64,
}

#[derive(Debug)]
struct Entry {
    /// The nonce's expiry (Unix s; 0 unknown).
    expires: u64,
    max_nc: u32,
    recent: [Recent; RECENT],
    next: u8,
}

/// Bounded nonce-count table; the oldest nonce (first inserted) is evicted
/// when full. Nonces are kept as a keyed 64-bit hash (SipHash with a
/// per-table random key): no allocation per nonce, and a peer that does not
/// know the key cannot make two nonces collide.
#[derive(Debug)]
pub struct NcTracker {
    max_entries: usize,
    keys: std::collections::hash_map::RandomState,
    map: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    /// Latest expiry among the evicted nonces.
    evicted_upto: u64,
}

/// FNV-1a over Call-ID, CSeq number and method: identifies a request for
/// retransmission matching. Collision resistance is not needed: a verbatim
/// replay is accepted anyway (see the module docs).
fn request_key(call_id: &[u8], cseq: u32, cseq_method: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    call_id.iter().copied().for_each(&mut eat);
    eat(0);
    cseq.to_be_bytes().into_iter().for_each(&mut eat);
    cseq_method.iter().copied().for_each(&mut eat);
    h
}

impl NcTracker {
    /// `max_entries` is clamped to at least 1.
    pub fn new(max_entries: usize) -> NcTracker {
        let max_entries = max_entries.max(1);
        NcTracker {
            max_entries,
            keys: std::collections::hash_map::RandomState::new(),
            map: HashMap::with_capacity(max_entries.min(1 << 16)),
            order: VecDeque::with_capacity(max_entries.min(1 << 16)),
            evicted_upto: 0,
        }
    }

    /// Checks and records one verified request. `nc` is the credentials'
    /// nonce count; `call_id`, `cseq`, `cseq_method` identify the request.
    pub fn check(
        &mut self,
        nonce: &str,
        nc: u32,
        call_id: &[u8],
        cseq: u32,
        cseq_method: &[u8],
    ) -> NcCheck {
        self.check_at(nonce, None, nc, call_id, cseq, cseq_method)
    }

    /// [`NcTracker::check`] for a nonce whose expiry (Unix s) is known: an
    /// unseen nonce that may have been evicted is [`NcCheck::Forgotten`].
    pub fn check_at(
        &mut self,
        nonce: &str,
        expires_unix_s: Option<u64>,
        nc: u32,
        call_id: &[u8],
        cseq: u32,
        cseq_method: &[u8],
    ) -> NcCheck {
        use std::hash::BuildHasher;
        let request = request_key(call_id, cseq, cseq_method);
        let key = self.keys.hash_one(nonce);
        if let Some(e) = self.map.get_mut(&key) {
            if nc > e.max_nc {
                e.max_nc = nc;
                e.recent[usize::from(e.next)] = Recent { nc, request };
                e.next = (e.next + 1) % RECENT as u8;
                return NcCheck::Fresh;
            }
            if e.recent.iter().any(|r| r.nc == nc && r.request == request) {
                return NcCheck::Retransmission;
            }
            return NcCheck::Replay;
        }
        if nc == 0 {
            // Never valid (nc starts at 1) and would alias an empty ring slot.
            return NcCheck::Replay;
        }
        if expires_unix_s.is_some_and(|e| self.evicted_upto > 0 && e <= self.evicted_upto) {
            return NcCheck::Forgotten;
        }
        if self.map.len() >= self.max_entries {
            if let Some(old) = self.order.pop_front() {
                if let Some(e) = self.map.remove(&old) {
                    self.evicted_upto = self.evicted_upto.max(e.expires);
                }
            }
        }
        let mut recent = [Recent::default(); RECENT];
        recent[0] = Recent { nc, request };
        self.order.push_back(key);
        self.map.insert(
            key,
            Entry {
                expires: expires_unix_s.unwrap_or(0),
                max_nc: nc,
                recent,
                next: 1,
            },
        );
        debug_assert!(self.map.len() <= self.max_entries);
        debug_assert_eq!(self.map.len(), self.order.len());
        NcCheck::Fresh
    }

    /// Nonces currently tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_table() {
        use NcCheck::*;
        let mut t = NcTracker::new(10);
        // (nonce, nc, call-id, cseq, method, expected)
        let steps: [(&str, u32, &str, u32, &str, NcCheck); 16] = [
            ("n1", 1, "c1", 1, "INVITE", Fresh),
            ("n1", 1, "c1", 1, "INVITE", Retransmission), // UDP retransmit
            ("n1", 1, "c1", 2, "INVITE", Replay),         // same nc, new request
            ("n1", 1, "c2", 1, "INVITE", Replay),         // same nc, other call
            ("n1", 1, "c1", 1, "BYE", Replay),            // same nc, other method
            ("n1", 2, "c1", 2, "BYE", Fresh),
            ("n1", 1, "c1", 1, "INVITE", Retransmission), // late retransmit of older
            ("n1", 2, "c1", 2, "BYE", Retransmission),
            ("n1", 5, "c3", 1, "MESSAGE", Fresh), // gaps allowed
            ("n1", 4, "c4", 1, "MESSAGE", Replay), // lower than max
            ("n1", 3, "c1", 3, "BYE", Replay),
            ("n2", 1, "c1", 1, "INVITE", Fresh), // nonces independent
            ("n2", 1, "c9", 1, "INVITE", Replay),
            ("n1", 6, "c5", 1, "MESSAGE", Fresh),
            ("n1", 7, "c6", 1, "MESSAGE", Fresh),
            // ring holds 4: nc=5,6,7 and 2 remain, nc=1 was overwritten by 6/7
            ("n1", 1, "c1", 1, "INVITE", Replay),
        ];
        for (i, (nonce, nc, cid, cseq, m, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                t.check(nonce, nc, cid.as_bytes(), cseq, m.as_bytes()),
                want,
                "step {i}"
            );
        }
        assert_eq!(t.check("n1", 7, b"c6", 1, b"MESSAGE"), Retransmission);
        assert_eq!(t.check("n1", 5, b"c3", 1, b"MESSAGE"), Retransmission);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn nc_zero_never_accepted() {
        let mut t = NcTracker::new(4);
        assert_eq!(t.check("n", 0, b"c", 1, b"INVITE"), NcCheck::Replay);
        assert!(t.is_empty());
        assert_eq!(t.check("n", 1, b"c", 1, b"INVITE"), NcCheck::Fresh);
        assert_eq!(t.check("n", 0, b"c", 1, b"INVITE"), NcCheck::Replay);
    }

    #[test]
    fn bounded_oldest_evicted() {
        let mut t = NcTracker::new(3);
        assert_eq!(t.max_entries(), 3);
        for n in ["a", "b", "c"] {
            assert_eq!(t.check(n, 1, b"x", 1, b"R"), NcCheck::Fresh);
        }
        assert_eq!(t.check("a", 1, b"y", 1, b"R"), NcCheck::Replay);
        assert_eq!(t.check("d", 1, b"x", 1, b"R"), NcCheck::Fresh); // evicts "a"
        assert_eq!(t.len(), 3);
        // "a" forgotten: documented gap, accepted as fresh (evicts "b").
        assert_eq!(t.check("a", 1, b"y", 1, b"R"), NcCheck::Fresh);
        assert_eq!(t.check("c", 1, b"z", 1, b"R"), NcCheck::Replay);
        assert_eq!(t.check("b", 1, b"z", 1, b"R"), NcCheck::Fresh);
        assert_eq!(t.len(), 3);
        for i in 0..1000u32 {
            t.check(&format!("k{i}"), 1, b"x", i, b"R");
            assert!(t.len() <= 3);
        }
        assert_eq!(NcTracker::new(0).max_entries(), 1);
    }

    #[test]
    fn updates_of_known_nonce_do_not_evict() {
        let mut t = NcTracker::new(2);
        t.check("a", 1, b"x", 1, b"R");
        t.check("b", 1, b"x", 1, b"R");
        for nc in 2..100 {
            assert_eq!(t.check("a", nc, b"x", nc, b"R"), NcCheck::Fresh);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.check("b", 1, b"x", 1, b"R"), NcCheck::Retransmission);
    }

    #[test]
    fn an_evicted_nonce_is_forgotten_not_fresh() {
        let mut t = NcTracker::new(2);
        let at = |t: &mut NcTracker, n: &str, exp: u64, nc: u32, cid: &[u8]| {
            t.check_at(n, Some(exp), nc, cid, 1, b"R")
        };
        assert_eq!(at(&mut t, "a", 100, 1, b"x"), NcCheck::Fresh);
        assert_eq!(at(&mut t, "b", 101, 1, b"x"), NcCheck::Fresh);
        assert_eq!(at(&mut t, "c", 102, 1, b"x"), NcCheck::Fresh); // evicts "a"
                                                                   // a replay of "a" is not accepted as new
        assert_eq!(at(&mut t, "a", 100, 1, b"y"), NcCheck::Forgotten);
        // nor any unseen nonce as old as the evicted one
        assert_eq!(at(&mut t, "z", 99, 1, b"y"), NcCheck::Forgotten);
        // newer nonces are fresh
        assert_eq!(at(&mut t, "d", 103, 1, b"x"), NcCheck::Fresh);
        // known ones keep their rules
        assert_eq!(at(&mut t, "d", 103, 1, b"q"), NcCheck::Replay);
        assert_eq!(at(&mut t, "d", 103, 2, b"q"), NcCheck::Fresh);
    }
}
