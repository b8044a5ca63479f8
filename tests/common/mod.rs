//! Test harness: starts the real `sipshard` binary on loopback and talks to it
//! over real UDP sockets.
#![allow(dead_code)]

pub mod kamailio;
pub mod sipp;
#[allow(unused_imports)]
pub use kamailio::*;
#[allow(unused_imports)]
pub use sipp::*;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free UDP port on 127.0.0.1 (bound and released).
/// A UDP port that is free for TCP too (a server with `[tcp] enable`
/// listens on both).
pub fn free_udp_port() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A free UDP port below 10000 (sipsak mangles 5-digit ports in the URIs it writes).
pub fn free_low_udp_port() -> u16 {
    let base = 5100 + (std::process::id() % 4000) as u16;
    for i in 0..4000u16 {
        let p = 5100 + (base - 5100 + i * 7) % 4800;
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free low UDP port");
}

pub fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("sipshard-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
    pub dir: TempDir,
    pub rpc_port: u16,
}

pub struct ServerOpts<'a> {
    pub script: Option<&'a str>,
    pub cores: &'a str,
    /// Extra TOML appended to the generated config (sections of their own).
    pub extra_toml: &'a str,
    /// Extra `key = value` lines inside `[core]`.
    pub core_toml: &'a str,
    pub args: Vec<String>,
    /// Listen on a port below 10000.
    pub low_port: bool,
}

impl Default for ServerOpts<'_> {
    fn default() -> Self {
        ServerOpts {
            script: None,
            cores: "2",
            extra_toml: "",
            core_toml: "",
            args: Vec::new(),
            low_port: false,
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sipshard")
}

impl Server {
    pub fn start(opts: ServerOpts<'_>) -> Server {
        let dir = TempDir::new("srv");
        Self::start_in(dir, opts)
    }

    /// Starts the server in `dir`. Ports are picked free but can be taken
    /// before the server binds them (by another test's server, or by an
    /// outgoing connection's ephemeral port when TCP listens on the UDP
    /// port): a start that fails with EADDRINUSE is retried on new ports.
    pub fn start_in(mut dir: TempDir, opts: ServerOpts<'_>) -> Server {
        let mut attempt = 0;
        loop {
            let mut srv = Self::spawn_in(dir, &opts);
            match srv.wait_started() {
                Ok(()) => return srv,
                Err(log) if attempt < 4 && log.contains("Address already in use") => {
                    attempt += 1;
                    dir = std::mem::replace(&mut srv.dir, TempDir(PathBuf::new()));
                    drop(srv);
                }
                Err(log) => panic!("{log}"),
            }
        }
    }

    fn spawn_in(dir: TempDir, opts: &ServerOpts<'_>) -> Server {
        let port = if opts.low_port {
            free_low_udp_port()
        } else {
            free_udp_port()
        };
        let rpc_port = free_tcp_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut toml = format!(
            "[core]\nlisten = \"{addr}\"\ncores = {}\n",
            toml_cores(opts.cores)
        );
        if !opts.core_toml.contains("log_level") {
            toml.push_str("log_level = \"info\"\n");
        }
        toml.push_str(opts.core_toml);
        toml.push('\n');
        if let Some(script) = opts.script {
            let p = dir.path("route.lua");
            std::fs::write(&p, script).unwrap();
            toml.push_str(&format!("script = \"{}\"\n", p.display()));
        }
        if !opts.extra_toml.contains("[rpc]") {
            toml.push_str(&format!("[rpc]\nlisten = \"127.0.0.1:{rpc_port}\"\n"));
        }
        toml.push_str(
            &opts
                .extra_toml
                .replace("@RPC_PORT@", &rpc_port.to_string())
                .replace("@DIR@", &dir.0.display().to_string()),
        );
        let cfg = dir.path("sipshard.toml");
        std::fs::write(&cfg, &toml).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(&opts.args)
            .current_dir(&dir.0);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn sipshard");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let r = BufReader::new(err_pipe);
            for line in r.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Server {
            child: Some(child),
            addr,
            stderr,
            dir,
            rpc_port,
        }
    }

    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stderr.lock().unwrap().contains("sipshard started") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // the stderr reader may still be copying the last lines
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "sipshard exited during start ({status}):\n{}",
                    self.stderr.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sipshard did not start in time:\n{}",
                    self.stderr.lock().unwrap()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the server's log shows `needle` within `within` (its stderr
    /// is read by another thread: a line can land just after the reply).
    pub fn log_shows(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// SIGTERM, wait, return (exit success, stdout).
    pub fn stop(mut self) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                return (status.success(), out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sipshard did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .unwrap_or(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn toml_cores(c: &str) -> String {
    if c.contains(',') || c.contains('-') {
        format!("[{}]", c.split(',').collect::<Vec<_>>().join(", "))
    } else if c == "auto" {
        "\"auto\"".into()
    } else {
        c.to_string()
    }
}

/// A client socket on 127.0.0.1 with a short read timeout.
pub fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    s
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Builds a request from `sock`'s address with fresh Call-ID/branch. The
/// caller is foreign (`client.example`): a From on our own address would be
/// a local user for `KSR.is_myself_furi()` (any port, as in Kamailio) and
/// the default script would challenge it.
pub fn request(sock: &UdpSocket, method: &str, ruri: &str, extra_headers: &str) -> String {
    let local = sock.local_addr().unwrap();
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-t{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Tester\" <sip:tester@client.example>;tag=ft{n}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: call-{n}-{}@test\r\n\
         CSeq: {n} {method}\r\n\
         User-Agent: sipshard-tests\r\n\
         {extra_headers}\
         Content-Length: 0\r\n\r\n",
        std::process::id()
    )
}

/// Sends `msg` and returns the first datagram received (None on timeout).
pub fn exchange(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<String> {
    sock.send_to(msg, to).unwrap();
    recv(sock)
}

pub fn recv(sock: &UdpSocket) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Status code of a reply text.
pub fn status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Reason phrase of a reply.
pub fn reason(reply: &str) -> String {
    let line = reply.lines().next().unwrap_or("");
    line.splitn(3, ' ').nth(2).unwrap_or("").to_string()
}

/// First value of header `name` (case-insensitive) in a message text.
pub fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

pub fn headers(msg: &str, name: &str) -> Vec<String> {
    msg.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Calls a JSON-RPC method on the server's control interface over real HTTP.
pub fn rpc(port: u16, method: &str, params: serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("rpc connect");
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
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("bad rpc body {e}: {resp}"));
    v.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("rpc error: {v}"))
}

/// Runs `sipshard` with arguments, panicking on failure; returns stdout.
pub fn sipshard(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sipshard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `Digest k="v", ...` into a map (quotes removed).
pub fn parse_challenge(h: &str) -> std::collections::HashMap<String, String> {
    let h = h.trim().strip_prefix("Digest").unwrap_or(h).trim();
    let mut out = std::collections::HashMap::new();
    let mut rest = h;
    while !rest.is_empty() {
        let Some((k, r)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let r = r.trim_start();
        let (v, r2) = if let Some(q) = r.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), &q[(end + 1).min(q.len())..])
        } else {
            let end = r.find(',').unwrap_or(r.len());
            (r[..end].trim().to_string(), &r[end..])
        };
        out.insert(k, v);
        rest = r2.trim_start_matches([',', ' ']);
    }
    out
}

pub fn hex_hash(alg: &str, s: &str) -> String {
    use md5::Digest as _;
    match alg {
        "SHA-256" => sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        _ => md5::Md5::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// An Authorization header value answering `challenge` (qop=auth when offered).
pub fn digest_authorization(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let c = parse_challenge(challenge);
    let realm = &c["realm"];
    let nonce = &c["nonce"];
    let alg = c.get("algorithm").map(String::as_str).unwrap_or("MD5");
    let ha1 = hex_hash(alg, &format!("{user}:{realm}:{password}"));
    let ha2 = hex_hash(alg, &format!("{method}:{uri}"));
    let cnonce = "0a4f113b";
    let ncs = format!("{nc:08x}");
    if c.get("qop").is_some_and(|q| q.contains("auth")) {
        let resp = hex_hash(alg, &format!("{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={alg}, cnonce=\"{cnonce}\", nc={ncs}, qop=auth"
        )
    } else {
        let resp = hex_hash(alg, &format!("{ha1}:{nonce}:{ha2}"));
        format!("Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={alg}")
    }
}

/// A REGISTER for `user@domain` with explicit Call-ID and CSeq.
pub fn register_msg(
    sock: &UdpSocket,
    user: &str,
    domain: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> String {
    let local = sock.local_addr().unwrap();
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-r{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{domain}>;tag=rt{n}\r\n\
         To: <sip:{user}@{domain}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         User-Agent: sipshard-tests\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n"
    )
}

#[allow(clippy::too_many_arguments)]
/// REGISTER, answer the challenge, return the final reply. `extra` carries
/// Contact/Expires lines.
pub fn register_with_auth(
    sock: &UdpSocket,
    to: SocketAddr,
    user: &str,
    domain: &str,
    password: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> String {
    let r = exchange(
        sock,
        to,
        register_msg(sock, user, domain, call_id, cseq, extra).as_bytes(),
    )
    .expect("challenge");
    assert_eq!(status(&r), 401, "expected a challenge: {r}");
    let ch = header(&r, "WWW-Authenticate").expect("WWW-Authenticate");
    let auth = digest_authorization(&ch, user, password, "REGISTER", &format!("sip:{domain}"), 1);
    let msg = register_msg(
        sock,
        user,
        domain,
        call_id,
        cseq + 1,
        &format!("Authorization: {auth}\r\n{extra}"),
    );
    exchange(sock, to, msg.as_bytes()).expect("final reply")
}

/// A database of one backend for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    admin: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = TempDir::new("db");
        let url = format!("sqlite://{}", dir.path("sipshard.db").display());
        TestDb {
            url,
            admin: None,
            _dir: Some(dir),
        }
    }

    pub fn postgres() -> TestDb {
        Self::server(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432",
        )
    }

    pub fn mariadb() -> TestDb {
        Self::server(
            "mysql://root@127.0.0.1:3306/test",
            "mysql://root@127.0.0.1:3306",
        )
    }

    fn server(admin_url: &str, base: &str) -> TestDb {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "sipshard_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        admin_exec(admin_url, &format!("DROP DATABASE IF EXISTS {name}"));
        admin_exec(admin_url, &format!("CREATE DATABASE {name}"));
        TestDb {
            url: format!("{base}/{name}"),
            admin: Some((admin_url.to_string(), name)),
            _dir: None,
        }
    }

    /// Creates the schema and users `(user@domain, password)`.
    pub fn init(&self, users: &[(&str, &str)]) {
        sipshard(&["db", "init", "--db", &self.url]);
        for (u, p) in users {
            sipshard(&["user", "add", u, p, "--db", &self.url]);
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.admin {
            let force = if admin.starts_with("postgres") {
                " WITH (FORCE)"
            } else {
                ""
            };
            admin_exec(admin, &format!("DROP DATABASE IF EXISTS {name}{force}"));
        }
    }
}

fn admin_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
            sqlx::query(sql)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        } else {
            let mut c = sqlx::MySqlConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("MariaDB at {url}: {e}"));
            sqlx::query(sql)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    });
}
