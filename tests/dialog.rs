//! KSR.dialog end to end: sipp callers calling a sipp callee through
//! sipshard running tests/lua/dialog.lua, which tracks each INVITE with
//! `dlg_manage()`. Checked on the wire and over the control plane: dialog
//! profiles as a call limiter (the call over the limit gets 486), calls the
//! proxy ends on both sides (`dlg_bye("all")` from a MESSAGE, and a
//! `dlg_set_timeout` expiring with `send_bye = 1`), `dlg.list` /
//! `dlg.profile_get_size` / `dlg.stats_active` / `dlg.end_dlg`, and
//! `$dlg(...)` / `$dlg_var(...)` read in the BYE's route.
//!
//!   cargo test --test dialog

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// tests/sipp/`name`.
/// sipshard running tests/lua/dialog.lua, calls going to 127.0.0.1:`uas`.
fn proxy(uas: u16, limit: u32, dialog_toml: &str) -> Server {
    let script = std::fs::read_to_string(format!("{ROOT}/tests/lua/dialog.lua")).unwrap();
    let core = format!("defines = [\"UAS=127.0.0.1:{uas}\", \"CALL_LIMIT={limit}\"]\n");
    let toml = format!(
        "[dialog]\nprofiles_no_value = \"calls\"\nprofiles_with_value = \"caller\"\n{dialog_toml}\n"
    );
    Server::start(ServerOpts {
        script: Some(&script),
        cores: "2",
        core_toml: &core,
        extra_toml: &toml,
        ..Default::default()
    })
}

/// Polls `f` until it returns Some, or panics after `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, srv: &Server, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn active(srv: &Server) -> Value {
    rpc(srv.rpc_port, "dlg.stats_active", json!([]))["active"].clone()
}

// ---------------------------------------------------------------- sipp

/// Asserts a sipp run ended with `ok` successful and `failed` failed calls.
fn assert_calls(srv: &Server, r: &SippResult, ok: u64, failed: u64) {
    let good = r.successful() == ok && r.failed() == failed && (failed > 0 || r.code == Some(0));
    if !good {
        let log = srv.log();
        let log = &log[log.len().saturating_sub(6000)..];
        panic!(
            "{}: want {ok} ok / {failed} failed\n{}\n--- proxy log (tail):\n{log}",
            r.name,
            r.report()
        );
    }
}

// ---------------------------------------------------------------- tests

/// A profile as a call limiter: with CALL_LIMIT = 2, four concurrent calls
/// to "limited" give two answered calls and two 486s; while the two last,
/// `dlg.profile_get_size` counts 2, `dlg.list` shows both confirmed
/// dialogs with their profile and variable, and the caller's BYE (through
/// the proxy) ends them: the BYE's route saw `$dlg(state)` 5 (deleted by
/// that BYE), `$dlg_var(caller)`, `$dlg(callid)` and the dialog flag.
#[test]
fn profile_limits_concurrent_calls_and_bye_ends_them() {
    let dir = TempDir::new("dlg-limit");
    let port = free_udp_port();
    let srv = proxy(port, 2, "");
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, srv.addr, 2, &[]);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call.xml",
        srv.addr,
        "limited",
        4,
        &["-d", "4000", "-r", "20", "-l", "4"],
    );
    // both answered calls are up: profile and list agree
    wait_for(15, "2 confirmed dialogs", &srv, || {
        (active(&srv)["ongoing"] == json!(2)).then_some(())
    });
    let size = rpc(srv.rpc_port, "dlg.profile_get_size", json!(["calls"]));
    assert_eq!(size, json!(2), "{}", srv.log());
    let list = rpc(srv.rpc_port, "dlg.list", json!([]));
    let live: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == json!(4))
        .collect();
    assert_eq!(live.len(), 2, "{list}");
    for d in &live {
        assert!(d["call-id"].as_str().unwrap().contains('@'), "{d}");
        assert_eq!(
            d["to_uri"].as_str().unwrap(),
            format!("sip:limited@{}", srv.addr)
        );
        assert!(!d["callee"]["tag"].as_str().unwrap().is_empty(), "{d}");
        assert!(
            d["profiles"]
                .as_array()
                .unwrap()
                .contains(&json!({"calls": ""})),
            "{d}"
        );
        assert!(
            d["profiles"]
                .as_array()
                .unwrap()
                .contains(&json!({"caller": "caller"})),
            "{d}"
        );
        assert_eq!(d["variables"], json!([{"caller": "caller"}]), "{d}");
    }
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 2, 2);
    assert_calls(&srv, &uas, 2, 0);
    assert_eq!(uac.traced("received", "SIP/2.0 486"), 2, "{}", uac.report());
    // the BYEs went through the proxy, with what the BYE route read
    assert_eq!(uas.traced("received", "BYE "), 2, "{}", uas.report());
    for h in [
        "X-Dlg-Known: 1",
        "X-Dlg-State: 5",
        "X-Dlg-Caller: caller",
        "X-Dlg-Same-Callid: true",
        "X-Dlg-Flag3: 1",
    ] {
        assert_eq!(uas.messages.matches(h).count(), 2, "{h}\n{}", uas.report());
    }
    wait_for(10, "no active dialog", &srv, || {
        (active(&srv)["all"] == json!(0)).then_some(())
    });
    assert_eq!(
        rpc(srv.rpc_port, "dlg.profile_get_size", json!(["calls"])),
        json!(0)
    );
    // Kamailio's dialog statistics: 4 dialogs, 2 refused by the limiter
    let st = rpc(srv.rpc_port, "stats.fetch", json!(["dialog"]));
    assert_eq!(st["dialog.full"], json!(0), "{st}");
    assert_eq!(st["dialog.processed_dialogs"], json!(4), "{st}");
    assert_eq!(st["dialog.failed_dialogs"], json!(2), "{st}");
    assert_eq!(st["dialog.active_dialogs"], json!(0), "{st}");
    assert_eq!(st["dialog.expired_dialogs"], json!(0), "{st}");
}

/// `dlg_bye("all")`, triggered by a MESSAGE naming the dialog (found with
/// `dlg_get` from what `dlg.list` shows): both the caller and the callee
/// receive a BYE from the proxy and answer it, so both sipps succeed.
#[test]
fn dlg_bye_all_ends_the_call_on_both_sides() {
    let dir = TempDir::new("dlg-bye");
    let port = free_udp_port();
    let srv = proxy(port, 10, "");
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, srv.addr, 1, &[]);
    let uac = Sipp::uac(&dir, "uac", "uac-call-byed.xml", srv.addr, "bob", 1, &[]);
    let d = wait_for(15, "a confirmed dialog", &srv, || {
        let list = rpc(srv.rpc_port, "dlg.list", json!([]));
        list.as_array()?
            .iter()
            .find(|d| d["state"] == json!(4))
            .cloned()
    });
    let c = client();
    let msg = format!(
        "MESSAGE sip:dlg-bye@{a} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKdlgbye1\r\n\
         From: <sip:admin@{l}>;tag=adm\r\nTo: <sip:dlg-bye@{a}>\r\nCall-ID: dlg-bye-ctl\r\n\
         CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nX-Dlg-Callid: {ci}\r\nX-Dlg-Ftag: {ft}\r\n\
         X-Dlg-Ttag: {tt}\r\nContent-Length: 0\r\n\r\n",
        a = srv.addr,
        l = c.local_addr().unwrap(),
        ci = d["call-id"].as_str().unwrap(),
        ft = d["caller"]["tag"].as_str().unwrap(),
        tt = d["callee"]["tag"].as_str().unwrap(),
    );
    let r = exchange(&c, srv.addr, msg.as_bytes()).expect("MESSAGE answered");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 1, 0);
    assert_calls(&srv, &uas, 1, 0);
    assert_eq!(uac.traced("received", "BYE "), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
    // both BYEs came from the proxy, in the dialog's Call-ID
    let ci = d["call-id"].as_str().unwrap();
    assert!(
        uac.messages.contains(&format!("Call-ID: {ci}")),
        "{}",
        uac.report()
    );
    // the dialog is gone; a second MESSAGE finds nothing
    wait_for(5, "no active dialog", &srv, || {
        (active(&srv)["all"] == json!(0)).then_some(())
    });
    let msg2 = msg
        .replace("CSeq: 1 MESSAGE", "CSeq: 2 MESSAGE")
        .replace("dlgbye1", "dlgbye2");
    let r = exchange(&c, srv.addr, msg2.as_bytes()).expect("MESSAGE answered");
    assert_eq!(status(&r), 404, "{r}");
}

/// `dlg_set_timeout(1)` with `send_bye = 1`: the dialog times out about a
/// second after the 200 and the proxy sends BYE to both sides.
#[test]
fn timeout_with_send_bye_ends_the_call_on_both_sides() {
    let dir = TempDir::new("dlg-timeout");
    let port = free_udp_port();
    let srv = proxy(port, 10, "send_bye = 1");
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, srv.addr, 2, &[]);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call-byed.xml",
        srv.addr,
        "short",
        2,
        &["-r", "10", "-l", "2"],
    );
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 2, 0);
    assert_calls(&srv, &uas, 2, 0);
    assert_eq!(uac.traced("received", "BYE "), 2, "{}", uac.report());
    assert_eq!(uas.traced("received", "BYE "), 2, "{}", uas.report());
    // a call ended by its timeout lasted at least the timeout
    assert!(
        uac.elapsed >= Duration::from_millis(900),
        "{:?}",
        uac.elapsed
    );
    wait_for(5, "no active dialog", &srv, || {
        (active(&srv)["all"] == json!(0)).then_some(())
    });
}

/// `dlg_bye("all")` of a ringing (early) dialog, found with an empty To
/// tag: the callee gets a CANCEL (and its 487 is ACKed), the caller
/// `bye_early_code` 480, and the dialog ends as failed.
#[test]
fn dlg_bye_of_an_early_dialog_cancels_and_answers_480() {
    let dir = TempDir::new("dlg-early");
    let port = free_udp_port();
    let srv = proxy(port, 10, "");
    let uas = Sipp::uas(&dir, "uas", "uas-ring.xml", port, srv.addr, 1, &[]);
    let uac = Sipp::uac(&dir, "uac", "uac-early-ended.xml", srv.addr, "erin", 1, &[]);
    let d = wait_for(15, "an early dialog", &srv, || {
        let list = rpc(srv.rpc_port, "dlg.list", json!([]));
        list.as_array()?
            .iter()
            .find(|d| d["state"] == json!(2))
            .cloned()
    });
    let c = client();
    let msg = format!(
        "MESSAGE sip:dlg-bye@{a} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKdlgearly1\r\n\
         From: <sip:admin@{l}>;tag=adm\r\nTo: <sip:dlg-bye@{a}>\r\nCall-ID: dlg-early-ctl\r\n\
         CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nX-Dlg-Callid: {ci}\r\nX-Dlg-Ftag: {ft}\r\n\
         X-Dlg-Ttag: \r\nContent-Length: 0\r\n\r\n",
        a = srv.addr,
        l = c.local_addr().unwrap(),
        ci = d["call-id"].as_str().unwrap(),
        ft = d["caller"]["tag"].as_str().unwrap(),
    );
    let r = exchange(&c, srv.addr, msg.as_bytes()).expect("MESSAGE answered");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 1, 0);
    assert_calls(&srv, &uas, 1, 0);
    assert_eq!(uas.traced("received", "CANCEL "), 1, "{}", uas.report());
    assert_eq!(uac.traced("received", "SIP/2.0 480"), 1, "{}", uac.report());
    let st = rpc(srv.rpc_port, "stats.fetch", json!(["dialog"]));
    assert_eq!(st["dialog.failed_dialogs"], json!(1), "{st}");
    assert_eq!(st["dialog.active_dialogs"], json!(0), "{st}");
}

/// `$dlg_ctx(timeout_bye)` / `$dlg_ctx(timeout_int)` set before
/// `dlg_manage()` (without `send_bye`): the dialog times out after a second
/// with a BYE to both sides; the timeout is counted as expired.
#[test]
fn dlg_ctx_timeout_bye_ends_the_call_on_both_sides() {
    let dir = TempDir::new("dlg-ctx");
    let port = free_udp_port();
    let srv = proxy(port, 10, "");
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, srv.addr, 1, &[]);
    let uac = Sipp::uac(&dir, "uac", "uac-call-byed.xml", srv.addr, "ctxbye", 1, &[]);
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 1, 0);
    assert_calls(&srv, &uas, 1, 0);
    assert_eq!(uac.traced("received", "BYE "), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
    let st = rpc(srv.rpc_port, "stats.fetch", json!(["dialog"]));
    assert_eq!(st["dialog.expired_dialogs"], json!(1), "{st}");
}

/// A minimal callee on a UDP socket: answers the INVITE 200 (Record-Route
/// copied), takes the ACK, ignores the first BYE from the proxy and
/// answers its retransmission; returns the BYEs it received, counting the
/// ones that still came within 3 s of its answer (none: the 200 stopped
/// the retransmissions).
fn callee_answering_the_second_bye(sock: UdpSocket) -> (usize, usize) {
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut byes = 0;
    let mut after = 0;
    let mut answered_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if answered_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = |code: &str, extra: &str, tag: bool| {
            let mut r = format!("SIP/2.0 {code}\r\n");
            for h in ["Via", "From", "Call-ID", "CSeq", "Record-Route"] {
                for v in headers(&m, h) {
                    r.push_str(&format!("{h}: {v}\r\n"));
                }
            }
            let to = header(&m, "To").unwrap();
            if tag {
                r.push_str(&format!("To: {to};tag=callee1\r\n"));
            } else {
                r.push_str(&format!("To: {to}\r\n"));
            }
            r.push_str(extra);
            r.push_str("Content-Length: 0\r\n\r\n");
            r
        };
        if m.starts_with("INVITE ") {
            let contact = format!("Contact: <sip:callee@{}>\r\n", sock.local_addr().unwrap());
            sock.send_to(reply("200 OK", &contact, true).as_bytes(), from)
                .unwrap();
        } else if m.starts_with("BYE ") {
            byes += 1;
            if answered_at.is_some() {
                after += 1;
            }
            if byes == 2 {
                sock.send_to(reply("200 OK", "", false).as_bytes(), from)
                    .unwrap();
                answered_at = Some(Instant::now());
            }
        }
    }
    (byes, after)
}

/// A BYE the callee does not answer is retransmitted until it is; the 200
/// stops the retransmissions (the proxy absorbs replies to its own BYEs).
#[test]
fn unanswered_bye_is_retransmitted_until_answered() {
    let dir = TempDir::new("dlg-rexmit");
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = callee.local_addr().unwrap().port();
    let srv = proxy(port, 10, "");
    let th = std::thread::spawn(move || callee_answering_the_second_bye(callee));
    let uac = Sipp::uac(&dir, "uac", "uac-call-byed.xml", srv.addr, "dave", 1, &[]);
    let d = wait_for(15, "a confirmed dialog", &srv, || {
        let list = rpc(srv.rpc_port, "dlg.list", json!([]));
        list.as_array()?
            .iter()
            .find(|d| d["state"] == json!(4))
            .cloned()
    });
    let r = rpc(
        srv.rpc_port,
        "dlg.end_dlg",
        json!([d["h_entry"], d["h_id"]]),
    );
    assert_eq!(r, json!("Ok."));
    let uac = uac.wait();
    assert_calls(&srv, &uac, 1, 0);
    let (byes, after) = th.join().unwrap();
    assert_eq!((byes, after), (2, 0), "{}", srv.log());
}

/// `dlg.end_dlg h_entry h_id` over the control plane ends a confirmed call
/// with BYEs to both sides; an unknown dialog is an error.
#[test]
fn rpc_end_dlg_ends_the_call_on_both_sides() {
    let dir = TempDir::new("dlg-rpc-end");
    let port = free_udp_port();
    let srv = proxy(port, 10, "");
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, srv.addr, 1, &[]);
    let uac = Sipp::uac(&dir, "uac", "uac-call-byed.xml", srv.addr, "carol", 1, &[]);
    let d = wait_for(15, "a confirmed dialog", &srv, || {
        let list = rpc(srv.rpc_port, "dlg.list", json!([]));
        list.as_array()?
            .iter()
            .find(|d| d["state"] == json!(4))
            .cloned()
    });
    let r = rpc(
        srv.rpc_port,
        "dlg.end_dlg",
        json!([d["h_entry"], d["h_id"]]),
    );
    assert_eq!(r, json!("Ok."));
    let uac = uac.wait();
    let uas = uas.wait();
    assert_calls(&srv, &uac, 1, 0);
    assert_calls(&srv, &uas, 1, 0);
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
    let v = rpc_raw(
        srv.rpc_port,
        "dlg.end_dlg",
        json!([d["h_entry"], d["h_id"]]),
    );
    assert!(v.get("error").is_some(), "{v}");
}

/// The JSON-RPC answer as it is (result or error).
fn rpc_raw(port: u16, method: &str, params: Value) -> Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /RPC HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap()
}
