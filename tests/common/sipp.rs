//! sipp as a test peer: one process per caller or callee, each in its own
//! directory, its statistics, errors and message trace read back when it
//! ends, stopped on drop.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_udp_port, TempDir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Longest any one sipp may run (its own `-timeout` is a little shorter).
pub const SIPP_DEADLINE: Duration = Duration::from_secs(60);

/// tests/sipp/`name`, or `name` itself when it is an absolute path.
pub fn scenario(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    format!("{ROOT}/tests/sipp/{name}")
}

/// One sipp process running in its own directory.
pub struct Sipp {
    pub name: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

/// What a finished sipp left behind.
pub struct SippResult {
    pub name: String,
    pub code: Option<i32>,
    pub stats: HashMap<String, String>,
    /// `-trace_msg` log: every message sent and received.
    pub messages: String,
    pub errors: String,
    pub out: String,
    pub elapsed: Duration,
}

impl Sipp {
    /// A callee (UAS) on 127.0.0.1:`port`, `calls` calls; checks that the
    /// proxy at `proxy` is the top Via of what it receives.
    pub fn uas(
        dir: &TempDir,
        name: &str,
        scen: &str,
        port: u16,
        proxy: SocketAddr,
        calls: u32,
        extra: &[&str],
    ) -> Sipp {
        let mut args: Vec<String> = vec![
            "-sf".into(),
            scenario(scen),
            "-set".into(),
            "proxy".into(),
            proxy.to_string(),
            "-m".into(),
            calls.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let s = Self::spawn(dir, name, port, &args);
        // ready once it holds its port
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "sipp {name} did not bind {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// A caller (UAC) sending `calls` calls to `service`@proxy.
    pub fn uac(
        dir: &TempDir,
        name: &str,
        scen: &str,
        proxy: SocketAddr,
        service: &str,
        calls: u32,
        extra: &[&str],
    ) -> Sipp {
        let mut args: Vec<String> = vec![
            proxy.to_string(),
            "-sf".into(),
            scenario(scen),
            "-s".into(),
            service.into(),
            "-m".into(),
            calls.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, name, free_udp_port(), &args)
    }

    pub fn spawn(dir: &TempDir, name: &str, port: u16, args: &[String]) -> Sipp {
        let d = dir.path(name);
        std::fs::create_dir_all(&d).unwrap();
        let out = std::fs::File::create(d.join("sipp.out")).unwrap();
        let child = Command::new("sipp")
            .args(args)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-nostdin", "-timeout", "50s", "-timeout_error"])
            .args(["-trace_msg", "-message_file", "messages.log"])
            .args(["-trace_err", "-error_file", "errors.log"])
            .args(["-trace_stat", "-stf", "stats.csv", "-fd", "1"])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("sipp (sip-tester) is installed: scripts/deps.sh");
        Sipp {
            name: name.into(),
            dir: d,
            child: Some(child),
        }
    }

    pub fn wait(self) -> SippResult {
        self.wait_within(SIPP_DEADLINE)
    }

    /// A callee of a caller that `failed`: its calls will not come, so it
    /// gets 3 s to finish before it is stopped.
    pub fn wait_after(self, caller: &SippResult) -> SippResult {
        if caller.code == Some(0) {
            self.wait()
        } else {
            self.wait_within(Duration::from_secs(3))
        }
    }

    pub fn wait_within(mut self, limit: Duration) -> SippResult {
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        SippResult {
            name: self.name.clone(),
            code,
            stats: parse_stats(&read("stats.csv")),
            messages: read("messages.log"),
            errors: read("errors.log"),
            out: read("sipp.out"),
            elapsed: started.elapsed(),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last row of a sipp `-trace_stat` file, by column name.
pub fn parse_stats(csv: &str) -> HashMap<String, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(head) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    head.split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl SippResult {
    pub fn count(&self, col: &str) -> u64 {
        self.stats
            .get(col)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no {col} in the stats:\n{}", self.name, self.report()))
    }

    pub fn successful(&self) -> u64 {
        self.count("SuccessfulCall(C)")
    }

    pub fn failed(&self) -> u64 {
        self.count("FailedCall(C)")
    }

    /// Messages whose first line starts with `start` that this sipp sent
    /// (`dir` = "sent") or received ("received"), retransmissions included.
    pub fn traced(&self, dir: &str, start: &str) -> usize {
        self.messages
            .split("----------------------------------------------- ")
            .filter(|entry| {
                let mut lines = entry.lines().skip(1);
                let what = lines.next().unwrap_or("");
                let first = lines.find(|l| !l.trim().is_empty()).unwrap_or("");
                what.contains(&format!("message {dir}")) && first.starts_with(start)
            })
            .count()
    }

    pub fn report(&self) -> String {
        let tail = |s: &str, n: usize| {
            let s = s.trim_end();
            s[s.len().saturating_sub(n)..].to_string()
        };
        format!(
            "--- sipp {} (exit {:?}, {:.1} s)\nstdout/stderr:\n{}\nerrors:\n{}\nmessages (tail):\n{}",
            self.name,
            self.code,
            self.elapsed.as_secs_f64(),
            tail(&self.out, 1500),
            tail(&self.errors, 3000),
            tail(&self.messages, 4000)
        )
    }
}
