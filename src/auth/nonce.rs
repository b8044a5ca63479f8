//! Stateless, tamper-proof nonces.
//!
//! A nonce is `base64url(version ‖ expires_unix_s ‖ unique ‖ tag)` without
//! padding ([`NONCE_LEN`] characters of `[A-Za-z0-9_-]`, safe in a
//! quoted-string and in a token):
//!
//! ```text
//! version        1 byte  (1)
//! expires_unix_s 8 bytes big-endian: the instant the nonce turns stale
//! unique         8 bytes: makes nonces issued in the same second distinct
//! tag           16 bytes: HMAC-SHA256(secret, label ‖ version ‖ expires ‖
//!                         unique ‖ realm), truncated to 128 bits
//! ```
//!
//! Any shard (or process) holding the same secret accepts the nonce: nothing
//! shard-specific is *checked*. `unique` only keeps nonces distinct so that
//! nonce-count tracking ([`super::NcTracker`]) never confuses two clients;
//! [`NonceGen`] fills it from a per-shard counter. The realm is bound into the
//! tag, so a nonce issued for one realm is refused for another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const LABEL: &[u8] = b"sipshard-nonce-v1";
const RAW_LEN: usize = 1 + 8 + 8 + 16;
const TAG_LEN: usize = 16;

/// Length in characters of every nonce [`NonceKey::make`] produces.
pub const NONCE_LEN: usize = 44;

/// Verdict on a received nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Made by us for this realm and not expired.
    Valid,
    /// Made by us but expired, or dated too far in the future (clock moved
    /// back): re-challenge with `stale=true` ([`super::AuthCode::NonceExpired`]).
    Stale,
    /// Garbage, tampered, another secret or another realm
    /// ([`super::AuthCode::GenericError`]).
    Invalid,
}

/// The nonce secret plus its lifetime policy. Cheap to clone; every shard
/// holds a copy.
#[derive(Clone)]
pub struct NonceKey {
    mac: HmacSha256,
    expire_s: u64,
    max_drift_s: u64,
}

impl NonceKey {
    /// Kamailio `nonce_expire` default.
    pub const DEFAULT_EXPIRE_S: u64 = 300;
    /// Kamailio `nonce_auth_max_drift` default.
    pub const DEFAULT_MAX_DRIFT_S: u64 = 3;

    pub fn new(secret: [u8; 32]) -> NonceKey {
        NonceKey {
            // HMAC accepts keys of any length; 32 bytes cannot fail.
            mac: <HmacSha256 as Mac>::new_from_slice(&secret).unwrap_or_else(|_| unreachable!()),
            expire_s: Self::DEFAULT_EXPIRE_S,
            max_drift_s: Self::DEFAULT_MAX_DRIFT_S,
        }
    }

    /// A key from a configured passphrase (SHA-256 of it).
    pub fn from_passphrase(passphrase: &str) -> NonceKey {
        NonceKey::new(Sha256::digest(passphrase.as_bytes()).into())
    }

    /// Nonce lifetime (Kamailio `nonce_expire`).
    pub fn with_expire_s(mut self, expire_s: u64) -> NonceKey {
        self.expire_s = expire_s;
        self
    }

    /// How far in the future a nonce's creation time may lie before it is
    /// treated as stale (Kamailio `nonce_auth_max_drift`).
    pub fn with_max_drift_s(mut self, max_drift_s: u64) -> NonceKey {
        self.max_drift_s = max_drift_s;
        self
    }

    pub fn expire_s(&self) -> u64 {
        self.expire_s
    }

    fn tag(&self, head: &[u8; RAW_LEN - TAG_LEN], realm: &str) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(LABEL);
        m.update(head);
        m.update(realm.as_bytes());
        m
    }

    /// A fresh nonce for `realm`, valid until `now_unix_s + expire_s`.
    /// `unique` should differ between calls within one second (see [`NonceGen`]).
    pub fn make(&self, now_unix_s: u64, realm: &str, unique: u64) -> String {
        let expires = now_unix_s.saturating_add(self.expire_s);
        let mut head = [0u8; RAW_LEN - TAG_LEN];
        head[0] = VERSION;
        head[1..9].copy_from_slice(&expires.to_be_bytes());
        head[9..17].copy_from_slice(&unique.to_be_bytes());
        let tag = self.tag(&head, realm).finalize().into_bytes();
        let mut raw = [0u8; RAW_LEN];
        raw[..head.len()].copy_from_slice(&head);
        raw[head.len()..].copy_from_slice(&tag[..TAG_LEN]);
        let s = URL_SAFE_NO_PAD.encode(raw);
        debug_assert_eq!(s.len(), NONCE_LEN);
        s
    }

    /// Checks a nonce received in credentials for `realm`. The tag comparison
    /// is constant-time.
    pub fn check(&self, nonce: &str, realm: &str, now_unix_s: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return NonceCheck::Invalid,
        }
        let mut head = [0u8; RAW_LEN - TAG_LEN];
        head.copy_from_slice(&raw[..RAW_LEN - TAG_LEN]);
        if head[0] != VERSION {
            return NonceCheck::Invalid;
        }
        if self
            .tag(&head, realm)
            .verify_truncated_left(&raw[RAW_LEN - TAG_LEN..])
            .is_err()
        {
            return NonceCheck::Invalid;
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&head[1..9]);
        let expires = u64::from_be_bytes(exp);
        if now_unix_s >= expires {
            return NonceCheck::Stale;
        }
        // Created (expires - expire_s) more than max_drift_s in the future.
        let latest_ok = now_unix_s
            .saturating_add(self.expire_s)
            .saturating_add(self.max_drift_s);
        if expires > latest_ok {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }
}

/// The expiry (Unix s) written in a nonce, without checking its tag: call
/// it only for a nonce [`NonceKey::check`] found valid.
pub fn nonce_expires_unix_s(nonce: &str) -> Option<u64> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; RAW_LEN];
    match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
        Ok(RAW_LEN) => {}
        _ => return None,
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(raw.get(1..9)?);
    Some(u64::from_be_bytes(exp))
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("NonceKey")
            .field("expire_s", &self.expire_s)
            .field("max_drift_s", &self.max_drift_s)
            .finish_non_exhaustive()
    }
}

/// Per-shard source of the `unique` field: the shard id in the top 16 bits,
/// a wrapping counter below. Seed the counter differently per process start
/// (e.g. from the boot time or `getrandom`) so restarts within the nonce
/// lifetime do not repeat values.
#[derive(Clone, Debug)]
pub struct NonceGen {
    shard_tag: u64,
    counter: u64,
}

impl NonceGen {
    pub fn new(shard_id: u16, seed: u64) -> NonceGen {
        NonceGen {
            shard_tag: u64::from(shard_id) << 48,
            counter: seed,
        }
    }

    pub fn next_unique(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        self.shard_tag | (self.counter & 0x0000_ffff_ffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn key() -> NonceKey {
        NonceKey::new([7u8; 32])
    }

    #[test]
    fn make_then_check() {
        let k = key();
        let n = k.make(NOW, "example.com", 42);
        assert_eq!(n.len(), NONCE_LEN);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{n}"
        );
        let table = [
            (NOW, NonceCheck::Valid),
            (NOW + 299, NonceCheck::Valid),
            (NOW + 300, NonceCheck::Stale),
            (NOW + 1_000_000, NonceCheck::Stale),
            // clock moved back within the drift
            (NOW - 3, NonceCheck::Valid),
            // clock moved back beyond it
            (NOW - 4, NonceCheck::Stale),
            (0, NonceCheck::Stale),
        ];
        for (now, want) in table {
            assert_eq!(k.check(&n, "example.com", now), want, "now={now}");
        }
    }

    #[test]
    fn other_shard_same_secret_accepts() {
        let a = NonceKey::new([9u8; 32]);
        let b = NonceKey::new([9u8; 32]);
        let mut gen = NonceGen::new(3, 0);
        let n = a.make(NOW, "r", gen.next_unique());
        assert_eq!(b.check(&n, "r", NOW + 1), NonceCheck::Valid);
        let p1 = NonceKey::from_passphrase("s3cret");
        let p2 = NonceKey::from_passphrase("s3cret");
        assert_eq!(p2.check(&p1.make(NOW, "r", 1), "r", NOW), NonceCheck::Valid);
        assert_eq!(
            NonceKey::from_passphrase("other").check(&p1.make(NOW, "r", 1), "r", NOW),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn tampering_is_invalid() {
        let k = key();
        let n = k.make(NOW, "example.com", 1);
        assert_eq!(k.check(&n, "other.com", NOW), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::new([8u8; 32]).check(&n, "example.com", NOW),
            NonceCheck::Invalid
        );
        // Flip every character to another alphabet member.
        for i in 0..n.len() {
            let mut b = n.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).expect("ascii");
            // The last char carries 2 padding bits: some flips decode to the
            // same bytes (non-canonical) or are rejected; never Valid unless
            // the decoded bytes are identical.
            let same = URL_SAFE_NO_PAD.decode(&t).ok() == URL_SAFE_NO_PAD.decode(&n).ok();
            if !same {
                assert_eq!(
                    k.check(&t, "example.com", NOW),
                    NonceCheck::Invalid,
                    "pos {i}"
                );
            }
        }
        // Extend the expiry: the tag no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&n).expect("b64");
        raw[8] ^= 0x01;
        assert_eq!(
            k.check(&URL_SAFE_NO_PAD.encode(&raw), "example.com", NOW),
            NonceCheck::Invalid
        );
        // Wrong version with a correct tag is still refused.
        raw[8] ^= 0x01;
        raw[0] = 2;
        assert_eq!(
            k.check(&URL_SAFE_NO_PAD.encode(&raw), "example.com", NOW),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let k = key();
        let long = "A".repeat(NONCE_LEN);
        let bad = [
            "",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            long.as_str(),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "ééééééééééééééééééééééé",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ];
        for n in bad {
            assert_eq!(k.check(n, "r", NOW), NonceCheck::Invalid, "{n:?}");
        }
    }

    #[test]
    fn random_nonces_are_invalid() {
        let k = key();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=";
        let mut x: u64 = 42;
        for _ in 0..5_000 {
            let n: String = (0..NONCE_LEN)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(x >> 33) as usize % alphabet.len()] as char
                })
                .collect();
            assert_eq!(k.check(&n, "r", NOW), NonceCheck::Invalid, "{n}");
        }
    }

    #[test]
    fn unique_makes_distinct_nonces() {
        let k = key();
        let mut g = NonceGen::new(1, 0);
        let a = k.make(NOW, "r", g.next_unique());
        let b = k.make(NOW, "r", g.next_unique());
        assert_ne!(a, b);
        let mut other_shard = NonceGen::new(2, 0);
        assert_ne!(
            k.make(NOW, "r", other_shard.next_unique()),
            k.make(NOW, "r", NonceGen::new(1, 0).next_unique())
        );
    }

    #[test]
    fn custom_lifetime_and_saturation() {
        let k = key().with_expire_s(10).with_max_drift_s(0);
        assert_eq!(k.expire_s(), 10);
        let n = k.make(NOW, "r", 0);
        assert_eq!(k.check(&n, "r", NOW + 9), NonceCheck::Valid);
        assert_eq!(k.check(&n, "r", NOW + 10), NonceCheck::Stale);
        assert_eq!(k.check(&n, "r", NOW - 1), NonceCheck::Stale);
        let far = k.make(u64::MAX, "r", 0);
        assert_eq!(k.check(&far, "r", u64::MAX), NonceCheck::Stale);
        assert!(!format!("{k:?}").contains('7'));
    }
}
