//! UDP sockets for the shards. Either one socket that every shard waits on
//! (`EPOLLEXCLUSIVE`: each datagram wakes one idle shard, so one peer's
//! traffic uses every core, as Kamailio's children share theirs), or one
//! socket per shard bound with SO_REUSEPORT (the kernel hashes the source
//! address and port, so one peer's datagrams all land on one shard).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket knobs of one shard.
#[derive(Clone, Copy, Debug)]
pub struct UdpOptions {
    pub recv_buffer_bytes: usize,
    pub send_buffer_bytes: usize,
}

/// Creates a non-blocking UDP socket bound to `addr` (with SO_REUSEPORT
/// when `reuseport`, so each shard can bind its own).
/// The buffer sizes are requests; the kernel caps them at rmem_max/wmem_max.
pub fn bind(addr: SocketAddr, opts: UdpOptions, reuseport: bool) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    if reuseport {
        sock.set_reuse_port(true)?;
    }
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
