//! End-to-end: the control plane of the real binary (2 shards) after real UDP
//! traffic, checked through the real HTTP listener and with independent
//! parsers: Python's `prometheus_client` for `/metrics` and Python's
//! `hdrhistogram` (`hdrh`) for `.hlog` files (`scripts/deps.sh` installs both).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

/// Replies 200 with the shard's number as the reason phrase, so the client
/// knows which shard handled each request.
const SHARD_SCRIPT: &str = r#"
function ksr_request_route()
    KSR.sl.sl_send_reply(200, "shard-" .. KSR.pv.get("$shard"))
    return KSR.x.exit()
end
"#;

/// Shard 1 differs from the `[shard]` defaults, so `core.shards` must report
/// per-shard values, not the global ones.
const TUNED_TOML: &str = r#"
[shard]
recv_batch = 16
dispatch_queue = 512
[[shards]]
cpu = 0
[[shards]]
cpu = 1
recv_batch = 4
recv_buffer_bytes = 1048576
lua_gc = "generational"
lua_gc_step = 20
lua_gc_pause = 100
spin_before_park_us = 5
"#;

/// Prometheus text on stdin -> JSON `[{name, type, samples: [[name, labels, value]]}]`,
/// parsed by the Prometheus client library's own parser.
const METRICS_PY: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out, allow_nan=False))
"#;

/// An `.hlog` file (argv[1]) -> JSON `{tag: [[total_count, max_value], ...]}`
/// in log order, decoded by HdrHistogram's Python implementation.
const HLOG_PY: &str = r#"
import sys, json
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], None)
out = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    out.setdefault(h.get_tag() or "", []).append([h.get_total_count(), h.get_max_value()])
print(json.dumps(out))
"#;

fn python(code: &str, args: &[&str], stdin: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed (scripts/deps.sh installs prometheus_client and hdrhistogram): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One HTTP/1.1 exchange over a fresh connection: raw request bytes in,
/// `(status, body)` out. The write side is shut so a short body ends the
/// request instead of waiting for the server's timeout.
fn http_raw(port: u16, request: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the rpc port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, raw);
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw[pos + 4..].to_vec())
}

fn post(port: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let mut req = format!(
        "POST /RPC HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    http_raw(port, &req)
}

/// A JSON-RPC call whose answer must be an error; returns `(code, id)`.
fn rpc_error(port: u16, body: &[u8]) -> (i64, Value) {
    let (status, body) = post(port, body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert!(v.get("result").is_none(), "{v}");
    let code = v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error code: {v}"));
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    (code, v["id"].clone())
}

fn metrics(port: u16) -> Value {
    let (status, body) = http_raw(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    python(METRICS_PY, &[], &body)
}

/// Samples of `sample` (exact sample name) in the parsed families, with
/// labels matching every `(key, value)` of `want`.
fn samples(fams: &Value, sample: &str, want: &[(&str, &str)]) -> Vec<(Value, f64)> {
    let mut out = Vec::new();
    for f in fams.as_array().unwrap() {
        for s in f["samples"].as_array().unwrap() {
            if s[0] != sample {
                continue;
            }
            if want.iter().all(|(k, v)| s[1][*k] == *v) {
                out.push((s[1].clone(), s[2].as_f64().unwrap()));
            }
        }
    }
    out
}

fn family_type(fams: &Value, name: &str) -> String {
    fams.as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["type"].as_str())
        .unwrap_or_else(|| panic!("no metric family {name}"))
        .to_string()
}

/// Sum of a per-shard sample over every shard, and per shard.
fn per_shard(fams: &Value, sample: &str, want: &[(&str, &str)]) -> (f64, [f64; 2]) {
    let mut by = [0.0; 2];
    let found = samples(fams, sample, want);
    assert_eq!(found.len(), 2, "{sample}: one series per shard: {found:?}");
    for (labels, v) in found {
        let shard: usize = labels["shard"].as_str().unwrap().parse().unwrap();
        by[shard] += v;
    }
    (by[0] + by[1], by)
}

/// One OPTIONS answered by `SHARD_SCRIPT`; returns the shard that handled it.
fn ping(sock: &UdpSocket, srv: &Server) -> usize {
    let ruri = format!("sip:ping@{}", srv.addr);
    let r = exchange(
        sock,
        srv.addr,
        request(sock, "OPTIONS", &ruri, "").as_bytes(),
    )
    .expect("every OPTIONS is answered");
    assert_eq!(status(&r), 200, "{r}");
    reason(&r)
        .strip_prefix("shard-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("reply names its shard: {r}"))
}

/// Sends exactly `n` OPTIONS from as many sockets as it takes for both shards
/// to get some (the default `udp_socket = "spread"` picks a shard at random
/// for each datagram), then round-robin.
/// Returns how many each shard answered.
fn send_options(srv: &Server, n: u64) -> [u64; 2] {
    assert!(n >= 2);
    let mut per = [0u64; 2];
    let mut socks = Vec::new();
    let mut sent = 0;
    while per.contains(&0) {
        assert!(sent < n, "could not reach both shards within {n} requests");
        assert!(socks.len() < 64, "64 sockets all hashed to one shard");
        let c = client();
        per[ping(&c, srv)] += 1;
        sent += 1;
        socks.push(c);
    }
    for i in 0.. {
        if sent == n {
            break;
        }
        per[ping(&socks[i % socks.len()], srv)] += 1;
        sent += 1;
    }
    assert_eq!(per[0] + per[1], n);
    per
}

/// `kemi.route_latency` figures of one route: (merged, [shard 0, shard 1]).
fn route_figures(lat: &Value, route: &str) -> (Value, Vec<Value>) {
    let r = lat["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("no {route} in {lat}"))
        .clone();
    let mut shards = r["shards"].as_array().unwrap().clone();
    shards.sort_by_key(|s| s["shard"].as_u64());
    (r["merged"].clone(), shards)
}

fn cnt(v: &Value) -> u64 {
    v["cnt"].as_u64().unwrap_or_else(|| panic!("no cnt in {v}"))
}

fn start_tuned() -> Server {
    Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "2",
        extra_toml: TUNED_TOML,
        ..Default::default()
    })
}

#[test]
fn counts_in_stats_latency_and_metrics_equal_what_was_sent() {
    const N: u64 = 300;
    let srv = start_tuned();
    let port = srv.rpc_port;
    let per = send_options(&srv, N);

    // stats.fetch: counters summed over shards
    let st = rpc(port, "stats.fetch", json!(["all"]));
    assert_eq!(st["core.rcv_requests"], N, "{st}");
    assert_eq!(st["sl.sent_replies"], N, "{st}");
    assert_eq!(st["sl.2xx_replies"], N, "{st}");
    assert_eq!(st["sl.4xx_replies"], 0, "{st}");
    assert_eq!(st["core.bad_msg_hdr"], 0, "{st}");
    // a group and a single name select just those
    let core = rpc(port, "stats.fetch", json!(["core"]));
    assert!(core
        .as_object()
        .unwrap()
        .keys()
        .all(|k| k.starts_with("core.")));
    let one = rpc(port, "stats.fetch", json!(["sl.2xx_replies"]));
    assert_eq!(one, json!({"sl.2xx_replies": N}));

    // kemi.route_latency: merged cnt equals what was sent, shards add up
    let lat = rpc(port, "kemi.route_latency", json!([]));
    assert_eq!(lat["unit"], "us");
    let (merged, shards) = route_figures(&lat, "request_route");
    assert_eq!(cnt(&merged), N, "{merged}");
    assert_eq!(shards.len(), 2);
    assert_eq!(cnt(&shards[0]), per[0], "shard 0: {lat}");
    assert_eq!(cnt(&shards[1]), per[1], "shard 1: {lat}");
    let f = |k: &str| merged[k].as_f64().unwrap();
    assert!(f("min_us") > 0.0);
    assert!(f("min_us") <= f("p50_us") && f("p50_us") <= f("p90_us"));
    assert!(f("p90_us") <= f("p99_us") && f("p99_us") <= f("p999_us"));
    assert!(f("p999_us") <= f("p9999_us") && f("p9999_us") <= f("max_us"));
    assert!((f("avg_us") * N as f64 - f("sum_us")).abs() < 1e-6 * f("sum_us"));
    let bucket_total: u64 = merged["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[1].as_u64().unwrap())
        .sum();
    assert_eq!(bucket_total, N, "buckets hold every request: {merged}");
    let (reply, _) = route_figures(&lat, "reply_route");
    assert_eq!(cnt(&reply), 0);

    // /metrics through the Prometheus client's parser
    let fams = metrics(port);
    assert_eq!(
        family_type(&fams, "sipshard_route_duration_seconds"),
        "histogram"
    );
    assert_eq!(family_type(&fams, "sipshard_core_rcv_requests"), "counter");
    let rr = [("route", "request_route")];
    let (count, by) = per_shard(&fams, "sipshard_route_duration_seconds_count", &rr);
    assert_eq!(count, N as f64);
    assert_eq!(by, [per[0] as f64, per[1] as f64]);
    let (sum_s, _) = per_shard(&fams, "sipshard_route_duration_seconds_sum", &rr);
    assert!(
        (sum_s * 1e6 - f("sum_us")).abs() <= 1e-3 * f("sum_us"),
        "_sum {sum_s} s vs sum_us {}",
        f("sum_us")
    );
    for shard in ["0", "1"] {
        let mut buckets: Vec<(f64, f64)> = samples(
            &fams,
            "sipshard_route_duration_seconds_bucket",
            &[("route", "request_route"), ("shard", shard)],
        )
        .into_iter()
        .map(|(l, v)| {
            let le = l["le"].as_str().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, v)
        })
        .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite());
        assert_eq!(inf.1, by[shard.parse::<usize>().unwrap()], "+Inf == _count");
    }
    let (rcv, rcv_by) = per_shard(&fams, "sipshard_core_rcv_requests_total", &[]);
    assert_eq!(rcv, N as f64);
    assert_eq!(rcv_by, by);
    assert_eq!(
        per_shard(&fams, "sipshard_sl_2xx_replies_total", &[]).0,
        N as f64
    );
    assert_eq!(
        per_shard(&fams, "sipshard_sl_sent_replies_total", &[]).0,
        N as f64
    );
    assert_eq!(samples(&fams, "sipshard_shards", &[])[0].1, 2.0);

    // core.shards: both shards, their own knobs and message counts
    let sh = rpc(port, "core.shards", json!([]));
    let sh = sh.as_array().expect("an array of shards");
    assert_eq!(sh.len(), 2, "{sh:?}");
    for (i, s) in sh.iter().enumerate() {
        assert_eq!(s["id"], i, "{s}");
        assert_eq!(s["cpu"], i, "{s}");
        assert_eq!(s["rcv_requests"], per[i], "{s}");
        assert_eq!(s["messages"], per[i], "{s}");
        let t = &s["tuning"];
        assert_eq!(t["cpu"], i, "{t}");
        assert_eq!(t["dispatch_queue"], 512, "{t}");
        assert_eq!(t["udp_socket"], "spread", "{t}");
        for knob in [
            "send_buffer_bytes",
            "effective_recv_buffer_bytes",
            "effective_send_buffer_bytes",
            "recv_batch",
            "max_inflight",
            "max_msg_bytes",
            "max_headers",
            "control_queue",
            "dispatch_queue",
        ] {
            assert!(t[knob].as_u64().is_some_and(|v| v > 0), "{knob}: {t}");
        }
        assert!(s["gauges"]["shard.lua_memory_bytes"].as_i64().unwrap() > 0);
    }
    let (t0, t1) = (&sh[0]["tuning"], &sh[1]["tuning"]);
    assert_eq!(
        (
            &t0["recv_batch"],
            &t0["lua_gc"],
            &t0["lua_gc_step"],
            &t0["lua_gc_pause"]
        ),
        (&json!(16), &json!("incremental"), &json!(200), &json!(200))
    );
    assert_eq!(
        (
            &t1["recv_batch"],
            &t1["lua_gc"],
            &t1["lua_gc_step"],
            &t1["lua_gc_pause"]
        ),
        (&json!(4), &json!("generational"), &json!(20), &json!(100))
    );
    assert_eq!(t0["spin_before_park_us"], 0);
    assert_eq!(t1["spin_before_park_us"], 5);
    assert_eq!(t0["recv_buffer_bytes"], 4_194_304);
    assert_eq!(t1["recv_buffer_bytes"], 1_048_576);
    // Linux grants twice the request (up to rmem_max), never less than asked
    // when the request is under rmem_max.
    assert!(t1["effective_recv_buffer_bytes"].as_u64().unwrap() >= 1_048_576);

    // stats.reset zeroes counters and histograms on every shard...
    assert_eq!(rpc(port, "stats.reset", json!([])), json!({"reset": 2}));
    let st = rpc(port, "stats.fetch", json!(["all"]));
    for k in ["core.rcv_requests", "sl.sent_replies", "sl.2xx_replies"] {
        assert_eq!(st[k], 0, "{k} after reset: {st}");
    }
    let lat = rpc(port, "kemi.route_latency", json!([]));
    let (merged, shards) = route_figures(&lat, "request_route");
    assert_eq!(cnt(&merged), 0);
    assert!(shards.iter().all(|s| cnt(s) == 0), "{lat}");
    let fams = metrics(port);
    assert_eq!(
        per_shard(&fams, "sipshard_route_duration_seconds_count", &rr).0,
        0.0
    );
    // ...and counting goes on from zero.
    let per = send_options(&srv, 20);
    let st = rpc(port, "stats.fetch", json!(["core.rcv_requests", "sl"]));
    assert_eq!(st["core.rcv_requests"], 20, "{st}");
    assert_eq!(st["sl.2xx_replies"], 20, "{st}");
    let lat = rpc(port, "kemi.route_latency", json!([]));
    let (merged, shards) = route_figures(&lat, "request_route");
    assert_eq!(cnt(&merged), 20);
    assert_eq!([cnt(&shards[0]), cnt(&shards[1])], per);

    let (ok, out) = srv.stop();
    assert!(ok, "clean exit");
    assert!(out.contains("request_route"), "{out}");
}

#[test]
fn core_methods_answer_and_malformed_requests_get_errors() {
    let t0 = Instant::now();
    let srv = start_tuned();
    let port = srv.rpc_port;

    let up = rpc(port, "core.uptime", json!([]));
    let uptime = up["uptime"].as_u64().expect("uptime in seconds");
    assert!(uptime <= t0.elapsed().as_secs() + 1, "{up}");
    for k in ["now", "up_since"] {
        // ctime layout: "Thu Nov 26 18:23:05 2026"
        let s = up[k].as_str().unwrap_or_else(|| panic!("{k}: {up}"));
        assert_eq!(s.split_whitespace().count(), 5, "{up}");
    }
    let v = rpc(port, "core.version", json!([]));
    let v = v.as_str().expect("version string");
    assert!(
        v.starts_with(&format!("sipshard {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let methods = rpc(port, "system.listMethods", json!([]));
    let methods: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "core.uptime",
        "core.version",
        "core.shards",
        "stats.fetch",
        "stats.reset",
        "ul.dump",
        "ul.lookup",
        "ul.rm",
        "kemi.route_latency",
        "system.listMethods",
    ] {
        assert!(methods.contains(&m), "{m} in {methods:?}");
    }

    // JSON-RPC errors, each with the code the spec gives it
    assert_eq!(rpc_error(port, b"garbage{"), (-32700, Value::Null));
    assert_eq!(rpc_error(port, b"{\"jsonrpc\":\"2.0\",").0, -32700);
    assert_eq!(rpc_error(port, b"\xff\xfe\x00").0, -32700);
    assert_eq!(
        rpc_error(port, br#"{"jsonrpc":"2.0","id":7,"method":"no.such"}"#),
        (-32601, json!(7))
    );
    assert_eq!(
        rpc_error(port, br#"{"id":8,"method":"core.version"}"#),
        (-32600, json!(8))
    );
    assert_eq!(
        rpc_error(port, br#"{"jsonrpc":"2.0","id":9,"method":42}"#).0,
        -32600
    );
    assert_eq!(rpc_error(port, b"[]").0, -32600);
    assert_eq!(rpc_error(port, b"17").0, -32600);
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":"s","method":"stats.fetch","params":[1]}"#
        ),
        (-32602, json!("s"))
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"stats.fetch","params":["no_such_group"]}"#
        )
        .0,
        -32602
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"ul.lookup","params":["location"]}"#
        )
        .0,
        -32602
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"ul.lookup","params":["other","alice"]}"#
        )
        .0,
        -32602
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"kemi.route_latency","params":["nope"]}"#
        )
        .0,
        -32602
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"stats.reset","params":["core"]}"#
        )
        .0,
        -32602
    );
    assert_eq!(
        rpc_error(
            port,
            br#"{"jsonrpc":"2.0","id":1,"method":"ul.lookup","params":["location","nobody"]}"#
        )
        .0,
        404
    );
    // a batch answers each call on its own
    let (status, body) = post(
        port,
        br#"[{"jsonrpc":"2.0","id":1,"method":"core.version"},5,{"jsonrpc":"2.0","id":3,"method":"x.y"}]"#,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let v = v.as_array().expect("batch answer");
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0]["result"].as_str().unwrap().starts_with("sipshard"));
    assert_eq!(v[1]["error"]["code"], -32600);
    assert_eq!(v[2]["error"]["code"], -32601);
    // a notification gets no answer
    let (status, body) = post(port, br#"{"jsonrpc":"2.0","method":"core.version"}"#);
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    assert!(body.is_empty());

    // broken HTTP: refused with a status, or the connection simply closes
    assert_eq!(http_raw(port, b"HELLO\r\n\r\n").0, 400);
    assert_eq!(
        http_raw(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").0,
        404
    );
    assert_eq!(
        http_raw(port, b"GET /RPC HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    assert_eq!(
        http_raw(
            port,
            b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
        )
        .0,
        413
    );
    assert_eq!(
        http_raw(
            port,
            b"POST /RPC HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .0,
        501
    );
    // body shorter than its Content-Length, then EOF: no answer, no crash
    let (status, _) = http_raw(
        port,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"",
    );
    assert_eq!(status, 0);
    let mut garbage = vec![0u8; 20_000];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8;
    }
    http_raw(port, &garbage);

    // still serving both planes
    assert!(rpc(port, "core.version", json!([])).is_string());
    let c = client();
    assert!(ping(&c, &srv) < 2);
    let st = rpc(port, "stats.fetch", json!(["core.rcv_requests"]));
    assert_eq!(st["core.rcv_requests"], 1);
    let (ok, _) = srv.stop();
    assert!(ok, "clean exit after malformed control traffic");
}

/// HdrHistogram log tags as the server writes them.
fn tag(route: &str, shard: &str) -> String {
    format!("route={route};shard={shard}")
}

/// Total count and max (ns) of one tag over every interval of a decoded log.
fn hlog_totals(decoded: &Value, tag: &str) -> (u64, u64, usize) {
    let Some(list) = decoded[tag].as_array() else {
        return (0, 0, 0);
    };
    let total = list.iter().map(|i| i[0].as_u64().unwrap()).sum();
    let max = list
        .iter()
        .map(|i| i[1].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    (total, max, list.len())
}

fn check_png(path: &Path) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(width, 1400, "default width");
    assert!(height >= 400, "height {height}");
    assert!(
        png.len() > 20_000,
        "a drawn plot, not a blank image: {} bytes",
        png.len()
    );
    assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
}

#[test]
fn hlog_interval_log_and_snapshot_decode_to_sent_counts() {
    const N: u64 = 200;
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "2",
        extra_toml: "[rpc]\nlisten = \"127.0.0.1:@RPC_PORT@\"\n[rpc.hlog]\npath = \"@DIR@/route.hlog\"\ninterval_s = 1\n",
        ..Default::default()
    });
    let hlog = srv.dir.path("route.hlog");
    let hlog_s = hlog.to_str().unwrap().to_string();
    let per = send_options(&srv, N);
    let lat = rpc(srv.rpc_port, "kemi.route_latency", json!([]));
    let (merged, _) = route_figures(&lat, "request_route");
    let max_ns = (merged["max_us"].as_f64().unwrap() * 1000.0).round() as u64;

    // The writer appends one interval a second; wait until every request is
    // in the log (at least two intervals), bounded.
    let all = tag("request_route", "all");
    let deadline = Instant::now() + Duration::from_secs(10);
    let decoded = loop {
        std::thread::sleep(Duration::from_millis(500));
        let d = python(HLOG_PY, &[&hlog_s], b"");
        let (total, _, intervals) = hlog_totals(&d, &all);
        if (total >= N && intervals >= 2) || Instant::now() > deadline {
            break d;
        }
    };
    let (total, max, intervals) = hlog_totals(&decoded, &all);
    assert!(intervals >= 2, "{decoded}");
    assert_eq!(
        total, N,
        "merged intervals add up to what was sent: {decoded}"
    );
    assert_eq!(max, max_ns, "same max as kemi.route_latency");
    assert_eq!(hlog_totals(&decoded, &tag("request_route", "0")).0, per[0]);
    assert_eq!(hlog_totals(&decoded, &tag("request_route", "1")).0, per[1]);
    assert_eq!(hlog_totals(&decoded, &tag("reply_route", "all")).0, 0);
    // Another interval later, nothing is counted twice.
    std::thread::sleep(Duration::from_millis(1200));
    let later = python(HLOG_PY, &[&hlog_s], b"");
    let (total_later, _, intervals_later) = hlog_totals(&later, &all);
    assert!(intervals_later > intervals, "{later}");
    assert_eq!(total_later, N);

    // `sipshard ctl kemi.route_latency --hlog`: a one-interval snapshot
    let snap = srv.dir.path("snap.hlog");
    let (code, out, err) = ctl(
        &srv,
        &["kemi.route_latency", "--hlog", snap.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wrote 6 histograms"), "{out}");
    let d = python(HLOG_PY, &[snap.to_str().unwrap()], b"");
    assert_eq!(hlog_totals(&d, &all), (N, max_ns, 1), "{d}");
    assert_eq!(hlog_totals(&d, &tag("request_route", "0")).0, per[0]);
    assert_eq!(hlog_totals(&d, &tag("request_route", "1")).0, per[1]);

    // `sipshard report` draws both logs
    for (log, png) in [(&hlog, "interval.png"), (&snap, "snap.png")] {
        let png = srv.dir.path(png);
        let out = Command::new(bin())
            .args(["report", "--hlog"])
            .arg(log)
            .arg("--out")
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_png(&png);
    }
    // ...and from a live snapshot
    let png = srv.dir.path("live.png");
    let out = Command::new(bin())
        .args(["report", "--url", &srv.rpc_url(), "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_png(&png);
    // a log that is not one is refused, not drawn
    let bad = srv.dir.path("bad.hlog");
    std::fs::write(&bad, "Tag=x,1.0,1.0,1.0,NOT-BASE64!!\n").unwrap();
    let out = Command::new(bin())
        .args(["report", "--hlog"])
        .arg(&bad)
        .arg("--out")
        .arg(srv.dir.path("bad.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!srv.dir.path("bad.png").exists());

    let (ok, _) = srv.stop();
    assert!(ok);
}

/// Runs `sipshard ctl ARGS --url <server>`: (exit code, stdout, stderr).
fn ctl(srv: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("ctl")
        .args(args)
        .args(["--url", &srv.rpc_url()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctl` that must succeed, its stdout parsed as JSON.
fn ctl_json(srv: &Server, args: &[&str]) -> Value {
    let (code, out, err) = ctl(srv, args);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ctl {args:?} printed no JSON ({e}): {out}"))
}

/// The `cnt` column of a `route`/`shard` row of ctl's latency table.
fn table_cnt(table: &str, route: &str, shard: &str) -> u64 {
    let head: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&head[..3], ["route", "shard", "cnt"], "{table}");
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() == head.len() && c[0] == route && c[1] == shard)
        .unwrap_or_else(|| panic!("no {route}/{shard} row: {table}"))[2]
        .parse()
        .unwrap()
}

#[test]
fn ctl_works_for_every_method() {
    let db = TestDb::sqlite();
    db.init(&[
        ("alice@example.com", "secret"),
        ("bob@example.com", "pw-bob"),
    ]);
    let srv = Server::start(ServerOpts {
        cores: "2",
        extra_toml: &format!("[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\n", db.url),
        ..Default::default()
    });
    let c = client();
    for (user, pw, contact) in [
        ("alice", "secret", "sip:alice@10.0.0.1:5060"),
        ("bob", "pw-bob", "sip:bob@10.0.0.2:5060"),
    ] {
        let r = register_with_auth(
            &c,
            srv.addr,
            user,
            "example.com",
            pw,
            &format!("ctl-{user}"),
            1,
            &format!("Contact: <{contact}>\r\nExpires: 300\r\n"),
        );
        assert_eq!(status(&r), 200, "{r}");
    }
    const SENT: u64 = 4; // two REGISTERs each (challenge, then credentials)

    let up = ctl_json(&srv, &["core.uptime"]);
    assert!(up["uptime"].is_u64(), "{up}");
    let v = ctl_json(&srv, &["core.version"]);
    assert!(v.as_str().unwrap().starts_with("sipshard "), "{v}");
    let sh = ctl_json(&srv, &["core.shards"]);
    assert_eq!(sh.as_array().unwrap().len(), 2, "{sh}");
    let requests: u64 = sh
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rcv_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, SENT);
    let st = ctl_json(&srv, &["stats.fetch", "core", "auth"]);
    assert_eq!(st["core.rcv_requests"], SENT, "{st}");
    assert_eq!(st["auth.challenges"], 2, "{st}");
    assert_eq!(st["auth.successes"], 2, "{st}");
    let methods = ctl_json(&srv, &["system.listMethods"]);
    // the 15 core and kemi methods plus 17 of htable, pike, flood and
    // permissions, 4 of dialog and 4 of dispatcher
    assert_eq!(methods.as_array().unwrap().len(), 40, "{methods}");
    for m in [
        "htable.dump",
        "pike.top",
        "flood.list",
        "flood.unban",
        "permissions.addressReload",
        "dlg.list",
        "dispatcher.list",
    ] {
        assert!(
            methods.as_array().unwrap().iter().any(|x| x == m),
            "{methods}"
        );
    }

    let dlg = ctl_json(&srv, &["dlg.stats_active"]);
    assert_eq!(dlg["active"]["all"], 0, "{dlg}");

    // kemi.route_latency prints a table: merged row, then one per shard
    let (code, table, err) = ctl(&srv, &["kemi.route_latency"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("p99.9_us"), "{table}");
    assert_eq!(table_cnt(&table, "request_route", "all"), SENT);
    assert_eq!(
        table_cnt(&table, "request_route", "0") + table_cnt(&table, "request_route", "1"),
        SENT
    );
    assert_eq!(table_cnt(&table, "reply_route", "all"), 0);

    // ul.*: what was registered, then removed
    let dump = ctl_json(&srv, &["ul.dump"]);
    let aors: Vec<&str> = dump["aors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["aor"].as_str().unwrap())
        .collect();
    assert_eq!(aors.len(), 2, "{dump}");
    assert!(aors.contains(&"alice") && aors.contains(&"bob"), "{dump}");
    assert_eq!(dump["shards"], 2);
    let alice = ctl_json(&srv, &["ul.lookup", "location", "alice"]);
    assert_eq!(alice["aor"], "alice");
    let contacts = alice["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{alice}");
    assert_eq!(contacts[0]["contact"], "sip:alice@10.0.0.1:5060", "{alice}");
    let exp = contacts[0]["expires"].as_i64().unwrap();
    assert!((290..=300).contains(&exp), "{alice}");
    assert_eq!(contacts[0]["callid"], "ctl-alice");
    let rm = ctl_json(&srv, &["ul.rm", "location", "alice"]);
    assert_eq!(rm["removed"], 1, "{rm}");
    let (code, out, err) = ctl(&srv, &["ul.lookup", "location", "alice"]);
    assert_eq!(code, 1, "lookup after rm fails: {out}");
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = ctl(&srv, &["ul.rm", "location", "alice"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let dump = ctl_json(&srv, &["ul.dump"]);
    assert_eq!(dump["aors"].as_array().unwrap().len(), 1, "{dump}");
    assert_eq!(dump["aors"][0]["aor"], "bob");
    // the registrar agrees: a request for alice is no longer routed
    let r = exchange(
        &c,
        srv.addr,
        request(&c, "MESSAGE", &format!("sip:alice@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 404, "{r}");

    // --json: the raw JSON-RPC response, for results and errors alike
    for args in [
        &["core.uptime"][..],
        &["core.version"],
        &["core.shards"],
        &["stats.fetch", "all"],
        &["ul.dump"],
        &["ul.lookup", "location", "bob"],
        &["kemi.route_latency"],
        &["system.listMethods"],
    ] {
        let mut a = args.to_vec();
        a.push("--json");
        let v = ctl_json(&srv, &a);
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert!(v.get("result").is_some(), "{args:?}: {v}");
    }
    let lat = ctl_json(&srv, &["kemi.route_latency", "--json"]);
    let (merged, _) = route_figures(&lat["result"], "request_route");
    assert_eq!(cnt(&merged), SENT + 1, "the MESSAGE counted too");
    let (code, out, _) = ctl(&srv, &["ul.lookup", "location", "alice", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], 404, "{v}");
    let (code, out, _) = ctl(&srv, &["no.such", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], -32601, "{v}");

    // stats.reset through ctl, then the tables are empty
    let reset = ctl_json(&srv, &["stats.reset"]);
    assert_eq!(reset["reset"], 2);
    let st = ctl_json(&srv, &["stats.fetch", "core.rcv_requests"]);
    assert_eq!(st["core.rcv_requests"], 0, "{st}");
    let (_, table, _) = ctl(&srv, &["kemi.route_latency"]);
    assert_eq!(table_cnt(&table, "request_route", "all"), 0);
    // the location table is not statistics: bob survives a reset
    let bob = ctl_json(&srv, &["ul.lookup", "location", "bob"]);
    assert_eq!(bob["contacts"][0]["contact"], "sip:bob@10.0.0.2:5060");

    // no server there: a clear failure, not a hang
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let out = Command::new(bin())
        .args(["ctl", "core.version", "--timeout-s", "2", "--url", &dead])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty());

    let (ok, _) = srv.stop();
    assert!(ok);
}
