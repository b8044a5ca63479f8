//! `sipshard bench call`: calls as a UAC, open loop: INVITE, (100/180),
//! 200, ACK, `--pause-ms`, BYE, 200.
//!
//! Same shape as [`super::register`]: worker threads, each with its sockets
//! and a fixed table of calls in flight. The INVITE is an INVITE client
//! transaction (RFC 3261 §17.1.1): over UDP retransmitted at Timer A (T1,
//! doubling) until a provisional reply, abandoned at Timer B
//! (`--timeout-ms`, default 64*T1). The BYE is a non-INVITE transaction
//! (Timer E/F). ACK and BYE follow the dialog: Request-URI from the 200's
//! Contact, Route from its Record-Route (reversed), To with its tag.
//!
//! Latency is call setup: INVITE sent -> 200, raw and corrected for
//! coordinated omission.
//!
//! Never: point it at anything but a server you run.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use super::register::{
    check_open_loop, client_sockets, corrected, new_hist, scheduled, thread_cpu_ns, watch, Latency,
    Live, Percentiles, HIST_MAX_NS,
};
use crate::sip::{self, Contact, HdrName, Limits, Parsed, SipMsg};

const MAX_CALLS: u64 = 1_000_000_000;
/// Longest dialog state (To, Contact, Route set) kept per call.
const DIALOG_BYTES_MAX: usize = 4096;

#[derive(clap::Args, Clone, Debug)]
pub struct CallArgs {
    /// Server (proxy) address; every request goes there.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    /// Request-URI of the INVITEs (e.g. `sip:uas@127.0.0.1:5060`).
    #[arg(long)]
    pub ruri: String,
    /// From URI. A domain that is not the server's keeps the default script
    /// from challenging the INVITE.
    #[arg(long, default_value = "sip:bench@bench.invalid")]
    pub from: String,
    /// Offered load, calls started per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds of linear ramp from 0 to `--rate`.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_s: f64,
    /// Calls to start (default: as many as `--duration` takes).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds of starting calls (when `--count` is not given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Milliseconds between ACK and BYE.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// Most calls in flight (all workers together).
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: usize,
    #[arg(long, default_value_t = 8)]
    pub sockets: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// RFC 3261 T1 in milliseconds (Timer A/E start at T1).
    #[arg(long, default_value_t = 500)]
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds (cap of Timer E).
    #[arg(long, default_value_t = 4000)]
    pub t2_ms: u64,
    /// Per-transaction timeout (Timer B/F) in milliseconds; default 64*T1.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub no_retransmit: bool,
    #[arg(long)]
    pub json: bool,
    /// HdrHistogram interval log (tags `call` and `call_corrected`, ns).
    #[arg(long)]
    pub hlog: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallReport {
    pub scenario: &'static str,
    pub offered_rate: u64,
    pub elapsed_s: f64,
    pub calls: u64,
    /// Calls set up (200 to the INVITE).
    pub setup_ok: u64,
    /// Calls that ended with 200 to the BYE.
    pub ok: u64,
    pub failed: u64,
    /// Call setup failures: no final reply to the INVITE in time...
    pub failed_setup_timeout: u64,
    /// ...or a final reply other than 2xx.
    pub failed_setup_status: u64,
    /// BYE not answered 2xx in time.
    pub failed_bye: u64,
    pub requests_sent: u64,
    pub retransmissions: u64,
    pub replies: u64,
    pub stray_replies: u64,
    pub inflight_full: u64,
    pub send_errors: u64,
    pub achieved_rate: f64,
    /// Call setup latency (INVITE -> 200).
    pub latency_us: Latency,
    pub generator_cpu_s: f64,
}

#[derive(Default)]
struct Counters {
    started: u64,
    setup_ok: u64,
    ok: u64,
    failed_setup_timeout: u64,
    failed_setup_status: u64,
    failed_bye: u64,
    requests_sent: u64,
    retransmissions: u64,
    replies: u64,
    stray_replies: u64,
    inflight_full: u64,
    send_errors: u64,
}

pub fn run(args: CallArgs) -> Result<(), String> {
    let r = drive(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&r));
    }
    Ok(())
}

/// The final table of a call run.
pub fn table(r: &CallReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "call: offered {}/s, {:.1}s: started {}, set up {}, completed {} ({:.0}/s), failed {} (setup timeout {}, setup status {}, bye {})",
        r.offered_rate, r.elapsed_s, r.calls, r.setup_ok, r.ok, r.achieved_rate, r.failed,
        r.failed_setup_timeout, r.failed_setup_status, r.failed_bye
    );
    let _ = writeln!(
        s,
        "requests sent {}, retransmissions {}, replies {}, stray {}, inflight full {}, send errors {}",
        r.requests_sent, r.retransmissions, r.replies, r.stray_replies, r.inflight_full, r.send_errors
    );
    r.latency_us.write_table(&mut s, "setup latency us");
    let _ = writeln!(s, "generator cpu {:.3}s", r.generator_cpu_s);
    s
}

pub fn drive(args: &CallArgs) -> Result<CallReport, String> {
    check_open_loop(
        args.rate,
        args.sockets,
        args.max_inflight,
        args.t1_ms,
        args.ramp_s,
        args.duration,
    )?;
    if args.ruri.contains(['\r', '\n', ' ']) || args.from.contains(['\r', '\n', ' ']) {
        return Err("--ruri and --from must be single URIs".into());
    }
    let total = match args.count {
        Some(n) => n,
        None => scheduled(args.rate as f64, args.ramp_s, args.duration).ceil() as u64,
    };
    if total == 0 || total > MAX_CALLS {
        return Err(format!("calls: 1..={MAX_CALLS}, not {total}"));
    }
    let threads = args.threads.clamp(1, args.sockets);
    let groups = client_sockets(args.target, args.sockets, threads)?;
    let cfg = Arc::new(Cfg {
        rate: args.rate as f64,
        ramp_s: args.ramp_s,
        total,
        stride: threads as u64,
        slots: args.max_inflight.div_ceil(threads),
        t1_ns: args.t1_ms * 1_000_000,
        t2_ns: args.t2_ms.max(args.t1_ms) * 1_000_000,
        timeout_ns: args.timeout_ms.unwrap_or(64 * args.t1_ms) * 1_000_000,
        pause_ns: args.pause_ms * 1_000_000,
        retransmit: !args.no_retransmit,
        expected_interval_ns: (threads as f64 * 1e9 / args.rate as f64).max(1.0) as u64,
        run_id: std::process::id(),
        ruri: args.ruri.clone(),
        from: args.from.clone(),
    });
    let live = Arc::new(Live::default());
    let main_cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let mut workers = Vec::new();
    for (w, socks) in groups.into_iter().enumerate() {
        let cfg = cfg.clone();
        let live = live.clone();
        workers.push(std::thread::spawn(move || {
            Worker::new(w as u32, socks, &cfg, &live, t0).run()
        }));
    }
    let progress = std::io::stderr().is_terminal() && !args.json;
    watch(
        &live,
        t0,
        wall0,
        cfg.expected_interval_ns,
        args.hlog.as_ref(),
        "call",
        progress,
        &workers,
    )?;
    let mut raw = new_hist();
    let mut c = Counters::default();
    let mut cpu_ns = thread_cpu_ns().saturating_sub(main_cpu0);
    for w in workers {
        let out = w.join().map_err(|_| "worker thread panicked".to_string())?;
        raw.add(&out.raw).map_err(|e| e.to_string())?;
        let k = out.counters;
        c.started += k.started;
        c.setup_ok += k.setup_ok;
        c.ok += k.ok;
        c.failed_setup_timeout += k.failed_setup_timeout;
        c.failed_setup_status += k.failed_setup_status;
        c.failed_bye += k.failed_bye;
        c.requests_sent += k.requests_sent;
        c.retransmissions += k.retransmissions;
        c.replies += k.replies;
        c.stray_replies += k.stray_replies;
        c.inflight_full += k.inflight_full;
        c.send_errors += k.send_errors;
        cpu_ns += out.cpu_ns;
    }
    let elapsed = t0.elapsed();
    Ok(CallReport {
        scenario: "call",
        offered_rate: args.rate,
        elapsed_s: elapsed.as_secs_f64(),
        calls: c.started,
        setup_ok: c.setup_ok,
        ok: c.ok,
        failed: c.failed_setup_timeout + c.failed_setup_status + c.failed_bye,
        failed_setup_timeout: c.failed_setup_timeout,
        failed_setup_status: c.failed_setup_status,
        failed_bye: c.failed_bye,
        requests_sent: c.requests_sent,
        retransmissions: c.retransmissions,
        replies: c.replies,
        stray_replies: c.stray_replies,
        inflight_full: c.inflight_full,
        send_errors: c.send_errors,
        achieved_rate: c.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us: Latency {
            raw: Percentiles::of(&raw),
            corrected: Percentiles::of(&corrected(&raw, cfg.expected_interval_ns)),
        },
        generator_cpu_s: cpu_ns as f64 / 1e9,
    })
}

struct Cfg {
    rate: f64,
    ramp_s: f64,
    total: u64,
    stride: u64,
    slots: usize,
    t1_ns: u64,
    t2_ns: u64,
    timeout_ns: u64,
    pause_ns: u64,
    retransmit: bool,
    expected_interval_ns: u64,
    run_id: u32,
    ruri: String,
    from: String,
}

struct Out {
    raw: Histogram<u64>,
    counters: Counters,
    cpu_ns: u64,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum Phase {
    #[default]
    Inviting,
    Paused,
    Bye,
}

#[derive(Default)]
struct Slot {
    active: bool,
    gen: u32,
    sock: usize,
    phase: Phase,
    provisional: bool,
    started_ns: u64,
    txn_ns: u64,
    interval_ns: u64,
    deadline_ns: u64,
    /// The request to retransmit (INVITE, then ACK for 200 retransmissions, then BYE).
    msg: Vec<u8>,
    /// Dialog: remote target, To (with tag), Route lines.
    target: String,
    to: String,
    routes: String,
}

struct Worker<'a> {
    id: u32,
    socks: Vec<UdpSocket>,
    ports: Vec<u16>,
    cfg: &'a Cfg,
    live: &'a Live,
    t0: Instant,
    slots: Vec<Slot>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    raw: Histogram<u64>,
    iv_raw: Histogram<u64>,
    c: Counters,
    next_sock: usize,
}

impl<'a> Worker<'a> {
    fn new(id: u32, socks: Vec<UdpSocket>, cfg: &'a Cfg, live: &'a Live, t0: Instant) -> Self {
        let ports = socks
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect();
        Worker {
            id,
            socks,
            ports,
            cfg,
            live,
            t0,
            slots: (0..cfg.slots).map(|_| Slot::default()).collect(),
            free: (0..cfg.slots as u32).rev().collect(),
            timers: BinaryHeap::new(),
            raw: new_hist(),
            iv_raw: new_hist(),
            c: Counters::default(),
            next_sock: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn run(mut self) -> Out {
        let cpu0 = thread_cpu_ns();
        let mut next = u64::from(self.id);
        let mut blocked_at = u64::MAX;
        let mut buf = vec![0u8; 65_536];
        let mut parsed = Parsed::default();
        let limits = Limits::default();
        let mut last_flush = 0u64;
        loop {
            let now = self.now_ns();
            let mut busy = false;
            let due = (scheduled(self.cfg.rate, self.cfg.ramp_s, now as f64 / 1e9) as u64 + 1)
                .min(self.cfg.total);
            while next < due {
                let Some(slot) = self.free.pop() else {
                    if blocked_at != next {
                        blocked_at = next;
                        self.c.inflight_full += 1;
                    }
                    break;
                };
                self.start(slot, now);
                next += self.cfg.stride;
                busy = true;
            }
            for k in 0..self.socks.len() {
                while let Ok(n) = self.socks[k].recv(&mut buf) {
                    busy = true;
                    let data = buf.get(..n).unwrap_or_default();
                    self.on_datagram(data, &mut parsed, &limits);
                }
            }
            let now = self.now_ns();
            while let Some(&Reverse((at, slot, gen))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.on_timer(slot, gen, at, now);
                busy = true;
            }
            if now.saturating_sub(last_flush) >= 1_000_000_000 {
                last_flush = now;
                self.flush_interval();
            }
            if next >= self.cfg.total && self.free.len() == self.slots.len() {
                break;
            }
            if !busy {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.flush_interval();
        Out {
            cpu_ns: thread_cpu_ns().saturating_sub(cpu0),
            raw: self.raw,
            counters: self.c,
        }
    }

    fn flush_interval(&mut self) {
        if self.iv_raw.is_empty() {
            return;
        }
        if let Ok(mut g) = self.live.interval.lock() {
            let (raw, _) = g.get_or_insert_with(|| (new_hist(), new_hist()));
            let _ = raw.add(&self.iv_raw);
        }
        self.iv_raw.reset();
    }

    fn start(&mut self, slot_id: u32, now: u64) {
        let sock = self.next_sock;
        self.next_sock = (self.next_sock + 1) % self.socks.len();
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        slot.active = true;
        slot.gen = slot.gen.wrapping_add(1);
        slot.sock = sock;
        slot.phase = Phase::Inviting;
        slot.provisional = false;
        slot.started_ns = now;
        slot.target.clear();
        slot.to.clear();
        slot.routes.clear();
        self.c.started += 1;
        self.live.started.fetch_add(1, Ordering::Relaxed);
        self.build(slot_id, "INVITE", 1);
        self.send_txn(slot_id, now);
    }

    /// Builds a request of the call into the slot's buffer: the INVITE
    /// out of dialog, ACK (for a 2xx) and BYE within it.
    fn build(&mut self, slot_id: u32, method: &str, cseq: u32) {
        let (run_id, id, cfg) = (self.cfg.run_id, self.id, self.cfg);
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        let port = self.ports.get(slot.sock).copied().unwrap_or(0);
        let gen = slot.gen;
        let in_dialog = method != "INVITE";
        let ruri = if in_dialog && !slot.target.is_empty() {
            slot.target.as_str()
        } else {
            cfg.ruri.as_str()
        };
        let m = &mut slot.msg;
        m.clear();
        let _ = write!(
            m,
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{run_id}.{id}.{slot_id}.{gen}.{method}{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{from}>;tag={run_id}.{slot_id}.{gen}\r\n",
            from = cfg.from,
        );
        if in_dialog && !slot.to.is_empty() {
            let _ = write!(m, "To: {}\r\n{}", slot.to, slot.routes);
        } else {
            let _ = write!(m, "To: <{}>\r\n", cfg.ruri);
        }
        let _ = write!(
            m,
            "Call-ID: {run_id}.{id}.{slot_id}.{gen}@sipshard-bench\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:bench@127.0.0.1:{port}>\r\n\
             User-Agent: sipshard-bench\r\n\
             Content-Length: 0\r\n\r\n"
        );
    }

    fn send_now(&mut self, slot_id: u32) {
        let Some(slot) = self.slots.get(slot_id as usize) else {
            return;
        };
        let ok = self
            .socks
            .get(slot.sock)
            .is_some_and(|s| s.send(&slot.msg).is_ok());
        self.c.requests_sent += 1;
        if !ok {
            self.c.send_errors += 1;
        }
    }

    /// Sends the slot's request as a new client transaction and arms its timer.
    fn send_txn(&mut self, slot_id: u32, now: u64) {
        let cfg = self.cfg;
        if let Some(slot) = self.slots.get_mut(slot_id as usize) {
            slot.txn_ns = now;
            slot.interval_ns = cfg.t1_ns;
            slot.deadline_ns = if cfg.retransmit {
                now + cfg.t1_ns.min(cfg.timeout_ns)
            } else {
                now + cfg.timeout_ns
            };
            self.timers
                .push(Reverse((slot.deadline_ns, slot_id, slot.gen)));
        }
        self.send_now(slot_id);
    }

    fn finish(&mut self, slot_id: u32, ok: bool) {
        if let Some(slot) = self.slots.get_mut(slot_id as usize) {
            debug_assert!(slot.active);
            slot.active = false;
            self.free.push(slot_id);
        }
        if ok {
            self.c.ok += 1;
            self.live.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.live.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_timer(&mut self, slot_id: u32, gen: u32, at: u64, now: u64) {
        let cfg = self.cfg;
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        if !slot.active || slot.gen != gen || slot.deadline_ns != at {
            return;
        }
        match slot.phase {
            Phase::Paused => {
                slot.phase = Phase::Bye;
                self.build(slot_id, "BYE", 2);
                self.send_txn(slot_id, now);
                return;
            }
            Phase::Inviting | Phase::Bye => {}
        }
        if now.saturating_sub(slot.txn_ns) >= cfg.timeout_ns {
            if slot.phase == Phase::Inviting {
                self.c.failed_setup_timeout += 1;
            } else {
                self.c.failed_bye += 1;
            }
            self.finish(slot_id, false);
            return;
        }
        let end = slot.txn_ns + cfg.timeout_ns;
        // Timer A stops at the first provisional reply (only Timer B stays).
        if slot.phase == Phase::Inviting && slot.provisional {
            slot.deadline_ns = end;
        } else {
            slot.interval_ns = if slot.phase == Phase::Inviting {
                slot.interval_ns.saturating_mul(2)
            } else {
                (slot.interval_ns * 2).min(cfg.t2_ns)
            };
            slot.deadline_ns = (now + slot.interval_ns).min(end);
            self.c.retransmissions += 1;
            self.timers.push(Reverse((slot.deadline_ns, slot_id, gen)));
            self.send_now(slot_id);
            return;
        }
        self.timers.push(Reverse((slot.deadline_ns, slot_id, gen)));
    }

    fn on_datagram(&mut self, data: &[u8], parsed: &mut Parsed, limits: &Limits) {
        self.c.replies += 1;
        if sip::parse(data, sip::Framing::Datagram, limits, parsed).is_err() {
            self.c.stray_replies += 1;
            return;
        }
        let msg = SipMsg::new(data, parsed);
        let (Some(status), Some(call_id), Ok(cseq)) = (msg.status(), msg.call_id(), msg.cseq())
        else {
            self.c.stray_replies += 1;
            return;
        };
        let Some((slot_id, gen)) =
            super::register::parse_call_id(call_id, self.cfg.run_id, self.id)
        else {
            self.c.stray_replies += 1;
            return;
        };
        let now = self.now_ns();
        let cfg = self.cfg;
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            self.c.stray_replies += 1;
            return;
        };
        if !slot.active || slot.gen != gen {
            self.c.stray_replies += 1;
            return;
        }
        match (slot.phase, cseq.num) {
            (Phase::Inviting, 1) => {}
            (Phase::Paused | Phase::Bye, 1) if (200..300).contains(&status) => {
                // A retransmitted 200: the ACK was lost. ACK again (the
                // ACK is not a transaction; it is rebuilt here).
                if slot.phase == Phase::Paused {
                    self.send_now(slot_id);
                }
                self.c.stray_replies += 1;
                return;
            }
            (Phase::Bye, 2) => {
                if status < 200 {
                    slot.interval_ns = cfg.t2_ns;
                    return;
                }
                if (200..300).contains(&status) {
                    self.finish(slot_id, true);
                } else {
                    self.c.failed_bye += 1;
                    self.finish(slot_id, false);
                }
                return;
            }
            _ => {
                self.c.stray_replies += 1;
                return;
            }
        }
        if status < 200 {
            slot.provisional = true;
            return;
        }
        let to = msg.header(HdrName::To).unwrap_or_default();
        if !(200..300).contains(&status) {
            // ACK for a non-2xx final: same branch as the INVITE, hop by hop.
            let branch_msg = std::mem::take(&mut slot.msg);
            let ack = non_2xx_ack(&branch_msg, to);
            slot.msg = ack;
            self.send_now(slot_id);
            self.c.failed_setup_status += 1;
            self.finish(slot_id, false);
            return;
        }
        let latency = now.saturating_sub(slot.started_ns).clamp(1, HIST_MAX_NS);
        let _ = self.raw.record(latency);
        let _ = self.iv_raw.record(latency);
        self.c.setup_ok += 1;
        // Dialog state from the 200 (RFC 3261 §12.1.2).
        slot.to.clear();
        slot.to.push_str(&String::from_utf8_lossy(to));
        slot.target.clear();
        if let Some(Ok(Contact::Addr(na))) = msg.contacts().next() {
            slot.target.push_str(&String::from_utf8_lossy(na.uri));
        }
        slot.routes.clear();
        let rr: Vec<&[u8]> = msg.headers(HdrName::RecordRoute).collect();
        for v in rr.iter().rev() {
            slot.routes.push_str("Route: ");
            slot.routes.push_str(&String::from_utf8_lossy(v));
            slot.routes.push_str("\r\n");
        }
        if slot.to.len() + slot.target.len() + slot.routes.len() > DIALOG_BYTES_MAX
            || slot.target.contains(['\r', '\n'])
        {
            self.c.failed_setup_status += 1;
            self.finish(slot_id, false);
            return;
        }
        slot.phase = Phase::Paused;
        slot.deadline_ns = now + cfg.pause_ns;
        self.timers.push(Reverse((slot.deadline_ns, slot_id, gen)));
        self.build(slot_id, "ACK", 1);
        self.send_now(slot_id);
    }
}

/// The ACK for a non-2xx final reply to `invite` (RFC 3261 §17.1.1.3):
/// its Request-URI, top Via, From, Call-ID; the reply's To; CSeq ACK.
fn non_2xx_ack(invite: &[u8], to: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(invite);
    let mut out = Vec::with_capacity(invite.len());
    for (i, line) in text.split("\r\n").enumerate() {
        if i == 0 {
            let line = line.replacen("INVITE", "ACK", 1);
            out.extend_from_slice(line.as_bytes());
        } else if line.starts_with("To:") {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(to);
        } else if line.starts_with("CSeq:") {
            out.extend_from_slice(b"CSeq: 1 ACK");
        } else if line.starts_with("Contact:") {
            continue;
        } else if line.is_empty() {
            break;
        } else {
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_for_non_2xx_keeps_the_branch() {
        let inv = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK-x\r\nTo: <sip:a@b>\r\nCSeq: 1 INVITE\r\nContact: <sip:c@d>\r\nContent-Length: 0\r\n\r\n";
        let ack = String::from_utf8(non_2xx_ack(inv, b"<sip:a@b>;tag=9")).unwrap();
        assert!(ack.starts_with("ACK sip:a@b SIP/2.0\r\n"), "{ack}");
        assert!(ack.contains("branch=z9hG4bK-x"));
        assert!(ack.contains("To: <sip:a@b>;tag=9\r\n"));
        assert!(ack.contains("CSeq: 1 ACK\r\n"));
        assert!(!ack.contains("Contact"));
        assert!(ack.ends_with("\r\n\r\n"));
    }
}
