//! Kamailio 5.6 as a test peer (`PROXY_UNDER_TEST=kamailio`, the
//! differential test, the dispatcher comparison): started in the foreground
//! from a config the test fills in, its stderr kept, stopped on drop.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{client, exchange, request, TempDir};

/// `PROXY_UNDER_TEST=kamailio`: the test drives Kamailio instead of sipshard.
pub fn kamailio_selected() -> bool {
    std::env::var("PROXY_UNDER_TEST").is_ok_and(|v| v.eq_ignore_ascii_case("kamailio"))
}

/// Kamailio's module directory (with a trailing `/`), the first that holds
/// every module of `needed`.
pub fn kamailio_mpath(needed: &[&str]) -> String {
    for d in [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
        "/usr/lib64/kamailio/modules",
    ] {
        if needed.iter().all(|m| Path::new(d).join(m).exists()) {
            return format!("{d}/");
        }
    }
    panic!(
        "Kamailio 5.6 modules {needed:?} not found: run scripts/deps.sh (apt-get install \
         kamailio kamailio-lua-modules kamailio-sqlite-modules kamailio-extra-modules)"
    );
}

pub struct Kamailio {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl Kamailio {
    /// Writes `cfg` to `dir`/kamailio.cfg and runs it in the foreground
    /// (`-DD -E`, 8 MiB private memory, `args` added: `-m 64`, `-A NAME`...)
    /// with `envs` set. With `wait`, returns once it answers an OPTIONS on
    /// `port` (within 20 s).
    pub fn run(
        dir: TempDir,
        cfg: &str,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
        wait: bool,
    ) -> Kamailio {
        let cfg_path = dir.path("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut cmd = Command::new("kamailio");
        cmd.arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-M", "8", "-P"])
            .arg(dir.path("kamailio.pid"))
            .arg("-Y")
            .arg(&dir.0)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("kamailio is installed (scripts/deps.sh)");
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut k = Kamailio {
            child: Some(child),
            addr,
            log,
            dir,
        };
        if wait {
            k.wait_answering();
        }
        k
    }

    /// Until it answers anything (20 s at most; panics if it exits).
    fn wait_answering(&mut self) {
        let c = client();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kamailio exited during start ({st}):\n{}", self.log());
            }
            let probe = request(&c, "OPTIONS", &format!("sip:{}", self.addr), "");
            if exchange(&c, self.addr, probe.as_bytes()).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer:\n{}",
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM to its PID: the main process stops its children
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
