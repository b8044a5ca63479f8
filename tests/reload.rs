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
    std::fs::create_dir_all(&sipp_dir).unwrap();
    let out = std::fs::File::create(sipp_dir.join("sipp.out")).unwrap();
    let sipp_port = free_udp_port();
    let mut sipp = Command::new("sipp")
        .arg(srv.addr.to_string())
        .args(["-sf", &format!("{ROOT}/tests/sipp/register-contact.xml")])
        .args(["-s", "reloader"])
        .args(["-key", "contact", "sip:reloader@127.0.0.1:5999"])
        .args(["-r", "200", "-l", "400", "-m", &calls.to_string()])
        .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
        .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
        .args(["-trace_stat", "-stf", "stats.csv", "-fd", "1"])
        .args(["-trace_err", "-error_file", "errors.log"])
        .current_dir(&sipp_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("sipp (sip-tester) is installed: scripts/deps.sh");

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
    let read = |f: &str| std::fs::read_to_string(sipp_dir.join(f)).unwrap_or_default();
    let stats = last_stats_row(&read("stats.csv"));
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
