//! The periodic `.hlog` writer: every `interval_s` it snapshots the shards
//! (without resetting them) and appends one interval histogram per route per
//! shard plus the merge (`shard=all`), as [`crate::stats::hlog`] describes.
//!
//! Writes are small appends to a local file done inline on the control
//! runtime; a failed write is logged and the next interval tries again.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;

use crate::rpc::RpcContext;
use crate::stats::hlog::{tagged, HlogConfig, HlogWriter, IntervalTracker};

/// Creates (truncates) the log and writes its header.
pub(crate) fn open(cfg: &HlogConfig) -> std::io::Result<HlogWriter<BufWriter<File>>> {
    let file = File::create(&cfg.path)?;
    let comment = format!(
        "[route latency per shard every {} s; tags route=<route>;shard=<n|all>]",
        cfg.interval_s
    );
    HlogWriter::new(BufWriter::new(file), SystemTime::now(), &comment)
        .map_err(std::io::Error::other)
}

pub(crate) async fn run(
    mut writer: HlogWriter<BufWriter<File>>,
    every: Duration,
    ctx: Arc<RpcContext>,
) {
    debug_assert!(every >= Duration::from_secs(1));
    // Interval timestamps are measured on the monotonic clock from the log's
    // BaseTime (set when the file was opened).
    let since_base = SystemTime::now()
        .duration_since(writer.base_time())
        .unwrap_or(Duration::ZERO);
    let base = Instant::now()
        .checked_sub(since_base)
        .unwrap_or_else(Instant::now);
    // No baseline snapshot: the log is opened as the shards start, so the
    // first interval is everything the shards recorded so far. A baseline
    // taken here would race with the first requests and silently leave out
    // those routed before it arrived.
    let mut tracker = IntervalTracker::new();
    let mut last = base;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(last + every), every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        ticker.tick().await;
        let snaps = match ctx.shard_call(ctx.ctl.snapshot_all(false)).await {
            Ok(s) => s,
            Err(e) => {
                // The interval simply grows until shards answer again.
                tracing::warn!(error = %e, "hlog: shard snapshot failed");
                continue;
            }
        };
        let now = Instant::now();
        let intervals = tracker.advance(&snaps);
        let start = last.saturating_duration_since(base);
        let length = now.saturating_duration_since(last);
        last = now;
        if let Err(e) = writer.write_intervals(start, length, tagged(&intervals)) {
            failures += 1;
            // Log the first failure and then every 60th, not every interval.
            if failures % 60 == 1 {
                tracing::warn!(error = %e, failures, "hlog: write failed");
            }
        }
    }
}
