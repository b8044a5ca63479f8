//! Keepalive probing (`ds_ping_interval`): which destinations get an
//! OPTIONS each round, their retransmissions over UDP (RFC 3261 timer E:
//! T1 doubling up to T2), the timeout, and what a reply or a timeout does
//! to the destination's state. Sans-IO: time comes in as milliseconds, the
//! requests to send are drained with [`Prober::poll_transmit`], and
//! [`Prober::poll_timeout`] says when to call [`Prober::handle_timeout`].

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::list::{Dest, DsList, Transition, DISABLED, INACTIVE, NO_PING, PROBING};

/// `ds_ping_reply_codes`: 200 always, plus `code=N` and `class=N` entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyCodes {
    codes: Vec<u16>,
    classes: Vec<u16>,
}

impl ReplyCodes {
    /// `class=2;code=403;code=488;class=3`; `None` for a bad entry.
    pub fn parse(text: &str) -> Option<ReplyCodes> {
        let mut r = ReplyCodes::default();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=')?;
            let v: u16 = v.trim().parse().ok()?;
            match k.trim() {
                "code" if (100..700).contains(&v) => r.codes.push(v),
                "class" if (1..7).contains(&v) => r.classes.push(v),
                _ => return None,
            }
        }
        Some(r)
    }

    pub fn accepts(&self, code: u16) -> bool {
        code == 200 || self.codes.contains(&code) || self.classes.contains(&(code / 100))
    }
}

/// Probing parameters (the `[dispatcher]` keys of the same names).
#[derive(Clone, Debug)]
pub struct ProbeParams {
    /// `ds_ping_interval` in ms; 0: no probing.
    pub interval_ms: u64,
    /// No final reply within this: the probe failed (Kamailio's 408).
    pub timeout_ms: u64,
    pub t1_ms: u64,
    pub t2_ms: u64,
    /// `ds_probing_mode` 0..=3.
    pub mode: u8,
    pub probing_threshold: u32,
    pub inactive_threshold: u32,
    pub reply_codes: ReplyCodes,
    /// `ds_ping_latency_stats`.
    pub latency_stats: bool,
    /// `ds_latency_estimator_alpha` / 1000.
    pub alpha: f64,
    /// `ds_ping_from`.
    pub from: String,
    /// Most probes in flight (the rest wait for the next round; counted).
    pub max_pending: usize,
}

/// One OPTIONS to send (again, for a retransmission: same id, same bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ping {
    pub id: u64,
    pub setid: i32,
    pub uri: String,
    pub dst: SocketAddr,
    pub from: String,
}

/// A destination's state changed because of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    pub setid: i32,
    pub uri: String,
    pub transition: Transition,
}

#[derive(Debug)]
struct Pending {
    ping: Ping,
    sent_ms: u64,
    deadline_ms: u64,
    /// Next retransmission; `None` once a provisional reply came.
    retx_at_ms: Option<u64>,
    retx_ms: u64,
}

/// The probing state machine, one for the whole server.
#[derive(Debug)]
pub struct Prober {
    p: ProbeParams,
    next_round_ms: Option<u64>,
    pending: Vec<Pending>,
    transmit: VecDeque<Ping>,
    next_id: u64,
    /// `dispatcher.ping_active`.
    pub active: bool,
    /// Probes not sent because `max_pending` were in flight.
    pub skipped: u64,
    /// Probes sent (first transmissions), answered, timed out.
    pub sent: u64,
    pub answered: u64,
    pub timeouts: u64,
}

impl Prober {
    pub fn new(p: ProbeParams, now_ms: u64) -> Prober {
        let next_round_ms = (p.interval_ms > 0).then_some(now_ms);
        Prober {
            p,
            next_round_ms,
            pending: Vec::new(),
            transmit: VecDeque::new(),
            next_id: 1,
            active: true,
            skipped: 0,
            sent: 0,
            answered: 0,
            timeouts: 0,
        }
    }

    pub fn params(&self) -> &ProbeParams {
        &self.p
    }

    /// Whether `d` is probed in this mode.
    fn wants(&self, d: &Dest) -> bool {
        let s = d.state();
        if s & DISABLED != 0 || d.cfg_flags & NO_PING != 0 {
            return false;
        }
        match self.p.mode {
            1 => true,
            2 => s & INACTIVE != 0 && s & PROBING != 0,
            _ => s & PROBING != 0,
        }
    }

    /// Starts a round when due, retransmits, and fails probes past their
    /// timeout; returns the state changes.
    pub fn handle_timeout(&mut self, now_ms: u64, list: &DsList) -> Vec<ProbeEvent> {
        let mut events = Vec::new();
        // Timeouts and retransmissions.
        let mut i = 0;
        while i < self.pending.len() {
            let Some(pend) = self.pending.get_mut(i) else {
                break;
            };
            if now_ms >= pend.deadline_ms {
                let pend = self.pending.swap_remove(i);
                self.timeouts += 1;
                if let Some(d) = find(list, pend.ping.setid, &pend.ping.uri) {
                    d.latency.timeout();
                    if let Some(e) = self.result(d, false, &pend.ping) {
                        events.push(e);
                    }
                }
                continue;
            }
            if let Some(at) = pend.retx_at_ms {
                if now_ms >= at {
                    pend.retx_ms = (pend.retx_ms * 2).min(self.p.t2_ms.max(1));
                    pend.retx_at_ms = Some(now_ms + pend.retx_ms);
                    self.transmit.push_back(pend.ping.clone());
                }
            }
            i += 1;
        }
        // A new round.
        if let Some(at) = self.next_round_ms {
            if now_ms >= at {
                self.next_round_ms = Some(now_ms + self.p.interval_ms.max(1));
                if self.active {
                    self.round(now_ms, list);
                }
            }
        }
        events
    }

    fn round(&mut self, now_ms: u64, list: &DsList) {
        for set in &list.sets {
            for d in &set.dests {
                if !self.wants(d) {
                    continue;
                }
                let Some(ip) = d.ip else {
                    continue; // a host name: no DNS here
                };
                if self
                    .pending
                    .iter()
                    .any(|p| p.ping.setid == set.id && p.ping.uri == d.uri)
                {
                    continue; // the last one is still out
                }
                if self.pending.len() >= self.p.max_pending {
                    self.skipped += 1;
                    continue;
                }
                if self.p.mode == 1 {
                    d.update_state(0, PROBING); // shown as probed (`AP`)
                }
                let from = if d.attrs.ping_from.is_empty() {
                    self.p.from.clone()
                } else {
                    d.attrs.ping_from.clone()
                };
                let ping = Ping {
                    id: self.next_id,
                    setid: set.id,
                    uri: d.uri.clone(),
                    dst: SocketAddr::new(ip, d.port_or_default()),
                    from,
                };
                self.next_id += 1;
                self.sent += 1;
                let t1 = self.p.t1_ms.max(1);
                self.pending.push(Pending {
                    ping: ping.clone(),
                    sent_ms: now_ms,
                    deadline_ms: now_ms + self.p.timeout_ms.max(1),
                    retx_at_ms: Some(now_ms + t1),
                    retx_ms: t1,
                });
                self.transmit.push_back(ping);
            }
        }
    }

    /// A reply to probe `id`; `None` when it is not (or no longer) pending
    /// or changed nothing.
    pub fn handle_reply(
        &mut self,
        id: u64,
        code: u16,
        now_ms: u64,
        list: &DsList,
    ) -> Option<ProbeEvent> {
        let i = self.pending.iter().position(|p| p.ping.id == id)?;
        if code < 200 {
            if let Some(p) = self.pending.get_mut(i) {
                p.retx_at_ms = None; // timer E stops at a provisional reply
            }
            return None;
        }
        let pend = self.pending.swap_remove(i);
        self.answered += 1;
        let d = find(list, pend.ping.setid, &pend.ping.uri)?;
        let ok = self.p.reply_codes.accepts(code);
        if ok && self.p.latency_stats {
            let rtt = now_ms.saturating_sub(pend.sent_ms) as f64;
            d.latency.record(rtt, self.p.alpha);
        }
        self.result(d, ok, &pend.ping)
    }

    fn result(&self, d: &Dest, ok: bool, ping: &Ping) -> Option<ProbeEvent> {
        let t = if ok {
            // Mode 0 probes a destination until it answers (then stops);
            // mode 3 keeps the probing flag whatever happens.
            d.succeed(self.p.inactive_threshold, self.p.mode == 0)
        } else {
            d.fail(self.p.probing_threshold, true)
        };
        (t != Transition::None).then(|| ProbeEvent {
            setid: ping.setid,
            uri: ping.uri.clone(),
            transition: t,
        })
    }

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<Ping> {
        self.transmit.pop_front()
    }

    /// When [`Prober::handle_timeout`] has work next (ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        let pend = self
            .pending
            .iter()
            .map(|p| p.retx_at_ms.unwrap_or(p.deadline_ms).min(p.deadline_ms))
            .min();
        match (pend, self.next_round_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

fn find<'a>(list: &'a DsList, setid: i32, uri: &str) -> Option<&'a Dest> {
    list.set(setid)?.dests.iter().find(|d| d.uri == uri)
}

#[cfg(test)]
mod tests {
    use super::super::list::ListLimits;
    use super::*;

    fn params(mode: u8, pt: u32, it: u32) -> ProbeParams {
        ProbeParams {
            interval_ms: 1000,
            timeout_ms: 4000,
            t1_ms: 500,
            t2_ms: 4000,
            mode,
            probing_threshold: pt,
            inactive_threshold: it,
            reply_codes: ReplyCodes::parse("code=404").unwrap(),
            latency_stats: true,
            alpha: 0.1,
            from: "sip:dispatcher@localhost".into(),
            max_pending: 16,
        }
    }

    fn list(text: &str) -> DsList {
        let (rows, _) = DsList::parse_file(text);
        DsList::from_rows(
            &rows,
            ListLimits {
                max_sets: 4,
                max_destinations: 16,
            },
        )
        .0
    }

    fn drain(p: &mut Prober) -> Vec<Ping> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    #[test]
    fn reply_codes() {
        let r = ReplyCodes::parse("class=2;code=403;code=488;class=3").unwrap();
        assert!(r.accepts(200) && r.accepts(202) && r.accepts(302) && r.accepts(403));
        assert!(!r.accepts(404) && !r.accepts(503));
        assert!(ReplyCodes::default().accepts(200));
        assert!(!ReplyCodes::default().accepts(202));
        assert!(ReplyCodes::parse("code=abc").is_none());
        assert!(ReplyCodes::parse("klass=2").is_none());
    }

    #[test]
    fn mode1_probes_all_and_marks_down_then_up() {
        let l = list("1 sip:127.0.0.1:5080\n1 sip:127.0.0.1:5090 32\n2 sip:gw.example.com\n");
        let mut p = Prober::new(params(1, 2, 1), 0);
        assert_eq!(p.poll_timeout(), Some(0));
        assert!(p.handle_timeout(0, &l).is_empty());
        let sent = drain(&mut p);
        assert_eq!(sent.len(), 1, "no-ping flag and a host name are skipped");
        assert_eq!(sent[0].dst, "127.0.0.1:5080".parse().unwrap());
        // Retransmissions: T1, 2 T1, ... until the 4 s timeout.
        assert_eq!(p.poll_timeout(), Some(500));
        p.handle_timeout(500, &l);
        assert_eq!(drain(&mut p), sent, "same request again");
        assert_eq!(p.poll_timeout(), Some(1000));
        p.handle_timeout(1000, &l); // round 2: the probe is still out
        assert_eq!(drain(&mut p).len(), 0);
        p.handle_timeout(1500, &l);
        assert_eq!(drain(&mut p).len(), 1, "retransmission at 1.5 s");
        // Timeout: first failure makes it trying (threshold 2).
        assert!(p.handle_timeout(4000, &l).is_empty());
        let d = &l.sets[0].dests[l.sets[0].find("sip:127.0.0.1:5080").unwrap()];
        assert_eq!(d.flags_text(), "TP");
        assert_eq!(d.latency.view().timeouts, 1);
        // Next round: a 503 is a second failure: down.
        p.handle_timeout(4000, &l);
        let id = drain(&mut p)[0].id;
        let e = p.handle_reply(id, 503, 4010, &l).unwrap();
        assert_eq!(e.transition, Transition::Down);
        assert_eq!(d.flags_text(), "IP");
        // An accepted code (404 configured) brings it back.
        p.handle_timeout(5000, &l);
        let id = drain(&mut p)[0].id;
        assert!(p.handle_reply(id, 100, 5001, &l).is_none());
        assert_eq!(
            p.poll_timeout(),
            Some(6000),
            "no retransmission after a 1xx"
        );
        let e = p.handle_reply(id, 404, 5020, &l).unwrap();
        assert_eq!(e.transition, Transition::Up);
        assert_eq!(d.flags_text(), "AP");
        assert_eq!(d.latency.view().max_ms, 20);
        assert!(p.handle_reply(id, 200, 5030, &l).is_none(), "answered once");
    }

    #[test]
    fn mode0_probes_flagged_until_they_answer() {
        let l = list("1 sip:127.0.0.1:5080 8\n1 sip:127.0.0.1:5090\n");
        let mut p = Prober::new(params(0, 1, 1), 0);
        p.handle_timeout(0, &l);
        let sent = drain(&mut p);
        assert_eq!(sent.len(), 1);
        p.handle_reply(sent[0].id, 200, 5, &l);
        assert_eq!(
            l.sets[0].dests[0].flags_text(),
            "AX",
            "probed once, cleared"
        );
        p.handle_timeout(1000, &l);
        assert!(drain(&mut p).is_empty());
        // ds_mark_dst("ip") sets it probing again: probed until it answers.
        l.sets[0].dests[1].set_state(INACTIVE | PROBING);
        p.handle_timeout(2000, &l);
        let id = drain(&mut p)[0].id;
        p.handle_reply(id, 408, 2001, &l);
        assert_eq!(l.sets[0].dests[1].flags_text(), "IP");
        p.handle_timeout(3000, &l);
        let id = drain(&mut p)[0].id;
        let e = p.handle_reply(id, 200, 3001, &l).unwrap();
        assert_eq!(e.transition, Transition::Up);
        assert_eq!(l.sets[0].dests[1].flags_text(), "AX");
    }

    #[test]
    fn mode2_only_inactive_probing_and_ping_active_switch() {
        let l = list("1 sip:127.0.0.1:5080 9\n1 sip:127.0.0.1:5090 8\n");
        let mut p = Prober::new(params(2, 1, 1), 0);
        p.handle_timeout(0, &l);
        assert_eq!(drain(&mut p).len(), 1);
        p.active = false;
        p.handle_timeout(5000, &l); // the probe times out, no new round
        p.handle_timeout(6000, &l);
        assert!(drain(&mut p).iter().all(|x| x.id == 1));
        assert_eq!((p.sent, p.pending()), (1, 0));
    }

    #[test]
    fn pending_probes_are_bounded() {
        let text: String = (0..10)
            .map(|i| format!("1 sip:127.0.0.1:{}\n", 5000 + i))
            .collect();
        let l = list(&text);
        let mut pp = params(1, 1, 1);
        pp.max_pending = 4;
        let mut p = Prober::new(pp, 0);
        p.handle_timeout(0, &l);
        assert_eq!(drain(&mut p).len(), 4);
        assert_eq!(p.skipped, 6);
        assert_eq!(p.pending(), 4);
    }
}
