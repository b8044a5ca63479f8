//! Prometheus text exposition (format 0.0.4) of shard snapshots.
//!
//! Pure rendering: takes [`ShardSnapshot`]s the control plane already fetched
//! and returns a string. It never talks to shards, sockets or clocks.
//!
//! Shapes:
//! - every [`Counter`] as `sipshard_<group>_<name>_total{shard="N"}` (counter),
//! - every shard gauge as `sipshard_<group>_<name>{shard="N"}` (gauge),
//! - every route histogram as `sipshard_route_duration_seconds{route,shard,le}`
//!   with cumulative buckets at configurable bounds, plus `_sum` and `_count`.
//!
//! No merged ("all shards") series are exported: Prometheus sums by label,
//! and a merged series would be counted twice by `sum()`.

#![forbid(unsafe_code)]

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::stats::{Counter, ShardSnapshot};

/// Most bucket bounds a histogram may be configured with.
pub const BUCKETS_MAX: usize = 64;

/// Default bucket upper bounds in microseconds: a 1-2-5 series from 1 µs to 1 s.
pub fn default_buckets_us() -> Vec<f64> {
    let mut out = Vec::with_capacity(19);
    let mut decade = 1.0_f64;
    while decade < 1_000_000.0 {
        for m in [1.0, 2.0, 5.0] {
            out.push(decade * m);
        }
        decade *= 10.0;
    }
    out.push(1_000_000.0);
    out
}

/// Why a bucket list was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum BucketError {
    #[error("bucket list is empty")]
    Empty,
    #[error("too many buckets: {0} (at most {BUCKETS_MAX})")]
    TooMany(usize),
    #[error("bucket bound {0} is not a positive finite number of microseconds")]
    NotPositive(f64),
    #[error("bucket bounds must be strictly increasing ({0} follows {1})")]
    NotIncreasing(f64, f64),
}

/// Checks configured bucket bounds (microseconds): 1..=64 finite positive values,
/// strictly increasing.
pub fn validate_buckets_us(bounds_us: &[f64]) -> Result<(), BucketError> {
    if bounds_us.is_empty() {
        return Err(BucketError::Empty);
    }
    if bounds_us.len() > BUCKETS_MAX {
        return Err(BucketError::TooMany(bounds_us.len()));
    }
    for (i, &b) in bounds_us.iter().enumerate() {
        if !b.is_finite() || b <= 0.0 {
            return Err(BucketError::NotPositive(b));
        }
        if i > 0 && b <= bounds_us[i - 1] {
            return Err(BucketError::NotIncreasing(b, bounds_us[i - 1]));
        }
    }
    Ok(())
}

/// Turns a Kamailio-style name (`core.bad_URIs_rcvd`) into a Prometheus metric
/// name fragment (`core_bad_uris_rcvd`): lowercase, `[a-z0-9_]` only.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push('_');
        }
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Escapes a label value (`\`, `"` and newline), per the exposition format.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text (`\` and newline).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Cumulative counts at each bound (microseconds), computed from an HDR
/// histogram recorded in nanoseconds.
///
/// A recorded value is counted under `le` when the top of its HDR bucket
/// (`highest_equivalent`) is `<= le`: conservative, so no value above `le` is
/// ever counted under it; values within the histogram's precision (0.1 % at 3
/// significant digits) below a bound may land in the next bucket.
pub fn cumulative_buckets(hist: &Histogram<u64>, bounds_us: &[f64]) -> Vec<u64> {
    let mut out = vec![0_u64; bounds_us.len()];
    for v in hist.iter_recorded() {
        let top_ns = v.value_iterated_to() as f64;
        let count = v.count_at_value();
        // First bound that holds this value; every bound after it holds it too,
        // which is fixed up by the running sum below.
        if let Some(i) = bounds_us.iter().position(|&b| top_ns <= b * 1000.0) {
            out[i] = out[i].saturating_add(count);
        }
    }
    let mut running = 0_u64;
    for c in &mut out {
        running = running.saturating_add(*c);
        *c = running;
    }
    debug_assert!(running <= hist.len());
    out
}

/// Renders every shard's counters, gauges and route histograms.
pub fn render(shards: &[ShardSnapshot], bounds_us: &[f64], uptime_s: f64) -> String {
    let mut s = String::with_capacity(4096 + shards.len() * 2048);

    let _ = writeln!(
        s,
        "# HELP sipshard_uptime_seconds Seconds since the process started."
    );
    let _ = writeln!(s, "# TYPE sipshard_uptime_seconds gauge");
    let _ = writeln!(s, "sipshard_uptime_seconds {}", fmt_f64(uptime_s));
    let _ = writeln!(
        s,
        "# HELP sipshard_shards Number of shards that answered this scrape."
    );
    let _ = writeln!(s, "# TYPE sipshard_shards gauge");
    let _ = writeln!(s, "sipshard_shards {}", shards.len());

    for &counter in Counter::ALL {
        let metric = format!("sipshard_{}_total", sanitize_name(counter.name()));
        let _ = writeln!(s, "# HELP {metric} {}", escape_help(counter.help()));
        let _ = writeln!(s, "# TYPE {metric} counter");
        for snap in shards {
            let value = snap.counters[counter as usize];
            let _ = writeln!(s, "{metric}{{shard=\"{}\"}} {value}", snap.shard);
        }
    }

    // Gauges: the union of names over shards, in order of first appearance.
    let mut gauge_names: Vec<&'static str> = Vec::new();
    for snap in shards {
        for (name, _) in &snap.gauges {
            if !gauge_names.contains(name) {
                gauge_names.push(name);
            }
        }
    }
    for name in gauge_names {
        let metric = format!("sipshard_{}", sanitize_name(name));
        let _ = writeln!(s, "# HELP {metric} Shard gauge {}.", escape_help(name));
        let _ = writeln!(s, "# TYPE {metric} gauge");
        for snap in shards {
            for (_, value) in snap.gauges.iter().filter(|(n, _)| *n == name) {
                let _ = writeln!(s, "{metric}{{shard=\"{}\"}} {value}", snap.shard);
            }
        }
    }

    let metric = "sipshard_route_duration_seconds";
    let _ = writeln!(
        s,
        "# HELP {metric} Time spent running a KEMI route, per shard."
    );
    let _ = writeln!(s, "# TYPE {metric} histogram");
    let les: Vec<String> = bounds_us.iter().map(|b| fmt_f64(b / 1_000_000.0)).collect();
    for snap in shards {
        for r in &snap.routes {
            let labels = format!(
                "route=\"{}\",shard=\"{}\"",
                escape_label(&r.route),
                snap.shard
            );
            for (le, count) in les.iter().zip(cumulative_buckets(&r.hist, bounds_us)) {
                let _ = writeln!(s, "{metric}_bucket{{{labels},le=\"{le}\"}} {count}");
            }
            let count = r.hist.len();
            let _ = writeln!(s, "{metric}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let sum_s = r.hist.mean() * count as f64 / 1e9;
            let _ = writeln!(s, "{metric}_sum{{{labels}}} {}", fmt_f64(sum_s));
            let _ = writeln!(s, "{metric}_count{{{labels}}} {count}");
        }
    }
    s
}

/// Float in the exposition format: Go-compatible `NaN`/`+Inf`, otherwise the
/// shortest representation that round-trips.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, RouteHistogram};

    fn snap(shard: usize, values_ns: &[u64]) -> ShardSnapshot {
        let mut hist = new_histogram();
        for &v in values_ns {
            hist.record(v).unwrap();
        }
        let mut counters = [0_u64; Counter::COUNT];
        counters[Counter::RcvRequests as usize] = 10 + shard as u64;
        ShardSnapshot {
            shard,
            cpu: Some(shard),
            uptime_s: 1.0,
            counters,
            gauges: vec![("shard.inflight", 3)],
            routes: vec![RouteHistogram {
                route: "request_route".into(),
                hist,
            }],
            tuning: serde_json::Value::Null,
        }
    }

    #[test]
    fn default_buckets_are_valid_1us_to_1s() {
        let b = default_buckets_us();
        assert_eq!(validate_buckets_us(&b), Ok(()));
        assert_eq!(b.first(), Some(&1.0));
        assert_eq!(b.last(), Some(&1_000_000.0));
        assert_eq!(b.len(), 19);
    }

    #[test]
    fn bucket_validation_errors() {
        assert_eq!(validate_buckets_us(&[]), Err(BucketError::Empty));
        assert_eq!(
            validate_buckets_us(&[1.0, 0.0]),
            Err(BucketError::NotPositive(0.0))
        );
        assert!(validate_buckets_us(&[f64::NAN]).is_err());
        assert_eq!(
            validate_buckets_us(&[2.0, 2.0]),
            Err(BucketError::NotIncreasing(2.0, 2.0))
        );
        assert_eq!(
            validate_buckets_us(&vec![1.0; 65]),
            Err(BucketError::TooMany(65))
        );
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_name("core.bad_URIs_rcvd"), "core_bad_uris_rcvd");
        assert_eq!(sanitize_name("sl.1xx_replies"), "sl_1xx_replies");
        assert_eq!(sanitize_name("9x"), "_9x");
    }

    #[test]
    fn cumulative_counts() {
        let s = snap(0, &[500, 1_000, 1_500, 20_000, 2_000_000_000]);
        let c = cumulative_buckets(&s.routes[0].hist, &[1.0, 2.0, 50.0, 1_000_000.0]);
        assert_eq!(c, vec![2, 3, 4, 4]);
    }

    #[test]
    fn render_has_series_per_shard() {
        let text = render(
            &[snap(0, &[1_000]), snap(1, &[3_000, 4_000])],
            &[2.0, 5.0],
            12.5,
        );
        assert!(text.contains("sipshard_core_rcv_requests_total{shard=\"1\"} 11\n"));
        assert!(text.contains("sipshard_shard_inflight{shard=\"0\"} 3\n"));
        assert!(text.contains(
            "sipshard_route_duration_seconds_bucket{route=\"request_route\",shard=\"1\",le=\"0.000002\"} 0\n"
        ));
        assert!(text.contains(
            "sipshard_route_duration_seconds_bucket{route=\"request_route\",shard=\"1\",le=\"0.000005\"} 2\n"
        ));
        assert!(text.contains(
            "sipshard_route_duration_seconds_count{route=\"request_route\",shard=\"1\"} 2\n"
        ));
    }
}
