//! A shard's loop: read datagrams, run their routes, send what they produce,
//! run woken tasks and due timers, and sleep in epoll when there is nothing
//! to do.
//!
//! Cost per message is the point of this file. With `udp_socket = "spread"`
//! (the default) a shard sleeps in a blocking `recvmmsg` on its own socket,
//! so at low rate a request costs two syscalls, as a bare blocking
//! responder's does: the `recvmmsg` that wakes the shard with the datagram,
//! and the `sendto` of the reply. A `recvmmsg` that returned fewer datagrams
//! than it could hold means the socket was empty, so the shard goes straight
//! back to sleep instead of reading again to see EAGAIN. Other threads wake
//! it with a wake-up datagram (see `transport::sys::wake_datagram`), and the
//! socket's receive timeout is the timer (at most a second, so an idle shard
//! wakes once a second). In the epoll modes ("shared", "reuseport") the
//! sleep is an `epoll_wait` on the socket and an eventfd: three syscalls per
//! request. Under load one `recvmmsg` returns up to `recv_batch` datagrams
//! and nothing sleeps while batches come back full.
//!
//! Never: block anywhere but in `Epoll::wait`, or let a panic out of a
//! message (it is caught, answered 500 when it was a request, counted and
//! logged; the shard goes on).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::control::ShardCmd;
use super::dispatch::{self, Peers};
use crate::config::{Dispatch, OnScriptError};
use crate::exec::{panic_text, Doorbell, Executor};
use crate::flood::Verdict;
use crate::kemi::{Engine, MsgCtx, RouteOutcome};
use crate::sip::{Dest, Limits, ParseError, Proto};
use crate::stats::Counter;
use crate::transport::sys::{is_wake_datagram, Epoll, EventFd, RecvBatch, SendBatch};
use std::io::Write as _;

const TOKEN_SOCKET: u64 = 1;
const TOKEN_BELL: u64 = 2;

/// A recycled context keeps buffers up to this size; a larger one (from a
/// rare large message) is freed rather than pinned in the pool.
const CTX_KEEP_BYTES: usize = 8 << 10;

/// Per-route histograms of one shard.
pub(super) struct RouteStats {
    pub request: Histogram<u64>,
    pub reply: Histogram<u64>,
}

/// A bounded log rate limiter (per shard): at most `per_s` lines a second.
pub(super) struct LogLimiter {
    per_s: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub fn new(per_s: u32) -> LogLimiter {
        LogLimiter {
            per_s,
            window: Cell::new(None),
            used: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    pub fn allow(&self, now: Instant) -> bool {
        let start = self.window.get();
        if start.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            let dropped = self.suppressed.replace(0);
            if dropped > 0 {
                tracing::warn!(
                    suppressed = dropped,
                    "log lines about bad input were suppressed"
                );
            }
            self.window.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() < self.per_s {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            false
        }
    }
}

/// One shard's state, shared by its tasks (single thread: Rc/Cell).
pub(super) struct Shard {
    pub id: usize,
    pub shard_count: usize,
    pub cpu: Option<usize>,
    /// The socket replies leave from (the shared one, or this shard's own).
    pub sock: Arc<std::net::UdpSocket>,
    pub local: SocketAddr,
    pub engine: Engine,
    /// What a script reload builds its new VM from.
    pub params: Arc<super::ShardParams>,
    pub engine_tuning: crate::config::ShardTuning,
    pub ex: Rc<Executor>,
    pub bell: Arc<Doorbell>,
    pub peers: Arc<Peers>,
    pub dispatch: Dispatch,
    pub limits: Limits,
    pub on_error: OnScriptError,
    pub routes: RefCell<RouteStats>,
    /// Recycled contexts. Boxed on purpose: a context moves into a route
    /// future, or to another shard, by pointer.
    #[allow(clippy::vec_box)]
    pub pool: RefCell<Vec<Box<MsgCtx>>>,
    pub pool_max: usize,
    pub max_msg_bytes: usize,
    pub max_headers: usize,
    pub inflight: Cell<usize>,
    pub max_inflight: usize,
    pub spin: Duration,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    pub log: LogLimiter,
    /// `[flood]` configured: check each request's source before parsing.
    pub flood_on: bool,
    /// `[flood] answer_503`.
    pub flood_503: bool,
    /// `core.reject_unknown_ruri_scheme`: 416 before the route runs.
    pub reject_unknown_ruri_scheme: bool,
    pub tuning: serde_json::Value,
    /// Replies of this turn, sent together ([`flush_sends`]).
    pub sends: RefCell<SendBatch>,
    /// TCP/TLS listeners and the connections this shard owns (`[tcp]` /
    /// `[tls]` configured).
    pub conns: Option<super::conn::ShardConns>,
}

/// How a shard sleeps and is woken.
#[derive(Clone)]
pub(super) enum WaitKind {
    /// In `recvmmsg` on its own blocking socket; woken by wake-up datagrams.
    Block,
    /// In `epoll_wait` on the socket and an eventfd doorbell; `exclusive`
    /// when every shard waits on the same socket.
    Epoll {
        bell_fd: Arc<EventFd>,
        exclusive: bool,
    },
}

enum Wait {
    Block {
        /// SO_RCVTIMEO currently set (changed only when it must).
        timeout: Option<Duration>,
    },
    Epoll {
        epoll: Epoll,
        /// None in "spread" mode with TCP: the bell is the wake-up datagram.
        bell_fd: Option<Arc<EventFd>>,
    },
}

/// The longest a blocked shard sleeps: its timers are checked at least this
/// often (an idle shard costs one empty `recvmmsg` a second).
const BLOCK_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// How often a blocked shard with a timer due within the second wakes.
const TIMER_TICK: Duration = Duration::from_millis(10);

/// The shard's wait and read machinery.
pub(super) struct LoopIo {
    wait: Wait,
    pub batch: RecvBatch,
    /// Receive errors in a row (reset by a successful read): the back-off
    /// doubles with it, 1 ms up to [`MAX_RECV_BACKOFF_MS`].
    err_streak: u32,
    /// Connection events of the last wait (TCP/TLS).
    events: Vec<(u64, u32)>,
}

/// Longest pause after a receive error that keeps coming back.
const MAX_RECV_BACKOFF_MS: u64 = 64;

/// Pause after the `streak`-th receive error in a row.
fn recv_backoff(streak: u32) -> Duration {
    let ms = 1u64 << streak.saturating_sub(1).min(6);
    Duration::from_millis(ms.min(MAX_RECV_BACKOFF_MS))
}

impl LoopIo {
    /// `streams`: the shard has TCP/TLS too, so it sleeps in epoll whatever
    /// the UDP mode (in "spread" mode the UDP socket is in that epoll and
    /// the wake-up datagram still wakes it).
    pub fn new(
        sock: &std::net::UdpSocket,
        kind: WaitKind,
        batch: usize,
        slot_bytes: usize,
        streams: bool,
    ) -> std::io::Result<LoopIo> {
        let wait = match kind {
            WaitKind::Block if !streams => Wait::Block { timeout: None },
            WaitKind::Block => {
                let epoll = Epoll::new()?;
                epoll.add_readable(sock.as_raw_fd(), TOKEN_SOCKET, false)?;
                Wait::Epoll {
                    epoll,
                    bell_fd: None,
                }
            }
            WaitKind::Epoll { bell_fd, exclusive } => {
                let epoll = Epoll::new()?;
                epoll.add_readable(sock.as_raw_fd(), TOKEN_SOCKET, exclusive)?;
                epoll.add_readable(bell_fd.raw(), TOKEN_BELL, false)?;
                Wait::Epoll {
                    epoll,
                    bell_fd: Some(bell_fd),
                }
            }
        };
        Ok(LoopIo {
            wait,
            batch: RecvBatch::new(batch, slot_bytes),
            err_streak: 0,
            events: Vec::new(),
        })
    }

    /// The epoll connections are watched in (epoll waits only).
    pub fn epoll_ctl(&self) -> Option<crate::transport::sys::EpollCtl> {
        match &self.wait {
            Wait::Epoll { epoll, .. } => Some(epoll.ctl()),
            Wait::Block { .. } => None,
        }
    }
}

impl Shard {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(super) fn counters(&self) -> &crate::kemi::Counters {
        &self.engine.shared().counters
    }
}

/// Serves until stopped.
pub(super) fn run(shard: &Rc<Shard>, io: &mut LoopIo, cmds: &Receiver<ShardCmd>) {
    let mut handed: Vec<Box<MsgCtx>> = Vec::new();
    let fd = shard.sock.as_raw_fd();
    // The last read found the socket empty: do not read it again before
    // sleeping (that read would only say EAGAIN).
    let mut drained = false;
    while !shard.stopping() {
        run_tasks(shard);
        control(shard, cmds);
        shard.peers.take(shard.id, &mut handed);
        for ctx in handed.drain(..) {
            shard.counters().incr(Counter::DispatchRecv);
            run_message(shard, ctx);
        }
        flush_sends(shard);
        if !drained {
            let n = read_batch(shard, io, fd, false);
            if n == io.batch.capacity() {
                if shard.conns.is_some() {
                    // Busy with datagrams: connections still get a look
                    // (one epoll_wait per full batch, only with TCP on).
                    poll_streams(shard, io, Some(Duration::ZERO));
                }
                continue; // more are likely waiting: skip the wait
            }
            if n == 0 && !shard.spin.is_zero() && spin(shard, io, fd) {
                continue;
            }
        }
        flush_sends(shard);
        drained = park(shard, io, cmds, fd);
    }
    flush_sends(shard);
}

/// Reads one batch (waiting for it when `wait`) and handles it; returns how
/// many datagrams it held.
fn read_batch(shard: &Rc<Shard>, io: &mut LoopIo, fd: i32, wait: bool) -> usize {
    let got = if wait {
        let r = io.batch.recv_wait(fd);
        shard.bell.unpark();
        r
    } else {
        io.batch.recv(fd)
    };
    let n = match got {
        Ok(n) => {
            io.err_streak = 0;
            n
        }
        Err(e) => {
            shard.counters().incr(Counter::RecvErrors);
            io.err_streak = io.err_streak.saturating_add(1);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(
                    shard = shard.id,
                    errors_in_a_row = io.err_streak,
                    "udp receive failed: {e}"
                );
            }
            // A socket error that persists must not turn the loop into a
            // busy spin: back off, doubling from 1 ms to 64 ms while it
            // keeps failing (errors are exceptional).
            std::thread::sleep(recv_backoff(io.err_streak));
            0
        }
    };
    for i in 0..n {
        if let Some((bytes, src)) = io.batch.get(i) {
            if !is_wake_datagram(bytes) {
                on_datagram(shard, bytes, src);
            }
        }
    }
    flush_sends(shard);
    n
}

/// Polls the socket (and other work) for up to `spin` before sleeping.
fn spin(shard: &Rc<Shard>, io: &mut LoopIo, fd: i32) -> bool {
    let until = Instant::now() + shard.spin;
    while Instant::now() < until {
        if read_batch(shard, io, fd, false) > 0
            || shard.ex.has_ready()
            || shard.peers.has_work(shard.id)
        {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// Sleeps until a datagram, a doorbell ring, or the next timer. Returns
/// true when it read the socket empty (blocking mode).
fn park(shard: &Rc<Shard>, io: &mut LoopIo, cmds: &Receiver<ShardCmd>, fd: i32) -> bool {
    shard.bell.park();
    // Re-check every source after announcing the park (see Doorbell).
    if shard.ex.has_ready()
        || shard.peers.has_work(shard.id)
        || shard.stopping()
        || control(shard, cmds)
    {
        shard.bell.unpark();
        return false;
    }
    let tm_deadline = shard.engine.tm_next_deadline_ms().map(|at| {
        Instant::now() + Duration::from_millis(at.saturating_sub(shard.engine.tm_now_ms()))
    });
    let deadline = match (shard.ex.next_deadline(), tm_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let until_timer = deadline.map(|at| at.saturating_duration_since(Instant::now()));
    match &mut io.wait {
        Wait::Block { timeout } => {
            let want = until_timer
                .map(|d| d.max(Duration::from_millis(1)))
                .unwrap_or(BLOCK_TIMEOUT_MAX)
                .min(BLOCK_TIMEOUT_MAX);
            // Two steps: a timer due within a second is checked every
            // TIMER_TICK (it fires at most that late; SIP's timers count
            // in T1 = 500 ms), otherwise once a second. SO_RCVTIMEO then
            // changes rarely, not on every park while transaction timers
            // keep moving (a setsockopt per wake-up before).
            let want = if want < BLOCK_TIMEOUT_MAX {
                TIMER_TICK
            } else {
                BLOCK_TIMEOUT_MAX
            };
            if *timeout != Some(want) {
                if let Err(e) = shard.sock.set_read_timeout(Some(want)) {
                    if shard.log.allow(Instant::now()) {
                        tracing::warn!(shard = shard.id, "SO_RCVTIMEO: {e}");
                    }
                }
                *timeout = Some(want);
            }
            let n = read_batch(shard, io, fd, true);
            n < io.batch.capacity()
        }
        // Level-triggered: a socket the wait did not report holds no
        // datagram, so the loop skips the `recvmmsg` that would only say
        // EAGAIN (a wake-up for a connection, the doorbell or a timer).
        Wait::Epoll { .. } => !poll_streams(shard, io, until_timer),
    }
}

/// One `epoll_wait` (epoll modes, or any mode with TCP): drains the
/// doorbell, then handles connection events; datagrams are read by the
/// loop right after. Returns whether the UDP socket was reported readable
/// (true too when the wait failed: the loop then reads to find out).
fn poll_streams(shard: &Rc<Shard>, io: &mut LoopIo, timeout: Option<Duration>) -> bool {
    let Wait::Epoll { epoll, bell_fd } = &mut io.wait else {
        return true;
    };
    let mut rung = false;
    let mut udp = false;
    let events = &mut io.events;
    events.clear();
    if let Err(e) = epoll.wait(timeout, |t, bits| {
        if t == TOKEN_BELL {
            rung = true;
        } else if t == TOKEN_SOCKET {
            udp = true;
        } else {
            events.push((t, bits));
        }
    }) {
        udp = true;
        if shard.log.allow(Instant::now()) {
            tracing::warn!(shard = shard.id, "epoll_wait failed: {e}");
        }
    }
    shard.bell.unpark();
    if rung {
        if let Some(b) = bell_fd {
            b.drain();
        }
    }
    if !io.events.is_empty() {
        let events = std::mem::take(&mut io.events);
        for &(t, bits) in &events {
            super::conn::on_event(shard, t, bits);
        }
        io.events = events;
        flush_sends(shard);
    }
    udp
}

/// Fires due timers (the executor's and the transaction layer's) and
/// polls woken tasks.
fn run_tasks(shard: &Rc<Shard>) {
    if let Some(at) = shard.ex.next_deadline() {
        let now = Instant::now();
        if at <= now {
            shard.ex.fire_timers(now);
        }
    }
    if shard.engine.tm_tick_due() {
        for work in shard.engine.tm_tick() {
            run_work(shard, work);
        }
    }
    shard.engine.dlg_tick();
    if shard.ex.has_ready() {
        shard
            .ex
            .run_ready(&mut |text| route_panicked(shard, text, "task"));
    }
}

/// Polls transaction work (a failure route after a timeout) once inline;
/// spawns it when it waits.
fn run_work(shard: &Rc<Shard>, mut work: Pin<Box<dyn Future<Output = ()>>>) {
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
        work.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    match first {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            if shard.ex.spawn(work).is_err() {
                shard.counters().incr(Counter::DropReplies);
            }
        }
        Err(payload) => route_panicked(shard, panic_text(&*payload), "failure route"),
    }
}

/// Handles queued control commands; true when there were any.
fn control(shard: &Rc<Shard>, cmds: &Receiver<ShardCmd>) -> bool {
    let mut any = false;
    loop {
        match cmds.try_recv() {
            Ok(ShardCmd::Snapshot { reset, reply }) => {
                let _ = reply.send(super::snapshot(shard, reset));
            }
            Ok(ShardCmd::Ul { cmd, reply }) => {
                let svc = shard.engine.shared().services.clone();
                match cmd {
                    // db_mode 3 (database only): the database, not this
                    // node's memory, holds the AOR (another server sharing
                    // it may have saved or removed bindings), so it is read
                    // first, on a task like a script's lookup.
                    crate::shard::control::UlCmd::Lookup { aor } if svc.registrar.db_mode == 3 => {
                        let task = async move {
                            let cmd = crate::shard::control::UlCmd::Lookup { aor: aor.clone() };
                            let v = if svc.refresh_from_db(&aor).await {
                                crate::kemi::registrar::ul_json(&svc, cmd)
                            } else {
                                serde_json::json!({ "error": "database read failed" })
                            };
                            let _ = reply.send(v);
                        };
                        if shard.ex.spawn(task).is_err() {
                            shard.counters().incr(Counter::DropReplies);
                        }
                    }
                    // db_mode 1/3: the rows go too (else the next read
                    // of the database, or a restart, brings the AOR back);
                    // answered once they are deleted.
                    crate::shard::control::UlCmd::Rm { aor }
                        if matches!(svc.registrar.db_mode, 1 | 3) && svc.db.is_some() =>
                    {
                        let shared = shard.engine.shared().clone();
                        let task = async move {
                            let v = if !svc.refresh_from_db(&aor).await {
                                serde_json::json!({ "error": "database read failed" })
                            } else {
                                let ruids = svc
                                    .unregister_what(&aor, crate::usrloc::Unregister::All)
                                    .unwrap_or_default();
                                let n = ruids.len();
                                let written = match svc.db.clone() {
                                    Some(db) => svc.spawn_db_write(db, Vec::new(), ruids, shared),
                                    None => None,
                                };
                                if let Some(rx) = written {
                                    let _ = rx.await;
                                }
                                serde_json::json!({ "removed": n })
                            };
                            let _ = reply.send(v);
                        };
                        if shard.ex.spawn(task).is_err() {
                            shard.counters().incr(Counter::DropReplies);
                        }
                    }
                    cmd => {
                        let _ = reply.send(crate::kemi::registrar::ul_json(&svc, cmd));
                    }
                }
            }
            Ok(ShardCmd::Reload { script, reply }) => {
                let r = super::reload::apply(shard, &script);
                let _ = reply.try_send((shard.id, r));
            }
            Ok(ShardCmd::Shutdown) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                shard.stop.store(true, Ordering::Release);
                return true;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return any,
        }
        any = true;
    }
}

pub(super) fn take_ctx(shard: &Shard) -> Box<MsgCtx> {
    shard.pool.borrow_mut().pop().unwrap_or_else(|| {
        let mut ctx = Box::new(MsgCtx::new(shard.max_msg_bytes, shard.max_headers));
        ctx.set_limits(&shard.engine.shared().limits.msg);
        ctx
    })
}

pub(super) fn recycle(shard: &Shard, mut ctx: Box<MsgCtx>) {
    let mut pool = shard.pool.borrow_mut();
    if pool.len() < shard.pool_max {
        ctx.shrink(CTX_KEEP_BYTES);
        pool.push(ctx);
    }
}

fn bad_input(shard: &Shard, ctx: &MsgCtx, e: ParseError) {
    shard.counters().incr(Counter::BadMsgHdr);
    shard.counters().incr(crate::stats::parse_error_counter(e));
    if shard.log.allow(Instant::now()) {
        tracing::warn!(shard = shard.id, src = %ctx.src, len = ctx.len, error = e.as_str(), "malformed SIP message dropped");
    }
}

/// The headers a reply copies (RFC 3261 §8.2.6) are usable: the top Via
/// parses (it says where the answer goes) and From, To, Call-ID and CSeq
/// are present (they are copied as received).
fn answerable(msg: &crate::sip::SipMsg<'_>) -> bool {
    use crate::sip::HdrName;
    msg.top_via().is_ok()
        && [HdrName::From, HdrName::To, HdrName::CallId, HdrName::CSeq]
            .iter()
            .all(|&h| msg.header(h).is_some_and(|v| !v.is_empty()))
}

/// Answers a request refused for `e` (400 naming the fault, 505, 416) when
/// the headers a reply copies are usable; true when an answer was queued.
fn answer_bad_request(shard: &Shard, ctx: &mut MsgCtx, e: ParseError) -> bool {
    if !ctx.msg().is_request() {
        return false;
    }
    if !answerable(&ctx.msg()) {
        // RFC 4475 §3.1.2.16: a request in another SIP version carries a Via
        // in that version too; the 505 goes back to where it came from.
        return e == ParseError::UnsupportedVersion && answer_505_to_source(shard, ctx);
    }
    let code = e.status();
    let mut reason = [0u8; 64];
    let mut w = &mut reason[..];
    let _ = match code {
        505 => write!(w, "SIP Version Not Supported"),
        416 => write!(w, "Unsupported URI Scheme"),
        _ => write!(w, "Bad Request ({})", e.as_str()),
    };
    let n = 64 - w.len();
    if crate::kemi::sl_reply(shard.engine.shared(), ctx, code, &reason[..n]) {
        shard.counters().incr(Counter::BadMsgAnswered);
        send_out(shard, ctx);
        return true;
    }
    false
}

/// A 505 for a request whose top Via is not SIP/2.0, sent to the source
/// address; From, To, Call-ID and CSeq must be present. Never for an ACK.
fn answer_505_to_source(shard: &Shard, ctx: &mut MsgCtx) -> bool {
    use crate::sip::HdrName;
    let msg = ctx.msg();
    if msg.method() == Some(crate::sip::Method::Ack)
        || msg.header(HdrName::Via).is_none()
        || ![HdrName::From, HdrName::To, HdrName::CallId, HdrName::CSeq]
            .iter()
            .all(|&h| msg.header(h).is_some_and(|v| !v.is_empty()))
    {
        return false;
    }
    let shared = shard.engine.shared();
    let mut out = std::mem::take(&mut ctx.scratch);
    out.clear();
    let msg = crate::sip::SipMsg::new(&ctx.buf[..ctx.len], &ctx.parsed);
    let opts = crate::sip::ReplyOpts {
        to_tag: Some(b"sipshard-505"),
        src_ip: None,
        src_port: None,
        extra_headers: &[],
        body: &[],
        server: shared.server_header.as_deref(),
        force_rport: false,
    };
    crate::sip::build_reply(&msg, 505, b"SIP Version Not Supported", &opts, &mut out);
    let src = ctx.reply_dest(ctx.src);
    ctx.push_out(&out, src);
    ctx.scratch = out;
    ctx.replied = Some(505);
    let c = shard.counters();
    c.incr(Counter::SlSentReplies);
    c.incr(Counter::SlReplies5xx);
    c.incr(Counter::BadMsgAnswered);
    send_out(shard, ctx);
    true
}

/// A datagram as read: parse it, then run it here or hand it to its owner.
fn on_datagram(shard: &Rc<Shard>, bytes: &[u8], src: SocketAddr) {
    // RFC 5626 keepalives (CRLF) are not messages.
    if bytes
        .iter()
        .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
    {
        return;
    }
    on_bytes(shard, bytes, src, shard.local, Proto::Udp, None);
}

/// A message framed on a connection (`conn`, owned by this shard).
pub(super) fn on_message(
    shard: &Rc<Shard>,
    bytes: &[u8],
    src: SocketAddr,
    local: SocketAddr,
    proto: Proto,
    conn: &Arc<crate::transport::conn::Conn>,
) {
    on_bytes(shard, bytes, src, local, proto, Some(conn));
}

/// One message, whatever carried it: parse it, then run it here or hand
/// it to its owner.
#[inline]
fn on_bytes(
    shard: &Rc<Shard>,
    bytes: &[u8],
    src: SocketAddr,
    local: SocketAddr,
    proto: Proto,
    conn: Option<&Arc<crate::transport::conn::Conn>>,
) {
    // Flood control before any parsing: replies (`SIP/2.0 ...`) belong to
    // our own transactions and are never limited.
    let mut answer_503 = false;
    if shard.flood_on && !bytes.starts_with(b"SIP/") {
        match flood_check(shard, src) {
            Verdict::Pass => {}
            Verdict::RateLimited if shard.flood_503 => answer_503 = true,
            Verdict::RateLimited | Verdict::Banned => return,
        }
    }
    let mut ctx = take_ctx(shard);
    ctx.load(bytes, src, local);
    if let Some(c) = conn {
        ctx.proto = proto;
        ctx.conn_id = Some(c.id);
    }
    if bytes.len() > shard.max_msg_bytes {
        bad_input(shard, &ctx, ParseError::TooLarge);
        return recycle(shard, ctx);
    }
    if let Err(e) = ctx.parse(&shard.limits) {
        bad_input(shard, &ctx, e);
        // Errors found while framing are answered too when the request
        // line and the headers a reply copies can still be read.
        if !matches!(e, ParseError::TooLarge | ParseError::Empty)
            && crate::sip::salvage(&ctx.buf[..ctx.len], &shard.limits, &mut ctx.parsed)
        {
            answer_bad_request(shard, &mut ctx, e);
        }
        return recycle(shard, ctx);
    }
    if let Some(c) = conn {
        super::conn::maybe_alias(shard, &ctx, c);
    }
    if answer_503 {
        if crate::kemi::sl_reply(shard.engine.shared(), &mut ctx, 503, b"Service Unavailable") {
            send_out(shard, &ctx);
        }
        return recycle(shard, ctx);
    }
    let to = dispatch::target(&ctx.msg(), shard.id, shard.shard_count, shard.dispatch);
    if to != shard.id {
        shard.counters().incr(Counter::DispatchSent);
        if let Err(ctx) = shard.peers.hand_over(to, ctx) {
            shard.counters().incr(Counter::DispatchDropped);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(shard = shard.id, to, "dispatch queue full: message dropped");
            }
            recycle(shard, ctx);
        }
        return;
    }
    run_message(shard, ctx);
}

/// `[flood]`: the verdict on a request from `src`, counted and logged
/// (rate-limited) when it is not a pass.
fn flood_check(shard: &Shard, src: SocketAddr) -> Verdict {
    let flood = &shard.engine.shared().services.tables.flood;
    if !flood.needs_check() {
        return Verdict::Pass;
    }
    let c = flood.check(src.ip(), crate::kemi::services::unix_now_ms());
    let counters = shard.counters();
    if c.evicted {
        counters.incr(Counter::FloodTableFull);
        if shard.log.allow(Instant::now()) {
            tracing::warn!(
                shard = shard.id,
                max_sources = flood.config().max_sources,
                "flood table full: a source with state was forgotten"
            );
        }
    }
    match c.verdict {
        Verdict::Pass => {}
        Verdict::RateLimited => {
            counters.incr(Counter::FloodRateLimited);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(
                    shard = shard.id,
                    src = %src.ip(),
                    "request over [flood] per_source_rate {}",
                    if shard.flood_503 { "answered 503" } else { "dropped" }
                );
            }
        }
        Verdict::Banned => {
            counters.incr(Counter::FloodBannedDrops);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(shard = shard.id, src = %src.ip(), "request from a banned source dropped");
            }
        }
    }
    c.verdict
}

/// Runs the route of a parsed message that belongs to this shard.
fn run_message(shard: &Rc<Shard>, mut ctx: Box<MsgCtx>) {
    let counters = shard.counters();
    let is_request = ctx.msg().is_request();
    if is_request {
        counters.incr(Counter::RcvRequests);
        let checked = ctx.msg().check_request().and_then(|()| {
            if shard.reject_unknown_ruri_scheme {
                ctx.msg().check_ruri_scheme()
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            bad_input(shard, &ctx, e);
            // Answer when the headers a reply copies are usable (RFC 3261 §8.2).
            answer_bad_request(shard, &mut ctx, e);
            return recycle(shard, ctx);
        }
        if shard.inflight.get() >= shard.max_inflight {
            // Overloaded: shed load with a clear answer instead of queueing.
            inflight_full(shard);
            if crate::kemi::sl_reply(shard.engine.shared(), &mut ctx, 503, b"Service Unavailable") {
                send_out(shard, &ctx);
            }
            return recycle(shard, ctx);
        }
    } else {
        counters.incr(Counter::RcvReplies);
        if let Err(e) = ctx.msg().check_response() {
            bad_input(shard, &ctx, e);
            return recycle(shard, ctx);
        }
        // Replies to the dispatcher's keepalives update the destination
        // state and go no further (only when the module is loaded).
        if let Some(ds) = &shard.engine.shared().services.tables.dispatcher {
            if crate::kemi::dispatcher::on_reply(ds, &ctx.msg(), shard.engine.tm_now_ms()) {
                counters.incr(Counter::DsProbeReplies);
                return recycle(shard, ctx);
            }
        }
        if shard.inflight.get() >= shard.max_inflight {
            inflight_full(shard);
            counters.incr(Counter::DropReplies);
            return recycle(shard, ctx);
        }
    }
    let t0 = Instant::now();
    let mut run: Pin<Box<dyn Future<Output = (Box<MsgCtx>, RouteOutcome)>>> = if is_request {
        Box::pin(shard.engine.run_request(ctx))
    } else {
        shard.engine.process_reply(ctx)
    };
    // First poll inline, with a waker that does nothing: a route that does
    // not wait finishes here with no task, no allocation. One that waits is
    // spawned, and the task's first poll re-registers its real waker.
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    match first {
        Ok(Poll::Ready((ctx, outcome))) => finish(shard, ctx, outcome, t0, is_request),
        Ok(Poll::Pending) => {
            counters.incr(Counter::RoutesSuspended);
            let guard = Inflight::new(shard.clone());
            let s = shard.clone();
            let spawned = shard.ex.spawn(async move {
                let _guard = guard;
                let (ctx, outcome) = run.await;
                finish(&s, ctx, outcome, t0, is_request);
            });
            if spawned.is_err() {
                // Bounded by max_inflight, so the table has room; if not,
                // the message is lost and counted.
                counters.incr(Counter::DropRequests);
            }
        }
        Err(payload) => {
            drop(run);
            route_panicked(shard, panic_text(&*payload), "route");
        }
    }
}

/// `[shard] max_inflight` reached: counted and logged (rate-limited).
#[cold]
fn inflight_full(shard: &Shard) {
    shard.counters().incr(Counter::InflightLimit);
    if shard.log.allow(Instant::now()) {
        tracing::warn!(
            shard = shard.id,
            max_inflight = shard.max_inflight,
            "suspended routes at [shard] max_inflight: request answered 503 / reply dropped"
        );
    }
}

/// Counts a suspended route while it lives, whatever way it ends.
struct Inflight(Rc<Shard>);

impl Inflight {
    fn new(shard: Rc<Shard>) -> Inflight {
        shard.inflight.set(shard.inflight.get() + 1);
        Inflight(shard)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
    }
}

/// A panic while a route ran: the message it was routing (still in the
/// engine's slot when the panic came from a KSR function) is answered 500
/// when it is a request; the panic is counted and logged with its text (the
/// panic hook has already printed where it happened). The shard goes on.
fn route_panicked(shard: &Rc<Shard>, text: &str, what: &str) {
    shard.counters().incr(Counter::Panics);
    let text = crate::exec::take_panic().unwrap_or_else(|| text.to_string());
    tracing::error!(
        shard = shard.id,
        "panic in a {what}, caught; the shard goes on: {text}"
    );
    let ctx = shard.engine.shared().cur.borrow_mut().take();
    if let Some(mut ctx) = ctx {
        if ctx.msg().is_request() {
            answer_500(shard, &mut ctx);
        }
        send_out(shard, &ctx);
        recycle(shard, ctx);
    }
}

/// Queues `500 Server Internal Error` unless the route already replied.
fn answer_500(shard: &Shard, ctx: &mut MsgCtx) {
    if ctx.replied.is_none() {
        crate::kemi::sl_reply(shard.engine.shared(), ctx, 500, b"Server Internal Error");
    }
}

fn finish(
    shard: &Rc<Shard>,
    mut ctx: Box<MsgCtx>,
    outcome: RouteOutcome,
    t0: Instant,
    request: bool,
) {
    let ns = t0.elapsed().as_nanos() as u64;
    {
        let mut routes = shard.routes.borrow_mut();
        let h = if request {
            &mut routes.request
        } else {
            &mut routes.reply
        };
        h.saturating_record(ns.max(1));
    }
    if request {
        shard.engine.route_end(&ctx);
    }
    let counters = shard.counters();
    match outcome {
        RouteOutcome::Done => {}
        RouteOutcome::Drop => {
            counters.incr(if request {
                Counter::DropRequests
            } else {
                Counter::DropReplies
            });
        }
        RouteOutcome::Error(text) => {
            if let Some(panic) = crate::exec::take_panic() {
                // A KSR function panicked and Lua's pcall made it an error.
                counters.incr(Counter::Panics);
                tracing::error!(
                    shard = shard.id,
                    "panic in a route, caught; the shard goes on: {panic}"
                );
            } else {
                counters.incr(Counter::ErrRequests);
            }
            if shard.log.allow(Instant::now()) {
                tracing::error!(shard = shard.id, src = %ctx.src, "script error: {text}");
            }
            if request && shard.on_error == OnScriptError::Reply500 {
                answer_500(shard, &mut ctx);
            }
            shard.engine.relieve_memory();
        }
    }
    send_out(shard, &ctx);
    if let Some((code, reason)) = ctx.ws_close.take() {
        // KSR.websocket.close*(): the connection the message came on, after
        // the route's own replies.
        if let Some(sc) = &shard.conns {
            if let Some(c) = sc.table.get(&Dest::new(ctx.src, ctx.proto)) {
                super::web::close_from_route(&c, code, &reason, sc.table.now_ms());
            }
        }
    }
    recycle(shard, ctx);
}

/// Queues the datagrams the route produced; they leave with the turn's
/// other replies in one `sendmmsg` ([`flush_sends`]), and what goes on a
/// connection this shard owns in one write per connection.
fn send_out(shard: &Shard, ctx: &MsgCtx) {
    let mut sends = shard.sends.borrow_mut();
    for o in &ctx.out {
        let bytes = &ctx.out_buf[o.start as usize..o.end as usize];
        if o.dst.proto != Proto::Udp {
            // KSR.set_reply_no_connect / set_forward_no_connect.
            let connect = if bytes.starts_with(b"SIP/2.0 ") {
                !ctx.reply_no_connect
            } else {
                !ctx.forward_no_connect
            };
            send_stream(shard, o.dst, bytes, connect);
            continue;
        }
        sends.push(bytes, o.dst.addr);
        if sends.full() {
            flush_batch(shard, &mut sends);
        }
    }
}

/// Sends on a TCP/TLS connection (any shard's) through the shared table;
/// on one this shard owns, at the end of the turn ([`flush_sends`]).
pub(super) fn send_stream(shard: &Shard, dst: Dest, bytes: &[u8], connect: bool) {
    let r = match &shard.conns {
        Some(sc) => sc.send(shard.id, dst, bytes, connect),
        None => Err(crate::transport::conn::SendError::ConnectFailed),
    };
    if let Err(e) = r {
        shard.counters().incr(Counter::SendErrors);
        if shard.log.allow(Instant::now()) {
            tracing::warn!(shard = shard.id, %dst, "send failed: {e:?}");
        }
    }
}

/// Sends what this turn queued (the routes' datagrams and the
/// transaction layer's: relayed requests, replies, retransmissions).
fn flush_sends(shard: &Shard) {
    let mut sends = shard.sends.borrow_mut();
    if shard.engine.tm_has_output() {
        shard.engine.drain_tm(|dst, bytes| {
            if dst.proto != Proto::Udp {
                send_stream(shard, dst, bytes, true);
                return;
            }
            sends.push(bytes, dst.addr);
            if sends.full() {
                flush_batch(shard, &mut sends);
            }
        });
    }
    if !sends.is_empty() {
        flush_batch(shard, &mut sends);
    }
    if let Some(sc) = &shard.conns {
        let failed = sc.flush();
        for _ in 0..failed {
            shard.counters().incr(Counter::SendErrors);
        }
        if failed > 0 && shard.log.allow(Instant::now()) {
            tracing::warn!(shard = shard.id, failed, "stream send failed");
        }
    }
}

fn flush_batch(shard: &Shard, sends: &mut SendBatch) {
    sends.flush(shard.sock.as_raw_fd(), |dst, e| {
        shard.counters().incr(Counter::SendErrors);
        if shard.log.allow(Instant::now()) {
            tracing::warn!(shard = shard.id, %dst, "udp send failed: {e}");
        }
    });
}

/// Runs tasks and timers (no socket reads) until `done()` or `deadline`:
/// shutdown waits for suspended routes and database writes this way,
/// polling every millisecond (shutdown only).
pub(super) fn drain_until(shard: &Rc<Shard>, deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        run_tasks(shard);
        flush_sends(shard);
        if !done() && !shard.ex.has_ready() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_error_backoff_doubles_and_is_capped() {
        assert_eq!(recv_backoff(1), Duration::from_millis(1));
        assert_eq!(recv_backoff(2), Duration::from_millis(2));
        assert_eq!(recv_backoff(5), Duration::from_millis(16));
        assert_eq!(recv_backoff(7), Duration::from_millis(64));
        assert_eq!(recv_backoff(u32::MAX), Duration::from_millis(64));
    }
}
