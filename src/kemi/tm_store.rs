//! The transaction store every shard uses directly: the `txn::Table`s of
//! [`STRIPES`] lock stripes, so no message of a transaction waits for, or
//! is handed to, another core (docs/ARCHITECTURE.md, decision 6).
//!
//! A request's stripe is the hash of its §17.2.3 matching key (an INVITE,
//! its retransmissions, its ACK and the CANCEL that names it meet in one
//! stripe); a reply's stripe is written in the Via branch sipshard sent
//! (`z9hG4bKsS<stripe>.…`). Each call locks one stripe for one table
//! operation, never across a route. The datagrams an operation produces
//! are copied out under the lock into the calling shard's queue; timers
//! of stripe `i` are run by shard `i % shards`, which learns the stripe's
//! next deadline from an atomic written after every operation.

use crate::sip::Dest;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::tm::TmUser;
use crate::sip::SipMsg;
use crate::txn::{self, BranchRef, Cell, CellId, Event, Full, ReqMatch, RespAction};

/// Lock stripes of the transaction store.
pub const STRIPES: usize = 64;

pub type TmTable = txn::Table<TmUser>;

/// A transaction's handle: its stripe and its cell there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId {
    pub stripe: u16,
    pub cell: CellId,
}

/// Why a transaction was not created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The table is full, or the request has no usable matching key.
    Full,
    /// Another shard created it meanwhile: this request is a retransmission.
    Exists,
}

/// An atomic alone on its cache line.
#[repr(align(64))]
struct PaddedU64(AtomicU64);

/// The stripes, shared by every shard.
pub struct SharedTm {
    stripes: Box<[Mutex<TmTable>]>,
    /// Next deadline of each stripe (ms on the store's clock; MAX = none),
    /// one cache line each (shards write them from both cores).
    deadlines: Box<[PaddedU64]>,
    /// Earliest deadline among each shard's stripes (a lower bound).
    shard_min: Box<[AtomicU64]>,
    shards: usize,
    epoch: Instant,
    cfg: txn::TxnConfig,
}

impl SharedTm {
    pub fn new(cfg: &crate::config::TmConfig, shards: usize) -> SharedTm {
        let mut salt = [0u8; 4];
        let _ = getrandom::getrandom(&mut salt);
        let salt = u32::from_le_bytes(salt);
        let tcfg = txn::TxnConfig {
            t1_ms: cfg.t1_ms,
            t2_ms: cfg.t2_ms,
            t4_ms: cfg.t4_ms,
            fr_timer_ms: cfg.fr_timer_ms,
            fr_inv_timer_ms: cfg.fr_inv_timer_ms,
            wait_ms: cfg.wait_ms,
            max_cells: cfg.max_transactions.div_ceil(STRIPES).max(1),
            max_branches: cfg.max_branches,
        };
        let shards = shards.max(1);
        SharedTm {
            stripes: (0..STRIPES)
                .map(|i| Mutex::new(txn::Table::new(tcfg.clone(), i, salt)))
                .collect(),
            deadlines: (0..STRIPES)
                .map(|_| PaddedU64(AtomicU64::new(u64::MAX)))
                .collect(),
            shard_min: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
            shards,
            epoch: Instant::now(),
            cfg: tcfg,
        }
    }

    fn lock(&self, stripe: usize) -> MutexGuard<'_, TmTable> {
        // A panic while a stripe was locked leaves a table whose invariants
        // the panic may have broken in one cell at most; go on with it.
        self.stripes[stripe % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Datagrams produced under a stripe lock, back to back in one buffer.
#[derive(Default)]
struct OutQueue {
    buf: Vec<u8>,
    items: Vec<(Dest, u32, u32)>,
}

/// Sends one datagram now (the shard's socket, non-blocking).
pub type DirectSend = Box<dyn Fn(Dest, &[u8])>;

/// One shard's handle on the store.
pub struct TmHandle {
    shared: Arc<SharedTm>,
    shard: usize,
    out: RefCell<OutQueue>,
    key: RefCell<Vec<u8>>,
    /// Replies going upstream are sent under their stripe's lock, so two
    /// shards relaying replies of one transaction (a 180 and the 200) can
    /// never send them out of order.
    direct: RefCell<Option<DirectSend>>,
    /// When this shard last scanned its stripes (store clock, ms).
    last_tick: std::cell::Cell<u64>,
}

impl TmHandle {
    pub fn new(shared: Arc<SharedTm>, shard: usize) -> TmHandle {
        TmHandle {
            shared,
            shard,
            out: RefCell::new(OutQueue::default()),
            key: RefCell::new(Vec::with_capacity(128)),
            direct: RefCell::new(None),
            last_tick: std::cell::Cell::new(0),
        }
    }

    /// Installs the sender replies go out with (the shard's socket).
    pub fn set_direct_sender(&self, send: DirectSend) {
        *self.direct.borrow_mut() = Some(send);
    }

    /// Like [`TmHandle::with`], but the datagrams `f` produced are sent
    /// before the stripe is unlocked (when a sender is installed).
    fn with_sent<R>(&self, stripe: usize, f: impl FnOnce(&mut TmTable) -> R) -> R {
        let stripe = stripe % STRIPES;
        let mut t = self.shared.lock(stripe);
        let r = f(&mut t);
        if let Some(send) = self.direct.borrow().as_ref() {
            t.drain_transmits(|dst, b| send(dst, b));
        }
        self.settle(stripe, &mut t);
        r
    }

    /// Milliseconds on the store's clock (never 0).
    pub fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn config(&self) -> &txn::TxnConfig {
        &self.shared.cfg
    }

    /// Runs `f` on stripe `stripe`, then queues what it sent and publishes
    /// the stripe's next deadline.
    fn with<R>(&self, stripe: usize, f: impl FnOnce(&mut TmTable) -> R) -> R {
        let stripe = stripe % STRIPES;
        let mut t = self.shared.lock(stripe);
        let r = f(&mut t);
        self.settle(stripe, &mut t);
        r
    }

    fn settle(&self, stripe: usize, t: &mut TmTable) {
        if t.has_transmits() {
            let mut q = self.out.borrow_mut();
            let q = &mut *q;
            t.drain_transmits(|dst, b| {
                let start = q.buf.len() as u32;
                q.buf.extend_from_slice(b);
                q.items.push((dst, start, q.buf.len() as u32));
            });
        }
        let d = t.poll_timeout().unwrap_or(u64::MAX);
        let slot = &self.shared.deadlines[stripe].0;
        // Read first: most operations leave the deadline as it was, and a
        // read keeps the cache line shared between the cores.
        if slot.load(Ordering::SeqCst) != d && slot.swap(d, Ordering::SeqCst) != d && d != u64::MAX
        {
            let owner = &self.shared.shard_min[stripe % self.shared.shards];
            if d < owner.load(Ordering::SeqCst) {
                owner.fetch_min(d, Ordering::SeqCst);
            }
        }
    }

    fn request_stripe(&self, msg: &SipMsg<'_>, cancel_of: bool) -> Option<usize> {
        let mut key = self.key.borrow_mut();
        let ok = if cancel_of {
            txn::build::invite_key_of_cancel(msg, &mut key)
        } else {
            txn::build::server_key(msg, &mut key)
        };
        ok?;
        Some(crate::partition::index(&key, STRIPES))
    }

    fn id(stripe: usize, cell: CellId) -> TxId {
        TxId {
            stripe: stripe as u16,
            cell,
        }
    }

    /// [`txn::Table::on_request`] in the request's stripe (the key made
    /// once, for both).
    pub fn on_request(&self, msg: &SipMsg<'_>, now: u64) -> ReqMatch {
        match self.request_stripe(msg, false) {
            Some(st) => {
                let key = self.key.borrow();
                self.with(st, |t| t.on_request_keyed(msg, &key, now))
            }
            None => ReqMatch::None,
        }
    }

    /// Creates the request's transaction unless one exists (a shard that
    /// read a retransmission of it was faster).
    pub fn create(
        &self,
        msg: &SipMsg<'_>,
        reply_dst: Dest,
        now: u64,
        user: TmUser,
    ) -> Result<TxId, CreateError> {
        let st = self.request_stripe(msg, false).ok_or(CreateError::Full)?;
        let key = self.key.borrow();
        self.with(st, |t| {
            if t.on_request_keyed(msg, &key, now) != ReqMatch::None {
                return Err(CreateError::Exists);
            }
            t.create_keyed(msg, &key, reply_dst, now, user)
                .map(|c| Self::id(st, c))
                .map_err(|Full| CreateError::Full)
        })
    }

    pub fn find_invite_for_cancel(&self, msg: &SipMsg<'_>) -> Option<TxId> {
        let st = self.request_stripe(msg, true)?;
        self.with(st, |t| t.find_invite_for_cancel(msg))
            .map(|c| Self::id(st, c))
    }

    pub fn get_map<R>(&self, id: TxId, f: impl FnOnce(&Cell<TmUser>) -> R) -> Option<R> {
        self.with(id.stripe as usize, |t| t.get(id.cell).map(f))
    }

    pub fn get_mut_map<R>(&self, id: TxId, f: impl FnOnce(&mut Cell<TmUser>) -> R) -> Option<R> {
        self.with(id.stripe as usize, |t| t.get_mut(id.cell).map(f))
    }

    pub fn exists(&self, id: TxId) -> bool {
        self.get_map(id, |_| ()).is_some()
    }

    pub fn release(&self, id: TxId) {
        self.with(id.stripe as usize, |t| t.release(id.cell))
    }

    pub fn reply(&self, id: TxId, code: u16, bytes: Vec<u8>, now: u64) -> bool {
        self.with_sent(id.stripe as usize, |t| t.reply(id.cell, code, bytes, now))
    }

    pub fn cancel(&self, id: TxId, now: u64) {
        self.with(id.stripe as usize, |t| t.cancel(id.cell, now))
    }

    /// The next branch's id and its Via branch parameter.
    pub fn next_branch(&self, id: TxId) -> Option<(BranchRef, Vec<u8>)> {
        self.with(id.stripe as usize, |t| {
            let r = t.next_branch(id.cell)?;
            let mut b = Vec::with_capacity(40);
            t.write_branch(r, &mut b);
            Some((r, b))
        })
    }

    pub fn add_branch(
        &self,
        id: TxId,
        req: Vec<u8>,
        dst: Dest,
        now: u64,
        bflags: u32,
    ) -> Result<u8, Full> {
        self.with(id.stripe as usize, |t| {
            let b = t.add_branch(id.cell, req, dst, now)?;
            if let Some(c) = t.get_mut(id.cell) {
                c.user.bflags.push(bflags);
            }
            Ok(b)
        })
    }

    /// The transaction and branch of a received reply (its stripe is in
    /// the branch id).
    pub fn match_response(&self, msg: &SipMsg<'_>) -> Option<(TxId, u8, bool)> {
        let via = msg.top_via().ok()?;
        let st = txn::build::branch_stripe(via.branch()?)?;
        if st >= STRIPES {
            return None;
        }
        self.with(st, |t| t.match_response(msg))
            .map(|(c, b, cancel)| (Self::id(st, c), b, cancel))
    }

    /// A reply on branch `b`: the branch and the response context take it
    /// ([`txn::Table::on_response`]); a reply to forward goes upstream in
    /// the same locked step. Returns the action (`Forward` with its bytes
    /// already sent).
    pub fn on_response(
        &self,
        id: TxId,
        b: u8,
        is_cancel: bool,
        msg: &SipMsg<'_>,
        now: u64,
    ) -> RespAction {
        let code = msg.status().unwrap_or(0);
        self.with_sent(id.stripe as usize, |t| {
            match t.on_response(id.cell, b, is_cancel, msg, now) {
                RespAction::Forward(bytes) => {
                    t.reply(id.cell, code, bytes, now);
                    RespAction::Forward(Vec::new())
                }
                other => other,
            }
        })
    }

    pub fn best(&self, id: TxId) -> Option<(u8, u16)> {
        self.with(id.stripe as usize, |t| t.best(id.cell))
    }

    /// The first live transaction `pred` accepts, in any stripe.
    pub fn find(&self, mut pred: impl FnMut(&Cell<TmUser>) -> bool) -> Option<TxId> {
        (0..STRIPES).find_map(|st| {
            self.with(st, |t| t.find(&mut pred))
                .map(|c| Self::id(st, c))
        })
    }

    /// Transactions alive in every stripe.
    pub fn len(&self) -> usize {
        (0..STRIPES).map(|st| self.shared.lock(st).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest deadline among this shard's stripes (a lower bound:
    /// it may be earlier than the real one, never later).
    pub fn next_deadline(&self) -> Option<u64> {
        let d = self.shared.shard_min[self.shard % self.shared.shards].load(Ordering::SeqCst);
        (d != u64::MAX).then_some(d)
    }

    /// True when the shard should scan its stripes: a deadline is due, or
    /// a second passed since the last scan (a safety net: the published
    /// minimum is a hint written by other shards without a lock).
    pub fn tick_due(&self, now: u64) -> bool {
        self.next_deadline().is_some_and(|d| d <= now)
            || now.saturating_sub(self.last_tick.get()) >= 1000
    }

    /// Fires the due timers of this shard's stripes; returns the events
    /// (failure routes to run, expired transactions to answer).
    pub fn tick(&self, now: u64) -> Vec<(TxId, Event)> {
        let n = self.shared.shards;
        let me = self.shard % n;
        let mut events = Vec::new();
        self.last_tick.set(now);
        // A swap (a full barrier), so no other shard's minimum published
        // before the scan reads its stripe is overwritten after it.
        self.shared.shard_min[me].swap(u64::MAX, Ordering::SeqCst);
        for st in (me..STRIPES).step_by(n) {
            let d = self.shared.deadlines[st].0.load(Ordering::SeqCst);
            if d <= now {
                self.with(st, |t| {
                    t.handle_timeout(now);
                    while let Some(ev) = t.poll_event() {
                        let (Event::Completed(c) | Event::Expired(c)) = ev;
                        events.push((Self::id(st, c), ev));
                    }
                });
            } else if d != u64::MAX {
                self.shared.shard_min[me].fetch_min(d, Ordering::AcqRel);
            }
        }
        events
    }

    /// True when datagrams wait in this shard's queue.
    pub fn has_output(&self) -> bool {
        !self.out.borrow().items.is_empty()
    }

    /// Hands this shard's queued datagrams to `send`.
    pub fn drain(&self, mut send: impl FnMut(Dest, &[u8])) {
        let mut q = self.out.borrow_mut();
        for &(dst, a, b) in &q.items {
            send(dst, &q.buf[a as usize..b as usize]);
        }
        q.items.clear();
        q.buf.clear();
        if q.buf.capacity() > 1 << 20 {
            q.buf.shrink_to(64 << 10);
        }
    }
}
