//! The location table: AOR → [`Record`], its limits and parameters, and every
//! operation but `save` (which lives in `save.rs`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use super::contact::{sort_bindings, Binding, Record, Ucontact};
use super::ruid::RuidGen;
use super::LookupCode;

/// usrloc `matching_mode`: how a Contact of a REGISTER finds its binding.
/// A contact with `+sip.instance` is always matched by instance and reg-id
/// first (RFC 5626 §6, RFC 5627).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatchingMode {
    /// `0`: contact URI (RFC 3261).
    #[default]
    Contact,
    /// `1`: contact URI and Call-ID.
    ContactCallid,
    /// `2`: contact URI and Path (like `0` when there is no Path).
    ContactPath,
    /// `3`: Call-ID only.
    Callid,
}

/// registrar `min_expires_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinExpiresMode {
    /// `0` (Kamailio default): raise a too-short expires to `min_expires`.
    #[default]
    Clamp,
    /// `1`: reject with `423 Interval Too Brief` and `Min-Expires`.
    Reject,
}

/// registrar `path_mode` (used when `use_path` is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathMode {
    /// `0`: store Path, never echo it in the reply.
    Off,
    /// `1`: store Path, echo it when the UA sent `Supported: path`.
    Lazy,
    /// `2` (Kamailio default, RFC 3327): without `Supported: path`, reject
    /// with `420 Bad Extension` + `Unsupported: path`; else store and echo.
    #[default]
    Strict,
}

/// Table shape (usrloc parameters plus sipshard's bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationParams {
    /// Most AORs this shard keeps; a REGISTER for a new AOR beyond it gets 503.
    pub max_aors: usize,
    /// Hard bound of bindings per AOR, whatever `max_contacts` says.
    pub max_contacts_per_aor: usize,
    /// usrloc `use_domain` (default off): AOR is `user@domain`, else `user`.
    pub use_domain: bool,
    /// registrar `case_sensitive` (default off): AORs are lowercased.
    pub case_sensitive: bool,
    /// registrar `realm_prefix`: stripped from the domain when building AORs.
    pub realm_prefix: String,
    pub matching_mode: MatchingMode,
    /// usrloc `cseq_delay` (default 20 s): a REGISTER with the same Call-ID
    /// and CSeq as a binding, within this many seconds of the binding's last
    /// change, is a retransmission (answered, nothing changed); later it is
    /// an error. 0 disables the tolerance.
    pub cseq_delay_s: u32,
    /// Keep a dirty set for write-back (`db_mode` 2).
    pub track_dirty: bool,
    /// Bound of the dirty set; past it [`DirtyBatch::overflowed`] asks for a
    /// full resync.
    pub max_dirty: usize,
}

impl Default for LocationParams {
    fn default() -> Self {
        LocationParams {
            max_aors: 1_000_000,
            max_contacts_per_aor: 64,
            use_domain: false,
            case_sensitive: false,
            realm_prefix: String::new(),
            matching_mode: MatchingMode::Contact,
            cseq_delay_s: 20,
            track_dirty: false,
            max_dirty: 1_000_000,
        }
    }
}

/// registrar parameters used by `save` (names and defaults as Kamailio's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarParams {
    /// Used when neither the contact nor the request gives an expires (3600).
    pub default_expires_s: u32,
    /// 0 disables (Kamailio default 60).
    pub min_expires_s: u32,
    pub min_expires_mode: MinExpiresMode,
    /// Larger values are lowered to this; 0 disables (default 0).
    pub max_expires_s: u32,
    /// q for contacts without one; `None` = unspecified.
    pub default_q: Option<u16>,
    /// Most valid contacts per AOR; 0 disables (default 0). Exceeding it
    /// answers `503` and `save` returns `-2`.
    pub max_contacts: u32,
    /// Longest accepted contact URI (default 512); longer → 400.
    pub contact_max_size: usize,
    /// Store Path (default off).
    pub use_path: bool,
    pub path_mode: PathMode,
    /// Adds `Retry-After` to 5xx replies when > 0 (default 0).
    pub retry_after_s: u32,
}

impl Default for RegistrarParams {
    fn default() -> Self {
        RegistrarParams {
            default_expires_s: 3600,
            min_expires_s: 60,
            min_expires_mode: MinExpiresMode::Clamp,
            max_expires_s: 0,
            default_q: None,
            max_contacts: 0,
            contact_max_size: 512,
            use_path: false,
            path_mode: PathMode::Strict,
            retry_after_s: 0,
        }
    }
}

/// `registered()` match options (Kamailio `match_option` 1/2/4): every given
/// field must equal the binding's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisteredMatch<'a> {
    pub call_id: Option<&'a str>,
    pub received: Option<&'a str>,
    pub contact: Option<&'a str>,
}

/// What `unregister()` removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unregister<'a> {
    All,
    Ruid(&'a str),
    Contact(&'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnregisterError {
    #[error("empty address of record")]
    BadAor,
    #[error("contacts for AOR not found")]
    NotFound,
}

impl UnregisterError {
    /// Kamailio `unregister()` return code.
    pub const fn code(self) -> i32 {
        match self {
            UnregisterError::BadAor => super::codes::UNREGISTER_BAD_AOR,
            UnregisterError::NotFound => super::codes::UNREGISTER_NOT_FOUND,
        }
    }
}

/// A binding removed by [`Location::expire`] (for the
/// `usrloc:contact-expired` event and DB cleanup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub aor: String,
    pub contact: Ucontact,
}

/// Result of [`Location::load`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Rows already expired at load time (the caller may delete them).
    pub expired: usize,
    /// Rows dropped by the table limits or an empty AOR.
    pub rejected: usize,
}

/// Write-back work since the last [`Location::take_dirty`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBatch {
    /// Rows to insert or update, keyed by their ruid.
    pub upserts: Vec<(String, Ucontact)>,
    /// ruids to delete.
    pub deletes: Vec<String>,
    /// The dirty set hit `max_dirty` and dropped changes: rewrite the whole
    /// table from [`Location::dump`] instead.
    pub overflowed: bool,
}

/// Owned copies of bindings in lookup order ([`Location::lookup`]).
///
/// Derefs to `[Ucontact]`; `(&contacts).into_iter()` (what `for c in
/// &contacts` and `contacts.into_iter()` resolve to) yields `&Ucontact`.
/// [`Contacts::into_vec`] takes them out without copying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contacts(Vec<Ucontact>);

impl Contacts {
    pub fn into_vec(self) -> Vec<Ucontact> {
        self.0
    }
}

impl std::ops::Deref for Contacts {
    type Target = [Ucontact];
    fn deref(&self) -> &[Ucontact] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Contacts {
    type Item = &'a Ucontact;
    type IntoIter = std::slice::Iter<'a, Ucontact>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The per-shard location table.
///
/// Memory: one map entry per AOR (the AOR once, as the key, and a boxed
/// slice of exactly its bindings), one [`Binding`] per binding (72 bytes
/// plus one allocation holding its strings). The write-back dirty set is a
/// bit in each binding plus the set of AORs holding one, and the ruids
/// deleted since the last [`Location::take_dirty`].
#[derive(Debug)]
pub struct Location {
    pub(crate) params: LocationParams,
    pub(crate) registrar: RegistrarParams,
    pub(crate) records: HashMap<Box<str>, Box<[Binding]>>,
    pub(crate) ruids: RuidGen,
    /// AORs with at least one binding whose dirty bit is set.
    dirty_aors: HashSet<Box<str>>,
    /// ruids deleted since the last take (not memory-only).
    dirty_deletes: HashSet<Box<str>>,
    /// Dirty bits set plus `dirty_deletes.len()`, bounded by `max_dirty`.
    dirty_len: usize,
    dirty_overflowed: bool,
}

impl Location {
    pub fn new(params: LocationParams, registrar: RegistrarParams, ruids: RuidGen) -> Location {
        Location {
            params,
            registrar,
            records: HashMap::new(),
            ruids,
            dirty_aors: HashSet::new(),
            dirty_deletes: HashSet::new(),
            dirty_len: 0,
            dirty_overflowed: false,
        }
    }

    pub fn params(&self) -> &LocationParams {
        &self.params
    }

    pub fn registrar_params(&self) -> &RegistrarParams {
        &self.registrar
    }

    /// Runtime change of registrar parameters (Kamailio's cfg framework).
    pub fn set_registrar_params(&mut self, registrar: RegistrarParams) {
        self.registrar = registrar;
    }

    /// Builds the AOR key from a To / Request-URI's user and host:
    /// `user@domain` with `use_domain`, else `user`; `realm_prefix` stripped
    /// from the domain; lowercased unless `case_sensitive`.
    pub fn aor(&self, user: &str, domain: &str) -> String {
        let mut aor = if self.params.use_domain {
            let d = match domain.get(..self.params.realm_prefix.len()) {
                Some(p)
                    if !self.params.realm_prefix.is_empty()
                        && p.eq_ignore_ascii_case(&self.params.realm_prefix)
                        && domain.len() > p.len() =>
                {
                    &domain[p.len()..]
                }
                _ => domain,
            };
            format!("{user}@{d}")
        } else {
            user.to_string()
        };
        if !self.params.case_sensitive {
            aor.make_ascii_lowercase();
        }
        aor
    }

    /// The key an AOR given by a caller is stored under.
    pub(crate) fn key<'a>(&self, aor: &'a str) -> Cow<'a, str> {
        if self.params.case_sensitive || !aor.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Borrowed(aor)
        } else {
            Cow::Owned(aor.to_ascii_lowercase())
        }
    }

    /// The bindings of `aor`, expired ones included, in lookup order.
    pub fn bindings(&self, aor: &str) -> &[Binding] {
        self.records.get(&*self.key(aor)).map_or(&[], |b| &b[..])
    }

    /// Valid bindings of `aor` in lookup order (q descending, then most
    /// recent), or `None` when there are none.
    pub fn lookup(&self, aor: &str, now_unix_s: u64) -> Option<Contacts> {
        let v: Vec<Ucontact> = self
            .bindings(aor)
            .iter()
            .filter(|b| b.is_valid(now_unix_s))
            .map(Binding::to_contact)
            .collect();
        if v.is_empty() {
            None
        } else {
            Some(Contacts(v))
        }
    }

    /// `lookup()` with registrar `method_filtering`: `method_bit` = 0 turns
    /// filtering off; else only bindings whose `methods` include it are
    /// returned, and [`LookupCode::MethodNotSupported`] when bindings exist
    /// but none does.
    pub fn lookup_method(
        &self,
        aor: &str,
        now_unix_s: u64,
        method_bit: u32,
    ) -> (LookupCode, Contacts) {
        let valid = || {
            self.bindings(aor)
                .iter()
                .filter(move |b| b.is_valid(now_unix_s))
        };
        if valid().next().is_none() {
            return (LookupCode::NotFound, Contacts::default());
        }
        let v: Vec<Ucontact> = valid()
            .filter(|b| method_bit == 0 || b.methods & method_bit != 0)
            .map(Binding::to_contact)
            .collect();
        if v.is_empty() {
            (LookupCode::MethodNotSupported, Contacts(v))
        } else {
            (LookupCode::Found, Contacts(v))
        }
    }

    /// `registered()`: at least one valid binding.
    pub fn registered(&self, aor: &str, now_unix_s: u64) -> bool {
        self.registered_match(aor, now_unix_s, RegisteredMatch::default())
    }

    /// `registered()` with `match_option` filters.
    pub fn registered_match(&self, aor: &str, now_unix_s: u64, m: RegisteredMatch<'_>) -> bool {
        self.bindings(aor).iter().any(|c| {
            c.is_valid(now_unix_s)
                && m.call_id.is_none_or(|v| c.callid() == v)
                && m.received.is_none_or(|v| c.received() == Some(v))
                && m.contact.is_none_or(|v| c.contact() == v)
        })
    }

    /// A copy of the whole record, expired bindings included.
    pub fn record(&self, aor: &str) -> Option<Record> {
        let (key, b) = self.records.get_key_value(&*self.key(aor))?;
        Some(record_of(key, b))
    }

    /// `unregister()`: removes bindings; returns the removed ruids.
    pub fn unregister(
        &mut self,
        aor: &str,
        what: Unregister<'_>,
    ) -> Result<Vec<String>, UnregisterError> {
        if aor.is_empty() {
            return Err(UnregisterError::BadAor);
        }
        let key = self.key(aor);
        let Some(slot) = self.records.get_mut(&*key) else {
            return Err(UnregisterError::NotFound);
        };
        let hit = |c: &Binding| match what {
            Unregister::All => true,
            Unregister::Ruid(r) => c.ruid() == r,
            Unregister::Contact(u) => c.contact() == u,
        };
        if !slot.iter().any(hit) {
            return Err(UnregisterError::NotFound);
        }
        let (removed, kept): (Vec<Binding>, Vec<Binding>) =
            std::mem::take(slot).into_vec().into_iter().partition(hit);
        if kept.is_empty() {
            self.records.remove(&*key);
        } else {
            *slot = kept.into_boxed_slice();
        }
        for c in &removed {
            self.mark_deleted(c);
        }
        Ok(removed.iter().map(|c| c.ruid().to_string()).collect())
    }

    /// Removes every binding expired at `now` (the usrloc timer). Permanent
    /// bindings (`expires_unix_s == 0`) stay.
    pub fn expire(&mut self, now_unix_s: u64) -> Vec<Expired> {
        let mut gone: Vec<(String, Binding)> = Vec::new();
        self.records.retain(|aor, slot| {
            if slot.iter().all(|c| c.is_valid(now_unix_s)) {
                return true;
            }
            let (kept, removed): (Vec<Binding>, Vec<Binding>) = std::mem::take(slot)
                .into_vec()
                .into_iter()
                .partition(|c| c.is_valid(now_unix_s));
            gone.extend(removed.into_iter().map(|c| (aor.to_string(), c)));
            *slot = kept.into_boxed_slice();
            !slot.is_empty()
        });
        gone.into_iter()
            .map(|(aor, c)| {
                self.mark_deleted(&c);
                Expired {
                    aor,
                    contact: c.to_contact(),
                }
            })
            .collect()
    }

    /// A copy of every record, in no particular order (made as iterated).
    pub fn dump(&self) -> impl Iterator<Item = Record> + '_ {
        self.records.iter().map(|(aor, b)| record_of(aor, b))
    }

    /// Every AOR and its bindings, expired ones included, without copying.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Binding])> {
        self.records.iter().map(|(aor, b)| (&**aor, &b[..]))
    }

    /// AORs held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bindings held, expired ones included.
    pub fn contact_count(&self) -> usize {
        self.records.values().map(|r| r.len()).sum()
    }

    /// Restores rows `(aor, contact)` from the database at start. Expired rows
    /// and rows over the limits are skipped; a row whose ruid already exists
    /// in its AOR replaces it. Nothing is marked dirty.
    pub fn load<I>(&mut self, rows: I, now_unix_s: u64) -> LoadReport
    where
        I: IntoIterator<Item = (String, Ucontact)>,
    {
        let rows = rows.into_iter();
        // Grow once for a big load rather than doubling (and leaving the
        // old tables behind as free memory) along the way.
        let room = self.params.max_aors.saturating_sub(self.records.len());
        self.records.reserve(rows.size_hint().0.min(room));
        let mut rep = LoadReport::default();
        for (aor, c) in rows {
            if !c.is_valid(now_unix_s) {
                rep.expired += 1;
                continue;
            }
            let key = self.key(&aor);
            if key.is_empty() {
                rep.rejected += 1;
                continue;
            }
            let mut b = Binding::from_contact(&c);
            let Some(slot) = self.records.get_mut(&*key) else {
                if self.records.len() >= self.params.max_aors {
                    rep.rejected += 1;
                    continue;
                }
                self.records
                    .insert(key.into_owned().into_boxed_str(), Box::new([b]));
                rep.loaded += 1;
                continue;
            };
            if let Some(old) = slot.iter_mut().find(|o| o.ruid() == b.ruid()) {
                // Same row again: keep its write-back state.
                b.set_dirty(old.is_dirty());
                *old = b;
            } else if slot.len() >= self.params.max_contacts_per_aor {
                rep.rejected += 1;
                continue;
            } else {
                let mut v = std::mem::take(slot).into_vec();
                v.push(b);
                *slot = v.into_boxed_slice();
            }
            sort_bindings(slot);
            rep.loaded += 1;
        }
        rep
    }

    /// Drains the write-back dirty set.
    pub fn take_dirty(&mut self) -> DirtyBatch {
        let mut batch = DirtyBatch {
            overflowed: std::mem::take(&mut self.dirty_overflowed),
            ..Default::default()
        };
        for aor in self.dirty_aors.drain() {
            let Some(slot) = self.records.get_mut(&aor) else {
                continue;
            };
            for c in slot.iter_mut().filter(|c| c.is_dirty()) {
                c.set_dirty(false);
                batch.upserts.push((aor.to_string(), c.to_contact()));
            }
        }
        batch.deletes = self.dirty_deletes.drain().map(String::from).collect();
        self.dirty_len = 0;
        batch.upserts.sort_by(|a, b| a.1.ruid.cmp(&b.1.ruid));
        batch.deletes.sort();
        batch
    }

    /// Marks a binding about to be stored under `aor` as changed (to write
    /// back). Past `max_dirty` the change is dropped and the next batch says
    /// [`DirtyBatch::overflowed`].
    pub(crate) fn mark_upsert(&mut self, aor: &str, c: &mut Binding) {
        if !self.params.track_dirty || c.is_mem_only() || c.is_dirty() {
            return;
        }
        // Deleted and back (a reload): the row is written, not deleted.
        if !self.dirty_deletes.is_empty() && self.dirty_deletes.remove(c.ruid()) {
            self.dirty_len = self.dirty_len.saturating_sub(1);
        }
        if self.dirty_len >= self.params.max_dirty {
            self.dirty_overflowed = true;
            return;
        }
        c.set_dirty(true);
        self.dirty_len += 1;
        if !self.dirty_aors.contains(aor) {
            self.dirty_aors.insert(aor.into());
        }
    }

    /// Records the removal of a binding (to delete its row on write-back).
    pub(crate) fn mark_deleted(&mut self, c: &Binding) {
        if !self.params.track_dirty {
            return;
        }
        let was_dirty = c.is_dirty();
        if was_dirty {
            self.dirty_len = self.dirty_len.saturating_sub(1);
        }
        // A memory-only binding has no row, unless it had one to write.
        if (c.is_mem_only() && !was_dirty) || self.dirty_deletes.contains(c.ruid()) {
            return;
        }
        if self.dirty_len >= self.params.max_dirty {
            self.dirty_overflowed = true;
            return;
        }
        self.dirty_deletes.insert(c.ruid().into());
        self.dirty_len += 1;
    }

    /// The dirty bookkeeping adds up (tests).
    #[cfg(test)]
    pub(crate) fn check_dirty(&self) {
        let bits = self
            .records
            .values()
            .flat_map(|b| b.iter())
            .filter(|c| c.is_dirty())
            .count();
        assert_eq!(self.dirty_len, bits + self.dirty_deletes.len());
        for (aor, b) in &self.records {
            if b.iter().any(Binding::is_dirty) {
                assert!(self.dirty_aors.contains(aor), "{aor} dirty, not listed");
            }
        }
    }
}

fn record_of(aor: &str, b: &[Binding]) -> Record {
    Record {
        aor: aor.to_string(),
        contacts: b.iter().map(Binding::to_contact).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usrloc::contact::method_bits;

    fn uc(ruid: &str, uri: &str, expires: u64, q: Option<u16>, modified: u64) -> Ucontact {
        Ucontact {
            ruid: ruid.into(),
            contact: uri.into(),
            received: Some(format!("sip:{ruid}.rcv")),
            path: None,
            expires_unix_s: expires,
            q,
            callid: format!("cid-{ruid}"),
            cseq: 1,
            flags: 0,
            cflags: 0,
            user_agent: "ua".into(),
            socket: None,
            methods: method_bits::INVITE | method_bits::MESSAGE,
            instance: None,
            reg_id: 0,
            last_modified_unix_s: modified,
        }
    }

    fn loc(params: LocationParams) -> Location {
        Location::new(params, RegistrarParams::default(), RuidGen::new(0, 1))
    }

    fn loaded() -> Location {
        let mut l = loc(LocationParams {
            track_dirty: true,
            ..Default::default()
        });
        let rows = vec![
            (
                "alice".to_string(),
                uc("a1", "sip:a@1", 1000, Some(500), 10),
            ),
            (
                "alice".to_string(),
                uc("a2", "sip:a@2", 1000, Some(1000), 5),
            ),
            ("alice".to_string(), uc("a3", "sip:a@3", 200, Some(500), 20)),
            ("alice".to_string(), uc("a4", "sip:a@4", 0, None, 1)),
            ("Bob".to_string(), uc("b1", "sip:b@1", 300, None, 1)),
            ("carol".to_string(), uc("c1", "sip:c@1", 50, None, 1)),
        ];
        let rep = l.load(rows, 100);
        assert_eq!(
            rep,
            LoadReport {
                loaded: 5,
                expired: 1,
                rejected: 0
            }
        );
        l
    }

    #[test]
    fn aor_building() {
        let cases = [
            (false, false, "", "Alice", "Example.COM", "alice"),
            (true, false, "", "Alice", "Example.COM", "alice@example.com"),
            (true, true, "", "Alice", "Example.COM", "Alice@Example.COM"),
            (
                true,
                false,
                "sip.",
                "alice",
                "SIP.example.com",
                "alice@example.com",
            ),
            (true, false, "sip.", "alice", "sip.", "alice@sip."),
            (
                true,
                false,
                "sip.",
                "alice",
                "example.com",
                "alice@example.com",
            ),
            (false, false, "sip.", "alice", "sip.example.com", "alice"),
        ];
        for (use_domain, case_sensitive, prefix, user, domain, want) in cases {
            let l = loc(LocationParams {
                use_domain,
                case_sensitive,
                realm_prefix: prefix.into(),
                ..Default::default()
            });
            assert_eq!(l.aor(user, domain), want);
        }
    }

    #[test]
    fn lookup_order_and_expiry() {
        let l = loaded();
        let found = l.lookup("ALICE", 100).expect("found");
        let got: Vec<&str> = found.iter().map(|c| c.ruid.as_str()).collect();
        assert_eq!(got, ["a2", "a3", "a1", "a4"]);
        let found = l.lookup("alice", 200).expect("found");
        let got: Vec<&str> = found.iter().map(|c| c.ruid.as_str()).collect();
        assert_eq!(got, ["a2", "a1", "a4"], "a3 expired at 200");
        assert!(l.lookup("bob", 100).is_some(), "stored lowercased");
        assert!(l.lookup("bob", 300).is_none());
        assert!(l.lookup("nobody", 100).is_none());
        assert!(l.registered("Bob", 299));
        assert!(!l.registered("bob", 300));
        assert!(!l.registered("carol", 100), "expired at load: not loaded");
        assert_eq!(l.len(), 2);
        assert_eq!(l.contact_count(), 5);
    }

    #[test]
    fn lookup_method_filtering() {
        let mut l = loaded();
        let m = method_bits::INVITE;
        assert_eq!(l.lookup_method("alice", 100, m).0, LookupCode::Found);
        assert_eq!(l.lookup_method("alice", 100, 0).1.len(), 4);
        let (code, v) = l.lookup_method("alice", 100, method_bits::SUBSCRIBE);
        assert_eq!((code, v.len()), (LookupCode::MethodNotSupported, 0));
        assert_eq!(l.lookup_method("zed", 100, m).0, LookupCode::NotFound);
        // one binding allowing everything makes SUBSCRIBE routable
        l.records.get_mut("alice").expect("rec")[0].methods = method_bits::ALL;
        assert_eq!(
            l.lookup_method("alice", 100, method_bits::SUBSCRIBE)
                .1
                .len(),
            1
        );
    }

    #[test]
    fn registered_match_options() {
        let l = loaded();
        let cases = [
            (RegisteredMatch::default(), true),
            (
                RegisteredMatch {
                    call_id: Some("cid-a1"),
                    ..Default::default()
                },
                true,
            ),
            (
                RegisteredMatch {
                    call_id: Some("nope"),
                    ..Default::default()
                },
                false,
            ),
            (
                RegisteredMatch {
                    received: Some("sip:a2.rcv"),
                    ..Default::default()
                },
                true,
            ),
            (
                RegisteredMatch {
                    contact: Some("sip:a@4"),
                    ..Default::default()
                },
                true,
            ),
            (
                RegisteredMatch {
                    contact: Some("sip:a@4"),
                    call_id: Some("cid-a1"),
                    ..Default::default()
                },
                false,
            ),
            (
                RegisteredMatch {
                    contact: Some("sip:a@3"),
                    call_id: Some("cid-a3"),
                    received: Some("sip:a3.rcv"),
                },
                true,
            ),
        ];
        for (i, (m, want)) in cases.into_iter().enumerate() {
            assert_eq!(l.registered_match("alice", 100, m), want, "case {i}");
        }
        // a3 is expired at 250
        let m = RegisteredMatch {
            contact: Some("sip:a@3"),
            ..Default::default()
        };
        assert!(!l.registered_match("alice", 250, m));
    }

    #[test]
    fn unregister_variants() {
        let mut l = loaded();
        assert_eq!(
            l.unregister("", Unregister::All),
            Err(UnregisterError::BadAor)
        );
        assert_eq!(UnregisterError::BadAor.code(), -1);
        assert_eq!(
            l.unregister("zed", Unregister::All),
            Err(UnregisterError::NotFound)
        );
        assert_eq!(UnregisterError::NotFound.code(), -3);
        assert_eq!(
            l.unregister("alice", Unregister::Ruid("nope")),
            Err(UnregisterError::NotFound)
        );
        assert_eq!(
            l.unregister("alice", Unregister::Ruid("a1")),
            Ok(vec!["a1".to_string()])
        );
        assert_eq!(
            l.unregister("Alice", Unregister::Contact("sip:a@2")),
            Ok(vec!["a2".to_string()])
        );
        let mut all = l.unregister("alice", Unregister::All).expect("ok");
        all.sort();
        assert_eq!(all, ["a3", "a4"]);
        assert!(l.record("alice").is_none());
        let d = l.take_dirty();
        assert_eq!(d.deletes, ["a1", "a2", "a3", "a4"]);
        assert!(d.upserts.is_empty());
        assert!(l.take_dirty().deletes.is_empty());
    }

    #[test]
    fn expire_timer() {
        let mut l = loaded();
        assert!(l.expire(150).is_empty());
        let e = l.expire(300);
        let mut got: Vec<(&str, &str)> = e
            .iter()
            .map(|x| (x.aor.as_str(), x.contact.ruid.as_str()))
            .collect();
        got.sort();
        assert_eq!(got, [("alice", "a3"), ("bob", "b1")]);
        assert!(l.record("bob").is_none(), "empty records removed");
        let e = l.expire(u64::MAX);
        assert_eq!(e.len(), 2, "a1, a2; a4 is permanent");
        assert_eq!(l.lookup("alice", u64::MAX).expect("permanent").len(), 1);
        let d = l.take_dirty();
        assert_eq!(d.deletes, ["a1", "a2", "a3", "b1"]);
    }

    #[test]
    fn load_limits_and_replace() {
        let mut l = loc(LocationParams {
            max_aors: 2,
            max_contacts_per_aor: 2,
            ..Default::default()
        });
        let rows = vec![
            ("a".to_string(), uc("1", "sip:1", 0, None, 0)),
            ("a".to_string(), uc("2", "sip:2", 0, None, 0)),
            ("a".to_string(), uc("3", "sip:3", 0, None, 0)), // over per-AOR
            ("a".to_string(), uc("2", "sip:2bis", 0, None, 0)), // replaces ruid 2
            ("b".to_string(), uc("4", "sip:4", 0, None, 0)),
            ("c".to_string(), uc("5", "sip:5", 0, None, 0)), // over max_aors
            (String::new(), uc("6", "sip:6", 0, None, 0)),
        ];
        let rep = l.load(rows, 10);
        assert_eq!(
            rep,
            LoadReport {
                loaded: 4,
                expired: 0,
                rejected: 3
            }
        );
        assert_eq!(l.record("a").expect("a").contacts.len(), 2);
        assert!(l
            .record("a")
            .expect("a")
            .contacts
            .iter()
            .any(|c| c.contact == "sip:2bis"));
        assert!(l.take_dirty().upserts.is_empty(), "load is not dirty");
        assert_eq!(l.dump().count(), 2);
    }

    #[test]
    fn dirty_bounded() {
        let mut l = loc(LocationParams {
            track_dirty: true,
            max_dirty: 2,
            ..Default::default()
        });
        let b = |r: &str| Binding::from_contact(&uc(r, "sip:x", 0, None, 0));
        for r in ["x", "y", "z"] {
            l.mark_deleted(&b(r));
        }
        l.mark_deleted(&b("x")); // existing key still updates
        l.check_dirty();
        let d = l.take_dirty();
        assert!(d.overflowed);
        assert_eq!(d.deletes, ["x", "y"]);
        let d = l.take_dirty();
        assert!(!d.overflowed);
        let mut mem = uc("m", "sip:m", 0, None, 0);
        mem.flags = crate::usrloc::FLAG_MEM_ONLY;
        l.mark_deleted(&Binding::from_contact(&mem));
        assert!(
            l.take_dirty().deletes.is_empty(),
            "memory-only never reaches the DB"
        );
        let mut off = loc(LocationParams::default());
        off.mark_deleted(&b("x"));
        assert_eq!(off.take_dirty(), DirtyBatch::default());
        // A full set still takes the upsert of a binding deleted and back.
        l.mark_deleted(&b("u"));
        l.mark_deleted(&b("v"));
        let mut u = b("u");
        l.mark_upsert("a", &mut u);
        assert!(u.is_dirty());
        let mut w = b("w");
        l.mark_upsert("a", &mut w);
        assert!(!w.is_dirty(), "over max_dirty");
        assert!(l.take_dirty().overflowed);
    }

    #[test]
    fn dirty_bits_follow_bindings() {
        let mut l = loaded();
        assert_eq!(l.take_dirty(), DirtyBatch::default());
        let spec = [crate::usrloc::ContactSpec::new("sip:a@1")];
        let req = crate::usrloc::SaveRequest {
            aor: "alice",
            contacts: &spec,
            call_id: "cid-a1",
            cseq: 2,
            ..Default::default()
        };
        l.save(100, &req).expect("refresh");
        l.check_dirty();
        l.save(101, &crate::usrloc::SaveRequest { cseq: 3, ..req })
            .expect("again");
        l.check_dirty();
        assert_eq!(l.dirty_len, 1, "one binding, marked once");
        // Unregistered before the flush: only the delete is written.
        l.unregister("alice", Unregister::Ruid("a1")).expect("rm");
        l.check_dirty();
        let d = l.take_dirty();
        assert!(d.upserts.is_empty());
        assert_eq!(d.deletes, ["a1"]);
        // Refreshed, then expired by the timer.
        let spec = [crate::usrloc::ContactSpec::new("sip:a@2")];
        let req = crate::usrloc::SaveRequest {
            aor: "alice",
            contacts: &spec,
            call_id: "cid-a2",
            cseq: 2,
            expires_hdr_s: Some(60),
            ..Default::default()
        };
        l.save(100, &req).expect("refresh a2");
        l.check_dirty();
        let gone = l.expire(10_000);
        l.check_dirty();
        assert_eq!(gone.len(), 3, "a2, a3, b1");
        let d = l.take_dirty();
        assert!(d.upserts.is_empty());
        assert_eq!(d.deletes, ["a2", "a3", "b1"]);
        l.check_dirty();
        assert!(l.dirty_aors.is_empty() && l.dirty_deletes.is_empty());
    }
}
