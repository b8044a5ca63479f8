//! Per-shard credential cache: `(username, domain)` → credentials, or a
//! cached "no such user" (negative entry, shorter TTL), so a burst of
//! REGISTERs does not become a burst of database queries.
//!
//! Bounded by `max_entries` with CLOCK (second-chance) eviction: each entry has
//! a reference bit set on hit; the hand clears bits and evicts the first
//! unreferenced or expired entry. Expiry is checked on read with `now` passed
//! in; there is no timer. Lookups by `&str` do not allocate.

use std::collections::HashMap;

#[derive(Debug)]
struct Slot<V> {
    username: Box<str>,
    domain: Box<str>,
    value: Option<V>,
    expires_unix_s: u64,
    referenced: bool,
}

/// Bounded TTL cache of credentials `V` (e.g. HA1 / password rows).
#[derive(Debug)]
pub struct CredCache<V> {
    max_entries: usize,
    ttl_s: u64,
    negative_ttl_s: u64,
    slots: Vec<Option<Slot<V>>>,
    free: Vec<usize>,
    /// domain → username → slot index.
    index: HashMap<Box<str>, HashMap<Box<str>, usize>>,
    len: usize,
    hand: usize,
}

impl<V> CredCache<V> {
    /// `max_entries == 0` disables caching (every lookup misses).
    pub fn new(max_entries: usize, ttl_s: u64, negative_ttl_s: u64) -> CredCache<V> {
        CredCache {
            max_entries,
            ttl_s,
            negative_ttl_s,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            len: 0,
            hand: 0,
        }
    }

    fn find(&self, username: &str, domain: &str) -> Option<usize> {
        self.index.get(domain)?.get(username).copied()
    }

    /// `None`: miss (ask the database). `Some(None)`: cached "user not found".
    /// `Some(Some(v))`: cached credentials.
    pub fn lookup(&mut self, username: &str, domain: &str, now_unix_s: u64) -> Option<Option<&V>> {
        let idx = self.find(username, domain)?;
        let expired = match &self.slots[idx] {
            Some(s) => now_unix_s >= s.expires_unix_s,
            None => true,
        };
        if expired {
            self.remove_slot(idx);
            return None;
        }
        let slot = self.slots[idx].as_mut()?;
        slot.referenced = true;
        Some(slot.value.as_ref())
    }

    /// Caches a database answer: `Some(credentials)` for `ttl_s`, `None`
    /// ("no such user") for `negative_ttl_s`. Replaces any existing entry.
    pub fn insert(&mut self, username: &str, domain: &str, value: Option<V>, now_unix_s: u64) {
        if self.max_entries == 0 {
            return;
        }
        let ttl = if value.is_some() {
            self.ttl_s
        } else {
            self.negative_ttl_s
        };
        if ttl == 0 {
            self.invalidate(username, domain);
            return;
        }
        let expires_unix_s = now_unix_s.saturating_add(ttl);
        if let Some(idx) = self.find(username, domain) {
            if let Some(s) = self.slots[idx].as_mut() {
                s.value = value;
                s.expires_unix_s = expires_unix_s;
                s.referenced = false;
                return;
            }
        }
        if self.len >= self.max_entries {
            self.evict_one(now_unix_s);
        }
        let slot = Slot {
            username: username.into(),
            domain: domain.into(),
            value,
            expires_unix_s,
            referenced: false,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index
            .entry(domain.into())
            .or_default()
            .insert(username.into(), idx);
        self.len += 1;
        debug_assert!(self.len <= self.max_entries);
    }

    /// Drops one entry (e.g. after a password change via RPC). Returns
    /// whether it was cached.
    pub fn invalidate(&mut self, username: &str, domain: &str) -> bool {
        match self.find(username, domain) {
            Some(idx) => {
                self.remove_slot(idx);
                true
            }
            None => false,
        }
    }

    /// Drops every entry of a domain.
    pub fn invalidate_domain(&mut self, domain: &str) -> usize {
        let idxs: Vec<usize> = self
            .index
            .get(domain)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        for &i in &idxs {
            self.remove_slot(i);
        }
        idxs.len()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.index.clear();
        self.len = 0;
        self.hand = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn remove_slot(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) else {
            return;
        };
        if let Some(users) = self.index.get_mut(&*slot.domain) {
            users.remove(&*slot.username);
            if users.is_empty() {
                self.index.remove(&*slot.domain);
            }
        }
        self.free.push(idx);
        self.len -= 1;
    }

    /// CLOCK: at most two sweeps (the first clears every reference bit).
    fn evict_one(&mut self, now_unix_s: u64) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        for _ in 0..2 * n + 1 {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let Some(s) = self.slots[i].as_mut() else {
                continue;
            };
            if s.referenced && now_unix_s < s.expires_unix_s {
                s.referenced = false;
                continue;
            }
            self.remove_slot(i);
            return;
        }
        debug_assert!(false, "CLOCK found no victim in a full cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    #[test]
    fn ttl_positive_and_negative() {
        let mut c: CredCache<&str> = CredCache::new(10, 60, 5);
        assert_eq!(c.lookup("alice", "d", T0), None);
        c.insert("alice", "d", Some("ha1"), T0);
        c.insert("mallory", "d", None, T0);
        let table = [
            ("alice", T0, Some(Some("ha1"))),
            ("alice", T0 + 59, Some(Some("ha1"))),
            ("mallory", T0 + 4, Some(None)),
            ("mallory", T0 + 5, None),
            ("alice", T0 + 60, None),
            ("bob", T0, None),
        ];
        for (user, now, want) in table {
            assert_eq!(
                c.lookup(user, "d", now).map(|v| v.copied()),
                want,
                "{user}@{now}"
            );
        }
        assert!(c.is_empty());
    }

    #[test]
    fn keys_include_domain_and_case() {
        let mut c: CredCache<u32> = CredCache::new(10, 60, 5);
        c.insert("alice", "a.com", Some(1), T0);
        c.insert("alice", "b.com", Some(2), T0);
        c.insert("Alice", "a.com", Some(3), T0);
        assert_eq!(c.lookup("alice", "a.com", T0), Some(Some(&1)));
        assert_eq!(c.lookup("alice", "b.com", T0), Some(Some(&2)));
        assert_eq!(c.lookup("Alice", "a.com", T0), Some(Some(&3)));
        assert_eq!(c.lookup("alice", "", T0), None);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn replace_and_invalidate() {
        let mut c: CredCache<u32> = CredCache::new(10, 60, 5);
        c.insert("u", "d", None, T0);
        c.insert("u", "d", Some(7), T0 + 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup("u", "d", T0 + 30), Some(Some(&7)));
        assert!(c.invalidate("u", "d"));
        assert!(!c.invalidate("u", "d"));
        assert_eq!(c.lookup("u", "d", T0 + 30), None);
        c.insert("a", "x", Some(1), T0);
        c.insert("b", "x", Some(2), T0);
        c.insert("c", "y", Some(3), T0);
        assert_eq!(c.invalidate_domain("x"), 2);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.lookup("c", "y", T0), None);
    }

    #[test]
    fn clock_eviction_keeps_referenced() {
        let mut c: CredCache<u32> = CredCache::new(3, 60, 5);
        c.insert("a", "d", Some(1), T0);
        c.insert("b", "d", Some(2), T0);
        c.insert("c", "d", Some(3), T0);
        // a and c are hot
        assert!(c.lookup("a", "d", T0).is_some());
        assert!(c.lookup("c", "d", T0).is_some());
        c.insert("x", "d", Some(4), T0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup("b", "d", T0), None, "b was the cold entry");
        assert!(c.lookup("a", "d", T0).is_some());
        assert!(c.lookup("c", "d", T0).is_some());
        assert!(c.lookup("x", "d", T0).is_some());
        // everything referenced: still evicts exactly one
        c.insert("y", "d", Some(5), T0);
        assert_eq!(c.len(), 3);
        assert!(c.lookup("y", "d", T0).is_some());
    }

    #[test]
    fn expired_entries_evicted_first_and_bounded() {
        let mut c: CredCache<u32> = CredCache::new(2, 10, 1);
        c.insert("neg", "d", None, T0);
        c.insert("pos", "d", Some(1), T0);
        assert!(c.lookup("pos", "d", T0).is_some());
        c.insert("new", "d", Some(2), T0 + 2); // neg expired: it goes
        assert_eq!(c.lookup("pos", "d", T0 + 2), Some(Some(&1)));
        assert_eq!(c.lookup("new", "d", T0 + 2), Some(Some(&2)));
        for i in 0..500u32 {
            c.insert(&format!("u{i}"), "d", Some(i), T0 + 3);
            assert!(c.len() <= 2);
        }
    }

    #[test]
    fn zero_sizes() {
        let mut c: CredCache<u32> = CredCache::new(0, 60, 5);
        c.insert("a", "d", Some(1), T0);
        assert_eq!(c.lookup("a", "d", T0), None);
        assert_eq!(c.max_entries(), 0);
        let mut c: CredCache<u32> = CredCache::new(4, 60, 0);
        c.insert("a", "d", None, T0);
        assert_eq!(c.lookup("a", "d", T0), None, "negative caching off");
        c.insert("a", "d", Some(1), T0);
        c.insert("a", "d", None, T0);
        assert_eq!(
            c.lookup("a", "d", T0),
            None,
            "negative with ttl 0 drops the old entry"
        );
    }
}
