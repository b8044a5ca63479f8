//! Destination sets: Kamailio's `dispatcher.list` file format and
//! `dispatcher` table rows turned into [`DsList`], with each destination's
//! runtime state in atomics so every shard reads it without a lock.
//!
//! Line format (Kamailio): `setid destination [flags [priority [attrs]]]`,
//! `#` starts a comment, flags decimal or `0x` hex, attrs
//! `name1=value1;...;nameN=valueN`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sip::{Scheme, SipUri};

/// Destination flags (Kamailio's, also the list file's `flags` column).
pub const INACTIVE: u32 = 1;
pub const TRYING: u32 = 2;
pub const DISABLED: u32 = 4;
pub const PROBING: u32 = 8;
pub const NO_DNS: u32 = 16;
pub const NO_PING: u32 = 32;
/// The state bits a destination's runtime state keeps.
pub const STATE_MASK: u32 = INACTIVE | TRYING | DISABLED | PROBING;

/// Transport of a destination (`;transport=` or the scheme's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
    Sctp,
    Ws,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
            Proto::Sctp => "sctp",
            Proto::Ws => "ws",
        }
    }
}

/// The special attributes Kamailio reads from `attrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// The whole attrs text as configured.
    pub body: String,
    pub duid: String,
    pub maxload: u32,
    /// 1..=100, else 0 (ignored).
    pub weight: u32,
    /// 1..=100, else 0 (ignored).
    pub rweight: u32,
    pub socket: String,
    pub sockname: String,
    pub ping_from: String,
    pub obproxy: String,
    /// `latency` initial estimate, ms.
    pub latency_ms: u32,
    /// `cc=1`: congestion control (alg 11/13 use estimate - average).
    pub cc: bool,
}

impl Attrs {
    pub fn parse(body: &str) -> Attrs {
        let mut a = Attrs {
            body: body.to_string(),
            ..Attrs::default()
        };
        for item in body.split(';') {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let pct = |v: &str| v.parse::<u32>().ok().filter(|w| (1..=100).contains(w));
            match k {
                "duid" => a.duid = v.to_string(),
                "maxload" => a.maxload = v.parse().unwrap_or(0),
                "weight" => a.weight = pct(v).unwrap_or(0),
                "rweight" => a.rweight = pct(v).unwrap_or(0),
                "socket" => a.socket = v.to_string(),
                "sockname" => a.sockname = v.to_string(),
                "ping_from" => a.ping_from = v.to_string(),
                "obproxy" => a.obproxy = v.to_string(),
                "latency" => a.latency_ms = v.parse().unwrap_or(0),
                "cc" => a.cc = v == "1",
                _ => {}
            }
        }
        a
    }
}

/// Latency figures of one destination (`ds_ping_latency_stats`), written by
/// the prober only; f64 bits in atomics so readers take no lock.
#[derive(Debug, Default)]
pub struct Latency {
    avg: AtomicU64,
    std: AtomicU64,
    est: AtomicU64,
    max_ms: AtomicU32,
    timeouts: AtomicU32,
    count: AtomicU32,
}

/// A copy of [`Latency`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyView {
    pub avg: f64,
    pub std: f64,
    pub est: f64,
    pub max_ms: u32,
    pub timeouts: u32,
    pub count: u32,
}

impl Latency {
    fn with_initial(ms: u32) -> Latency {
        let l = Latency::default();
        if ms > 0 {
            let v = f64::from(ms);
            l.avg.store(v.to_bits(), Ordering::Relaxed);
            l.est.store(v.to_bits(), Ordering::Relaxed);
            l.max_ms.store(ms, Ordering::Relaxed);
        }
        l
    }

    pub fn view(&self) -> LatencyView {
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        LatencyView {
            avg: f(&self.avg),
            std: f(&self.std),
            est: f(&self.est),
            max_ms: self.max_ms.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }

    /// One measured round trip: the running average and deviation
    /// (Welford), and the estimate as an EWMA with `alpha` (0..=1).
    pub fn record(&self, rtt_ms: f64, alpha: f64) {
        let v = self.view();
        let n = f64::from(v.count.saturating_add(1));
        let avg = v.avg + (rtt_ms - v.avg) / n;
        let var = if n > 1.0 {
            ((v.std * v.std) * (n - 2.0).max(0.0) + (rtt_ms - v.avg) * (rtt_ms - avg)) / (n - 1.0)
        } else {
            0.0
        };
        let est = if v.count == 0 && v.est == 0.0 {
            rtt_ms
        } else {
            alpha * rtt_ms + (1.0 - alpha) * v.est
        };
        self.avg.store(avg.to_bits(), Ordering::Relaxed);
        self.std
            .store(var.max(0.0).sqrt().to_bits(), Ordering::Relaxed);
        self.est.store(est.to_bits(), Ordering::Relaxed);
        self.max_ms.fetch_max(
            rtt_ms.clamp(0.0, f64::from(u32::MAX)) as u32,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// One destination of a set.
#[derive(Debug)]
pub struct Dest {
    pub uri: String,
    /// Host as written (IPv6 with its brackets), lower-case.
    pub host: String,
    /// Port from the URI; `None` means the scheme's default.
    pub port: Option<u16>,
    pub proto: Proto,
    /// The host as an IP address (literal, or `localhost`): what
    /// `ds_is_from_list` matches and where probes go.
    pub ip: Option<IpAddr>,
    /// Flags as configured (list file / `flags` column).
    pub cfg_flags: u32,
    pub priority: i32,
    pub attrs: Attrs,
    /// Runtime state: [`INACTIVE`] | [`TRYING`] | [`DISABLED`] | [`PROBING`].
    state: AtomicU32,
    /// Failed probes (or `t` marks) in a row while active/trying.
    fails: AtomicU32,
    /// Answered probes in a row while inactive/trying.
    oks: AtomicU32,
    pub latency: Latency,
}

impl Dest {
    /// A destination from its fields; `None` for a URI that does not parse.
    pub fn new(uri: &str, flags: u32, priority: i32, attrs: &str) -> Option<Dest> {
        let uri = uri.trim();
        let u = SipUri::parse(uri.as_bytes()).ok()?;
        if !matches!(u.scheme, Scheme::Sip | Scheme::Sips) || u.host.is_empty() {
            return None;
        }
        let host = String::from_utf8_lossy(u.host).to_ascii_lowercase();
        let proto = match u.params.get(b"transport").flatten() {
            Some(t) if t.eq_ignore_ascii_case(b"tcp") => Proto::Tcp,
            Some(t) if t.eq_ignore_ascii_case(b"tls") => Proto::Tls,
            Some(t) if t.eq_ignore_ascii_case(b"sctp") => Proto::Sctp,
            Some(t) if t.eq_ignore_ascii_case(b"ws") || t.eq_ignore_ascii_case(b"wss") => Proto::Ws,
            Some(_) => Proto::Udp,
            None if u.scheme == Scheme::Sips => Proto::Tls,
            None => Proto::Udp,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match bare.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) if bare == "localhost" => Some(IpAddr::from([127, 0, 0, 1])),
            Err(_) => None,
        };
        let attrs = Attrs::parse(attrs.trim());
        Some(Dest {
            uri: uri.to_string(),
            host,
            port: u.port,
            proto,
            ip,
            cfg_flags: flags,
            priority,
            latency: Latency::with_initial(attrs.latency_ms),
            attrs,
            state: AtomicU32::new(flags & STATE_MASK),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
        })
    }

    /// The port probes and relays use (the scheme default when absent).
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or(if self.proto == Proto::Tls { 5061 } else { 5060 })
    }

    pub fn state(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }

    /// Selectable: neither inactive nor disabled (trying still is).
    pub fn is_active(&self) -> bool {
        self.state() & (INACTIVE | DISABLED) == 0
    }

    /// Replaces the state bits in `clear` with those in `set`.
    pub fn update_state(&self, clear: u32, set: u32) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                Some((s & !clear) | set)
            });
    }

    /// Sets the whole state (RPC `set_state`, `ds_mark_*` with a state).
    pub fn set_state(&self, state: u32) {
        self.state.store(state & STATE_MASK, Ordering::Release);
        self.fails.store(0, Ordering::Relaxed);
        self.oks.store(0, Ordering::Relaxed);
    }

    /// A failure (probe not answered or refused, or `ds_mark_dst("t")`):
    /// an active destination becomes trying, then inactive after
    /// `threshold` failures in a row; `probing` keeps it probed.
    pub fn fail(&self, threshold: u32, probing: bool) -> Transition {
        let before = self.state();
        let p = if probing { PROBING } else { 0 };
        self.oks.store(0, Ordering::Relaxed);
        if before & DISABLED != 0 {
            return Transition::None;
        }
        if before & INACTIVE != 0 {
            self.update_state(0, p);
            return Transition::None;
        }
        let n = self.fails.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if n >= threshold.max(1) {
            self.update_state(TRYING, INACTIVE | p);
            self.fails.store(0, Ordering::Relaxed);
            Transition::Down
        } else {
            self.update_state(0, TRYING | p);
            Transition::None
        }
    }

    /// A success (probe answered with an accepted code): an inactive or
    /// trying destination becomes active after `threshold` in a row;
    /// `clear_probing` (probing mode 0) stops probing it then.
    pub fn succeed(&self, threshold: u32, clear_probing: bool) -> Transition {
        let before = self.state();
        self.fails.store(0, Ordering::Relaxed);
        if before & DISABLED != 0 {
            return Transition::None;
        }
        let p = if clear_probing { PROBING } else { 0 };
        if before & (INACTIVE | TRYING) == 0 {
            self.update_state(p, 0);
            return Transition::None;
        }
        let n = self.oks.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if n >= threshold.max(1) {
            self.update_state(INACTIVE | TRYING | p, 0);
            self.oks.store(0, Ordering::Relaxed);
            if before & INACTIVE != 0 {
                return Transition::Up;
            }
        }
        Transition::None
    }

    /// `AP`, `IX`, `TP`, `DX`: Kamailio's two-letter state.
    pub fn flags_text(&self) -> String {
        let s = self.state();
        let first = if s & DISABLED != 0 {
            'D'
        } else if s & INACTIVE != 0 {
            'I'
        } else if s & TRYING != 0 {
            'T'
        } else {
            'A'
        };
        let second = if s & PROBING != 0 { 'P' } else { 'X' };
        format!("{first}{second}")
    }
}

/// What a state change did (Kamailio's `dispatcher:dst-down/up` events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Down,
    Up,
}

/// Parses a state text (`ds_mark_dst`, `dispatcher.set_state`): `a`, `i`,
/// `t`, `d`, each but `d` optionally with `p`; case-insensitive.
pub fn parse_state(text: &str) -> Option<u32> {
    let t = text.trim().to_ascii_lowercase();
    let mut chars = t.chars();
    let base = match chars.next()? {
        'a' => 0,
        'i' => INACTIVE,
        't' => TRYING,
        'd' => DISABLED,
        _ => return None,
    };
    match chars.as_str() {
        "" => Some(base),
        "p" if base != DISABLED => Some(base | PROBING),
        _ => None,
    }
}

/// One destination set (group).
#[derive(Debug)]
pub struct DsSet {
    pub id: i32,
    /// Ordered by priority, highest first; ties in reverse load order, as
    /// Kamailio.
    pub dests: Vec<Dest>,
    /// Round-robin position (alg 4, 13) shared by every shard.
    pub(crate) rr: AtomicU32,
    /// Position in the 100-slot weight cycle (alg 9, 11).
    pub(crate) wslot: AtomicU32,
    /// Weight slots: destination index of each of the 100 (alg 9).
    pub(crate) wlist: Vec<u16>,
}

impl DsSet {
    fn new(id: i32, mut dests: Vec<Dest>) -> DsSet {
        // Kamailio 5.6 keeps destinations of equal priority in the reverse
        // of their load order (checked: `1 a`, `1 b`, `1 c` select c, b, a).
        dests.reverse();
        dests.sort_by_key(|d| std::cmp::Reverse(d.priority));
        let wlist = weight_slots(&dests);
        DsSet {
            id,
            dests,
            rr: AtomicU32::new(0),
            wslot: AtomicU32::new(0),
            wlist,
        }
    }

    /// Index of the destination with this URI (exact text, then case-insensitive).
    pub fn find(&self, uri: &str) -> Option<usize> {
        let uri = uri.trim();
        self.dests.iter().position(|d| d.uri == uri).or_else(|| {
            self.dests
                .iter()
                .position(|d| d.uri.eq_ignore_ascii_case(uri))
        })
    }
}

/// Kamailio's weight rule: each weight (1..=100) takes its share of 100
/// slots; a destination that would pass 100 in total is left out; when the
/// total is under 100 the last weighted destination fills the rest. The
/// slots are spread (a fixed shuffle) so consecutive calls alternate.
fn weight_slots(dests: &[Dest]) -> Vec<u16> {
    let mut slots: Vec<u16> = Vec::with_capacity(100);
    let mut last = None;
    for (i, d) in dests.iter().enumerate() {
        let w = d.attrs.weight as usize;
        if w == 0 || slots.len() + w > 100 {
            continue;
        }
        let i = u16::try_from(i).unwrap_or(u16::MAX);
        slots.extend(std::iter::repeat_n(i, w));
        last = Some(i);
    }
    let Some(last) = last else {
        return Vec::new();
    };
    while slots.len() < 100 {
        slots.push(last);
    }
    spread(&mut slots);
    slots
}

/// A fixed permutation (xorshift-driven Fisher-Yates, constant seed): the
/// same distribution as Kamailio's random shuffle, reproducible in tests.
pub(crate) fn spread<T>(v: &mut [T]) {
    let mut x: u32 = 0x9e37_79b9;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let j = (x as usize) % (i + 1);
        v.swap(i, j);
    }
}

/// Bounds of a list (config `max_sets`, `max_destinations`).
#[derive(Clone, Copy, Debug)]
pub struct ListLimits {
    pub max_sets: usize,
    pub max_destinations: usize,
}

/// One row, as the list file or the `dispatcher` table gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsRow {
    pub setid: i64,
    pub destination: String,
    pub flags: i64,
    pub priority: i64,
    pub attrs: String,
}

/// Why a row was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line of the list file, or row number.
    pub line: usize,
    pub why: &'static str,
}

/// Every set, ordered by id; replaced whole on reload.
#[derive(Debug, Default)]
pub struct DsList {
    pub sets: Vec<DsSet>,
}

impl DsList {
    /// Parses a `dispatcher.list` file's text into rows (bad lines skipped).
    pub fn parse_file(text: &str) -> (Vec<DsRow>, Vec<Skipped>) {
        let mut rows = Vec::new();
        let mut skipped = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(set), Some(dst)) = (it.next(), it.next()) else {
                skipped.push(Skipped {
                    line: i + 1,
                    why: "needs a set id and a destination",
                });
                continue;
            };
            let Some(setid) = parse_int(set) else {
                skipped.push(Skipped {
                    line: i + 1,
                    why: "bad set id",
                });
                continue;
            };
            let flags = match it.next().map(parse_int) {
                None => 0,
                Some(Some(f)) => f,
                Some(None) => {
                    skipped.push(Skipped {
                        line: i + 1,
                        why: "bad flags",
                    });
                    continue;
                }
            };
            let priority = match it.next().map(parse_int) {
                None => 0,
                Some(Some(p)) => p,
                Some(None) => {
                    skipped.push(Skipped {
                        line: i + 1,
                        why: "bad priority",
                    });
                    continue;
                }
            };
            // attrs may not contain blanks; a trailing description is ignored.
            let attrs = it.next().unwrap_or("").to_string();
            rows.push(DsRow {
                setid,
                destination: dst.to_string(),
                flags,
                priority,
                attrs,
            });
        }
        (rows, skipped)
    }

    /// Builds the list from rows; bad rows and those beyond the limits are
    /// skipped and reported.
    pub fn from_rows(rows: &[DsRow], limits: ListLimits) -> (DsList, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let mut groups: Vec<(i32, Vec<Dest>)> = Vec::new();
        let mut total = 0usize;
        for (i, r) in rows.iter().enumerate() {
            let line = i + 1;
            let (Ok(setid), Ok(flags), Ok(priority)) = (
                i32::try_from(r.setid),
                u32::try_from(r.flags),
                i32::try_from(r.priority),
            ) else {
                skipped.push(Skipped {
                    line,
                    why: "number out of range",
                });
                continue;
            };
            if total >= limits.max_destinations {
                skipped.push(Skipped {
                    line,
                    why: "more destinations than max_destinations",
                });
                continue;
            }
            let Some(d) = Dest::new(&r.destination, flags, priority, &r.attrs) else {
                skipped.push(Skipped {
                    line,
                    why: "bad SIP URI",
                });
                continue;
            };
            let ngroups = groups.len();
            match groups.iter_mut().find(|(id, _)| *id == setid) {
                Some((_, v)) => v.push(d),
                None if ngroups < limits.max_sets => groups.push((setid, vec![d])),
                None => {
                    skipped.push(Skipped {
                        line,
                        why: "more sets than max_sets",
                    });
                    continue;
                }
            }
            total += 1;
        }
        let mut sets: Vec<DsSet> = groups
            .into_iter()
            .map(|(id, dests)| DsSet::new(id, dests))
            .collect();
        sets.sort_by_key(|s| s.id);
        (DsList { sets }, skipped)
    }

    pub fn set(&self, id: i32) -> Option<&DsSet> {
        self.sets
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.sets.get(i))
    }

    pub fn len(&self) -> usize {
        self.sets.iter().map(|s| s.dests.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Carries the runtime state of destinations present in both lists
    /// (same set and URI) over to this new list: a reload does not bring a
    /// destination found dead back to active.
    pub fn keep_state_of(&self, old: &DsList) {
        for set in &self.sets {
            let Some(o) = old.set(set.id) else { continue };
            for d in &set.dests {
                if let Some(od) = o.dests.iter().find(|x| x.uri == d.uri) {
                    // Configured flags win where set; otherwise keep the
                    // state the old list reached.
                    if d.cfg_flags & STATE_MASK == od.cfg_flags & STATE_MASK {
                        d.state.store(od.state(), Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Decimal or `0x` hex (list file flags); negative decimals allowed.
fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ListLimits = ListLimits {
        max_sets: 8,
        max_destinations: 16,
    };

    #[test]
    fn parses_kamailio_list_lines() {
        let text = "# comment\n\
            1 sip:127.0.0.1:5080 0 0 duid=abc;socket=udp:127.0.0.1:5060;my=xyz;ping_from=sip:myproxy.com\n\
            1 sip:127.0.0.1:5090 0x8 0 socket=udp:127.0.0.1:5060;prefix=49\n\
            \n\
            2 sip:[2001:db8::1]:5060;transport=tcp 0 10 weight=50 description\n\
            2 sip:gw.example.com\n\
            x sip:bad\n\
            3\n\
            4 sip:10.0.0.1 zz\n";
        let (rows, skipped) = DsList::parse_file(text);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        assert_eq!(rows[1].flags, 8);
        assert_eq!(rows[2].priority, 10);
        assert_eq!(rows[2].attrs, "weight=50");
        let (list, skipped) = DsList::from_rows(&rows, LIMITS);
        assert!(skipped.is_empty());
        assert_eq!(list.sets.len(), 2);
        let s1 = list.set(1).unwrap();
        // Equal priorities: the reverse of the file order, as Kamailio.
        assert_eq!(s1.dests[1].attrs.duid, "abc");
        assert_eq!(s1.dests[1].attrs.ping_from, "sip:myproxy.com");
        assert_eq!(s1.dests[0].flags_text(), "AP");
        let s2 = list.set(2).unwrap();
        assert_eq!(s2.dests[0].proto, Proto::Tcp, "priority 10 first");
        assert_eq!(s2.dests[0].ip, "2001:db8::1".parse().ok());
        assert_eq!(s2.dests[1].ip, None, "a name is not resolved");
        assert!(list.set(3).is_none());
    }

    #[test]
    fn limits_and_bad_rows_are_reported() {
        let rows: Vec<DsRow> = (0..20)
            .map(|i| DsRow {
                setid: i % 10,
                destination: format!("sip:10.0.0.{i}"),
                flags: 0,
                priority: 0,
                attrs: String::new(),
            })
            .chain(std::iter::once(DsRow {
                setid: 1,
                destination: "tel:123".into(),
                flags: 0,
                priority: 0,
                attrs: String::new(),
            }))
            .collect();
        let (list, skipped) = DsList::from_rows(&rows, LIMITS);
        assert_eq!(list.sets.len(), 8, "max_sets");
        assert!(list.len() <= 16);
        assert!(skipped.iter().any(|s| s.why.contains("max_sets")));
        assert!(skipped.iter().any(|s| s.why.contains("max_destinations")));
    }

    #[test]
    fn weights_follow_kamailio_rules() {
        let mk = |w: &[&str]| {
            // Listed in reverse: the set holds them in the order of `w`.
            let rows: Vec<DsRow> = w
                .iter()
                .rev()
                .enumerate()
                .map(|(i, a)| DsRow {
                    setid: 1,
                    destination: format!("sip:10.0.0.{i}"),
                    flags: 0,
                    priority: 0,
                    attrs: a.to_string(),
                })
                .collect();
            DsList::from_rows(&rows, LIMITS).0
        };
        let count = |l: &DsList, i: u16| l.sets[0].wlist.iter().filter(|&&x| x == i).count();
        let l = mk(&["weight=25", "weight=75"]);
        assert_eq!((count(&l, 0), count(&l, 1)), (25, 75));
        // Over 100: the one that passes it is ignored; under: last fills.
        let l = mk(&["weight=60", "weight=50", "weight=20"]);
        assert_eq!((count(&l, 0), count(&l, 1), count(&l, 2)), (60, 0, 40));
        let l = mk(&["weight=0", "weight=101", "rweight=5"]);
        assert!(l.sets[0].wlist.is_empty());
        // Spread: not 25 in a row.
        let l = mk(&["weight=25", "weight=75"]);
        assert!(l.sets[0].wlist[..25].contains(&1));
    }

    #[test]
    fn state_machine_follows_thresholds() {
        let d = Dest::new("sip:10.0.0.1", 0, 0, "").unwrap();
        assert_eq!(d.fail(3, true), Transition::None);
        assert_eq!(d.flags_text(), "TP");
        assert!(d.is_active(), "trying is still selectable");
        assert_eq!(d.fail(3, true), Transition::None);
        assert_eq!(d.fail(3, true), Transition::Down);
        assert_eq!(d.flags_text(), "IP");
        assert!(!d.is_active());
        assert_eq!(d.succeed(2, false), Transition::None);
        assert_eq!(d.flags_text(), "IP");
        assert_eq!(
            d.fail(2, true),
            Transition::None,
            "a failure resets the count"
        );
        assert_eq!(d.succeed(2, false), Transition::None);
        assert_eq!(d.succeed(2, false), Transition::Up);
        assert_eq!(d.flags_text(), "AP");
        // Mode 0: probing cleared once it is back.
        let d = Dest::new("sip:10.0.0.1", INACTIVE | PROBING, 0, "").unwrap();
        assert_eq!(d.succeed(1, true), Transition::Up);
        assert_eq!(d.flags_text(), "AX");
        // Disabled never changes by probing.
        let d = Dest::new("sip:10.0.0.1", DISABLED, 0, "").unwrap();
        assert_eq!(d.fail(1, true), Transition::None);
        assert_eq!(d.succeed(1, true), Transition::None);
        assert_eq!(d.flags_text(), "DX");
    }

    #[test]
    fn state_texts() {
        assert_eq!(parse_state("ip"), Some(INACTIVE | PROBING));
        assert_eq!(parse_state("A"), Some(0));
        assert_eq!(parse_state("tp"), Some(TRYING | PROBING));
        assert_eq!(parse_state("d"), Some(DISABLED));
        assert_eq!(parse_state("dp"), None);
        assert_eq!(parse_state("x"), None);
        assert_eq!(parse_state(""), None);
    }

    #[test]
    fn reload_keeps_runtime_state() {
        let (rows, _) = DsList::parse_file("1 sip:10.0.0.1\n1 sip:10.0.0.2\n");
        let (old, _) = DsList::from_rows(&rows, LIMITS);
        old.sets[0].dests[0].set_state(INACTIVE | PROBING);
        let (new, _) = DsList::from_rows(&rows, LIMITS);
        new.keep_state_of(&old);
        assert_eq!(new.sets[0].dests[0].flags_text(), "IP");
        assert_eq!(new.sets[0].dests[1].flags_text(), "AX");
    }

    #[test]
    fn latency_estimates() {
        let l = Latency::default();
        l.record(10.0, 0.1);
        l.record(20.0, 0.1);
        let v = l.view();
        assert_eq!(v.count, 2);
        assert!((v.avg - 15.0).abs() < 1e-9);
        assert!((v.est - 11.0).abs() < 1e-9);
        assert_eq!(v.max_ms, 20);
    }
}
