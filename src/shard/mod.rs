//! Shards: one thread pinned per configured CPU, each running its own loop
//! (`io`), Lua VM, counters and route histograms.
//!
//! Lifecycle (seastar's `sharded<T>`): [`start`] spawns the shard threads and
//! waits until each has set up its loop and loaded the script (or reports
//! the first failure); [`Running::wait`] blocks until SIGINT/SIGTERM or a
//! shard exits, stops every shard and returns their final snapshots.
//!
//! Files, one job each: `mod.rs` starts, supervises and stops shards;
//! `io` is the receive/route/send loop; [`dispatch`] decides which shard
//! runs a message and hands it over; [`control`] carries the control plane's
//! commands; [`runtime`] is the control plane's own thread.
//!
//! Supervision: a panic inside a route or task is caught at the message
//! (answered 500, counted in `shard.panics`, logged); a panic anywhere else
//! in a shard thread stops the whole process with a clear log line and exit
//! status 70, so no shard is ever silently dead while clients still reach
//! the port.

mod conn;
pub mod control;
pub mod dispatch;
mod io;
pub mod reload;
pub mod runtime;
mod web;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ShardSpec, UdpSocketMode};
use crate::exec::{Doorbell, Executor};
use crate::kemi::services::{unix_now_s, Services, SharedTables};
use crate::kemi::{Engine, EngineConfig, Myself, Shared};
use crate::sip::Limits;
use crate::stats::{new_histogram, RouteHistogram, ShardSnapshot};
use crate::transport::sys::EventFd;
use control::{ControlHandle, ShardCmd};
use dispatch::Peers;
use io::{LogLimiter, LoopIo, RouteStats, Shard};

/// Exit status when a shard thread dies outside a message (EX_SOFTWARE).
pub const EXIT_SHARD_DIED: i32 = 70;

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
    /// KSR.sqlops connections and KSR.ndb_redis servers.
    pub sqlops: Option<crate::db::sqlops::SqlopsHandle>,
    pub redis: Option<crate::db::redis::RedisHandle>,
    /// KSR.ipops DNS lookups (the control runtime's worker).
    pub dns: Option<crate::db::dns::DnsHandle>,
    /// Location, nonce counts and credentials: one set for all shards.
    pub tables: Arc<SharedTables>,
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
        let mut myself = Myself::new(config.core.listen, &config.core.alias);
        if config.tcp.enable {
            if let Some(l) = config.tcp.listen {
                myself.add_listen(l);
            }
        }
        if let Some(l) = config.tls.listen {
            myself.add_listen(l);
        }
        crate::kemi::sanity::configure(&config.sanity);
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
        let epoch_unix_s = unix_now_s();
        let tables = Arc::new(
            SharedTables::new(shard_count, &config.auth, &config.registrar, epoch_unix_s)
                .with_tm(&config.tm, shard_count)
                .with_modules(&config),
        );
        ShardParams {
            config,
            script,
            script_name,
            myself,
            shard_count,
            nonce_secret,
            db: None,
            sqlops: None,
            redis: None,
            dns: None,
            tables,
            epoch_unix_s,
        }
    }

    /// Loads location rows read from the database (db_mode 1/2) into the
    /// shared table.
    pub fn set_location_rows(&mut self, rows: Vec<crate::db::LocationRow>) {
        let t = self
            .tables
            .load_rows(&rows, self.config.registrar.use_domain, unix_now_s());
        tracing::info!(
            loaded = t.loaded,
            expired = t.expired,
            rejected = t.rejected,
            "location restored"
        );
    }

    fn services(&self, shard_id: usize) -> Result<Rc<Services>, String> {
        Services::new(
            shard_id,
            self.shard_count,
            self.tables.clone(),
            &self.config.auth,
            &self.config.registrar,
            self.nonce_secret,
            self.db.clone(),
            self.epoch_unix_s,
        )
        .map(|mut svc| {
            svc.sqlops = self.sqlops.clone();
            svc.redis = self.redis.clone();
            svc.dns = self.dns.clone();
            svc.ipops_containers_max = self.config.ipops.pv_containers_max;
            svc.sqlops_results_max = self.config.db.sqlops_results_maxsize;
            svc.redis_replies_max = self.config.db.redis_replies_max;
            svc.db_retry
                .borrow_mut()
                .set_max(self.config.db.retry_queue_max);
            svc.db_retry_interval_ms
                .set(self.config.db.retry_interval_ms.max(1));
            Rc::new(svc)
        })
    }

    fn engine(
        &self,
        shard_id: usize,
        tuning: &crate::config::ShardTuning,
        local_addr: SocketAddr,
    ) -> Result<Engine, String> {
        self.engine_from(
            shard_id,
            tuning,
            local_addr,
            &self.script,
            &self.script_name,
        )
    }

    fn engine_config<'a>(
        &'a self,
        shard_id: usize,
        tuning: &'a crate::config::ShardTuning,
        local_addr: SocketAddr,
        script: &'a str,
        script_name: &'a str,
        services: Rc<Services>,
    ) -> EngineConfig<'a> {
        EngineConfig {
            shard_id,
            shard_count: self.shard_count,
            script,
            script_name,
            myself: self.myself.clone(),
            server_header: &self.config.core.server_header,
            tuning,
            services,
            test_hooks: self.config.core.test_hooks,
            defines: &self.config.core.defines,
            local_addr,
            route: self.config.core.route,
        }
    }

    /// An engine running `script` (start-up, and reload validation).
    fn engine_from(
        &self,
        shard_id: usize,
        tuning: &crate::config::ShardTuning,
        local_addr: SocketAddr,
        script: &str,
        script_name: &str,
    ) -> Result<Engine, String> {
        let services = self.services(shard_id)?;
        Engine::new(&self.engine_config(
            shard_id,
            tuning,
            local_addr,
            script,
            script_name,
            services,
        ))
    }

    /// Swaps `engine`'s VM for one running `script` (see `reload.rs`).
    fn reload_engine(
        &self,
        engine: &Engine,
        shard_id: usize,
        tuning: &crate::config::ShardTuning,
        local_addr: SocketAddr,
        script: &str,
        script_name: &str,
    ) -> Result<(), String> {
        engine.reload(&self.engine_config(
            shard_id,
            tuning,
            local_addr,
            script,
            script_name,
            engine.shared().services.clone(),
        ))
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
    handles: Vec<std::thread::JoinHandle<Option<ShardSnapshot>>>,
    finished: Arc<std::sync::atomic::AtomicUsize>,
    /// Told when a shard thread ends (set by [`Running::wait`]).
    exit_tx: Arc<std::sync::Mutex<Option<std::sync::mpsc::Sender<&'static str>>>>,
    pub local_addr: SocketAddr,
}

/// What start-up hands each shard thread.
struct ShardStart {
    spec: ShardSpec,
    params: Arc<ShardParams>,
    /// This shard's socket (the same one for every shard in "shared" mode).
    sock: Arc<std::net::UdpSocket>,
    /// How the shard sleeps and is woken.
    wait: io::WaitKind,
    bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    peers: Arc<Peers>,
    cmds: Receiver<ShardCmd>,
    ready: SyncSender<Result<(usize, SocketAddr), StartError>>,
    started: Instant,
    /// This shard's TCP and TLS listeners (`[tcp]` / `[tls]`).
    tcp: Option<std::net::TcpListener>,
    tls: Option<std::net::TcpListener>,
}

fn udp_options(t: &crate::config::ShardTuning) -> crate::transport::udp::UdpOptions {
    crate::transport::udp::UdpOptions {
        recv_buffer_bytes: t.recv_buffer_bytes,
        send_buffer_bytes: t.send_buffer_bytes,
    }
}

/// Spawns one thread per shard spec; returns once all are serving.
pub fn start(params: Arc<ShardParams>, specs: Vec<ShardSpec>) -> Result<Running, StartError> {
    let started = Instant::now();
    crate::exec::install_panic_hook();
    let n = specs.len();
    let (ready_tx, ready_rx) = sync_channel::<Result<(usize, SocketAddr), StartError>>(n.max(1));
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let exit_tx: Arc<std::sync::Mutex<Option<std::sync::mpsc::Sender<&'static str>>>> =
        Arc::new(std::sync::Mutex::new(None));
    let other = |e: std::io::Error| StartError::Other(e.to_string());
    let mode = params.config.core.udp_socket;
    let (socks, waits, bells) = bind_and_wire(&params, &specs, mode)?;
    let _ = other;
    let mut streams = bind_streams(&params, n, socks.first().and_then(|s| s.local_addr().ok()))?;
    let peers = Arc::new(Peers::new(&bells, params.config.shard.dispatch_queue));
    let listen = params.config.core.listen;
    let stops: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut senders = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for spec in specs {
        let (cmd_tx, cmd_rx) = sync_channel::<ShardCmd>(spec.tuning.control_queue);
        senders.push(cmd_tx);
        let id = spec.id;
        let start = ShardStart {
            params: params.clone(),
            sock: socks[id].clone(),
            wait: waits[id].clone(),
            bell: bells[id].clone(),
            stop: stops[id].clone(),
            peers: peers.clone(),
            cmds: cmd_rx,
            ready: ready_tx.clone(),
            started,
            tcp: streams.tcp.get_mut(id).and_then(Option::take),
            tls: streams.tls.get_mut(id).and_then(Option::take),
            spec,
        };
        let finished = finished.clone();
        let exit_tx = exit_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let snap = supervise(id, start);
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(tx) = exit_tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    let _ = tx.send("shard");
                }
                snap
            })
            .map_err(|e| StartError::Shard {
                shard: id,
                message: format!("cannot start the shard thread: {e}"),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let control = ControlHandle::new(senders, started)
        .with_bells(bells, stops)
        .with_modules(Arc::new(control::ModulesCtl {
            tables: params.tables.clone(),
            db: params.db.clone(),
            permissions: params.config.permissions.clone(),
        }));
    let reloader = Arc::new(reload::Reloader::new(params.clone(), control.clone()));
    let control = control.with_reloader(reloader);
    let mut local_addr = listen;
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
        exit_tx,
        local_addr,
    })
}

/// Each shard's TCP and TLS listeners.
struct Streams {
    tcp: Vec<Option<std::net::TcpListener>>,
    tls: Vec<Option<std::net::TcpListener>>,
}

/// `[tcp]` / `[tls]`: builds the shared connection table (reading the TLS
/// files) and binds one SO_REUSEPORT listener per shard and transport.
/// TCP listens on `core.listen`'s address and the UDP port unless
/// `tcp.listen` says otherwise.
fn bind_streams(
    params: &ShardParams,
    n: usize,
    udp: Option<SocketAddr>,
) -> Result<Streams, StartError> {
    let cfg = &params.config;
    let mut out = Streams {
        tcp: (0..n).map(|_| None).collect(),
        tls: (0..n).map(|_| None).collect(),
    };
    if !cfg.tcp.layer_on(&cfg.tls) {
        return Ok(out);
    }
    let tls_ctx = if cfg.tls.enabled() {
        let files = crate::transport::tls::TlsFiles {
            certificate: cfg.tls.certificate.clone().into(),
            private_key: cfg.tls.private_key.clone().into(),
            ca_list: (!cfg.tls.ca_list.is_empty()).then(|| cfg.tls.ca_list.clone().into()),
            require_client_cert: cfg.tls.require_certificate,
            verify_server: cfg.tls.verify_server,
        };
        Some(Arc::new(
            crate::transport::tls::TlsContext::load(files)
                .map_err(|e| StartError::Other(format!("[tls]: {e}")))?,
        ))
    } else {
        None
    };
    let bind_all = |addr: SocketAddr, what: &str| -> Result<(Vec<_>, SocketAddr), StartError> {
        let mut addr = addr;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let l = conn::listen(addr)
                .map_err(|e| StartError::Other(format!("cannot bind {what}:{addr}: {e}")))?;
            if addr.port() == 0 {
                if let Ok(a) = l.local_addr() {
                    addr.set_port(a.port());
                }
            }
            v.push(Some(l));
        }
        Ok((v, addr))
    };
    let mut listen_tcp = None;
    if cfg.tcp.enable {
        let addr = cfg.tcp.listen.unwrap_or_else(|| {
            let mut a = cfg.core.listen;
            if let Some(u) = udp {
                a.set_port(u.port());
            }
            a
        });
        let (v, a) = bind_all(addr, "tcp")?;
        out.tcp = v;
        listen_tcp = Some(a);
    }
    let mut listen_tls = None;
    if let Some(addr) = cfg.tls.listen {
        let (v, a) = bind_all(addr, "tls")?;
        out.tls = v;
        listen_tls = Some(a);
    }
    let t = &cfg.tcp;
    let mut table = crate::transport::conn::ConnTable::new(
        n,
        crate::transport::conn::ConnLimits {
            max_per_shard: t.max_connections_per_shard,
            max_per_source: t.max_connections_per_source,
            wq_max: t.conn_wq_max,
            idle_ms: t.connection_lifetime_s.saturating_mul(1000),
            connect_timeout_ms: t.connect_timeout_ms,
            max_msg_bytes: t.max_msg_bytes,
        },
        tls_ctx,
        listen_tcp,
        listen_tls,
    );
    table.accept_aliases = t.accept_aliases;
    let _ = params.tables.conns.set(Arc::new(table));
    tracing::info!(tcp = ?listen_tcp, tls = ?listen_tls, "stream listeners bound");
    Ok(out)
}

type Wiring = (
    Vec<Arc<std::net::UdpSocket>>,
    Vec<io::WaitKind>,
    Vec<Arc<Doorbell>>,
);

/// Binds the shards' sockets (in shard order: in a SO_REUSEPORT group the
/// i-th bound socket is index i, which the spread program relies on) and
/// makes each shard's doorbell:
/// - "spread": blocking sockets; a shard sleeps in `recvmmsg` itself (the
///   same two syscalls per request as a bare blocking responder), and is
///   woken by a wake-up datagram the BPF program delivers to its socket;
/// - "shared" / "reuseport": non-blocking sockets, the shard sleeps in
///   epoll, woken by an eventfd.
fn bind_and_wire(
    params: &ShardParams,
    specs: &[ShardSpec],
    mode: UdpSocketMode,
) -> Result<Wiring, StartError> {
    let n = specs.len();
    if mode == UdpSocketMode::Spread && n > 255 {
        return Err(StartError::Other(
            "core.udp_socket = \"spread\" supports at most 255 shards".into(),
        ));
    }
    let mut listen = params.config.core.listen;
    let bind_err = |e: std::io::Error| StartError::Other(format!("cannot bind udp:{listen}: {e}"));
    let tuning = |i: usize| specs.get(i).map(|s| s.tuning.clone()).unwrap_or_default();
    let mut socks = Vec::with_capacity(n);
    match mode {
        UdpSocketMode::Shared => {
            let s = crate::transport::udp::bind(listen, udp_options(&tuning(0)), false)
                .map_err(bind_err)?;
            let s = Arc::new(std::net::UdpSocket::from(s));
            socks.extend((0..n).map(|_| s.clone()));
        }
        UdpSocketMode::Reuseport | UdpSocketMode::Spread => {
            for i in 0..n {
                let s = crate::transport::udp::bind(listen, udp_options(&tuning(i)), true)
                    .map_err(|e| StartError::Other(format!("cannot bind udp:{listen}: {e}")))?;
                if mode == UdpSocketMode::Spread {
                    s.set_nonblocking(false)
                        .map_err(|e| StartError::Other(e.to_string()))?;
                }
                let s = std::net::UdpSocket::from(s);
                if i == 0 {
                    // Port 0: the others join the port the first one got.
                    if let Ok(a) = s.local_addr() {
                        listen.set_port(a.port());
                    }
                }
                socks.push(Arc::new(s));
            }
            if mode == UdpSocketMode::Spread {
                use std::os::fd::AsRawFd;
                crate::transport::sys::attach_reuseport_spread(socks[0].as_raw_fd(), n as u32)
                    .map_err(|e| {
                        StartError::Other(format!("cannot attach the spreading BPF program: {e}"))
                    })?;
            }
        }
    }
    let mut waits = Vec::with_capacity(n);
    let mut bells = Vec::with_capacity(n);
    if mode == UdpSocketMode::Spread {
        let mut target = listen;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let from: SocketAddr = match target {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        };
        let wake = Arc::new(
            std::net::UdpSocket::bind(from).map_err(|e| StartError::Other(e.to_string()))?,
        );
        wake.set_nonblocking(true)
            .map_err(|e| StartError::Other(e.to_string()))?;
        for i in 0..n {
            let wake = wake.clone();
            let datagram = crate::transport::sys::wake_datagram(i as u8);
            bells.push(Arc::new(Doorbell::new(move || {
                let _ = wake.send_to(&datagram, target);
            })));
            waits.push(io::WaitKind::Block);
        }
    } else {
        for _ in 0..n {
            let fd = Arc::new(EventFd::new().map_err(|e| StartError::Other(e.to_string()))?);
            let ring = fd.clone();
            bells.push(Arc::new(Doorbell::new(move || ring.ring())));
            waits.push(io::WaitKind::Epoll {
                bell_fd: fd,
                exclusive: mode == UdpSocketMode::Shared,
            });
        }
    }
    Ok((socks, waits, bells))
}

/// Runs a shard; a panic that escapes it (not one inside a route or task,
/// those are caught at the message) ends the process: a dead shard must
/// never be silent.
fn supervise(id: usize, start: ShardStart) -> Option<ShardSnapshot> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(start))) {
        Ok(snap) => snap,
        Err(payload) => {
            let text = crate::exec::panic_text(&*payload);
            tracing::error!(
                shard = id,
                "shard {id} stopped by a panic outside any route: {text}; stopping the server"
            );
            eprintln!("sipshard: shard {id} died ({text}); exiting with status {EXIT_SHARD_DIED}");
            std::process::exit(EXIT_SHARD_DIED);
        }
    }
}

impl Running {
    /// Blocks until SIGINT/SIGTERM (or a shard stops by itself), then stops all
    /// shards and returns their final snapshots. Sleeps in blocking reads
    /// meanwhile: an idle server wakes for nothing.
    pub fn wait(self) -> Vec<ShardSnapshot> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                let tx = tx.clone();
                let reloader = self.control.reloader();
                let _ = std::thread::Builder::new()
                    .name("signals".into())
                    .spawn(move || {
                        for sig in signals.forever() {
                            if sig == SIGHUP {
                                // Reload the script; errors are logged there.
                                if let Some(r) = &reloader {
                                    let _ = r.reload("SIGHUP");
                                }
                                continue;
                            }
                            tracing::info!(signal = sig, "stopping");
                            let _ = tx.send("signal");
                            break;
                        }
                    });
            }
            Err(e) => tracing::error!("cannot install signal handlers: {e}"),
        }
        *self.exit_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        if self.finished.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            if let Ok("shard") = rx.recv() {
                tracing::warn!("a shard stopped; stopping the others");
            }
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
                Err(_) => tracing::error!("a shard thread panicked at exit"),
            }
        }
        snaps.sort_by_key(|s| s.shard);
        snaps
    }
}

fn serve(st: ShardStart) -> Option<ShardSnapshot> {
    let ShardStart {
        spec,
        params,
        sock,
        wait,
        bell,
        stop,
        peers,
        cmds,
        ready,
        started,
        tcp,
        tls,
    } = st;
    let id = spec.id;
    let fail = |message: String| {
        let _ = ready.send(Err(StartError::Shard { shard: id, message }));
        None
    };
    let t = &spec.tuning;
    if let Some(cpu) = spec.cpu.filter(|_| params.config.core.pin) {
        if let Err(e) = crate::transport::sys::pin_current_thread(cpu) {
            return fail(format!("cannot pin to CPU {cpu}: {e}"));
        }
    }
    if t.nice != 0 {
        match crate::transport::sys::set_current_thread_nice(t.nice) {
            Ok(()) => tracing::info!(shard = id, nice = t.nice, "shard thread reniced"),
            Err(e) => tracing::warn!(shard = id, nice = t.nice, "shard.nice: {e}"),
        }
    }
    let listen = params.config.core.listen;
    let (rcvbuf, sndbuf) =
        crate::transport::udp::effective_buffers(&socket2::SockRef::from(&*sock));
    let local = sock.local_addr().unwrap_or(listen);
    let table = params.tables.conns.get().cloned();
    let mut io = match LoopIo::new(
        &sock,
        wait,
        t.recv_batch,
        t.max_msg_bytes + 1,
        table.is_some(),
    ) {
        Ok(io) => io,
        Err(e) => return fail(format!("cannot set up the event loop: {e}")),
    };
    let conns = match (&table, io.epoll_ctl()) {
        (Some(table), Some(ep)) => {
            let sc = conn::ShardConns::new(table.clone(), tcp, tls);
            if let Err(e) = sc.watch(&ep, id) {
                return fail(format!("cannot watch the stream listeners: {e}"));
            }
            Some(sc)
        }
        _ => None,
    };
    let engine = match params.engine(id, t, local) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    {
        // Replies the transaction layer relays upstream leave at once, under
        // their transaction's lock (ordering across shards); MSG_DONTWAIT,
        // as every send of the shard.
        let sock = sock.clone();
        let shared = Rc::downgrade(engine.shared());
        let table = table.clone();
        engine.set_tm_sender(Box::new(move |dst, bytes| {
            let r = if dst.proto.is_stream() {
                match &table {
                    Some(t) => t.send(id, dst, bytes, true).map_err(drop),
                    None => Err(()),
                }
            } else {
                let to = socket2::SockAddr::from(dst.addr);
                socket2::SockRef::from(&*sock)
                    .send_to_with_flags(bytes, &to, libc::MSG_DONTWAIT)
                    .map(drop)
                    .map_err(drop)
            };
            if r.is_err() {
                if let Some(s) = shared.upgrade() {
                    s.counters.incr(crate::stats::Counter::SendErrors);
                }
            }
        }));
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
        m.insert(
            "udp_socket".into(),
            serde_json::json!(params.config.core.udp_socket),
        );
    }
    // Tasks: suspended routes (bounded by max_inflight) plus database writes
    // and timers.
    let ex = Executor::new(bell.clone(), t.max_inflight.saturating_mul(2) + 64);
    Executor::enter(&ex);
    let shard = Rc::new(Shard {
        id,
        shard_count: params.shard_count,
        cpu: spec.cpu,
        sock,
        local,
        engine,
        params: params.clone(),
        engine_tuning: t.clone(),
        ex: ex.clone(),
        bell,
        peers,
        dispatch: t.dispatch,
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
        pool_max: 256,
        max_msg_bytes: t.max_msg_bytes,
        max_headers: t.max_headers,
        inflight: Cell::new(0),
        max_inflight: t.max_inflight,
        spin: Duration::from_micros(t.spin_before_park_us),
        stop,
        started,
        log: LogLimiter::new(params.config.core.bad_input_log_per_s),
        flood_on: params.config.flood.enabled(),
        flood_503: params.config.flood.answer_503,
        reject_unknown_ruri_scheme: params.config.core.reject_unknown_ruri_scheme,
        tuning,
        sends: RefCell::new(crate::transport::sys::SendBatch::new(t.recv_batch.max(16))),
        conns,
    });
    if shard.conns.is_some() && ex.spawn(conn::idle_timer(Rc::downgrade(&shard))).is_err() {
        return fail("cannot start the connection timer".into());
    }
    let timer = usrloc_timer(
        Rc::downgrade(&shard),
        params.config.registrar.timer_interval_s,
    );
    if ex.spawn(timer).is_err() {
        return fail("cannot start the usrloc timer".into());
    }
    if ex.spawn(db_retry_timer(Rc::downgrade(&shard))).is_err() {
        return fail("cannot start the database retry timer".into());
    }
    // Dispatcher keepalives and call-load expiry: one shard for the server
    // (the state they change is shared).
    if id == 0 && params.tables.dispatcher.is_some() {
        if params.config.dispatcher.ds_ping_interval > 0
            && ex
                .spawn(dispatcher_probe_timer(Rc::downgrade(&shard)))
                .is_err()
        {
            return fail("cannot start the dispatcher probe timer".into());
        }
        if params.config.dispatcher.ds_hash_size > 0
            && ex
                .spawn(dispatcher_load_timer(
                    Rc::downgrade(&shard),
                    params.config.dispatcher.ds_hash_check_interval,
                ))
                .is_err()
        {
            return fail("cannot start the dispatcher call-load timer".into());
        }
    }
    tracing::info!(shard = id, cpu = ?spec.cpu, %local, "shard serving");
    let _ = ready.send(Ok((id, local)));
    drop(ready);

    io::run(&shard, &mut io, &cmds);

    // Let suspended routes finish (bounded wait) before the final snapshot.
    io::drain_until(&shard, Instant::now() + Duration::from_secs(2), || {
        shard.inflight.get() == 0
    });
    // Write-back: flush what is dirty, then wait (bounded) for every DB write.
    let svc = shard.engine.shared().services.clone();
    if svc.registrar.db_mode == 2 {
        let n = svc.flush_dirty(shard.engine.shared().clone());
        tracing::info!(shard = id, rows = n, "location flushed on shutdown");
    }
    // Wait (10 s at most) for the writes in flight; failed ones are sent
    // again every retry interval meanwhile, so a database that is back
    // within the bound still gets them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let interval = Duration::from_millis(svc.db_retry_interval_ms.get().max(1));
    loop {
        io::drain_until(&shard, deadline, || svc.db_pending.get() == 0);
        if svc.db_retry.borrow().is_empty() || Instant::now() >= deadline || svc.db.is_none() {
            break;
        }
        let shared = shard.engine.shared().clone();
        let retry_svc = svc.clone();
        let _ = shard.ex.spawn(async move {
            let _ = retry_svc.retry_writes(&shared).await;
        });
        io::drain_until(&shard, deadline, || svc.db_pending.get() == 0);
        if svc.db_retry.borrow().is_empty() {
            break;
        }
        let next = (Instant::now() + interval).min(deadline);
        io::drain_until(&shard, next, || false);
    }
    let unwritten = svc.db_retry.borrow().len();
    if unwritten > 0 {
        tracing::error!(
            shard = id,
            unwritten,
            "location writes not in the database at exit"
        );
    }
    if svc.db_pending.get() > 0 {
        tracing::error!(
            shard = id,
            pending = svc.db_pending.get(),
            "database writes still pending at exit"
        );
    }
    let snap = snapshot(&shard, false);
    ex.clear();
    Executor::leave();
    Some(snap)
}

/// usrloc timer: expire bindings and (db_mode 2) write back dirty ones, in
/// the stripes this shard looks after. Sleeps until each deadline: an idle
/// shard wakes once per interval.
async fn usrloc_timer(shard: std::rc::Weak<Shard>, interval_s: u64) {
    let interval = Duration::from_secs(interval_s.max(1));
    loop {
        crate::exec::sleep(interval).await;
        let Some(shard) = shard.upgrade() else { return };
        let shared = shard.engine.shared();
        let svc = shared.services.clone();
        svc.expire(shared.clone());
        let now = unix_now_s();
        svc.tables.htable.sweep(shard.id, shard.shard_count, now);
        svc.tables.pike.sweep(shard.id, shard.shard_count, now);
        svc.tables.flood.sweep(
            shard.id,
            shard.shard_count,
            crate::kemi::services::unix_now_ms(),
        );
        if svc.registrar.db_mode == 2 {
            svc.flush_dirty(shared.clone());
        }
    }
}

/// Dispatcher keepalives: sends the probes that are due (first
/// transmissions and retransmissions) and fails those past their timeout,
/// then sleeps until the prober's next deadline.
async fn dispatcher_probe_timer(shard: std::rc::Weak<Shard>) {
    loop {
        let wait_ms = {
            let Some(shard) = shard.upgrade() else { return };
            let shared = shard.engine.shared();
            let Some(ds) = shared.services.tables.dispatcher.clone() else {
                return;
            };
            let now = shard.engine.tm_now_ms();
            let method = &shard.params.config.dispatcher.ds_ping_method;
            let mut sent = 0u64;
            let next =
                crate::kemi::dispatcher::probe_tick(&ds, method, shard.local, now, |dst, bytes| {
                    sent += 1;
                    shared.extra_out.borrow_mut().push((dst.into(), bytes));
                });
            shared
                .counters
                .add(crate::stats::Counter::DsProbesSent, sent);
            next.map_or(1000, |at| at.saturating_sub(now))
                .clamp(1, 60_000)
        };
        crate::exec::sleep(Duration::from_millis(wait_ms)).await;
    }
}

/// Call-load (alg 10) expiry every `ds_hash_check_interval` seconds.
async fn dispatcher_load_timer(shard: std::rc::Weak<Shard>, interval_s: u64) {
    let interval = Duration::from_secs(interval_s.max(1));
    loop {
        crate::exec::sleep(interval).await;
        let Some(shard) = shard.upgrade() else { return };
        if let Some(ds) = &shard.engine.shared().services.tables.dispatcher {
            ds.calls().sweep(unix_now_s());
        }
    }
}

/// Sends failed location writes again every `[db] retry_interval_ms`
/// while there are any; one batch at a time, so a dead database costs one
/// query per interval.
async fn db_retry_timer(shard: std::rc::Weak<Shard>) {
    loop {
        // Parked until a write fails: an idle shard keeps no 1 s timer (a
        // timer due within a second makes the receive loop tick every
        // TIMER_TICK).
        let parked = std::future::poll_fn(|cx| {
            let Some(shard) = shard.upgrade() else {
                return std::task::Poll::Ready(false);
            };
            let svc = &shard.engine.shared().services;
            if svc.db.is_none() || svc.registrar.db_mode == 0 {
                return std::task::Poll::Ready(false);
            }
            if !svc.db_retry.borrow().is_empty() {
                return std::task::Poll::Ready(true);
            }
            *svc.db_retry_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        if !parked {
            return;
        }
        let interval = {
            let Some(shard) = shard.upgrade() else { return };
            let svc = &shard.engine.shared().services;
            if svc.db.is_none() || svc.registrar.db_mode == 0 {
                return; // no location writes to retry
            }
            Duration::from_millis(svc.db_retry_interval_ms.get().max(1))
        };
        crate::exec::sleep(interval).await;
        let Some(shard) = shard.upgrade() else { return };
        let shared = shard.engine.shared().clone();
        drop(shard);
        let svc = shared.services.clone();
        while !svc.db_retry.borrow().is_empty() {
            if !svc.retry_writes(&shared).await {
                break;
            }
        }
    }
}

fn snapshot(shard: &Shard, reset: bool) -> ShardSnapshot {
    let shared = shard.engine.shared();
    let svc = &shared.services;
    let mut routes = shard.routes.borrow_mut();
    // Shared tables: each shard reports the stripes it looks after, so the
    // control plane's sum over shards is the whole table.
    let mine = |f: &dyn Fn(usize) -> usize, parts: usize| -> i64 {
        (shard.id..parts)
            .step_by(shard.shard_count.max(1))
            .map(f)
            .sum::<usize>() as i64
    };
    // A figure of a table every shard shares: counted by shard 0 alone.
    let once = |f: &dyn Fn() -> i64| if shard.id == 0 { f() } else { 0 };
    use std::sync::atomic::Ordering::Relaxed;
    let conns = svc.tables.conns.get();
    let tcp_stat = |f: &dyn Fn(&crate::transport::conn::ConnTable) -> u64| {
        once(&|| conns.map_or(0, |t| f(t) as i64))
    };
    let loc = &svc.tables.location;
    let creds = &svc.tables.creds;
    let snap = ShardSnapshot {
        shard: shard.id,
        cpu: shard.cpu,
        uptime_s: shard.started.elapsed().as_secs_f64(),
        counters: shared.counters.values(),
        gauges: vec![
            ("usrloc.aors", mine(&|i| loc.at(i).len(), loc.parts())),
            (
                "usrloc.contacts",
                mine(&|i| loc.at(i).contact_count(), loc.parts()),
            ),
            (
                "auth.cache_entries",
                mine(&|i| creds.at(i).len(), creds.parts()),
            ),
            // Whole-table figures, reported by shard 0 only (sums stay true);
            // the dialog ones under Kamailio's dialog:* names.
            (
                "htable.items",
                once(&|| {
                    svc.tables
                        .htable
                        .tables()
                        .iter()
                        .map(|t| t.len())
                        .sum::<usize>() as i64
                }),
            ),
            ("pike.ips", once(&|| svc.tables.pike.len() as i64)),
            (
                "dialog.active_dialogs",
                once(&|| svc.tables.dialog.active() as i64),
            ),
            (
                "dialog.early_dialogs",
                once(&|| svc.tables.dialog.early() as i64),
            ),
            (
                "dialog.processed_dialogs",
                once(&|| svc.tables.dialog.stat_processed() as i64),
            ),
            (
                "dialog.expired_dialogs",
                once(&|| svc.tables.dialog.stat_expired() as i64),
            ),
            (
                "dialog.failed_dialogs",
                once(&|| svc.tables.dialog.stat_failed() as i64),
            ),
            // The connections this shard reads (the sum is the total;
            // `core.shards` shows how they are spread).
            (
                "tcp.connections",
                conns.map_or(0, |t| t.owned_by(shard.id) as i64),
            ),
            (
                "tcp.accepted",
                tcp_stat(&|t| t.stats.accepted.load(Relaxed)),
            ),
            ("tcp.refused", tcp_stat(&|t| t.stats.refused.load(Relaxed))),
            ("tcp.closed", tcp_stat(&|t| t.stats.closed.load(Relaxed))),
            (
                "tcp.closed_idle",
                tcp_stat(&|t| t.stats.closed_idle.load(Relaxed)),
            ),
            (
                "tcp.bad_framing",
                tcp_stat(&|t| t.stats.bad_framing.load(Relaxed)),
            ),
            (
                "tcp.connected",
                tcp_stat(&|t| t.stats.connected.load(Relaxed)),
            ),
            (
                "tcp.connect_failed",
                tcp_stat(&|t| t.stats.connect_failed.load(Relaxed)),
            ),
            (
                "tcp.wq_overflow",
                tcp_stat(&|t| t.stats.wq_overflow.load(Relaxed)),
            ),
            (
                "tls.failed",
                tcp_stat(&|t| t.stats.tls_failed.load(Relaxed)),
            ),
            ("db.retry_queue", svc.db_retry.borrow().len() as i64),
            ("shard.inflight", shard.inflight.get() as i64),
            ("shard.tasks", shard.ex.live() as i64),
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
        ]
        .into_iter()
        .chain(
            shared
                .route_times
                .borrow()
                .iter()
                .map(|(name, hist)| RouteHistogram {
                    route: name.to_string(),
                    hist: hist.clone(),
                }),
        )
        .collect(),
        tuning: shard.tuning.clone(),
    };
    if reset {
        shared.counters.reset();
        routes.request.reset();
        routes.reply.reset();
        for (_, h) in shared.route_times.borrow_mut().iter_mut() {
            h.reset();
        }
    }
    snap
}

/// Resolves the script text and name from the config.
/// With `[core] route = "native"` no script is read: the text is empty and
/// the name is [`crate::config::NATIVE_ROUTE_NAME`].
pub fn load_script(cfg: &Config) -> Result<(String, String), String> {
    if cfg.core.route == crate::config::RouteImpl::Native {
        return Ok((String::new(), crate::config::NATIVE_ROUTE_NAME.to_string()));
    }
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
    params
        .engine(0, &params.config.shard, params.config.core.listen)
        .map(|_| ())
}

#[allow(dead_code)]
fn _assert_shared_is_not_send(_: &Shared) {}
