//! A shard's side of TCP and TLS: its own SO_REUSEPORT listeners (the
//! kernel spreads accepted connections over the shards, and a shard hands a
//! connection it accepts to the shard owning the fewest, so a few busy
//! connections do not pile up on one core), the connections it owns
//! (watched in its epoll, token = connection id), their framing state, the
//! idle / connect timeouts, the replies queued for one write per connection
//! at the end of the turn, and the limits per shard and per source. Messages framed here run exactly as datagrams do
//! (`io::on_message`), with `ctx.proto` telling the route and the reply
//! path which transport they came on. Sends go through the shared
//! [`ConnTable`] from any shard (see `transport::conn`).
//!
//! **xhttp hook.** The first bytes of a connection are checked once: when
//! they are an HTTP request line (`GET /...`, `POST /...`), the framer says
//! [`StreamEvent::NotSip`] and [`on_not_sip`] gets the connection and the
//! bytes buffered so far. Today it answers `404` and closes; the HTTP
//! handler (httparse, `ksr_xhttp_event`, the WebSocket upgrade) plugs in
//! there by switching the connection's [`StreamKind`] and feeding its own
//! parser from then on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::io::Shard;
use crate::sip::{Proto, StreamEvent, StreamFramer, StreamKind};
use crate::transport::conn::{Conn, ConnTable, ReadOutcome, CONN_TOKEN_BASE};

/// Epoll tokens of the shard's listeners.
pub(super) const TOKEN_TCP_LISTEN: u64 = 3;
pub(super) const TOKEN_TLS_LISTEN: u64 = 4;

/// Connections accepted per listener event at most (fairness with UDP).
const ACCEPT_BURST: usize = 64;
/// Bytes read from one connection per event at most.
const READ_BURST: usize = 256 << 10;

/// A connection as its owner sees it.
pub(super) struct Local {
    pub(super) conn: Arc<Conn>,
    pub(super) framer: StreamFramer,
    pub(super) kind: StreamKind,
    /// The HTTP / WebSocket side once the first line was HTTP (`web.rs`).
    pub(super) web: Option<Box<super::web::Web>>,
}

/// One shard's listeners and connections.
pub(super) struct ShardConns {
    pub table: Arc<ConnTable>,
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
    local: RefCell<HashMap<u64, Local>>,
    adopted: RefCell<Vec<Arc<Conn>>>,
    /// Connections this turn queued replies on, written by
    /// [`ShardConns::flush`] at the end of the turn.
    queued: RefCell<Vec<Arc<Conn>>>,
}

/// Binds a listener of the SO_REUSEPORT group on `addr`.
pub(super) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(TcpListener::from(s))
}

impl ShardConns {
    pub fn new(
        table: Arc<ConnTable>,
        tcp: Option<TcpListener>,
        tls: Option<TcpListener>,
    ) -> ShardConns {
        ShardConns {
            table,
            tcp,
            tls,
            local: RefCell::new(HashMap::new()),
            adopted: RefCell::new(Vec::new()),
            queued: RefCell::new(Vec::new()),
        }
    }

    /// Sends on a connection (any shard's); on one this shard owns the
    /// bytes wait for [`ShardConns::flush`] (see `transport::conn`).
    pub fn send(
        &self,
        here: usize,
        dst: crate::sip::Dest,
        bytes: &[u8],
        connect: bool,
    ) -> Result<(), crate::transport::conn::SendError> {
        let mut q = self.queued.borrow_mut();
        self.table
            .send_or_queue(here, dst, bytes, connect, Some(&mut q))
    }

    /// Writes the connections this turn queued on; returns how many writes
    /// failed.
    pub fn flush(&self) -> usize {
        let mut q = self.queued.borrow_mut();
        if q.is_empty() {
            return 0;
        }
        self.table.flush(&mut q)
    }

    /// Registers the listeners in the shard's epoll.
    pub fn watch(&self, ep: &crate::transport::sys::EpollCtl, shard: usize) -> std::io::Result<()> {
        if let Some(l) = &self.tcp {
            ep.add(l.as_raw_fd(), TOKEN_TCP_LISTEN, false)?;
        }
        if let Some(l) = &self.tls {
            ep.add(l.as_raw_fd(), TOKEN_TLS_LISTEN, false)?;
        }
        self.table.set_epoll(shard, ep.clone());
        Ok(())
    }
}

/// Handles one epoll event of the shard's TCP side.
pub(super) fn on_event(shard: &Rc<Shard>, token: u64, bits: u32) {
    let Some(sc) = shard.conns.as_ref() else {
        return;
    };
    adopt(shard, sc);
    match token {
        TOKEN_TCP_LISTEN => accept(shard, sc, Proto::Tcp),
        TOKEN_TLS_LISTEN => accept(shard, sc, Proto::Tls),
        t if t >= CONN_TOKEN_BASE => on_conn(shard, sc, t - CONN_TOKEN_BASE, bits),
        _ => {}
    }
}

/// Takes over the connections handed to this shard: opened by a send, or
/// accepted by another shard for this one ([`ConnTable::owner_for_accept`]).
fn adopt(shard: &Shard, sc: &ShardConns) {
    let mut v = sc.adopted.borrow_mut();
    sc.table.take_adopted(shard.id, &mut v);
    if v.is_empty() {
        return;
    }
    let mut local = sc.local.borrow_mut();
    for c in v.drain(..) {
        local.insert(
            c.id,
            Local {
                framer: StreamFramer::new(sc.table.limits.max_msg_bytes),
                kind: StreamKind::Sip,
                web: None,
                conn: c,
            },
        );
    }
}

fn accept(shard: &Shard, sc: &ShardConns, proto: Proto) {
    let l = match proto {
        Proto::Tls => sc.tls.as_ref(),
        _ => sc.tcp.as_ref(),
    };
    let Some(l) = l else { return };
    let stats = &sc.table.stats;
    for _ in 0..ACCEPT_BURST {
        let (sock, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                if shard.log.allow(Instant::now()) {
                    tracing::warn!(shard = shard.id, "tcp accept failed: {e}");
                }
                return;
            }
        };
        let owner = sc.table.owner_for_accept(shard.id);
        if !sc.table.admit(peer.ip(), owner) {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if shard.log.allow(Instant::now()) {
                tracing::warn!(
                    shard = shard.id,
                    %peer,
                    "{} connection refused: [tcp] max_connections_per_shard or max_connections_per_source reached",
                    proto.name()
                );
            }
            drop(sock);
            continue;
        }
        let tls = match proto {
            Proto::Tls => match sc.table.tls.as_ref().map(|t| t.accept()) {
                Some(Ok(s)) => Some(s),
                _ => {
                    stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    drop(sock);
                    continue;
                }
            },
            _ => None,
        };
        match sc.table.accepted(shard.id, owner, sock, peer, proto, tls) {
            // Handed to another shard: it adopts it on its next event.
            Ok(_) if owner != shard.id => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(c) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                sc.local.borrow_mut().insert(
                    c.id,
                    Local {
                        framer: StreamFramer::new(sc.table.limits.max_msg_bytes),
                        kind: StreamKind::Sip,
                        web: None,
                        conn: c,
                    },
                );
            }
            Err(e) => {
                if shard.log.allow(Instant::now()) {
                    tracing::warn!(shard = shard.id, %peer, "tcp connection not registered: {e}");
                }
            }
        }
    }
}

fn on_conn(shard: &Rc<Shard>, sc: &ShardConns, id: u64, bits: u32) {
    // Out of the map while it runs: routes may open or look up connections.
    let Some(mut l) = sc.local.borrow_mut().remove(&id) else {
        return;
    };
    let now = sc.table.now_ms();
    if bits & libc::EPOLLOUT as u32 != 0 && l.conn.on_writable().is_err() {
        return close(shard, sc, l, Why::WriteFailed);
    }
    let readable =
        bits & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;
    if readable == 0 {
        sc.local.borrow_mut().insert(id, l);
        return;
    }
    let mut total = 0;
    loop {
        let room = l.framer.spare(crate::sip::stream::READ_CHUNK);
        let n = room.len();
        let got = l.conn.read(room, now);
        match got {
            ReadOutcome::Data(k) => {
                l.framer.filled(n, k);
                if k > 0 {
                    total += k;
                    if let Err(why) = frame(shard, &mut l) {
                        return close(shard, sc, l, why);
                    }
                }
                if k < n || total >= READ_BURST {
                    break;
                }
            }
            ReadOutcome::Closed => {
                l.framer.filled(n, 0);
                return close(shard, sc, l, Why::Peer);
            }
            ReadOutcome::TlsFailed => {
                l.framer.filled(n, 0);
                return close(shard, sc, l, Why::Tls);
            }
        }
    }
    if l.conn.is_closed() {
        return close(shard, sc, l, Why::Peer);
    }
    sc.local.borrow_mut().insert(id, l);
}

/// Kamailio's `tcp_accept_aliases`: a request whose top Via carries
/// `;alias` makes its connection reachable at the Via's sent-by address
/// (an IP literal and port) too, so requests to the client's advertised
/// address reuse the connection.
pub(super) fn maybe_alias(shard: &Shard, ctx: &crate::kemi::MsgCtx, c: &Arc<Conn>) {
    let Some(sc) = shard.conns.as_ref().filter(|sc| sc.table.accept_aliases) else {
        return;
    };
    let msg = ctx.msg();
    if !msg.is_request() {
        return;
    }
    let Ok(via) = msg.top_via() else { return };
    if via.params.get(b"alias").is_none() {
        return;
    }
    let host = std::str::from_utf8(via.host).unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return;
    };
    // Only the address the connection comes from may be aliased (a client
    // cannot claim another host's address).
    if ip != c.peer.ip() {
        return;
    }
    let port = via.port.unwrap_or(c.proto.default_port());
    if port != c.peer.port() {
        sc.table
            .alias(crate::sip::Dest::new(SocketAddr::new(ip, port), c.proto), c);
    }
}

/// Why a connection closed (counted, logged at debug).
#[derive(Debug, Clone, Copy)]
pub(super) enum Why {
    Peer,
    Idle,
    ConnectTimeout,
    BadFraming,
    Tls,
    WriteFailed,
    NotSip,
}

/// Runs what the framer found; Err = close the connection.
fn frame(shard: &Rc<Shard>, l: &mut Local) -> Result<(), Why> {
    if l.kind != StreamKind::Sip {
        // HTTP or WebSocket (web.rs) reads what the SIP framer buffered.
        let bytes = l.framer.take_buffered();
        return super::web::on_bytes(shard, l, &bytes);
    }
    let limits = shard.limits;
    loop {
        match l.framer.next(&limits) {
            Ok(None) => return Ok(()),
            Ok(Some(StreamEvent::Message(bytes))) => {
                super::io::on_message(
                    shard,
                    bytes,
                    l.conn.peer,
                    l.conn.local,
                    l.conn.proto,
                    &l.conn,
                );
            }
            Ok(Some(StreamEvent::Ping)) => {
                // RFC 5626 §4.4.1: pong.
                let _ = l.conn.send(b"\r\n", 0);
            }
            Ok(Some(StreamEvent::NotSip)) => {
                return on_not_sip(shard, l);
            }
            Err(e) => {
                if let Some(sc) = &shard.conns {
                    sc.table.stats.bad_framing.fetch_add(1, Ordering::Relaxed);
                }
                if shard.log.allow(Instant::now()) {
                    tracing::warn!(
                        shard = shard.id,
                        peer = %l.conn.peer,
                        error = e.as_str(),
                        "{} stream cannot be framed: connection closed",
                        l.conn.proto.name()
                    );
                }
                return Err(Why::BadFraming);
            }
        }
    }
}

/// `// xhttp hook`: the connection's first bytes are an HTTP request; from
/// now on its bytes go to the HTTP side (`web.rs`: the xhttp route, the
/// WebSocket upgrade).
fn on_not_sip(shard: &Rc<Shard>, l: &mut Local) -> Result<(), Why> {
    super::web::start_http(shard, l)
}

/// Runs `f` on connection `id` of this shard, if it is still open (a task
/// finishing work for it); closes it when `f` says so.
pub(super) fn with_local(
    shard: &Rc<Shard>,
    id: u64,
    f: impl FnOnce(&mut Local) -> Result<(), Why>,
) {
    let Some(sc) = shard.conns.as_ref() else {
        return;
    };
    let Some(mut l) = sc.local.borrow_mut().remove(&id) else {
        return;
    };
    match f(&mut l) {
        Ok(()) => {
            sc.local.borrow_mut().insert(id, l);
        }
        Err(why) => close(shard, sc, l, why),
    }
}

fn close(shard: &Shard, sc: &ShardConns, l: Local, why: Why) {
    if l.conn.close() {
        sc.table.remove(&l.conn);
        if l.conn.proto.is_stream() {
            sc.table.remove_aliases_if_any(&l.conn);
        }
        let stats = &sc.table.stats;
        match why {
            Why::Idle => {
                stats.closed_idle.fetch_add(1, Ordering::Relaxed);
            }
            Why::ConnectTimeout => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            }
            Why::Tls => {
                stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                if shard.log.allow(Instant::now()) {
                    tracing::warn!(shard = shard.id, peer = %l.conn.peer, "TLS handshake or record refused: connection closed");
                }
            }
            _ => {}
        }
        tracing::debug!(shard = shard.id, peer = %l.conn.peer, proto = l.conn.proto.name(), ?why, "connection closed");
    }
}

/// Closes idle connections and connects that take too long; once a second
/// on each shard that has a TCP side.
pub(super) async fn idle_timer(shard: std::rc::Weak<Shard>) {
    loop {
        crate::exec::sleep(Duration::from_secs(1)).await;
        let Some(shard) = shard.upgrade() else { return };
        let Some(sc) = shard.conns.as_ref() else {
            return;
        };
        adopt(&shard, sc);
        let now = sc.table.now_ms();
        let lim = &sc.table.limits;
        let mut doomed = Vec::new();
        for (id, l) in sc.local.borrow().iter() {
            let idle = now.saturating_sub(l.conn.last_ms.load(Ordering::Relaxed));
            if l.conn.is_closed() {
                doomed.push((*id, Why::Peer));
            } else if l.conn.is_connecting()
                && now.saturating_sub(l.conn.opened_ms) > lim.connect_timeout_ms
            {
                doomed.push((*id, Why::ConnectTimeout));
            } else if idle > lim.idle_ms {
                doomed.push((*id, Why::Idle));
            }
        }
        for (id, why) in doomed {
            let l = sc.local.borrow_mut().remove(&id);
            if let Some(l) = l {
                close(&shard, sc, l, why);
            }
        }
    }
}
