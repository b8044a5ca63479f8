//! HdrHistogram interval logs (`.hlog`): writing, reading, and turning
//! cumulative shard snapshots into interval histograms.
//!
//! The format is the one HdrHistogram's Java `HistogramLogWriter` writes and
//! its `HistogramLogProcessor`, the Python `hdrh` package and the Rust crate
//! read: comment headers (`#[StartTime: ...]`, `#[BaseTime: ...]`), a legend
//! line, then one line per interval histogram:
//!
//! ```text
//! Tag=route=request_route;shard=0,10.000,10.000,0.210,HISTFAAAAC...
//! ```
//!
//! (`Tag=<tag>,<start s since BaseTime>,<length s>,<max>,<base64 V2 deflate>`).
//!
//! **Units.** Values are **nanoseconds**, exactly as the shards record them
//! ([`crate::stats::HIST_MAX_NS`]); HdrHistogram's tools assume nanoseconds by
//! default (`HistogramLogProcessor -outputValueUnitRatio 1e6` prints ms). The
//! `Interval_Max` column is divided by 1e6 (milliseconds), like Java's
//! `HistogramLogWriter`; it is for humans only and readers ignore it.
//!
//! **Tags** are `route=<route>;shard=<n>` for one shard and
//! `route=<route>;shard=all` for the merge over shards. Tags may not hold
//! `,`, space, CR or LF; such bytes in a route name become `_`.
//!
//! This module does no networking and reads no clock: callers pass times in.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::stats::ShardSnapshot;

/// Shortest and longest interval the periodic writer accepts.
pub const INTERVAL_S_MIN: u64 = 1;
pub const INTERVAL_S_MAX: u64 = 3600;
/// Largest log `read_log` accepts, and most intervals it returns.
pub const LOG_BYTES_MAX: usize = 256 * 1024 * 1024;
pub const LOG_INTERVALS_MAX: usize = 1_000_000;
/// `Interval_Max` column divisor: ns -> ms, as Java's `HistogramLogWriter`.
pub const MAX_VALUE_DIVISOR: f64 = 1_000_000.0;
/// Tag shard part for the merge over all shards.
pub const SHARD_ALL: &str = "all";

/// `[rpc.hlog]`: periodic interval-log writer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HlogConfig {
    /// Log file; created (truncated) when the control plane starts.
    pub path: PathBuf,
    /// Seconds between intervals, `INTERVAL_S_MIN..=INTERVAL_S_MAX`.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
}

fn default_interval_s() -> u64 {
    10
}

impl HlogConfig {
    pub fn validate(&self) -> Result<(), HlogError> {
        if !(INTERVAL_S_MIN..=INTERVAL_S_MAX).contains(&self.interval_s) {
            return Err(HlogError::Interval(self.interval_s));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HlogError {
    #[error("hlog i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("histogram serialization failed: {0}")]
    Serialize(String),
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram could not be decoded: {0:?}")]
    Deserialize(hdrhistogram::serialization::DeserializeError),
    #[error("log is not a valid interval log near byte {0}")]
    Parse(usize),
    #[error("log is larger than {LOG_BYTES_MAX} bytes or {LOG_INTERVALS_MAX} intervals")]
    TooLarge,
    #[error("interval_s = {0} is outside {INTERVAL_S_MIN}..={INTERVAL_S_MAX}")]
    Interval(u64),
}

/// Which shard a tagged interval belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardKey {
    Shard(usize),
    /// Merge over every shard.
    All,
}

impl std::fmt::Display for ShardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardKey::Shard(n) => write!(f, "{n}"),
            ShardKey::All => f.write_str(SHARD_ALL),
        }
    }
}

/// `route=<route>;shard=<n|all>`, with bytes a tag may not hold replaced.
pub fn route_tag(route: &str, shard: ShardKey) -> String {
    let clean: String = route
        .chars()
        .map(|c| {
            if matches!(c, ',' | ' ' | '\r' | '\n' | ';') {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("route={clean};shard={shard}")
}

/// Inverse of [`route_tag`]; `None` for tags this program did not write.
pub fn parse_route_tag(tag: &str) -> Option<(String, ShardKey)> {
    let mut route = None;
    let mut shard = None;
    for part in tag.split(';') {
        if let Some(r) = part.strip_prefix("route=") {
            route = Some(r.to_string());
        } else if let Some(s) = part.strip_prefix("shard=") {
            shard = Some(if s == SHARD_ALL {
                ShardKey::All
            } else {
                ShardKey::Shard(s.parse().ok()?)
            });
        }
    }
    Some((route?, shard?))
}

/// Serializes a histogram as V2 + DEFLATE, base64 (the `.hlog` payload).
pub fn encode_base64(hist: &Histogram<u64>) -> Result<String, HlogError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(hist, &mut bytes)
        .map_err(|e| HlogError::Serialize(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Decodes a base64 V2 (compressed or not) histogram.
pub fn decode_base64(text: &str) -> Result<Histogram<u64>, HlogError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(HlogError::Deserialize)
}

/// Writes an interval log to `W`: headers on creation, then interval lines.
pub struct HlogWriter<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    scratch: Vec<u8>,
    /// Bytes the interval-log builder writes before the first interval (its
    /// `#[MaxValueDivisor]` comment); written once in the header, skipped after.
    builder_prefix_len: usize,
    base_time: SystemTime,
}

impl<W: Write> HlogWriter<W> {
    /// Writes the header: comments, `StartTime`, `BaseTime` (both `base_time`:
    /// interval timestamps are seconds since it), and the legend.
    pub fn new(mut out: W, base_time: SystemTime, comment: &str) -> Result<Self, HlogError> {
        let mut serializer = V2DeflateSerializer::new();
        let mut header = Vec::new();
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "[Logged with sipshard {}]",
                env!("CARGO_PKG_VERSION")
            ))
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(comment)
            .add_comment("[Values in nanoseconds; Interval_Max in milliseconds]")
            .with_start_time(base_time)
            .with_base_time(base_time)
            .with_max_value_divisor(MAX_VALUE_DIVISOR)
            .begin_log_with(&mut header, &mut serializer)?;
        header.extend_from_slice(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        );
        out.write_all(&header)?;
        out.flush()?;

        let mut probe = Vec::new();
        Self::builder().begin_log_with(&mut probe, &mut serializer)?;
        Ok(HlogWriter {
            out,
            serializer,
            scratch: Vec::new(),
            builder_prefix_len: probe.len(),
            base_time,
        })
    }

    fn builder() -> IntervalLogWriterBuilder {
        let mut b = IntervalLogWriterBuilder::new();
        b.with_max_value_divisor(MAX_VALUE_DIVISOR);
        b
    }

    pub fn base_time(&self) -> SystemTime {
        self.base_time
    }

    /// Appends intervals `(tag, histogram)` that all span `[start, start + length)`,
    /// `start` counted from the log's BaseTime; flushes once at the end.
    pub fn write_intervals<'h>(
        &mut self,
        start: Duration,
        length: Duration,
        intervals: impl IntoIterator<Item = (String, &'h Histogram<u64>)>,
    ) -> Result<(), HlogError> {
        self.scratch.clear();
        {
            let mut w = Self::builder().begin_log_with(&mut self.scratch, &mut self.serializer)?;
            for (tag, hist) in intervals {
                let tag = Tag::new(&tag);
                debug_assert!(tag.is_some(), "route_tag strips bytes a tag may not hold");
                w.write_histogram(hist, start, length, tag)
                    .map_err(|e| HlogError::Serialize(e.to_string()))?;
            }
        }
        let body = self
            .scratch
            .get(self.builder_prefix_len..)
            .unwrap_or_default();
        self.out.write_all(body)?;
        self.out.flush()?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One interval read back from a log.
#[derive(Clone, Debug)]
pub struct LogInterval {
    pub tag: Option<String>,
    /// Seconds from the log's StartTime (or from the first interval when the
    /// log has none) to the interval's start.
    pub offset_s: f64,
    pub length_s: f64,
    pub hist: Histogram<u64>,
}

/// Parses an interval log and decodes every interval histogram.
///
/// Timestamps follow the Java reader: with a `BaseTime` they are deltas from
/// it; with only a `StartTime` they are deltas when more than a year below it.
pub fn read_log(bytes: &[u8]) -> Result<Vec<LogInterval>, HlogError> {
    if bytes.len() > LOG_BYTES_MAX {
        return Err(HlogError::TooLarge);
    }
    let mut start_time: Option<f64> = None;
    let mut base_time: Option<f64> = None;
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        match entry {
            Err(hdrhistogram::serialization::interval_log::LogIteratorError::ParseError {
                offset,
            }) => {
                return Err(HlogError::Parse(offset));
            }
            Ok(LogEntry::StartTime(t)) => start_time = Some(t.as_secs_f64()),
            Ok(LogEntry::BaseTime(t)) => base_time = Some(t.as_secs_f64()),
            Ok(LogEntry::Interval(ilh)) => {
                if out.len() >= LOG_INTERVALS_MAX {
                    return Err(HlogError::TooLarge);
                }
                let stamp_s = ilh.start_timestamp().as_secs_f64();
                let start = *start_time.get_or_insert(stamp_s);
                let base = *base_time.get_or_insert(if stamp_s < start - 365.0 * 24.0 * 3600.0 {
                    start
                } else {
                    0.0
                });
                out.push(LogInterval {
                    tag: ilh.tag().map(|t| t.as_str().to_string()),
                    offset_s: stamp_s + base - start,
                    length_s: ilh.duration().as_secs_f64(),
                    hist: decode_base64(ilh.encoded_histogram())?,
                });
            }
        }
    }
    Ok(out)
}

/// `current - previous` for one cumulative histogram. When `previous` holds
/// more than `current` anywhere (the shard was reset in between), the whole of
/// `current` is the interval.
pub fn interval_between(previous: &Histogram<u64>, current: &Histogram<u64>) -> Histogram<u64> {
    let shrunk = previous.len() > current.len()
        || previous
            .iter_recorded()
            .any(|v| current.count_at(v.value_iterated_to()) < v.count_at_value());
    if shrunk {
        return current.clone();
    }
    let mut out = current.clone();
    // Cannot fail after the check above (same bounds, every count covered);
    // if it somehow did, report the cumulative figures rather than nothing.
    match out.subtract(previous) {
        Ok(()) => out,
        Err(_) => current.clone(),
    }
}

/// Remembers the last cumulative snapshot per (shard, route) so that each
/// new snapshot yields interval histograms without resetting the shards
/// (other readers, `/metrics` and `stats.fetch`, see the same counters).
#[derive(Default)]
pub struct IntervalTracker {
    previous: HashMap<(usize, String), Histogram<u64>>,
}

/// One route's interval: per shard (in shard order) and merged.
#[derive(Clone, Debug)]
pub struct RouteInterval {
    pub route: String,
    pub shards: Vec<(usize, Histogram<u64>)>,
    pub merged: Histogram<u64>,
}

impl IntervalTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `shards` as the new baseline and returns what changed since
    /// the last call (everything, on the first call).
    pub fn advance(&mut self, shards: &[ShardSnapshot]) -> Vec<RouteInterval> {
        let mut out: Vec<RouteInterval> = Vec::new();
        for snap in shards {
            for r in &snap.routes {
                let key = (snap.shard, r.route.clone());
                let interval = match self.previous.get(&key) {
                    Some(prev) => interval_between(prev, &r.hist),
                    None => r.hist.clone(),
                };
                self.previous.insert(key, r.hist.clone());
                match out.iter_mut().find(|ri| ri.route == r.route) {
                    Some(ri) => {
                        // Shards share bounds; a failed add only loses figures.
                        let _ = ri.merged.add(&interval);
                        ri.shards.push((snap.shard, interval));
                    }
                    None => out.push(RouteInterval {
                        route: r.route.clone(),
                        merged: interval.clone(),
                        shards: vec![(snap.shard, interval)],
                    }),
                }
            }
        }
        out
    }
}

/// The `(tag, histogram)` pairs of one set of route intervals: every shard, then `all`.
pub fn tagged(intervals: &[RouteInterval]) -> Vec<(String, &Histogram<u64>)> {
    let mut out = Vec::new();
    for ri in intervals {
        for (shard, h) in &ri.shards {
            out.push((route_tag(&ri.route, ShardKey::Shard(*shard)), h));
        }
        out.push((route_tag(&ri.route, ShardKey::All), &ri.merged));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, Counter, RouteHistogram};

    fn hist(values_ns: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &v in values_ns {
            h.record(v).unwrap();
        }
        h
    }

    fn snap(shard: usize, values_ns: &[u64]) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            cpu: None,
            uptime_s: 0.0,
            counters: [0; Counter::COUNT],
            gauges: vec![],
            routes: vec![RouteHistogram {
                route: "request_route".into(),
                hist: hist(values_ns),
            }],
            tuning: serde_json::Value::Null,
        }
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(
            route_tag("request_route", ShardKey::Shard(3)),
            "route=request_route;shard=3"
        );
        assert_eq!(route_tag("a b,c", ShardKey::All), "route=a_b_c;shard=all");
        assert_eq!(
            parse_route_tag("route=reply_route;shard=all"),
            Some(("reply_route".to_string(), ShardKey::All))
        );
        assert_eq!(parse_route_tag("shard=x;route=r"), None);
        assert_eq!(parse_route_tag("plain"), None);
    }

    #[test]
    fn base64_round_trip() {
        let h = hist(&[1, 1_000, 123_456, 59_000_000_000]);
        let back = decode_base64(&encode_base64(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(decode_base64("not base64!").is_err());
        assert!(decode_base64("AAAAAAAA").is_err());
    }

    #[test]
    fn interval_subtracts_and_survives_reset() {
        let prev = hist(&[1_000, 2_000]);
        let cur = hist(&[1_000, 2_000, 2_000, 9_000]);
        let i = interval_between(&prev, &cur);
        assert_eq!(i.len(), 2);
        assert_eq!(i.max(), cur.highest_equivalent(9_000));
        assert_eq!(i.min(), 2_000);
        // Reset in between: current holds less than previous.
        let after_reset = hist(&[5_000]);
        assert_eq!(interval_between(&cur, &after_reset), after_reset);
    }

    #[test]
    fn tracker_yields_deltas_and_merge() {
        let mut t = IntervalTracker::new();
        let first = t.advance(&[snap(0, &[1_000]), snap(1, &[2_000])]);
        assert_eq!(first[0].merged.len(), 2);
        let second = t.advance(&[snap(0, &[1_000, 3_000]), snap(1, &[2_000])]);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].shards[0].1.len(), 1);
        assert_eq!(second[0].shards[1].1.len(), 0);
        assert_eq!(second[0].merged.len(), 1);
    }

    #[test]
    fn write_then_read_back() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut w = HlogWriter::new(Vec::new(), base, "test").unwrap();
        let a = hist(&[1_000, 2_000, 3_000]);
        let b = hist(&[7_000]);
        w.write_intervals(
            Duration::from_secs(0),
            Duration::from_secs(5),
            vec![(route_tag("r", ShardKey::Shard(0)), &a)],
        )
        .unwrap();
        w.write_intervals(
            Duration::from_secs(5),
            Duration::from_secs(5),
            vec![(route_tag("r", ShardKey::All), &b)],
        )
        .unwrap();
        let bytes = w.into_inner();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.matches("MaxValueDivisor").count(), 1, "{text}");
        assert!(text.contains("\"StartTimestamp\""));
        assert!(text.contains("#[BaseTime: 1700000000.000"));
        let back = read_log(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].tag.as_deref(), Some("route=r;shard=0"));
        assert_eq!(back[0].hist, a);
        assert_eq!(back[1].offset_s, 5.0);
        assert_eq!(back[1].length_s, 5.0);
        assert_eq!(back[1].hist, b);
        assert!(read_log(b"Tag=x,1.0,2.0,3.0\n").is_err());
    }
}
