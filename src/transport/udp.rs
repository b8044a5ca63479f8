//! Per-shard UDP sockets. Every shard binds its own socket to the same address
//! with SO_REUSEPORT; the kernel spreads datagrams across them by a hash of the
//! source address and port, so one client's datagrams stay on one shard.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket knobs of one shard.
#[derive(Clone, Copy, Debug)]
pub struct UdpOptions {
    pub recv_buffer_bytes: usize,
    pub send_buffer_bytes: usize,
}

/// Creates a non-blocking, SO_REUSEPORT UDP socket bound to `addr`.
/// The buffer sizes are requests; the kernel caps them at rmem_max/wmem_max.
pub fn bind_reuseport(addr: SocketAddr, opts: UdpOptions) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if opts.recv_buffer_bytes > 0 {
        sock.set_recv_buffer_size(opts.recv_buffer_bytes)?;
    }
    if opts.send_buffer_bytes > 0 {
        sock.set_send_buffer_size(opts.send_buffer_bytes)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// What the kernel actually granted (for `core.shards`).
pub fn effective_buffers(sock: &Socket) -> (usize, usize) {
    (
        sock.recv_buffer_size().unwrap_or(0),
        sock.send_buffer_size().unwrap_or(0),
    )
}
