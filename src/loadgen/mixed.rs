//! `sipshard bench mixed`: OPTIONS, registrations and calls at once, each
//! at its weight's share of `--rate` (`--mix options=5,register=3,call=2`).
//!
//! Nothing here drives SIP itself: each share runs its own scenario's
//! driver ([`super::drive`], [`super::register::drive`],
//! [`super::call::drive`]) on its own thread with its own sockets and
//! workers, open loop as always, and the report holds each scenario's report
//! plus the totals. `--rate` counts starts: an OPTIONS request, a
//! registration (two REGISTERs) or a call each count one.
//!
//! Never: point it at anything but a server you run.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::call::{self, CallArgs, CallReport};
use super::register::{self, RegisterArgs, RegisterReport};
use super::users::UserArgs;
use super::{BenchArgs, BenchReport};

/// The scenarios a mix may name, in report order.
pub const SCENARIOS: [&str; 3] = ["options", "register", "call"];
/// Largest weight of one scenario.
const WEIGHT_MAX: u32 = 1_000_000;

#[derive(clap::Args, Clone, Debug)]
pub struct MixedArgs {
    /// Server address (every scenario sends there).
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    /// Weights per scenario, `name=weight` comma-separated (options,
    /// register, call); a scenario left out is not run.
    #[arg(long, default_value = "options=5,register=3,call=2")]
    pub mix: String,
    /// Offered load, starts per second of all scenarios together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of starting.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Client sockets of each scenario.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Worker threads of each scenario.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Registrations plus calls in flight, at most, per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: usize,
    #[command(flatten)]
    pub users: UserArgs,
    /// Spread registrations over all users (see `bench register`).
    #[arg(long)]
    pub spread_users: bool,
    /// Request-URI of the calls' INVITEs (needed when the mix has calls).
    #[arg(long)]
    pub ruri: Option<String>,
    /// From URI of the calls.
    #[arg(long, default_value = "sip:bench@bench.invalid")]
    pub from: String,
    /// Milliseconds between a call's ACK and its BYE.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// RFC 3261 T1 / T2 and the transaction timeout of registrations and
    /// calls (as `bench register`).
    #[arg(long, default_value_t = 500)]
    pub t1_ms: u64,
    #[arg(long, default_value_t = 4000)]
    pub t2_ms: u64,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Milliseconds the OPTIONS share waits for late replies.
    #[arg(long, default_value_t = 1000)]
    pub drain_ms: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One scenario's share of the mix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Share {
    pub scenario: &'static str,
    pub weight: u32,
    /// Starts per second given to it.
    pub rate: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MixedReport {
    pub scenario: &'static str,
    pub offered_rate: u64,
    pub duration_s: f64,
    pub mix: Vec<Share>,
    /// OPTIONS sent, registrations and calls started.
    pub started: u64,
    /// OPTIONS answered 2xx, registrations and calls completed.
    pub ok: u64,
    /// OPTIONS unanswered or not 2xx, failed registrations and calls.
    pub failed: u64,
    pub options: Option<BenchReport>,
    pub register: Option<RegisterReport>,
    pub call: Option<CallReport>,
}

/// Parses `options=5,register=3,call=2` and splits `rate` by weight
/// (rounded; every named scenario with a weight gets at least 1/s).
pub fn parse_mix(mix: &str, rate: u64) -> Result<Vec<Share>, String> {
    let mut weights: Vec<(&'static str, u32)> = Vec::new();
    for part in mix.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("--mix: `{part}`: expected NAME=WEIGHT"))?;
        let name = SCENARIOS
            .iter()
            .find(|s| **s == name.trim())
            .ok_or_else(|| {
                format!(
                    "--mix: unknown scenario `{}` (one of {})",
                    name.trim(),
                    SCENARIOS.join(", ")
                )
            })?;
        let w: u32 = w
            .trim()
            .parse()
            .ok()
            .filter(|w| *w <= WEIGHT_MAX)
            .ok_or_else(|| format!("--mix: `{part}`: weight must be 0..={WEIGHT_MAX}"))?;
        if weights.iter().any(|(n, _)| n == name) {
            return Err(format!("--mix: `{name}` given twice"));
        }
        weights.push((name, w));
    }
    let sum: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    if sum == 0 {
        return Err("--mix: no scenario with a positive weight".into());
    }
    let mut out: Vec<Share> = SCENARIOS
        .iter()
        .filter_map(|s| weights.iter().find(|(n, _)| n == s))
        .filter(|(_, w)| *w > 0)
        .map(|&(scenario, weight)| Share {
            scenario,
            weight,
            rate: ((rate as f64 * f64::from(weight) / sum as f64).round() as u64).max(1),
        })
        .collect();
    out.sort_by_key(|s| SCENARIOS.iter().position(|n| *n == s.scenario));
    Ok(out)
}

pub fn run(args: MixedArgs) -> Result<(), String> {
    let r = drive(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&r));
    }
    Ok(())
}

pub fn table(r: &MixedReport) -> String {
    let mut s = String::new();
    let shares: Vec<String> = r
        .mix
        .iter()
        .map(|m| format!("{} {}/s", m.scenario, m.rate))
        .collect();
    let _ = writeln!(
        s,
        "mixed: offered {}/s for {:.1}s ({}): started {}, ok {}, failed {}",
        r.offered_rate,
        r.duration_s,
        shares.join(", "),
        r.started,
        r.ok,
        r.failed
    );
    if let Some(o) = &r.options {
        s.push_str(&super::table(o));
    }
    if let Some(g) = &r.register {
        s.push_str(&register::table(g));
    }
    if let Some(c) = &r.call {
        s.push_str(&call::table(c));
    }
    s
}

pub fn drive(args: &MixedArgs) -> Result<MixedReport, String> {
    let mix = parse_mix(&args.mix, args.rate)?;
    let rate_of = |name: &str| mix.iter().find(|m| m.scenario == name).map(|m| m.rate);
    let options = rate_of("options").map(|rate| BenchArgs {
        target: args.target,
        rate,
        duration: args.duration,
        sockets: args.sockets,
        threads: args.threads,
        drain_ms: args.drain_ms,
        ruri: None,
        json: true,
    });
    let register = rate_of("register").map(|rate| RegisterArgs {
        target: args.target,
        users: args.users.clone(),
        rate,
        ramp_s: 0.0,
        count: None,
        duration: args.duration,
        max_inflight: args.max_inflight,
        sockets: args.sockets,
        threads: args.threads,
        t1_ms: args.t1_ms,
        t2_ms: args.t2_ms,
        timeout_ms: args.timeout_ms,
        no_retransmit: false,
        expires: 3600,
        spread_users: args.spread_users,
        transport: super::stream::BenchTransport::Udp,
        // json: no progress line of its own
        json: true,
        hlog: None,
    });
    let call = match rate_of("call") {
        None => None,
        Some(rate) => Some(CallArgs {
            target: args.target,
            ruri: args
                .ruri
                .clone()
                .ok_or("--mix has calls: --ruri is needed (the callee's URI)")?,
            from: args.from.clone(),
            rate,
            ramp_s: 0.0,
            count: None,
            duration: args.duration,
            pause_ms: args.pause_ms,
            max_inflight: args.max_inflight,
            sockets: args.sockets,
            threads: args.threads,
            t1_ms: args.t1_ms,
            t2_ms: args.t2_ms,
            timeout_ms: args.timeout_ms,
            no_retransmit: false,
            json: true,
            hlog: None,
        }),
    };
    let (o, g, c) = std::thread::scope(|scope| {
        let o = options
            .as_ref()
            .map(|a| scope.spawn(move || super::drive(a)));
        let g = register
            .as_ref()
            .map(|a| scope.spawn(move || register::drive(a)));
        let c = call.as_ref().map(|a| scope.spawn(move || call::drive(a)));
        (join(o), join(g), join(c))
    });
    let (o, g, c) = (o?, g?, c?);
    let mut r = MixedReport {
        scenario: "mixed",
        offered_rate: args.rate,
        duration_s: args.duration,
        mix,
        ..Default::default()
    };
    if let Some(o) = &o {
        r.started += o.sent;
        r.ok += o.answered.saturating_sub(o.non_2xx);
        r.failed += o.lost + o.non_2xx;
    }
    if let Some(g) = &g {
        r.started += g.registrations;
        r.ok += g.ok;
        r.failed += g.failed;
    }
    if let Some(c) = &c {
        r.started += c.calls;
        r.ok += c.ok;
        r.failed += c.failed;
    }
    r.options = o;
    r.register = g;
    r.call = c;
    Ok(r)
}

/// The result of a scenario thread, if it ran.
fn join<T>(
    h: Option<std::thread::ScopedJoinHandle<'_, Result<T, String>>>,
) -> Result<Option<T>, String> {
    h.map(|h| {
        h.join()
            .map_err(|_| "scenario thread panicked".to_string())?
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_splits_the_rate_by_weight() {
        let m = parse_mix("call=2, options=5,register=3", 1000).unwrap();
        let got: Vec<(&str, u64)> = m.iter().map(|s| (s.scenario, s.rate)).collect();
        assert_eq!(
            got,
            vec![("options", 500), ("register", 300), ("call", 200)]
        );
        // A zero weight is left out; a tiny share still gets 1/s.
        let m = parse_mix("options=1000,register=1,call=0", 10).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].rate, 1);
        assert!(parse_mix("options=1,bogus=2", 10).is_err());
        assert!(parse_mix("options=1,options=2", 10).is_err());
        assert!(parse_mix("options", 10).is_err());
        assert!(parse_mix("options=0", 10).is_err());
        assert!(parse_mix("options=-1", 10).is_err());
    }
}
