//! DNS lookups for the routing script (KSR.ipops `dns_*`, `srv_query`,
//! `naptr_query`), run on the control runtime, never on a shard.
//!
//! Owns: the bounded queue shards send lookups on, the system resolver
//! (getaddrinfo, on tokio's blocking pool) for addresses, and one hickory
//! resolver (built on first use from `[ipops] resolv_conf`) for SRV, NAPTR
//! and `dns_int_match_ip`. Record counts are bounded here.
//! Must never: block a shard. [`DnsHandle::lookup`] only `try_send`s; a full
//! queue is [`DnsError::QueueFull`] at once, a lookup that does not finish
//! within `dns_timeout_ms` is [`DnsError::Timeout`]. A getaddrinfo call
//! cannot be cancelled: it keeps its in-flight slot until it returns, so at
//! most `dns_in_flight_max` of them ever hold a blocking thread.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioAsyncResolver;
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};

use crate::config::IpopsConfig;

/// Most records one lookup keeps (Kamailio's ipops keeps 32).
pub const RECORDS_MAX: usize = 32;

/// What to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    /// Addresses through the system resolver (getaddrinfo, /etc/hosts).
    SysAddrs(String),
    /// Addresses through the resolver of `resolv_conf` (A and AAAA).
    IntAddrs(String),
    Srv(String),
    Naptr(String),
    /// The host name of an address through the system resolver
    /// (getnameinfo with NI_NAMEREQD).
    Ptr(IpAddr),
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// One NAPTR record (RFC 2915).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub pref: u16,
    pub flags: String,
    pub services: String,
    pub regex: String,
    pub replace: String,
}

/// A lookup's records, at most [`RECORDS_MAX`]; `truncated` when more came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsAnswer {
    pub addrs: Vec<IpAddr>,
    pub srv: Vec<SrvRecord>,
    pub naptr: Vec<NaptrRecord>,
    /// `Ptr`: the host name.
    pub names: Vec<String>,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name exists nowhere (NXDOMAIN) or has no record of the type.
    #[error("no such record")]
    NotFound,
    #[error("lookup failed: {0}")]
    Failed(String),
    #[error("no answer within dns_timeout_ms")]
    Timeout,
    #[error("DNS queue full")]
    QueueFull,
    #[error("DNS worker gone")]
    Closed,
}

struct DnsReq {
    query: DnsQuery,
    reply: oneshot::Sender<Result<DnsAnswer, DnsError>>,
}

/// The answer to one lookup; any executor can await it.
#[must_use = "the lookup is sent; await the reply or drop it"]
pub struct DnsReply {
    rx: oneshot::Receiver<Result<DnsAnswer, DnsError>>,
}

impl Future for DnsReply {
    type Output = Result<DnsAnswer, DnsError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().rx)
            .poll(cx)
            .map(|a| a.unwrap_or(Err(DnsError::Closed)))
    }
}

/// The shards' side of the DNS worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsHandle {
    tx: mpsc::Sender<DnsReq>,
    timeout: Duration,
}

/// The worker's settings, fixed at start.
struct Worker {
    timeout: Duration,
    resolv_conf: String,
    port: u16,
    resolver: OnceCell<Result<TokioAsyncResolver, String>>,
}

impl DnsHandle {
    /// Starts the worker on `rt`. Nothing is read or resolved until the
    /// first lookup, so a script that never asks costs one idle task.
    pub fn start(cfg: &IpopsConfig, rt: &tokio::runtime::Handle) -> DnsHandle {
        let timeout = Duration::from_millis(cfg.dns_timeout_ms.max(1));
        let (tx, rx) = mpsc::channel(cfg.dns_queue_depth.max(1));
        let worker = Arc::new(Worker {
            timeout,
            resolv_conf: cfg.resolv_conf.clone(),
            port: cfg.dns_port,
            resolver: OnceCell::new(),
        });
        rt.spawn(serve(worker, rx, cfg.dns_in_flight_max.max(1)));
        DnsHandle { tx, timeout }
    }

    /// `dns_timeout_ms`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Queues `query`; the answer comes through the reply.
    pub fn lookup(&self, query: DnsQuery) -> Result<DnsReply, DnsError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(DnsReq { query, reply }) {
            Ok(()) => Ok(DnsReply { rx }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DnsError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DnsError::Closed),
        }
    }
}

/// Takes a request only when an in-flight slot is free, so a resolver that
/// hangs backs the queue up (callers get `QueueFull`).
async fn serve(w: Arc<Worker>, mut rx: mpsc::Receiver<DnsReq>, in_flight_max: usize) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(req) = rx.recv().await else {
            break;
        };
        if req.reply.is_closed() {
            continue;
        }
        let w = w.clone();
        tokio::spawn(async move {
            let answer = match req.query {
                q @ (DnsQuery::SysAddrs(_) | DnsQuery::Ptr(_)) => {
                    // getaddrinfo cannot be cut: the slot goes with it.
                    let call = tokio::task::spawn_blocking(move || {
                        let r = match q {
                            DnsQuery::Ptr(ip) => sys_name(ip),
                            DnsQuery::SysAddrs(name) => sys_addrs(&name),
                            _ => Err(DnsError::Failed("not a system query".into())),
                        };
                        drop(slot);
                        r
                    });
                    match tokio::time::timeout(w.timeout, call).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => Err(DnsError::Failed(e.to_string())),
                        Err(_) => Err(DnsError::Timeout),
                    }
                }
                q => {
                    let r = tokio::time::timeout(w.timeout, hickory_lookup(&w, q))
                        .await
                        .unwrap_or(Err(DnsError::Timeout));
                    drop(slot);
                    r
                }
            };
            let _ = req.reply.send(answer);
        });
    }
}

fn sys_addrs(name: &str) -> Result<DnsAnswer, DnsError> {
    if name.is_empty() {
        return Err(DnsError::NotFound);
    }
    let it = (name, 0u16)
        .to_socket_addrs()
        .map_err(|e| DnsError::Failed(e.to_string()))?;
    let mut out = DnsAnswer::default();
    for a in it {
        if out.addrs.len() >= RECORDS_MAX {
            out.truncated = true;
            break;
        }
        out.addrs.push(a.ip());
    }
    Ok(out)
}

fn sys_name(ip: IpAddr) -> Result<DnsAnswer, DnsError> {
    let (host, _) = dns_lookup::getnameinfo(&SocketAddr::new(ip, 0), libc::NI_NAMEREQD)
        .map_err(|e| DnsError::Failed(format!("{e:?}")))?;
    Ok(DnsAnswer {
        names: vec![host],
        ..DnsAnswer::default()
    })
}

/// The hickory resolver, from `resolv_conf` with every name server's port
/// set to `dns_port`, and `/etc/hosts` consulted for addresses.
fn build_resolver(w: &Worker) -> Result<TokioAsyncResolver, String> {
    let data = std::fs::read(&w.resolv_conf).map_err(|e| format!("{}: {e}", w.resolv_conf))?;
    let (conf, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(data)
        .map_err(|e| format!("{}: {e}", w.resolv_conf))?;
    let mut servers = NameServerConfigGroup::new();
    for ns in conf.name_servers() {
        let mut ns = ns.clone();
        ns.socket_addr = SocketAddr::new(ns.socket_addr.ip(), w.port);
        servers.push(ns);
    }
    let conf = ResolverConfig::from_parts(conf.domain().cloned(), conf.search().to_vec(), servers);
    opts.timeout = w.timeout;
    opts.attempts = 1;
    opts.use_hosts_file = true;
    Ok(TokioAsyncResolver::tokio(conf, opts))
}

async fn hickory_lookup(w: &Worker, q: DnsQuery) -> Result<DnsAnswer, DnsError> {
    let resolver = w
        .resolver
        .get_or_init(|| async { build_resolver(w) })
        .await
        .as_ref()
        .map_err(|e| DnsError::Failed(e.clone()))?;
    let mut out = DnsAnswer::default();
    match q {
        DnsQuery::IntAddrs(name) => {
            let r = resolver.lookup_ip(name.as_str()).await.map_err(err)?;
            for ip in r.iter() {
                if out.addrs.len() >= RECORDS_MAX {
                    out.truncated = true;
                    break;
                }
                out.addrs.push(ip);
            }
        }
        DnsQuery::Srv(name) => {
            let r = resolver.srv_lookup(name.as_str()).await.map_err(err)?;
            for s in r.iter() {
                if out.srv.len() >= RECORDS_MAX {
                    out.truncated = true;
                    break;
                }
                out.srv.push(SrvRecord {
                    priority: s.priority(),
                    weight: s.weight(),
                    port: s.port(),
                    target: name_str(&s.target().to_utf8()),
                });
            }
            // RFC 2782: lowest priority first; within one, heaviest first.
            out.srv
                .sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        }
        DnsQuery::Naptr(name) => {
            let r = resolver
                .lookup(name.as_str(), RecordType::NAPTR)
                .await
                .map_err(err)?;
            for rec in r.iter() {
                let RData::NAPTR(n) = rec else { continue };
                if out.naptr.len() >= RECORDS_MAX {
                    out.truncated = true;
                    break;
                }
                out.naptr.push(NaptrRecord {
                    order: n.order(),
                    pref: n.preference(),
                    flags: String::from_utf8_lossy(n.flags()).into_owned(),
                    services: String::from_utf8_lossy(n.services()).into_owned(),
                    regex: String::from_utf8_lossy(n.regexp()).into_owned(),
                    replace: name_str(&n.replacement().to_utf8()),
                });
            }
            out.naptr
                .sort_by(|a, b| a.order.cmp(&b.order).then(a.pref.cmp(&b.pref)));
            if out.naptr.is_empty() {
                return Err(DnsError::NotFound);
            }
        }
        DnsQuery::SysAddrs(_) | DnsQuery::Ptr(_) => {
            return Err(DnsError::Failed("not a resolver query".into()))
        }
    }
    Ok(out)
}

/// A domain name as Kamailio shows it: without the root dot.
fn name_str(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

fn err(e: hickory_resolver::error::ResolveError) -> DnsError {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { .. } => DnsError::NotFound,
        ResolveErrorKind::Timeout => DnsError::Timeout,
        _ => DnsError::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_resolver_reads_hosts() {
        let a = sys_addrs("localhost").expect("localhost resolves");
        assert!(a.addrs.contains(&IpAddr::from([127, 0, 0, 1])));
        assert!(sys_addrs("").is_err());
        let n = sys_name(IpAddr::from([127, 0, 0, 1])).expect("127.0.0.1 has a name");
        assert_eq!(n.names, vec!["localhost".to_owned()]);
    }

    #[test]
    fn root_dot_dropped() {
        assert_eq!(name_str("sip.example.com."), "sip.example.com");
        assert_eq!(name_str("."), "");
    }
}
