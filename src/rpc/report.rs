//! `sipshard report`: draws route latency from an HdrHistogram interval log
//! (or a live `kemi.route_latency` snapshot) as a PNG.
//!
//! One row per route (at most [`ROUTES_MAX`]), two panels per row:
//! - latency by percentile, HdrHistogram style: x is `log10(1 / (1 - p))`
//!   labelled 0%, 90%, 99%, 99.9%, 99.99%, 99.999%; y is µs; one line per
//!   shard plus the merge (black, thick);
//! - latency over the run: p50, p99 and max of the merge per interval.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (the `dejavu`
//! crate, registered with plotters' `ab_glyph` backend), so no system font
//! or fontconfig is needed. Reads only the files and URL it is given.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::json;

use crate::rpc::client::{self, ClientError};
use crate::stats::hlog::{self, HlogError, ShardKey};

/// Most routes drawn (one row each).
pub const ROUTES_MAX: usize = 8;
/// Rightmost percentile: 99.999 % (x = 5).
pub const PERCENTILE_NINES_MAX: f64 = 5.0;
pub const WIDTH_MIN: u32 = 600;
pub const WIDTH_MAX: u32 = 4000;
const ROW_HEIGHT: u32 = 440;
/// Room above the highest line for the legend.
const Y_HEADROOM: f64 = 1.35;

/// `sipshard report (--hlog FILE | --url URL) --out FILE.png`
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// HdrHistogram interval log written by `[rpc.hlog]` or `ctl --hlog`.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "url",
        required_unless_present = "url"
    )]
    pub hlog: Option<PathBuf>,
    /// Control-plane URL to take a live snapshot from instead.
    #[arg(long)]
    pub url: Option<String>,
    /// PNG to write.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Draw only this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Image width in pixels; height grows with the number of routes.
    #[arg(long, default_value_t = 1400)]
    pub width: u32,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Hlog(#[from] HlogError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("drawing failed: {0}")]
    Plot(String),
    #[error("no route histograms to draw")]
    NoData,
    #[error("{0}")]
    Usage(String),
}

/// One interval of one series.
#[derive(Clone, Debug)]
pub struct Interval {
    pub offset_s: f64,
    pub length_s: f64,
    pub hist: Histogram<u64>,
}

/// Everything a report draws: route -> shard -> intervals in log order.
#[derive(Clone, Debug, Default)]
pub struct ReportData {
    pub routes: BTreeMap<String, BTreeMap<ShardKey, Vec<Interval>>>,
}

impl ReportData {
    /// From an interval log. Tags this program did not write are drawn as
    /// route `<tag>` (or `untagged`), shard `all`.
    pub fn from_log(bytes: &[u8]) -> Result<ReportData, ReportError> {
        let mut data = ReportData::default();
        for li in hlog::read_log(bytes)? {
            let (route, shard) = match li.tag.as_deref() {
                Some(t) => {
                    hlog::parse_route_tag(t).unwrap_or_else(|| (t.to_string(), ShardKey::All))
                }
                None => ("untagged".to_string(), ShardKey::All),
            };
            data.push(
                route,
                shard,
                Interval {
                    offset_s: li.offset_s,
                    length_s: li.length_s,
                    hist: li.hist,
                },
            );
        }
        Ok(data)
    }

    /// From a `kemi.route_latency ["hlog"]` result: one interval over the uptime.
    pub fn from_latency_result(result: &serde_json::Value) -> Result<ReportData, ReportError> {
        let uptime_s = result
            .get("uptime_s")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        let mut data = ReportData::default();
        for (route, shard, hist) in client::latency_intervals(result)? {
            data.push(
                route,
                shard,
                Interval {
                    offset_s: 0.0,
                    length_s: uptime_s,
                    hist,
                },
            );
        }
        Ok(data)
    }

    fn push(&mut self, route: String, shard: ShardKey, interval: Interval) {
        self.routes
            .entry(route)
            .or_default()
            .entry(shard)
            .or_default()
            .push(interval);
    }
}

/// Runs `sipshard report`.
pub fn run_report(args: ReportArgs) -> Result<(), ReportError> {
    if !(WIDTH_MIN..=WIDTH_MAX).contains(&args.width) {
        return Err(ReportError::Usage(format!(
            "--width must be {WIDTH_MIN}..={WIDTH_MAX}"
        )));
    }
    let mut data = match (&args.hlog, &args.url) {
        (Some(path), None) => {
            let meta = std::fs::metadata(path)?;
            if meta.len() > hlog::LOG_BYTES_MAX as u64 {
                return Err(HlogError::TooLarge.into());
            }
            ReportData::from_log(&std::fs::read(path)?)?
        }
        (None, Some(url)) => {
            let result = client::call(
                url,
                "kemi.route_latency",
                json!(["hlog"]),
                Duration::from_secs(30),
            )?;
            ReportData::from_latency_result(&result)?
        }
        _ => {
            return Err(ReportError::Usage(
                "give exactly one of --hlog FILE or --url URL".into(),
            ))
        }
    };
    if let Some(route) = &args.route {
        data.routes.retain(|r, _| r == route);
    }
    let drawn = render_png(&data, &args.out, args.width)?;
    println!(
        "wrote {} ({} route{})",
        args.out.display(),
        drawn,
        if drawn == 1 { "" } else { "s" }
    );
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// Registers the embedded font once; plotters looks fonts up by family name.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot(
            "embedded font could not be loaded".into(),
        ))
    }
}

/// Sum of a series' intervals.
fn total(intervals: &[Interval]) -> Option<Histogram<u64>> {
    let mut iter = intervals.iter();
    let mut acc = iter.next()?.hist.clone();
    for i in iter {
        // Same bounds within one log; a failed add only drops figures.
        let _ = acc.add(&i.hist);
    }
    Some(acc)
}

/// The merge's intervals: the `all` series when the log has it, otherwise
/// shards added up per interval start.
fn merged_intervals(shards: &BTreeMap<ShardKey, Vec<Interval>>) -> Vec<Interval> {
    if let Some(all) = shards.get(&ShardKey::All) {
        return all.clone();
    }
    let mut by_start: BTreeMap<i64, Interval> = BTreeMap::new();
    for intervals in shards.values() {
        for i in intervals {
            let key = (i.offset_s * 1000.0).round() as i64;
            match by_start.get_mut(&key) {
                Some(acc) => {
                    let _ = acc.hist.add(&i.hist);
                }
                None => {
                    by_start.insert(key, i.clone());
                }
            }
        }
    }
    by_start.into_values().collect()
}

/// Points of a percentile plot: `(log10(1/(1-p)), value µs)`, ending at the max.
pub fn percentile_points(hist: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    let x_end = (hist.len() as f64).log10().clamp(0.0, x_max);
    const STEPS: usize = 250;
    let mut pts: Vec<(f64, f64)> = (0..=STEPS)
        .map(|i| {
            let x = x_end * i as f64 / STEPS as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, hist.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    pts.push((x_end, hist.max() as f64 / 1000.0));
    pts
}

/// `0 -> "0%"`, `1 -> "90%"`, `3 -> "99.9%"`.
pub fn percentile_label(x: f64) -> String {
    let nines = x.round().max(0.0) as usize;
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    format!("{:.*}%", nines.saturating_sub(2), pct)
}

fn shard_color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

/// Draws `data` into a PNG at `out`; returns how many routes were drawn.
pub fn render_png(data: &ReportData, out: &Path, width: u32) -> Result<usize, ReportError> {
    let is_png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(ReportError::Usage("--out must name a .png file".into()));
    }
    let routes: Vec<(&String, &BTreeMap<ShardKey, Vec<Interval>>)> = data
        .routes
        .iter()
        .filter(|(_, shards)| shards.values().flatten().any(|i| !i.hist.is_empty()))
        .take(ROUTES_MAX)
        .collect();
    if routes.is_empty() {
        return Err(ReportError::NoData);
    }
    ensure_font()?;
    let width = width.clamp(WIDTH_MIN, WIDTH_MAX);
    let height = ROW_HEIGHT * routes.len() as u32;
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let cells = root.split_evenly((routes.len(), 2));
    for (row, (route, shards)) in routes.iter().enumerate() {
        draw_percentiles(&cells[row * 2], route, shards)?;
        draw_over_time(&cells[row * 2 + 1], route, shards)?;
    }
    root.present().map_err(plot_err)?;
    Ok(routes.len())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_percentiles(
    area: &Area<'_>,
    route: &str,
    shards: &BTreeMap<ShardKey, Vec<Interval>>,
) -> Result<(), ReportError> {
    // The merge first (thick, underneath), then each shard on top of it.
    let mut series: Vec<(String, Histogram<u64>, ShapeStyle)> = Vec::new();
    if let Some(h) = total(&merged_intervals(shards)) {
        series.push(("all shards".into(), h, BLACK.stroke_width(4)));
    }
    for (i, (key, intervals)) in shards
        .iter()
        .filter(|(k, _)| **k != ShardKey::All)
        .enumerate()
    {
        if let Some(h) = total(intervals) {
            series.push((format!("shard {key}"), h, shard_color(i).stroke_width(2)));
        }
    }
    let y_max = series
        .iter()
        .map(|(_, h, _)| h.max() as f64 / 1000.0)
        .fold(1.0, f64::max)
        * Y_HEADROOM;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{route}: latency by percentile"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..PERCENTILE_NINES_MAX, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        // One label per nine: 0 %, 90 %, 99 %, ...
        .x_labels(PERCENTILE_NINES_MAX as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .draw()
        .map_err(plot_err)?;
    for (label, hist, style) in &series {
        let color = style.color;
        chart
            .draw_series(LineSeries::new(
                percentile_points(hist, PERCENTILE_NINES_MAX),
                *style,
            ))
            .map_err(plot_err)?
            .label(format!("{label} (n={})", hist.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// One interval of the merge, for the over-time panel.
struct TimeRow {
    end_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Which figure of a [`TimeRow`] a line shows.
type Pick = fn(&TimeRow) -> f64;

fn draw_over_time(
    area: &Area<'_>,
    route: &str,
    shards: &BTreeMap<ShardKey, Vec<Interval>>,
) -> Result<(), ReportError> {
    let merged = merged_intervals(shards);
    let us = |ns: u64| ns as f64 / 1000.0;
    let rows: Vec<TimeRow> = merged
        .iter()
        .filter(|i| !i.hist.is_empty())
        .map(|i| TimeRow {
            end_s: i.offset_s + i.length_s,
            p50_us: us(i.hist.value_at_quantile(0.5)),
            p99_us: us(i.hist.value_at_quantile(0.99)),
            max_us: us(i.hist.max()),
        })
        .collect();
    let x_max = rows.iter().map(|r| r.end_s).fold(1.0, f64::max) * 1.02;
    let y_max = rows.iter().map(|r| r.max_us).fold(1.0, f64::max) * Y_HEADROOM;
    let mut chart = ChartBuilder::on(area)
        .caption(
            if rows.len() == 1 {
                format!("{route}: since start (snapshot, all shards)")
            } else {
                format!("{route}: latency over time (all shards)")
            },
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start (interval end)")
        .y_desc("latency (µs)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(plot_err)?;
    let lines: [(&str, RGBColor, Pick); 3] = [
        // Drawn max first so p99 stays visible where the two coincide.
        ("max", RGBColor(214, 39, 40), |r| r.max_us),
        ("p99", RGBColor(255, 127, 14), |r| r.p99_us),
        ("p50", RGBColor(31, 119, 180), |r| r.p50_us),
    ];
    for (label, color, pick) in lines {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.end_s, pick(r))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }

    #[test]
    fn points_end_at_max() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=1000_u64 {
            h.record(v * 1000).unwrap();
        }
        let pts = percentile_points(&h, 5.0);
        assert_eq!(pts.first().map(|p| p.0), Some(0.0));
        let last = pts.last().unwrap();
        assert!((last.0 - 3.0).abs() < 1e-9);
        assert!((last.1 - h.max() as f64 / 1000.0).abs() < 1e-9);
        assert!(pts.windows(2).all(|w| w[1].1 >= w[0].1));
        assert!(percentile_points(&crate::stats::new_histogram(), 5.0).is_empty());
    }
}
