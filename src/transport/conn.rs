//! TCP and TLS connections, and the registry every shard sends through.
//!
//! **Ownership.** A connection is read by one shard, its *owner*: for an
//! accepted connection, the shard that owns the fewest connections when it
//! is accepted ([`ConnTable::owner_for_accept`]: each shard has its own
//! SO_REUSEPORT listener, but the kernel hashes the 4-tuple, so a handful of
//! connections can land 6/2; the accepting shard hands the connection over
//! instead), for an opened one the shard that opened it. Its fd sits in the
//! owner's epoll with the connection id as token; its framing state
//! ([`crate::sip::StreamFramer`]) lives on the owner only.
//!
//! **Writes from anywhere.** Any shard sends on a connection without a hop
//! (decision 2 of docs/ARCHITECTURE.md, as the location table): the
//! [`ConnTable`] maps a destination (peer address + protocol) to an
//! `Arc<Conn>` in lock-striped maps, and a send locks the connection's write
//! state (the bytes not yet written and, for TLS, the rustls session: TLS
//! reads need it too, so the owner locks it while reading), writes what the
//! socket takes at once, and keeps the rest, bounded by `tcp_conn_wq_max`.
//! When bytes are left the writer arms `EPOLLOUT` in the owner's epoll
//! (`epoll_ctl` is thread-safe), and the owner finishes the write.
//!
//! **One write per connection per turn.** The owner's own sends (the
//! replies its routes produce for requests it read) are only queued
//! ([`ConnTable::send_or_queue`]) and written at the end of its turn
//! ([`Conn::flush`]), as the turn's datagrams leave in one `sendmmsg`: the
//! replies to requests that came in one read leave in one write. Any other
//! send writes at once, behind what is queued (one buffer: order holds).
//!
//! **Closing.** Only the owner closes: it marks the connection closed under
//! its lock, shuts the socket down, and removes it from the maps. The fd
//! itself closes when the last `Arc` goes, so a writer holding one never
//! writes to a reused fd.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crate::partition::Striped;
use crate::sip::{Dest, Proto};
use crate::transport::sys::EpollCtl;
use crate::transport::tls::TlsContext;

/// Epoll tokens of connections start here (smaller ones are the shard's
/// own sockets).
pub const CONN_TOKEN_BASE: u64 = 1 << 20;

/// `[tcp]` limits, in the units the code uses.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_per_shard: usize,
    pub max_per_source: u32,
    /// Bytes a connection may hold unsent (Kamailio `tcp_conn_wq_max`).
    pub wq_max: usize,
    pub idle_ms: u64,
    pub connect_timeout_ms: u64,
    pub max_msg_bytes: usize,
}

/// What `KSR.tcpops` sees of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Up,
    Connecting,
    /// A write failed; its owner closes it.
    Broken,
    Gone,
}

/// Why a send did not go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No connection to the destination and none may be opened.
    NoConnection,
    /// Opening one failed at once (or the transport is not configured).
    ConnectFailed,
    /// The connection is closed or its write queue overflowed.
    Closed,
}

/// Counters the connection layer keeps (read into `tcp.*` statistics).
#[derive(Default, Debug)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub closed_idle: AtomicU64,
    pub bad_framing: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub wq_overflow: AtomicU64,
    pub tls_failed: AtomicU64,
    pub closed: AtomicU64,
}

struct WState {
    tls: Option<rustls::Connection>,
    out: Vec<u8>,
    out_pos: usize,
    connecting: bool,
    /// The owner queued bytes to write at the end of its turn (it holds
    /// the connection in its flush list).
    queued: bool,
    /// Bytes queued since the last flush.
    queued_bytes: usize,
    armed: bool,
    closed: bool,
    /// A writer found it broken: the owner closes it on its next event.
    broken: bool,
}

/// One connection.
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub proto: Proto,
    pub owner: usize,
    /// Opened by us (not accepted).
    pub outbound: bool,
    sock: TcpStream,
    w: Mutex<WState>,
    /// Last read or write, table clock (ms).
    pub last_ms: AtomicU64,
    pub opened_ms: u64,
    closed: AtomicBool,
    /// Some alias names it (see [`ConnTable::alias`]).
    aliased: AtomicBool,
    /// Upgraded to WebSocket (RFC 7118): [`Conn::send`] puts each message
    /// in one unmasked frame.
    ws: AtomicBool,
    ep: EpollCtl,
    wq_max: usize,
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted
}

/// What a read of a connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some bytes (possibly 0 plaintext bytes of a TLS handshake); read
    /// again when epoll says so.
    Data(usize),
    /// The peer closed, or the connection failed (TLS error included).
    Closed,
    /// TLS refused the peer (handshake, certificate, protocol version).
    TlsFailed,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, WState> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn token(&self) -> u64 {
        CONN_TOKEN_BASE + self.id
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Sends one message: as it is, or in a WebSocket frame once the
    /// connection was upgraded.
    pub fn send(&self, bytes: &[u8], now_ms: u64) -> Result<(), SendError> {
        self.put_msg(bytes, now_ms, true).map(drop)
    }

    /// Queues one message (framed as [`Conn::send`] does) behind what is
    /// pending, for [`Conn::flush`]; true when the connection was not
    /// queued yet (the caller keeps it in its flush list). For the owner's
    /// own sends only: another shard's write would wait for the owner's
    /// turn to end.
    pub fn queue(&self, bytes: &[u8], now_ms: u64) -> Result<bool, SendError> {
        self.put_msg(bytes, now_ms, false)
    }

    /// Writes what [`Conn::queue`] left (and anything else pending).
    pub fn flush(&self) -> Result<(), SendError> {
        let mut w = self.lock();
        w.queued = false;
        if w.closed {
            return Err(SendError::Closed);
        }
        self.flush_locked(&mut w)
    }

    fn put_msg(&self, bytes: &[u8], now_ms: u64, now: bool) -> Result<bool, SendError> {
        if self.is_ws() {
            let op = if std::str::from_utf8(bytes).is_ok() {
                crate::http::ws::Opcode::Text
            } else {
                crate::http::ws::Opcode::Binary
            };
            let mut framed = Vec::with_capacity(bytes.len() + 10);
            crate::http::ws::encode_frame(&mut framed, op, bytes, true);
            return self.put(&framed, now_ms, now);
        }
        self.put(bytes, now_ms, now)
    }

    /// The connection carries WebSocket frames.
    pub fn is_ws(&self) -> bool {
        self.ws.load(Ordering::Acquire)
    }

    /// The transport of the messages it carries (WS/WSS once upgraded).
    pub fn msg_proto(&self) -> Proto {
        match (self.is_ws(), self.proto) {
            (true, Proto::Tls) => Proto::Wss,
            (true, _) => Proto::Ws,
            (false, p) => p,
        }
    }

    /// Sends `bytes` as they are (whole, or queued behind what is pending):
    /// HTTP responses, WebSocket control frames.
    pub fn send_raw(&self, bytes: &[u8], now_ms: u64) -> Result<(), SendError> {
        self.put(bytes, now_ms, true).map(drop)
    }

    /// Appends `bytes` to what is pending; `now`: writes at once (directly
    /// from `bytes` when nothing is pending), else only queues them (true
    /// when the connection was not queued yet).
    fn put(&self, bytes: &[u8], now_ms: u64, now: bool) -> Result<bool, SendError> {
        let mut w = self.lock();
        if w.closed {
            return Err(SendError::Closed);
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        // What a turn queues stays under half of tcp_conn_wq_max: beyond,
        // it is written at once (the limit is for a peer that does not
        // read, not for a busy turn).
        let now = now || w.queued_bytes + bytes.len() > self.wq_max / 2;
        if let Some(tls) = w.tls.as_mut() {
            if tls.writer().write_all(bytes).is_err() {
                return Err(SendError::Closed);
            }
        } else if now && w.out.len() == w.out_pos && !w.connecting {
            let n = match (&self.sock).write(bytes) {
                Ok(n) => n,
                Err(e) if would_block(&e) => 0,
                Err(_) => return Err(SendError::Closed),
            };
            w.out.clear();
            w.out_pos = 0;
            w.out.extend_from_slice(&bytes[n..]);
        } else {
            w.out.extend_from_slice(bytes);
        }
        if now {
            return self.flush_locked(&mut w).map(|()| false);
        }
        w.queued_bytes += bytes.len();
        let first = !w.queued;
        w.queued = true;
        Ok(first)
    }

    /// Writes what is pending; arms or disarms EPOLLOUT.
    fn flush_locked(&self, w: &mut WState) -> Result<(), SendError> {
        w.queued_bytes = 0;
        if w.connecting {
            return self.arm(w, true);
        }
        let pending = if let Some(tls) = w.tls.as_mut() {
            while tls.wants_write() {
                match tls.write_tls(&mut &self.sock) {
                    Ok(0) => return Err(SendError::Closed),
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(_) => return Err(SendError::Closed),
                }
            }
            // rustls keeps what the socket did not take, bounded by its
            // buffer limit (wq_max): a write beyond it fails above.
            tls.wants_write()
        } else {
            while w.out_pos < w.out.len() {
                match (&self.sock).write(&w.out[w.out_pos..]) {
                    Ok(0) => return Err(SendError::Closed),
                    Ok(n) => w.out_pos += n,
                    Err(e) if would_block(&e) => break,
                    Err(_) => return Err(SendError::Closed),
                }
            }
            if w.out_pos == w.out.len() {
                w.out.clear();
                w.out_pos = 0;
            } else if w.out.len() - w.out_pos > self.wq_max {
                return Err(SendError::Closed);
            } else if w.out_pos > 64 << 10 {
                let pos = w.out_pos;
                w.out.drain(..pos);
                w.out_pos = 0;
            }
            w.out_pos < w.out.len()
        };
        self.arm(w, pending)
    }

    fn arm(&self, w: &mut WState, out: bool) -> Result<(), SendError> {
        // A broken connection stays armed until its owner closes it.
        let out = out || w.broken;
        if w.armed != out {
            if self.ep.modify(self.fd(), self.token(), out).is_err() {
                return Err(SendError::Closed);
            }
            w.armed = out;
        }
        Ok(())
    }

    /// The owner, on EPOLLOUT: completes a connect, writes what is pending.
    pub fn on_writable(&self) -> Result<(), SendError> {
        let mut w = self.lock();
        if w.closed || w.broken {
            return Err(SendError::Closed);
        }
        if w.connecting {
            match self.sock.take_error() {
                Ok(None) => {}
                _ => return Err(SendError::ConnectFailed),
            }
            if self.sock.peer_addr().is_err() {
                return Err(SendError::ConnectFailed);
            }
            w.connecting = false;
        }
        self.flush_locked(&mut w)
    }

    /// The owner, on EPOLLIN: reads into `room` (plaintext). Returns what
    /// it found; the caller frames the bytes.
    pub fn read(&self, room: &mut [u8], now_ms: u64) -> ReadOutcome {
        let mut w = self.lock();
        if w.closed {
            return ReadOutcome::Closed;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        let Some(tls) = w.tls.as_mut() else {
            drop(w);
            return match (&self.sock).read(room) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => ReadOutcome::Data(n),
                Err(e) if would_block(&e) => ReadOutcome::Data(0),
                Err(_) => ReadOutcome::Closed,
            };
        };
        let mut eof = false;
        match tls.read_tls(&mut &self.sock) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return ReadOutcome::Closed,
        }
        if tls.process_new_packets().is_err() {
            // Send the alert, then give up.
            let _ = tls.write_tls(&mut &self.sock);
            return ReadOutcome::TlsFailed;
        }
        let mut n = 0;
        while n < room.len() {
            match tls.reader().read(&mut room[n..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => n += k,
                Err(_) => break, // WouldBlock: no more plaintext now
            }
        }
        if self.flush_locked(&mut w).is_err() {
            return ReadOutcome::Closed;
        }
        if eof && n == 0 {
            return ReadOutcome::Closed;
        }
        ReadOutcome::Data(n)
    }

    /// Marks the connection closed (the owner, or a writer that found it
    /// broken) and shuts the socket down; true the first time.
    pub fn close(&self) -> bool {
        let mut w = self.lock();
        if w.closed {
            return false;
        }
        // Replies queued this turn go first (best effort), as they would
        // have, written at once.
        if w.queued && !w.broken && !w.connecting {
            let _ = self.flush_locked(&mut w);
        }
        w.closed = true;
        if let Some(tls) = w.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut &self.sock);
        }
        self.closed.store(true, Ordering::Release);
        let _ = self.ep.delete(self.fd());
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        true
    }

    /// TLS handshake still running (for the connect timeout).
    pub fn is_connecting(&self) -> bool {
        let w = self.lock();
        w.connecting || w.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }
}

fn dest_key(d: &Dest) -> [u8; 19] {
    let mut k = [0u8; 19];
    k[0] = d.proto as u8;
    match d.addr.ip() {
        IpAddr::V4(v4) => k[1..5].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => k[1..17].copy_from_slice(&v6.octets()),
    }
    k[17..19].copy_from_slice(&d.addr.port().to_be_bytes());
    k
}

fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The shared registry of connections (one per server).
pub struct ConnTable {
    pub limits: ConnLimits,
    pub stats: ConnStats,
    pub tls: Option<Arc<TlsContext>>,
    /// Local addresses of the listeners (Via / Record-Route of each transport).
    pub listen_tcp: Option<SocketAddr>,
    pub listen_tls: Option<SocketAddr>,
    /// Kamailio `tcp_accept_aliases`: honour `;alias` in a client's Via.
    pub accept_aliases: bool,
    by_dest: Striped<HashMap<Dest, Arc<Conn>>>,
    by_ip: Striped<HashMap<IpAddr, u32>>,
    /// Connection id -> connection (`$conid`, `KSR.tcpops`).
    by_id: Striped<HashMap<u64, Arc<Conn>>>,
    per_shard: Vec<AtomicUsize>,
    /// Connections a shard opened itself (from a send), for it to adopt.
    adopt: Vec<Mutex<Vec<Arc<Conn>>>>,
    adopt_pending: Vec<AtomicBool>,
    epolls: Vec<OnceLock<EpollCtl>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl ConnTable {
    pub fn new(
        shards: usize,
        limits: ConnLimits,
        tls: Option<Arc<TlsContext>>,
        listen_tcp: Option<SocketAddr>,
        listen_tls: Option<SocketAddr>,
    ) -> ConnTable {
        ConnTable {
            limits,
            stats: ConnStats::default(),
            tls,
            listen_tcp,
            listen_tls,
            accept_aliases: false,
            by_dest: Striped::new(64, |_| HashMap::new()),
            by_ip: Striped::new(64, |_| HashMap::new()),
            by_id: Striped::new(64, |_| HashMap::new()),
            per_shard: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            adopt: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            adopt_pending: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            epolls: (0..shards).map(|_| OnceLock::new()).collect(),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
        }
    }

    /// The table's clock (ms since start).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A shard's epoll, where its connections are watched.
    pub fn set_epoll(&self, shard: usize, ep: EpollCtl) {
        if let Some(slot) = self.epolls.get(shard) {
            let _ = slot.set(ep);
        }
    }

    /// The local address messages of `proto` leave from (for Via/RR).
    pub fn local_of(&self, proto: Proto) -> Option<SocketAddr> {
        match proto {
            Proto::Tcp | Proto::Ws => self.listen_tcp,
            Proto::Tls | Proto::Wss => self.listen_tls,
            Proto::Udp => None,
        }
    }

    pub fn connections(&self) -> usize {
        self.per_shard
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn owned_by(&self, shard: usize) -> usize {
        self.per_shard
            .get(shard)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn get(&self, d: &Dest) -> Option<Arc<Conn>> {
        let k = dest_key(d);
        self.by_dest
            .get(&k)
            .get(d)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// A connection to `d` exists (for `set_forward_no_connect`).
    pub fn exists(&self, d: &Dest) -> bool {
        self.get(d).is_some()
    }

    /// Another name for a connection (an alias: the Via sent-by of a client
    /// whose connection comes from another port).
    pub fn alias(&self, d: Dest, c: &Arc<Conn>) {
        let k = dest_key(&d);
        let mut m = self.by_dest.get(&k);
        if m.get(&d).is_none_or(|o| o.is_closed()) {
            c.aliased.store(true, Ordering::Relaxed);
            m.insert(d, c.clone());
        }
    }

    /// The owner upgraded `c` to WebSocket: from now on it is found as a
    /// WS (WSS over TLS) destination, and messages sent on it are framed.
    pub fn upgrade_ws(&self, c: &Arc<Conn>) {
        c.ws.store(true, Ordering::Release);
        let old = Dest::new(c.peer, c.proto);
        {
            let mut m = self.by_dest.get(&dest_key(&old));
            if m.get(&old).is_some_and(|o| Arc::ptr_eq(o, c)) {
                m.remove(&old);
            }
        }
        self.alias(Dest::new(c.peer, c.msg_proto()), c);
    }

    /// The shard a connection accepted on shard `here` goes to: the one
    /// that owns the fewest connections, `here` when it owns no more than
    /// any other. Connections carry the load on a stream transport, and the
    /// kernel's SO_REUSEPORT hash leaves a few of them unevenly spread (8
    /// connections hashed over 2 shards land 6/2 or worse 29 % of the
    /// time, 5/3 or worse 73 %); with
    /// this every shard gets its share, and a connection still has one
    /// reader (no route waits on another core). Two shards accepting at the
    /// same moment may both pick the same one: off by one at worst.
    pub fn owner_for_accept(&self, here: usize) -> usize {
        let mut best = here;
        let mut best_n = self.owned_by(here);
        for (i, c) in self.per_shard.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n < best_n {
                best = i;
                best_n = n;
            }
        }
        best
    }

    /// Admits a new inbound connection from `ip` on `shard` (counts it),
    /// or refuses it (limit per shard or per source).
    pub fn admit(&self, ip: IpAddr, shard: usize) -> bool {
        if self.owned_by(shard) >= self.limits.max_per_shard {
            return false;
        }
        let k = ip_key(ip);
        let mut m = self.by_ip.get(&k);
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_source {
            return false;
        }
        *n += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        let k = ip_key(ip);
        let mut m = self.by_ip.get(&k);
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Registers a socket accepted on shard `here` as a connection owned by
    /// `owner` (in its epoll; queued for `owner` to adopt when it is another
    /// shard). `tls`: the server session for a TLS listener.
    pub fn accepted(
        &self,
        here: usize,
        owner: usize,
        sock: TcpStream,
        peer: SocketAddr,
        proto: Proto,
        tls: Option<rustls::Connection>,
    ) -> std::io::Result<Arc<Conn>> {
        let r = self.insert(owner, owner != here, sock, peer, proto, tls, false, false);
        if r.is_err() {
            self.release_ip(peer.ip());
        }
        r
    }

    /// Registers a connection owned by `shard`. `handed`: `shard` did not
    /// make it (accepted elsewhere, or opened by a send from any shard): it
    /// is queued for `shard` to adopt before its fd enters `shard`'s epoll,
    /// so the first event finds it adopted.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        shard: usize,
        handed: bool,
        sock: TcpStream,
        peer: SocketAddr,
        proto: Proto,
        mut tls: Option<rustls::Connection>,
        outbound: bool,
        connecting: bool,
    ) -> std::io::Result<Arc<Conn>> {
        let ep = self
            .epolls
            .get(shard)
            .and_then(|e| e.get())
            .cloned()
            .ok_or_else(|| std::io::Error::other("shard has no epoll"))?;
        sock.set_nonblocking(true)?;
        let _ = sock.set_nodelay(true);
        if let Some(t) = tls.as_mut() {
            t.set_buffer_limit(Some(self.limits.wq_max));
        }
        let local = sock.local_addr()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            id,
            peer,
            local,
            proto,
            owner: shard,
            outbound,
            sock,
            w: Mutex::new(WState {
                tls,
                out: Vec::new(),
                out_pos: 0,
                connecting,
                queued: false,
                queued_bytes: 0,
                armed: connecting,
                closed: false,
                broken: false,
            }),
            last_ms: AtomicU64::new(now),
            opened_ms: now,
            closed: AtomicBool::new(false),
            aliased: AtomicBool::new(false),
            ws: AtomicBool::new(false),
            ep: ep.clone(),
            wq_max: self.limits.wq_max,
        });
        // Findable before its fd enters the owner's epoll: the owner may
        // read a request on it and answer at once, on another thread.
        self.per_shard[shard].fetch_add(1, Ordering::Relaxed);
        let d = Dest::new(peer, proto);
        self.by_dest.get(&dest_key(&d)).insert(d, conn.clone());
        self.by_id.get(&id.to_le_bytes()).insert(id, conn.clone());
        if handed {
            if let Some(q) = self.adopt.get(shard) {
                q.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn.clone());
                self.adopt_pending[shard].store(true, Ordering::Release);
            }
        }
        if let Err(e) = ep.add(conn.fd(), conn.token(), connecting) {
            // Never watched: forgotten here; the owner drops it from its
            // adoption queue when it finds it closed.
            conn.closed.store(true, Ordering::Release);
            conn.lock().closed = true;
            self.forget(&conn);
            return Err(e);
        }
        Ok(conn)
    }

    /// Takes `c` out of the maps and its owner's count.
    fn forget(&self, c: &Arc<Conn>) {
        let d = Dest::new(c.peer, c.proto);
        {
            let mut m = self.by_dest.get(&dest_key(&d));
            if m.get(&d).is_some_and(|o| Arc::ptr_eq(o, c)) {
                m.remove(&d);
            }
        }
        self.by_id.get(&c.id.to_le_bytes()).remove(&c.id);
        self.per_shard[c.owner].fetch_sub(1, Ordering::Relaxed);
    }

    /// Forgets a connection the owner closed.
    pub fn remove(&self, c: &Arc<Conn>) {
        self.forget(c);
        if !c.outbound {
            self.release_ip(c.peer.ip());
        }
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes every alias that names `c` (the owner, when closing): a walk
    /// of the map, only for connections that got an alias.
    pub fn remove_aliases_if_any(&self, c: &Arc<Conn>) {
        if !c.aliased.load(Ordering::Relaxed) {
            return;
        }
        for i in 0..self.by_dest.parts() {
            let mut m = self.by_dest.at(i);
            m.retain(|_, o| !Arc::ptr_eq(o, c));
        }
    }

    /// Sends `bytes` to `d` on its connection; opens one from shard `here`
    /// when there is none and `connect`.
    pub fn send(&self, here: usize, d: Dest, bytes: &[u8], connect: bool) -> Result<(), SendError> {
        self.send_or_queue(here, d, bytes, connect, None)
    }

    /// [`ConnTable::send`], but when shard `here` owns the connection and
    /// gives a flush list, the bytes are only queued: the connection joins
    /// `flush` (once) and [`ConnTable::flush`] writes it at the end of the
    /// turn.
    pub fn send_or_queue(
        &self,
        here: usize,
        d: Dest,
        bytes: &[u8],
        connect: bool,
        flush: Option<&mut Vec<Arc<Conn>>>,
    ) -> Result<(), SendError> {
        let now = self.now_ms();
        if let Some(c) = self.get(&d) {
            let r = match flush {
                Some(list) if c.owner == here => match c.queue(bytes, now) {
                    Ok(true) => {
                        list.push(c.clone());
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
                _ => c.send(bytes, now),
            };
            if let Err(e) = r {
                self.send_failed(&c, e);
            }
            return r;
        }
        if !connect {
            return Err(SendError::NoConnection);
        }
        let c = self.connect(here, d)?;
        c.send(bytes, now)
    }

    /// Writes the connections a turn queued on (see
    /// [`ConnTable::send_or_queue`]); returns how many writes failed.
    pub fn flush(&self, list: &mut Vec<Arc<Conn>>) -> usize {
        let mut failed = 0;
        for c in list.drain(..) {
            if let Err(e) = c.flush() {
                self.send_failed(&c, e);
                failed += 1;
            }
        }
        failed
    }

    fn send_failed(&self, c: &Conn, e: SendError) {
        if e == SendError::Closed {
            self.stats.wq_overflow.fetch_add(1, Ordering::Relaxed);
        }
        // The owner sees the close on its next event.
        c.close_soon();
    }

    fn connect(&self, here: usize, d: Dest) -> Result<Arc<Conn>, SendError> {
        let fail = || {
            self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            SendError::ConnectFailed
        };
        let tls = match d.proto {
            Proto::Tcp => None,
            Proto::Tls => {
                let ctx = self.tls.as_ref().ok_or_else(fail)?;
                Some(ctx.connect(d.addr.ip()).map_err(|_| fail())?)
            }
            _ => return Err(fail()),
        };
        if self.owned_by(here) >= self.limits.max_per_shard {
            return Err(fail());
        }
        let domain = if d.addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .map_err(|_| fail())?;
        s.set_nonblocking(true).map_err(|_| fail())?;
        match s.connect(&d.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(_) => return Err(fail()),
        }
        let sock = TcpStream::from(s);
        let c = self
            .insert(here, true, sock, d.addr, d.proto, tls, true, true)
            .map_err(|_| fail())?;
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    fn by_id(&self, id: u64) -> Option<Arc<Conn>> {
        self.by_id.get(&id.to_le_bytes()).get(&id).cloned()
    }

    /// State of connection `id`.
    pub fn state_of(&self, id: u64) -> ConnState {
        let Some(c) = self.by_id(id) else {
            return ConnState::Gone;
        };
        let w = c.lock();
        if w.closed {
            ConnState::Gone
        } else if w.broken {
            ConnState::Broken
        } else if w.connecting || w.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            ConnState::Connecting
        } else {
            ConnState::Up
        }
    }

    /// Asks the owner of connection `id` to close it; false when unknown.
    pub fn close_id(&self, id: u64) -> bool {
        match self.by_id(id) {
            Some(c) if !c.is_closed() => {
                c.close_soon();
                true
            }
            _ => false,
        }
    }

    /// Connections shard `shard` opened since it last asked.
    pub fn take_adopted(&self, shard: usize, out: &mut Vec<Arc<Conn>>) {
        if self
            .adopt_pending
            .get(shard)
            .is_some_and(|f| f.swap(false, Ordering::AcqRel))
        {
            out.append(&mut self.adopt[shard].lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

impl Conn {
    /// A writer found the connection broken: make the owner look at it (an
    /// EPOLLOUT event; the owner's write then fails and it closes).
    fn close_soon(&self) {
        let mut w = self.lock();
        if !w.closed {
            w.broken = true;
            let _ = self.ep.modify(self.fd(), self.token(), true);
            w.armed = true;
        }
    }
}
