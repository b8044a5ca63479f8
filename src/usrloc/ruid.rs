//! Record unique ids (`ruid`) without OS randomness: a prefix made of the
//! process epoch and the shard id, then a per-shard counter. Unique across
//! shards (different shard id) and restarts (different epoch, given restarts
//! at least a second apart), like Kamailio's `uloc-<time>-<pid>-<counter>`.

/// Per-shard ruid generator.
#[derive(Clone, Debug)]
pub struct RuidGen {
    prefix: String,
    counter: u64,
}

impl RuidGen {
    /// `epoch_unix_s` is the process start time (read once by the caller).
    pub fn new(shard_id: u16, epoch_unix_s: u64) -> RuidGen {
        RuidGen {
            prefix: format!("uloc-{epoch_unix_s:x}-{shard_id:x}-"),
            counter: 0,
        }
    }

    /// The next id, at most 40 bytes (fits the 64-char `ruid` column).
    pub fn next_ruid(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        let s = format!("{}{:x}", self.prefix, self.counter);
        debug_assert!(s.len() <= 64);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_per_shard_and_epoch() {
        let mut a = RuidGen::new(0, 1_700_000_000);
        let mut b = RuidGen::new(1, 1_700_000_000);
        let mut c = RuidGen::new(0, 1_700_000_001);
        assert_eq!(a.next_ruid(), "uloc-6553f100-0-1");
        assert_eq!(a.next_ruid(), "uloc-6553f100-0-2");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next_ruid()));
            assert!(seen.insert(b.next_ruid()));
            assert!(seen.insert(c.next_ruid()));
        }
        let mut max = RuidGen::new(u16::MAX, u64::MAX);
        max.counter = u64::MAX - 1;
        assert!(max.next_ruid().len() <= 64);
    }
}
