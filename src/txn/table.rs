//! The transaction table: cells, their state machines, timers and matching.

use crate::sip::Dest;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::build::{self, BranchRef};
use super::TxnConfig;
use crate::sip::{Edits, HdrName, Method, SipMsg};

/// A cell's handle: slot and generation (a stale handle finds nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CellId {
    slot: u32,
    gen: u32,
}

/// RFC 3261 §17.2 server transaction states (RFC 6026 Accepted included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE, nothing sent yet.
    Trying,
    /// A provisional reply was sent (an INVITE starts here).
    Proceeding,
    /// A final reply was sent (non-2xx for INVITE).
    Completed,
    /// INVITE: the ACK for the non-2xx arrived.
    Confirmed,
    /// INVITE: a 2xx was sent (RFC 6026).
    Accepted,
    Terminated,
}

/// RFC 3261 §17.1 client transaction states (RFC 6026 Accepted included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no reply yet.
    Calling,
    /// Non-INVITE sent, no reply yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE: a 2xx arrived (RFC 6026).
    Accepted,
    Terminated,
}

/// One branch: a client transaction of the cell.
#[derive(Debug)]
pub struct Branch {
    /// The request as sent (retransmissions, CANCEL and ACK derive from it).
    pub req: Vec<u8>,
    pub dst: Dest,
    pub state: ClientState,
    /// Highest provisional or final code received (0: none).
    pub last_code: u16,
    /// Final code for response selection: received, or 408 when the branch
    /// timed out; 0 while the branch is pending.
    pub final_code: u16,
    /// The final reply as received, top Via removed (ready to forward);
    /// `None` for a local timeout.
    pub reply: Option<Vec<u8>>,
    /// Ended by a timer, not by a reply.
    pub timed_out: bool,
    /// Replied (any code from 101 up).
    pub replied: bool,
    /// A CANCEL is owed once a provisional reply arrives (§9.1).
    cancel_wanted: bool,
    /// The CANCEL sent, and its client transaction state.
    cancel: Option<(Vec<u8>, ClientState)>,
    /// The hop-by-hop ACK for a non-2xx final reply (resent on retransmits).
    ack: Vec<u8>,
    retrans_ms: u64,
    cancel_retrans_ms: u64,
    timers: [u64; BRANCH_TIMERS],
}

impl Branch {
    /// No final reply yet (nor a timeout).
    pub fn pending(&self) -> bool {
        self.final_code == 0
    }
}

/// A transaction: the server side, its branches and the response context.
#[derive(Debug)]
pub struct Cell<U> {
    gen: u32,
    pub invite: bool,
    pub method: Method,
    /// The request as received.
    pub req: Vec<u8>,
    /// Where replies to the client go (RFC 3261 §18.2.2 / RFC 3581).
    pub reply_dst: Dest,
    key: Box<[u8]>,
    pub server: ServerState,
    /// The last reply sent upstream (retransmitted on request retransmits).
    pub last_reply: Vec<u8>,
    /// Its code (0: none sent yet).
    pub last_code: u16,
    /// A 2xx went upstream (INVITE: later 2xx are still forwarded).
    pub answered: bool,
    server_retrans_ms: u64,
    server_timers: [u64; SERVER_TIMERS],
    pub branches: Vec<Branch>,
    /// A CANCEL for this INVITE arrived.
    pub canceled: bool,
    /// Branch timers for this cell (`t_set_fr`).
    pub fr_timer_ms: u64,
    pub fr_inv_timer_ms: u64,
    /// Event::Completed was reported for the current set of branches.
    completed_reported: bool,
    /// The transaction user's data (route names, flags, ...).
    pub user: U,
}

impl<U> Cell<U> {
    /// Final reply sent upstream.
    pub fn is_final(&self) -> bool {
        self.last_code >= 200
    }
    /// Every branch has a final code (true for a cell without branches).
    pub fn all_final(&self) -> bool {
        self.branches.iter().all(|b| !b.pending())
    }
    pub fn pending_branches(&self) -> usize {
        self.branches.iter().filter(|b| b.pending()).count()
    }
}

/// What a received request turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqMatch {
    /// No transaction: the request is new (or an ACK for a 2xx).
    None,
    /// A retransmission, absorbed (the last reply, if any, was resent).
    Retransmission(CellId),
    /// The ACK for a non-2xx final reply of this proxy, absorbed.
    Ack(CellId),
}

/// What the caller does with a reply received on a branch.
#[derive(Debug, PartialEq, Eq)]
pub enum RespAction {
    /// Nothing more (a 100, a retransmission, a reply to a CANCEL, a reply
    /// the response context keeps for now).
    Absorbed,
    /// Forward this reply upstream ([`Table::reply`]): a provisional or a
    /// 2xx. The bytes are the reply without its top Via.
    Forward(Vec<u8>),
    /// Every branch is final and none answered 2xx: the caller runs the
    /// failure route or sends [`Table::best`] upstream.
    Completed,
}

/// What the table tells its user between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Every branch of the cell is final (the last by a timeout) and none
    /// answered 2xx: as [`RespAction::Completed`].
    Completed(CellId),
    /// The cell's guard timer fired with no final reply sent upstream (the
    /// route created a transaction and never replied or relayed): the user
    /// replies (408); the cell is freed one `wait_ms` later regardless.
    Expired(CellId),
}

/// The table is full (`max_cells` / `max_branches`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Counters of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnStats {
    pub created: u64,
    pub freed: u64,
    pub branches: u64,
    pub request_retransmissions_absorbed: u64,
    pub reply_retransmissions_absorbed: u64,
    pub retransmissions_sent: u64,
    pub timeouts: u64,
    pub cancels_sent: u64,
    pub acks_sent: u64,
    pub full: u64,
}

const SERVER_TIMERS: usize = 3;
const T_SRV_RETRANS: u16 = 0; // G
const T_SRV_END: u16 = 1; // H, I, J, L
const T_GUARD: u16 = 2;

const BRANCH_TIMERS: usize = 5;
const T_BR_RETRANS: u16 = 0; // A, E
const T_BR_FR: u16 = 1; // B, F, C
const T_BR_END: u16 = 2; // D, K, M
const T_CANCEL_RETRANS: u16 = 3; // E of the CANCEL
const T_CANCEL_END: u16 = 4; // F, then K of the CANCEL
const BRANCH_KEY_BASE: u16 = 8;

fn branch_key(b: u8, t: u16) -> u16 {
    BRANCH_KEY_BASE + b as u16 * 8 + t
}

enum Payload {
    LastReply(CellId),
    BranchReq(CellId, u8),
    Cancel(CellId, u8),
    Ack(CellId, u8),
}

struct Transmit {
    dst: Dest,
    what: Payload,
}

/// One shard's transactions.
pub struct Table<U> {
    cfg: TxnConfig,
    shard: usize,
    salt: u32,
    slots: Vec<Option<Cell<U>>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    index: HashMap<Box<[u8]>, u32>,
    heap: BinaryHeap<Reverse<(u64, u32, u32, u16)>>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    key_buf: Vec<u8>,
    live: usize,
    pub stats: TxnStats,
}

impl<U> Table<U> {
    /// `salt` goes into every branch id, so replies to a previous run's
    /// branches never match this run's cells.
    pub fn new(cfg: TxnConfig, shard: usize, salt: u32) -> Table<U> {
        Table {
            cfg,
            shard,
            salt,
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            key_buf: Vec::new(),
            live: 0,
            stats: TxnStats::default(),
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.cfg
    }

    /// Cells alive.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn get(&self, id: CellId) -> Option<&Cell<U>> {
        self.slots
            .get(id.slot as usize)?
            .as_ref()
            .filter(|c| c.gen == id.gen)
    }

    pub fn get_mut(&mut self, id: CellId) -> Option<&mut Cell<U>> {
        self.slots
            .get_mut(id.slot as usize)?
            .as_mut()
            .filter(|c| c.gen == id.gen)
    }

    // ---- server side -------------------------------------------------

    /// Matches a received request against the server transactions
    /// (§17.2.3, RFC 2543 fallback) and absorbs it when it is a
    /// retransmission or the ACK of a non-2xx final reply.
    pub fn on_request(&mut self, msg: &SipMsg<'_>, now: u64) -> ReqMatch {
        let mut key = std::mem::take(&mut self.key_buf);
        let r = match build::server_key(msg, &mut key) {
            Some(()) => self.on_request_keyed(msg, &key, now),
            None => ReqMatch::None,
        };
        self.key_buf = key;
        r
    }

    /// [`Table::on_request`] with the request's [`build::server_key`]
    /// already made (a caller that also needed it, to pick a table).
    pub fn on_request_keyed(&mut self, msg: &SipMsg<'_>, key: &[u8], now: u64) -> ReqMatch {
        let found = self.index.get(key).copied();
        let Some(slot) = found else {
            return ReqMatch::None;
        };
        let Some(cell) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return ReqMatch::None;
        };
        let id = CellId {
            slot,
            gen: cell.gen,
        };
        if msg.method() == Some(Method::Ack) {
            if !cell.invite {
                return ReqMatch::None;
            }
            return match cell.server {
                ServerState::Completed => {
                    cell.server = ServerState::Confirmed;
                    self.disarm(id, T_SRV_RETRANS);
                    let t4 = self.cfg.t4_ms;
                    self.arm(id, T_SRV_END, now + t4);
                    ReqMatch::Ack(id)
                }
                ServerState::Confirmed => {
                    self.stats.request_retransmissions_absorbed += 1;
                    ReqMatch::Ack(id)
                }
                // An ACK for a 2xx belongs to the dialog, not to us.
                ServerState::Accepted | ServerState::Terminated => ReqMatch::None,
                // An ACK before any final reply: nothing to acknowledge.
                _ => ReqMatch::Ack(id),
            };
        }
        self.stats.request_retransmissions_absorbed += 1;
        match cell.server {
            ServerState::Proceeding | ServerState::Completed if cell.last_code != 0 => {
                let dst = cell.reply_dst;
                self.out.push_back(Transmit {
                    dst,
                    what: Payload::LastReply(id),
                });
                self.stats.retransmissions_sent += 1;
            }
            _ => {}
        }
        ReqMatch::Retransmission(id)
    }

    /// The INVITE cell a received CANCEL refers to.
    pub fn find_invite_for_cancel(&mut self, msg: &SipMsg<'_>) -> Option<CellId> {
        let mut key = std::mem::take(&mut self.key_buf);
        let found = build::invite_key_of_cancel(msg, &mut key)
            .and_then(|()| self.index.get(key.as_slice()).copied());
        self.key_buf = key;
        let slot = found?;
        let cell = self.slots.get(slot as usize)?.as_ref()?;
        Some(CellId {
            slot,
            gen: cell.gen,
        })
    }

    /// Creates the server transaction of `msg` (a request [`on_request`]
    /// did not match). `reply_dst` is where its replies go.
    ///
    /// [`on_request`]: Table::on_request
    pub fn create(
        &mut self,
        msg: &SipMsg<'_>,
        reply_dst: Dest,
        now: u64,
        user: U,
    ) -> Result<CellId, Full> {
        let mut key = std::mem::take(&mut self.key_buf);
        let r = match build::server_key(msg, &mut key) {
            Some(()) => self.create_keyed(msg, &key, reply_dst, now, user),
            None => Err(Full),
        };
        self.key_buf = key;
        r
    }

    /// [`Table::create`] with the request's [`build::server_key`] already
    /// made.
    pub fn create_keyed(
        &mut self,
        msg: &SipMsg<'_>,
        key: &[u8],
        reply_dst: Dest,
        now: u64,
        user: U,
    ) -> Result<CellId, Full> {
        if self.live >= self.cfg.max_cells {
            self.stats.full += 1;
            return Err(Full);
        }
        let method = msg.method().ok_or(Full)?;
        let key_box: Box<[u8]> = key.into();
        if self.index.contains_key(&key_box) {
            // Unmatchable, or a twin of a live cell: not a new transaction.
            return Err(Full);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gens[slot as usize].wrapping_add(1);
        self.gens[slot as usize] = gen;
        let invite = method == Method::Invite;
        let cell = Cell {
            gen,
            invite,
            method,
            req: msg.buf[..msg.parsed.msg_len as usize].to_vec(),
            reply_dst,
            key: key_box.clone(),
            server: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_reply: Vec::new(),
            last_code: 0,
            answered: false,
            server_retrans_ms: self.cfg.t1_ms,
            server_timers: [0; SERVER_TIMERS],
            branches: Vec::new(),
            canceled: false,
            fr_timer_ms: self.cfg.fr_timer_ms,
            fr_inv_timer_ms: self.cfg.fr_inv_timer_ms,
            completed_reported: false,
            user,
        };
        self.slots[slot as usize] = Some(cell);
        self.index.insert(key_box, slot);
        self.live += 1;
        self.stats.created += 1;
        let id = CellId { slot, gen };
        let guard = self.guard_ms();
        self.arm(id, T_GUARD, now + guard);
        Ok(id)
    }

    fn guard_ms(&self) -> u64 {
        self.cfg.fr_timer_ms.max(self.cfg.fr_inv_timer_ms) + 64 * self.cfg.t1_ms
    }

    /// Sends `bytes` (a reply with code `code`) upstream on the cell's
    /// server transaction, and moves it on. False when the transaction can
    /// no longer send that reply (a final one went already; a later 2xx
    /// for an INVITE still goes).
    pub fn reply(&mut self, id: CellId, code: u16, bytes: Vec<u8>, now: u64) -> bool {
        let cfg = self.cfg.clone();
        let Some(cell) = self.get_mut(id) else {
            return false;
        };
        let ok = match (cell.server, code) {
            (ServerState::Terminated | ServerState::Confirmed, _) => false,
            (_, 100..=199) => !cell.is_final(),
            (ServerState::Accepted, 200..=299) => true,
            (ServerState::Completed, _) => false,
            _ => !cell.is_final(),
        };
        if !ok {
            return false;
        }
        let dst = cell.reply_dst;
        cell.last_reply = bytes;
        cell.last_code = code;
        let invite = cell.invite;
        match code {
            100..=199 => cell.server = ServerState::Proceeding,
            200..=299 if invite => {
                cell.server = ServerState::Accepted;
                cell.answered = true;
            }
            _ => cell.server = ServerState::Completed,
        }
        let server = cell.server;
        cell.server_retrans_ms = cfg.t1_ms;
        self.out.push_back(Transmit {
            dst,
            what: Payload::LastReply(id),
        });
        match server {
            ServerState::Accepted => {
                self.arm(id, T_SRV_END, now + cfg.wait_ms);
            }
            ServerState::Completed if invite => {
                self.arm(id, T_SRV_RETRANS, now + cfg.t1_ms);
                self.arm(id, T_SRV_END, now + 64 * cfg.t1_ms);
            }
            ServerState::Completed => {
                self.arm(id, T_SRV_END, now + cfg.wait_ms);
            }
            _ => {}
        }
        true
    }

    // ---- client side (branches) --------------------------------------

    /// The id the next branch of `id` will have; write it into the Via of
    /// the request with [`Table::write_branch`].
    pub fn next_branch(&self, id: CellId) -> Option<BranchRef> {
        let cell = self.get(id)?;
        if cell.branches.len() >= self.cfg.max_branches {
            return None;
        }
        Some(BranchRef {
            slot: id.slot,
            gen: id.gen,
            branch: cell.branches.len() as u8,
        })
    }

    /// Writes the Via branch parameter value of branch `r`.
    pub fn write_branch(&self, r: BranchRef, out: &mut Vec<u8>) {
        build::write_branch(out, self.shard, self.salt, r);
    }

    /// Adds a branch whose request `req` (carrying the id from
    /// [`Table::next_branch`]) is sent to `dst` now, and starts its timers.
    pub fn add_branch(
        &mut self,
        id: CellId,
        req: Vec<u8>,
        dst: Dest,
        now: u64,
    ) -> Result<u8, Full> {
        let t1 = self.cfg.t1_ms;
        let max = self.cfg.max_branches;
        let Some(cell) = self.get_mut(id) else {
            return Err(Full);
        };
        if cell.branches.len() >= max || cell.server == ServerState::Terminated {
            return Err(Full);
        }
        let b = cell.branches.len() as u8;
        let fr = cell.fr_timer_ms;
        let invite = cell.invite;
        cell.branches.push(Branch {
            req,
            dst,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            last_code: 0,
            final_code: 0,
            reply: None,
            timed_out: false,
            replied: false,
            cancel_wanted: false,
            cancel: None,
            ack: Vec::new(),
            retrans_ms: t1,
            cancel_retrans_ms: t1,
            timers: [0; BRANCH_TIMERS],
        });
        cell.completed_reported = false;
        self.stats.branches += 1;
        self.out.push_back(Transmit {
            dst,
            what: Payload::BranchReq(id, b),
        });
        self.arm(id, branch_key(b, T_BR_RETRANS), now + t1);
        self.arm(id, branch_key(b, T_BR_FR), now + fr);
        // The guard outlives every branch (serial forks add branches late;
        // t_set_fr may have lengthened this cell's timers).
        let own = self
            .get(id)
            .map(|c| c.fr_timer_ms.max(c.fr_inv_timer_ms) + 64 * t1)
            .unwrap_or(0);
        let guard = now + self.guard_ms().max(own);
        if self.deadline_of(id, T_GUARD).is_some_and(|g| g < guard) {
            self.arm(id, T_GUARD, guard);
        }
        Ok(b)
    }

    /// The cell and branch a received reply belongs to, and whether it is
    /// the reply to that branch's CANCEL.
    pub fn match_response(&self, msg: &SipMsg<'_>) -> Option<(CellId, u8, bool)> {
        let via = msg.top_via().ok()?;
        let r = build::parse_branch(via.branch()?, self.shard, self.salt)?;
        let id = CellId {
            slot: r.slot,
            gen: r.gen,
        };
        let cell = self.get(id)?;
        cell.branches.get(r.branch as usize)?;
        let cseq = msg.cseq().ok()?;
        let is_cancel = cseq.method == Method::Cancel;
        if !is_cancel && cseq.method != cell.method {
            return None;
        }
        Some((id, r.branch, is_cancel))
    }

    /// Runs a reply received on branch `b` of `id` through the branch's
    /// client transaction and the cell's response context (§16.7).
    pub fn on_response(
        &mut self,
        id: CellId,
        b: u8,
        is_cancel_reply: bool,
        msg: &SipMsg<'_>,
        now: u64,
    ) -> RespAction {
        let cfg = self.cfg.clone();
        let Some(code) = msg.status() else {
            return RespAction::Absorbed;
        };
        let Some(cell) = self.get_mut(id) else {
            return RespAction::Absorbed;
        };
        let invite = cell.invite;
        let fr_inv = cell.fr_inv_timer_ms;
        let Some(br) = cell.branches.get_mut(b as usize) else {
            return RespAction::Absorbed;
        };
        if is_cancel_reply {
            if let Some((_, st)) = &mut br.cancel {
                if code >= 200 && *st != ClientState::Completed {
                    *st = ClientState::Completed;
                    self.disarm(id, branch_key(b, T_CANCEL_RETRANS));
                    self.arm(id, branch_key(b, T_CANCEL_END), now + cfg.t4_ms);
                }
            }
            return RespAction::Absorbed;
        }
        match br.state {
            ClientState::Terminated => {
                // A late 2xx is still forwarded (§16.7 step 5); the rest is
                // absorbed.
                if invite && (200..300).contains(&code) {
                    return RespAction::Forward(strip_top_via(msg));
                }
                self.stats.reply_retransmissions_absorbed += 1;
                return RespAction::Absorbed;
            }
            ClientState::Completed => {
                let resend_ack = invite && code >= 300 && !br.ack.is_empty();
                let dst = br.dst;
                self.stats.reply_retransmissions_absorbed += 1;
                if resend_ack {
                    self.out.push_back(Transmit {
                        dst,
                        what: Payload::Ack(id, b),
                    });
                    self.stats.acks_sent += 1;
                }
                return RespAction::Absorbed;
            }
            ClientState::Accepted => {
                if (200..300).contains(&code) {
                    return RespAction::Forward(strip_top_via(msg));
                }
                self.stats.reply_retransmissions_absorbed += 1;
                return RespAction::Absorbed;
            }
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding => {}
        }
        br.last_code = br.last_code.max(code);
        if code < 200 {
            let first = matches!(br.state, ClientState::Calling | ClientState::Trying);
            br.state = ClientState::Proceeding;
            if code > 100 {
                br.replied = true;
            }
            let want_cancel = br.cancel_wanted && br.cancel.is_none();
            if first {
                if invite {
                    self.disarm(id, branch_key(b, T_BR_RETRANS));
                    if !self.branch_of(id, b).is_some_and(|br| br.timed_out) {
                        self.arm(id, branch_key(b, T_BR_FR), now + fr_inv);
                    }
                } else {
                    self.arm(id, branch_key(b, T_BR_RETRANS), now + cfg.t2_ms);
                }
            }
            if want_cancel {
                self.send_cancel(id, b, now);
            }
            let Some(cell) = self.get(id) else {
                return RespAction::Absorbed;
            };
            let br = &cell.branches[b as usize];
            if code == 100 || !br.pending() || cell.is_final() || cell.canceled {
                return RespAction::Absorbed;
            }
            return RespAction::Forward(strip_top_via(msg));
        }
        // A final reply.
        br.replied = true;
        self.disarm(id, branch_key(b, T_BR_RETRANS));
        self.disarm(id, branch_key(b, T_BR_FR));
        let Some(cell) = self.get_mut(id) else {
            return RespAction::Absorbed;
        };
        let br = &mut cell.branches[b as usize];
        let was_pending = br.pending();
        if (200..300).contains(&code) {
            if was_pending {
                br.final_code = code;
            }
            if invite {
                br.state = ClientState::Accepted;
                self.arm(id, branch_key(b, T_BR_END), now + cfg.wait_ms);
                // §16.7 step 10: CANCEL every other pending branch.
                self.cancel_pending(id, Some(b), now);
                return RespAction::Forward(strip_top_via(msg));
            }
            br.state = ClientState::Completed;
            self.arm(id, branch_key(b, T_BR_END), now + cfg.t4_ms);
            let Some(cell) = self.get(id) else {
                return RespAction::Absorbed;
            };
            if cell.is_final() {
                return RespAction::Absorbed;
            }
            return RespAction::Forward(strip_top_via(msg));
        }
        // 3xx-6xx.
        br.state = ClientState::Completed;
        if invite {
            let to = msg.header(HdrName::To).unwrap_or(b"");
            let mut ack = Vec::new();
            if build::write_cancel_or_ack(&br.req, Some(to), &mut ack) {
                br.ack = ack;
                let dst = br.dst;
                self.out.push_back(Transmit {
                    dst,
                    what: Payload::Ack(id, b),
                });
                self.stats.acks_sent += 1;
            }
            self.arm(id, branch_key(b, T_BR_END), now + cfg.wait_ms);
        } else {
            self.arm(id, branch_key(b, T_BR_END), now + cfg.t4_ms);
        }
        let Some(cell) = self.get_mut(id) else {
            return RespAction::Absorbed;
        };
        let br = &mut cell.branches[b as usize];
        if !was_pending {
            // The branch had timed out already (408): absorbed.
            return RespAction::Absorbed;
        }
        br.final_code = code;
        br.reply = Some(strip_top_via(msg));
        if code >= 600 {
            // §16.7 step 5: a 6xx ends the search.
            self.cancel_pending(id, Some(b), now);
        }
        self.completion(id)
    }

    fn branch_of(&self, id: CellId, b: u8) -> Option<&Branch> {
        self.get(id)?.branches.get(b as usize)
    }

    /// `Completed` when every branch is final, none answered 2xx, no final
    /// reply went upstream and it was not reported yet.
    fn completion(&mut self, id: CellId) -> RespAction {
        let Some(cell) = self.get_mut(id) else {
            return RespAction::Absorbed;
        };
        if cell.all_final()
            && !cell.branches.is_empty()
            && !cell.answered
            && !cell.is_final()
            && !cell.completed_reported
            && !cell
                .branches
                .iter()
                .any(|b| (200..300).contains(&b.final_code))
        {
            cell.completed_reported = true;
            return RespAction::Completed;
        }
        RespAction::Absorbed
    }

    /// §16.7 step 6: the reply to send upstream when every branch failed:
    /// a 6xx if any, else the lowest class, preferring 401/407/415/420/484
    /// within 4xx; among equals the first branch. Returns (branch, code).
    pub fn best(&self, id: CellId) -> Option<(u8, u16)> {
        let cell = self.get(id)?;
        let rank = |code: u16| -> (u8, u8) {
            let class = (code / 100) as u8;
            let class_rank = if class == 6 { 0 } else { class };
            let pref = match code {
                401 | 407 | 415 | 420 | 484 => 0,
                408 => 2, // a local timeout says least
                _ => 1,
            };
            (class_rank, pref)
        };
        cell.branches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.final_code >= 300)
            .min_by_key(|(i, b)| (rank(b.final_code), *i))
            .map(|(i, b)| (i as u8, b.final_code))
    }

    /// A CANCEL for the cell arrived (§16.10): CANCEL every pending branch.
    pub fn cancel(&mut self, id: CellId, now: u64) {
        if let Some(cell) = self.get_mut(id) {
            cell.canceled = true;
        }
        self.cancel_pending(id, None, now);
    }

    /// CANCELs every pending INVITE branch except `keep`: at once if it
    /// sent a provisional reply, else when one comes (§9.1).
    pub fn cancel_pending(&mut self, id: CellId, keep: Option<u8>, now: u64) {
        let Some(cell) = self.get_mut(id) else {
            return;
        };
        if !cell.invite {
            return;
        }
        let mut now_send = Vec::new();
        for (i, br) in cell.branches.iter_mut().enumerate() {
            if Some(i as u8) == keep || br.cancel.is_some() {
                continue;
            }
            match br.state {
                ClientState::Proceeding => now_send.push(i as u8),
                ClientState::Calling => {
                    // Stop retransmitting; cancel once it answers.
                    br.cancel_wanted = true;
                }
                _ => {}
            }
        }
        for i in 0..cell.branches.len() as u8 {
            if Some(i) != keep
                && self
                    .branch_of(id, i)
                    .is_some_and(|b| b.cancel_wanted && b.state == ClientState::Calling)
            {
                self.disarm(id, branch_key(i, T_BR_RETRANS));
            }
        }
        for b in now_send {
            self.send_cancel(id, b, now);
        }
    }

    fn send_cancel(&mut self, id: CellId, b: u8, now: u64) {
        let t1 = self.cfg.t1_ms;
        let fr = self.cfg.fr_timer_ms;
        let Some(br) = self
            .get_mut(id)
            .and_then(|c| c.branches.get_mut(b as usize))
        else {
            return;
        };
        let mut req = Vec::new();
        if !build::write_cancel_or_ack(&br.req, None, &mut req) {
            return;
        }
        br.cancel = Some((req, ClientState::Trying));
        br.cancel_wanted = false;
        br.cancel_retrans_ms = t1;
        let dst = br.dst;
        self.out.push_back(Transmit {
            dst,
            what: Payload::Cancel(id, b),
        });
        self.stats.cancels_sent += 1;
        self.arm(id, branch_key(b, T_CANCEL_RETRANS), now + t1);
        self.arm(id, branch_key(b, T_CANCEL_END), now + fr.min(64 * t1));
    }

    /// The first live cell `pred` accepts (a linear scan: for rare lookups
    /// such as `t_reply_callid`).
    pub fn find(&self, mut pred: impl FnMut(&Cell<U>) -> bool) -> Option<CellId> {
        self.slots.iter().enumerate().find_map(|(slot, c)| {
            let c = c.as_ref()?;
            pred(c).then_some(CellId {
                slot: slot as u32,
                gen: c.gen,
            })
        })
    }

    /// `t_release()`: forgets the cell now.
    pub fn release(&mut self, id: CellId) {
        if self.get(id).is_some() {
            self.free_cell(id);
        }
    }

    // ---- timers --------------------------------------------------------

    /// The earliest armed deadline.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        while let Some(&Reverse((at, slot, gen, key))) = self.heap.peek() {
            if self.deadline_of(CellId { slot, gen }, key) == Some(at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        while let Some(&Reverse((at, slot, gen, key))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let id = CellId { slot, gen };
            if self.deadline_of(id, key) != Some(at) {
                continue; // stale entry
            }
            self.set_deadline(id, key, 0);
            self.fire(id, key, now);
        }
    }

    fn fire(&mut self, id: CellId, key: u16, now: u64) {
        let cfg = self.cfg.clone();
        if key < BRANCH_KEY_BASE {
            let Some(cell) = self.get_mut(id) else { return };
            match key {
                T_SRV_RETRANS if cell.server == ServerState::Completed => {
                    cell.server_retrans_ms = (cell.server_retrans_ms * 2).min(cfg.t2_ms);
                    let next = cell.server_retrans_ms;
                    let dst = cell.reply_dst;
                    self.out.push_back(Transmit {
                        dst,
                        what: Payload::LastReply(id),
                    });
                    self.stats.retransmissions_sent += 1;
                    self.arm(id, T_SRV_RETRANS, now + next);
                }
                T_SRV_END => {
                    // Timer H: the ACK never came.
                    let h = cell.server == ServerState::Completed && cell.invite;
                    cell.server = ServerState::Terminated;
                    if h {
                        self.stats.timeouts += 1;
                    }
                    self.disarm(id, T_SRV_RETRANS);
                    self.maybe_free(id);
                }
                T_GUARD => {
                    if !cell.is_final() && cell.server != ServerState::Terminated {
                        self.events.push_back(Event::Expired(id));
                        self.stats.timeouts += 1;
                        self.arm(id, T_GUARD, now + cfg.wait_ms);
                    } else {
                        self.free_cell(id);
                    }
                }
                _ => {}
            }
            return;
        }
        let b = ((key - BRANCH_KEY_BASE) / 8) as u8;
        let t = (key - BRANCH_KEY_BASE) % 8;
        let Some(cell) = self.get_mut(id) else { return };
        let invite = cell.invite;
        let Some(br) = cell.branches.get_mut(b as usize) else {
            return;
        };
        match t {
            T_BR_RETRANS => {
                let resend = match br.state {
                    ClientState::Calling => {
                        br.retrans_ms *= 2;
                        !br.cancel_wanted
                    }
                    ClientState::Trying => {
                        br.retrans_ms = (br.retrans_ms * 2).min(cfg.t2_ms);
                        true
                    }
                    ClientState::Proceeding if !invite => {
                        br.retrans_ms = cfg.t2_ms;
                        true
                    }
                    _ => false,
                };
                if resend {
                    let next = br.retrans_ms;
                    let dst = br.dst;
                    self.out.push_back(Transmit {
                        dst,
                        what: Payload::BranchReq(id, b),
                    });
                    self.stats.retransmissions_sent += 1;
                    self.arm(id, branch_key(b, T_BR_RETRANS), now + next);
                }
            }
            T_BR_FR => {
                // B, F or C: no final reply in time: a local 408.
                let pending = br.pending();
                let state = br.state;
                if pending {
                    br.final_code = 408;
                    br.timed_out = true;
                    self.stats.timeouts += 1;
                }
                self.disarm(id, branch_key(b, T_BR_RETRANS));
                if invite && state == ClientState::Proceeding {
                    // Ringing too long: CANCEL it; its 487 is ACKed later.
                    let has_cancel = self.branch_of(id, b).is_some_and(|br| br.cancel.is_some());
                    if !has_cancel {
                        self.send_cancel(id, b, now);
                    }
                    // Keep the branch until the CANCEL's fate is known.
                    self.arm(id, branch_key(b, T_BR_END), now + 64 * cfg.t1_ms);
                } else if let Some(br) = self
                    .get_mut(id)
                    .and_then(|c| c.branches.get_mut(b as usize))
                {
                    br.state = ClientState::Terminated;
                }
                if pending && self.completion(id) == RespAction::Completed {
                    self.events.push_back(Event::Completed(id));
                }
                self.maybe_free(id);
            }
            T_BR_END => {
                br.state = ClientState::Terminated;
                self.disarm(id, branch_key(b, T_BR_RETRANS));
                self.disarm(id, branch_key(b, T_BR_FR));
                self.maybe_free(id);
            }
            T_CANCEL_RETRANS => {
                if let Some((_, st)) = &br.cancel {
                    if matches!(st, ClientState::Trying | ClientState::Proceeding) {
                        br.cancel_retrans_ms = (br.cancel_retrans_ms * 2).min(cfg.t2_ms);
                        let next = br.cancel_retrans_ms;
                        let dst = br.dst;
                        self.out.push_back(Transmit {
                            dst,
                            what: Payload::Cancel(id, b),
                        });
                        self.stats.retransmissions_sent += 1;
                        self.arm(id, branch_key(b, T_CANCEL_RETRANS), now + next);
                    }
                }
            }
            T_CANCEL_END => {
                if let Some((_, st)) = &mut br.cancel {
                    *st = ClientState::Terminated;
                }
                self.disarm(id, branch_key(b, T_CANCEL_RETRANS));
                self.maybe_free(id);
            }
            _ => {}
        }
    }

    fn deadline_of(&self, id: CellId, key: u16) -> Option<u64> {
        let cell = self.get(id)?;
        if key < BRANCH_KEY_BASE {
            return cell.server_timers.get(key as usize).copied();
        }
        let b = ((key - BRANCH_KEY_BASE) / 8) as usize;
        let t = ((key - BRANCH_KEY_BASE) % 8) as usize;
        cell.branches.get(b)?.timers.get(t).copied()
    }

    fn set_deadline(&mut self, id: CellId, key: u16, at: u64) -> bool {
        let Some(cell) = self.get_mut(id) else {
            return false;
        };
        let slot = if key < BRANCH_KEY_BASE {
            cell.server_timers.get_mut(key as usize)
        } else {
            let b = ((key - BRANCH_KEY_BASE) / 8) as usize;
            let t = ((key - BRANCH_KEY_BASE) % 8) as usize;
            cell.branches.get_mut(b).and_then(|br| br.timers.get_mut(t))
        };
        match slot {
            Some(s) => {
                *s = at;
                true
            }
            None => false,
        }
    }

    fn arm(&mut self, id: CellId, key: u16, at: u64) {
        let at = at.max(1);
        if self.set_deadline(id, key, at) {
            self.heap.push(Reverse((at, id.slot, id.gen, key)));
            if self.heap.len() > 1024 + 16 * self.live {
                self.compact_timers();
            }
        }
    }

    /// Drops heap entries whose timer was re-armed, disarmed or whose cell
    /// is gone. Stale entries otherwise stay until their deadline (the
    /// guard: minutes), so a high call rate would grow the heap with the
    /// rate instead of with the live cells.
    fn compact_timers(&mut self) {
        let heap = std::mem::take(&mut self.heap);
        let live: Vec<Reverse<(u64, u32, u32, u16)>> = heap
            .into_vec()
            .into_iter()
            .filter(|Reverse((at, slot, gen, key))| {
                self.deadline_of(
                    CellId {
                        slot: *slot,
                        gen: *gen,
                    },
                    *key,
                ) == Some(*at)
            })
            .collect();
        self.heap = BinaryHeap::from(live);
    }

    fn disarm(&mut self, id: CellId, key: u16) {
        self.set_deadline(id, key, 0);
    }

    /// Frees the cell when its server side and every branch (and CANCEL)
    /// have terminated.
    fn maybe_free(&mut self, id: CellId) {
        let Some(cell) = self.get(id) else { return };
        let done = cell.server == ServerState::Terminated
            && cell.branches.iter().all(|b| {
                b.state == ClientState::Terminated
                    && b.cancel
                        .as_ref()
                        .is_none_or(|(_, s)| *s == ClientState::Terminated)
            });
        if done {
            self.free_cell(id);
        }
    }

    fn free_cell(&mut self, id: CellId) {
        let Some(cell) = self.slots.get_mut(id.slot as usize).and_then(Option::take) else {
            return;
        };
        if self.index.get(&cell.key) == Some(&id.slot) {
            self.index.remove(&cell.key);
        }
        self.free.push(id.slot);
        self.live -= 1;
        self.stats.freed += 1;
    }

    // ---- output ----------------------------------------------------------

    /// Hands every queued datagram to `send`, in order.
    pub fn drain_transmits(&mut self, mut send: impl FnMut(Dest, &[u8])) {
        while let Some(t) = self.out.pop_front() {
            let (id, bytes): (CellId, Option<&[u8]>) = match t.what {
                Payload::LastReply(id) => (id, self.get(id).map(|c| c.last_reply.as_slice())),
                Payload::BranchReq(id, b) => (id, self.branch_of(id, b).map(|b| b.req.as_slice())),
                Payload::Cancel(id, b) => (
                    id,
                    self.branch_of(id, b)
                        .and_then(|b| b.cancel.as_ref())
                        .map(|(r, _)| r.as_slice()),
                ),
                Payload::Ack(id, b) => (id, self.branch_of(id, b).map(|b| b.ack.as_slice())),
            };
            let _ = id;
            if let Some(bytes) = bytes.filter(|b| !b.is_empty()) {
                send(t.dst, bytes);
            }
        }
    }

    /// Timer entries held (armed and stale), for tests and statistics.
    pub fn timer_entries(&self) -> usize {
        self.heap.len()
    }

    /// Datagrams queued and not yet drained.
    pub fn has_transmits(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Test and fuzz check: every live cell has an armed timer that the
    /// heap holds, and the index points at live cells.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut armed: HashMap<(u32, u32), usize> = HashMap::new();
        for Reverse((at, slot, gen, key)) in self.heap.iter() {
            if self.deadline_of(
                CellId {
                    slot: *slot,
                    gen: *gen,
                },
                *key,
            ) == Some(*at)
            {
                *armed.entry((*slot, *gen)).or_default() += 1;
            }
        }
        let mut live = 0;
        for (slot, c) in self.slots.iter().enumerate() {
            let Some(c) = c else { continue };
            live += 1;
            if armed.get(&(slot as u32, c.gen)).copied().unwrap_or(0) == 0 {
                return Err(format!("cell {slot} ({:?}) has no armed timer", c.server));
            }
            if c.server_timers[T_GUARD as usize] == 0 {
                return Err(format!("cell {slot} lost its guard timer"));
            }
        }
        if live != self.live {
            return Err(format!("live count {} != {live}", self.live));
        }
        for slot in self.index.values() {
            if self.slots.get(*slot as usize).is_none_or(|s| s.is_none()) {
                return Err(format!("index points at free slot {slot}"));
            }
        }
        if self.live > self.cfg.max_cells {
            return Err("more cells than max_cells".into());
        }
        Ok(())
    }
}

/// The reply without its top Via value (§16.7 step 9).
fn strip_top_via(msg: &SipMsg<'_>) -> Vec<u8> {
    let mut e = Edits::new();
    e.remove_top_via();
    let mut out = Vec::with_capacity(msg.buf.len());
    e.assemble(msg.buf, msg.parsed, &mut out);
    out
}
