//! Keys to partitions: the one FNV-1a hash the server uses to spread keyed
//! state (AORs, nonces, user names, Call-IDs) over lock stripes and shards,
//! and [`Striped`], the lock-striped container that lets every shard use a
//! table without a hop to another core.
//!
//! Never: hold a stripe's lock across an await or an I/O call. Stripes are
//! locked for the length of one table operation (a save, a lookup, a
//! nonce-count check): on two cores two shards rarely meet on one stripe, and
//! when they do the wait is that one operation.

#![forbid(unsafe_code)]

use std::sync::{Mutex, MutexGuard};

/// FNV-1a 64 of the ASCII-lower-cased key (SIP user parts and hosts compare
/// case-insensitively where sipshard uses them as keys).
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    hash_parts(&[key])
}

/// [`hash_key`] of the concatenation of `parts`, without building it.
#[inline]
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b.to_ascii_lowercase() as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The partition (`0..n`) of the concatenation of `parts`.
#[inline]
pub fn index_parts(parts: &[&[u8]], n: usize) -> usize {
    debug_assert!(n > 0);
    (hash_parts(parts) % n.max(1) as u64) as usize
}

/// The partition (`0..n`) a key belongs to.
#[inline]
pub fn index(key: &[u8], n: usize) -> usize {
    debug_assert!(n > 0);
    (hash_key(key) % n.max(1) as u64) as usize
}

/// `n` independently locked parts of one table, chosen by key.
pub struct Striped<T> {
    parts: Box<[Mutex<T>]>,
}

impl<T> Striped<T> {
    /// `n` parts (at least one), each built by `make(part_index)`.
    pub fn new(n: usize, mut make: impl FnMut(usize) -> T) -> Striped<T> {
        Striped {
            parts: (0..n.max(1)).map(|i| Mutex::new(make(i))).collect(),
        }
    }

    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The part that owns `key`, locked.
    #[inline]
    pub fn get(&self, key: &[u8]) -> MutexGuard<'_, T> {
        self.at(index(key, self.parts.len()))
    }

    /// Part `i`, locked. A part whose holder panicked stays usable: every
    /// table operation leaves its part consistent before it can panic, and a
    /// shard must not die because another one did.
    #[inline]
    pub fn at(&self, i: usize) -> MutexGuard<'_, T> {
        debug_assert!(i < self.parts.len());
        let part = &self.parts[i % self.parts.len()];
        part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds over every part, locking one at a time.
    pub fn fold<A>(&self, init: A, mut f: impl FnMut(A, &T) -> A) -> A {
        let mut acc = init;
        for i in 0..self.parts.len() {
            acc = f(acc, &self.at(i));
        }
        acc
    }

    /// The parts a shard looks after in periodic work (expiry, write-back):
    /// every `shards`-th part starting at `shard`, so each part has one
    /// caretaker and the work is spread over the shards.
    pub fn parts_of(&self, shard: usize, shards: usize) -> impl Iterator<Item = usize> {
        (shard..self.parts.len()).step_by(shards.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_stable_case_insensitive_and_spread() {
        assert_eq!(
            index(b"alice@example.com", 2),
            index(b"ALICE@Example.com", 2)
        );
        assert_eq!(index(b"x", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[index(format!("user{i}@d").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
    }

    #[test]
    fn striped_parts_are_independent_and_cover_all() {
        let s = Striped::new(8, |i| vec![i]);
        assert_eq!(s.parts(), 8);
        s.get(b"k").push(99);
        let i = index(b"k", 8);
        assert_eq!(*s.at(i), vec![i, 99]);
        let total = s.fold(0, |a, v| a + v.len());
        assert_eq!(total, 9);
        let mut all: Vec<usize> = (0..3).flat_map(|sh| s.parts_of(sh, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_poisoned_part_stays_usable() {
        let s = std::sync::Arc::new(Striped::new(1, |_| 0u32));
        let s2 = s.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.at(0);
            panic!("holder dies");
        })
        .join();
        *s.at(0) += 1;
        assert_eq!(*s.at(0), 1);
    }
}
