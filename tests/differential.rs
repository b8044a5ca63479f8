//! Differential test: the same probe script (tests/differential/probe.lua)
//! on Kamailio 5.6 and on sipshard, fed the same messages
//! (tests/differential/corpus.txt). The probe answers every request with the
//! value and Lua type of each getter (pseudo-variables, transformations,
//! `KSR.pv`, `KSR.pvx`, `KSR.kx`, `KSR.hdr`); every getter must agree except
//! the deliberate differences in [`ALLOWED`], each explained in docs/kemi.md
//! ("Differences from Kamailio").
//!
//! Kamailio must be installed (`scripts/deps.sh` installs `kamailio
//! kamailio-lua-modules`); without it the test fails.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{free_udp_port, kamailio_mpath, Kamailio, Server, ServerOpts, TempDir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Getters that deliberately differ: (message name or "*", getter, reason).
/// Each reason is a "Differences from Kamailio" entry in docs/kemi.md.
/// (The two servers' ports differ; values are compared with the server's
/// own port replaced by `@SPORT@`.)
const ALLOWED: &[(&str, &str, &str)] = &[];

#[test]
fn allowed_differences_are_documented() {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/kemi.md")).unwrap();
    let section = doc
        .split_once("## Differences from Kamailio")
        .expect("docs/kemi.md has a \"Differences from Kamailio\" section")
        .1;
    for (_, getter, reason) in ALLOWED {
        assert!(!reason.is_empty(), "{getter}: no reason");
        assert!(
            section.contains(getter),
            "{getter} differs from Kamailio on purpose but docs/kemi.md does not say why"
        );
    }
}

/// Kamailio 5.6 running the probe with tests/differential/kamailio.cfg.
fn start_kamailio(probe: &str) -> Kamailio {
    let dir = TempDir::new("kamdiff");
    let port = free_udp_port();
    let cfg = std::fs::read_to_string(format!("{ROOT}/tests/differential/kamailio.cfg"))
        .unwrap()
        .replace("@PORT@", &port.to_string())
        .replace("@MPATH@", &kamailio_mpath(&["app_lua.so", "kemix.so"]))
        .replace("@LUA@", probe);
    for p in ["@PORT@", "@MPATH@", "@LUA@"] {
        assert!(!cfg.contains(p), "unfilled {p} in kamailio.cfg");
    }
    let env = [("PROBE_ENV", "probe env"), ("PROBE_ENVN", "17")];
    let wdir = dir.0.display().to_string();
    Kamailio::run(dir, &cfg, port, &["-m", "32", "-w", &wdir], &env, false)
}

/// (name, message text with `@CPORT@` and LF line ends) from the corpus.
fn corpus() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/tests/differential/corpus.txt")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("%%% ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The message on the wire: CRLF lines, `X-Group`, a Content-Length.
fn wire(msg: &str, group: usize, cport: u16, sport: u16) -> Vec<u8> {
    let msg = msg
        .replace("@CPORT@", &cport.to_string())
        .replace("@SPORT@", &sport.to_string());
    let (head, body) = match msg.split_once("\n\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (msg.trim_end().to_string(), String::new()),
    };
    let body = body.replace('\n', "\r\n");
    let mut lines: Vec<String> = head.lines().map(str::to_string).collect();
    lines.insert(1, format!("X-Group: {group}"));
    if !lines
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("content-length:"))
    {
        lines.push(format!("Content-Length: {}", body.len()));
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// Sends `bytes` and waits for the 200 carrying the probe's headers.
fn ask(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<String> {
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        sock.send_to(bytes, to).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == to => {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if text.contains("X-N:") {
                        return Some(text);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

/// getter -> "type:value" for one message, all groups.
fn probe(
    sock: &UdpSocket,
    to: SocketAddr,
    msg: &str,
    server_port: u16,
) -> Result<BTreeMap<String, String>, String> {
    let cport = sock.local_addr().unwrap().port();
    let mut out = BTreeMap::new();
    let mut group = 0;
    loop {
        let reply = ask(sock, to, &wire(msg, group, cport, server_port))
            .ok_or_else(|| format!("no reply for group {group}"))?;
        let mut total = 0usize;
        if msg.starts_with("SIP/2.0") {
            // a forwarded reply: the reply route's header edits show in it
            let rest: Vec<&str> = reply
                .split("\r\n")
                .filter(|l| !l.starts_with("X-P: ") && !l.starts_with("X-N: "))
                .collect();
            out.insert(
                format!("(forwarded reply, group {group})"),
                rest.join("|").replace(&server_port.to_string(), "@SPORT@"),
            );
        }
        for line in reply.split("\r\n") {
            if let Some(v) = line.strip_prefix("X-P: ") {
                let (name, val) = v.split_once('\t').unwrap_or((v, "?"));
                let val = val.replace(&server_port.to_string(), "@SPORT@");
                out.insert(name.to_string(), val);
            } else if let Some(n) = line.strip_prefix("X-N: ") {
                total = n.trim().parse().unwrap_or(0);
            }
        }
        group += 1;
        if total == 0 || group * 12 >= total {
            break;
        }
        if group > 100 {
            return Err("too many groups".into());
        }
    }
    Ok(out)
}

#[test]
fn getters_agree_with_kamailio() {
    let probe_path = format!("{ROOT}/tests/differential/probe.lua");
    let script = std::fs::read_to_string(&probe_path).unwrap();
    let kam = start_kamailio(&probe_path);
    // sipshard reads the same environment (KSR.kx.get_env).
    std::env::set_var("PROBE_ENV", "probe env");
    std::env::set_var("PROBE_ENVN", "17");
    let srv = Server::start(ServerOpts {
        script: Some(&script),
        cores: "1",
        // Kamailio has no core check of the Request-URI scheme (the corpus
        // sends an im: Request-URI to the script).
        core_toml: "defines = [\"PROBE_FLAG\", \"PROBE_DEF=\\\"probe value\\\"\", \
                     \"PROBE_NUM=42\"]\n\
                    reject_unknown_ruri_scheme = false\n",
        ..Default::default()
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    // Kamailio is up once it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let corpus = corpus();
    let first = &corpus[0].1;
    let cport = sock.local_addr().unwrap().port();
    while ask(&sock, kam.addr, &wire(first, 0, cport, kam.addr.port())).is_none() {
        assert!(
            Instant::now() < deadline,
            "kamailio did not answer:\n{}",
            kam.log()
        );
    }

    let mut diffs = Vec::new();
    let mut compared = 0;
    let mut allowed_seen = 0;
    for (name, msg) in &corpus {
        let k = probe(&sock, kam.addr, msg, kam.addr.port())
            .unwrap_or_else(|e| panic!("kamailio, {name}: {e}\n{}", kam.log()));
        let s = probe(&sock, srv.addr, msg, srv.addr.port())
            .unwrap_or_else(|e| panic!("sipshard, {name}: {e}\n{}", srv.log()));
        assert!(k.len() > 100, "{name}: only {} getters reported", k.len());
        for (getter, kv) in &k {
            compared += 1;
            let sv = s.get(getter).map(String::as_str).unwrap_or("<missing>");
            if sv == kv {
                continue;
            }
            if ALLOWED
                .iter()
                .any(|(m, g, _)| (*m == "*" || m == name) && g == getter)
            {
                allowed_seen += 1;
                continue;
            }
            diffs.push(format!(
                "{name:<24} {getter:<40} kamailio {kv:<30} sipshard {sv}"
            ));
        }
    }
    eprintln!(
        "differential: {compared} values compared over {} messages, {allowed_seen} allowed differences",
        corpus.len()
    );
    assert!(
        diffs.is_empty(),
        "{} getters differ from Kamailio 5.6:\n{}\n--- kamailio log:\n{}",
        diffs.len(),
        diffs.join("\n"),
        kam.log()
    );
}
