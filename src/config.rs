//! Configuration: the TOML file (`etc/sipshard.toml` is the commented
//! reference), embedded defaults, and CLI overrides.
//!
//! Every section denies unknown keys, so a typo is refused at start with the
//! file, line and key named, instead of being silently ignored.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The routing script bundled into the binary, used when no script is configured.
pub const DEFAULT_SCRIPT: &str = include_str!("../etc/sipshard.lua");
/// Name under which the bundled script reports errors.
pub const DEFAULT_SCRIPT_NAME: &str = "<bundled>/etc/sipshard.lua";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub core: CoreConfig,
    /// Defaults for every shard.
    pub shard: ShardTuning,
    /// Per-shard overrides, in shard order (`[[shards]]`).
    pub shards: Vec<ShardOverride>,
    pub rpc: RpcConfig,
    pub db: DbConfig,
    pub auth: AuthConfig,
    pub registrar: RegistrarConfig,
    /// Transactions (Kamailio's tm module parameters).
    pub tm: TmConfig,
    /// Where the config came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// UDP listen address (`ip:port`).
    pub listen: SocketAddr,
    /// Shard count (`2`), an explicit CPU list (`[0, 1]`), or `"auto"` (one per CPU).
    pub cores: Cores,
    /// Routing script path; empty = the bundled default script.
    pub script: Option<PathBuf>,
    /// What to do with a request whose route raised a Lua error.
    pub on_script_error: OnScriptError,
    /// Extra host names / IPs this server answers for (`is_myself`), like
    /// Kamailio's `alias`. The listen address is always included.
    pub alias: Vec<String>,
    /// Value of the `Server:` header on locally generated replies; empty = none.
    pub server_header: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, or a tracing filter).
    pub log_level: String,
    /// Log lines about malformed input at most this often per shard per second.
    pub bad_input_log_per_s: u32,
    /// How shards share the UDP port: one socket every shard waits on, or
    /// one SO_REUSEPORT socket per shard.
    pub udp_socket: UdpSocketMode,
    /// Pin each shard thread to its CPU. Off (the default): the scheduler
    /// places the shard threads, which measured cheaper per request whenever
    /// other busy processes (a load generator, the database) share the cores
    /// (docs/tuning.md); `cores` then only sets how many shards run.
    pub pin: bool,
    /// Test-only KSR hooks (`KSR.sipshard_test.*`, e.g. a callback that
    /// panics). Never enable in production.
    pub test_hooks: bool,
    /// Names the routing script sees as defined, like Kamailio's
    /// `#!define NAME` / `#!define NAME value` (or `-A NAME`): `"NAME"` or
    /// `"NAME=value"`. Read with `KSR.kx.ifdef`, `ifndef`, `get_def`, `get_defn`.
    pub defines: Vec<String>,
}

/// How the shards read the UDP port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpSocketMode {
    /// One socket; each datagram wakes one idle shard (`EPOLLEXCLUSIVE`).
    /// Work-conserving, but the kernel prefers the first idle shard, so at
    /// low load one shard takes most of the traffic.
    Shared,
    /// One socket per shard (SO_REUSEPORT): the kernel hashes the source
    /// address and port, so one peer's traffic stays on one shard.
    Reuseport,
    /// One socket per shard (SO_REUSEPORT) with a BPF program that sends
    /// each datagram to a random shard: one peer's traffic is spread evenly.
    #[default]
    Spread,
}

/// Which shard runs a request's route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dispatch {
    /// The shard that read the request runs it; state it touches (location,
    /// nonce counts, credentials) is shared by all shards.
    #[default]
    Local,
    /// Hand the request to a shard chosen by key before the route runs:
    /// REGISTER by its To AOR, other requests by Call-ID.
    Key,
    /// As `local` for REGISTER and for OPTIONS without a user part in the
    /// Request-URI (pings of this server), every other request to the
    /// shard of its Call-ID: a transaction's retransmissions, its CANCEL
    /// and its ACK meet the shard that owns it, and so do a dialog's
    /// in-dialog requests.
    Callid,
}

/// `[tm]`: transaction timers and limits (Kamailio tm names in brackets).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TmConfig {
    /// RFC 3261 T1, ms (`retr_timer1`).
    pub t1_ms: u64,
    /// T2, ms (`retr_timer2`).
    pub t2_ms: u64,
    /// T4, ms.
    pub t4_ms: u64,
    /// No final reply on a branch after this: 408 (`fr_timer`), ms.
    pub fr_timer_ms: u64,
    /// INVITE branch ringing longer than this: CANCEL + 408 (`fr_inv_timer`), ms.
    pub fr_inv_timer_ms: u64,
    /// A finished transaction stays this long for retransmissions (`wt_timer`), ms.
    pub wait_ms: u64,
    /// Transactions at most, over every shard (64 lock stripes of
    /// max_transactions/64); beyond it new ones are refused (500).
    pub max_transactions: usize,
    /// Branches per transaction at most (`max_branches`).
    pub max_branches: usize,
}

impl Default for TmConfig {
    fn default() -> Self {
        TmConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            fr_timer_ms: 30_000,
            fr_inv_timer_ms: 120_000,
            wait_ms: 5000,
            max_transactions: 65_536,
            max_branches: 12,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            listen: "127.0.0.1:5060".parse().expect("valid literal"),
            cores: Cores::Auto,
            script: None,
            on_script_error: OnScriptError::Reply500,
            alias: Vec::new(),
            server_header: "sipshard".to_string(),
            log_level: "info".to_string(),
            bad_input_log_per_s: 5,
            udp_socket: UdpSocketMode::Spread,
            pin: false,
            test_hooks: false,
            defines: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnScriptError {
    /// Answer the request `500 Server Internal Error` (replies are dropped).
    #[default]
    #[serde(rename = "reply500")]
    Reply500,
    /// Drop the message silently (a counter and a log line still record it).
    Drop,
}

/// Which CPUs get a shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Cores {
    #[default]
    Auto,
    Count(usize),
    List(Vec<usize>),
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            List(Vec<usize>),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Cores::Count(n)),
            Raw::List(l) => Ok(Cores::List(l)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for Cores {
    type Err = String;
    /// `auto`, `4`, or a CPU list `0,1` / `0-3` / `0,2-3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Cores::Auto);
        }
        if !s.contains([',', '-']) {
            return s
                .parse::<usize>()
                .map(Cores::Count)
                .map_err(|_| format!("`{s}` is not a core count, a CPU list or `auto`"));
        }
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let bad = || format!("`{part}` is not a CPU number or range");
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(part.parse().map_err(|_| bad())?),
            }
        }
        Ok(Cores::List(cpus))
    }
}

/// Lua garbage collector mode for a shard's VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LuaGc {
    #[default]
    Incremental,
    Generational,
}

/// Per-shard tuning knobs. `[shard]` sets defaults; `[[shards]]` overrides.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShardTuning {
    /// SO_RCVBUF of the shard's UDP socket (the kernel doubles it, capped by rmem_max).
    pub recv_buffer_bytes: usize,
    /// SO_SNDBUF of the shard's UDP socket.
    pub send_buffer_bytes: usize,
    /// Datagrams read with one `recvmmsg` (the most handled per turn before
    /// the shard looks at its other work).
    pub recv_batch: usize,
    /// Microseconds an idle shard keeps polling its socket before it sleeps
    /// in epoll: lower latency, but burns the core while idle.
    pub spin_before_park_us: u64,
    /// Scheduling niceness of the shard thread (-20..=19; 0 = leave as is).
    /// Negative values (root only) let a shard preempt other processes on its
    /// core, e.g. a load generator, which shortens cross-shard waits.
    pub nice: i32,
    /// Requests whose route is suspended (waiting on the database) at once.
    pub max_inflight: usize,
    /// Largest SIP message accepted, bytes.
    pub max_msg_bytes: usize,
    /// Most header lines indexed in one message.
    pub max_headers: usize,
    pub lua_gc: LuaGc,
    /// Incremental: step multiplier (Lua `setstepmul`); generational: minor multiplier.
    pub lua_gc_step: i32,
    /// Incremental: pause (Lua `setpause`); generational: major multiplier.
    pub lua_gc_pause: i32,
    /// Most entries in the shard's command queue from the control plane.
    pub control_queue: usize,
    /// Messages handed over by other shards and not yet run (the owner of a
    /// transaction's replies, `dispatch = "key"`); beyond it they are dropped
    /// and counted.
    pub dispatch_queue: usize,
    /// Which shard runs a request's route.
    pub dispatch: Dispatch,
}

impl Default for ShardTuning {
    fn default() -> Self {
        ShardTuning {
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 4 << 20,
            recv_batch: 32,
            spin_before_park_us: 0,
            nice: 0,
            // Each suspended route holds its datagram-sized context.
            max_inflight: 1_024,
            max_msg_bytes: 65_535,
            max_headers: 128,
            lua_gc: LuaGc::Incremental,
            lua_gc_step: 200,
            lua_gc_pause: 200,
            control_queue: 64,
            dispatch_queue: 4096,
            dispatch: Dispatch::Local,
        }
    }
}

/// `[[shards]]`: the CPU to pin and any knobs that differ from `[shard]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardOverride {
    pub cpu: Option<usize>,
    pub recv_buffer_bytes: Option<usize>,
    pub send_buffer_bytes: Option<usize>,
    pub recv_batch: Option<usize>,
    pub spin_before_park_us: Option<u64>,
    pub nice: Option<i32>,
    pub max_inflight: Option<usize>,
    pub lua_gc: Option<LuaGc>,
    pub lua_gc_step: Option<i32>,
    pub lua_gc_pause: Option<i32>,
}

/// Digest authentication settings (auth and auth_db modules).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Nonce HMAC secret (any string; hashed to 32 bytes). Empty = random at
    /// start, which is fine for one process: all shards share it.
    pub secret: String,
    /// Seconds a nonce is valid (Kamailio `nonce_expire`).
    pub nonce_expire_s: u64,
    /// Credential cache (shared by the shards) TTL and size.
    pub cache_ttl_s: u64,
    pub cache_negative_ttl_s: u64,
    pub cache_max_entries: usize,
    /// Nonce-count (replay) table size, shared by the shards.
    pub nc_max_entries: usize,
    /// Milliseconds a credential lookup may wait for the database before the
    /// request is answered 500.
    pub db_timeout_ms: u64,
    /// Use the `ha1b` column (user@domain) instead of `ha1` (Kamailio `use_domain`).
    pub use_domain: bool,
    /// Digest algorithms offered in challenges, in preference order
    /// (Kamailio auth `algorithm`): "MD5", "SHA-256", "SHA-512-256".
    /// SHA-* need the plain-text `password` column.
    pub algorithms: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: String::new(),
            nonce_expire_s: 300,
            cache_ttl_s: 60,
            cache_negative_ttl_s: 5,
            cache_max_entries: 100_000,
            nc_max_entries: 100_000,
            db_timeout_ms: 2_000,
            use_domain: false,
            algorithms: vec!["MD5".to_string()],
        }
    }
}

/// Registrar / usrloc settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    pub default_expires_s: u32,
    pub min_expires_s: u32,
    pub max_expires_s: u32,
    /// Most contacts per AOR (0 = no limit besides the table maxima).
    pub max_contacts: usize,
    /// Most AORs the location table keeps, per shard (the table is shared:
    /// its maximum is this times the shard count).
    pub max_aors_per_shard: usize,
    /// usrloc `db_mode`: 0 memory, 1 write-through, 2 write-back, 3 DB only.
    pub db_mode: u8,
    /// Write-back flush / expiry timer interval (usrloc `timer_interval`).
    pub timer_interval_s: u64,
    /// Use `user@domain` as AOR (usrloc `use_domain`).
    pub use_domain: bool,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires_s: 3600,
            min_expires_s: 60,
            max_expires_s: 86_400,
            max_contacts: 10,
            max_aors_per_shard: 1_000_000,
            db_mode: 0,
            timer_interval_s: 60,
            use_domain: false,
        }
    }
}

/// `[rpc]` configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    pub listen: SocketAddr,
    /// When false, `rpc::spawn` starts nothing (no listener, no hlog writer).
    pub enabled: bool,
    /// Concurrent HTTP connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Periodic interval log of route latency (off when absent).
    pub hlog: Option<crate::stats::hlog::HlogConfig>,
    /// `/metrics` histogram bucket upper bounds in microseconds.
    pub prometheus_buckets_us: Vec<f64>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5070)),
            enabled: true,
            max_connections: 64,
            hlog: None,
            prometheus_buckets_us: crate::stats::prom::default_buckets_us(),
        }
    }
}

/// `[db]` section of the configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// `sqlite://path` (file created if missing), `postgres://user@host/db`
    /// or `mysql://user@host/db` (MySQL and MariaDB).
    pub url: String,
    /// Pool size: database connections open at once, and requests in flight.
    pub max_connections: u32,
    /// Requests waiting for a connection; one more gets `QueueFull`.
    pub queue_depth: usize,
    /// Longest a request may take, including waiting for a connection.
    pub query_timeout_ms: u64,
    /// Most rows `location_load_all` returns; more is `DbError::TooManyRows`.
    pub location_rows_max: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://sipshard.db".to_owned(),
            max_connections: 4,
            queue_depth: 1_024,
            query_timeout_ms: 2_000,
            location_rows_max: 1_000_000,
        }
    }
}

/// One shard's resolved settings.
#[derive(Clone, Debug, Serialize)]
pub struct ShardSpec {
    pub id: usize,
    pub cpu: Option<usize>,
    pub tuning: ShardTuning,
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.origin = origin.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Embedded defaults (no file).
    pub fn embedded() -> Config {
        Config {
            origin: "<embedded defaults>".to_string(),
            ..Config::default()
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Range checks a type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tuning(&self.shard, "shard")?;
        if let Cores::Count(0) = self.core.cores {
            return Err(self.invalid("core.cores", "must be at least 1"));
        }
        if let Cores::List(l) = &self.core.cores {
            if l.is_empty() {
                return Err(self.invalid("core.cores", "the CPU list is empty"));
            }
        }
        let r = &self.registrar;
        if r.min_expires_s > r.max_expires_s {
            return Err(self.invalid(
                "registrar.min_expires_s",
                "is above registrar.max_expires_s",
            ));
        }
        if r.db_mode > 3 {
            return Err(self.invalid("registrar.db_mode", "must be 0, 1, 2 or 3"));
        }
        if let Err(e) = self.rpc.validate() {
            return Err(self.invalid("rpc", e));
        }
        if self.auth.nonce_expire_s == 0 {
            return Err(self.invalid("auth.nonce_expire_s", "must be at least 1"));
        }
        let tm = &self.tm;
        if tm.t1_ms == 0 || tm.t2_ms < tm.t1_ms {
            return Err(self.invalid("tm.t1_ms", "must be at least 1 and at most tm.t2_ms"));
        }
        if tm.fr_timer_ms == 0 || tm.fr_inv_timer_ms == 0 || tm.wait_ms == 0 {
            return Err(self.invalid("tm", "timers must be at least 1 ms"));
        }
        if tm.max_transactions == 0 || !(1..=64).contains(&tm.max_branches) {
            return Err(self.invalid(
                "tm.max_branches",
                "max_transactions must be at least 1, max_branches 1..=64",
            ));
        }
        Ok(())
    }

    /// Range checks of one shard's knobs (`[shard]` or a resolved `[[shards]]` entry).
    fn validate_tuning(&self, t: &ShardTuning, prefix: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if t.max_msg_bytes < 512 || t.max_msg_bytes > 65_535 {
            return Err(self.invalid(&key("max_msg_bytes"), "must be within 512..=65535"));
        }
        if t.max_headers == 0 || t.max_headers > 1024 {
            return Err(self.invalid(&key("max_headers"), "must be within 1..=1024"));
        }
        if t.recv_batch == 0 {
            return Err(self.invalid(&key("recv_batch"), "must be at least 1"));
        }
        if t.max_inflight == 0 {
            return Err(self.invalid(&key("max_inflight"), "must be at least 1"));
        }
        if t.recv_batch > 1024 {
            return Err(self.invalid(&key("recv_batch"), "must be at most 1024"));
        }
        if t.control_queue == 0 || t.dispatch_queue == 0 {
            return Err(self.invalid(&key("control_queue / dispatch_queue"), "must be at least 1"));
        }
        if !(-20..=19).contains(&t.nice) {
            return Err(self.invalid(&key("nice"), "must be within -20..=19"));
        }
        if t.spin_before_park_us > 1_000_000 {
            return Err(self.invalid(&key("spin_before_park_us"), "must be at most 1000000"));
        }
        Ok(())
    }

    /// The shards to start: CPU placement from `core.cores`, knobs from
    /// `[shard]` merged with `[[shards]]`.
    pub fn shard_specs(&self) -> Result<Vec<ShardSpec>, ConfigError> {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpus: Vec<Option<usize>> = match &self.core.cores {
            Cores::Auto => (0..online).map(Some).collect(),
            Cores::Count(n) => (0..*n)
                .map(|i| if *n <= online { Some(i) } else { None })
                .collect(),
            Cores::List(l) => {
                if let Some(bad) = l.iter().find(|c| **c >= online) {
                    return Err(self.invalid(
                        "core.cores",
                        format!("CPU {bad} is not online (this machine has {online})"),
                    ));
                }
                l.iter().copied().map(Some).collect()
            }
        };
        if self.shards.len() > cpus.len() {
            return Err(self.invalid(
                "shards",
                format!(
                    "{} [[shards]] entries but only {} shards configured by core.cores",
                    self.shards.len(),
                    cpus.len()
                ),
            ));
        }
        let mut specs = Vec::with_capacity(cpus.len());
        for (id, cpu) in cpus.into_iter().enumerate() {
            let mut tuning = self.shard.clone();
            let mut cpu = cpu;
            if let Some(o) = self.shards.get(id) {
                if o.cpu.is_some() {
                    cpu = o.cpu;
                }
                macro_rules! over {
                    ($($f:ident),*) => { $( if let Some(v) = o.$f { tuning.$f = v; } )* };
                }
                over!(
                    recv_buffer_bytes,
                    send_buffer_bytes,
                    recv_batch,
                    spin_before_park_us,
                    nice,
                    max_inflight,
                    lua_gc,
                    lua_gc_step,
                    lua_gc_pause
                );
            }
            self.validate_tuning(&tuning, &format!("shards[{id}]"))?;
            specs.push(ShardSpec { id, cpu, tuning });
        }
        Ok(specs)
    }
}

/// toml's error already names line and column; add the offending line's key
/// when the error points at one.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = e.message().to_string();
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
        let key = line_text.split('=').next().unwrap_or("").trim();
        msg = format!("line {line}: key `{key}`: {msg} (`{line_text}`)");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::embedded();
        c.validate().unwrap();
        assert_eq!(c.core.listen.port(), 5060);
    }

    #[test]
    fn reference_config_parses_and_equals_defaults() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sipshard.toml"));
        let c = Config::from_file(p).unwrap();
        let d = Config::embedded();
        assert_eq!(c.shard, d.shard);
        assert_eq!(c.core.listen, d.core.listen);
        assert_eq!(c.db, d.db);
        assert_eq!(c.rpc, d.rpc);
    }

    #[test]
    fn cores_forms() {
        let cases: &[(&str, Cores)] = &[
            ("auto", Cores::Auto),
            ("2", Cores::Count(2)),
            ("0,1", Cores::List(vec![0, 1])),
            ("0-2", Cores::List(vec![0, 1, 2])),
            ("0,2-3", Cores::List(vec![0, 2, 3])),
        ];
        for (s, want) in cases {
            assert_eq!(&s.parse::<Cores>().unwrap(), want, "{s}");
        }
        assert!("x".parse::<Cores>().is_err());
        assert!("3-1".parse::<Cores>().is_err());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = Config::from_toml("[core]\nlisten = \"127.0.0.1:5060\"\nlisen = 3\n", "x.toml")
            .unwrap_err();
        let s = err.to_string();
        assert!(s.contains("x.toml"), "{s}");
        assert!(s.contains("line 3"), "{s}");
        assert!(s.contains("lisen"), "{s}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = Config::from_toml("[shard]\nmax_headers = 0\n", "y.toml").unwrap_err();
        assert!(err.to_string().contains("shard.max_headers"), "{err}");
        let err = Config::from_toml("[core]\ncores = \"banana\"\n", "y.toml").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn shard_overrides_are_range_checked() {
        let c = Config::from_toml(
            "[core]\ncores = [0]\n[[shards]]\nmax_inflight = 0\n",
            "o.toml",
        )
        .unwrap();
        let e = c.shard_specs().unwrap_err().to_string();
        assert!(e.contains("shards[0].max_inflight"), "{e}");
        let e = Config::from_toml("[shard]\nrecv_batch = 0\n", "o.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shard.recv_batch"), "{e}");
    }

    #[test]
    fn shard_overrides_merge() {
        let c = Config::from_toml(
            "[core]\ncores = [0]\n[shard]\nrecv_batch = 8\n[[shards]]\ncpu = 0\nrecv_batch = 4\n",
            "z.toml",
        )
        .unwrap();
        let specs = c.shard_specs().unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].tuning.recv_batch, 4);
        assert_eq!(specs[0].cpu, Some(0));
    }
}
