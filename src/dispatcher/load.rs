//! Call load (algorithm 10): dispatcher's own call table keyed by Call-ID,
//! as Kamailio's `ds_hash_size` table: a call selected with alg 10 counts
//! on its destination (`duid` attribute) until `ds_load_update()` sees its
//! BYE or CANCEL, `ds_load_unset()` removes it, or it expires
//! (`ds_hash_initexpire` before the 2xx confirmed it, `ds_hash_expire`
//! after). Bounded: at most `max_calls`; beyond, a call is not tracked
//! (counted).

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Call {
    setid: i32,
    duid: Arc<str>,
    confirmed: bool,
    expires_s: u64,
}

/// Loads per (set, duid) and the calls that make them.
#[derive(Debug)]
pub struct CallLoad {
    calls: HashMap<Box<[u8]>, Call>,
    loads: HashMap<(i32, Arc<str>), u32>,
    max_calls: usize,
    init_expire_s: u64,
    expire_s: u64,
    /// Calls not tracked because the table was full.
    pub refused: u64,
}

impl CallLoad {
    pub fn new(max_calls: usize, init_expire_s: u64, expire_s: u64) -> CallLoad {
        CallLoad {
            calls: HashMap::new(),
            loads: HashMap::new(),
            max_calls,
            init_expire_s,
            expire_s,
            refused: 0,
        }
    }

    pub fn load(&self, setid: i32, duid: &str) -> u32 {
        self.loads
            .get(&(setid, Arc::from(duid)))
            .copied()
            .unwrap_or(0)
    }

    /// Active calls of each duid of `setid`, via `f(duid) -> load`.
    pub fn loads_of(&self, setid: i32) -> impl Fn(&str) -> u32 + '_ {
        move |duid| {
            self.loads
                .iter()
                .find(|((s, d), _)| *s == setid && &**d == duid)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        }
    }

    /// A new call on `duid`; a Call-ID already tracked moves to the new
    /// destination (a re-selection in a failure route). False when full.
    pub fn add(&mut self, callid: &[u8], setid: i32, duid: &str, now_s: u64) -> bool {
        if let Some(old) = self.calls.remove(callid) {
            self.dec(old.setid, &old.duid);
        } else if self.calls.len() >= self.max_calls {
            self.refused += 1;
            return false;
        }
        let duid: Arc<str> = Arc::from(duid);
        *self.loads.entry((setid, duid.clone())).or_insert(0) += 1;
        self.calls.insert(
            callid.into(),
            Call {
                setid,
                duid,
                confirmed: false,
                expires_s: now_s + self.init_expire_s,
            },
        );
        true
    }

    /// The 2xx of the INVITE: the call now expires after `ds_hash_expire`.
    pub fn confirm(&mut self, callid: &[u8], now_s: u64) -> bool {
        match self.calls.get_mut(callid) {
            Some(c) => {
                c.confirmed = true;
                c.expires_s = now_s + self.expire_s;
                true
            }
            None => false,
        }
    }

    /// The call ended (BYE, CANCEL, `ds_load_unset`).
    pub fn remove(&mut self, callid: &[u8]) -> bool {
        match self.calls.remove(callid) {
            Some(c) => {
                self.dec(c.setid, &c.duid);
                true
            }
            None => false,
        }
    }

    fn dec(&mut self, setid: i32, duid: &Arc<str>) {
        let key = (setid, duid.clone());
        if let Some(n) = self.loads.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.loads.remove(&key);
            }
        }
    }

    /// Drops expired calls; returns how many.
    pub fn sweep(&mut self, now_s: u64) -> usize {
        let gone: Vec<Box<[u8]>> = self
            .calls
            .iter()
            .filter(|(_, c)| c.expires_s <= now_s)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone.len()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn is_confirmed(&self, callid: &[u8]) -> Option<bool> {
        self.calls.get(callid).map(|c| c.confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_per_duid_and_expires_them() {
        let mut t = CallLoad::new(3, 10, 100);
        assert!(t.add(b"c1", 1, "a", 0));
        assert!(t.add(b"c2", 1, "a", 0));
        assert!(t.add(b"c3", 1, "b", 0));
        assert_eq!((t.load(1, "a"), t.load(1, "b"), t.load(2, "a")), (2, 1, 0));
        assert!(!t.add(b"c4", 1, "b", 0), "bounded");
        assert_eq!(t.refused, 1);
        // Re-selection moves the call.
        assert!(t.add(b"c2", 1, "b", 0));
        assert_eq!((t.load(1, "a"), t.load(1, "b")), (1, 2));
        assert_eq!(t.loads_of(1)("b"), 2);
        assert!(t.confirm(b"c1", 5));
        assert_eq!(t.is_confirmed(b"c1"), Some(true));
        // Unconfirmed calls go after 10 s, confirmed after 100.
        assert_eq!(t.sweep(10), 2);
        assert_eq!((t.load(1, "a"), t.load(1, "b")), (1, 0));
        assert!(t.remove(b"c1"));
        assert!(!t.remove(b"c1"));
        assert!(t.is_empty());
    }
}
