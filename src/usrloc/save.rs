//! `save()`: RFC 3261 §10.3 steps 6–8 with Kamailio registrar behaviour.
//!
//! ```text
//! step 6  Contact: *  → only with Expires: 0 and no other Contact (else 400);
//!                        removes every binding whose Call-ID differs or whose
//!                        CSeq is lower than the request's
//! step 7  per contact: expires = contact param / Expires header / default;
//!                        0 removes; min_expires (clamp or 423); max_expires caps;
//!                        same Call-ID needs a higher CSeq (else 400, unless a
//!                        retransmission within cseq_delay); another Call-ID
//!                        replaces the binding
//! step 8  reply 200 with every current binding
//! ```
//!
//! All updates of one request are computed on a copy of the record and
//! committed only if every check passes (§10.3: "committed … if and only if
//! all binding updates and additions succeed").

use super::codes;
use super::contact::{
    method_bits, sort_bindings, truncate_utf8, Binding, BindingStrs, Ucontact, FLAG_MEM_ONLY,
};
use super::reply::ReplyContact;
use super::table::{Location, MatchingMode, MinExpiresMode, PathMode};

/// Longest Call-ID accepted (the `callid` column).
const CALLID_MAX: usize = 255;
/// User-Agent is truncated to this (the `user_agent` column).
const USER_AGENT_MAX: usize = 255;
/// Longest Path vector accepted (the `path` column).
const PATH_MAX: usize = 512;
/// Longest received / socket / instance value accepted.
const SHORT_FIELD_MAX: usize = 255;

/// Kamailio `save(domain, flags)` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveFlags(pub u32);

impl SaveFlags {
    /// `0x01`: memory only, no DB operation.
    pub const MEM_ONLY: u32 = 0x01;
    /// `0x02`: do not send the reply (the KSR layer's concern).
    pub const NO_REPLY: u32 = 0x02;
    /// `0x04`: keep one contact per AOR, removing the others.
    pub const SINGLE_CONTACT: u32 = 0x04;
    /// `0x08`: do not apply expires ranges (no randomisation is done here anyway).
    pub const NO_EXPIRES_RANGE: u32 = 0x08;
    /// `0x10`: prepare reply headers even with `NO_REPLY`.
    pub const PREPARE_REPLY: u32 = 0x10;

    pub const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// One Contact of the REGISTER. `uri == "*"` is the wildcard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContactSpec<'a> {
    pub uri: &'a str,
    /// `expires` contact parameter (values past `u32::MAX` clamp to it).
    pub expires_s: Option<u32>,
    /// `q` in thousandths.
    pub q: Option<u16>,
    /// `+sip.instance` without the surrounding quotes.
    pub instance: Option<&'a str>,
    /// `reg-id` (pass it only when outbound applies: Kamailio `regid_mode`).
    pub reg_id: Option<u32>,
}

impl<'a> ContactSpec<'a> {
    pub fn new(uri: &'a str) -> ContactSpec<'a> {
        ContactSpec {
            uri,
            ..Default::default()
        }
    }
}

/// Everything `save` needs from one REGISTER, already extracted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveRequest<'a> {
    /// AOR key, see [`Location::aor`] (lowercased here unless case-sensitive).
    pub aor: &'a str,
    /// The Contact values; empty = a query.
    pub contacts: &'a [ContactSpec<'a>],
    /// `Expires` header.
    pub expires_hdr_s: Option<u32>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub user_agent: &'a str,
    /// Source URI to store as `received` (NAT).
    pub received: Option<&'a str>,
    /// Path header values joined as `<uri>,<uri>`.
    pub path: Option<&'a str>,
    /// The request carried `Supported: path`.
    pub path_supported: bool,
    pub socket: Option<&'a str>,
    /// From the `Allow` header ([`super::methods_from_allow`]); `None` = all.
    pub methods: Option<u32>,
    /// Branch flags to store.
    pub cflags: u32,
    pub flags: SaveFlags,
    /// Per-request `max_contacts` (Kamailio `$xavp(reg=>max_contacts)`).
    pub max_contacts: Option<u32>,
    /// Per-request expires (`$xavp(reg=>expires)`), overriding SIP values.
    pub expires_override_s: Option<u32>,
    /// Per-request q (`$xavp(reg=>q)`), overriding the contact's.
    pub q_override: Option<u16>,
}

/// Bindings changed by one `save`, for DB write-through (`db_mode` 1).
/// Contacts flagged [`FLAG_MEM_ONLY`] are listed too; skip them when writing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub inserted: Vec<Ucontact>,
    pub updated: Vec<Ucontact>,
    /// Removed bindings (ruid, and the rest for event routes / logs).
    pub deleted: Vec<Ucontact>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.inserted.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// A successful `save`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveOutcome {
    /// The normalised AOR.
    pub aor: String,
    /// Every valid binding after the update, in lookup order, with seconds
    /// left: the `Contact` lines of the 200 OK.
    pub contacts: Vec<ReplyContact>,
    /// Path to echo in the 200 OK (RFC 3327 §5.3), per `path_mode`.
    pub reply_path: Option<String>,
    pub changes: Changes,
    /// At least one contact was a retransmission (same Call-ID and CSeq
    /// within `cseq_delay`), answered without change.
    pub retransmission: bool,
}

impl SaveOutcome {
    /// Kamailio `save()` return code: 1 inserted, 2 updated, 3 deleted,
    /// 4 returned (first that applies, in that order).
    pub fn code(&self) -> i32 {
        if !self.changes.inserted.is_empty() {
            codes::SAVE_INSERTED
        } else if !self.changes.updated.is_empty() {
            codes::SAVE_UPDATED
        } else if !self.changes.deleted.is_empty() {
            codes::SAVE_DELETED
        } else {
            codes::SAVE_RETURNED
        }
    }
}

/// Why a REGISTER was refused; each knows its reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    #[error("empty address of record")]
    InvalidAor,
    #[error("'*' contact with other contacts")]
    StarWithOtherContacts,
    #[error("'*' contact with expires other than 0")]
    StarExpiresNotZero,
    #[error("empty contact URI")]
    EmptyContact,
    #[error("contact URI longer than contact_max_size")]
    ContactTooLong,
    #[error("{0} too long")]
    FieldTooLong(&'static str),
    #[error("q value above 1")]
    InvalidQ,
    /// Same Call-ID with a CSeq not higher than the binding's (RFC 3261
    /// §10.3 step 7: "the update MUST be aborted and the request fails").
    #[error("invalid CSeq number")]
    InvalidCseq,
    #[error("interval too brief, minimum {min_expires_s} s")]
    IntervalTooBrief { min_expires_s: u32 },
    #[error("too many registered contacts (max {max})")]
    TooManyContacts { max: u32 },
    #[error("location table full")]
    TableFull,
    #[error("Path header without Supported: path")]
    PathNotSupported,
}

impl SaveError {
    /// Reply status code.
    pub fn status(&self) -> u16 {
        match self {
            SaveError::IntervalTooBrief { .. } => 423,
            SaveError::TooManyContacts { .. } | SaveError::TableFull => 503,
            SaveError::PathNotSupported => 420,
            _ => 400,
        }
    }

    /// Reply reason phrase.
    pub fn reason(&self) -> &'static str {
        match self.status() {
            423 => "Interval Too Brief",
            503 => "Service Unavailable",
            420 => "Bad Extension",
            _ => "Bad Request",
        }
    }

    /// Text of the `P-Registrar-Error` header of the error reply: Kamailio
    /// registrar's wording where it has the case.
    pub fn error_info(&self) -> &'static str {
        match self {
            SaveError::InvalidAor => "Error while parsing AOR",
            SaveError::StarWithOtherContacts => "* used in contact and more than 1 contact",
            SaveError::StarExpiresNotZero => "* used in contact and expires is not zero",
            SaveError::EmptyContact => "Contact parse error",
            SaveError::ContactTooLong => "Contact/received too long",
            SaveError::FieldTooLong("Call-ID") => "Callid too long",
            SaveError::FieldTooLong(_) => "Contact/received too long",
            SaveError::InvalidQ => "Invalid q param in contact",
            SaveError::InvalidCseq => "Invalid CSeq number",
            SaveError::IntervalTooBrief { .. } => "Interval too brief",
            SaveError::TooManyContacts { .. } => "Too many registered contacts",
            SaveError::TableFull => "Location table full",
            SaveError::PathNotSupported => "No support for found Path indicated",
        }
    }

    /// Kamailio `save()` return code: -2 for too many contacts, else -1.
    pub fn code(&self) -> i32 {
        match self {
            SaveError::TooManyContacts { .. } => codes::SAVE_TOO_MANY_CONTACTS,
            _ => codes::SAVE_ERROR,
        }
    }
}

/// Effective expires of one contact, after limits. `Ok(0)` removes.
fn contact_expires(
    loc: &Location,
    req: &SaveRequest<'_>,
    spec: &ContactSpec<'_>,
) -> Result<u32, SaveError> {
    let p = &loc.registrar;
    let e = req
        .expires_override_s
        .or(spec.expires_s)
        .or(req.expires_hdr_s)
        .unwrap_or(p.default_expires_s);
    if e == 0 {
        return Ok(0);
    }
    let mut e = e;
    if p.max_expires_s != 0 && e > p.max_expires_s {
        e = p.max_expires_s;
    }
    if p.min_expires_s != 0 && e < p.min_expires_s {
        match p.min_expires_mode {
            MinExpiresMode::Clamp => e = p.min_expires_s,
            MinExpiresMode::Reject => {
                return Err(SaveError::IntervalTooBrief {
                    min_expires_s: p.min_expires_s,
                })
            }
        }
    }
    Ok(e)
}

/// Index of the binding a contact refers to.
fn find_binding(
    mode: MatchingMode,
    contacts: &[Binding],
    spec: &ContactSpec<'_>,
    call_id: &str,
    path: Option<&str>,
) -> Option<usize> {
    if let Some(inst) = spec.instance.filter(|i| !i.is_empty()) {
        let reg_id = spec.reg_id.unwrap_or(0);
        if let Some(i) = contacts
            .iter()
            .position(|c| c.instance() == Some(inst) && c.reg_id == reg_id)
        {
            return Some(i);
        }
        // A binding made before the UA sent an instance: match it by URI.
    }
    contacts.iter().position(|c| {
        if spec.instance.is_some_and(|i| !i.is_empty()) && c.instance().is_some() {
            return false;
        }
        match mode {
            MatchingMode::Contact => c.contact() == spec.uri,
            MatchingMode::ContactCallid => c.contact() == spec.uri && c.callid() == call_id,
            MatchingMode::ContactPath => {
                c.contact() == spec.uri && (path.is_none() || c.path() == path)
            }
            MatchingMode::Callid => c.callid() == call_id,
        }
    })
}

enum CseqVerdict {
    Proceed,
    Retransmission,
}

/// RFC 3261 §10.3 Call-ID / CSeq rule for an existing, valid binding.
fn cseq_rule(
    loc: &Location,
    b: &Binding,
    req: &SaveRequest<'_>,
    now_unix_s: u64,
) -> Result<CseqVerdict, SaveError> {
    if !b.is_valid(now_unix_s) || b.callid() != req.call_id || req.cseq > b.cseq {
        return Ok(CseqVerdict::Proceed);
    }
    let delay = u64::from(loc.params.cseq_delay_s);
    if req.cseq == b.cseq && delay > 0 && now_unix_s <= b.last_modified_unix_s.saturating_add(delay)
    {
        return Ok(CseqVerdict::Retransmission);
    }
    Err(SaveError::InvalidCseq)
}

impl Location {
    /// Processes one REGISTER for `req.aor` at `now_unix_s`.
    pub fn save(
        &mut self,
        now_unix_s: u64,
        req: &SaveRequest<'_>,
    ) -> Result<SaveOutcome, SaveError> {
        let aor = self.key(req.aor).into_owned();
        if aor.is_empty() {
            return Err(SaveError::InvalidAor);
        }
        validate_fields(req)?;
        if req.contacts.is_empty() {
            // A query (RFC 3261 §10.3 step 8 with nothing to change).
            return Ok(SaveOutcome {
                contacts: self.query(&aor, now_unix_s),
                aor,
                reply_path: None,
                changes: Changes::default(),
                retransmission: false,
            });
        }

        // Path (RFC 3327; registrar use_path / path_mode).
        let (stored_path, reply_path) =
            match (self.registrar.use_path, req.path.filter(|p| !p.is_empty())) {
                (true, Some(p)) => match self.registrar.path_mode {
                    PathMode::Off => (Some(p), None),
                    PathMode::Lazy => (Some(p), req.path_supported.then_some(p)),
                    PathMode::Strict if !req.path_supported => {
                        return Err(SaveError::PathNotSupported)
                    }
                    PathMode::Strict => (Some(p), Some(p)),
                },
                _ => (None, None),
            };

        let mut work: Vec<Binding> = self.bindings(&aor).to_vec();
        let mut deleted: Vec<Binding> = Vec::new();
        let mut inserted: Vec<usize> = Vec::new();
        let mut updated: Vec<usize> = Vec::new();
        // ruids this request refreshed, changed or added (kept whatever happens).
        let mut touched: Vec<String> = Vec::new();
        let mut retransmission = false;

        let star = req.contacts.iter().any(|c| c.uri == "*");
        if star {
            // Step 6.
            if req.contacts.len() > 1 {
                return Err(SaveError::StarWithOtherContacts);
            }
            if req.expires_hdr_s != Some(0) {
                return Err(SaveError::StarExpiresNotZero);
            }
            let mut keep = Vec::new();
            for b in work.drain(..) {
                match cseq_rule(self, &b, req, now_unix_s)? {
                    CseqVerdict::Proceed => deleted.push(b),
                    CseqVerdict::Retransmission => {
                        retransmission = true;
                        keep.push(b);
                    }
                }
            }
            work = keep;
        } else {
            // Step 7. Changed bindings are noted by ruid (positions move)
            // and found again once the set is final.
            let mut changed: Vec<(bool, String)> = Vec::new();
            for spec in req.contacts {
                if spec.uri.is_empty() {
                    return Err(SaveError::EmptyContact);
                }
                if spec.uri.len() > self.registrar.contact_max_size {
                    return Err(SaveError::ContactTooLong);
                }
                if spec.q.or(req.q_override).is_some_and(|q| q > 1000) {
                    return Err(SaveError::InvalidQ);
                }
                if spec.instance.is_some_and(|i| i.len() > SHORT_FIELD_MAX) {
                    return Err(SaveError::FieldTooLong("+sip.instance"));
                }
                let expires_s = contact_expires(self, req, spec)?;
                let found = find_binding(
                    self.params.matching_mode,
                    &work,
                    spec,
                    req.call_id,
                    stored_path,
                );
                if let Some(i) = found {
                    if touched.iter().any(|t| t == work[i].ruid()) {
                        // The same binding twice in one request: the first wins.
                        continue;
                    }
                    match cseq_rule(self, &work[i], req, now_unix_s)? {
                        CseqVerdict::Retransmission => {
                            retransmission = true;
                            touched.push(work[i].ruid().to_string());
                            continue;
                        }
                        CseqVerdict::Proceed => {}
                    }
                    if expires_s == 0 {
                        deleted.push(work.remove(i));
                        continue;
                    }
                    let old = &work[i];
                    let mut b = self.make(
                        old.ruid(),
                        old.flags,
                        req,
                        spec,
                        expires_s,
                        stored_path,
                        now_unix_s,
                    );
                    b.set_dirty(old.is_dirty());
                    touched.push(b.ruid().to_string());
                    changed.push((false, b.ruid().to_string()));
                    work[i] = b;
                } else if expires_s > 0 {
                    let ruid = self.ruids.next_ruid();
                    let b = self.make(&ruid, 0, req, spec, expires_s, stored_path, now_unix_s);
                    touched.push(ruid.clone());
                    changed.push((true, ruid));
                    work.push(b);
                }
                // expires 0 for an unknown contact: nothing to remove.
            }
            // Expired bindings not refreshed by this request go now.
            // Save flag 0x04: so do all bindings this request did not touch.
            let single = req.flags.has(SaveFlags::SINGLE_CONTACT);
            let mut keep = Vec::with_capacity(work.len());
            for b in work.drain(..) {
                let is_touched = touched.iter().any(|t| t == b.ruid());
                if is_touched || (b.is_valid(now_unix_s) && !single) {
                    keep.push(b);
                } else {
                    deleted.push(b);
                }
            }
            work = keep;
            for (new, ruid) in changed {
                if let Some(i) = work.iter().position(|b| b.ruid() == ruid) {
                    if new {
                        inserted.push(i);
                    } else {
                        updated.push(i);
                    }
                }
            }
        }

        // Limits: only a request that adds bindings can exceed them, so
        // refreshes and removals always pass even if the limit was lowered.
        let valid = work.iter().filter(|c| c.is_valid(now_unix_s)).count();
        if !inserted.is_empty() {
            let max = req.max_contacts.unwrap_or(self.registrar.max_contacts);
            if max != 0 && valid > max as usize {
                return Err(SaveError::TooManyContacts { max });
            }
            if work.len() > self.params.max_contacts_per_aor {
                return Err(SaveError::TooManyContacts {
                    max: self.params.max_contacts_per_aor as u32,
                });
            }
            if !self.records.contains_key(&*aor) && self.records.len() >= self.params.max_aors {
                return Err(SaveError::TableFull);
            }
        }

        // Commit.
        for c in &deleted {
            self.mark_deleted(c);
        }
        for &i in inserted.iter().chain(&updated) {
            self.mark_upsert(&aor, &mut work[i]);
        }
        let changes = Changes {
            inserted: inserted.iter().map(|&i| work[i].to_contact()).collect(),
            updated: updated.iter().map(|&i| work[i].to_contact()).collect(),
            deleted: deleted.iter().map(Binding::to_contact).collect(),
        };
        if work.is_empty() {
            self.records.remove(&*aor);
        } else {
            sort_bindings(&mut work);
            let work = work.into_boxed_slice();
            match self.records.get_mut(&*aor) {
                Some(slot) => *slot = work,
                None => {
                    self.records.insert(aor.as_str().into(), work);
                }
            }
        }
        debug_assert!(self.records.len() <= self.params.max_aors);

        let contacts = self
            .bindings(&aor)
            .iter()
            .filter(|c| c.is_valid(now_unix_s))
            .map(|c| ReplyContact::from_binding(c, now_unix_s))
            .collect();
        Ok(SaveOutcome {
            aor,
            contacts,
            reply_path: reply_path.map(str::to_string),
            changes,
            retransmission,
        })
    }

    /// The binding `spec` of `req` makes: `ruid` and the usrloc flags other
    /// than memory-only are kept from the binding it replaces.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        ruid: &str,
        old_flags: u32,
        req: &SaveRequest<'_>,
        spec: &ContactSpec<'_>,
        expires_s: u32,
        path: Option<&str>,
        now_unix_s: u64,
    ) -> Binding {
        let mut b = Binding::new(&BindingStrs {
            ruid,
            contact: spec.uri,
            callid: req.call_id,
            user_agent: truncate_utf8(req.user_agent, USER_AGENT_MAX),
            received: req.received,
            path,
            socket: req.socket,
            instance: spec.instance.filter(|i| !i.is_empty()),
        });
        b.expires_unix_s = now_unix_s.saturating_add(u64::from(expires_s));
        b.set_q(
            req.q_override
                .or(spec.q)
                .or(self.registrar.default_q)
                .map(|q| q.min(1000)),
        );
        b.cseq = req.cseq;
        b.flags = if req.flags.has(SaveFlags::MEM_ONLY) {
            old_flags | FLAG_MEM_ONLY
        } else {
            old_flags & !FLAG_MEM_ONLY
        };
        b.cflags = req.cflags;
        b.methods = req.methods.unwrap_or(method_bits::ALL);
        b.reg_id = spec.reg_id.unwrap_or(0);
        b.last_modified_unix_s = now_unix_s;
        b
    }

    /// `save()` for a REGISTER without Contact: the current bindings.
    pub fn query(&self, aor: &str, now_unix_s: u64) -> Vec<ReplyContact> {
        self.bindings(aor)
            .iter()
            .filter(|c| c.is_valid(now_unix_s))
            .map(|c| ReplyContact::from_binding(c, now_unix_s))
            .collect()
    }
}

fn validate_fields(req: &SaveRequest<'_>) -> Result<(), SaveError> {
    if req.call_id.len() > CALLID_MAX {
        return Err(SaveError::FieldTooLong("Call-ID"));
    }
    if req.path.is_some_and(|p| p.len() > PATH_MAX) {
        return Err(SaveError::FieldTooLong("Path"));
    }
    if req.received.is_some_and(|p| p.len() > SHORT_FIELD_MAX) {
        return Err(SaveError::FieldTooLong("received"));
    }
    if req.socket.is_some_and(|p| p.len() > SHORT_FIELD_MAX) {
        return Err(SaveError::FieldTooLong("socket"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
