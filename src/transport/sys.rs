//! The few Linux calls the shard loop needs that std does not offer: epoll
//! (with `EPOLLEXCLUSIVE`, so one datagram wakes one shard), an eventfd
//! doorbell, and `recvmmsg` for reading a batch of datagrams in one call.
//!
//! All of sipshard's unsafe code is in this file; each block says why it is
//! sound. Everything else in the crate forbids unsafe code.

#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An epoll instance watching a few fds, each tagged with a `u64` token.
pub struct Epoll {
    fd: std::sync::Arc<OwnedFd>,
    events: Vec<libc::epoll_event>,
}

/// A handle on an epoll instance that other threads may use to add, change
/// and remove watched fds (`epoll_ctl` is thread-safe): how a shard that
/// writes on another shard's connection arms `EPOLLOUT` there.
#[derive(Clone)]
pub struct EpollCtl(std::sync::Arc<OwnedFd>);

impl EpollCtl {
    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        let mut flags = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if out {
            flags |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: both fds are valid for the call (the epoll fd is owned by
        // `self`, `fd` by the caller) and `ev` outlives it.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Watches `fd` for input (and output when `out`), level-triggered.
    pub fn add(&self, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, out)
    }

    /// Changes whether `fd` is watched for output.
    pub fn modify(&self, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, out)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false)
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new fd we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh, valid fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll {
            fd: std::sync::Arc::new(fd),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    /// A handle other threads can change the watched set with.
    pub fn ctl(&self) -> EpollCtl {
        EpollCtl(self.fd.clone())
    }

    /// Watches `fd` for input. `exclusive`: of several epoll instances
    /// watching the same fd, an event wakes one waiter, not all
    /// (`EPOLLEXCLUSIVE`), which is how shards share one socket without a
    /// thundering herd.
    pub fn add_readable(&self, fd: RawFd, token: u64, exclusive: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN as u32;
        if exclusive {
            flags |= libc::EPOLLEXCLUSIVE as u32;
        }
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: both fds are valid for the call and `ev` outlives it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits for events (none = until one arrives); calls `f` with each
    /// ready token and its event bits. EINTR counts as "no events".
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        mut f: impl FnMut(u64, u32),
    ) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            // Round up: waking before the deadline only loops once more.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: `events` is a live buffer of `len` epoll_event entries that
        // the kernel fills; nothing else aliases it during the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &self.events[..n as usize] {
            let token = ev.u64;
            let bits = ev.events;
            f(token, bits);
        }
        Ok(())
    }
}

/// A non-blocking eventfd: other threads `ring` it to wake the shard.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: fresh fd, owned by nobody else.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Adds one to the counter (wakes an epoll waiting on it).
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // already wakes the reader, so the result needs no handling.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the counter.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// Buffers for reading up to `capacity` datagrams with one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<u8>,
    slot_bytes: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl RecvBatch {
    /// `capacity` slots of `slot_bytes` each (the largest datagram accepted
    /// plus one, so an oversized one shows as truncated).
    pub fn new(capacity: usize, slot_bytes: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![0; capacity * slot_bytes],
            slot_bytes,
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { std::mem::zeroed() }; capacity],
            iovecs: Vec::with_capacity(capacity),
            hdrs: Vec::with_capacity(capacity),
            count: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.addrs.len()
    }

    /// Reads what the socket holds, without waiting (`MSG_DONTWAIT`):
    /// 0 when it is empty.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    /// Waits for at least one datagram (on a blocking socket: up to its
    /// SO_RCVTIMEO), then takes what else is there (`MSG_WAITFORONE`).
    /// 0 on timeout or signal.
    pub fn recv_wait(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let cap = self.addrs.len();
        self.iovecs.clear();
        self.hdrs.clear();
        let base = self.bufs.as_mut_ptr();
        for i in 0..cap {
            // SAFETY: slot i lies within `bufs` (cap * slot_bytes bytes).
            let p = unsafe { base.add(i * self.slot_bytes) };
            self.iovecs.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: self.slot_bytes,
            });
        }
        for i in 0..cap {
            // SAFETY: msghdr is plain old data; every pointer field is set below.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: `hdrs` holds `cap` headers whose name and iovec pointers
        // point into `addrs`, `iovecs` and `bufs`, all alive and unaliased
        // for the duration of the call; the kernel writes within their sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                cap as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.count = 0;
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// Datagram `i` of the last `recv`: bytes (at most `slot_bytes`; a
    /// truncated one has exactly `slot_bytes`) and source.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot_bytes);
        let start = i * self.slot_bytes;
        let src = sockaddr_to_std(&self.addrs[i], h.msg_hdr.msg_namelen)?;
        Some((&self.bufs[start..start + len], src))
    }
}

/// Replies queued during one turn of the loop, sent with one `sendmmsg`
/// (`MSG_DONTWAIT`): under load a batch of requests costs one send call, at
/// low rate it is one call for one reply, as `sendto` would be.
pub struct SendBatch {
    buf: Vec<u8>,
    items: Vec<(u32, u32, SocketAddr)>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    max: usize,
}

impl SendBatch {
    /// Holds up to `max` datagrams (the caller flushes when [`SendBatch::full`]).
    pub fn new(max: usize) -> SendBatch {
        SendBatch {
            buf: Vec::with_capacity(16 << 10),
            items: Vec::with_capacity(max.max(1)),
            addrs: Vec::new(),
            lens: Vec::new(),
            iovecs: Vec::new(),
            hdrs: Vec::new(),
            max: max.max(1),
        }
    }

    pub fn push(&mut self, bytes: &[u8], dst: SocketAddr) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(bytes);
        self.items.push((start, self.buf.len() as u32, dst));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn full(&self) -> bool {
        self.items.len() >= self.max
    }

    /// Sends everything queued; calls `on_error(dst, error)` for each
    /// datagram the socket refused. Clears the batch.
    pub fn flush(&mut self, fd: RawFd, mut on_error: impl FnMut(SocketAddr, &io::Error)) {
        let n = self.items.len();
        if n == 0 {
            return;
        }
        self.addrs.clear();
        self.lens.clear();
        for &(_, _, dst) in &self.items {
            let sa = socket2::SockAddr::from(dst);
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = (sa.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
            // SAFETY: copies `len` bytes of a valid sockaddr into the
            // storage, which is at least that large; the regions are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sa.as_ptr().cast::<u8>(),
                    (&mut st as *mut libc::sockaddr_storage).cast::<u8>(),
                    len,
                );
            }
            self.addrs.push(st);
            self.lens.push(len as libc::socklen_t);
        }
        self.iovecs.clear();
        for &(start, end, _) in &self.items {
            self.iovecs.push(libc::iovec {
                iov_base: self.buf[start as usize..].as_ptr() as *mut libc::c_void,
                iov_len: (end - start) as usize,
            });
        }
        self.hdrs.clear();
        for i in 0..n {
            // SAFETY: msghdr is plain old data; the pointer fields are set below.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.lens[i];
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `hdrs[done..n]` point into `addrs`, `iovecs` and `buf`,
            // all alive and unchanged during the call; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                done += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The datagram at `done` was refused: report it, go on after it.
            on_error(self.items[done].2, &e);
            done += 1;
        }
        self.items.clear();
        self.buf.clear();
        if self.buf.capacity() > (256 << 10) {
            self.buf.shrink_to(16 << 10);
        }
    }
}

fn sockaddr_to_std(a: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match a.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let v4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A wake-up datagram for shard `id` of a spread group: two bytes, a zero
/// and the id. The group's BPF program delivers it to socket `id`; the shard
/// ignores it (SIP never starts with a NUL).
pub fn wake_datagram(id: u8) -> [u8; 2] {
    [0, id]
}

/// Whether `d` is a [`wake_datagram`].
pub fn is_wake_datagram(d: &[u8]) -> bool {
    d.len() == 2 && d[0] == 0
}

/// Attaches a classic BPF program to a SO_REUSEPORT group that sends each
/// datagram to a random socket of the group, so one peer's traffic spreads
/// over every shard instead of following the kernel's 4-tuple hash; a
/// [`wake_datagram`] goes to the socket it names. Socket `i` of the group is
/// the `i`-th bound. Any socket of the group can carry the program.
pub fn attach_reuseport_spread(fd: RawFd, sockets: u32) -> io::Result<()> {
    const SKF_AD_OFF: i32 = -0x1000;
    const SKF_AD_RANDOM: i32 = 56;
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let code = [
        // 0: A = payload length; a 2-byte payload ...
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0, 0, 0),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, 4),
        // 2: ... whose first byte is 0 is a wake-up: its second byte is
        // the socket index.
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 0, 2),
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 1, 0, 0),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
        // 6: anything else: a random socket.
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (SKF_AD_OFF + SKF_AD_RANDOM) as u32,
            0,
            0,
        ),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            sockets.max(1),
            0,
            0,
        ),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `code`, both alive for the call; the kernel
    // copies the program.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    })?;
    Ok(())
}

/// glibc malloc: return freed memory above `threshold_bytes` at the top of
/// a heap to the system (`M_TRIM_THRESHOLD`), instead of glibc's dynamic
/// threshold, which a large short-lived buffer (the location rows read at
/// start) raises for good.
pub fn malloc_trim_threshold(threshold_bytes: usize) {
    // SAFETY: mallopt takes two integers and changes allocator settings only.
    let _ = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, threshold_bytes as libc::c_int) };
}

/// glibc malloc: grow a heap by at least `pad_bytes` at a time
/// (`M_TOP_PAD`), so a shard whose live memory goes up and down with its
/// transactions does not call `mprotect` on every few allocations.
pub fn malloc_top_pad(pad_bytes: usize) {
    // SAFETY: mallopt takes two integers and changes allocator settings only.
    let _ = unsafe { libc::mallopt(libc::M_TOP_PAD, pad_bytes as libc::c_int) };
}

/// glibc malloc: give free memory of every arena back to the system (after
/// the start-up load, whose buffers are gone).
pub fn malloc_trim() {
    // SAFETY: malloc_trim takes an integer and only releases free memory.
    let _ = unsafe { libc::malloc_trim(0) };
}

/// Sets the calling thread's CPU affinity to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes within it, and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Sets the calling thread's niceness (Linux: per thread).
pub fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments; setpriority takes plain integers.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    cvt(r).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_batch_reads_several_datagrams_with_sources() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = RecvBatch::new(4, 16);
        assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 0);
        for m in [&b"one"[..], b"two", &[b'x'; 40]] {
            tx.send_to(m, rx.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = b.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let (d, src) = b.get(i).unwrap();
                assert_eq!(src, tx.local_addr().unwrap());
                got.push(d.to_vec());
            }
            if got.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got[0], b"one");
        assert_eq!(got[1], b"two");
        assert_eq!(got[2].len(), 16, "truncated to the slot");
    }

    #[test]
    fn random_reuseport_program_spreads_one_source() {
        use socket2::{Domain, Socket, Type};
        let mk = |addr: std::net::SocketAddr| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&addr.into()).unwrap();
            std::net::UdpSocket::from(s)
        };
        let a = mk("127.0.0.1:0".parse().unwrap());
        let b = mk(a.local_addr().unwrap());
        attach_reuseport_spread(a.as_raw_fd(), 2).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(b"x", a.local_addr().unwrap()).unwrap();
        }
        // Wake-ups reach the socket they name (b is index 1), however many.
        for _ in 0..20 {
            tx.send_to(&wake_datagram(1), a.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let count = |s: &std::net::UdpSocket| {
            let mut buf = [0u8; 8];
            let (mut n, mut wakes) = (0, 0);
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                n += 1;
                wakes += is_wake_datagram(&buf[..len]) as usize;
            }
            (n, wakes)
        };
        let ((na, wa), (nb, wb)) = (count(&a), count(&b));
        assert_eq!((wa, wb), (0, 20), "every wake-up reached socket 1");
        let nb = nb - wb;
        assert_eq!(na + nb, 200);
        assert!(na > 40 && nb > 40, "one source spread over both: {na}/{nb}");
    }

    #[test]
    fn send_batch_sends_every_datagram_to_its_destination() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = SendBatch::new(4);
        assert!(batch.is_empty());
        batch.push(b"to-a-1", a.local_addr().unwrap());
        batch.push(b"to-b", b.local_addr().unwrap());
        batch.push(b"to-a-2", a.local_addr().unwrap());
        assert!(!batch.full());
        let mut errors = 0;
        batch.flush(tx.as_raw_fd(), |_, _| errors += 1);
        assert_eq!(errors, 0);
        assert!(batch.is_empty());
        let mut buf = [0u8; 16];
        a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to-a-1");
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to-a-2");
        let (n, src) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to-b");
        assert_eq!(src, tx.local_addr().unwrap());
    }

    #[test]
    fn eventfd_wakes_epoll_until_drained() {
        let mut ep = Epoll::new().unwrap();
        let ev = EventFd::new().unwrap();
        ep.add_readable(ev.raw(), 7, false).unwrap();
        let mut seen = Vec::new();
        ep.wait(Some(Duration::from_millis(1)), |t, _| seen.push(t))
            .unwrap();
        assert!(seen.is_empty());
        ev.ring();
        ep.wait(Some(Duration::from_secs(5)), |t, _| seen.push(t))
            .unwrap();
        assert_eq!(seen, vec![7]);
        ev.drain();
        seen.clear();
        ep.wait(Some(Duration::ZERO), |t, _| seen.push(t)).unwrap();
        assert!(seen.is_empty());
    }
}
