//! The location table: AOR → [`Record`], its limits and parameters, and every
//! operation but `save` (which lives in `save.rs`).

use std::borrow::Cow;
use std::collections::HashMap;

use super::contact::{Record, Ucontact};
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirtyOp {
    /// The ruid's current row (in this AOR) must be written.
    Upsert(String),
    Delete,
}

/// The per-shard location table.
#[derive(Debug)]
pub struct Location {
    pub(crate) params: LocationParams,
    pub(crate) registrar: RegistrarParams,
    pub(crate) records: HashMap<String, Record>,
    pub(crate) ruids: RuidGen,
    pub(crate) dirty: HashMap<String, DirtyOp>,
    pub(crate) dirty_overflowed: bool,
}

impl Location {
    pub fn new(params: LocationParams, registrar: RegistrarParams, ruids: RuidGen) -> Location {
        Location {
            params,
            registrar,
            records: HashMap::new(),
            ruids,
            dirty: HashMap::new(),
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

    /// Valid bindings of `aor` in lookup order (q descending, then most
    /// recent), or `None` when there are none.
    pub fn lookup(&self, aor: &str, now_unix_s: u64) -> Option<Vec<&Ucontact>> {
        let r = self.records.get(&*self.key(aor))?;
        let v: Vec<&Ucontact> = r.valid(now_unix_s).collect();
        if v.is_empty() {
            None
        } else {
            Some(v)
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
    ) -> (LookupCode, Vec<&Ucontact>) {
        let Some(all) = self.lookup(aor, now_unix_s) else {
            return (LookupCode::NotFound, Vec::new());
        };
        if method_bit == 0 {
            return (LookupCode::Found, all);
        }
        let v: Vec<&Ucontact> = all
            .into_iter()
            .filter(|c| c.methods & method_bit != 0)
            .collect();
        if v.is_empty() {
            (LookupCode::MethodNotSupported, v)
        } else {
            (LookupCode::Found, v)
        }
    }

    /// `registered()`: at least one valid binding.
    pub fn registered(&self, aor: &str, now_unix_s: u64) -> bool {
        self.registered_match(aor, now_unix_s, RegisteredMatch::default())
    }

    /// `registered()` with `match_option` filters.
    pub fn registered_match(&self, aor: &str, now_unix_s: u64, m: RegisteredMatch<'_>) -> bool {
        let Some(r) = self.records.get(&*self.key(aor)) else {
            return false;
        };
        r.valid(now_unix_s).any(|c| {
            m.call_id.is_none_or(|v| c.callid == v)
                && m.received.is_none_or(|v| c.received.as_deref() == Some(v))
                && m.contact.is_none_or(|v| c.contact == v)
        })
    }

    /// The whole record, expired bindings included.
    pub fn record(&self, aor: &str) -> Option<&Record> {
        self.records.get(&*self.key(aor))
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
        let key = self.key(aor).into_owned();
        let Some(rec) = self.records.get_mut(&key) else {
            return Err(UnregisterError::NotFound);
        };
        let mut removed = Vec::new();
        rec.contacts.retain(|c| {
            let hit = match what {
                Unregister::All => true,
                Unregister::Ruid(r) => c.ruid == r,
                Unregister::Contact(u) => c.contact == u,
            };
            if hit {
                removed.push(c.clone());
            }
            !hit
        });
        if rec.contacts.is_empty() {
            self.records.remove(&key);
        }
        if removed.is_empty() {
            return Err(UnregisterError::NotFound);
        }
        for c in &removed {
            self.mark_deleted(c);
        }
        Ok(removed.into_iter().map(|c| c.ruid).collect())
    }

    /// Removes every binding expired at `now` (the usrloc timer). Permanent
    /// bindings (`expires_unix_s == 0`) stay.
    pub fn expire(&mut self, now_unix_s: u64) -> Vec<Expired> {
        let mut out = Vec::new();
        self.records.retain(|aor, rec| {
            rec.contacts.retain(|c| {
                if c.is_valid(now_unix_s) {
                    return true;
                }
                out.push(Expired {
                    aor: aor.clone(),
                    contact: c.clone(),
                });
                false
            });
            !rec.contacts.is_empty()
        });
        for e in &out {
            self.mark_deleted(&e.contact);
        }
        out
    }

    /// Every record, in no particular order.
    pub fn dump(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
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
        self.records.values().map(|r| r.contacts.len()).sum()
    }

    /// Restores rows `(aor, contact)` from the database at start. Expired rows
    /// and rows over the limits are skipped; a row whose ruid already exists
    /// in its AOR replaces it. Nothing is marked dirty.
    pub fn load<I>(&mut self, rows: I, now_unix_s: u64) -> LoadReport
    where
        I: IntoIterator<Item = (String, Ucontact)>,
    {
        let mut rep = LoadReport::default();
        let mut touched: Vec<String> = Vec::new();
        for (aor, c) in rows {
            if !c.is_valid(now_unix_s) {
                rep.expired += 1;
                continue;
            }
            let key = self.key(&aor).into_owned();
            if key.is_empty() {
                rep.rejected += 1;
                continue;
            }
            if !self.records.contains_key(&key) && self.records.len() >= self.params.max_aors {
                rep.rejected += 1;
                continue;
            }
            let rec = self.records.entry(key.clone()).or_insert_with(|| Record {
                aor: key.clone(),
                contacts: Vec::new(),
            });
            if let Some(old) = rec.contacts.iter_mut().find(|o| o.ruid == c.ruid) {
                *old = c;
            } else if rec.contacts.len() >= self.params.max_contacts_per_aor {
                rep.rejected += 1;
                if rec.contacts.is_empty() {
                    self.records.remove(&key);
                }
                continue;
            } else {
                rec.contacts.push(c);
            }
            rep.loaded += 1;
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        for k in touched {
            if let Some(r) = self.records.get_mut(&k) {
                r.sort();
            }
        }
        rep
    }

    /// Drains the write-back dirty set.
    pub fn take_dirty(&mut self) -> DirtyBatch {
        let mut batch = DirtyBatch {
            overflowed: std::mem::take(&mut self.dirty_overflowed),
            ..Default::default()
        };
        for (ruid, op) in self.dirty.drain() {
            match op {
                DirtyOp::Delete => batch.deletes.push(ruid),
                DirtyOp::Upsert(aor) => {
                    let row = self
                        .records
                        .get(&aor)
                        .and_then(|r| r.contacts.iter().find(|c| c.ruid == ruid));
                    match row {
                        Some(c) => batch.upserts.push((aor, c.clone())),
                        // Gone since without a recorded delete cannot happen;
                        // deleting is the safe answer if it ever does.
                        None => batch.deletes.push(ruid),
                    }
                }
            }
        }
        batch.upserts.sort_by(|a, b| a.1.ruid.cmp(&b.1.ruid));
        batch.deletes.sort();
        batch
    }

    fn note_dirty(&mut self, ruid: &str, op: DirtyOp) {
        if !self.params.track_dirty {
            return;
        }
        if let Some(slot) = self.dirty.get_mut(ruid) {
            *slot = op;
            return;
        }
        if self.dirty.len() >= self.params.max_dirty {
            self.dirty_overflowed = true;
            return;
        }
        self.dirty.insert(ruid.to_string(), op);
    }

    pub(crate) fn mark_upsert(&mut self, aor: &str, c: &Ucontact) {
        if !c.is_mem_only() {
            self.note_dirty(&c.ruid, DirtyOp::Upsert(aor.to_string()));
        }
    }

    pub(crate) fn mark_deleted(&mut self, c: &Ucontact) {
        if !c.is_mem_only() {
            self.note_dirty(&c.ruid, DirtyOp::Delete);
        }
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
        let got: Vec<&str> = l
            .lookup("ALICE", 100)
            .expect("found")
            .iter()
            .map(|c| c.ruid.as_str())
            .collect();
        assert_eq!(got, ["a2", "a3", "a1", "a4"]);
        let got: Vec<&str> = l
            .lookup("alice", 200)
            .expect("found")
            .iter()
            .map(|c| c.ruid.as_str())
            .collect();
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
        l.records.get_mut("alice").expect("rec").contacts[0].methods = method_bits::ALL;
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
        for r in ["x", "y", "z"] {
            l.mark_deleted(&uc(r, "sip:x", 0, None, 0));
        }
        l.mark_deleted(&uc("x", "sip:x", 0, None, 0)); // existing key still updates
        let d = l.take_dirty();
        assert!(d.overflowed);
        assert_eq!(d.deletes, ["x", "y"]);
        let d = l.take_dirty();
        assert!(!d.overflowed);
        let mut mem = uc("m", "sip:m", 0, None, 0);
        mem.flags = crate::usrloc::FLAG_MEM_ONLY;
        l.mark_deleted(&mem);
        assert!(
            l.take_dirty().deletes.is_empty(),
            "memory-only never reaches the DB"
        );
        let mut off = loc(LocationParams::default());
        off.mark_deleted(&uc("x", "sip:x", 0, None, 0));
        assert_eq!(off.take_dirty(), DirtyBatch::default());
    }
}
