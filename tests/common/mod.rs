//! Test harness: starts the real `sipshard` binary on loopback and talks to it
//! over real UDP sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
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

    pub fn start_in(dir: TempDir, opts: ServerOpts<'_>) -> Server {
        let port = if opts.low_port {
            free_low_udp_port()
        } else {
            free_udp_port()
        };
        let rpc_port = free_tcp_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut toml = format!(
            "[core]\nlisten = \"{addr}\"\ncores = {}\nlog_level = \"info\"\n",
            toml_cores(opts.cores)
        );
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
        let mut srv = Server {
            child: Some(child),
            addr,
            stderr,
            dir,
            rpc_port,
        };
        srv.wait_started();
        srv
    }

    fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stderr.lock().unwrap().contains("sipshard started") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sipshard exited during start ({status}):\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "sipshard did not start in time:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
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

/// Builds a request from `sock`'s address with fresh Call-ID/branch.
pub fn request(sock: &UdpSocket, method: &str, ruri: &str, extra_headers: &str) -> String {
    let local = sock.local_addr().unwrap();
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-t{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Tester\" <sip:tester@127.0.0.1>;tag=ft{n}\r\n\
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
