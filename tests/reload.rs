//! Script reload on the real binary: sipp REGISTERs at a steady rate while
//! the script is reloaded 20 times over JSON-RPC (`kemi.reload` and
//! Kamailio's `app_lua.reload`); no call may fail or be retransmitted, and
//! after each reload a real UDP OPTIONS shows the new script's version. A
//! broken script is refused with Lua's message and the old one keeps
//! answering; SIGHUP reloads too.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn script(version: u32) -> String {
    format!(
        "-- reload test script, version {version}\n\
         local VERSION = {version}\n\
         function ksr_request_route()\n\
           if KSR.is_OPTIONS() then\n\
             KSR.sl.sl_send_reply(200, 'v' .. VERSION)\n\
             return\n\
           end\n\
           if KSR.is_REGISTER() then\n\
             KSR.hdr.append_to_reply('X-Script-Version: ' .. VERSION .. '\\r\\n')\n\
             KSR.registrar.save('location', 0)\n\
             return\n\
           end\n\
           KSR.sl.sl_send_reply(404, 'Not Here')\n\
         end\n"
    )
}

/// A JSON-RPC call; the whole response (result or error).
fn rpc_raw(port: u16, method: &str) -> serde_json::Value {
    use std::io::Write;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("rpc connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "POST /RPC HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad rpc body {e}: {resp}"))
}

/// The reason phrases of `n` OPTIONS (fresh Call-IDs, so they spread over
/// the shards).
fn options_reasons(srv: &Server, n: usize) -> Vec<String> {
    let sock = client();
    (0..n)
        .map(|_| {
            let req = request(&sock, "OPTIONS", &format!("sip:{}", srv.addr), "");
            let reply = exchange(&sock, srv.addr, req.as_bytes())
                .unwrap_or_else(|| panic!("no answer to OPTIONS:\n{}", srv.log()));
            reason(&reply)
        })
        .collect()
}

/// A sipp in `dir` (stats.csv, errors.log, sipp.out) on 127.0.0.1:`port`.
fn spawn_sipp(dir: &std::path::Path, port: u16, args: &[&str]) -> std::process::Child {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::fs::File::create(dir.join("sipp.out")).unwrap();
    Command::new("sipp")
        .args(args)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
        .args(["-trace_stat", "-stf", "stats.csv", "-fd", "1"])
        .args(["-trace_err", "-error_file", "errors.log"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("sipp (sip-tester) is installed: scripts/deps.sh")
}

/// Waits (at most 90 s) for a sipp; its exit code and last stats row.
fn wait_sipp(
    mut sipp: std::process::Child,
    dir: &std::path::Path,
) -> (Option<i32>, std::collections::HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let code = loop {
        if let Some(st) = sipp.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = sipp.kill();
            let _ = sipp.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let csv = std::fs::read_to_string(dir.join("stats.csv")).unwrap_or_default();
    (code, last_stats_row(&csv))
}

fn last_stats_row(csv: &str) -> std::collections::HashMap<String, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let head = lines.next().unwrap_or("");
    let last = lines.next_back().unwrap_or("");
    head.split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn reload_under_register_load_loses_nothing() {
    let srv = Server::start(ServerOpts {
        script: Some(&script(0)),
        cores: "2",
        ..Default::default()
    });
    let script_path = srv.dir.path("route.lua");
    assert_eq!(options_reasons(&srv, 2), ["v0", "v0"]);

    // 200 REGISTER/s for 10 s.
    let calls = 2000;
    let sipp_dir = srv.dir.path("sipp");
    let sipp = spawn_sipp(
        &sipp_dir,
        free_udp_port(),
        &[
            &srv.addr.to_string(),
            "-sf",
            &format!("{ROOT}/tests/sipp/register-contact.xml"),
            "-s",
            "reloader",
            "-key",
            "contact",
            "sip:reloader@127.0.0.1:5999",
            "-r",
            "200",
            "-l",
            "400",
            "-m",
            &calls.to_string(),
        ],
    );

    std::thread::sleep(Duration::from_millis(300));
    for v in 1..=20u32 {
        std::fs::write(&script_path, script(v)).unwrap();
        let method = if v % 2 == 0 {
            "kemi.reload"
        } else {
            "app_lua.reload"
        };
        let r = rpc_raw(srv.rpc_port, method);
        assert_eq!(
            r["result"]["shards"],
            2,
            "reload {v} via {method}: {r}\n{}",
            srv.log()
        );
        let want = format!("v{v}");
        for got in options_reasons(&srv, 4) {
            assert_eq!(got, want, "after reload {v}");
        }
        std::thread::sleep(Duration::from_millis(350));
    }

    let (code, stats) = wait_sipp(sipp, &sipp_dir);
    let read = |f: &str| std::fs::read_to_string(sipp_dir.join(f)).unwrap_or_default();
    let get = |k: &str| stats.get(k).cloned().unwrap_or_default();
    let report = format!(
        "sipp exit {code:?}, successful {}, failed {}, retransmissions {}\n{}\n{}\n--- server log (tail)\n{}",
        get("SuccessfulCall(C)"),
        get("FailedCall(C)"),
        get("Retransmissions(C)"),
        read("sipp.out"),
        read("errors.log"),
        {
            let l = srv.log();
            l[l.len().saturating_sub(4000)..].to_string()
        }
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(get("SuccessfulCall(C)"), calls.to_string(), "{report}");
    assert_eq!(get("FailedCall(C)"), "0", "{report}");
    // A request lost during a swap would show as a retransmission.
    assert_eq!(get("Retransmissions(C)"), "0", "{report}");

    let st = rpc(srv.rpc_port, "kemi.status", serde_json::json!([]));
    assert_eq!(st["reloads"], 20, "{st}");
    assert!(st["last_reload"].as_u64().is_some(), "{st}");
    let st = rpc(srv.rpc_port, "stats.fetch", serde_json::json!(["kemi:"]));
    assert_eq!(st["kemi.reloads"], 20, "{st}");
    assert_eq!(st["kemi.reloads_failed"], 0, "{st}");
    assert_eq!(srv.log().matches("script reloaded").count(), 20);
    let (ok, _) = srv.stop();
    assert!(ok);
}

#[test]
fn a_broken_script_is_refused_and_sighup_reloads() {
    let srv = Server::start(ServerOpts {
        script: Some(&script(1)),
        cores: "2",
        ..Default::default()
    });
    let script_path = srv.dir.path("route.lua");

    // Syntax error: refused with the line, the old script keeps answering.
    std::fs::write(
        &script_path,
        "function ksr_request_route()\n  if then\nend\n",
    )
    .unwrap();
    let r = rpc_raw(srv.rpc_port, "kemi.reload");
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("route.lua:2:"), "{r}");
    assert_eq!(options_reasons(&srv, 4), ["v1"; 4]);

    // No ksr_request_route: refused too, through `sipshard ctl` (exit != 0).
    std::fs::write(&script_path, "x = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["ctl", "--url", &srv.rpc_url(), "app_lua.reload"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ksr_request_route"), "{text}");
    assert_eq!(options_reasons(&srv, 4), ["v1"; 4]);
    let st = rpc(srv.rpc_port, "kemi.status", serde_json::json!([]));
    assert_eq!(st["reloads"], 0, "{st}");
    assert_eq!(st["reloads_failed"], 2, "{st}");
    assert!(st["last_error"]
        .as_str()
        .unwrap()
        .contains("ksr_request_route"));

    // SIGHUP loads the file again.
    std::fs::write(&script_path, script(2)).unwrap();
    let pid = srv.child.as_ref().unwrap().id();
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if options_reasons(&srv, 4) == ["v2"; 4] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(srv.log().contains("origin=\"SIGHUP\"") || srv.log().contains("origin=SIGHUP"));
    let st = rpc(srv.rpc_port, "kemi.status", serde_json::json!([]));
    assert_eq!(st["reloads"], 1, "{st}");
    // `sipshard ctl kemi.reload` (kamcmd-like) succeeds on a good script.
    std::fs::write(&script_path, script(3)).unwrap();
    let out = sipshard(&["ctl", "--url", &srv.rpc_url(), "kemi.reload"]);
    assert!(out.contains("reloads"), "{out}");
    assert_eq!(options_reasons(&srv, 2), ["v3"; 2]);
    let list = rpc(srv.rpc_port, "app_lua.list", serde_json::json!([]));
    assert!(
        list[0]["path"].as_str().unwrap().ends_with("route.lua"),
        "{list}"
    );
    let api = rpc(srv.rpc_port, "app_lua.api_list", serde_json::json!([]));
    assert!(api["msize"].as_u64().unwrap() > 50, "{api}");
    let (ok, _) = srv.stop();
    assert!(ok);
}

/// A transaction relayed under the old script times out after a reload:
/// its failure route runs in the new script (by name, as Kamailio's
/// app_lua.reload), and the caller gets its 408.
#[test]
fn a_call_in_progress_completes_across_a_reload() {
    let proxy_lua = std::fs::read_to_string(format!("{ROOT}/tests/lua/proxy.lua")).unwrap();
    let srv = Server::start(ServerOpts {
        script: Some(&proxy_lua),
        cores: "2",
        ..Default::default()
    });
    let dir = srv.dir.path("calls");
    let uas_port = free_udp_port();
    let uas = spawn_sipp(
        &dir.join("uas"),
        uas_port,
        &[
            "-sf",
            &format!("{ROOT}/tests/sipp/uas-ring.xml"),
            "-set",
            "proxy",
            &srv.addr.to_string(),
            "-m",
            "1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", uas_port)).is_ok() {
        assert!(Instant::now() < deadline, "sipp uas did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bind "noanswer" (a 2 s fr_inv in proxy.lua) to the ringing callee.
    let c = client();
    let reg = register_msg(
        &c,
        "noanswer",
        &srv.addr.to_string(),
        "reload-reg-1",
        1,
        &format!("Contact: <sip:noanswer@127.0.0.1:{uas_port}>\r\nExpires: 600\r\n"),
    );
    let r = exchange(&c, srv.addr, reg.as_bytes()).expect("REGISTER answered");
    assert_eq!(status(&r), 200, "{r}");
    let uac = spawn_sipp(
        &dir.join("uac"),
        free_udp_port(),
        &[
            &srv.addr.to_string(),
            "-sf",
            &format!("{ROOT}/tests/sipp/uac-noanswer.xml"),
            "-s",
            "noanswer",
            "-m",
            "1",
        ],
    );
    // While the callee rings: reload a script whose failure route says so.
    std::thread::sleep(Duration::from_millis(700));
    let v2 = proxy_lua.replace(
        "function ksr_failure_manage()\n",
        "function ksr_failure_manage()\n    KSR.info(\"failure route of script v2\\n\")\n",
    );
    assert_ne!(v2, proxy_lua);
    std::fs::write(srv.dir.path("route.lua"), &v2).unwrap();
    let r = rpc_raw(srv.rpc_port, "kemi.reload");
    assert_eq!(r["result"]["shards"], 2, "{r}");
    let (uac_code, uac_stats) = wait_sipp(uac, &dir.join("uac"));
    let (uas_code, _) = wait_sipp(uas, &dir.join("uas"));
    let log = srv.log();
    assert_eq!(uac_code, Some(0), "{uac_stats:?}\n{log}");
    assert_eq!(uas_code, Some(0), "{log}");
    assert_eq!(
        uac_stats.get("SuccessfulCall(C)").map(String::as_str),
        Some("1")
    );
    assert!(log.contains("failure route of script v2"), "{log}");
}
