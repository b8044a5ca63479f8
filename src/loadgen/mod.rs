//! `sipshard bench`: an open-loop SIP load driver over UDP.
//!
//! Worker threads each own some of the client sockets (several source ports,
//! so SO_REUSEPORT spreads them over the server's shards). Each worker sends
//! its share at a fixed target rate whatever the server's answers do (open
//! loop: a slow server shows up as latency and loss, not as a lower offered
//! rate) and drains its non-blocking sockets between sends, matching replies
//! by CSeq number into an HDR histogram. No thread wakes up per packet, so
//! the driver leaves as much of the machine as it can to the server.
//!
//! Never: point it at anything but a server you run on this machine.

#![forbid(unsafe_code)]

pub mod call;
pub mod mixed;
pub mod register;
pub mod stream;
pub mod uas;
pub mod users;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Most requests one run may track.
const MAX_REQUESTS: u64 = 100_000_000;

/// `sipshard bench [SCENARIO]`: without a scenario, the OPTIONS driver (as
/// before scenarios existed).
#[derive(clap::Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCmd {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    #[command(flatten)]
    pub options: BenchArgs,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// OPTIONS at an open-loop rate (the default scenario).
    Options(BenchArgs),
    /// REGISTER, 401, REGISTER with digest credentials, 200, per user.
    Register(register::RegisterArgs),
    /// Calls as a UAC: INVITE, 100/180/200, ACK, pause, BYE, 200.
    Call(call::CallArgs),
    /// A stateless UAS answering INVITE with 180+200 and BYE with 200.
    Uas(uas::UasArgs),
    /// The same answering machine, also answering REGISTER with 401 then
    /// 200 without checks: a peer for measuring the generator itself.
    Responder(uas::UasArgs),
    /// OPTIONS, registrations and calls at once, by weight (`--mix
    /// options=5,register=3,call=2`), each by its own scenario's driver.
    Mixed(Box<mixed::MixedArgs>),
    /// Write generated users as a file `sipshard user import` reads.
    Users(users::UsersOutArgs),
}

pub fn run_cmd(cmd: BenchCmd) -> Result<(), String> {
    match cmd.scenario {
        None => run(cmd.options),
        Some(Scenario::Options(a)) => run(a),
        Some(Scenario::Register(a)) => register::run(a),
        Some(Scenario::Call(a)) => call::run(a),
        Some(Scenario::Uas(a)) | Some(Scenario::Responder(a)) => uas::run(a),
        Some(Scenario::Mixed(a)) => mixed::run(*a),
        Some(Scenario::Users(a)) => users::run_users(a),
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    /// Offered load, requests per second (all sockets together).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Client sockets (distinct source ports).
    #[arg(long, default_value_t = 8)]
    pub sockets: usize,
    /// Worker threads (each sends and receives on its share of the sockets).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Milliseconds to wait for late replies after the last request.
    #[arg(long, default_value_t = 1000)]
    pub drain_ms: u64,
    /// Request-URI of the OPTIONS requests (default: `sip:<target>`).
    #[arg(long)]
    pub ruri: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub offered_rate: u64,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub achieved_send_rate: f64,
    pub answered_rate: f64,
    pub non_2xx: u64,
    pub latency_us_p50: f64,
    pub latency_us_p90: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
    pub latency_us_mean: f64,
    /// The same percentiles, raw and corrected for coordinated omission
    /// at the expected interval between one worker's sends (as the other
    /// scenarios report them).
    pub latency_us: register::Latency,
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let r = drive(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&r));
    }
    Ok(())
}

/// The final table of an OPTIONS run.
pub fn table(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "offered {}/s for {:.1}s: sent {} ({:.0}/s), answered {} ({:.0}/s), lost {} ({:.3}%), non-2xx {}",
        r.offered_rate, r.duration_s, r.sent, r.achieved_send_rate, r.answered, r.answered_rate, r.lost, r.loss_pct, r.non_2xx
    );
    let _ = writeln!(
        s,
        "latency us: mean {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        r.latency_us_mean,
        r.latency_us_p50,
        r.latency_us_p90,
        r.latency_us_p99,
        r.latency_us_p999,
        r.latency_us_max
    );
    let c = &r.latency_us.corrected;
    let _ = writeln!(
        s,
        "corrected us: mean {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        c.mean, c.p50, c.p90, c.p99, c.p999, c.max
    );
    s
}

/// Runs one load and returns the figures.
pub fn drive(args: &BenchArgs) -> Result<BenchReport, String> {
    if args.rate == 0 || args.sockets == 0 || args.duration <= 0.0 {
        return Err("rate, sockets and duration must be positive".into());
    }
    let total = (args.rate as f64 * args.duration).ceil() as u64;
    if total > MAX_REQUESTS {
        return Err(format!(
            "rate x duration = {total} requests; at most {MAX_REQUESTS}"
        ));
    }
    let ruri = args
        .ruri
        .clone()
        .unwrap_or_else(|| format!("sip:{}", args.target));
    let threads = args.threads.clamp(1, args.sockets);
    // The same sockets as the register and call generators (4 MiB
    // buffers: the 208 KiB default overflowed whenever this thread was off
    // its core for a few ms above 100 000/s, and the lost replies counted
    // against the server).
    let groups = register::client_sockets(args.target, args.sockets, threads)?;
    // Send instants (ns since `t0` + 1; 0 = not sent, u64::MAX = answered).
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let run_id = std::process::id();
    let mut workers = Vec::new();
    for (w, group) in groups.into_iter().enumerate() {
        let sent_at = sent_at.clone();
        let ruri = ruri.clone();
        let target = args.target;
        let drain = Duration::from_millis(args.drain_ms);
        let rate = args.rate as f64;
        workers.push(std::thread::spawn(move || {
            // Worker w sends sequence numbers w, w+threads, w+2*threads, ...
            work(
                &group,
                &sent_at,
                t0,
                rate,
                total,
                w as u64,
                threads as u64,
                &ruri,
                target,
                run_id,
                drain,
            )
        }));
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut non_2xx = 0;
    let mut sent = 0;
    let mut send_secs: f64 = 0.0;
    for r in workers {
        let (h, bad, n, secs) = r.join().map_err(|_| "worker thread panicked".to_string())?;
        hist.add(&h).map_err(|e| e.to_string())?;
        non_2xx += bad;
        sent += n;
        send_secs = send_secs.max(secs);
    }
    let answered = hist.len();
    let lost = sent.saturating_sub(answered);
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    // A worker's sends are `threads` schedule slots apart.
    let interval_ns = (threads as f64 * 1e9 / args.rate as f64).max(1.0) as u64;
    let latency_us = register::Latency {
        raw: register::Percentiles::of(&hist),
        corrected: register::Percentiles::of(&register::corrected(&hist, interval_ns)),
    };
    Ok(BenchReport {
        offered_rate: args.rate,
        duration_s: args.duration,
        sent,
        answered,
        lost,
        loss_pct: if sent > 0 {
            lost as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        achieved_send_rate: sent as f64 / send_secs.max(1e-9),
        answered_rate: answered as f64 / send_secs.max(1e-9),
        non_2xx,
        latency_us_p50: q(0.5),
        latency_us_p90: q(0.9),
        latency_us_p99: q(0.99),
        latency_us_p999: q(0.999),
        latency_us_max: hist.max() as f64 / 1000.0,
        latency_us_mean: hist.mean() / 1000.0,
        latency_us,
    })
}

/// One worker: paced sends of its sequence numbers, non-blocking receives.
/// Returns (latency histogram, non-2xx count, requests sent, send seconds).
#[allow(clippy::too_many_arguments)]
fn work(
    socks: &[UdpSocket],
    sent_at: &[AtomicU64],
    t0: Instant,
    rate: f64,
    total: u64,
    first: u64,
    stride: u64,
    ruri: &str,
    target: SocketAddr,
    run_id: u32,
    drain: Duration,
) -> (Histogram<u64>, u64, u64, f64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds");
    let ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0))
        .collect();
    let mut out = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    let mut next = first;
    let mut sent = 0u64;
    let mut non_2xx = 0u64;
    let mut k = 0usize;
    let mut send_done: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Global sequence numbers below `due` are due; this worker owns every
        // `stride`-th of them.
        let due = (((now - t0).as_secs_f64() * rate) as u64 + 1).min(total);
        let mut busy = false;
        while next < due {
            build_options(&mut out, ruri, target, ports[k], run_id, next);
            sent_at[next as usize].store(t0.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
            // A full socket buffer is loss the report shows, not an abort.
            let _ = socks[k].send(&out);
            k = (k + 1) % socks.len();
            sent += 1;
            next += stride;
            busy = true;
        }
        if next >= total && send_done.is_none() {
            send_done = Some(Instant::now());
        }
        for s in socks {
            while let Ok(n) = s.recv(&mut buf) {
                busy = true;
                let at_ns = t0.elapsed().as_nanos() as u64 + 1;
                let msg = &buf[..n];
                let Some(seq) = cseq_number(msg) else {
                    continue;
                };
                let Some(slot) = sent_at.get(seq as usize) else {
                    continue;
                };
                let at = slot.swap(u64::MAX, Ordering::Relaxed);
                if at == 0 || at == u64::MAX {
                    continue;
                }
                if !msg.starts_with(b"SIP/2.0 2") {
                    non_2xx += 1;
                }
                h.saturating_record(at_ns.saturating_sub(at).max(1));
            }
        }
        if let Some(done) = send_done {
            if done.elapsed() >= drain {
                break;
            }
        }
        if !busy {
            // Idle: nap briefly so replies batch up instead of costing a
            // wake-up each (the pacing error this adds is < 100 µs).
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let send_secs = send_done
        .map(|d| (d - t0).as_secs_f64())
        .unwrap_or_else(|| t0.elapsed().as_secs_f64());
    (h, non_2xx, sent, send_secs)
}

fn build_options(
    buf: &mut Vec<u8>,
    ruri: &str,
    target: SocketAddr,
    port: u16,
    run_id: u32,
    n: u64,
) {
    use std::io::Write;
    buf.clear();
    let _ = write!(
        buf,
        "OPTIONS {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{run_id}-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bench@127.0.0.1>;tag={run_id}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: bench-{run_id}-{n}@127.0.0.1\r\n\
         CSeq: {n} OPTIONS\r\n\
         User-Agent: sipshard-bench\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

fn cseq_number(msg: &[u8]) -> Option<u64> {
    let pos = msg
        .windows(6)
        .position(|w| w.eq_ignore_ascii_case(b"\nCSeq:"))?;
    let rest = &msg[pos + 6..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_number_is_found() {
        assert_eq!(
            cseq_number(b"SIP/2.0 200 OK\r\nCSeq: 42 OPTIONS\r\n\r\n"),
            Some(42)
        );
        assert_eq!(
            cseq_number(b"SIP/2.0 200 OK\r\ncseq:7 OPTIONS\r\n\r\n"),
            Some(7)
        );
        assert_eq!(cseq_number(b"SIP/2.0 200 OK\r\n\r\n"), None);
    }
}
