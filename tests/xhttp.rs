//! HTTP and WebSocket on the real binary: the minesweeper example
//! (`etc/examples/minesweeper.lua`) played over SIP OPTIONS (UDP, raw
//! sockets and sipsak) and over curl (HTTP on the SIP TCP port), its board
//! shared by both shards; the xhttp route on the SIP TCP port (pipelining,
//! keep-alive, Connection: close, split requests, malformed requests
//! refused); a WebSocket client (RFC 6455 frames from the server's own
//! codec) registering over WS and receiving a call from a UDP caller.

mod common;

use common::*;

const MINESWEEPER: &str = include_str!("../etc/examples/minesweeper.lua");
const ROWS: usize = 5;
const COLS: usize = 6;

/// (A low port: sipsak mangles 5-digit ports; only this test's server
/// takes one, `free_low_udp_port` is the same for every test of a process.)
fn minesweeper_server() -> Server {
    Server::start(ServerOpts {
        script: Some(MINESWEEPER),
        cores: "2",
        core_toml: "defines = [\"MINESWEEPER_SEED=42\"]\n",
        extra_toml: "[[htable]]\nname = \"mines\"\n",
        low_port: true,
        ..Default::default()
    })
}

/// The mines of the current game, from the control plane's `htable.get`.
fn mines(srv: &Server) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for r in 1..=ROWS {
        for c in 1..=COLS {
            let v = rpc(
                srv.rpc_port,
                "htable.get",
                serde_json::json!(["mines", format!("m-{r}-{c}")]),
            );
            if v["item"]["value"] == 1 {
                out.push((r, c));
            }
        }
    }
    out
}

/// Sends OPTIONS sip:<cmd>@127.0.0.1 from a fresh socket (so the BPF spread
/// lands the requests on both shards); returns the reply.
fn play(srv: &Server, cmd: &str) -> String {
    let sock = client();
    let ruri = format!("sip:{cmd}@127.0.0.1:{}", srv.addr.port());
    exchange(
        &sock,
        srv.addr,
        request(&sock, "OPTIONS", &ruri, "").as_bytes(),
    )
    .unwrap_or_else(|| panic!("no reply to {cmd}:\n{}", srv.log()))
}

fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |x| x.1)
}

/// The cell at (r, c) of a board body.
fn cell(reply: &str, r: usize, c: usize) -> String {
    let rows: Vec<&str> = body(reply)
        .lines()
        .skip_while(|l| !l.starts_with("    1"))
        .skip(1)
        .collect();
    rows[r - 1].split_whitespace().nth(c).unwrap().to_string()
}

#[test]
fn minesweeper_over_sip_options() {
    let srv = minesweeper_server();
    let first = play(&srv, "board");
    assert_eq!((status(&first), reason(&first)), (200, "Board".into()));
    assert_eq!(
        header(&first, "Content-Type").as_deref(),
        Some("text/plain")
    );
    assert!(
        body(&first).contains("game 1: playing (5x6, 5 mines)"),
        "{first}"
    );
    let mine_set = mines(&srv);
    assert_eq!(mine_set.len(), 5, "seeded game has its mines in the htable");

    // every safe cell, one request each from new sockets (both shards play
    // the same board) until the game is won
    let mut won = false;
    for r in 1..=ROWS {
        for c in 1..=COLS {
            if mine_set.contains(&(r, c)) {
                continue;
            }
            let reply = play(&srv, &format!("e-{r}-{c}"));
            let why = reason(&reply);
            assert_eq!(status(&reply), 200, "{reply}");
            assert!(
                ["Safe", "Already Explored", "You Won"].contains(&why.as_str()),
                "{reply}"
            );
            let near = mine_set
                .iter()
                .filter(|(mr, mc)| mr.abs_diff(r) <= 1 && mc.abs_diff(c) <= 1)
                .count();
            assert_eq!(cell(&reply, r, c), near.to_string(), "{reply}");
            if why == "You Won" {
                won = true;
                break;
            }
        }
        if won {
            break;
        }
    }
    assert!(won, "all safe cells explored wins");
    assert!(body(&play(&srv, "board")).contains("game 1: won"));

    // a new game, then a mine
    let reply = play(&srv, "new");
    assert_eq!(reason(&reply), "New Game");
    let (mr, mc) = mines(&srv)[0];
    let reply = play(&srv, &format!("e-{mr}-{mc}"));
    assert_eq!(reason(&reply), "Buuum", "{reply}");
    assert_eq!(cell(&reply, mr, mc), "X");
    assert_eq!(status(&play(&srv, "e-1-1")), 409);

    // sipsak, as in the talk
    play(&srv, "new");
    let out = std::process::Command::new("sipsak")
        .args([
            "-vv",
            "-s",
            &format!("sip:d-{mr}-{mc}@127.0.0.1:{}", srv.addr.port()),
        ])
        .output()
        .expect("sipsak is installed by scripts/deps.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipsak failed: {text}");
    assert!(text.contains("200 Defused"), "{text}");
    let reply = play(&srv, "board");
    assert_eq!(cell(&reply, mr, mc), "W");
}

// ---- over TCP: curl, raw HTTP, WebSocket ----

/// The minesweeper example with TCP on the SIP port.
fn minesweeper_tcp_server() -> Server {
    Server::start(ServerOpts {
        script: Some(MINESWEEPER),
        cores: "2",
        core_toml: "defines = [\"MINESWEEPER_SEED=42\"]\n",
        extra_toml: "[[htable]]\nname = \"mines\"\n[tcp]\nenable = true\n",
        ..Default::default()
    })
}

/// `curl -s -i URL`: (status line, body).
fn curl(url: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", url])
        .output()
        .expect("curl is installed by scripts/deps.sh");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn minesweeper_over_curl() {
    let srv = minesweeper_tcp_server();
    let base = format!("http://127.0.0.1:{}", srv.addr.port());
    let (status, body) = curl(&format!("{base}/"));
    assert_eq!(status, "HTTP/1.1 200 Board", "{body}");
    assert!(body.contains("game 1: playing (5x6, 5 mines)"), "{body}");
    let mine_set = mines(&srv);
    let mut won = false;
    'outer: for r in 1..=ROWS {
        for c in 1..=COLS {
            if mine_set.contains(&(r, c)) {
                continue;
            }
            let (status, body) = curl(&format!("{base}/e-{r}-{c}"));
            assert!(
                [
                    "HTTP/1.1 200 Safe",
                    "HTTP/1.1 200 Already Explored",
                    "HTTP/1.1 200 You Won"
                ]
                .contains(&status.as_str()),
                "{status}\n{body}"
            );
            if status.ends_with("You Won") {
                won = true;
                break 'outer;
            }
        }
    }
    assert!(won);
    // the same board over SIP
    let board = play(&srv, "board");
    assert!(self::body(&board).contains("game 1: won"), "{board}");
    let (status, _) = curl(&format!("{base}/new"));
    assert_eq!(status, "HTTP/1.1 200 New Game");
    let (mr, mc) = mines(&srv)[0];
    let (status, body) = curl(&format!("{base}/e-{mr}-{mc}"));
    assert_eq!(status, "HTTP/1.1 200 Buuum", "{body}");
}

const XHTTP_SCRIPT: &str = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return
    end
    if KSR.is_INVITE() or KSR.is_ACK() or KSR.is_CANCEL() or KSR.is_BYE() then
        if KSR.siputils.has_totag() > 0 then
            if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() end
            return
        end
        if KSR.registrar.lookup("location") < 0 then
            KSR.sl.sl_send_reply(404, "Not Found")
            return
        end
        KSR.rr.record_route()
        KSR.tm.t_relay()
        return
    end
    if KSR.pv.get("$rU") == "bye" then
        KSR.websocket.close_reason(4000, "Because I say so")
    end
    KSR.sl.sl_send_reply(200, "OK " .. KSR.pv.get("$pr"))
end

function ksr_xhttp_event(evname)
    if KSR.pv.get("$hdr(Upgrade)") == "websocket" then
        if KSR.websocket.handle_handshake() > 0 then return end
        return
    end
    local u = KSR.pv.get("$hu")
    if u == "/hello" then
        KSR.xhttp.xhttp_reply(200, "OK", "text/plain",
            "hello " .. KSR.pv.get("$rm") .. " " .. KSR.pv.get("$si") .. " " .. (KSR.pv.get("$rb") or ""))
        return
    end
    if u == "/slow" then
        return -- nothing: 404
    end
    KSR.xhttp.xhttp_reply(403, "Forbidden", "", "")
end
"#;

fn xhttp_server() -> Server {
    Server::start(ServerOpts {
        script: Some(XHTTP_SCRIPT),
        cores: "2",
        extra_toml: "[tcp]\nenable = true\n",
        ..Default::default()
    })
}

/// Reads one HTTP response (head + Content-Length body) from `s`.
fn read_response(
    s: &mut std::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<(u16, String, Vec<u8>)> {
    use std::io::Read;
    let limits = sipshard::http::Limits::default();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(h)) = sipshard::http::parse_response_head(pending, &limits) {
            let total = h.head_len + h.content_length.unwrap_or(0);
            if pending.len() >= total {
                let head = String::from_utf8_lossy(&pending[..h.head_len]).into_owned();
                let body = pending[h.head_len..total].to_vec();
                pending.drain(..total);
                return Some((h.status, head, body));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn xhttp_on_the_sip_tcp_port() {
    use std::io::{Read, Write};
    let srv = xhttp_server();
    // SIP over UDP and HTTP over TCP on one port number
    let sock = client();
    let r = exchange(
        &sock,
        srv.addr,
        request(&sock, "OPTIONS", &format!("sip:x@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(reason(&r), "OK udp");

    // pipelining and keep-alive on one connection; the last one closes
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let (st, head, body) = read_response(&mut s, &mut pending).expect("first response");
    assert_eq!(st, 200, "{head}");
    assert_eq!(String::from_utf8_lossy(&body), "hello POST 127.0.0.1 body");
    assert_eq!(read_response(&mut s, &mut pending).unwrap().0, 403);
    let (st, head, _) = read_response(&mut s, &mut pending).unwrap();
    assert_eq!(st, 404, "no reply from the route: {head}");
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after Connection: close");

    // a request split over many writes
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    for b in b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().0, 200);

    // malformed HTTP: 400 and closed; a huge Content-Length: 413
    for (req, want) in [
        (&b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n"[..], 400),
        (
            b"POST /hello HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            413,
        ),
        (
            b"POST /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
    ] {
        let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(req).unwrap();
        assert_eq!(
            read_response(&mut s, &mut Vec::new()).map(|r| r.0),
            Some(want)
        );
    }
    // the server still answers
    let (status, body) = curl(&format!("http://{}/hello", srv.addr));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.starts_with("hello GET 127.0.0.1"), "{body}");
}

/// A WebSocket client (RFC 6455) speaking SIP (RFC 7118), built on the
/// server's own codec: masked frames out, unmasked frames in.
struct WsClient {
    s: std::net::TcpStream,
    rx: Vec<u8>,
    seq: u8,
}

impl WsClient {
    fn connect(addr: std::net::SocketAddr) -> WsClient {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let key = "x3JJHMbDL1EzLkh9GBhXDw==";
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\
             Origin: http://{addr}\r\n\r\n"
        )
        .unwrap();
        let mut rx = Vec::new();
        let (status, head, _) = read_response(&mut s, &mut rx).expect("handshake response");
        assert_eq!(status, 101, "{head}");
        assert!(
            head.contains(&format!(
                "Sec-WebSocket-Accept: {}\r\n",
                sipshard::http::ws::accept_key(key.as_bytes())
            )),
            "{head}"
        );
        assert!(head.contains("Sec-WebSocket-Protocol: sip\r\n"), "{head}");
        WsClient { s, rx, seq: 0 }
    }

    fn local(&self) -> std::net::SocketAddr {
        self.s.local_addr().unwrap()
    }

    fn send_frame(&mut self, op: sipshard::http::ws::Opcode, payload: &[u8], fin: bool) {
        use std::io::Write;
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        sipshard::http::ws::encode_client_frame(
            &mut out,
            op,
            payload,
            fin,
            [self.seq, 0x5a, 0xa5, 0x3c],
        );
        self.s.write_all(&out).unwrap();
    }

    fn send(&mut self, msg: &str) {
        self.send_frame(sipshard::http::ws::Opcode::Text, msg.as_bytes(), true);
    }

    /// The next frame: (opcode, payload); None on timeout or close of the socket.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut chunk = [0u8; 4096];
        loop {
            let b = &self.rx;
            if b.len() >= 2 {
                assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && b.len() >= at + len {
                    let op = b[0] & 0x0f;
                    let payload = b[at..at + len].to_vec();
                    self.rx.drain(..at + len);
                    return Some((op, payload));
                }
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next SIP message (text frame), answering pings on the way.
    fn recv(&mut self) -> Option<String> {
        loop {
            let (op, p) = self.frame()?;
            match op {
                1 | 2 => return Some(String::from_utf8_lossy(&p).into_owned()),
                9 => self.send_frame(sipshard::http::ws::Opcode::Pong, &p, true),
                8 => return None,
                _ => {}
            }
        }
    }
}

#[test]
fn websocket_client_registers_and_receives_a_call() {
    let srv = xhttp_server();
    let mut ws = WsClient::connect(srv.addr);
    let local = ws.local();
    // RFC 7118 §8.1: the client's Via host is an invented .invalid name and
    // its Contact has transport=ws.
    let register = format!(
        "REGISTER sip:{addr} SIP/2.0\r\nVia: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{addr}>;tag=ws1\r\nTo: <sip:alice@{addr}>\r\n\
         Call-ID: ws-reg-1\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>;expires=300\r\nContent-Length: 0\r\n\r\n",
        addr = srv.addr
    );
    ws.send(&register);
    let reply = ws.recv().expect("a reply to REGISTER over the WebSocket");
    assert_eq!(status(&reply), 200, "{reply}");
    let _ = local;

    // OPTIONS over WS: the route sees $pr = ws
    let options = format!(
        "OPTIONS sip:x@{addr} SIP/2.0\r\nVia: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws2\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{addr}>;tag=ws2\r\nTo: <sip:x@{addr}>\r\n\
         Call-ID: ws-opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        addr = srv.addr
    );
    // split over three frames (fragmented message) with a ping between
    let (a, rest) = options.split_at(20);
    let (b, c) = rest.split_at(30);
    ws.send_frame(sipshard::http::ws::Opcode::Text, a.as_bytes(), false);
    ws.send_frame(sipshard::http::ws::Opcode::Ping, b"are you there", true);
    ws.send_frame(
        sipshard::http::ws::Opcode::Continuation,
        b.as_bytes(),
        false,
    );
    ws.send_frame(sipshard::http::ws::Opcode::Continuation, c.as_bytes(), true);
    let (op, pong) = ws.frame().unwrap();
    assert_eq!((op, pong.as_slice()), (0xA, &b"are you there"[..]));
    let reply = ws.recv().unwrap();
    assert_eq!(reason(&reply), "OK ws", "{reply}");

    // a call from a UDP user reaches alice over her WebSocket
    let caller = client();
    let invite = request(&caller, "INVITE", &format!("sip:alice@{}", srv.addr), "");
    caller.send_to(invite.as_bytes(), srv.addr).unwrap();
    let got = ws.recv().unwrap_or_else(|| {
        panic!(
            "the INVITE over the WebSocket; caller got {:?}\n{}\n{}\n{}",
            recv(&caller),
            serde_json::to_string(&rpc(
                srv.rpc_port,
                "stats.fetch",
                serde_json::json!(["all"])
            ))
            .unwrap(),
            serde_json::to_string(&rpc(srv.rpc_port, "ul.dump", serde_json::json!([]))).unwrap(),
            srv.log()
        )
    });
    assert!(
        got.starts_with("INVITE sip:alice@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n"),
        "{got}"
    );
    let top_via = header(&got, "Via").unwrap();
    assert!(top_via.starts_with("SIP/2.0/WS "), "{got}");
    // alice is busy: the caller gets the 486
    let mut busy = String::new();
    for line in got.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("to:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            busy.push_str(line);
            if lower.starts_with("to:") {
                busy.push_str(";tag=alice1");
            }
            busy.push_str("\r\n");
        }
    }
    let busy = format!("SIP/2.0 486 Busy Here\r\n{busy}Content-Length: 0\r\n\r\n");
    ws.send(&busy);
    let mut got_486 = false;
    for _ in 0..5 {
        match recv(&caller) {
            Some(r) if status(&r) == 486 => {
                got_486 = true;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(got_486, "the caller got alice's 486:\n{}", srv.log());

    // protocol error: an unmasked frame closes with 1002
    use std::io::Write;
    let mut bad = Vec::new();
    sipshard::http::ws::encode_frame(&mut bad, sipshard::http::ws::Opcode::Text, b"x", true);
    ws.s.write_all(&bad).unwrap();
    // (the proxy's ACK for the 486 may come first)
    let (op, p) = std::iter::from_fn(|| ws.frame())
        .find(|(op, _)| *op != 1)
        .expect("a close frame");
    assert_eq!(op, 0x8);
    assert_eq!(&p[..2], &1002u16.to_be_bytes());

    // KSR.websocket.close_reason from the SIP route: the reply, then the
    // close frame; the client's close answer ends the connection
    let mut ws2 = WsClient::connect(srv.addr);
    ws2.send(
        &options
            .replace("sip:x@", "sip:bye@")
            .replace("ws-opt-1", "ws-opt-2"),
    );
    let reply = ws2.recv().expect("the OPTIONS reply");
    assert_eq!(reason(&reply), "OK ws", "{reply}");
    let (op, p) = ws2.frame().expect("the close frame");
    assert_eq!(op, 0x8);
    assert_eq!(&p[..2], &4000u16.to_be_bytes());
    assert_eq!(&p[2..], b"Because I say so");
    ws2.send_frame(
        sipshard::http::ws::Opcode::Close,
        &4000u16.to_be_bytes(),
        true,
    );
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = ws2.s.read_to_end(&mut rest);
}
