//! The dispatcher core (Kamailio's `dispatcher` module without the I/O):
//! destination sets ([`list`]), the selection algorithms ([`select`]), the
//! keepalive state machine ([`probe`]) and the call-load table ([`load`]).
//!
//! Owns: one [`Dispatcher`] for the whole server. Every shard reads the
//! current list through [`Dispatcher::list`] (a generation number checked
//! with one atomic load; the `Arc` is re-taken only after a reload), and
//! destination state lives in atomics inside the list, so a state change
//! made by a probe reply on one core is what the next selection on any
//! core sees, without a hop.
//!
//! Never: read files, the database, sockets or the clock. Time comes in as
//! milliseconds / seconds; the KSR layer (`kemi::dispatcher`) and the shard
//! loop do the I/O.

#![forbid(unsafe_code)]

pub mod list;
pub mod load;
pub mod probe;
pub mod select;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use list::{DsList, DsRow, ListLimits, Skipped};
pub use probe::{Ping, ProbeEvent, ProbeParams, Prober, ReplyCodes};

/// Module parameters the selection and XAVP code use.
#[derive(Clone, Debug)]
pub struct DsParams {
    /// `flags`: 1 hash over the URI user only; 2 failover (XAVP list).
    pub flags: u32,
    pub use_default: bool,
    pub force_dst: bool,
    pub xavp_dst: String,
    /// `xavp_dst_mode`: 1 leaves out `attrs`.
    pub xavp_dst_mode: u32,
    pub xavp_ctx: String,
    /// `xavp_ctx_mode`: 1 leaves out `cnt`.
    pub xavp_ctx_mode: u32,
    /// `ds_hash_size` > 0 enables alg 10.
    pub hash_size: u32,
    pub limits: ListLimits,
}

/// The first bytes of the Via branch of a probe sipshard sends:
/// `z9hG4bK-dsping-<salt>-<id>`.
pub const PROBE_BRANCH: &[u8] = b"z9hG4bK-dsping-";

/// Destination sets, probing and call load, shared by every shard.
pub struct Dispatcher {
    pub params: DsParams,
    list: RwLock<Arc<DsList>>,
    gen: AtomicU64,
    prober: Mutex<Prober>,
    load: Mutex<load::CallLoad>,
    /// Random per process: a probe reply from before a restart is not ours.
    salt: u32,
}

impl Dispatcher {
    pub fn new(
        params: DsParams,
        probe: ProbeParams,
        calls: load::CallLoad,
        now_ms: u64,
        salt: u32,
    ) -> Dispatcher {
        Dispatcher {
            params,
            list: RwLock::new(Arc::new(DsList::default())),
            gen: AtomicU64::new(0),
            prober: Mutex::new(Prober::new(probe, now_ms)),
            load: Mutex::new(calls),
            salt,
        }
    }

    /// The generation of the current list (bumped by [`Dispatcher::replace`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The current list.
    pub fn list(&self) -> Arc<DsList> {
        match self.list.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Installs a new list (a reload), keeping the state of the
    /// destinations both lists have.
    pub fn replace(&self, new: DsList) {
        let new = Arc::new(new);
        let mut g = match self.list.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        new.keep_state_of(&g);
        *g = new;
        self.gen.fetch_add(1, Ordering::AcqRel);
    }

    pub fn prober(&self) -> MutexGuard<'_, Prober> {
        self.prober.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn calls(&self) -> MutexGuard<'_, load::CallLoad> {
        self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The probe id in a reply's top Via branch, when it is one of ours.
    pub fn probe_id(&self, branch: &[u8]) -> Option<u64> {
        let rest = branch.strip_prefix(PROBE_BRANCH)?;
        let text = std::str::from_utf8(rest).ok()?;
        let (salt, id) = text.split_once('-')?;
        if u32::from_str_radix(salt, 16).ok()? != self.salt {
            return None;
        }
        id.parse().ok()
    }

    /// Writes the OPTIONS (or `method`) probe for `ping`, sent from `local`.
    pub fn write_probe(
        &self,
        ping: &Ping,
        method: &str,
        local: std::net::SocketAddr,
        out: &mut Vec<u8>,
    ) {
        use std::io::Write;
        let host = match local.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let port = local.port();
        let salt = self.salt;
        let id = ping.id;
        let _ = write!(
            out,
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {host}:{port};rport;branch={branch}{salt:x}-{id}\r\n\
             Max-Forwards: 70\r\n\
             From: <{from}>;tag=ds{salt:x}{id}\r\n\
             To: <{uri}>\r\n\
             Call-ID: dsping-{salt:x}-{id}@{host}\r\n\
             CSeq: 10 {method}\r\n\
             Content-Length: 0\r\n\r\n",
            uri = ping.uri,
            from = ping.from,
            branch = std::str::from_utf8(PROBE_BRANCH).unwrap_or(""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher() -> Dispatcher {
        let params = DsParams {
            flags: 2,
            use_default: false,
            force_dst: true,
            xavp_dst: "_dsdst_".into(),
            xavp_dst_mode: 0,
            xavp_ctx: "_dsctx_".into(),
            xavp_ctx_mode: 0,
            hash_size: 0,
            limits: ListLimits {
                max_sets: 8,
                max_destinations: 8,
            },
        };
        let probe = ProbeParams {
            interval_ms: 1000,
            timeout_ms: 1000,
            t1_ms: 500,
            t2_ms: 4000,
            mode: 1,
            probing_threshold: 1,
            inactive_threshold: 1,
            reply_codes: ReplyCodes::default(),
            latency_stats: false,
            alpha: 0.1,
            from: "sip:dispatcher@localhost".into(),
            max_pending: 8,
        };
        Dispatcher::new(params, probe, load::CallLoad::new(8, 60, 60), 0, 0xabc)
    }

    #[test]
    fn probe_branch_round_trip_and_reload_generation() {
        let d = dispatcher();
        let (rows, _) = DsList::parse_file("1 sip:127.0.0.1:5080\n");
        let g0 = d.generation();
        d.replace(DsList::from_rows(&rows, d.params.limits).0);
        assert_eq!(d.generation(), g0 + 1);
        let list = d.list();
        d.prober().handle_timeout(0, &list);
        let ping = d.prober().poll_transmit().unwrap();
        let mut out = Vec::new();
        d.write_probe(
            &ping,
            "OPTIONS",
            "127.0.0.1:5060".parse().unwrap(),
            &mut out,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("OPTIONS sip:127.0.0.1:5080 SIP/2.0\r\n"),
            "{text}"
        );
        let mut parsed = crate::sip::Parsed::default();
        crate::sip::parse(
            &out,
            crate::sip::Framing::Datagram,
            &crate::sip::Limits::default(),
            &mut parsed,
        )
        .unwrap();
        let msg = crate::sip::SipMsg::new(&out, &parsed);
        let via = msg.top_via().unwrap();
        let branch = via.params.get(b"branch").flatten().unwrap();
        assert_eq!(d.probe_id(branch), Some(ping.id));
        assert_eq!(d.probe_id(b"z9hG4bK-dsping-abd-1"), None, "other salt");
        assert_eq!(d.probe_id(b"z9hG4bKsS0.1"), None);
    }
}
