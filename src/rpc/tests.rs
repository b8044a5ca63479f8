//! End-to-end tests of the control plane: real HTTP over 127.0.0.1, real
//! JSON-RPC, Prometheus and hlog paths. Only the shard loop is a test double
//! (a thread answering `ShardCmd`s from hand-built snapshots).
//!
//! The Prometheus output is parsed by the Python `prometheus_client` package
//! and the `.hlog` files are decoded by the Python `hdrhistogram` package
//! (independent implementations); [`python`] installs them with pip when
//! missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::*;
use crate::rpc::client::{self, run_ctl_to, CtlArgs};
use crate::shard::control::{ShardCmd, UlCmd};
use crate::stats::hlog::{self as hlogmod, HlogConfig, ShardKey};
use crate::stats::{new_histogram, Counter, RouteHistogram, ShardSnapshot};

// ---------------------------------------------------------------- harness

type Store = Arc<Mutex<BTreeMap<String, Value>>>;

fn snapshot(shard: usize) -> ShardSnapshot {
    ShardSnapshot {
        shard,
        cpu: Some(shard + 2),
        uptime_s: 1.5,
        counters: [0; Counter::COUNT],
        gauges: vec![("usrloc.contacts", 0), ("shard.inflight", 0)],
        routes: vec![
            RouteHistogram {
                route: "request_route".into(),
                hist: new_histogram(),
            },
            RouteHistogram {
                route: "reply_route".into(),
                hist: new_histogram(),
            },
        ],
        tuning: json!({"udp_batch": 32, "shard": shard}),
    }
}

fn fake_shard(
    id: usize,
    n: usize,
    rx: Receiver<ShardCmd>,
    state: Arc<Mutex<Vec<ShardSnapshot>>>,
    ul: Store,
) {
    let owns = |aor: &str| owner_shard(aor, n) == Some(id);
    while let Ok(cmd) = rx.recv() {
        match cmd {
            ShardCmd::Snapshot { reset, reply } => {
                let mut st = state.lock().unwrap();
                let snap = st[id].clone();
                if reset {
                    st[id].counters = [0; Counter::COUNT];
                    for r in &mut st[id].routes {
                        r.hist.reset();
                    }
                }
                let _ = reply.send(snap);
            }
            ShardCmd::Ul { cmd, reply } => {
                let mut store = ul.lock().unwrap();
                let answer = match cmd {
                    UlCmd::Dump => {
                        let mine: Vec<Value> = store
                            .iter()
                            .filter(|(a, _)| owns(a))
                            .map(|(_, v)| v.clone())
                            .collect();
                        json!({"aors": mine})
                    }
                    UlCmd::Lookup { aor } if owns(&aor) => store
                        .get(&aor.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or(Value::Null),
                    UlCmd::Rm { aor } if owns(&aor) => {
                        json!({"removed": usize::from(store.remove(&aor.to_ascii_lowercase()).is_some())})
                    }
                    // Sent to a shard that does not own the AOR: it knows nothing.
                    UlCmd::Lookup { .. } => Value::Null,
                    UlCmd::Rm { .. } => json!({"removed": 0}),
                };
                let _ = reply.send(answer);
            }
            ShardCmd::Shutdown => break,
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

struct Harness {
    addr: SocketAddr,
    url: String,
    state: Arc<Mutex<Vec<ShardSnapshot>>>,
    ul: Store,
    ctl: ControlHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.ctl.shutdown();
    }
}

impl Harness {
    fn start(cfg: RpcConfig, shards: usize) -> Harness {
        Self::start_with(cfg, shards, Registry::with_builtin(), &[])
    }

    /// `dead`: shards whose command queue is closed (the shard is gone).
    fn start_with(mut cfg: RpcConfig, n: usize, registry: Registry, dead: &[usize]) -> Harness {
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let state = Arc::new(Mutex::new((0..n).map(snapshot).collect::<Vec<_>>()));
        let ul: Store = Arc::default();
        let mut senders = Vec::new();
        for id in 0..n {
            let (tx, rx) = sync_channel(16);
            senders.push(tx);
            if dead.contains(&id) {
                drop(rx);
                continue;
            }
            let (state, ul) = (Arc::clone(&state), Arc::clone(&ul));
            std::thread::spawn(move || fake_shard(id, n, rx, state, ul));
        }
        let ctl = ControlHandle::new(senders, Instant::now());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        let handle = handle_rx.recv().unwrap();
        let addr = spawn_with(cfg, ctl.clone(), registry, &handle).unwrap();
        Harness {
            addr,
            url: format!("http://{addr}"),
            state,
            ul,
            ctl,
            stop: Some(stop),
        }
    }

    fn record(&self, shard: usize, route: usize, values_ns: &[u64]) {
        let mut st = self.state.lock().unwrap();
        for &v in values_ns {
            st[shard].routes[route].hist.record(v).unwrap();
        }
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        client::call_raw(&self.url, method, params, Duration::from_secs(10)).unwrap()
    }

    fn result(&self, method: &str, params: Value) -> Value {
        let r = self.rpc(method, params);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    fn error_code(&self, method: &str, params: Value) -> i64 {
        let r = self.rpc(method, params);
        r["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{method} should fail: {r}"))
    }

    /// Posts a raw body; returns (status, parsed body or Null).
    fn post(&self, body: &str) -> (u16, Value) {
        let (status, reply) = client::http_request(
            &self.url,
            "POST",
            Some("/RPC"),
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        (
            status,
            serde_json::from_slice(&reply).unwrap_or(Value::Null),
        )
    }
}

/// Writes raw bytes, reads until the server closes (or 5 s).
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Deterministic pseudo-random latencies, 1 µs .. ~10 ms, in ns.
fn latencies(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) % 10_000;
            // Skewed: most fast, a tail up to ~10 ms.
            1_000 + r * r / 10
        })
        .collect()
}

fn hist_of(values: &[u64]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &v in values {
        h.record(v).unwrap();
    }
    h
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipshard-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// ------------------------------------------------------------ python side

/// Runs a Python script with `input` on stdin; returns stdout. Installs
/// `prometheus_client` and `hdrhistogram` with pip first if they are missing.
fn python(script: &str, input: &str) -> String {
    static DEPS: OnceLock<()> = OnceLock::new();
    DEPS.get_or_init(|| {
        let have = |()| {
            Command::new("python3")
                .args(["-c", "import prometheus_client, hdrh.log"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if have(()) {
            return;
        }
        let pip = |extra: &[&str]| {
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(extra)
                .args(["prometheus_client", "hdrhistogram"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !pip(&[]) {
            pip(&["--break-system-packages"]);
        }
        assert!(
            have(()),
            "python3 with prometheus_client and hdrhistogram is required (pip install failed)"
        );
    });
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Decodes an .hlog with Python's `hdrh.log.HistogramLogReader`; per tag:
/// intervals, total count, min, max and percentiles (ns).
fn python_read_hlog(path: &std::path::Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
path = sys.stdin.read().strip()
reader = HistogramLogReader(path, HdrHistogram(1, 60 * 10**9, 3))
acc, intervals = {}, {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    tag = h.get_tag()
    intervals[tag] = intervals.get(tag, 0) + 1
    # hdrh's add() keeps min at 0 when adding into an empty histogram, so
    # accumulate from the first non-empty interval on.
    if tag not in acc or acc[tag].get_total_count() == 0:
        acc[tag] = h
    elif h.get_total_count() > 0:
        acc[tag].add(h)
out = {}
for tag, h in acc.items():
    out[tag] = {
        "intervals": intervals[tag],
        "count": h.get_total_count(),
        "min": h.get_min_value(),
        "max": h.get_max_value(),
        "p50": h.get_value_at_percentile(50.0),
        "p90": h.get_value_at_percentile(90.0),
        "p99": h.get_value_at_percentile(99.0),
        "p999": h.get_value_at_percentile(99.9),
        "recorded": [[v.value_iterated_to, v.count_at_value_iterated_to]
                     for v in h.get_recorded_iterator()],
    }
print(json.dumps(out))
"#;
    serde_json::from_str(&python(SCRIPT, path.to_str().unwrap())).unwrap()
}

/// The value at a percentile by `hdrh`'s rule: the target count is
/// *rounded* (`int(p * n / 100 + 0.5)`), where the Rust crate (like current
/// Java) takes the ceiling; both then return the highest equivalent value.
fn value_at_percentile_rounded(h: &Histogram<u64>, pct: f64) -> u64 {
    let target = ((pct * h.len() as f64 / 100.0 + 0.5) as u64).max(1);
    let mut total = 0;
    for v in h.iter_recorded() {
        total += v.count_at_value();
        if total >= target {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    0
}

/// The Python-decoded histogram under `tag` holds exactly `h`'s counts.
fn assert_same_as_python(tag: &str, py: &Value, h: &Histogram<u64>) {
    let p = &py[tag];
    assert!(p.is_object(), "tag {tag} missing from {py}");
    let recorded: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let py_recorded: Vec<(u64, u64)> = serde_json::from_value(p["recorded"].clone()).unwrap();
    assert_eq!(py_recorded, recorded, "{tag} recorded values");
    assert_eq!(p["count"].as_u64(), Some(h.len()), "{tag} count");
    assert_eq!(p["min"].as_u64(), Some(h.min()), "{tag} min");
    assert_eq!(p["max"].as_u64(), Some(h.max()), "{tag} max");
    for (key, pct) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)] {
        assert_eq!(
            p[key].as_u64(),
            Some(value_at_percentile_rounded(h, pct)),
            "{tag} {key}"
        );
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn rpc_methods_happy_paths() {
    let h = Harness::start(RpcConfig::default(), 2);
    {
        let mut st = h.state.lock().unwrap();
        st[0].counters[Counter::RcvRequests as usize] = 10;
        st[1].counters[Counter::RcvRequests as usize] = 5;
        st[0].counters[Counter::RcvReplies as usize] = 1;
        st[1].counters[Counter::SlReplies2xx as usize] = 7;
        st[0].gauges[0].1 = 3;
        st[1].gauges[0].1 = 4;
    }
    let (a, b) = (latencies(1, 300), latencies(2, 200));
    h.record(0, 0, &a);
    h.record(1, 0, &b);

    let v = h.result("core.version", json!([]));
    assert!(v.as_str().unwrap().starts_with("sipshard 0.1.0 ("), "{v}");

    let up = h.result("core.uptime", json!([]));
    assert!(
        up["uptime"].is_u64() && up["now"].is_string() && up["up_since"].is_string(),
        "{up}"
    );

    let shards = h.result("core.shards", json!([]));
    assert_eq!(shards.as_array().unwrap().len(), 2);
    assert_eq!(shards[0]["id"], 0);
    assert_eq!(shards[0]["cpu"], 2);
    assert_eq!(shards[0]["messages"], 11);
    assert_eq!(shards[1]["gauges"]["usrloc.contacts"], 4);
    assert_eq!(shards[1]["tuning"]["udp_batch"], 32);

    let all = h.result("stats.fetch", json!(["all"]));
    assert_eq!(all["core.rcv_requests"], 15);
    assert_eq!(all["sl.2xx_replies"], 7);
    assert_eq!(all["usrloc.contacts"], 7);
    assert_eq!(all.as_object().unwrap().len(), Counter::COUNT + 2);
    let core = h.result("stats.fetch", json!(["core"]));
    assert!(core
        .as_object()
        .unwrap()
        .keys()
        .all(|k| k.starts_with("core.")));
    assert_eq!(core["core.rcv_replies"], 1);
    let one = h.result("stats.fetch", json!(["core.rcv_requests", "sl:"]));
    assert_eq!(one["core.rcv_requests"], 15);
    assert_eq!(one["sl.2xx_replies"], 7);
    assert!(one.get("core.fwd_requests").is_none());
    assert_eq!(h.result("stats.fetch", json!([])), all);

    let methods = h.result("system.listMethods", json!([]));
    for m in [
        "core.uptime",
        "stats.fetch",
        "ul.lookup",
        "kemi.route_latency",
    ] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{m}");
    }

    // Route latency: merged and per-shard figures equal the recorded ones.
    let lat = h.result("kemi.route_latency", json!([]));
    assert_eq!(lat["unit"], "us");
    let route = lat["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "request_route")
        .unwrap();
    let mut merged = hist_of(&a);
    merged.add(hist_of(&b)).unwrap();
    let expect = serde_json::to_value(crate::stats::LatencySummary::from_hist(&merged)).unwrap();
    for key in [
        "cnt", "min_us", "max_us", "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us",
    ] {
        assert_eq!(route["merged"][key], expect[key], "{key}");
    }
    assert_eq!(route["shards"][1]["cnt"], 200);
    assert_eq!(route["shards"][1]["shard"], 1);
    let buckets = route["merged"]["buckets"].as_array().unwrap();
    assert_eq!(
        buckets.iter().map(|b| b[1].as_u64().unwrap()).sum::<u64>(),
        500
    );
    assert_eq!(buckets[0][0], 1.0);
    assert!(route["merged"].get("hist").is_none());
    let with_hist = h.result("kemi.route_latency", json!(["hlog"]));
    let enc = with_hist["routes"][0]["merged"]["hist"].as_str().unwrap();
    assert_eq!(hlogmod::decode_base64(enc).unwrap(), merged);

    // usrloc: lookups reach the owner shard (the fake shard answers only for
    // AORs it owns), by position or by name.
    let aors: Vec<String> = (0..8).map(|i| format!("user{i}@example.com")).collect();
    for aor in &aors {
        h.ul.lock().unwrap().insert(
            aor.clone(),
            json!({"aor": aor, "contacts": [{"c": format!("sip:{aor}")}]}),
        );
    }
    assert!(
        (0..2).all(|s| aors.iter().any(|a| owner_shard(a, 2) == Some(s))),
        "test AORs span both shards"
    );
    for aor in &aors {
        let r = h.result("ul.lookup", json!(["location", aor]));
        assert_eq!(r["aor"], json!(aor));
    }
    let r = h.result(
        "ul.lookup",
        json!({"table": "location", "aor": "USER3@example.com"}),
    );
    assert_eq!(r["aor"], "user3@example.com");
    assert_eq!(
        h.error_code("ul.lookup", json!(["location", "nobody@example.com"])),
        404
    );
    let dump = h.result("ul.dump", json!([]));
    assert_eq!(dump["aors"].as_array().unwrap().len(), 8);
    assert_eq!(dump["truncated"], false);
    assert_eq!(
        h.result("ul.rm", json!(["location", "user5@example.com"])),
        json!({"removed": 1})
    );
    assert_eq!(
        h.error_code("ul.rm", json!(["location", "user5@example.com"])),
        404
    );
    assert_eq!(
        h.result("ul.dump", json!([]))["aors"]
            .as_array()
            .unwrap()
            .len(),
        7
    );

    // stats.reset zeroes counters and histograms on every shard.
    assert_eq!(h.result("stats.reset", json!([])), json!({"reset": 2}));
    assert_eq!(
        h.result("stats.fetch", json!(["core.rcv_requests"]))["core.rcv_requests"],
        0
    );
    let lat = h.result("kemi.route_latency", json!([]));
    assert_eq!(lat["routes"][0]["merged"]["cnt"], 0);
}

#[test]
fn rpc_error_classes() {
    let h = Harness::start(RpcConfig::default(), 2);
    let code = |body: &str| -> (i64, Value) {
        let (status, v) = h.post(body);
        assert_eq!(status, 200, "{body}");
        (v["error"]["code"].as_i64().unwrap_or(0), v["id"].clone())
    };
    // -32700: not JSON at all, or truncated.
    assert_eq!(
        code("{\"jsonrpc\": \"2.0\", \"method\": "),
        (-32700, Value::Null)
    );
    assert_eq!(code("\u{1}garbage"), (-32700, Value::Null));
    // -32600: valid JSON, not a valid request; the id is echoed when valid.
    assert_eq!(code("42").0, -32600);
    assert_eq!(
        code(r#"{"method": "core.version", "id": 1}"#),
        (-32600, json!(1))
    );
    assert_eq!(
        code(r#"{"jsonrpc": "1.0", "method": "core.version", "id": "a"}"#),
        (-32600, json!("a"))
    );
    assert_eq!(
        code(r#"{"jsonrpc": "2.0", "method": 5, "id": 2}"#).0,
        -32600
    );
    assert_eq!(
        code(r#"{"jsonrpc": "2.0", "method": "core.version", "params": "x", "id": 3}"#).0,
        -32600
    );
    assert_eq!(
        code(r#"{"jsonrpc": "2.0", "method": "core.version", "id": {}}"#).0,
        -32600
    );
    assert_eq!(code("[]").0, -32600);
    let big: Vec<Value> = (0..65)
        .map(|i| json!({"jsonrpc": "2.0", "method": "core.version", "id": i}))
        .collect();
    assert_eq!(code(&Value::Array(big).to_string()).0, -32600);
    // -32601: unknown method.
    assert_eq!(h.error_code("no.such_method", json!([])), -32601);
    // -32602: bad params.
    for (m, p) in [
        ("stats.fetch", json!([42])),
        ("stats.fetch", json!(["nosuchgroup"])),
        ("stats.fetch", json!(["core.nosuch"])),
        ("stats.reset", json!(["core.rcv_requests"])),
        ("ul.lookup", json!(["location"])),
        ("ul.lookup", json!(["other", "a@b"])),
        ("ul.lookup", json!(["location", ""])),
        ("ul.lookup", json!(["location", 7])),
        ("ul.rm", json!({"table": "location"})),
        ("core.version", json!(["x"])),
        ("kemi.route_latency", json!(["bogus"])),
    ] {
        assert_eq!(h.error_code(m, p.clone()), -32602, "{m} {p}");
    }
    // Notifications get no answer: 204, empty body.
    let (status, v) = h.post(r#"{"jsonrpc": "2.0", "method": "core.version"}"#);
    assert_eq!((status, v), (204, Value::Null));
    let (status, _) = h.post(r#"{"jsonrpc": "2.0", "method": "no.such"}"#);
    assert_eq!(status, 204);
    // Batch: answers for calls with ids only, in order.
    let (status, v) = h.post(
        r#"[{"jsonrpc": "2.0", "method": "core.version", "id": "x"},
            {"jsonrpc": "2.0", "method": "core.version"},
            {"jsonrpc": "2.0", "method": "nope", "id": 9},
            17]"#,
    );
    assert_eq!(status, 200);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["id"], "x");
    assert!(arr[0]["result"].is_string());
    assert_eq!(arr[1]["error"]["code"], -32601);
    assert_eq!(arr[2]["error"]["code"], -32600);
}

#[test]
fn rpc_shard_gone_is_server_error() {
    let h = Harness::start_with(RpcConfig::default(), 2, Registry::with_builtin(), &[1]);
    assert_eq!(h.error_code("stats.fetch", json!(["all"])), -32000);
    assert_eq!(h.error_code("ul.dump", json!([])), -32000);
    let (status, _) = client::http_request(
        &h.url,
        "GET",
        Some("/metrics"),
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 503);
}

#[test]
fn rpc_registry_accepts_new_methods() {
    let mut reg = Registry::with_builtin();
    reg.register(
        "test.echo",
        |ctx: Arc<RpcContext>, params: Params| async move {
            let word = params.str(0, "word")?.to_string();
            Ok(json!({"echo": word, "shards": ctx.ctl.shard_count()}))
        },
    );
    reg.register(
        "bad name!",
        |_ctx: Arc<RpcContext>, _p: Params| async move { Ok(Value::Null) },
    );
    assert!(reg.handler("bad name!").is_none());
    let h = Harness::start_with(RpcConfig::default(), 1, reg, &[]);
    assert_eq!(
        h.result("test.echo", json!(["hi"])),
        json!({"echo": "hi", "shards": 1})
    );
    assert_eq!(h.result("test.echo", json!({"word": "yo"}))["echo"], "yo");
    assert_eq!(h.error_code("test.echo", json!([])), -32602);
    assert!(h
        .result("system.listMethods", json!([]))
        .as_array()
        .unwrap()
        .contains(&json!("test.echo")));
}

#[test]
fn rpc_http_layer() {
    let h = Harness::start(RpcConfig::default(), 1);
    let call = r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#;
    let post = |extra: &str| {
        format!(
            "POST /RPC HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{call}",
            call.len()
        )
    };

    for (req, status) in [
        ("garbage\r\n\r\n".to_string(), 400),
        ("GET / HTTP/2.0\r\n\r\n".to_string(), 505),
        ("GET http://x/ HTTP/1.1\r\n\r\n".to_string(), 400),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            501,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n".to_string(),
            400,
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                2 * 1024 * 1024
            ),
            413,
        ),
        (
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000)),
            431,
        ),
        (format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20_000)), 431),
        (
            "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            404,
        ),
        (
            "GET /RPC HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            405,
        ),
        (
            "POST /metrics HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_string(),
            405,
        ),
        (post("Connection: close\r\n"), 200),
    ] {
        let resp = raw_exchange(h.addr, req.as_bytes());
        assert_eq!(status_of(&resp), status, "{req:.60} -> {resp}");
    }
    let resp = raw_exchange(h.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(resp.contains("Allow: POST\r\n"), "{resp}");

    // Keep-alive and pipelining: three requests in one write, one connection;
    // the last asks to close.
    let mut three = post("").repeat(2);
    three.push_str(&post("Connection: close\r\n"));
    let resp = raw_exchange(h.addr, three.as_bytes());
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 3, "{resp}");
    assert_eq!(resp.matches("\"result\":\"sipshard").count(), 3);

    // Expect: 100-continue gets an interim response before the body is sent.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        call.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0_u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(call.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert_eq!(status_of(&rest), 200, "{rest}");

    // A peer that closes mid-request costs nothing; the server keeps serving.
    drop(
        TcpStream::connect(h.addr)
            .unwrap()
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"),
    );
    assert!(h.result("core.version", json!([])).is_string());
}

#[test]
fn rpc_connection_limit() {
    let cfg = RpcConfig {
        max_connections: 1,
        ..RpcConfig::default()
    };
    let h = Harness::start(cfg, 1);
    let holder = TcpStream::connect(h.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the server accept it
    let resp = raw_exchange(h.addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&resp), 503, "{resp}");
    drop(holder);
    // The slot frees once the server sees the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = raw_exchange(
            h.addr,
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        if status_of(&resp) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {resp}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rpc_config_parses_and_validates() {
    let cfg: RpcConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nmax_connections = 8\nprometheus_buckets_us = [10.0, 100.0]\n[hlog]\npath = \"/tmp/x.hlog\"\n",
    )
    .unwrap();
    assert_eq!(cfg.hlog.as_ref().map(|h| h.interval_s), Some(10));
    assert!(cfg.enabled);
    assert!(toml::from_str::<RpcConfig>("bogus = 1").is_err());
    assert!(toml::from_str::<RpcConfig>("[hlog]\npath = \"x\"\nbogus = 1").is_err());
    assert_eq!(RpcConfig::default().listen.to_string(), DEFAULT_LISTEN);
    assert!(RpcConfig {
        max_connections: 0,
        ..RpcConfig::default()
    }
    .validate()
    .is_err());
    assert!(RpcConfig {
        prometheus_buckets_us: vec![5.0, 1.0],
        ..RpcConfig::default()
    }
    .validate()
    .is_err());
    let bad_hlog = HlogConfig {
        path: "/tmp/x".into(),
        interval_s: 0,
    };
    assert!(RpcConfig {
        hlog: Some(bad_hlog),
        ..RpcConfig::default()
    }
    .validate()
    .is_err());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ctl = ControlHandle::new(Vec::new(), Instant::now());
    let disabled = RpcConfig {
        enabled: false,
        ..RpcConfig::default()
    };
    assert_eq!(
        spawn(disabled, ctl.clone(), rt.handle())
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::Unsupported
    );
    // A taken port fails at spawn time, not later.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = RpcConfig {
        listen: taken.local_addr().unwrap(),
        ..RpcConfig::default()
    };
    assert!(spawn(cfg, ctl.clone(), rt.handle()).is_err());
    let cfg = RpcConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        hlog: Some(HlogConfig {
            path: "/nonexistent-dir/x.hlog".into(),
            interval_s: 1,
        }),
        ..RpcConfig::default()
    };
    assert!(spawn(cfg, ctl, rt.handle()).is_err());
}

#[test]
fn rpc_metrics_parsed_by_prometheus_client() {
    let cfg = RpcConfig {
        prometheus_buckets_us: vec![1.0, 2.0, 5.0, 50.0, 1000.0],
        ..RpcConfig::default()
    };
    let h = Harness::start(cfg, 2);
    {
        let mut st = h.state.lock().unwrap();
        st[0].counters[Counter::RcvRequests as usize] = 12;
        st[1].counters[Counter::RcvRequests as usize] = 30;
        st[1].counters[Counter::BadUris as usize] = 2;
        st[0].gauges[1].1 = 5;
    }
    // ns: 500, 1500, 1500, 3000, 40_000, 2_000_000 on shard 0, route 0.
    h.record(0, 0, &[500, 1_500, 1_500, 3_000, 40_000, 2_000_000]);
    h.record(1, 1, &[7_000]);
    let (status, body) = client::http_request(
        &h.url,
        "GET",
        Some("/metrics"),
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();

    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}, "samples": []}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let parsed: Value = serde_json::from_str(&python(SCRIPT, &text)).unwrap();
    let types = &parsed["types"];
    assert_eq!(types["sipshard_core_rcv_requests"], "counter");
    assert_eq!(types["sipshard_shard_inflight"], "gauge");
    assert_eq!(types["sipshard_route_duration_seconds"], "histogram");
    assert_eq!(types.as_object().unwrap().len(), Counter::COUNT + 2 + 2 + 1);

    let samples = parsed["samples"].as_array().unwrap();
    let value = |name: &str, labels: Value| -> f64 {
        samples
            .iter()
            .find(|s| s[0] == name && s[1] == labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels}"))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        value("sipshard_core_rcv_requests_total", json!({"shard": "0"})),
        12.0
    );
    assert_eq!(
        value("sipshard_core_rcv_requests_total", json!({"shard": "1"})),
        30.0
    );
    assert_eq!(
        value("sipshard_core_bad_uris_rcvd_total", json!({"shard": "1"})),
        2.0
    );
    assert_eq!(value("sipshard_shard_inflight", json!({"shard": "0"})), 5.0);
    assert_eq!(value("sipshard_shards", json!({})), 2.0);

    let bucket = |route: &str, shard: &str, le: &str| {
        value(
            "sipshard_route_duration_seconds_bucket",
            json!({"route": route, "shard": shard, "le": le}),
        )
    };
    let expected = [
        ("1e-06", 1.0),
        ("2e-06", 3.0),
        ("5e-06", 4.0),
        ("5e-05", 5.0),
        ("0.001", 5.0),
        ("+Inf", 6.0),
    ];
    for (le, count) in expected {
        // prometheus_client normalises `le` through float formatting.
        let le_text = samples
            .iter()
            .filter(|s| s[0] == "sipshard_route_duration_seconds_bucket" && s[1]["shard"] == "0")
            .map(|s| s[1]["le"].as_str().unwrap().to_string())
            .find(|l| l == le || l.parse::<f64>().ok() == le.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no le {le}"));
        assert_eq!(bucket("request_route", "0", &le_text), count, "le={le}");
    }
    let labels0 = json!({"route": "request_route", "shard": "0"});
    assert_eq!(
        value("sipshard_route_duration_seconds_count", labels0.clone()),
        6.0
    );
    let sum = value("sipshard_route_duration_seconds_sum", labels0);
    assert!((sum - 0.002_046_5).abs() < 0.000_01, "sum {sum}");
    assert_eq!(
        value(
            "sipshard_route_duration_seconds_count",
            json!({"route": "reply_route", "shard": "1"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "sipshard_route_duration_seconds_count",
            json!({"route": "reply_route", "shard": "0"})
        ),
        0.0
    );
}

#[test]
fn rpc_hlog_periodic_decoded_by_python() {
    let path = temp_path("periodic.hlog");
    let cfg = RpcConfig {
        hlog: Some(HlogConfig {
            path: path.clone(),
            interval_s: 1,
        }),
        ..RpcConfig::default()
    };
    let h = Harness::start(cfg, 2);

    let merged_count = |route: &str| -> (u64, usize) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let intervals = hlogmod::read_log(&bytes).unwrap();
        let tag = hlogmod::route_tag(route, ShardKey::All);
        let mine: Vec<_> = intervals
            .iter()
            .filter(|i| i.tag.as_deref() == Some(tag.as_str()))
            .collect();
        (mine.iter().map(|i| i.hist.len()).sum(), mine.len())
    };
    let wait_for = |route: &str, want: u64, intervals_min: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (count, n) = merged_count(route);
            if count == want && n >= intervals_min {
                return;
            }
            assert!(
                count <= want,
                "more counted than recorded: {count} > {want}"
            );
            assert!(
                Instant::now() < deadline,
                "hlog never reached {want} (has {count} in {n} intervals)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The first (empty) interval proves the baseline snapshot was taken.
    wait_for("request_route", 0, 1);
    let (a0, a1) = (latencies(10, 400), latencies(11, 250));
    h.record(0, 0, &a0);
    h.record(1, 0, &a1);
    wait_for("request_route", 650, 2);
    let b0 = latencies(12, 300);
    h.record(0, 0, &b0);
    h.record(1, 1, &[5_000, 6_000]);
    wait_for("request_route", 950, 3);
    wait_for("reply_route", 2, 3);
    drop(h);

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("#[StartTime: ") && text.contains("#[BaseTime: "),
        "{text:.400}"
    );
    assert!(text.contains(
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    ));
    assert!(text
        .lines()
        .any(|l| l.starts_with("Tag=route=request_route;shard=0,")));

    let py = python_read_hlog(&path);
    let shard0: Vec<u64> = a0.iter().chain(&b0).copied().collect();
    let h0 = hist_of(&shard0);
    let h1 = hist_of(&a1);
    let mut all = h0.clone();
    all.add(&h1).unwrap();
    assert_same_as_python("route=request_route;shard=0", &py, &h0);
    assert_same_as_python("route=request_route;shard=1", &py, &h1);
    assert_same_as_python("route=request_route;shard=all", &py, &all);
    assert_same_as_python("route=reply_route;shard=1", &py, &hist_of(&[5_000, 6_000]));
    assert_eq!(py["route=reply_route;shard=0"]["count"], 0);
    assert!(
        py["route=request_route;shard=all"]["intervals"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

#[test]
fn rpc_ctl_client_and_snapshot_hlog() {
    let h = Harness::start(RpcConfig::default(), 2);
    let (a, b) = (latencies(20, 1000), latencies(21, 100));
    h.record(0, 0, &a);
    h.record(1, 0, &b);
    h.record(1, 1, &[42_000]);
    let args = |method: &str, rest: &[&str]| CtlArgs {
        method: method.into(),
        args: rest.iter().map(|s| s.to_string()).collect(),
        json: false,
        url: h.url.clone(),
        hlog: None,
        timeout_s: 10,
        token: None,
    };
    let run = |a: &CtlArgs| -> (i32, String) {
        let mut out = Vec::new();
        let code = run_ctl_to(a, &mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    };

    let (code, out) = run(&args("stats.fetch", &["core"]));
    assert_eq!(code, 0);
    assert!(out.contains("\n  \"core.rcv_requests\": 0"), "{out}"); // indented JSON
    let (code, out) = run(&CtlArgs {
        json: true,
        ..args("core.version", &[])
    });
    assert_eq!(code, 0);
    let raw: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(raw["jsonrpc"], "2.0");
    assert_eq!(run(&args("no.such", &[])).0, 1);
    assert_eq!(run(&args("ul.lookup", &["location", "s:42"])).0, 1); // 404
    let unreachable = CtlArgs {
        url: "http://127.0.0.1:1".into(),
        ..args("core.version", &[])
    };
    assert!(matches!(
        run_ctl_to(&unreachable, &mut Vec::new()),
        Err(client::ClientError::Connect(..))
    ));
    let misuse = CtlArgs {
        hlog: Some(temp_path("x.hlog")),
        ..args("core.version", &[])
    };
    assert!(matches!(
        run_ctl_to(&misuse, &mut Vec::new()),
        Err(client::ClientError::Usage(_))
    ));

    let path = temp_path("snapshot.hlog");
    let (code, out) = run(&CtlArgs {
        hlog: Some(path.clone()),
        ..args("kemi.route_latency", &[])
    });
    assert_eq!(code, 0);
    let header = out.lines().next().unwrap();
    for col in [
        "route", "shard", "cnt", "sum_us", "min_us", "max_us", "avg_us", "p50_us", "p90_us",
        "p99_us", "p99.9_us",
    ] {
        assert!(
            header.split_whitespace().any(|c| c == col),
            "{col} missing: {header}"
        );
    }
    let row = out
        .lines()
        .find(|l| l.starts_with("request_route") && l.split_whitespace().nth(1) == Some("all"))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("1100"));
    assert!(out.contains("wrote 6 histograms"), "{out}");

    let py = python_read_hlog(&path);
    let mut all = hist_of(&a);
    all.add(hist_of(&b)).unwrap();
    assert_same_as_python("route=request_route;shard=0", &py, &hist_of(&a));
    assert_same_as_python("route=request_route;shard=1", &py, &hist_of(&b));
    assert_same_as_python("route=request_route;shard=all", &py, &all);
    assert_same_as_python("route=reply_route;shard=all", &py, &hist_of(&[42_000]));
    assert_eq!(py.as_object().unwrap().len(), 6);
}

#[test]
fn rpc_report_png() {
    // A three-interval log written with the real writer, two shards + merge.
    let path = temp_path("report.hlog");
    let base = std::time::SystemTime::now();
    let mut w =
        hlogmod::HlogWriter::new(std::fs::File::create(&path).unwrap(), base, "test").unwrap();
    for i in 0..3_u64 {
        let h0 = hist_of(&latencies(30 + i, 2000));
        let h1 = hist_of(
            &latencies(40 + i, 1500)
                .iter()
                .map(|v| v * 2)
                .collect::<Vec<_>>(),
        );
        let mut all = h0.clone();
        all.add(&h1).unwrap();
        let tagged = vec![
            (hlogmod::route_tag("request_route", ShardKey::Shard(0)), &h0),
            (hlogmod::route_tag("request_route", ShardKey::Shard(1)), &h1),
            (hlogmod::route_tag("request_route", ShardKey::All), &all),
        ];
        w.write_intervals(Duration::from_secs(i * 10), Duration::from_secs(10), tagged)
            .unwrap();
    }
    drop(w);
    let out = temp_path("report.png");
    run_report(ReportArgs {
        hlog: Some(path),
        url: None,
        out: out.clone(),
        route: None,
        width: 1200,
    })
    .unwrap();
    let png = std::fs::read(&out).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 440));

    // Live snapshot over HTTP: two routes -> two rows.
    let h = Harness::start(RpcConfig::default(), 2);
    h.record(0, 0, &latencies(50, 500));
    h.record(1, 1, &latencies(51, 50));
    let live = temp_path("live.png");
    run_report(ReportArgs {
        hlog: None,
        url: Some(h.url.clone()),
        out: live.clone(),
        route: None,
        width: 1000,
    })
    .unwrap();
    let png = std::fs::read(&live).unwrap();
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 880);

    let bad = ReportArgs {
        hlog: None,
        url: Some(h.url.clone()),
        out: temp_path("x.jpg"),
        route: None,
        width: 1000,
    };
    assert!(matches!(
        run_report(bad),
        Err(report::ReportError::Usage(_))
    ));
    let none = ReportArgs {
        hlog: None,
        url: Some(h.url.clone()),
        out: live,
        route: Some("nope".into()),
        width: 1000,
    };
    assert!(matches!(run_report(none), Err(report::ReportError::NoData)));
}

#[test]
fn token_is_required_when_configured() {
    let h = Harness::start(
        RpcConfig {
            token: "s3cret-token".into(),
            ..RpcConfig::default()
        },
        1,
    );
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"core.uptime"}"#;
    let t = Duration::from_secs(10);
    let post = |token: Option<&str>| {
        client::http_request_with_token(&h.url, "POST", Some("/RPC"), body, t, token)
            .unwrap()
            .0
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some("wrong-token!")), 401);
    assert_eq!(post(Some("s3cret-tokenX")), 401);
    assert_eq!(post(Some("s3cret-token")), 200);
    let metrics = |token| {
        client::http_request_with_token(&h.url, "GET", Some("/metrics"), b"", t, token)
            .unwrap()
            .0
    };
    assert_eq!(metrics(None), 401);
    assert_eq!(metrics(Some("s3cret-token")), 200);
    // the 401 names the scheme
    let raw = raw_exchange(
        h.addr,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("WWW-Authenticate: Bearer"), "{raw}");
    // sipshard ctl --token
    let mut args = CtlArgs {
        method: "core.uptime".into(),
        args: Vec::new(),
        json: true,
        url: h.url.clone(),
        hlog: None,
        timeout_s: 10,
        token: Some("s3cret-token".into()),
    };
    let mut out = Vec::new();
    assert_eq!(run_ctl_to(&args, &mut out).unwrap(), 0);
    args.token = Some("nope".into());
    assert!(matches!(
        run_ctl_to(&args, &mut Vec::new()),
        Err(client::ClientError::Status(401, _))
    ));
}

#[test]
fn bearer_matching() {
    use crate::rpc::http::bearer_matches;
    assert!(bearer_matches(Some("Bearer abc"), "abc"));
    assert!(bearer_matches(Some("bearer   abc "), "abc"));
    assert!(!bearer_matches(Some("Basic abc"), "abc"));
    assert!(!bearer_matches(Some("Bearer abd"), "abc"));
    assert!(!bearer_matches(Some("Bearer ab"), "abc"));
    assert!(!bearer_matches(Some("Bearer"), "abc"));
    assert!(!bearer_matches(None, "abc"));
}

#[test]
fn listens_on_loopback_without_token_by_default() {
    let cfg = RpcConfig::default();
    assert!(cfg.listen.ip().is_loopback(), "{}", cfg.listen);
    assert!(cfg.token.is_empty());
}
