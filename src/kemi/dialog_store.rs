//! The dialog store every shard uses directly (Kamailio's dialog module
//! state, docs/ARCHITECTURE.md decision 6): `hash_size` lock stripes, each a
//! short list of dialogs (Kamailio's hash entries), keyed by the hash of the
//! Call-ID, so the stripe index is the dialog's `h_entry` and a per-stripe
//! counter its `h_id`. Each call locks one stripe for one operation, never
//! across a route.
//!
//! Owns: dialog records and their state machine (1 unconfirmed, 2 early,
//! 3 confirmed without ACK, 4 confirmed, 5 deleted), profiles with their
//! counts, timeouts, and the BYE requests that end a dialog. It sends
//! nothing and reads no clock: callers pass `now_ms` (the store's clock)
//! and send what [`Dialogs::bye_requests`] builds.
//!
//! Bounded: at most `max_dialogs` records (deleted ones included until
//! removed); `dlg_manage` beyond it fails and [`Dialogs::full_count`] counts it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::partition::Striped;

/// Kamailio's dialog states.
pub const ST_UNCONFIRMED: u8 = 1;
pub const ST_EARLY: u8 = 2;
pub const ST_CONFIRMED_NA: u8 = 3;
pub const ST_CONFIRMED: u8 = 4;
pub const ST_DELETED: u8 = 5;

/// How long a deleted dialog stays readable (`$dlg` in the BYE's reply
/// route, `dlg.list`) before the timer removes it.
pub const LINGER_MS: u64 = 5_000;
/// Most dialog variables per dialog, and bytes per name/value.
pub const MAX_VARS: usize = 64;
pub const MAX_VAR_BYTES: usize = 4096;
/// Most profile memberships per dialog.
pub const MAX_PROFILES_PER_DLG: usize = 32;

/// A dialog's handle: Kamailio's `h_entry` (stripe) and `h_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DlgId {
    pub h_entry: u32,
    pub h_id: u32,
}

/// One side of the dialog.
#[derive(Clone, Debug, Default)]
pub struct Leg {
    /// The From (caller) / To (callee) header value, with its tag.
    pub hdr: Vec<u8>,
    pub uri: Vec<u8>,
    pub tag: Vec<u8>,
    pub contact: Vec<u8>,
    /// Route header values for a request sent to this side, next hop first.
    pub route_set: Vec<Vec<u8>>,
    /// Where this side's messages came from (used when the Contact is not
    /// an address sipshard can send to).
    pub addr: Option<SocketAddr>,
    /// Last CSeq number this side sent.
    pub cseq: u32,
}

/// One dialog record.
#[derive(Clone, Debug)]
pub struct Dialog {
    pub h_id: u32,
    pub state: u8,
    pub callid: Vec<u8>,
    pub caller: Leg,
    pub callee: Leg,
    /// Unix seconds when created / confirmed (0 until then).
    pub init_ts: u64,
    pub start_ts: u64,
    /// Seconds the dialog may last once confirmed (`dlg_set_timeout`).
    pub lifetime_s: u64,
    /// When the current state times out (store clock, ms).
    pub deadline_ms: u64,
    /// `dlg_setflag` flags.
    pub sflags: u32,
    /// BYE both sides when the dialog times out (`send_bye`).
    pub timeout_bye: bool,
    /// `dlg_set_property("timeout-noreset")`.
    pub noreset: bool,
    pub vars: Vec<(Vec<u8>, Vec<u8>)>,
    /// (profile index, value) memberships.
    pub profiles: Vec<(u16, Vec<u8>)>,
    /// The local address the INVITE arrived on.
    pub bind: SocketAddr,
    /// The INVITE's transaction (for `dlg_bye` of an early dialog).
    pub tx: Option<super::tm_store::TxId>,
}

/// Which way a request in the dialog goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the caller to the callee.
    Downstream,
    /// From the callee to the caller.
    Upstream,
}

/// What the dialog module needs of an initial INVITE.
pub struct NewDialog<'a> {
    pub callid: &'a [u8],
    pub from_hdr: &'a [u8],
    pub from_uri: &'a [u8],
    pub from_tag: &'a [u8],
    pub to_hdr: &'a [u8],
    pub to_uri: &'a [u8],
    pub contact: &'a [u8],
    /// Record-Route values of the INVITE as received (top first).
    pub record_route: Vec<Vec<u8>>,
    pub cseq: u32,
    pub src: SocketAddr,
    pub bind: SocketAddr,
}

/// What the dialog module needs of a reply to the INVITE.
pub struct ReplyInfo<'a> {
    pub code: u16,
    pub to_hdr: &'a [u8],
    pub to_tag: &'a [u8],
    pub contact: &'a [u8],
    /// Record-Route values of the reply (top first) that are not ours and
    /// were added downstream of us.
    pub downstream_rr: Vec<Vec<u8>>,
    pub src: SocketAddr,
}

/// Parameters of the store (`[dialog]`).
#[derive(Clone, Debug)]
pub struct DlgParams {
    pub default_timeout_s: u64,
    pub early_timeout_s: u64,
    pub noack_timeout_s: u64,
    pub send_bye: bool,
    pub max_dialogs: usize,
    pub extra_hdrs: Vec<u8>,
    /// Record-Route parameter naming the dialog (`rr_param`).
    pub rr_param: String,
    pub bye_early_code: u16,
    pub bye_early_reason: Vec<u8>,
}

/// Why a dialog was not created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlgError {
    Full,
}

/// A profile definition.
#[derive(Clone, Debug)]
pub struct ProfileDef {
    pub name: String,
    pub has_value: bool,
}

/// Profile memberships, counted per (profile, value) and per profile.
pub struct Profiles {
    pub defs: Vec<ProfileDef>,
    counts: Striped<HashMap<(u16, Vec<u8>), u64>>,
    totals: Box<[AtomicU64]>,
}

impl Profiles {
    fn new(with_value: &str, no_value: &str) -> Profiles {
        let mut defs = Vec::new();
        for (list, has_value) in [(with_value, true), (no_value, false)] {
            for name in list.split(';').map(str::trim).filter(|n| !n.is_empty()) {
                if !defs.iter().any(|d: &ProfileDef| d.name == name) {
                    defs.push(ProfileDef {
                        name: name.to_string(),
                        has_value,
                    });
                }
            }
        }
        let totals = defs.iter().map(|_| AtomicU64::new(0)).collect();
        Profiles {
            defs,
            counts: Striped::new(64, |_| HashMap::new()),
            totals,
        }
    }

    /// The index of profile `name`.
    pub fn find(&self, name: &str) -> Option<u16> {
        self.defs
            .iter()
            .position(|d| d.name == name)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// A value as stored: empty for a profile without values.
    fn norm(&self, p: u16, value: &[u8]) -> Vec<u8> {
        match self.defs.get(p as usize) {
            Some(d) if d.has_value => value.to_vec(),
            _ => Vec::new(),
        }
    }

    fn add(&self, p: u16, value: &[u8]) {
        let mut part = self.counts.get(value);
        *part.entry((p, value.to_vec())).or_insert(0) += 1;
        if let Some(t) = self.totals.get(p as usize) {
            t.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, p: u16, value: &[u8]) {
        let mut part = self.counts.get(value);
        let key = (p, value.to_vec());
        if let Some(n) = part.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                part.remove(&key);
            }
            if let Some(t) = self.totals.get(p as usize) {
                let _ = t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
            }
        }
    }

    /// Dialogs in profile `p`; with `value` (a profile with values), only
    /// those inserted with it.
    pub fn size(&self, p: u16, value: Option<&[u8]>) -> u64 {
        let has_value = self.defs.get(p as usize).is_some_and(|d| d.has_value);
        match value {
            Some(v) if has_value => self
                .counts
                .get(v)
                .get(&(p, v.to_vec()))
                .copied()
                .unwrap_or(0),
            _ => self
                .totals
                .get(p as usize)
                .map_or(0, |t| t.load(Ordering::Relaxed)),
        }
    }
}

/// One hash entry: its dialogs and the next `h_id`.
#[derive(Default)]
pub struct Entry {
    dlgs: Vec<Dialog>,
    next_id: u32,
}

/// Module statistics (Kamailio's `dialog:*` counters).
#[derive(Default)]
pub struct DlgStats {
    pub processed: AtomicU64,
    pub expired: AtomicU64,
    pub failed: AtomicU64,
    pub full: AtomicU64,
}

/// The store.
pub struct Dialogs {
    entries: Striped<Entry>,
    /// Records held (deleted ones too until removed).
    held: AtomicUsize,
    /// Dialogs not deleted, and of those the early ones (states 1 and 2).
    active: AtomicU64,
    early: AtomicU64,
    pub stats: DlgStats,
    pub profiles: Profiles,
    pub params: DlgParams,
    epoch: Instant,
    last_full_log_s: AtomicU64,
    pending: std::sync::Mutex<Vec<PendingBye>>,
    pending_n: AtomicUsize,
}

/// A BYE to send.
pub struct Outgoing {
    pub dst: SocketAddr,
    pub bytes: Vec<u8>,
    /// The Via branch of the BYE (its replies name it).
    pub branch: Vec<u8>,
}

/// Via branch prefix of the BYEs the dialog module sends.
pub const BYE_BRANCH_PREFIX: &[u8] = b"z9hG4bKdlg";
/// Most BYEs waiting for their final reply (retransmitted meanwhile).
pub const BYE_PENDING_MAX: usize = 4096;
/// Retransmission of a BYE: first after T1, doubling up to T2, given up
/// after 64*T1 (RFC 3261 timers E and F, the defaults).
const BYE_T1_MS: u64 = 500;
const BYE_T2_MS: u64 = 4_000;
const BYE_TIMEOUT_MS: u64 = 32_000;

/// A BYE sent (or to send) and not answered yet.
struct PendingBye {
    out: Outgoing,
    next_ms: u64,
    interval_ms: u64,
    until_ms: u64,
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Dialogs {
    pub fn new(cfg: &crate::config::DialogConfig) -> Dialogs {
        Dialogs {
            entries: Striped::new(cfg.hash_size.clamp(1, 1 << 16), |_| Entry::default()),
            held: AtomicUsize::new(0),
            active: AtomicU64::new(0),
            early: AtomicU64::new(0),
            stats: DlgStats::default(),
            profiles: Profiles::new(&cfg.profiles_with_value, &cfg.profiles_no_value),
            params: DlgParams {
                default_timeout_s: cfg.default_timeout,
                early_timeout_s: cfg.early_timeout,
                noack_timeout_s: cfg.noack_timeout,
                send_bye: cfg.send_bye != 0,
                max_dialogs: cfg.max_dialogs,
                extra_hdrs: cfg.dlg_extra_hdrs.as_bytes().to_vec(),
                rr_param: cfg.rr_param.clone(),
                bye_early_code: cfg.bye_early_code,
                bye_early_reason: cfg.bye_early_reason.as_bytes().to_vec(),
            },
            epoch: Instant::now(),
            last_full_log_s: AtomicU64::new(0),
            pending: std::sync::Mutex::new(Vec::new()),
            pending_n: AtomicUsize::new(0),
        }
    }

    /// Milliseconds on the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True when no record is held: the timer and the hooks skip at once.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn early(&self) -> u64 {
        self.early.load(Ordering::Relaxed)
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Dialogs created, ended by their timeout, ended without a 2xx.
    pub fn stat_processed(&self) -> u64 {
        self.stats.processed.load(Ordering::Relaxed)
    }

    pub fn stat_expired(&self) -> u64 {
        self.stats.expired.load(Ordering::Relaxed)
    }

    pub fn stat_failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    pub fn full_count(&self) -> u64 {
        self.stats.full.load(Ordering::Relaxed)
    }

    pub fn hash_size(&self) -> usize {
        self.entries.parts()
    }

    fn entry_of(&self, callid: &[u8]) -> u32 {
        crate::partition::index(callid, self.entries.parts()) as u32
    }

    /// Creates the dialog of an initial INVITE (or returns the one a
    /// retransmission of it already created).
    pub fn create(&self, n: &NewDialog<'_>, now_ms: u64) -> Result<(DlgId, bool), DlgError> {
        let h_entry = self.entry_of(n.callid);
        let mut e = self.entries.at(h_entry as usize);
        if let Some(d) = e.dlgs.iter().find(|d| {
            d.state < ST_CONFIRMED_NA
                && d.callid == n.callid
                && d.caller.tag == n.from_tag
                && d.caller.cseq == n.cseq
        }) {
            return Ok((
                DlgId {
                    h_entry,
                    h_id: d.h_id,
                },
                false,
            ));
        }
        if self.held.load(Ordering::Relaxed) >= self.params.max_dialogs {
            self.stats.full.fetch_add(1, Ordering::Relaxed);
            return Err(DlgError::Full);
        }
        e.next_id = e.next_id.wrapping_add(1).max(1);
        let h_id = e.next_id;
        e.dlgs.push(Dialog {
            h_id,
            state: ST_UNCONFIRMED,
            callid: n.callid.to_vec(),
            caller: Leg {
                hdr: n.from_hdr.to_vec(),
                uri: n.from_uri.to_vec(),
                tag: n.from_tag.to_vec(),
                contact: n.contact.to_vec(),
                // toward the caller: the proxies that recorded a route
                // before us, nearest first
                route_set: n.record_route.clone(),
                addr: Some(n.src),
                cseq: n.cseq,
            },
            callee: Leg {
                hdr: n.to_hdr.to_vec(),
                uri: n.to_uri.to_vec(),
                cseq: n.cseq,
                ..Leg::default()
            },
            init_ts: unix_now_s(),
            start_ts: 0,
            lifetime_s: self.params.default_timeout_s,
            deadline_ms: now_ms.saturating_add(self.params.early_timeout_s * 1000),
            sflags: 0,
            timeout_bye: self.params.send_bye,
            noreset: false,
            vars: Vec::new(),
            profiles: Vec::new(),
            bind: n.bind,
            tx: None,
        });
        self.held.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.early.fetch_add(1, Ordering::Relaxed);
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        Ok((DlgId { h_entry, h_id }, true))
    }

    /// True at most once a second: whether a "table full" line may be logged.
    pub fn full_log_allowed(&self) -> bool {
        let now = unix_now_s();
        let last = self.last_full_log_s.load(Ordering::Relaxed);
        now != last
            && self
                .last_full_log_s
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Remembers BYEs until their final reply, retransmitting them
    /// meanwhile (UDP). `sent` false: not sent yet (the control plane's
    /// `dlg.end_dlg`; the next shard timer pass sends them from the SIP
    /// socket). Bounded: the BYEs beyond [`BYE_PENDING_MAX`] are not
    /// tracked (sent once when `sent`, else dropped); returns how many.
    pub fn track_byes(&self, out: Vec<Outgoing>, sent: bool, now_ms: u64) -> usize {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut refused = 0;
        for o in out {
            if q.len() >= BYE_PENDING_MAX {
                refused += 1;
                continue;
            }
            q.push(PendingBye {
                out: o,
                next_ms: if sent { now_ms + BYE_T1_MS } else { 0 },
                interval_ms: BYE_T1_MS,
                until_ms: now_ms + BYE_TIMEOUT_MS,
            });
        }
        self.pending_n.store(q.len(), Ordering::Relaxed);
        if refused > 0 {
            self.stats.full.fetch_add(refused as u64, Ordering::Relaxed);
        }
        refused
    }

    /// The BYEs due now (first sends and retransmissions); those past
    /// timer F are given up.
    pub fn due_byes(&self, now_ms: u64) -> Vec<Outgoing> {
        if self.pending_byes() == 0 {
            return Vec::new();
        }
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|p| p.until_ms > now_ms);
        let mut out = Vec::new();
        for p in q.iter_mut().filter(|p| p.next_ms <= now_ms) {
            out.push(Outgoing {
                dst: p.out.dst,
                bytes: p.out.bytes.clone(),
                branch: Vec::new(),
            });
            if p.next_ms > 0 {
                p.interval_ms = (p.interval_ms * 2).min(BYE_T2_MS);
            }
            p.next_ms = now_ms + p.interval_ms;
        }
        self.pending_n.store(q.len(), Ordering::Relaxed);
        out
    }

    /// A reply to one of our BYEs (`branch` starts with
    /// [`BYE_BRANCH_PREFIX`]): a final one stops its retransmissions.
    pub fn bye_replied(&self, branch: &[u8], code: u16) {
        if code < 200 || self.pending_byes() == 0 {
            return;
        }
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|p| p.out.branch != branch);
        self.pending_n.store(q.len(), Ordering::Relaxed);
    }

    /// BYEs waiting for their final reply.
    pub fn pending_byes(&self) -> usize {
        self.pending_n.load(Ordering::Relaxed)
    }

    /// Runs `f` on a dialog, its stripe locked.
    pub fn with<R>(&self, id: DlgId, f: impl FnOnce(&mut Dialog) -> R) -> Option<R> {
        if id.h_entry as usize >= self.entries.parts() {
            return None;
        }
        let mut e = self.entries.at(id.h_entry as usize);
        e.dlgs.iter_mut().find(|d| d.h_id == id.h_id).map(f)
    }

    /// The dialog of (Call-ID, From tag, To tag), either direction; an
    /// empty To tag matches a dialog whose callee has not answered with a
    /// tag yet (or any, by the caller's tag). Deleted dialogs are found too
    /// (a BYE's retransmission, `$dlg` after the BYE).
    pub fn lookup(&self, callid: &[u8], ftag: &[u8], ttag: &[u8]) -> Option<(DlgId, Dir)> {
        if self.is_empty() {
            return None;
        }
        let h_entry = self.entry_of(callid);
        let e = self.entries.at(h_entry as usize);
        let mut best: Option<(DlgId, Dir, bool)> = None;
        for d in e.dlgs.iter().filter(|d| d.callid == callid) {
            let dir = if d.caller.tag == ftag && (ttag.is_empty() || d.callee.tag == ttag) {
                Dir::Downstream
            } else if !ttag.is_empty() && d.callee.tag == ftag && d.caller.tag == ttag {
                Dir::Upstream
            } else {
                continue;
            };
            let live = d.state != ST_DELETED;
            let id = DlgId {
                h_entry,
                h_id: d.h_id,
            };
            // prefer a live dialog over a deleted one of the same Call-ID
            if best.is_none_or(|(_, _, l)| live && !l) {
                best = Some((id, dir, live));
            }
        }
        best.map(|(id, dir, _)| (id, dir))
    }

    /// A reply to the dialog's INVITE.
    pub fn on_reply(&self, id: DlgId, r: &ReplyInfo<'_>, now_ms: u64) {
        let mut ended = None;
        self.with(id, |d| {
            if d.state >= ST_CONFIRMED_NA {
                return;
            }
            match r.code {
                101..=199 if !r.to_tag.is_empty() => {
                    if d.state == ST_UNCONFIRMED {
                        d.state = ST_EARLY;
                    }
                    d.callee.tag = r.to_tag.to_vec();
                    d.callee.hdr = r.to_hdr.to_vec();
                }
                200..=299 => {
                    d.callee.tag = r.to_tag.to_vec();
                    d.callee.hdr = r.to_hdr.to_vec();
                    d.callee.contact = r.contact.to_vec();
                    let mut rs = r.downstream_rr.clone();
                    rs.reverse();
                    d.callee.route_set = rs;
                    d.callee.addr = Some(r.src);
                    d.state = ST_CONFIRMED_NA;
                    d.start_ts = unix_now_s();
                    d.deadline_ms = now_ms.saturating_add(d.lifetime_s.saturating_mul(1000));
                    self.early.fetch_sub(1, Ordering::Relaxed);
                }
                300.. => {
                    ended = Some(d.profiles.clone());
                    self.mark_deleted(d, now_ms);
                }
                _ => {}
            }
        });
        if let Some(p) = ended {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.drop_profiles(&p);
        }
    }

    /// An initial INVITE whose route ended without relaying it (a local
    /// negative reply, a drop): the dialog ends as failed.
    pub fn fail_unconfirmed(&self, id: DlgId, now_ms: u64) {
        let mut ended = None;
        self.with(id, |d| {
            if d.state < ST_CONFIRMED_NA {
                ended = Some(d.profiles.clone());
                self.mark_deleted(d, now_ms);
            }
        });
        if let Some(p) = ended {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.drop_profiles(&p);
        }
    }

    /// A request within the dialog (ACK, BYE, re-INVITE, ...), relayed.
    pub fn on_request(&self, id: DlgId, method: &[u8], dir: Dir, cseq: u32, now_ms: u64) {
        let mut ended = None;
        self.with(id, |d| {
            if d.state == ST_DELETED {
                return;
            }
            if method == b"BYE" {
                ended = Some(d.profiles.clone());
                self.mark_deleted(d, now_ms);
                return;
            }
            if method == b"ACK" {
                if d.state == ST_CONFIRMED_NA {
                    d.state = ST_CONFIRMED;
                }
                return;
            }
            if method != b"CANCEL" && method != b"PRACK" {
                match dir {
                    Dir::Downstream => d.caller.cseq = d.caller.cseq.max(cseq),
                    Dir::Upstream => d.callee.cseq = d.callee.cseq.max(cseq),
                }
            }
            if d.state >= ST_CONFIRMED_NA && !d.noreset {
                d.deadline_ms = now_ms.saturating_add(d.lifetime_s.saturating_mul(1000));
            }
        });
        if let Some(p) = ended {
            self.drop_profiles(&p);
        }
    }

    /// `dlg_set_timeout`: the dialog times out `timeout_s` from now (or,
    /// before it is confirmed, that long after it is).
    pub fn set_timeout(&self, id: DlgId, timeout_s: u64, now_ms: u64) -> bool {
        self.with(id, |d| {
            if d.state == ST_DELETED {
                return false;
            }
            d.lifetime_s = timeout_s;
            if d.state >= ST_CONFIRMED_NA {
                d.deadline_ms = now_ms.saturating_add(timeout_s.saturating_mul(1000));
            }
            true
        })
        .unwrap_or(false)
    }

    fn mark_deleted(&self, d: &mut Dialog, now_ms: u64) {
        if d.state == ST_DELETED {
            return;
        }
        if d.state < ST_CONFIRMED_NA {
            self.early.fetch_sub(1, Ordering::Relaxed);
        }
        d.state = ST_DELETED;
        d.deadline_ms = now_ms.saturating_add(LINGER_MS);
        self.active.fetch_sub(1, Ordering::Relaxed);
        // the memberships are dropped by the caller, outside this lock
        d.profiles = Vec::new();
    }

    fn drop_profiles(&self, p: &[(u16, Vec<u8>)]) {
        for (i, v) in p {
            self.profiles.remove(*i, v);
        }
    }

    /// Ends a dialog now (BYE requests built for `side` when it was
    /// confirmed; for an early dialog nothing is sent). Returns the BYEs.
    pub fn end(
        &self,
        id: DlgId,
        side: ByeSide,
        local: SocketAddr,
        now_ms: u64,
    ) -> Option<Vec<Outgoing>> {
        let mut ended = None;
        let out = self.with(id, |d| {
            if d.state == ST_DELETED {
                return None;
            }
            let out = if d.state >= ST_CONFIRMED_NA {
                bye_requests(d, id, side, local, &self.params.extra_hdrs)
            } else {
                // an early dialog ends unanswered: failed
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            };
            ended = Some(d.profiles.clone());
            self.mark_deleted(d, now_ms);
            Some(out)
        })?;
        if let Some(p) = ended {
            self.drop_profiles(&p);
        }
        out
    }

    /// Adds the dialog to a profile.
    pub fn set_profile(&self, id: DlgId, p: u16, value: &[u8]) -> bool {
        let v = self.profiles.norm(p, value);
        let ok = self
            .with(id, |d| {
                if d.state == ST_DELETED || d.profiles.len() >= MAX_PROFILES_PER_DLG {
                    return false;
                }
                d.profiles.push((p, v.clone()));
                true
            })
            .unwrap_or(false);
        if ok {
            self.profiles.add(p, &v);
        }
        ok
    }

    /// Removes the dialog from a profile (one membership).
    pub fn unset_profile(&self, id: DlgId, p: u16, value: &[u8]) -> bool {
        let v = self.profiles.norm(p, value);
        let ok = self
            .with(id, |d| {
                let has_value = self
                    .profiles
                    .defs
                    .get(p as usize)
                    .is_some_and(|x| x.has_value);
                let pos = d
                    .profiles
                    .iter()
                    .position(|(i, x)| *i == p && (!has_value || value.is_empty() || *x == v));
                match pos {
                    Some(i) => Some(d.profiles.remove(i)),
                    None => None,
                }
            })
            .flatten();
        match ok {
            Some((i, x)) => {
                self.profiles.remove(i, &x);
                true
            }
            None => false,
        }
    }

    /// Whether the dialog is in a profile (with `value`, if given).
    pub fn in_profile(&self, id: DlgId, p: u16, value: Option<&[u8]>) -> bool {
        let has_value = self
            .profiles
            .defs
            .get(p as usize)
            .is_some_and(|x| x.has_value);
        self.with(id, |d| {
            d.profiles
                .iter()
                .any(|(i, x)| *i == p && (!has_value || value.is_none_or(|v| v == x.as_slice())))
        })
        .unwrap_or(false)
    }

    /// Timer work for the stripes shard `shard` of `shards` looks after:
    /// early dialogs past `early_timeout` and confirmed ones past their
    /// lifetime end (the latter with BYEs when `timeout_bye`); deleted ones
    /// are removed after [`LINGER_MS`].
    pub fn tick(
        &self,
        shard: usize,
        shards: usize,
        local: SocketAddr,
        now_ms: u64,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.is_empty() {
            return out;
        }
        let mut dropped: Vec<(u16, Vec<u8>)> = Vec::new();
        for i in self.entries.parts_of(shard, shards) {
            let mut e = self.entries.at(i);
            if e.dlgs.is_empty() {
                continue;
            }
            let before = e.dlgs.len();
            let mut k = 0;
            while k < e.dlgs.len() {
                let d = &mut e.dlgs[k];
                if d.deadline_ms > now_ms {
                    k += 1;
                    continue;
                }
                if d.state == ST_DELETED {
                    e.dlgs.swap_remove(k);
                    continue;
                }
                let id = DlgId {
                    h_entry: i as u32,
                    h_id: d.h_id,
                };
                if d.state >= ST_CONFIRMED_NA {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    if d.timeout_bye {
                        out.extend(bye_requests(
                            d,
                            id,
                            ByeSide::All,
                            local,
                            &self.params.extra_hdrs,
                        ));
                    }
                } else {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                dropped.extend(d.profiles.iter().cloned());
                self.mark_deleted(d, now_ms);
                k += 1;
            }
            let removed = before - e.dlgs.len();
            if removed > 0 {
                self.held.fetch_sub(removed, Ordering::Relaxed);
            }
        }
        self.drop_profiles(&dropped);
        out
    }

    /// Every record, for `dlg.list` (at most `max`).
    pub fn list(&self, max: usize) -> Vec<(DlgId, Dialog)> {
        let mut v = Vec::new();
        for i in 0..self.entries.parts() {
            if v.len() >= max || self.is_empty() {
                break;
            }
            let e = self.entries.at(i);
            for d in &e.dlgs {
                if v.len() >= max {
                    break;
                }
                v.push((
                    DlgId {
                        h_entry: i as u32,
                        h_id: d.h_id,
                    },
                    d.clone(),
                ));
            }
        }
        v
    }
}

/// `dlg_bye` sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByeSide {
    Caller,
    Callee,
    All,
}

impl ByeSide {
    pub fn parse(s: &[u8]) -> Option<ByeSide> {
        match s {
            b"caller" => Some(ByeSide::Caller),
            b"callee" => Some(ByeSide::Callee),
            b"all" => Some(ByeSide::All),
            _ => None,
        }
    }
}

/// The BYE requests that end a confirmed dialog, as the proxy in its
/// middle sends them (RFC 3261 §12.2.1.1 for each side: R-URI the side's
/// Contact, Route the side's route set, From/To/Call-ID of the dialog as
/// that side knows it, CSeq one above what the other side sent).
pub fn bye_requests(
    d: &mut Dialog,
    id: DlgId,
    side: ByeSide,
    local: SocketAddr,
    extra: &[u8],
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    if matches!(side, ByeSide::Callee | ByeSide::All) {
        d.caller.cseq = d.caller.cseq.saturating_add(1);
        let (from, to, cseq) = (d.caller.hdr.clone(), d.callee.hdr.clone(), d.caller.cseq);
        if let Some(o) = one_bye(d, &d.callee, &from, &to, cseq, id, b'e', local, extra) {
            out.push(o);
        }
    }
    if matches!(side, ByeSide::Caller | ByeSide::All) {
        d.callee.cseq = d.callee.cseq.saturating_add(1);
        let (from, to, cseq) = (d.callee.hdr.clone(), d.caller.hdr.clone(), d.callee.cseq);
        if let Some(o) = one_bye(d, &d.caller, &from, &to, cseq, id, b'r', local, extra) {
            out.push(o);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn one_bye(
    d: &Dialog,
    target: &Leg,
    from: &[u8],
    to: &[u8],
    cseq: u32,
    id: DlgId,
    side: u8,
    local: SocketAddr,
    extra: &[u8],
) -> Option<Outgoing> {
    let ruri = if target.contact.is_empty() {
        target.uri.as_slice()
    } else {
        target.contact.as_slice()
    };
    // next hop: the first route (loose router), else the Contact, else
    // where the side's messages came from
    let dst = target
        .route_set
        .first()
        .and_then(|r| route_uri(r))
        .and_then(super::tm::resolve_uri)
        .or_else(|| super::tm::resolve_uri(ruri))
        .or(target.addr)?;
    let mut b = Vec::with_capacity(512);
    b.extend_from_slice(b"BYE ");
    b.extend_from_slice(ruri);
    b.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
    super::tm::push_host_port(&mut b, local);
    let branch = format!(
        "{}{}.{:x}.{:x}.{cseq}",
        std::str::from_utf8(BYE_BRANCH_PREFIX).unwrap_or(""),
        side as char,
        id.h_entry,
        id.h_id
    )
    .into_bytes();
    b.extend_from_slice(b";branch=");
    b.extend_from_slice(&branch);
    b.extend_from_slice(b"\r\n");
    for r in &target.route_set {
        b.extend_from_slice(b"Route: ");
        b.extend_from_slice(r);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"From: ");
    b.extend_from_slice(from);
    b.extend_from_slice(b"\r\nTo: ");
    b.extend_from_slice(to);
    b.extend_from_slice(b"\r\nCall-ID: ");
    b.extend_from_slice(&d.callid);
    b.extend_from_slice(format!("\r\nCSeq: {cseq} BYE\r\nMax-Forwards: 70\r\n").as_bytes());
    b.extend_from_slice(extra);
    b.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(Outgoing {
        dst,
        bytes: b,
        branch,
    })
}

/// The URI inside a Route value `<uri>;params`.
fn route_uri(r: &[u8]) -> Option<&[u8]> {
    let start = r.iter().position(|&c| c == b'<')? + 1;
    let len = r.get(start..)?.iter().position(|&c| c == b'>')?;
    r.get(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> Dialogs {
        let cfg = crate::config::DialogConfig {
            max_dialogs: max,
            profiles_with_value: "caller".into(),
            profiles_no_value: "calls ; inbound".into(),
            ..Default::default()
        };
        Dialogs::new(&cfg)
    }

    fn invite(callid: &str, ftag: &str, cseq: u32) -> NewDialog<'static> {
        let callid: &'static str = Box::leak(callid.to_string().into_boxed_str());
        let ftag: &'static str = Box::leak(ftag.to_string().into_boxed_str());
        let from: &'static str = Box::leak(format!("<sip:a@x>;tag={ftag}").into_boxed_str());
        NewDialog {
            callid: callid.as_bytes(),
            from_hdr: from.as_bytes(),
            from_uri: b"sip:a@x",
            from_tag: ftag.as_bytes(),
            to_hdr: b"<sip:b@y>",
            to_uri: b"sip:b@y",
            contact: b"sip:a@127.0.0.1:5071",
            record_route: vec![],
            cseq,
            src: "127.0.0.1:5071".parse().unwrap(),
            bind: "127.0.0.1:5060".parse().unwrap(),
        }
    }

    fn reply(code: u16) -> ReplyInfo<'static> {
        ReplyInfo {
            code,
            to_hdr: b"<sip:b@y>;tag=tt",
            to_tag: b"tt",
            contact: b"sip:b@127.0.0.1:5072",
            downstream_rr: vec![],
            src: "127.0.0.1:5072".parse().unwrap(),
        }
    }

    #[test]
    fn states_follow_replies_ack_and_bye() {
        let s = store(10);
        let id = s.create(&invite("c1", "ft", 1), 0).unwrap().0;
        // a retransmission finds the same dialog
        assert_eq!(s.create(&invite("c1", "ft", 1), 0).unwrap(), (id, false));
        assert_eq!(s.active(), 1);
        assert_eq!(s.early(), 1);
        s.on_reply(id, &reply(180), 10);
        assert_eq!(s.with(id, |d| d.state), Some(ST_EARLY));
        s.on_reply(id, &reply(200), 20);
        assert_eq!(s.with(id, |d| d.state), Some(ST_CONFIRMED_NA));
        assert_eq!(s.early(), 0);
        assert_eq!(s.lookup(b"c1", b"ft", b"tt"), Some((id, Dir::Downstream)));
        assert_eq!(s.lookup(b"c1", b"tt", b"ft"), Some((id, Dir::Upstream)));
        assert_eq!(s.lookup(b"c1", b"zz", b"tt"), None);
        s.on_request(id, b"ACK", Dir::Downstream, 1, 30);
        assert_eq!(s.with(id, |d| d.state), Some(ST_CONFIRMED));
        s.on_request(id, b"BYE", Dir::Upstream, 1, 40);
        assert_eq!(s.with(id, |d| d.state), Some(ST_DELETED));
        assert_eq!(s.active(), 0);
        // removed after the linger time by the timer
        let local = "127.0.0.1:5060".parse().unwrap();
        assert!(s.tick(0, 1, local, 41).is_empty());
        assert_eq!(s.held(), 1);
        s.tick(0, 1, local, 40 + LINGER_MS);
        assert_eq!(s.held(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn profiles_count_and_drop_on_end() {
        let s = store(10);
        let calls = s.profiles.find("calls").unwrap();
        let caller = s.profiles.find("caller").unwrap();
        let a = s.create(&invite("a", "1", 1), 0).unwrap().0;
        let b = s.create(&invite("b", "1", 1), 0).unwrap().0;
        assert!(s.set_profile(a, calls, b"ignored"));
        assert!(s.set_profile(b, calls, b""));
        assert!(s.set_profile(a, caller, b"alice"));
        assert!(s.set_profile(b, caller, b"bob"));
        assert_eq!(s.profiles.size(calls, None), 2);
        assert_eq!(s.profiles.size(caller, Some(b"alice")), 1);
        assert_eq!(s.profiles.size(caller, None), 2);
        assert!(s.in_profile(a, caller, Some(b"alice")));
        assert!(!s.in_profile(a, caller, Some(b"bob")));
        s.on_reply(a, &reply(486), 5);
        assert_eq!(s.profiles.size(calls, None), 1);
        assert_eq!(s.profiles.size(caller, Some(b"alice")), 0);
        assert!(s.unset_profile(b, caller, b"bob"));
        assert_eq!(s.profiles.size(caller, None), 0);
        assert_eq!(s.stats.failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn full_store_refuses_and_counts() {
        let s = store(1);
        s.create(&invite("a", "1", 1), 0).unwrap();
        assert_eq!(s.create(&invite("b", "1", 1), 0), Err(DlgError::Full));
        assert_eq!(s.full_count(), 1);
    }

    #[test]
    fn timeout_sends_bye_to_both_sides() {
        let s = store(10);
        let id = s.create(&invite("t", "ft", 7), 0).unwrap().0;
        s.with(id, |d| d.timeout_bye = true);
        s.on_reply(id, &reply(200), 0);
        assert!(s.set_timeout(id, 2, 0));
        let local = "127.0.0.1:5060".parse().unwrap();
        assert!(s.tick(0, 1, local, 1999).is_empty());
        let out = s.tick(0, 1, local, 2000);
        assert_eq!(out.len(), 2);
        let callee = String::from_utf8(out[0].bytes.clone()).unwrap();
        let caller = String::from_utf8(out[1].bytes.clone()).unwrap();
        assert_eq!(out[0].dst, "127.0.0.1:5072".parse().unwrap());
        assert_eq!(out[1].dst, "127.0.0.1:5071".parse().unwrap());
        assert!(
            callee.starts_with("BYE sip:b@127.0.0.1:5072 SIP/2.0\r\n"),
            "{callee}"
        );
        assert!(
            callee.contains("\r\nFrom: <sip:a@x>;tag=ft\r\nTo: <sip:b@y>;tag=tt\r\n"),
            "{callee}"
        );
        assert!(callee.contains("CSeq: 8 BYE"), "{callee}");
        assert!(
            caller.starts_with("BYE sip:a@127.0.0.1:5071 SIP/2.0\r\n"),
            "{caller}"
        );
        assert!(
            caller.contains("\r\nFrom: <sip:b@y>;tag=tt\r\nTo: <sip:a@x>;tag=ft\r\n"),
            "{caller}"
        );
        assert_eq!(s.with(id, |d| d.state), Some(ST_DELETED));
        assert_eq!(s.stats.expired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn byes_are_retransmitted_until_a_final_reply() {
        let s = store(10);
        let id = s.create(&invite("r", "ft", 1), 0).unwrap().0;
        s.on_reply(id, &reply(200), 0);
        let local = "127.0.0.1:5060".parse().unwrap();
        let out = s.end(id, ByeSide::All, local, 0).unwrap();
        assert_eq!(out.len(), 2);
        let (b0, b1) = (out[0].branch.clone(), out[1].branch.clone());
        assert!(b0.starts_with(BYE_BRANCH_PREFIX) && b0 != b1);
        assert_eq!(s.track_byes(out, true, 0), 0);
        assert!(s.due_byes(499).is_empty());
        assert_eq!(s.due_byes(500).len(), 2);
        // a provisional reply changes nothing; a final one stops that BYE
        s.bye_replied(&b0, 100);
        s.bye_replied(&b0, 200);
        assert_eq!(s.pending_byes(), 1);
        assert!(s.due_byes(1499).is_empty());
        assert_eq!(s.due_byes(1500).len(), 1);
        // given up at timer F
        assert!(s.due_byes(BYE_TIMEOUT_MS).is_empty());
        assert_eq!(s.pending_byes(), 0);
    }

    #[test]
    fn early_dialog_times_out_without_bye() {
        let s = store(10);
        let id = s.create(&invite("e", "ft", 1), 0).unwrap().0;
        let local = "127.0.0.1:5060".parse().unwrap();
        let out = s.tick(0, 1, local, 300_000);
        assert!(out.is_empty());
        assert_eq!(s.with(id, |d| d.state), Some(ST_DELETED));
    }
}
