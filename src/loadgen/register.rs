//! `sipshard bench register`: REGISTER, 401, REGISTER with digest
//! credentials, 200, per user, open loop.
//!
//! Each worker thread owns some client sockets and a fixed table of
//! registrations in flight (`--max-inflight` split over the workers). A
//! registration starts when its slot in the open-loop schedule comes due
//! (`--rate`, linear ramp over `--ramp-s`), whatever the server does; when
//! the table is full it waits, and the wait is counted (`inflight_full`) and
//! shows in the coordinated-omission-corrected latency. Each REGISTER is a
//! non-INVITE client transaction (RFC 3261 §17.1.2): over UDP it is
//! retransmitted at Timer E (T1, doubling to T2; T2 once a provisional
//! reply came) and abandoned at Timer F (`--timeout-ms`, default 64*T1).
//! Replies are matched by Call-ID (`run.worker.slot.generation`) and CSeq.
//!
//! Latency is first REGISTER sent -> final 200, in microseconds... recorded
//! in nanoseconds in two HDR histograms: raw, and corrected with
//! `record_correct` at the expected interval between starts.
//!
//! Never: point it at anything but a server you run.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use super::stream::{BenchTransport, Client};
use super::users::{User, UserArgs};
use crate::auth::{Challenge, Login};
use crate::sip::{self, HdrName, Limits, Parsed, SipMsg};
use crate::stats::hlog::HlogWriter;
use crate::transport::sys::{Epoll, RecvBatch};

/// Most registrations one run may start.
const MAX_REGISTRATIONS: u64 = 1_000_000_000;
/// Most registrations in flight over all workers.
const MAX_INFLIGHT: usize = 1_000_000;
/// Latency histogram bounds, ns.
pub(crate) const HIST_MAX_NS: u64 = 600_000_000_000;

#[derive(clap::Args, Clone, Debug)]
pub struct RegisterArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    #[command(flatten)]
    pub users: UserArgs,
    /// Offered load, registrations started per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of linear ramp from 0 to `--rate`.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_s: f64,
    /// Registrations to start (default: as many as `--duration` takes).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds of starting registrations (when `--count` is not given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most registrations in flight (all workers together).
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: usize,
    /// Client sockets (distinct source ports).
    #[arg(long, default_value_t = 8)]
    pub sockets: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// RFC 3261 T1 in milliseconds (Timer E starts at T1).
    #[arg(long, default_value_t = 500)]
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds (cap of the retransmit interval).
    #[arg(long, default_value_t = 4000)]
    pub t2_ms: u64,
    /// Per-transaction timeout (Timer F) in milliseconds; default 64*T1.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Do not retransmit (count only timeouts).
    #[arg(long)]
    pub no_retransmit: bool,
    /// Expires of the registrations.
    #[arg(long, default_value_t = 3600)]
    pub expires: u32,
    /// Registration k goes to user `k * S mod N` (S coprime with N, near
    /// 0.618 N) instead of user `k mod N`: still every user once per N
    /// registrations, but consecutive ones land far apart in a large user
    /// table (registrar cost at N AORs, not at the first few).
    #[arg(long)]
    pub spread_users: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write an HdrHistogram interval log (one interval a second; tags
    /// `register` and `register_corrected`; values in ns).
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Transport: `udp`, or one connection per `--sockets` over `tcp` or
    /// `tls` (no retransmissions on a stream; the server's certificate is
    /// not checked).
    #[arg(long, value_enum, default_value_t = BenchTransport::Udp)]
    pub transport: BenchTransport,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub raw: Percentiles,
    pub corrected: Percentiles,
}

impl Latency {
    /// The final table's percentile rows (raw and corrected) under `title`
    /// ("latency us", "setup latency us").
    pub fn write_table(&self, s: &mut String, title: &str) {
        use std::fmt::Write as _;
        let w = title.len().max(10);
        let _ = writeln!(
            s,
            "{title:<w$}      p50       p90       p99     p99.9       max      mean"
        );
        for (name, p) in [("raw", &self.raw), ("corrected", &self.corrected)] {
            let _ = writeln!(
                s,
                "{name:<w$} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean
            );
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegisterReport {
    pub scenario: &'static str,
    pub offered_rate: u64,
    pub ramp_s: f64,
    pub users: usize,
    pub elapsed_s: f64,
    /// Registrations started.
    pub registrations: u64,
    /// Registrations that ended in 2xx.
    pub ok: u64,
    /// Registrations that did not (the three below).
    pub failed: u64,
    /// No final reply within the timeout.
    pub failed_timeout: u64,
    /// A final reply other than 2xx (and not the expected challenge).
    pub failed_status: u64,
    /// A challenge that could not be answered, or challenged again.
    pub failed_auth: u64,
    pub requests_sent: u64,
    pub retransmissions: u64,
    pub replies: u64,
    /// Replies matching no transaction in flight (late, duplicated).
    pub stray_replies: u64,
    /// Registrations that came due while `--max-inflight` were in flight.
    pub inflight_full: u64,
    pub send_errors: u64,
    pub achieved_rate: f64,
    pub latency_us: Latency,
    /// CPU time of the generator's threads (from /proc schedstat).
    pub generator_cpu_s: f64,
    pub generator_cpu_us_per_registration: f64,
}

#[derive(Default)]
struct Counters {
    started: u64,
    ok: u64,
    failed_timeout: u64,
    failed_status: u64,
    failed_auth: u64,
    requests_sent: u64,
    retransmissions: u64,
    replies: u64,
    stray_replies: u64,
    inflight_full: u64,
    send_errors: u64,
}

/// Live totals the progress thread reads.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) started: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) interval: Mutex<Option<(Histogram<u64>, Histogram<u64>)>>,
}

pub(crate) fn new_hist() -> Histogram<u64> {
    // Static bounds: this cannot fail.
    Histogram::<u64>::new_with_bounds(1, HIST_MAX_NS, 3).expect("static bounds")
}

pub fn run(args: RegisterArgs) -> Result<(), String> {
    let r = drive(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&r));
    }
    Ok(())
}

/// The final table.
pub fn table(r: &RegisterReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "register: offered {}/s (ramp {:.1}s), {} users, {:.1}s: started {}, ok {} ({:.0}/s), failed {} (timeout {}, status {}, auth {})",
        r.offered_rate, r.ramp_s, r.users, r.elapsed_s, r.registrations, r.ok, r.achieved_rate,
        r.failed, r.failed_timeout, r.failed_status, r.failed_auth
    );
    let _ = writeln!(
        s,
        "requests sent {}, retransmissions {}, replies {}, stray {}, inflight full {}, send errors {}",
        r.requests_sent, r.retransmissions, r.replies, r.stray_replies, r.inflight_full, r.send_errors
    );
    r.latency_us.write_table(&mut s, "latency us");
    let _ = writeln!(
        s,
        "generator cpu {:.3}s, {:.2} us per registration",
        r.generator_cpu_s, r.generator_cpu_us_per_registration
    );
    s
}

/// Registrations the schedule has started by `t_s` seconds (fractional).
pub(crate) fn scheduled(rate: f64, ramp_s: f64, t_s: f64) -> f64 {
    if ramp_s <= 0.0 {
        rate * t_s
    } else if t_s < ramp_s {
        rate * t_s * t_s / (2.0 * ramp_s)
    } else {
        rate * ramp_s / 2.0 + rate * (t_s - ramp_s)
    }
}

/// Most synthetic records one recorded value adds in [`corrected`].
const CORRECT_STEPS_MAX: u64 = 1000;

/// `raw` corrected for coordinated omission at `interval_ns` between
/// expected samples: HdrHistogram's `record_correct` (for a value `v`, also
/// `v - i`, `v - 2i`, ... down to `i`), applied per recorded value after the
/// run instead of per sample in the send loop: that costs `v / i` records a
/// sample, which at overload (seconds of latency at tens of microseconds
/// between starts) would make the generator the bottleneck. Past
/// `CORRECT_STEPS_MAX` synthetic values per recorded value, consecutive ones
/// are recorded in groups at the group's middle value (an error below the
/// group's span).
pub(crate) fn corrected(raw: &Histogram<u64>, interval_ns: u64) -> Histogram<u64> {
    let mut out = new_hist();
    let _ = out.add(raw);
    if interval_ns == 0 {
        return out;
    }
    for v in raw.iter_recorded() {
        let value = v.value_iterated_to();
        let count = v.count_at_value();
        // Synthetic values value - k*i for k = 1..=m (those >= i).
        let m = (value / interval_ns).saturating_sub(1);
        let step = m.div_ceil(CORRECT_STEPS_MAX).max(1);
        let mut k = 1;
        while k <= m {
            let len = step.min(m - k + 1);
            let mid = k + (len - 1) / 2;
            let _ = out.record_n(value - mid * interval_ns, count * len);
            k += len;
        }
    }
    out
}

/// Seconds at which schedule slot `k` (0-based) comes due: the inverse of
/// [`scheduled`].
fn start_time_s(rate: f64, ramp_s: f64, k: u64) -> f64 {
    let n = k as f64;
    if ramp_s <= 0.0 {
        return n / rate;
    }
    let ramp_n = rate * ramp_s / 2.0;
    if n < ramp_n {
        (2.0 * ramp_s * n / rate).sqrt()
    } else {
        ramp_s + (n - ramp_n) / rate
    }
}

/// Client socket buffers: room for bursts while this process is descheduled.
pub(crate) const SOCKET_BUFFER_BYTES: usize = 4 << 20;
const RECV_BATCH: usize = 32;
const RECV_SLOT_BYTES: usize = 4096;

/// Nanoseconds this thread has run (first field of its schedstat).
pub(crate) fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Runs one load and returns the figures.
pub fn drive(args: &RegisterArgs) -> Result<RegisterReport, String> {
    check_open_loop(
        args.rate,
        args.sockets,
        args.max_inflight,
        args.t1_ms,
        args.ramp_s,
        args.duration,
    )?;
    let total = match args.count {
        Some(n) => n,
        None => scheduled(args.rate as f64, args.ramp_s, args.duration).ceil() as u64,
    };
    if total == 0 || total > MAX_REGISTRATIONS {
        return Err(format!(
            "registrations: 1..={MAX_REGISTRATIONS}, not {total}"
        ));
    }
    let users = Arc::new(args.users.load()?);
    let threads = args.threads.clamp(1, args.sockets);
    let groups: Vec<Vec<Client>> = match args.transport {
        BenchTransport::Udp => client_sockets(args.target, args.sockets, threads)?
            .into_iter()
            .map(|g| g.into_iter().map(Client::Udp).collect())
            .collect(),
        t => super::stream::connect_all(args.target, t, args.sockets, threads)?,
    };
    let cfg = Arc::new(WorkerCfg {
        rate: args.rate as f64,
        ramp_s: args.ramp_s,
        total,
        stride: threads as u64,
        slots: args.max_inflight.div_ceil(threads),
        t1_ns: args.t1_ms * 1_000_000,
        t2_ns: args.t2_ms.max(args.t1_ms) * 1_000_000,
        timeout_ns: args.timeout_ms.unwrap_or(64 * args.t1_ms) * 1_000_000,
        // RFC 3261 §17.1.2.2: Timer E only on an unreliable transport.
        retransmit: !args.no_retransmit && args.transport == BenchTransport::Udp,
        transport: args.transport,
        expires: args.expires,
        // Starts of this worker are `threads` schedule slots apart.
        expected_interval_ns: (threads as f64 * 1e9 / args.rate as f64).max(1.0) as u64,
        run_id: std::process::id(),
        user_step: if args.spread_users {
            spread_step(users.len() as u64)
        } else {
            1
        },
    });
    let live = Arc::new(Live::default());
    let main_cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let mut workers = Vec::new();
    for (w, socks) in groups.into_iter().enumerate() {
        let cfg = cfg.clone();
        let users = users.clone();
        let live = live.clone();
        workers.push(std::thread::spawn(move || {
            Worker::new(w as u32, socks, &cfg, &users, &live, t0).run()
        }));
    }

    let progress = std::io::stderr().is_terminal() && !args.json;
    watch(
        &live,
        t0,
        wall0,
        cfg.expected_interval_ns,
        args.hlog.as_ref(),
        "register",
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
        c.ok += k.ok;
        c.failed_timeout += k.failed_timeout;
        c.failed_status += k.failed_status;
        c.failed_auth += k.failed_auth;
        c.requests_sent += k.requests_sent;
        c.retransmissions += k.retransmissions;
        c.replies += k.replies;
        c.stray_replies += k.stray_replies;
        c.inflight_full += k.inflight_full;
        c.send_errors += k.send_errors;
        cpu_ns += out.cpu_ns;
    }
    let elapsed = t0.elapsed();
    let failed = c.failed_timeout + c.failed_status + c.failed_auth;
    Ok(RegisterReport {
        scenario: "register",
        offered_rate: args.rate,
        ramp_s: args.ramp_s,
        users: users.len(),
        elapsed_s: elapsed.as_secs_f64(),
        registrations: c.started,
        ok: c.ok,
        failed,
        failed_timeout: c.failed_timeout,
        failed_status: c.failed_status,
        failed_auth: c.failed_auth,
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
        generator_cpu_us_per_registration: if c.started > 0 {
            cpu_ns as f64 / 1e3 / c.started as f64
        } else {
            0.0
        },
    })
}

/// A step `s` coprime with `n` near `0.618 n` (1 for `n <= 2`): `k * s mod
/// n` visits every number below `n` once per `n` steps, far apart.
pub(crate) fn spread_step(n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if n <= 2 {
        return 1;
    }
    let mut s = ((n as f64 * 0.618_033_988_75) as u64).max(1);
    while gcd(s, n) != 1 {
        s += 1;
    }
    s
}

/// The checks every open-loop scenario (register, call) makes of its flags.
pub(crate) fn check_open_loop(
    rate: u64,
    sockets: usize,
    max_inflight: usize,
    t1_ms: u64,
    ramp_s: f64,
    duration: f64,
) -> Result<(), String> {
    if rate == 0 || sockets == 0 || max_inflight == 0 || t1_ms == 0 {
        return Err("rate, sockets, max-inflight and t1-ms must be positive".into());
    }
    if max_inflight > MAX_INFLIGHT {
        return Err(format!("--max-inflight: at most {MAX_INFLIGHT}"));
    }
    if !(ramp_s >= 0.0 && duration > 0.0) {
        return Err("ramp-s must be >= 0 and duration > 0".into());
    }
    Ok(())
}

/// `sockets` non-blocking UDP sockets connected to `target`, dealt round
/// robin into `threads` groups (one per worker).
pub(crate) fn client_sockets(
    target: SocketAddr,
    sockets: usize,
    threads: usize,
) -> Result<Vec<Vec<UdpSocket>>, String> {
    let bind: SocketAddr = if target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let mut groups: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..sockets {
        let s = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        s.connect(target).map_err(|e| format!("connect: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        // Best effort: capped by net.core.rmem_max / wmem_max.
        let r = socket2::SockRef::from(&s);
        let _ = r.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = r.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        groups[i % threads.max(1)].push(s);
    }
    Ok(groups)
}

/// Until every worker has finished: once a second, takes the interval
/// histograms the workers flushed, appends them to the `.hlog` (tags `name`
/// and `name_corrected`) and prints the progress line.
#[allow(clippy::too_many_arguments)]
pub(crate) fn watch<T>(
    live: &Live,
    t0: Instant,
    wall0: SystemTime,
    interval_ns: u64,
    hlog_path: Option<&PathBuf>,
    name: &str,
    progress: bool,
    workers: &[std::thread::JoinHandle<T>],
) -> Result<(), String> {
    let mut hlog = match hlog_path {
        Some(p) => {
            let f = std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(
                HlogWriter::new(
                    std::io::BufWriter::new(f),
                    wall0,
                    &format!("[sipshard bench {name}]"),
                )
                .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    let tags = (name.to_string(), format!("{name}_corrected"));
    let mut last = Instant::now();
    let mut last_ok = 0;
    let mut tick = 0u64;
    loop {
        let done = workers.iter().all(|w| w.is_finished());
        if !done {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() < Duration::from_secs(1) {
                continue;
            }
        }
        let length = last.elapsed();
        last = Instant::now();
        tick += 1;
        let iv = live.interval.lock().ok().and_then(|mut g| g.take());
        if let (Some(h), Some((raw, _))) = (hlog.as_mut(), iv.as_ref()) {
            let start = t0.elapsed().saturating_sub(length);
            let cor = corrected(raw, interval_ns);
            h.write_intervals(
                start,
                length,
                [(tags.0.clone(), raw), (tags.1.clone(), &cor)],
            )
            .map_err(|e| e.to_string())?;
        }
        if progress {
            let ok = live.ok.load(Ordering::Relaxed);
            let p99 = iv
                .as_ref()
                .map(|(raw, _)| raw.value_at_quantile(0.99) as f64 / 1000.0)
                .unwrap_or(0.0);
            eprint!(
                "\r[{tick:>4}s] rate {:>8.0}/s  started {:>9}  ok {:>9}  failed {:>7}  p99 {:>9.1} us ",
                ok.saturating_sub(last_ok) as f64 / length.as_secs_f64().max(1e-9),
                live.started.load(Ordering::Relaxed),
                ok,
                live.failed.load(Ordering::Relaxed),
                p99
            );
            let _ = std::io::stderr().flush();
            last_ok = ok;
        }
        if done {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    Ok(())
}

struct WorkerCfg {
    rate: f64,
    ramp_s: f64,
    total: u64,
    stride: u64,
    slots: usize,
    t1_ns: u64,
    t2_ns: u64,
    timeout_ns: u64,
    retransmit: bool,
    transport: BenchTransport,
    expires: u32,
    expected_interval_ns: u64,
    run_id: u32,
    /// User of registration k: `k * user_step mod users` (1: in order).
    user_step: u64,
}

struct WorkerOut {
    raw: Histogram<u64>,
    counters: Counters,
    cpu_ns: u64,
}

/// One registration in flight.
#[derive(Default)]
struct Slot {
    active: bool,
    gen: u32,
    user: usize,
    sock: usize,
    /// 1: first REGISTER (expects 401); 2: with credentials (expects 200).
    cseq: u32,
    started_ns: u64,
    /// When the current transaction's first request went out (Timer F base).
    txn_ns: u64,
    interval_ns: u64,
    deadline_ns: u64,
    msg: Vec<u8>,
}

struct Worker<'a> {
    id: u32,
    socks: Vec<Client>,
    ports: Vec<u16>,
    cfg: &'a WorkerCfg,
    users: &'a [User],
    live: &'a Live,
    t0: Instant,
    slots: Vec<Slot>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    raw: Histogram<u64>,
    iv_raw: Histogram<u64>,
    c: Counters,
    scratch: String,
    next_sock: usize,
}

impl<'a> Worker<'a> {
    fn new(
        id: u32,
        socks: Vec<Client>,
        cfg: &'a WorkerCfg,
        users: &'a [User],
        live: &'a Live,
        t0: Instant,
    ) -> Self {
        let ports = socks.iter().map(Client::local_port).collect();
        Worker {
            id,
            socks,
            ports,
            cfg,
            users,
            live,
            t0,
            slots: (0..cfg.slots).map(|_| Slot::default()).collect(),
            free: (0..cfg.slots as u32).rev().collect(),
            timers: BinaryHeap::new(),
            raw: new_hist(),
            iv_raw: new_hist(),
            c: Counters::default(),
            scratch: String::with_capacity(512),
            next_sock: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn run(mut self) -> WorkerOut {
        let cpu0 = thread_cpu_ns();
        let mut next = u64::from(self.id);
        let mut blocked_at = u64::MAX;
        // One epoll over this worker's sockets and one recvmmsg per ready
        // socket: the loop sleeps until a reply, a start or a timer is due,
        // instead of polling every socket.
        let mut epoll = Epoll::new().ok();
        if let Some(ep) = &epoll {
            for (k, s) in self.socks.iter().enumerate() {
                if ep.add_readable(s.fd(), k as u64, false).is_err() {
                    epoll = None;
                    break;
                }
            }
        }
        let mut batch = RecvBatch::new(RECV_BATCH, RECV_SLOT_BYTES);
        let mut ready: Vec<usize> = Vec::with_capacity(self.socks.len());
        let mut framed: Vec<Vec<u8>> = Vec::new();
        let mut parsed = Parsed::default();
        let limits = Limits::default();
        let mut last_flush = 0u64;
        loop {
            let now = self.now_ns();
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
                self.start(slot, next, now);
                next += self.cfg.stride;
            }
            let now = self.now_ns();
            while let Some(&Reverse((at, slot, gen))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.on_timer(slot, gen, at, now);
            }
            if now.saturating_sub(last_flush) >= 1_000_000_000 {
                last_flush = now;
                self.flush_interval();
            }
            if next >= self.cfg.total && self.free.len() == self.slots.len() {
                break;
            }
            // Sleep until the next start (when a slot is free), timer or flush.
            let mut wake = last_flush + 1_000_000_000;
            if next < self.cfg.total && !self.free.is_empty() {
                let at_s = start_time_s(self.cfg.rate, self.cfg.ramp_s, next);
                wake = wake.min((at_s * 1e9) as u64);
            }
            if let Some(&Reverse((at, _, _))) = self.timers.peek() {
                wake = wake.min(at);
            }
            let wait = Duration::from_nanos(wake.saturating_sub(self.now_ns()));
            ready.clear();
            match epoll.as_mut() {
                Some(ep) => {
                    let _ = ep.wait(Some(wait), |t, _| ready.push(t as usize));
                }
                None => {
                    std::thread::sleep(wait.min(Duration::from_micros(50)));
                    ready.extend(0..self.socks.len());
                }
            }
            for &k in &ready {
                if let Some(c @ Client::Stream(_)) = self.socks.get_mut(k) {
                    c.read_messages(&limits, &mut framed);
                    for m in std::mem::take(&mut framed) {
                        self.on_datagram(&m, &mut parsed, &limits);
                    }
                    continue;
                }
                let Some(fd) = self.socks.get(k).map(Client::fd) else {
                    continue;
                };
                loop {
                    let n = batch.recv(fd).unwrap_or(0);
                    for i in 0..n {
                        if let Some((data, _)) = batch.get(i) {
                            self.on_datagram(data, &mut parsed, &limits);
                        }
                    }
                    if n < batch.capacity() {
                        break;
                    }
                }
            }
        }
        self.flush_interval();
        WorkerOut {
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

    fn start(&mut self, slot_id: u32, seq: u64, now: u64) {
        let n = self.users.len().max(1) as u64;
        // (seq mod n) * step mod n, in u128: no overflow for any n.
        let user = (u128::from(seq % n) * u128::from(self.cfg.user_step) % u128::from(n)) as usize;
        let sock = self.next_sock;
        self.next_sock = (self.next_sock + 1) % self.socks.len();
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        slot.active = true;
        slot.gen = slot.gen.wrapping_add(1);
        slot.user = user;
        slot.sock = sock;
        slot.started_ns = now;
        self.c.started += 1;
        self.live.started.fetch_add(1, Ordering::Relaxed);
        self.send_register(slot_id, 1, None, now);
    }

    /// Builds and sends REGISTER number `cseq` of the slot's registration
    /// (a new client transaction).
    fn send_register(&mut self, slot_id: u32, cseq: u32, auth: Option<&str>, now: u64) {
        let (run_id, id, cfg) = (self.cfg.run_id, self.id, self.cfg);
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        let Some(u) = self.users.get(slot.user) else {
            return;
        };
        let port = self.ports.get(slot.sock).copied().unwrap_or(0);
        let gen = slot.gen;
        slot.cseq = cseq;
        slot.msg.clear();
        let m = &mut slot.msg;
        let _ = write!(
            m,
            "REGISTER sip:{d} SIP/2.0\r\n\
             Via: SIP/2.0/{via} 127.0.0.1:{port};branch=z9hG4bK-{run_id}.{id}.{slot_id}.{gen}.{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{n}@{d}>;tag={run_id}.{slot_id}.{gen}\r\n\
             To: <sip:{n}@{d}>\r\n\
             Call-ID: {run_id}.{id}.{slot_id}.{gen}@sipshard-bench\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{n}@127.0.0.1:{port}{cp}>\r\n\
             Expires: {e}\r\n",
            d = u.domain,
            n = u.name,
            e = cfg.expires,
            via = cfg.transport.via(),
            cp = cfg.transport.contact_param(),
        );
        if let Some(a) = auth {
            let _ = write!(m, "Authorization: {a}\r\n");
        }
        let _ = m.write_all(b"User-Agent: sipshard-bench\r\nContent-Length: 0\r\n\r\n");
        slot.txn_ns = now;
        slot.interval_ns = cfg.t1_ns;
        slot.deadline_ns = if cfg.retransmit {
            now + cfg.t1_ns.min(cfg.timeout_ns)
        } else {
            now + cfg.timeout_ns
        };
        self.timers.push(Reverse((slot.deadline_ns, slot_id, gen)));
        let sent = self
            .socks
            .get_mut(slot.sock)
            .map(|s| s.send(&slot.msg))
            .unwrap_or(false);
        self.c.requests_sent += 1;
        if !sent {
            self.c.send_errors += 1;
        }
    }

    fn on_timer(&mut self, slot_id: u32, gen: u32, at: u64, now: u64) {
        let cfg = self.cfg;
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            return;
        };
        if !slot.active || slot.gen != gen || slot.deadline_ns != at {
            return; // stale: the transaction moved on
        }
        if now.saturating_sub(slot.txn_ns) >= cfg.timeout_ns {
            self.c.failed_timeout += 1;
            self.finish(slot_id, false);
            return;
        }
        // Timer E: retransmit, double the interval up to T2.
        if let Some(s) = self.socks.get_mut(slot.sock) {
            if !s.send(&slot.msg) {
                self.c.send_errors += 1;
            }
        }
        self.c.requests_sent += 1;
        self.c.retransmissions += 1;
        slot.interval_ns = (slot.interval_ns * 2).min(cfg.t2_ns);
        slot.deadline_ns = (now + slot.interval_ns).min(slot.txn_ns + cfg.timeout_ns);
        self.timers.push(Reverse((slot.deadline_ns, slot_id, gen)));
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
        let Some((slot_id, gen)) = parse_call_id(call_id, self.cfg.run_id, self.id) else {
            self.c.stray_replies += 1;
            return;
        };
        let now = self.now_ns();
        let cfg = self.cfg;
        let Some(slot) = self.slots.get_mut(slot_id as usize) else {
            self.c.stray_replies += 1;
            return;
        };
        if !slot.active || slot.gen != gen || slot.cseq != cseq.num {
            self.c.stray_replies += 1;
            return;
        }
        if status < 200 {
            // Proceeding: Timer E continues at T2.
            slot.interval_ns = cfg.t2_ns;
            return;
        }
        if (200..300).contains(&status) {
            let latency = now.saturating_sub(slot.started_ns).max(1);
            let _ = self.raw.record(latency.min(HIST_MAX_NS));
            let _ = self.iv_raw.record(latency.min(HIST_MAX_NS));
            self.finish(slot_id, true);
            return;
        }
        if slot.cseq == 1 && (status == 401 || status == 407) {
            let users = self.users;
            let Some(u) = users.get(slot.user) else {
                return;
            };
            let header = if status == 401 {
                HdrName::WwwAuthenticate
            } else {
                HdrName::ProxyAuthenticate
            };
            // The first challenge whose algorithm is supported (RFC 7616 §3.7:
            // the server lists them in its order of preference).
            let challenge = msg
                .headers(header)
                .filter_map(|v| std::str::from_utf8(v).ok())
                .find_map(|v| Challenge::parse(v).ok());
            let Some(ch) = challenge else {
                self.c.failed_auth += 1;
                self.finish(slot_id, false);
                return;
            };
            let uri = format!("sip:{}", u.domain);
            self.scratch.clear();
            // cnonce: unique per registration, a token.
            let cnonce = format!("{:x}{:x}", slot_id, gen);
            ch.write_authorization(
                &mut self.scratch,
                Login {
                    username: &u.name,
                    password: &u.password,
                },
                "REGISTER",
                &uri,
                1,
                &cnonce,
            );
            let auth = std::mem::take(&mut self.scratch);
            self.send_register(slot_id, 2, Some(&auth), now);
            self.scratch = auth;
            return;
        }
        if status == 401 || status == 407 || status == 403 {
            self.c.failed_auth += 1;
        } else {
            self.c.failed_status += 1;
        }
        self.finish(slot_id, false);
    }
}

/// `run.worker.slot.gen@...` -> (slot, gen) when run and worker are ours.
pub(crate) fn parse_call_id(call_id: &[u8], run_id: u32, worker: u32) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(call_id).ok()?;
    let s = s.split('@').next()?;
    let mut it = s.split('.');
    let run: u32 = it.next()?.parse().ok()?;
    let w: u32 = it.next()?.parse().ok()?;
    let slot = it.next()?.parse().ok()?;
    let gen = it.next()?.parse().ok()?;
    (run == run_id && w == worker && it.next().is_none()).then_some((slot, gen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ramps_then_holds() {
        assert_eq!(scheduled(100.0, 0.0, 2.0), 200.0);
        // Half the rate on average during the ramp.
        assert_eq!(scheduled(100.0, 2.0, 2.0), 100.0);
        assert_eq!(scheduled(100.0, 2.0, 3.0), 200.0);
        assert!(scheduled(100.0, 2.0, 1.0) < 50.0);
    }

    #[test]
    fn start_time_inverts_the_schedule() {
        for ramp in [0.0, 2.0] {
            for k in [0u64, 1, 50, 99, 100, 250] {
                let t = start_time_s(100.0, ramp, k);
                let n = scheduled(100.0, ramp, t);
                assert!((n - k as f64).abs() < 1e-6, "ramp {ramp} k {k}: {n}");
            }
        }
    }

    #[test]
    fn correction_matches_record_correct_and_stays_bounded() {
        let mut raw = new_hist();
        let mut reference = new_hist();
        for v in [50_000u64, 120_000, 1_000_000, 999] {
            raw.record(v).unwrap();
            reference.record_correct(v, 10_000).unwrap();
        }
        let c = corrected(&raw, 10_000);
        assert_eq!(c.len(), reference.len());
        // Equal within the histogram's precision (recorded values are
        // bucket-rounded before the correction runs).
        for q in [0.5, 0.9, 0.99] {
            let (got, want) = (
                c.value_at_quantile(q) as f64,
                reference.value_at_quantile(q) as f64,
            );
            assert!((got / want - 1.0).abs() < 0.002, "{q}: {got} vs {want}");
        }
        // 60 s at 10 us: 6 million synthetic samples, recorded in 1000 groups.
        let mut big = new_hist();
        big.record(60_000_000_000).unwrap();
        let c = corrected(&big, 10_000);
        let n = c.len() as f64;
        assert!((n / 6e6 - 1.0).abs() < 0.002, "{n}");
        let median = c.value_at_quantile(0.5) as f64;
        assert!((median / 30e9 - 1.0).abs() < 0.01, "{median}");
    }

    #[test]
    fn spread_step_visits_every_user_once() {
        for n in [1u64, 2, 3, 10, 16, 1000, 1024, 100_000] {
            let s = spread_step(n);
            let mut seen = vec![false; n as usize];
            for k in 0..n {
                seen[(k * s % n) as usize] = true;
            }
            assert!(seen.iter().all(|v| *v), "n {n} step {s}");
        }
        // Consecutive registrations land far apart in a large table.
        let s = spread_step(1_000_000);
        assert!(s > 600_000 && s < 640_000, "{s}");
    }

    #[test]
    fn call_id_round_trips() {
        assert_eq!(
            parse_call_id(b"7.1.42.3@sipshard-bench", 7, 1),
            Some((42, 3))
        );
        assert_eq!(parse_call_id(b"7.1.42.3@sipshard-bench", 8, 1), None);
        assert_eq!(parse_call_id(b"7.2.42.3@x", 7, 1), None);
        assert_eq!(parse_call_id(b"garbage", 7, 1), None);
        assert_eq!(parse_call_id(b"7.1.42.3.9@x", 7, 1), None);
    }
}
