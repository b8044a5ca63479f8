//! Transport protocols a message arrives on or leaves with, and a
//! destination (address + protocol). Sans-IO: names and URI rules only.

use std::net::SocketAddr;

use super::{Scheme, SipUri};

/// A SIP transport (RFC 3261 §18, RFC 7118 for WebSocket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Proto {
    #[default]
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Proto {
    /// The Via transport token (`SIP/2.0/TCP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
            Proto::Ws => "WS",
            Proto::Wss => "WSS",
        }
    }

    /// The `transport=` URI parameter value, lower case (Kamailio's `$pr`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
            Proto::Ws => "ws",
            Proto::Wss => "wss",
        }
    }

    /// Connection-oriented (replies reuse the request's connection).
    pub fn is_stream(self) -> bool {
        self != Proto::Udp
    }

    /// Encrypted (TLS or WSS).
    pub fn is_secure(self) -> bool {
        matches!(self, Proto::Tls | Proto::Wss)
    }

    /// From a `transport=` value or a Via token, any case.
    pub fn from_token(t: &[u8]) -> Option<Proto> {
        let p = match t.to_ascii_lowercase().as_slice() {
            b"udp" => Proto::Udp,
            b"tcp" => Proto::Tcp,
            b"tls" => Proto::Tls,
            b"ws" => Proto::Ws,
            b"wss" => Proto::Wss,
            _ => return None,
        };
        Some(p)
    }

    /// The transport a request to `uri` uses (RFC 3263 without DNS): the
    /// `transport=` parameter, else TLS for `sips:`, else UDP. An unknown
    /// `transport=` value is `None`.
    pub fn of_uri(uri: &SipUri<'_>) -> Option<Proto> {
        let secure = uri.scheme == Scheme::Sips;
        match uri.params.get(b"transport") {
            Some(Some(t)) => {
                let p = Proto::from_token(t)?;
                // sips: over TCP means TLS (RFC 3261 §26.2.2).
                Some(match (secure, p) {
                    (true, Proto::Tcp) => Proto::Tls,
                    (true, Proto::Ws) => Proto::Wss,
                    (_, p) => p,
                })
            }
            _ if secure => Some(Proto::Tls),
            _ => Some(Proto::Udp),
        }
    }

    /// Default port of the transport (5061 for TLS, 5060 otherwise).
    pub fn default_port(self) -> u16 {
        if self.is_secure() {
            5061
        } else {
            5060
        }
    }
}

/// Where a message goes: an address and the transport to reach it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl Dest {
    pub fn new(addr: SocketAddr, proto: Proto) -> Dest {
        Dest { addr, proto }
    }

    pub fn udp(addr: SocketAddr) -> Dest {
        Dest {
            addr,
            proto: Proto::Udp,
        }
    }
}

impl From<SocketAddr> for Dest {
    fn from(addr: SocketAddr) -> Dest {
        Dest::udp(addr)
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.proto.name(), self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(u: &str) -> Option<Proto> {
        Proto::of_uri(&SipUri::parse(u.as_bytes()).unwrap())
    }

    #[test]
    fn transport_of_a_uri() {
        assert_eq!(of("sip:a@10.0.0.1"), Some(Proto::Udp));
        assert_eq!(of("sip:a@10.0.0.1;transport=TCP"), Some(Proto::Tcp));
        assert_eq!(of("sip:a@10.0.0.1:5070;transport=tls;lr"), Some(Proto::Tls));
        assert_eq!(of("sips:a@10.0.0.1"), Some(Proto::Tls));
        assert_eq!(of("sips:a@10.0.0.1;transport=tcp"), Some(Proto::Tls));
        assert_eq!(of("sip:a@10.0.0.1;transport=ws"), Some(Proto::Ws));
        assert_eq!(of("sip:a@10.0.0.1;transport=sctp"), None);
        assert_eq!(Proto::Tls.default_port(), 5061);
        assert_eq!(Proto::Tcp.via_token(), "TCP");
    }
}
