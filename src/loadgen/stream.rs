//! Client connections of `sipshard bench register --transport tcp|tls`:
//! one TCP (or TLS, rustls, the server certificate not checked) connection
//! per `--sockets`, messages framed with the server's own
//! [`crate::sip::StreamFramer`]. Writes wait (briefly) when the socket is
//! full; reads never wait.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::sip::{Limits, StreamEvent, StreamFramer};

/// The transport a load generator speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BenchTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl BenchTransport {
    /// Via transport token.
    pub fn via(self) -> &'static str {
        match self {
            BenchTransport::Udp => "UDP",
            BenchTransport::Tcp => "TCP",
            BenchTransport::Tls => "TLS",
        }
    }

    /// `;transport=` of the Contact (empty for UDP).
    pub fn contact_param(self) -> &'static str {
        match self {
            BenchTransport::Udp => "",
            BenchTransport::Tcp => ";transport=tcp",
            BenchTransport::Tls => ";transport=tls",
        }
    }
}

/// One client socket.
pub enum Client {
    Udp(UdpSocket),
    Stream(Box<StreamClient>),
}

pub struct StreamClient {
    tcp: TcpStream,
    tls: Option<rustls::ClientConnection>,
    framer: StreamFramer,
}

/// How long a write waits for room before it counts as failed.
const WRITE_WAIT: Duration = Duration::from_secs(2);

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

impl Client {
    /// A connection to `target` over `t` (TCP or TLS).
    pub fn connect(target: SocketAddr, t: BenchTransport) -> Result<Client, String> {
        let mut tcp = TcpStream::connect(target).map_err(|e| format!("connect {target}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = match t {
            BenchTransport::Tls => {
                let cfg = crate::transport::tls::insecure_client_config()?;
                let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
                let mut c = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
                tcp.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                while c.is_handshaking() {
                    c.complete_io(&mut tcp)
                        .map_err(|e| format!("TLS handshake with {target}: {e}"))?;
                }
                Some(c)
            }
            _ => None,
        };
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Client::Stream(Box::new(StreamClient {
            tcp,
            tls,
            framer: StreamFramer::new(65_535),
        })))
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Client::Udp(s) => s.as_raw_fd(),
            Client::Stream(c) => c.tcp.as_raw_fd(),
        }
    }

    pub fn local_port(&self) -> u16 {
        match self {
            Client::Udp(s) => s.local_addr(),
            Client::Stream(c) => c.tcp.local_addr(),
        }
        .map(|a| a.port())
        .unwrap_or(0)
    }

    /// Sends one message; false when it could not be written.
    pub fn send(&mut self, msg: &[u8]) -> bool {
        match self {
            Client::Udp(s) => s.send(msg).is_ok(),
            Client::Stream(c) => c.send(msg),
        }
    }

    /// Stream only: reads what is there and returns the complete messages.
    pub fn read_messages(&mut self, limits: &Limits, out: &mut Vec<Vec<u8>>) {
        if let Client::Stream(c) = self {
            c.read_messages(limits, out);
        }
    }
}

impl StreamClient {
    fn write_all_waiting(&mut self, mut data: &[u8]) -> bool {
        let until = Instant::now() + WRITE_WAIT;
        while !data.is_empty() {
            match self.tcp.write(data) {
                Ok(0) => return false,
                Ok(n) => data = &data[n..],
                Err(e) if would_block(&e) && Instant::now() < until => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn send(&mut self, msg: &[u8]) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return self.write_all_waiting(msg);
        };
        if tls.writer().write_all(msg).is_err() {
            return false;
        }
        let until = Instant::now() + WRITE_WAIT;
        while tls.wants_write() {
            match tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) && Instant::now() < until => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn read_messages(&mut self, limits: &Limits, out: &mut Vec<Vec<u8>>) {
        loop {
            let room = self.framer.spare(16 << 10);
            let len = room.len();
            let n = match self.tls.as_mut() {
                None => self.tcp.read(room).unwrap_or_default(),
                Some(tls) => {
                    let _ = tls.read_tls(&mut self.tcp);
                    if tls.process_new_packets().is_err() {
                        0
                    } else {
                        tls.reader().read(room).unwrap_or(0)
                    }
                }
            };
            self.framer.filled(len, n);
            if n == 0 {
                break;
            }
        }
        while let Ok(Some(ev)) = self.framer.next(limits) {
            if let StreamEvent::Message(m) = ev {
                out.push(m.to_vec());
            }
        }
    }
}

/// `--sockets` connections to `target`, split over `threads` workers.
pub fn connect_all(
    target: SocketAddr,
    t: BenchTransport,
    sockets: usize,
    threads: usize,
) -> Result<Vec<Vec<Client>>, String> {
    let mut groups: Vec<Vec<Client>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..sockets {
        groups[i % threads.max(1)].push(Client::connect(target, t)?);
    }
    Ok(groups)
}
