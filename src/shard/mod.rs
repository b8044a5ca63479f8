//! Shards: one glommio executor pinned per configured CPU, each owning its UDP
//! socket, receive buffers, Lua VM, counters and route histograms.
//!
//! Lifecycle (seastar's `sharded<T>`): [`start`] spawns the executors and waits
//! until each has bound its socket and loaded the script (or reports the first
//! failure); [`Running::wait`] blocks until SIGINT/SIGTERM or a shard exits,
//! stops every shard and returns their final snapshots.
//!
//! Never: share mutable state between shards on the message path. The control
//! plane reaches a shard only through its bounded command queue
//! ([`control::ShardCmd`]), polled by a timer task off the receive loop.

pub mod control;
pub mod runtime;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::config::{Config, OnScriptError, ShardSpec};
use glommio::channels::channel_mesh::{Full, MeshBuilder};

use crate::kemi::services::{MeshMsg, Services};
use crate::kemi::{Engine, EngineConfig, MsgCtx, Myself, RouteOutcome, Shared};
use crate::sip::{Limits, ParseError};
use crate::stats::{new_histogram, Counter, RouteHistogram, ShardSnapshot};
use control::{ControlHandle, ShardCmd, UlCmd};

/// FNV-1a 64 of the lower-cased key, modulo the shard count: the shard that
/// owns an AOR (user location) or any other keyed state.
pub fn shard_for(key: &[u8], shards: usize) -> usize {
    debug_assert!(shards > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b.to_ascii_lowercase() as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Everything a shard needs to start, shared read-only at start-up.
pub struct ShardParams {
    pub config: Config,
    pub script: String,
    pub script_name: String,
    pub myself: Myself,
    pub shard_count: usize,
    /// Nonce HMAC key, the same on every shard so any shard accepts any nonce.
    pub nonce_secret: [u8; 32],
    pub db: Option<crate::db::DbHandle>,
    /// Location rows loaded at start (db_mode 1/2), one slot per shard.
    pub location_rows: Vec<std::sync::Mutex<Vec<crate::db::LocationRow>>>,
    /// Process start, unix seconds (ruid and nonce uniqueness).
    pub epoch_unix_s: u64,
}

impl ShardParams {
    pub fn new(
        config: Config,
        script: String,
        script_name: String,
        shard_count: usize,
    ) -> ShardParams {
        let myself = Myself::new(config.core.listen, &config.core.alias);
        let nonce_secret = if config.auth.secret.is_empty() {
            let mut k = [0u8; 32];
            // Without OS randomness, fall back to a time-derived key: still
            // HMAC-protected, only less unpredictable.
            if getrandom::getrandom(&mut k).is_err() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                k[..16].copy_from_slice(&t.to_le_bytes());
            }
            k
        } else {
            use sha2::Digest;
            sha2::Sha256::digest(config.auth.secret.as_bytes()).into()
        };
        ShardParams {
            config,
            script,
            script_name,
            myself,
            shard_count,
            nonce_secret,
            db: None,
            location_rows: (0..shard_count)
                .map(|_| std::sync::Mutex::new(Vec::new()))
                .collect(),
            epoch_unix_s: crate::kemi::services::unix_now_s(),
        }
    }

    /// Splits loaded location rows by owning shard.
    pub fn set_location_rows(&mut self, rows: Vec<crate::db::LocationRow>) {
        let use_domain = self.config.registrar.use_domain;
        for r in rows {
            let (aor, _) = crate::kemi::services::from_row(&r, use_domain);
            let owner = shard_for(aor.as_bytes(), self.shard_count);
            if let Ok(mut slot) = self.location_rows[owner].lock() {
                slot.push(r);
            }
        }
    }

    fn services(&self, shard_id: usize) -> Result<Rc<Services>, String> {
        Services::new(
            shard_id,
            self.shard_count,
            &self.config.auth,
            &self.config.registrar,
            self.nonce_secret,
            self.db.clone(),
            self.epoch_unix_s,
        )
        .map(Rc::new)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
    #[error("{0}")]
    Other(String),
}

/// Started shards.
pub struct Running {
    pub control: ControlHandle,
    handles: Vec<glommio::ExecutorJoinHandle<Option<ShardSnapshot>>>,
    finished: Arc<std::sync::atomic::AtomicUsize>,
    pub local_addr: SocketAddr,
}

/// Spawns one executor per shard spec; returns once all are serving.
pub fn start(params: Arc<ShardParams>, specs: Vec<ShardSpec>) -> Result<Running, StartError> {
    let started = Instant::now();
    let (ready_tx, ready_rx) = sync_channel::<Result<(usize, SocketAddr), StartError>>(specs.len());
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mesh: MeshBuilder<MeshMsg, Full> =
        MeshBuilder::full(specs.len(), params.config.shard.mesh_queue.max(1));
    let mut senders = Vec::with_capacity(specs.len());
    let mut handles = Vec::with_capacity(specs.len());
    for spec in specs {
        let (cmd_tx, cmd_rx) = sync_channel::<ShardCmd>(spec.tuning.control_queue);
        senders.push(cmd_tx);
        let placement = match spec.cpu {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let params = params.clone();
        let ready = ready_tx.clone();
        let finished = finished.clone();
        let mesh = mesh.clone();
        let id = spec.id;
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(spec.tuning.io_memory_bytes)
            .ring_depth(spec.tuning.ring_depth)
            .spin_before_park(Duration::from_micros(spec.tuning.spin_before_park_us))
            .preempt_timer(Duration::from_millis(10));
        let handle = builder
            .spawn(move || async move {
                let snap = serve(spec, params, mesh, cmd_rx, ready, started).await;
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                snap
            })
            .map_err(|e| StartError::Shard {
                shard: id,
                message: format!("cannot start executor: {e}"),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let control = ControlHandle::new(senders, started);
    let mut local_addr = params.config.core.listen;
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok((_, addr))) => local_addr = addr,
            Ok(Err(e)) => {
                control.shutdown();
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
            Err(_) => {
                control.shutdown();
                return Err(StartError::Other("a shard exited during start-up".into()));
            }
        }
    }
    Ok(Running {
        control,
        handles,
        finished,
        local_addr,
    })
}

impl Running {
    /// Blocks until SIGINT/SIGTERM (or a shard stops by itself), then stops all
    /// shards and returns their final snapshots.
    pub fn wait(self) -> Vec<ShardSnapshot> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                None
            }
        };
        loop {
            if let Some(sig) = signals.as_mut().and_then(|s| s.pending().next()) {
                tracing::info!(signal = sig, "stopping");
                break;
            }
            if self.finished.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                tracing::warn!("a shard stopped; stopping the others");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop()
    }

    /// Stops every shard and collects their final snapshots.
    pub fn stop(self) -> Vec<ShardSnapshot> {
        self.control.shutdown();
        let mut snaps = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Some(s)) => snaps.push(s),
                Ok(None) => {}
                Err(e) => tracing::error!("shard join failed: {e}"),
            }
        }
        snaps.sort_by_key(|s| s.shard);
        snaps
    }
}

/// Per-route histograms of one shard.
struct RouteStats {
    request: Histogram<u64>,
    reply: Histogram<u64>,
}

/// A bounded log rate limiter (per shard): at most `per_s` lines a second.
struct LogLimiter {
    per_s: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    fn allow(&self, now: Instant) -> bool {
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

/// One shard's state, shared by its tasks (single thread: Rc/RefCell).
struct Shard {
    id: usize,
    /// Non-blocking std handle of `sock` (same socket) for direct reads.
    fast: std::net::UdpSocket,
    /// The socket's bound address (read once: no getsockname per datagram).
    local: SocketAddr,
    cpu: Option<usize>,
    sock: UdpSocket,
    engine: Engine,
    limits: Limits,
    on_error: OnScriptError,
    routes: RefCell<RouteStats>,
    /// Recycled contexts. Boxed on purpose: a context moves into a route
    /// future and back by pointer, never by copying its buffers' headers.
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<MsgCtx>>>,
    pool_max: usize,
    max_msg_bytes: usize,
    max_headers: usize,
    inflight: Cell<usize>,
    max_inflight: usize,
    stop: Cell<bool>,
    /// Wakes the receive loop at shutdown (no socket read timeout needed).
    stop_tx: glommio::channels::local_channel::LocalSender<()>,
    started: Instant,
    log: LogLimiter,
    tuning: serde_json::Value,
}

async fn serve(
    spec: ShardSpec,
    params: Arc<ShardParams>,
    mesh: MeshBuilder<MeshMsg, Full>,
    cmd_rx: Receiver<ShardCmd>,
    ready: SyncSender<Result<(usize, SocketAddr), StartError>>,
    started: Instant,
) -> Option<ShardSnapshot> {
    let id = spec.id;
    let fail = |message: String| {
        let _ = ready.send(Err(StartError::Shard { shard: id, message }));
        None
    };
    let t = &spec.tuning;
    let opts = crate::transport::udp::UdpOptions {
        recv_buffer_bytes: t.recv_buffer_bytes,
        send_buffer_bytes: t.send_buffer_bytes,
    };
    let listen = params.config.core.listen;
    if t.nice != 0 {
        renice_current_thread(id, t.nice);
    }
    let raw = match crate::transport::udp::bind_reuseport(listen, opts) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot bind udp:{listen}: {e}")),
    };
    let (rcvbuf, sndbuf) = crate::transport::udp::effective_buffers(&raw);
    let local = raw
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(listen);
    // A second handle on the same socket for the non-blocking fast path:
    // under load every read is one recvfrom() straight into the context's
    // buffer; glommio (io_uring) is only used to wait while the socket is
    // empty, with a 1-byte peek (its own read path would allocate a
    // max-size buffer for every wait).
    let fast = match raw.try_clone() {
        Ok(s) => std::net::UdpSocket::from(s),
        Err(e) => return fail(format!("cannot clone the socket: {e}")),
    };
    let sock = UdpSocket::from(raw);
    let services = match params.services(id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let engine = match Engine::new(&EngineConfig {
        shard_id: id,
        shard_count: params.shard_count,
        script: &params.script,
        script_name: &params.script_name,
        myself: params.myself.clone(),
        server_header: &params.config.core.server_header,
        tuning: t,
        services: services.clone(),
    }) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    // Registrations restored from the database (db_mode 1/2).
    let rows = params
        .location_rows
        .get(id)
        .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
        .unwrap_or_default();
    if !rows.is_empty() {
        let use_domain = params.config.registrar.use_domain;
        let report = services.location.borrow_mut().load(
            rows.iter()
                .map(|r| crate::kemi::services::from_row(r, use_domain)),
            crate::kemi::services::unix_now_s(),
        );
        tracing::info!(
            shard = id,
            loaded = report.loaded,
            expired = report.expired,
            rejected = report.rejected,
            "location restored"
        );
    }
    // Join the channel mesh (every shard must; bounded wait).
    let mesh =
        glommio::timer::timeout(Duration::from_secs(10), async { Ok(mesh.join().await) }).await;
    let (senders, mut receivers) = match mesh {
        Ok(Ok(m)) => m,
        _ => return fail("cannot join the shard mesh".into()),
    };
    *services.mesh.borrow_mut() = Some(Rc::new(senders));
    for (_peer, stream) in receivers.streams() {
        let svc = services.clone();
        let shared = engine.shared().clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                shared.counters.incr(Counter::MeshRecv);
                svc.handle_mesh(msg);
            }
        })
        .detach();
    }
    let mut tuning = serde_json::to_value(t).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut tuning {
        m.insert("cpu".into(), serde_json::json!(spec.cpu));
        m.insert(
            "effective_recv_buffer_bytes".into(),
            serde_json::json!(rcvbuf),
        );
        m.insert(
            "effective_send_buffer_bytes".into(),
            serde_json::json!(sndbuf),
        );
    }
    let (stop_tx, stop_rx) = glommio::channels::local_channel::new_bounded(1);
    let shard = Rc::new(Shard {
        id,
        fast,
        local,
        cpu: spec.cpu,
        sock,
        engine,
        limits: Limits {
            max_headers: t.max_headers,
            max_msg_len: t.max_msg_bytes,
        },
        on_error: params.config.core.on_script_error,
        routes: RefCell::new(RouteStats {
            request: new_histogram(),
            reply: new_histogram(),
        }),
        pool: RefCell::new(Vec::new()),
        pool_max: 64,
        max_msg_bytes: t.max_msg_bytes,
        max_headers: t.max_headers,
        inflight: Cell::new(0),
        max_inflight: t.max_inflight,
        stop: Cell::new(false),
        stop_tx,
        started,
        log: LogLimiter {
            per_s: params.config.core.bad_input_log_per_s,
            window: Cell::new(None),
            used: Cell::new(0),
            suppressed: Cell::new(0),
        },
        tuning,
    });
    glommio::spawn_local(control_loop(shard.clone(), cmd_rx)).detach();
    glommio::spawn_local(usrloc_timer(
        shard.clone(),
        params.config.registrar.timer_interval_s,
    ))
    .detach();
    tracing::info!(shard = id, cpu = ?spec.cpu, %local, "shard serving");
    let _ = ready.send(Ok((id, local)));
    drop(ready);

    recv_loop(&shard, t.recv_batch, stop_rx).await;

    // Let suspended routes finish (bounded wait) before the final snapshot.
    let deadline = Instant::now() + Duration::from_secs(2);
    while shard.inflight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Write-back: flush what is dirty, then wait (bounded) for every DB write.
    let svc = shard.engine.shared().services.clone();
    if svc.registrar.db_mode == 2 {
        let n = svc.flush_dirty(shard.engine.shared().clone());
        tracing::info!(shard = id, rows = n, "location flushed on shutdown");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.db_pending.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if svc.db_pending.get() > 0 {
        tracing::error!(
            shard = id,
            pending = svc.db_pending.get(),
            "database writes still pending at exit"
        );
    }
    Some(snapshot(&shard, false))
}

async fn control_loop(shard: Rc<Shard>, cmd_rx: Receiver<ShardCmd>) {
    loop {
        loop {
            match cmd_rx.try_recv() {
                Ok(ShardCmd::Snapshot { reset, reply }) => {
                    let _ = reply.send(snapshot(&shard, reset));
                }
                Ok(ShardCmd::Ul { cmd, reply }) => {
                    let _ = reply.send(handle_ul(&shard, cmd));
                }
                Ok(ShardCmd::Shutdown) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    shard.stop.set(true);
                    let _ = shard.stop_tx.try_send(());
                    return;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
            }
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

fn handle_ul(shard: &Shard, cmd: UlCmd) -> serde_json::Value {
    crate::kemi::registrar::ul_json(&shard.engine.shared().services, cmd)
}

/// usrloc timer: expire bindings and (db_mode 2) write back dirty ones.
async fn usrloc_timer(shard: Rc<Shard>, interval_s: u64) {
    let interval = Duration::from_secs(interval_s.max(1));
    let mut next = Instant::now() + interval;
    while !shard.stop.get() {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        let shared = shard.engine.shared();
        let svc = shared.services.clone();
        svc.expire(shared.clone());
        if svc.registrar.db_mode == 2 {
            svc.flush_dirty(shared.clone());
        }
    }
}

fn snapshot(shard: &Shard, reset: bool) -> ShardSnapshot {
    let shared = shard.engine.shared();
    let mut routes = shard.routes.borrow_mut();
    let snap = ShardSnapshot {
        shard: shard.id,
        cpu: shard.cpu,
        uptime_s: shard.started.elapsed().as_secs_f64(),
        counters: {
            let mut c = shared.counters.values();
            c[Counter::MeshSent as usize] = shared.services.mesh_sent.get();
            c
        },
        gauges: vec![
            (
                "usrloc.aors",
                shared.services.location.borrow().len() as i64,
            ),
            (
                "usrloc.contacts",
                shared.services.location.borrow().contact_count() as i64,
            ),
            (
                "auth.cache_entries",
                shared.services.creds.borrow().len() as i64,
            ),
            ("shard.inflight", shard.inflight.get() as i64),
            (
                "shard.lua_memory_bytes",
                shard.engine.used_memory_bytes() as i64,
            ),
        ],
        routes: vec![
            RouteHistogram {
                route: "request_route".into(),
                hist: routes.request.clone(),
            },
            RouteHistogram {
                route: "reply_route".into(),
                hist: routes.reply.clone(),
            },
        ],
        tuning: shard.tuning.clone(),
    };
    if reset {
        shared.services.mesh_sent.set(0);
        shared.counters.reset();
        routes.request.reset();
        routes.reply.reset();
    }
    snap
}

/// The headers a reply copies (RFC 3261 §8.2.6) are present and parse.
fn answerable(msg: &crate::sip::SipMsg<'_>) -> bool {
    msg.top_via().is_ok()
        && msg.call_id().is_some()
        && msg.cseq().is_ok()
        && msg.from().is_ok()
        && msg.to().is_ok()
}

fn is_timeout(e: &glommio::GlommioError<()>) -> bool {
    match e {
        glommio::GlommioError::IoError(io) => {
            matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        }
        glommio::GlommioError::TimedOut(_) => true,
        _ => false,
    }
}

async fn recv_loop(
    shard: &Rc<Shard>,
    batch: usize,
    stop_rx: glommio::channels::local_channel::LocalReceiver<()>,
) {
    let mut handled_in_turn = 0usize;
    while !shard.stop.get() {
        let mut ctx = shard
            .pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Box::new(MsgCtx::new(shard.max_msg_bytes, shard.max_headers)));
        match shard.fast.recv_from(&mut ctx.buf) {
            Ok((n, src)) => {
                ctx.len = n;
                ctx.src = src;
                handle_datagram(shard, ctx).await;
                handled_in_turn += 1;
                if handled_in_turn >= batch {
                    handled_in_turn = 0;
                    glommio::yield_if_needed().await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                recycle(shard, ctx);
                handled_in_turn = 0;
                // Empty: wait in io_uring until a datagram is there, or stop.
                let mut probe = [0u8; 1];
                let ready = futures_lite::future::or(
                    async { Some(shard.sock.peek_from(&mut probe).await.map(|_| ())) },
                    async {
                        stop_rx.recv().await;
                        None
                    },
                )
                .await;
                match ready {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        if !is_timeout(&e) && shard.log.allow(Instant::now()) {
                            tracing::warn!(shard = shard.id, "udp wait failed: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                recycle(shard, ctx);
                if shard.log.allow(Instant::now()) {
                    tracing::warn!(shard = shard.id, "udp receive failed: {e}");
                }
            }
        }
    }
}

fn recycle(shard: &Shard, ctx: Box<MsgCtx>) {
    let mut pool = shard.pool.borrow_mut();
    if pool.len() < shard.pool_max {
        pool.push(ctx);
    }
}

fn bad_input(shard: &Shard, ctx: &MsgCtx, e: ParseError) {
    shard.engine.shared().counters.incr(Counter::BadMsgHdr);
    if shard.log.allow(Instant::now()) {
        tracing::warn!(shard = shard.id, src = %ctx.src, len = ctx.len, error = e.as_str(), "malformed SIP message dropped");
    }
}

async fn handle_datagram(shard: &Rc<Shard>, mut ctx: Box<MsgCtx>) {
    ctx.reset();
    ctx.local = shard.local;
    let counters = &shard.engine.shared().counters;
    if ctx.len > shard.max_msg_bytes {
        bad_input(shard, &ctx, ParseError::TooLarge);
        return recycle(shard, ctx);
    }
    // RFC 5626 keepalives (CRLF) are not messages.
    if ctx.buf[..ctx.len]
        .iter()
        .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
    {
        return recycle(shard, ctx);
    }
    if let Err(e) = ctx.parse(&shard.limits) {
        bad_input(shard, &ctx, e);
        return recycle(shard, ctx);
    }
    let is_request = ctx.msg().is_request();
    if is_request {
        counters.incr(Counter::RcvRequests);
        if let Err(e) = ctx.msg().check_request() {
            bad_input(shard, &ctx, e);
            // Answer 400 when the headers a reply copies are usable (RFC 3261 §8.2).
            if answerable(&ctx.msg()) {
                let reason = format!("Bad Request ({})", e.as_str());
                if crate::kemi::sl_reply(shard.engine.shared(), &mut ctx, 400, reason.as_bytes()) {
                    send_out(shard, &ctx).await;
                }
            }
            return recycle(shard, ctx);
        }
        if shard.inflight.get() >= shard.max_inflight {
            // Overloaded: shed load with a clear answer instead of queueing.
            if crate::kemi::sl_reply(shard.engine.shared(), &mut ctx, 503, b"Service Unavailable") {
                send_out(shard, &ctx).await;
            }
            return recycle(shard, ctx);
        }
        let t0 = Instant::now();
        let mut run = shard.engine.run_request(ctx);
        match futures_lite::future::poll_once(&mut run).await {
            Some((ctx, outcome)) => finish(shard, ctx, outcome, t0, true).await,
            None => {
                counters.incr(Counter::RoutesSuspended);
                shard.inflight.set(shard.inflight.get() + 1);
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let (ctx, outcome) = run.await;
                    shard.inflight.set(shard.inflight.get() - 1);
                    finish(&shard, ctx, outcome, t0, true).await;
                })
                .detach();
            }
        }
    } else {
        counters.incr(Counter::RcvReplies);
        if let Err(e) = ctx.msg().check_response() {
            bad_input(shard, &ctx, e);
            return recycle(shard, ctx);
        }
        if !shard.engine.has_reply_route() {
            counters.incr(Counter::DropReplies);
            return recycle(shard, ctx);
        }
        let t0 = Instant::now();
        let Some(mut run) = shard.engine.run_reply(ctx) else {
            return;
        };
        match futures_lite::future::poll_once(&mut run).await {
            Some((ctx, outcome)) => finish(shard, ctx, outcome, t0, false).await,
            None => {
                shard.inflight.set(shard.inflight.get() + 1);
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let (ctx, outcome) = run.await;
                    shard.inflight.set(shard.inflight.get() - 1);
                    finish(&shard, ctx, outcome, t0, false).await;
                })
                .detach();
            }
        }
    }
}

async fn finish(
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
    let counters = &shard.engine.shared().counters;
    match outcome {
        RouteOutcome::Done => {
            if !request {
                // No transaction layer yet: replies end at the reply route.
                counters.incr(Counter::DropReplies);
            }
        }
        RouteOutcome::Drop => {
            counters.incr(if request {
                Counter::DropRequests
            } else {
                Counter::DropReplies
            });
        }
        RouteOutcome::Error(text) => {
            counters.incr(Counter::ErrRequests);
            if shard.log.allow(Instant::now()) {
                tracing::error!(shard = shard.id, src = %ctx.src, "script error: {text}");
            }
            if request && shard.on_error == OnScriptError::Reply500 && ctx.replied.is_none() {
                crate::kemi::sl_reply(
                    shard.engine.shared(),
                    &mut ctx,
                    500,
                    b"Server Internal Error",
                );
            }
        }
    }
    send_out(shard, &ctx).await;
    recycle(shard, ctx);
}

async fn send_out(shard: &Shard, ctx: &MsgCtx) {
    for o in &ctx.out {
        let bytes = &ctx.out_buf[o.start as usize..o.end as usize];
        if let Err(e) = shard.sock.send_to(bytes, o.dst).await {
            shard.engine.shared().counters.incr(Counter::SendErrors);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(shard = shard.id, dst = %o.dst, "udp send failed: {e}");
            }
        }
    }
}

/// Sets this thread's niceness with `renice` (Linux treats a thread id as a
/// process id here), at start only: no unsafe code for one syscall.
fn renice_current_thread(shard: usize, nice: i32) {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string));
    let Some(tid) = tid else {
        tracing::warn!(shard, "shard.nice: cannot find this thread's id");
        return;
    };
    match std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &tid])
        .output()
    {
        Ok(o) if o.status.success() => tracing::info!(shard, nice, "shard thread reniced"),
        Ok(o) => tracing::warn!(
            shard,
            nice,
            "shard.nice: renice failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!(shard, nice, "shard.nice: cannot run renice: {e}"),
    }
}

/// Resolves the script text and name from the config.
pub fn load_script(cfg: &Config) -> Result<(String, String), String> {
    match &cfg.core.script {
        Some(p) => std::fs::read_to_string(p)
            .map(|s| (s, p.display().to_string()))
            .map_err(|e| format!("{}: {e}", p.display())),
        None => Ok((
            crate::config::DEFAULT_SCRIPT.to_string(),
            crate::config::DEFAULT_SCRIPT_NAME.to_string(),
        )),
    }
}

/// Loads the script once on the calling thread to refuse a broken one before
/// any shard starts.
pub fn check_script(params: &ShardParams) -> Result<(), String> {
    let tuning = params.config.shard.clone();
    let services = params.services(0)?;
    Engine::new(&EngineConfig {
        services,
        shard_id: 0,
        shard_count: params.shard_count,
        script: &params.script,
        script_name: &params.script_name,
        myself: params.myself.clone(),
        server_header: &params.config.core.server_header,
        tuning: &tuning,
    })
    .map(|_| ())
}

#[allow(dead_code)]
fn _assert_shared_is_not_send(_: &Shared) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_is_stable_and_case_insensitive() {
        assert_eq!(
            shard_for(b"alice@example.com", 2),
            shard_for(b"ALICE@Example.com", 2)
        );
        assert_eq!(shard_for(b"x", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[shard_for(format!("user{i}@d").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
    }
}
