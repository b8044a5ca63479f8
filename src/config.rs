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
/// What `kemi.status`, `sipshard check` and the logs name as the script
/// when `[core] route = "native"`.
pub const NATIVE_ROUTE_NAME: &str = "<native route>";

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
    /// Hash tables (Kamailio's htable module `htable` modparam), one
    /// `[[htable]]` entry per table.
    pub htable: Vec<HtableDef>,
    /// Flood detection (Kamailio's pike module parameters).
    pub pike: PikeConfig,
    /// Flood control before the route: per-source rate limit and bans after
    /// failed authentications (sipshard).
    pub flood: FloodConfig,
    /// Address permissions (Kamailio's permissions module, `address` table).
    pub permissions: PermissionsConfig,
    /// `KSR.sanity` (Kamailio's sanity module parameters).
    pub sanity: SanityConfig,
    /// KSR.sqlops named connections (Kamailio's sqlops `sqlcon` modparam),
    /// one `[[sqlops]]` entry each.
    pub sqlops: Vec<SqlopsDef>,
    /// KSR.ndb_redis servers (Kamailio's ndb_redis `server` modparam), one
    /// `[[redis]]` entry each.
    pub redis: Vec<RedisDef>,
    /// `KSR.dialog` (Kamailio's dialog module parameters).
    pub dialog: DialogConfig,
    /// `KSR.dispatcher` (Kamailio's dispatcher module parameters); loaded
    /// only when `list_file` or `db_url` is set.
    pub dispatcher: DispatcherConfig,
    /// `KSR.ipops` DNS lookups (sipshard settings: Kamailio's ipops has none).
    pub ipops: IpopsConfig,
    /// HTTP requests on the SIP stream ports, answered by the script
    /// (Kamailio's xhttp module parameters).
    pub xhttp: XhttpConfig,
    /// WebSocket connections (RFC 6455, SIP over WebSocket RFC 7118;
    /// Kamailio's websocket module parameters).
    pub websocket: WebsocketConfig,
    /// SIP over TCP (Kamailio's core `tcp_*` parameters).
    pub tcp: TcpConfig,
    /// SIP over TLS (Kamailio's tls module parameters).
    pub tls: TlsConfig,
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
    /// What runs the routes: `"lua"` (the script, the default) or
    /// `"native"` (the bundled default script's logic compiled into the
    /// binary, calling the same KSR functions; `script` is then not loaded).
    pub route: RouteImpl,
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
    /// sipshard extension: answer a request whose Request-URI scheme is not
    /// sip, sips or tel `416 Unsupported URI Scheme` before its route runs
    /// (RFC 3261 §16.3 step 1, RFC 4475 §3.3.2). Off: the script sees it (as
    /// in Kamailio, where `KSR.sanity` refuses it).
    pub reject_unknown_ruri_scheme: bool,
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

/// `[dialog]`: Kamailio's dialog module parameters (same names), plus
/// `max_dialogs`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DialogConfig {
    /// `dialog:*` statistics in `stats.fetch` (always kept; accepted).
    pub enable_stats: u8,
    /// Hash entries (lock stripes) of the dialog table.
    pub hash_size: usize,
    /// Record-Route parameter carrying the dialog id.
    pub rr_param: String,
    /// Seconds a confirmed dialog lasts without `dlg_set_timeout`.
    pub default_timeout: u64,
    /// Seconds an unanswered dialog is kept.
    pub early_timeout: u64,
    /// Seconds a dialog may wait for the ACK of its 200 (accepted; the
    /// dialog timeout applies).
    pub noack_timeout: u64,
    /// Accepted (deleted dialogs are removed after 5 s).
    pub end_timeout: u64,
    /// Headers (each ending in CRLF) added to the BYEs the module sends.
    pub dlg_extra_hdrs: String,
    /// Profiles whose members carry a value, `;`-separated.
    pub profiles_with_value: String,
    /// Profiles without values, `;`-separated.
    pub profiles_no_value: String,
    /// 1: BYE both sides of a dialog that times out.
    pub send_bye: u8,
    /// Most dialog records (sipshard); `dlg_manage` beyond it fails.
    pub max_dialogs: usize,
    /// `dlg_bye` of an early dialog: the reply the caller gets (the callee
    /// gets a CANCEL).
    pub bye_early_code: u16,
    pub bye_early_reason: String,
}

impl Default for DialogConfig {
    fn default() -> Self {
        DialogConfig {
            enable_stats: 1,
            hash_size: 4096,
            rr_param: "did".to_string(),
            default_timeout: 43_200,
            early_timeout: 300,
            noack_timeout: 60,
            end_timeout: 300,
            dlg_extra_hdrs: String::new(),
            profiles_with_value: String::new(),
            profiles_no_value: String::new(),
            send_bye: 0,
            max_dialogs: 100_000,
            bye_early_code: 480,
            bye_early_reason: "Temporarily Unavailable".to_string(),
        }
    }
}

/// `[sanity]`: Kamailio sanity module parameters (same names).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SanityConfig {
    /// Checks `sanity_check_defaults()` runs (sum of check bits).
    pub default_checks: i64,
    /// URIs the "parse URIs" check (1024) parses by default: 1 R-URI,
    /// 2 From, 4 To, 8 Contact.
    pub uri_checks: i64,
    /// Extensions a Proxy-Require may name, comma-separated.
    pub proxy_require: String,
    /// Kamailio's `autodrop`: accepted for compatibility; the KEMI
    /// `sanity_check()` returns -1 on a failure either way.
    pub autodrop: bool,
    /// Do not reply on a failure; `KSR.sanity.sanity_reply()` sends it.
    pub noreply: bool,
}

impl Default for SanityConfig {
    fn default() -> Self {
        SanityConfig {
            default_checks: 3047,
            uri_checks: 7,
            proxy_require: String::new(),
            autodrop: true,
            noreply: false,
        }
    }
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
            route: RouteImpl::Lua,
            on_script_error: OnScriptError::Reply500,
            alias: Vec::new(),
            server_header: "sipshard".to_string(),
            log_level: "info".to_string(),
            bad_input_log_per_s: 5,
            reject_unknown_ruri_scheme: true,
            udp_socket: UdpSocketMode::Spread,
            pin: false,
            test_hooks: false,
            defines: Vec::new(),
        }
    }
}

/// What runs the request, reply and failure routes (`[core] route`,
/// `sipshard run --route`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RouteImpl {
    /// The Lua script (`core.script`, else the bundled etc/sipshard.lua).
    #[default]
    Lua,
    /// etc/sipshard.lua's logic in Rust (src/kemi/native.rs), for the
    /// native-vs-Lua comparison (Kamailio's native `kamailio.cfg` vs KEMI).
    Native,
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
    /// Lua instructions one route call may run (request, reply, failure,
    /// onreply, branch route); beyond it the route fails (500). 0 = no limit.
    pub lua_max_instructions: u64,
    /// Bytes the shard's Lua VM may allocate; beyond it an allocation fails
    /// with a Lua error. 0 = no limit.
    pub lua_max_memory_bytes: usize,
    /// Largest `$var` / `$avp` / `$xavp` string value; a larger write is
    /// refused (false) and counted in `core.pv_limit`.
    pub pv_max_value_bytes: usize,
    /// String bytes one message's `$avp`s and `$xavp`s may add up to.
    pub pv_max_bytes_per_msg: usize,
    /// `$var()` names one shard may hold (a new one beyond it is a script
    /// error, counted in `core.pv_limit`).
    pub pv_max_vars: usize,
    /// Header/body edits (`KSR.hdr.*`, textops) on one message, and the
    /// bytes they may carry; beyond them an edit returns -1 and is counted
    /// in `core.edit_limit`.
    pub max_edits: usize,
    pub max_edit_bytes: usize,
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
            lua_max_instructions: 50_000_000,
            lua_max_memory_bytes: 256 << 20,
            pv_max_value_bytes: 64 << 10,
            pv_max_bytes_per_msg: 1 << 20,
            pv_max_vars: 1_024,
            max_edits: 1_024,
            max_edit_bytes: 128 << 10,
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

/// Accepts `true`/`false` and Kamailio's `0`/`1` for a boolean modparam.
fn bool_or_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Int(i64),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Int(0) => Ok(false),
        Raw::Int(1) => Ok(true),
        Raw::Int(n) => Err(serde::de::Error::custom(format!(
            "expected true/false or 0/1, got {n}"
        ))),
    }
}

/// Digest authentication settings (Kamailio `auth` and `auth_db` module
/// parameters, same names and defaults; the sipshard-only keys say so).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Nonce HMAC secret (auth `secret`; any string, hashed to 32 bytes).
    /// Empty = random at start, which is fine for one process: all shards
    /// share it.
    pub secret: String,
    /// Seconds a nonce is valid (auth `nonce_expire`, default 300; the old
    /// key `nonce_expire_s` is accepted).
    #[serde(alias = "nonce_expire_s")]
    pub nonce_expire: u64,
    /// auth `nonce_count` (default off, as Kamailio): remember the `nc` of
    /// each nonce and refuse (-6) a response whose `nc` is not higher than
    /// the last one seen for that nonce (a replay). Off: a nonce may be
    /// reused until it expires, whatever its `nc`. sipshard answers a UDP
    /// retransmission (same Call-ID and CSeq) as before, even when on.
    #[serde(deserialize_with = "bool_or_int")]
    pub nonce_count: bool,
    /// auth `realm_prefix` (default ""): stripped from the front of the
    /// realm given to the auth functions (`sip.example.com` → `example.com`).
    pub realm_prefix: String,
    /// auth `algorithm` (default "" = MD5): the one digest algorithm
    /// challenges offer, "MD5" or "SHA-256" ("SHA-512-256" too in sipshard).
    /// Set this or `algorithms`, not both.
    pub algorithm: String,
    /// sipshard extension: several challenges, one per algorithm, in
    /// preference order (RFC 8760), e.g. `["SHA-256", "MD5"]`. Default
    /// `["MD5"]`; ignored when `algorithm` is set. SHA-* need the plain-text
    /// `password` column.
    pub algorithms: Vec<String>,
    /// auth_db `use_domain` (default off, as Kamailio): look the subscriber
    /// up by username and domain (= the realm), not by username alone.
    #[serde(deserialize_with = "bool_or_int")]
    pub use_domain: bool,
    /// auth_db `calculate_ha1` (default off): off, MD5 responses are
    /// checked against the stored `ha1` column (`ha1b` when the username
    /// carries `@domain`), falling back to `password` when that column is
    /// empty; on, HA1 is computed from the plain-text `password` column.
    #[serde(deserialize_with = "bool_or_int")]
    pub calculate_ha1: bool,
    /// sipshard: credential cache (shared by the shards) TTL and size;
    /// `cache_max_entries = 0` disables it (every check reads the database).
    pub cache_ttl_s: u64,
    pub cache_negative_ttl_s: u64,
    pub cache_max_entries: usize,
    /// sipshard: nonce-count table size (Kamailio `nc_array_size`), shared
    /// by the shards; the oldest nonces are forgotten beyond it.
    #[serde(alias = "nc_array_size")]
    pub nc_max_entries: usize,
    /// sipshard: milliseconds a credential lookup may wait for the database
    /// before the request is answered 500.
    pub db_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: String::new(),
            nonce_expire: 300,
            nonce_count: false,
            realm_prefix: String::new(),
            algorithm: String::new(),
            algorithms: vec!["MD5".to_string()],
            use_domain: false,
            calculate_ha1: false,
            cache_ttl_s: 60,
            cache_negative_ttl_s: 5,
            cache_max_entries: 100_000,
            nc_max_entries: 100_000,
            db_timeout_ms: 2_000,
        }
    }
}

impl AuthConfig {
    /// The algorithms challenges offer: `algorithm` when set, else `algorithms`.
    pub fn offered_algorithms(&self) -> Vec<String> {
        if self.algorithm.is_empty() {
            self.algorithms.clone()
        } else {
            vec![self.algorithm.clone()]
        }
    }

    /// `realm` without `realm_prefix` (auth `realm_prefix`).
    pub fn strip_realm<'a>(&self, realm: &'a str) -> &'a str {
        if self.realm_prefix.is_empty() {
            return realm;
        }
        match realm.get(..self.realm_prefix.len()) {
            Some(p) if p.eq_ignore_ascii_case(&self.realm_prefix) => {
                &realm[self.realm_prefix.len()..]
            }
            _ => realm,
        }
    }
}

/// One `[[htable]]` entry: Kamailio's `htable` modparam
/// `name=>size=..;autoexpire=..;initval=..;updateexpire=..;dbtable=..;dbmode=..`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HtableDef {
    /// Table name, as in `$sht(name=>key)` and `KSR.htable.sht_*("name", ..)`.
    pub name: String,
    /// Slots are 2^size (Kamailio clamps to 2..=14); here the lock stripes
    /// are min(2^size, 64). Does not limit the items (see `max_items`).
    pub size: u32,
    /// Seconds after its last set an item expires; 0 = never.
    pub autoexpire: u64,
    /// Integer returned instead of null for absent keys (and the start value
    /// of `sht_inc`/`sht_dec` on an absent key); none by default.
    pub initval: Option<i64>,
    /// Reset the expiry when an item is updated (Kamailio default 1).
    pub updateexpire: bool,
    /// Database table loaded at start (Kamailio's `htable` layout); empty = none.
    pub dbtable: String,
    /// Only 0 (no write-back at shutdown) is supported.
    pub dbmode: u8,
    /// Load the `expires` column too (Kamailio's module-wide `db_expires`).
    pub db_expires: bool,
    /// Most items the table holds (sipshard; Kamailio has no limit): a set
    /// of a new key beyond it fails (-1) after expired items are swept.
    pub max_items: usize,
}

impl Default for HtableDef {
    fn default() -> Self {
        HtableDef {
            name: String::new(),
            size: 4,
            autoexpire: 0,
            initval: None,
            updateexpire: true,
            dbtable: String::new(),
            dbmode: 0,
            db_expires: false,
            max_items: 100_000,
        }
    }
}

/// One `[[sqlops]]` entry: a named database connection for KSR.sqlops
/// (Kamailio `modparam("sqlops", "sqlcon", "name=>url")`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SqlopsDef {
    /// Connection name, the first argument of `sql_query(con, ...)`.
    pub name: String,
    /// `sqlite://path`, `postgres://user@host/db` or `mysql://user@host/db`.
    pub url: String,
    /// Kamailio's form `name=>url`, instead of `name` and `url`.
    pub sqlcon: String,
    /// Kamailio's `connect_mode`: 0 connect at start or refuse to start, 1
    /// try at start and go on, 2 connect when first used.
    pub connect_mode: u8,
    /// Connections open at once to this database (sipshard).
    pub max_connections: u32,
    /// Longest a query may take, waiting for a connection included; the
    /// route waiting for it then gets -1 (sipshard).
    pub query_timeout_ms: u64,
    /// Most rows kept of one result; more are dropped, counted in
    /// `sqlops.rows_truncated` and logged (sipshard).
    pub max_rows: usize,
}

impl Default for SqlopsDef {
    fn default() -> Self {
        SqlopsDef {
            name: String::new(),
            url: String::new(),
            sqlcon: String::new(),
            connect_mode: 0,
            max_connections: 2,
            query_timeout_ms: 1_000,
            max_rows: 1_000,
        }
    }
}

impl SqlopsDef {
    /// (name, url), from `name`/`url` or from `sqlcon = "name=>url"`.
    pub fn name_url(&self) -> (String, String) {
        match self.sqlcon.split_once("=>") {
            Some((n, u)) if self.name.is_empty() && self.url.is_empty() => {
                (n.trim().to_owned(), u.trim().to_owned())
            }
            _ => (self.name.clone(), self.url.clone()),
        }
    }
}

/// One `[[redis]]` entry: a Redis server for KSR.ndb_redis (Kamailio
/// `modparam("ndb_redis", "server", "name=srv;addr=...;port=...;db=...;pass=...")`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisDef {
    /// Server name, the first argument of `redis_cmd(srv, ...)`.
    pub name: String,
    /// `host:port`, or Kamailio's attribute list
    /// `name=srv;addr=127.0.0.1;port=6379;db=1;pass=secret`.
    pub server: String,
    /// Database number (`SELECT`), Kamailio's `db` attribute.
    pub db: i64,
    /// Kamailio's `pass` attribute; empty = none.
    pub password: String,
    /// Kamailio's `connect_timeout` (ms).
    pub connect_timeout_ms: u64,
    /// Kamailio's `cmd_timeout` (ms): a command not answered by then fails
    /// (-1) and the route goes on.
    pub cmd_timeout_ms: u64,
}

impl Default for RedisDef {
    fn default() -> Self {
        RedisDef {
            name: String::new(),
            server: String::new(),
            db: 0,
            password: String::new(),
            connect_timeout_ms: 1_000,
            cmd_timeout_ms: 1_000,
        }
    }
}

/// A Redis server's resolved address: `[[redis]]` after reading Kamailio's
/// attribute form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisServer {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub password: String,
    pub connect_timeout_ms: u64,
    pub cmd_timeout_ms: u64,
}

impl RedisDef {
    /// Reads `server` (`host:port` or `name=..;addr=..;port=..;db=..;pass=..`).
    pub fn resolve(&self) -> Result<RedisServer, String> {
        let mut out = RedisServer {
            name: self.name.clone(),
            host: "127.0.0.1".to_owned(),
            port: 6379,
            db: self.db,
            password: self.password.clone(),
            connect_timeout_ms: self.connect_timeout_ms,
            cmd_timeout_ms: self.cmd_timeout_ms,
        };
        let server = self.server.trim();
        if server.contains('=') {
            for attr in server.split(';').map(str::trim).filter(|a| !a.is_empty()) {
                let (k, v) = attr
                    .split_once('=')
                    .ok_or_else(|| format!("`{attr}` is not attribute=value"))?;
                let v = v.trim();
                match k.trim() {
                    "name" if out.name.is_empty() => out.name = v.to_owned(),
                    "name" => {}
                    "addr" => out.host = v.to_owned(),
                    "port" => out.port = v.parse().map_err(|_| format!("bad port `{v}`"))?,
                    "db" => out.db = v.parse().map_err(|_| format!("bad db `{v}`"))?,
                    "pass" => out.password = v.to_owned(),
                    "connect_timeout" => {
                        out.connect_timeout_ms = v
                            .parse()
                            .map_err(|_| format!("bad connect_timeout `{v}`"))?
                    }
                    "command_timeout" => {
                        out.cmd_timeout_ms = v
                            .parse()
                            .map_err(|_| format!("bad command_timeout `{v}`"))?
                    }
                    other => return Err(format!("attribute `{other}` is not supported")),
                }
            }
        } else if !server.is_empty() {
            let (h, p) = server
                .rsplit_once(':')
                .ok_or_else(|| format!("`{server}` is not host:port"))?;
            out.host = h.trim_matches(|c| c == '[' || c == ']').to_owned();
            out.port = p.parse().map_err(|_| format!("bad port `{p}`"))?;
        }
        if out.name.is_empty() {
            return Err("a server needs a name".into());
        }
        Ok(out)
    }
}

/// `[pike]`: Kamailio's pike module parameters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PikeConfig {
    /// Sampling period, seconds.
    pub sampling_time_unit: u64,
    /// Requests per unit from one IP before it is blocked.
    pub reqs_density_per_unit: u32,
    /// Seconds an IP is remembered after its last request.
    pub remove_latency: u64,
    /// Most source IPs tracked (sipshard); beyond it the least recently
    /// seen is forgotten.
    pub max_ips: usize,
}

impl Default for PikeConfig {
    fn default() -> Self {
        PikeConfig {
            sampling_time_unit: 2,
            reqs_density_per_unit: 30,
            remove_latency: 120,
            max_ips: 100_000,
        }
    }
}

/// `[ipops]`: the DNS lookups of `KSR.ipops` (`dns_query`, `srv_query`,
/// ...), run off the shards on the control runtime.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IpopsConfig {
    /// Longest a route waits for one lookup, milliseconds.
    pub dns_timeout_ms: u64,
    /// Resolver configuration for SRV, NAPTR and `dns_int_match_ip`.
    pub resolv_conf: String,
    /// Port of every name server listed there (53; tests point it elsewhere).
    pub dns_port: u16,
    /// Lookups waiting for the worker; beyond it a lookup fails at once.
    pub dns_queue_depth: usize,
    /// Lookups running at once (each getaddrinfo holds a blocking thread).
    pub dns_in_flight_max: usize,
    /// `$dns`, `$srvquery`, `$naptrquery`, `$ptrquery` containers per
    /// shard, each kind.
    pub pv_containers_max: usize,
}

impl Default for IpopsConfig {
    fn default() -> Self {
        IpopsConfig {
            dns_timeout_ms: 2000,
            resolv_conf: "/etc/resolv.conf".into(),
            dns_port: 53,
            dns_queue_depth: 1024,
            dns_in_flight_max: 32,
            pv_containers_max: 32,
        }
    }
}

/// `[xhttp]`: HTTP requests that arrive on a SIP stream port run the
/// script's event callback (Kamailio's xhttp module).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct XhttpConfig {
    /// The Lua function run for each HTTP request, with the argument
    /// `"xhttp:request"` (Kamailio's `event_callback` modparam; Kamailio's
    /// default is none, sipshard's the name its docs use). A script without
    /// this function answers every HTTP request 404.
    pub event_callback: String,
    /// A regular expression on the request-target: a match is not given to
    /// the script (answered 404). Empty = none (Kamailio's `url_skip`).
    pub url_skip: String,
    /// A regular expression the request-target must match to reach the
    /// script (otherwise 404). Empty = every target (Kamailio's `url_match`).
    pub url_match: String,
    /// Request line and header fields, bytes (sipshard).
    pub head_bytes_max: usize,
    /// Header fields per request (sipshard).
    pub headers_max: usize,
    /// Request body, bytes (sipshard; larger requests get 413).
    pub body_bytes_max: usize,
}

impl Default for XhttpConfig {
    fn default() -> Self {
        XhttpConfig {
            event_callback: "ksr_xhttp_event".into(),
            url_skip: String::new(),
            url_match: String::new(),
            head_bytes_max: 16 * 1024,
            headers_max: 64,
            body_bytes_max: 64 * 1024,
        }
    }
}

/// `[websocket]`: SIP over WebSocket (Kamailio's websocket module).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebsocketConfig {
    /// Kamailio's `sub_protocols` bitmap: 1 = `sip` (RFC 7118), the only
    /// one sipshard speaks.
    pub sub_protocols: u8,
    /// Kamailio's `cors_mode`: 0 no `Access-Control-Allow-Origin` on the
    /// handshake response, 1 `*`, 2 the request's `Origin`.
    pub cors_mode: u8,
    /// Payload of one frame, bytes; a larger frame closes the connection
    /// with 1009 (sipshard).
    pub frame_bytes_max: usize,
    /// A reassembled message, bytes (1009 beyond it; sipshard).
    pub message_bytes_max: usize,
    /// Fragments of one message (1009 beyond it; sipshard).
    pub fragments_max: usize,
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            sub_protocols: 1,
            cors_mode: 0,
            frame_bytes_max: 65_535,
            message_bytes_max: 65_535,
            fragments_max: 64,
        }
    }
}

/// `[flood]`: flood control applied by the shard before the route runs
/// (sipshard; Kamailio does this in the script with pike and an `ipban`
/// htable). Everything is off by default: with both `per_source_rate` and
/// `auth_failures_max` at 0 a request pays one branch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Requests per second one source IP may send (a token bucket of
    /// `per_source_burst`); 0 = no rate limit. Excess requests are dropped
    /// (or answered 503 with `answer_503`) and counted in `flood.rate_limited`.
    pub per_source_rate: u32,
    /// Requests a source may send at once above its rate (the bucket size).
    pub per_source_burst: u32,
    /// Answer a rate-limited request `503 Service Unavailable` instead of
    /// dropping it. Banned sources are always dropped silently.
    pub answer_503: bool,
    /// Failed authentications (wrong password, unknown user, replayed
    /// nonce, user mismatch, forged nonce or unparseable credentials) from
    /// one IP within `auth_failures_window_s` that ban it; 0 = never ban.
    pub auth_failures_max: u32,
    pub auth_failures_window_s: u64,
    /// How long a ban lasts; every ban expires.
    pub ban_time_s: u64,
    /// Most source IPs tracked; beyond it idle (then the oldest) entries are
    /// forgotten and `flood.table_full` counts it.
    pub max_sources: usize,
    /// Source IPs never limited nor banned (a trunk, an SBC, a monitor).
    pub exempt: Vec<std::net::IpAddr>,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            per_source_rate: 0,
            per_source_burst: 100,
            answer_503: false,
            auth_failures_max: 0,
            auth_failures_window_s: 60,
            ban_time_s: 300,
            max_sources: 100_000,
            exempt: Vec::new(),
        }
    }
}

impl FloodConfig {
    /// Anything for the shard to check before the route.
    pub fn enabled(&self) -> bool {
        self.per_source_rate > 0 || self.auth_failures_max > 0
    }
}

/// `[tcp]`: SIP over TCP. Off unless `enable = true` (or `[tls]` is
/// configured, which needs the connection layer too).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Listen for TCP (Kamailio: `disable_tcp = no`).
    pub enable: bool,
    /// Address of the TCP listener; default: `core.listen` (the UDP port).
    pub listen: Option<SocketAddr>,
    /// A connection with no traffic for this long is closed (Kamailio
    /// `tcp_connection_lifetime`, seconds).
    pub connection_lifetime_s: u64,
    /// Connections (TCP and TLS, accepted and opened) one shard owns at
    /// most; more are refused (`tcp.refused`).
    pub max_connections_per_shard: usize,
    /// Accepted connections from one source IP at most (all shards).
    pub max_connections_per_source: u32,
    /// Bytes a connection may hold unsent before it is closed (Kamailio
    /// `tcp_conn_wq_max`).
    pub conn_wq_max: usize,
    /// Connects (and TLS handshakes of connections we open) that take
    /// longer are abandoned (Kamailio `tcp_connect_timeout`, ms here).
    pub connect_timeout_ms: u64,
    /// Largest SIP message on a stream; a peer that sends a bigger one is
    /// disconnected (`tcp.bad_framing`).
    pub max_msg_bytes: usize,
    /// Kamailio `tcp_accept_aliases`: a request whose top Via has `;alias`
    /// makes its connection reachable at the Via's `ip:port` too.
    pub accept_aliases: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            enable: false,
            listen: None,
            connection_lifetime_s: 120,
            max_connections_per_shard: 4096,
            max_connections_per_source: 256,
            conn_wq_max: 32 << 10,
            connect_timeout_ms: 10_000,
            max_msg_bytes: 65_535,
            accept_aliases: false,
        }
    }
}

/// `[tls]`: SIP over TLS (rustls; TLS 1.2 and 1.3 only). On when `listen`
/// is set; the certificate and key are read again on each script reload.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address of the TLS listener (usually port 5061).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and private key (Kamailio `certificate`,
    /// `private_key`).
    pub certificate: String,
    pub private_key: String,
    /// PEM CA certificates (Kamailio `ca_list`): for client certificates
    /// and, with `verify_server`, for servers we connect to.
    pub ca_list: String,
    /// Ask for a client certificate and refuse a client without a valid
    /// one (Kamailio `verify_certificate` + `require_certificate`).
    pub require_certificate: bool,
    /// Check the certificate of servers we connect to against `ca_list`
    /// (Kamailio's client-side `verify_certificate`; off by default, as
    /// Kamailio's).
    pub verify_server: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }
}

impl TcpConfig {
    /// The connection layer runs (TCP, or TLS which needs it).
    pub fn layer_on(&self, tls: &TlsConfig) -> bool {
        self.enable || tls.enabled()
    }
}

/// `[permissions]`: Kamailio's permissions module, address matching only.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// Load the module (`KSR.permissions` is nil otherwise, as in a
    /// Kamailio without permissions.so).
    pub enable: bool,
    /// Table read from `[db] url` at start and on `permissions.addressReload`.
    pub address_table: String,
    /// Most rows loaded from the address table.
    pub max_addresses: usize,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        PermissionsConfig {
            enable: false,
            address_table: "address".to_string(),
            max_addresses: 100_000,
        }
    }
}

/// `[dispatcher]`: Kamailio's dispatcher module parameters, same names and
/// defaults; the sipshard-only keys say so.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Destination sets from this file (Kamailio's `dispatcher.list` format).
    pub list_file: String,
    /// Destination sets from the `dispatcher` table of this database; must
    /// be `[db] url` (one database per server), or `"db"` for it.
    pub db_url: String,
    pub table_name: String,
    pub setid_col: String,
    pub destination_col: String,
    pub flags_col: String,
    pub priority_col: String,
    pub attrs_col: String,
    /// 1: hash over the URI user only; 2: failover (the other destinations
    /// in the XAVP for `ds_next_dst`).
    pub flags: u32,
    pub force_dst: u32,
    pub use_default: u32,
    pub xavp_dst: String,
    pub xavp_dst_mode: u32,
    pub xavp_ctx: String,
    pub xavp_ctx_mode: u32,
    /// `$var(...)`/`$avp(...)` set to the matching set id by `ds_is_from_list*`.
    pub setid_pvname: String,
    /// The same for the matching destination's attrs.
    pub attrs_pvname: String,
    pub ds_ping_method: String,
    pub ds_ping_from: String,
    /// Seconds between keepalive rounds; 0: no probing.
    pub ds_ping_interval: u64,
    /// Seconds a probe waits for its final reply (0: `[tm] fr_timer_ms`).
    pub ds_ping_fr_timer: u64,
    pub ds_probing_threshold: u32,
    pub ds_inactive_threshold: u32,
    pub ds_ping_reply_codes: String,
    pub ds_probing_mode: u8,
    pub ds_ping_latency_stats: u32,
    pub ds_latency_estimator_alpha: u32,
    /// Power of two of Kamailio's call-load hash; > 0 enables algorithm 10.
    pub ds_hash_size: u32,
    pub ds_hash_expire: u64,
    pub ds_hash_initexpire: u64,
    pub ds_hash_check_interval: u64,
    /// sipshard: most calls the call-load table (alg 10) tracks.
    pub max_calls: usize,
    /// sipshard: most sets and destinations loaded.
    pub max_sets: usize,
    pub max_destinations: usize,
    /// sipshard: most probes in flight.
    pub max_pending_pings: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            list_file: String::new(),
            db_url: String::new(),
            table_name: "dispatcher".into(),
            setid_col: "setid".into(),
            destination_col: "destination".into(),
            flags_col: "flags".into(),
            priority_col: "priority".into(),
            attrs_col: "attrs".into(),
            flags: 0,
            force_dst: 1,
            use_default: 0,
            xavp_dst: "_dsdst_".into(),
            xavp_dst_mode: 0,
            xavp_ctx: "_dsctx_".into(),
            xavp_ctx_mode: 0,
            setid_pvname: String::new(),
            attrs_pvname: String::new(),
            ds_ping_method: "OPTIONS".into(),
            ds_ping_from: "sip:dispatcher@localhost".into(),
            ds_ping_interval: 0,
            ds_ping_fr_timer: 0,
            ds_probing_threshold: 1,
            ds_inactive_threshold: 1,
            ds_ping_reply_codes: String::new(),
            ds_probing_mode: 0,
            ds_ping_latency_stats: 0,
            ds_latency_estimator_alpha: 100,
            ds_hash_size: 0,
            ds_hash_expire: 7200,
            ds_hash_initexpire: 7200,
            ds_hash_check_interval: 30,
            max_calls: 100_000,
            max_sets: 1_000,
            max_destinations: 10_000,
            max_pending_pings: 10_000,
        }
    }
}

impl DispatcherConfig {
    /// The module is loaded (`KSR.dispatcher` exists).
    pub fn enabled(&self) -> bool {
        !self.list_file.is_empty() || !self.db_url.is_empty()
    }
}

/// A safe SQL table name (letters, digits, `_`; 1..=64 bytes).
pub fn is_sql_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Hard bound of bindings per AOR, whatever `max_contacts` says (0 =
/// unlimited, Kamailio's default): every table has a maximum. A REGISTER
/// that would pass it gets `503` with `P-Registrar-Error: Too many
/// registered contacts` and `save` returns -2, as with `max_contacts`.
pub const CONTACTS_PER_AOR_CAP_DEFAULT: usize = 256;

/// Registrar / usrloc settings (Kamailio `registrar` and `usrloc` module
/// parameters, same names and defaults; the sipshard-only keys say so, and
/// the old `*_s` names are still accepted).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// registrar `default_expires` (3600): used when neither the Contact nor
    /// the request gives an expires.
    #[serde(alias = "default_expires_s")]
    pub default_expires: u32,
    /// registrar `min_expires` (60; 0 disables the check).
    #[serde(alias = "min_expires_s")]
    pub min_expires: u32,
    /// registrar `min_expires_mode` (0): 0 raises a shorter expires to
    /// `min_expires`; 1 answers `423 Interval Too Brief` with `Min-Expires`.
    pub min_expires_mode: u8,
    /// registrar `max_expires` (0 = no maximum): larger values are lowered to it.
    #[serde(alias = "max_expires_s")]
    pub max_expires: u32,
    /// registrar `default_q` (-1 = unspecified; else 0..=1000 thousandths)
    /// for contacts without `q`.
    pub default_q: i32,
    /// registrar `max_contacts` (0 = no limit but `contacts_per_aor_cap`):
    /// more valid contacts for one AOR are refused with `503 Service
    /// Unavailable` (`P-Registrar-Error: Too many registered contacts`) and
    /// `save` returns -2.
    pub max_contacts: usize,
    /// sipshard: hard cap of bindings per AOR, whatever `max_contacts` says
    /// (it keeps the location table bounded when `max_contacts = 0`).
    pub contacts_per_aor_cap: usize,
    /// registrar `use_path` (default off): off ignores Path headers; on
    /// stores them and handles them per `path_mode`.
    #[serde(deserialize_with = "bool_or_int")]
    pub use_path: bool,
    /// registrar `path_mode` (2), with `use_path`: 0 store Path, never echo
    /// it; 1 store it, echo it when the REGISTER has `Supported: path`;
    /// 2 (RFC 3327) without `Supported: path` answer `420 Bad Extension`
    /// with `Unsupported: path`, else store and echo.
    pub path_mode: u8,
    /// registrar `append_branches` (on): `lookup` appends the AOR's other
    /// contacts as branches; off, only the R-URI is rewritten.
    #[serde(deserialize_with = "bool_or_int")]
    pub append_branches: bool,
    /// registrar `method_filtering` (off): on, `lookup` of an initial
    /// request (no To tag) returns only contacts whose REGISTER `Allow`
    /// listed its method (-2 when none did).
    #[serde(deserialize_with = "bool_or_int")]
    pub method_filtering: bool,
    /// registrar `case_sensitive` (off): AORs are lowercased unless on.
    #[serde(deserialize_with = "bool_or_int")]
    pub case_sensitive: bool,
    /// registrar `realm_prefix` (""): stripped from the domain of AORs.
    pub realm_prefix: String,
    /// registrar `contact_max_size` (512): longer contact URIs get 400.
    pub contact_max_size: usize,
    /// registrar `retry_after` (0 = none): `Retry-After` on 5xx replies.
    pub retry_after: u32,
    /// usrloc `matching_mode` (0): how a Contact finds its binding: 0 contact
    /// URI, 1 contact and Call-ID, 2 contact and Path, 3 Call-ID.
    pub matching_mode: u8,
    /// usrloc `cseq_delay` (20 s): a REGISTER with the Call-ID and CSeq of a
    /// binding changed less than this ago is a retransmission (answered,
    /// nothing changed), later a 400; 0 disables the tolerance.
    pub cseq_delay: u32,
    /// sipshard: most AORs the location table keeps, per shard (the table
    /// is shared: its maximum is this times the shard count).
    pub max_aors_per_shard: usize,
    /// usrloc `db_mode`: 0 memory, 1 write-through, 2 write-back, 3 DB only.
    pub db_mode: u8,
    /// usrloc `timer_interval` (60 s): write-back flush / expiry timer.
    #[serde(alias = "timer_interval")]
    pub timer_interval_s: u64,
    /// usrloc `use_domain` (off): the AOR is `user@domain`, else `user`.
    #[serde(deserialize_with = "bool_or_int")]
    pub use_domain: bool,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires: 3600,
            min_expires: 60,
            min_expires_mode: 0,
            max_expires: 0,
            default_q: -1,
            max_contacts: 0,
            contacts_per_aor_cap: CONTACTS_PER_AOR_CAP_DEFAULT,
            use_path: false,
            path_mode: 2,
            append_branches: true,
            method_filtering: false,
            case_sensitive: false,
            realm_prefix: String::new(),
            contact_max_size: 512,
            retry_after: 0,
            matching_mode: 0,
            cseq_delay: 20,
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
    /// sipshard: when not empty, every request (JSON-RPC and `/metrics`)
    /// must carry `Authorization: Bearer <token>`; others get 401. Default
    /// empty: no token (the listener is on loopback by default).
    pub token: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5070)),
            enabled: true,
            max_connections: 64,
            hlog: None,
            prometheus_buckets_us: crate::stats::prom::default_buckets_us(),
            token: String::new(),
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
    /// Requests waiting for a connection; one more gets `QueueFull`. With
    /// a SQLite file, credential and usrloc db_mode 3 AoR reads wait in a
    /// queue of their own of the same depth (the `db-reader` thread).
    pub queue_depth: usize,
    /// Longest a request may take, including waiting for a connection.
    pub query_timeout_ms: u64,
    /// Most rows `location_load_all` returns; more is `DbError::TooManyRows`.
    pub location_rows_max: usize,
    /// sipshard: most location writes (one per contact, latest wins) each
    /// shard keeps for retry while the database fails or hangs (usrloc
    /// db_mode 1/2); beyond it a write is dropped, counted in
    /// `db.writes_dropped` and logged.
    pub retry_queue_max: usize,
    /// sipshard: milliseconds between retries of failed location writes.
    pub retry_interval_ms: u64,
    /// Kamailio's sqlops `results_maxsize`: result containers
    /// (`sql_query(.., res)` names) each shard keeps; a new name beyond it
    /// fails (-1), counted in `sqlops.results_full`.
    pub sqlops_results_maxsize: usize,
    /// sipshard: KSR.sqlops queries waiting for a connection (all
    /// `[[sqlops]]` connections); one more fails at once (-1).
    pub sqlops_queue_depth: usize,
    /// sipshard: Redis replies (`redis_cmd(.., res)` names) each shard keeps;
    /// a new name beyond it fails (-1), counted in `ndb_redis.replies_full`.
    pub redis_replies_max: usize,
    /// sipshard: KSR.ndb_redis commands waiting to be sent; one more fails at
    /// once (-1).
    pub redis_queue_depth: usize,
    /// sipshard: most elements (all levels) of one Redis reply; a larger
    /// reply fails (-1).
    pub redis_reply_elements_max: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://sipshard.db".to_owned(),
            max_connections: 4,
            queue_depth: 1_024,
            query_timeout_ms: 2_000,
            location_rows_max: 1_000_000,
            retry_queue_max: 100_000,
            retry_interval_ms: 1_000,
            sqlops_results_maxsize: 32,
            sqlops_queue_depth: 1_024,
            redis_replies_max: 32,
            redis_queue_depth: 1_024,
            redis_reply_elements_max: 100_000,
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
        if r.max_expires != 0 && r.min_expires > r.max_expires {
            return Err(self.invalid("registrar.min_expires", "is above registrar.max_expires"));
        }
        if r.min_expires_mode > 1 {
            return Err(self.invalid("registrar.min_expires_mode", "must be 0 or 1"));
        }
        if r.path_mode > 2 {
            return Err(self.invalid("registrar.path_mode", "must be 0, 1 or 2"));
        }
        if r.matching_mode > 3 {
            return Err(self.invalid("registrar.matching_mode", "must be 0, 1, 2 or 3"));
        }
        if r.default_q != -1 && !(0..=1000).contains(&r.default_q) {
            return Err(self.invalid("registrar.default_q", "must be -1 or 0..=1000"));
        }
        if r.contacts_per_aor_cap == 0 || r.contacts_per_aor_cap > 65_536 {
            return Err(self.invalid("registrar.contacts_per_aor_cap", "must be within 1..=65536"));
        }
        if r.contact_max_size == 0 {
            return Err(self.invalid("registrar.contact_max_size", "must be at least 1"));
        }
        if r.db_mode > 3 {
            return Err(self.invalid("registrar.db_mode", "must be 0, 1, 2 or 3"));
        }
        if let Err(e) = self.rpc.validate() {
            return Err(self.invalid("rpc", e));
        }
        let a = &self.auth;
        if a.nonce_expire == 0 {
            return Err(self.invalid("auth.nonce_expire", "must be at least 1"));
        }
        if !a.algorithm.is_empty() && a.algorithms != AuthConfig::default().algorithms {
            return Err(self.invalid(
                "auth.algorithm",
                "set auth.algorithm (one) or auth.algorithms (several), not both",
            ));
        }
        if a.offered_algorithms().is_empty() {
            return Err(self.invalid("auth.algorithms", "must name at least one algorithm"));
        }
        if !(1..1 << 15).contains(&self.sanity.default_checks) {
            return Err(self.invalid("sanity.default_checks", "must be within 1..=32767"));
        }
        if !(1..16).contains(&self.sanity.uri_checks) {
            return Err(self.invalid("sanity.uri_checks", "must be within 1..=15"));
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
        self.validate_modules()
    }

    /// htable, pike and permissions settings.
    fn validate_modules(&self) -> Result<(), ConfigError> {
        let t = &self.tcp;
        if t.max_connections_per_shard == 0
            || t.max_connections_per_source == 0
            || t.conn_wq_max < 1024
            || t.max_msg_bytes < 1024
            || t.connection_lifetime_s == 0
        {
            return Err(self.invalid(
                "tcp",
                "max_connections_* and connection_lifetime_s must be at least 1, conn_wq_max and max_msg_bytes at least 1024",
            ));
        }
        if self.tls.enabled()
            && (self.tls.certificate.is_empty() || self.tls.private_key.is_empty())
        {
            return Err(self.invalid("tls", "listen needs certificate and private_key"));
        }
        if self.tls.require_certificate && self.tls.ca_list.is_empty() {
            return Err(self.invalid("tls.require_certificate", "needs ca_list"));
        }
        let d = &self.dialog;
        if !(300..=699).contains(&d.bye_early_code)
            || d.bye_early_reason.bytes().any(|b| b == b'\r' || b == b'\n')
        {
            return Err(self.invalid(
                "dialog.bye_early_code",
                "must be a final error code (300..699) with a one-line bye_early_reason",
            ));
        }
        if d.hash_size == 0 || d.hash_size > 65_536 || d.max_dialogs == 0 {
            return Err(self.invalid(
                "dialog",
                "hash_size must be 1..=65536 and max_dialogs at least 1",
            ));
        }
        if d.rr_param.is_empty()
            || !d
                .rr_param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(self.invalid("dialog.rr_param", "must be a URI parameter name"));
        }
        if !d.dlg_extra_hdrs.is_empty() && !d.dlg_extra_hdrs.ends_with("\r\n") {
            return Err(self.invalid("dialog.dlg_extra_hdrs", "each header must end with \\r\\n"));
        }
        for (i, t) in self.htable.iter().enumerate() {
            let key = |k: &str| format!("htable[{i}].{k}");
            if t.name.is_empty() || t.name.len() > 64 || t.name.contains("=>") {
                return Err(self.invalid(&key("name"), "must be 1..=64 bytes without `=>`"));
            }
            if self.htable[..i].iter().any(|o| o.name == t.name) {
                return Err(self.invalid(
                    &key("name"),
                    format!("table {:?} is declared twice", t.name),
                ));
            }
            if t.max_items == 0 {
                return Err(self.invalid(&key("max_items"), "must be at least 1"));
            }
            if t.dbmode != 0 {
                return Err(self.invalid(&key("dbmode"), "only 0 (no write-back) is supported"));
            }
            if !t.dbtable.is_empty() && !is_sql_ident(&t.dbtable) {
                return Err(self.invalid(&key("dbtable"), "must be a plain table name"));
            }
        }
        if self.htable.len() > 256 {
            return Err(self.invalid("htable", "at most 256 tables"));
        }
        let p = &self.pike;
        if p.sampling_time_unit == 0 || p.reqs_density_per_unit == 0 || p.max_ips == 0 {
            return Err(self.invalid(
                "pike",
                "sampling_time_unit, reqs_density_per_unit and max_ips must be at least 1",
            ));
        }
        let f = &self.flood;
        if f.max_sources == 0 {
            return Err(self.invalid("flood.max_sources", "must be at least 1"));
        }
        if f.per_source_rate > 0 && f.per_source_burst == 0 {
            return Err(self.invalid("flood.per_source_burst", "must be at least 1"));
        }
        if f.auth_failures_max > 0 && (f.auth_failures_window_s == 0 || f.ban_time_s == 0) {
            return Err(self.invalid(
                "flood",
                "auth_failures_window_s and ban_time_s must be at least 1",
            ));
        }
        if !is_sql_ident(&self.permissions.address_table) {
            return Err(self.invalid("permissions.address_table", "must be a plain table name"));
        }
        if self.permissions.max_addresses == 0 {
            return Err(self.invalid("permissions.max_addresses", "must be at least 1"));
        }
        self.validate_sqlops_redis()?;
        self.validate_ipops()?;
        self.validate_xhttp()?;
        self.validate_dispatcher()
    }

    /// `[[sqlops]]`, `[[redis]]` and their `[db]` limits.
    fn validate_sqlops_redis(&self) -> Result<(), ConfigError> {
        let mut names: Vec<String> = Vec::new();
        for (i, c) in self.sqlops.iter().enumerate() {
            let key = |k: &str| format!("sqlops[{i}].{k}");
            let (name, url) = c.name_url();
            if name.is_empty() || name.len() > 64 || url.is_empty() {
                return Err(self.invalid(
                    &key("name"),
                    "needs name (1..=64 bytes) and url, or sqlcon = \"name=>url\"",
                ));
            }
            if names.contains(&name) {
                return Err(self.invalid(&key("name"), format!("{name:?} is declared twice")));
            }
            names.push(name);
            if c.connect_mode > 2 {
                return Err(self.invalid(&key("connect_mode"), "must be 0, 1 or 2"));
            }
            if c.max_connections == 0 || c.query_timeout_ms == 0 || c.max_rows == 0 {
                return Err(self.invalid(
                    &key("max_connections"),
                    "max_connections, query_timeout_ms and max_rows must be at least 1",
                ));
            }
        }
        let mut names: Vec<String> = Vec::new();
        for (i, r) in self.redis.iter().enumerate() {
            let key = |k: &str| format!("redis[{i}].{k}");
            let srv = r.resolve().map_err(|e| self.invalid(&key("server"), e))?;
            if srv.name.len() > 64 || names.contains(&srv.name) {
                return Err(self.invalid(
                    &key("name"),
                    format!("{:?} is declared twice or longer than 64 bytes", srv.name),
                ));
            }
            names.push(srv.name);
            if srv.cmd_timeout_ms == 0 || srv.connect_timeout_ms == 0 {
                return Err(self.invalid(&key("cmd_timeout_ms"), "timeouts must be at least 1 ms"));
            }
        }
        let d = &self.db;
        if d.sqlops_results_maxsize == 0
            || d.sqlops_queue_depth == 0
            || d.redis_replies_max == 0
            || d.redis_queue_depth == 0
            || d.redis_reply_elements_max == 0
        {
            return Err(self.invalid(
                "db",
                "sqlops_results_maxsize, sqlops_queue_depth, redis_replies_max, \
                 redis_queue_depth and redis_reply_elements_max must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_ipops(&self) -> Result<(), ConfigError> {
        let i = &self.ipops;
        for (key, v) in [
            ("ipops.dns_timeout_ms", i.dns_timeout_ms),
            ("ipops.dns_port", u64::from(i.dns_port)),
            ("ipops.dns_queue_depth", i.dns_queue_depth as u64),
            ("ipops.dns_in_flight_max", i.dns_in_flight_max as u64),
            ("ipops.pv_containers_max", i.pv_containers_max as u64),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    fn validate_xhttp(&self) -> Result<(), ConfigError> {
        let x = &self.xhttp;
        for (key, re) in [
            ("xhttp.url_skip", &x.url_skip),
            ("xhttp.url_match", &x.url_match),
        ] {
            if let Err(e) = regex::Regex::new(re) {
                return Err(self.invalid(key, format!("bad regular expression: {e}")));
            }
        }
        let w = &self.websocket;
        for (key, v) in [
            ("xhttp.head_bytes_max", x.head_bytes_max),
            ("xhttp.headers_max", x.headers_max),
            ("websocket.frame_bytes_max", w.frame_bytes_max),
            ("websocket.message_bytes_max", w.message_bytes_max),
            ("websocket.fragments_max", w.fragments_max),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1"));
            }
        }
        if w.sub_protocols != 1 {
            return Err(self.invalid(
                "websocket.sub_protocols",
                "must be 1 (sip); msrp (2) is not supported",
            ));
        }
        if w.cors_mode > 2 {
            return Err(self.invalid("websocket.cors_mode", "must be 0, 1 or 2"));
        }
        Ok(())
    }

    fn validate_dispatcher(&self) -> Result<(), ConfigError> {
        let d = &self.dispatcher;
        if !d.list_file.is_empty() && !d.db_url.is_empty() {
            return Err(self.invalid("dispatcher.list_file", "set list_file or db_url, not both"));
        }
        if !d.db_url.is_empty() && d.db_url != "db" && d.db_url != self.db.url {
            return Err(self.invalid(
                "dispatcher.db_url",
                "must be [db] url (or \"db\"): sipshard uses one database",
            ));
        }
        for (k, v) in [
            ("table_name", &d.table_name),
            ("setid_col", &d.setid_col),
            ("destination_col", &d.destination_col),
            ("flags_col", &d.flags_col),
            ("priority_col", &d.priority_col),
            ("attrs_col", &d.attrs_col),
        ] {
            if !is_sql_ident(v) {
                return Err(self.invalid(&format!("dispatcher.{k}"), "must be a plain SQL name"));
            }
        }
        if d.ds_probing_mode > 3 {
            return Err(self.invalid("dispatcher.ds_probing_mode", "must be 0..=3"));
        }
        if crate::dispatcher::ReplyCodes::parse(&d.ds_ping_reply_codes).is_none() {
            return Err(self.invalid(
                "dispatcher.ds_ping_reply_codes",
                "must be entries like class=2;code=404",
            ));
        }
        if d.ds_latency_estimator_alpha > 1000 {
            return Err(self.invalid("dispatcher.ds_latency_estimator_alpha", "must be 0..=1000"));
        }
        if d.ds_ping_method.is_empty() || !d.ds_ping_method.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Err(self.invalid("dispatcher.ds_ping_method", "must be a SIP method name"));
        }
        if d.ds_ping_from.contains(['\r', '\n', '<', '>']) {
            return Err(self.invalid("dispatcher.ds_ping_from", "must be a plain SIP URI"));
        }
        if d.xavp_dst.is_empty() || d.xavp_ctx.is_empty() {
            return Err(self.invalid("dispatcher.xavp_dst", "must not be empty"));
        }
        if d.ds_hash_size > 16 {
            return Err(self.invalid("dispatcher.ds_hash_size", "must be 0..=16"));
        }
        if d.max_calls == 0
            || d.max_sets == 0
            || d.max_destinations == 0
            || d.max_pending_pings == 0
        {
            return Err(self.invalid(
                "dispatcher",
                "max_calls, max_sets, max_destinations and max_pending_pings must be at least 1",
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
        if (1..100_000).contains(&t.lua_max_instructions) {
            return Err(self.invalid(
                &key("lua_max_instructions"),
                "must be 0 (no limit) or at least 100000",
            ));
        }
        if (1..4 << 20).contains(&t.lua_max_memory_bytes) {
            return Err(self.invalid(
                &key("lua_max_memory_bytes"),
                "must be 0 (no limit) or at least 4194304 (4 MiB)",
            ));
        }
        if t.pv_max_value_bytes == 0
            || t.pv_max_bytes_per_msg == 0
            || t.pv_max_vars == 0
            || t.max_edits == 0
            || t.max_edit_bytes == 0
        {
            return Err(self.invalid(
                &key("pv_max_* / max_edits / max_edit_bytes"),
                "must be at least 1",
            ));
        }
        if t.max_edits > u32::MAX as usize || t.max_edit_bytes > u32::MAX as usize {
            return Err(self.invalid(&key("max_edits / max_edit_bytes"), "too large"));
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

    #[test]
    fn redis_servers_and_sqlcon_forms() {
        let kam = RedisDef {
            server: "name=srvN;addr=127.0.0.2;port=6380;db=3;pass=pw".into(),
            ..Default::default()
        };
        let r = kam.resolve().unwrap();
        assert_eq!(
            (
                r.name.as_str(),
                r.host.as_str(),
                r.port,
                r.db,
                r.password.as_str()
            ),
            ("srvN", "127.0.0.2", 6380, 3, "pw")
        );
        let plain = RedisDef {
            name: "r1".into(),
            server: "127.0.0.1:6379".into(),
            ..Default::default()
        };
        assert_eq!(plain.resolve().unwrap().port, 6379);
        assert!(RedisDef {
            server: "127.0.0.1:6379".into(),
            ..Default::default()
        }
        .resolve()
        .is_err());
        assert!(RedisDef {
            server: "name=x;sentinel=1.2.3.4:26379".into(),
            ..Default::default()
        }
        .resolve()
        .is_err());
        let c = SqlopsDef {
            sqlcon: "ca=>mysql://root@127.0.0.1/test".into(),
            ..Default::default()
        };
        assert_eq!(
            c.name_url(),
            ("ca".to_owned(), "mysql://root@127.0.0.1/test".to_owned())
        );
    }
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
        assert_eq!(c.auth, d.auth);
        assert_eq!(c.registrar, d.registrar);
        assert_eq!(c.pike, d.pike);
        assert_eq!(c.flood, d.flood);
        assert_eq!(c.permissions, d.permissions);
        assert_eq!(c.htable, d.htable);
        assert_eq!(c.sanity, d.sanity);
        assert_eq!(c.dialog, d.dialog);
        assert_eq!(c.ipops, d.ipops);
        assert_eq!(c.tcp, d.tcp);
        assert_eq!(c.tls, d.tls);
    }

    #[test]
    fn tcp_and_tls_sections() {
        let c = Config::from_toml(
            "[tcp]\nenable = true\nconnection_lifetime_s = 5\nmax_connections_per_source = 9\n\
             [tls]\nlisten = \"127.0.0.1:5061\"\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n",
            "t",
        )
        .unwrap();
        assert!(c.tcp.enable && c.tls.enabled());
        assert_eq!(c.tcp.connection_lifetime_s, 5);
        assert_eq!(c.tcp.max_connections_per_source, 9);
        c.validate().unwrap();
        let bad = Config::from_toml("[tls]\nlisten = \"127.0.0.1:5061\"\n", "t");
        assert!(bad.is_err(), "TLS without a certificate");
        let bad = Config::from_toml("[tls]\nrequire_certificate = true\n", "t");
        assert!(bad.is_err(), "client certificates without ca_list");
    }

    #[test]
    fn ipops_section() {
        let c = Config::from_toml(
            "[ipops]\ndns_timeout_ms = 500\nresolv_conf = \"/tmp/r.conf\"\ndns_port = 5353\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.ipops.dns_timeout_ms, 500);
        assert_eq!(c.ipops.dns_port, 5353);
        assert_eq!(c.ipops.resolv_conf, "/tmp/r.conf");
        for bad in [
            "[ipops]\ndns_timeout_ms = 0\n",
            "[ipops]\ndns_port = 0\n",
            "[ipops]\ndns_queue_depth = 0\n",
            "[ipops]\ndns_in_flight_max = 0\n",
            "[ipops]\npv_containers_max = 0\n",
            "[ipops]\nnameserver = \"x\"\n",
        ] {
            assert!(Config::from_toml(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn dialog_section() {
        let c = Config::from_toml(
            "[dialog]\nprofiles_with_value = \"caller\"\nsend_bye = 1\ndefault_timeout = 60\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.dialog.send_bye, 1);
        assert_eq!(c.dialog.default_timeout, 60);
        for bad in [
            "[dialog]\nhash_size = 0\n",
            "[dialog]\nmax_dialogs = 0\n",
            "[dialog]\nbye_early_code = 200\n",
            "[dialog]\nrr_param = \"a b\"\n",
            "[dialog]\ndlg_extra_hdrs = \"X-A: 1\"\n",
            "[dialog]\nnope = 1\n",
        ] {
            assert!(Config::from_toml(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn htable_pike_permissions_sections() {
        let c = Config::from_toml(
            r#"
[[htable]]
name = "ipban"
size = 8
autoexpire = 300
initval = 0
dbtable = "htable"

[pike]
reqs_density_per_unit = 10

[permissions]
enable = true
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.htable[0].name, "ipban");
        assert_eq!(c.htable[0].autoexpire, 300);
        assert_eq!(c.htable[0].initval, Some(0));
        assert!(c.htable[0].updateexpire);
        assert_eq!(c.pike.reqs_density_per_unit, 10);
        assert_eq!(c.pike.sampling_time_unit, 2);
        assert!(c.permissions.enable);
        for bad in [
            "[[htable]]\nname = \"\"\n",
            "[[htable]]\nname = \"a\"\n[[htable]]\nname = \"a\"\n",
            "[[htable]]\nname = \"a\"\ndbtable = \"x; drop\"\n",
            "[[htable]]\nname = \"a\"\ndbmode = 1\n",
            "[[htable]]\nname = \"a\"\nmax_items = 0\n",
            "[pike]\nsampling_time_unit = 0\n",
            "[permissions]\naddress_table = \"a b\"\n",
        ] {
            assert!(Config::from_toml(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn sanity_section() {
        let c = Config::from_toml(
            "[sanity]\ndefault_checks = 1\nuri_checks = 3\nproxy_require = \"foo, bar\"\nnoreply = true\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(c.sanity.default_checks, 1);
        assert_eq!(c.sanity.proxy_require, "foo, bar");
        assert!(c.sanity.noreply && c.sanity.autodrop);
        assert_eq!(Config::embedded().sanity, SanityConfig::default());
        let err = Config::from_toml("[sanity]\nuri_checks = 16\n", "s.toml").unwrap_err();
        assert!(err.to_string().contains("sanity.uri_checks"), "{err}");
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
        let err = Config::from_toml("[shard]\nlua_max_instructions = 10\n", "y.toml").unwrap_err();
        assert!(
            err.to_string().contains("shard.lua_max_instructions"),
            "{err}"
        );
        let err =
            Config::from_toml("[shard]\nlua_max_memory_bytes = 1000\n", "y.toml").unwrap_err();
        assert!(
            err.to_string().contains("shard.lua_max_memory_bytes"),
            "{err}"
        );
        let c = Config::from_toml(
            "[shard]\nlua_max_instructions = 0\nlua_max_memory_bytes = 0\n",
            "y.toml",
        )
        .unwrap();
        assert_eq!(c.shard.lua_max_instructions, 0);
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

    #[test]
    fn registrar_and_auth_defaults_are_kamailios() {
        let c = Config::embedded();
        let r = &c.registrar;
        assert_eq!(
            (
                r.default_expires,
                r.min_expires,
                r.min_expires_mode,
                r.max_expires
            ),
            (3600, 60, 0, 0)
        );
        assert_eq!((r.max_contacts, r.default_q), (0, -1));
        assert_eq!(r.contacts_per_aor_cap, CONTACTS_PER_AOR_CAP_DEFAULT);
        assert!(!r.use_path);
        assert_eq!(r.path_mode, 2);
        assert!(!r.case_sensitive && !r.use_domain);
        assert!(r.append_branches && !r.method_filtering);
        assert_eq!((r.contact_max_size, r.retry_after), (512, 0));
        assert_eq!((r.matching_mode, r.cseq_delay), (0, 20));
        let a = &c.auth;
        assert_eq!(a.nonce_expire, 300);
        assert!(!a.nonce_count && !a.use_domain && !a.calculate_ha1);
        assert_eq!(a.offered_algorithms(), vec!["MD5".to_string()]);
        assert!(a.realm_prefix.is_empty());
    }

    #[test]
    fn kamailio_names_old_names_and_numeric_booleans() {
        let c = Config::from_toml(
            "[registrar]\ndefault_expires = 600\nmin_expires = 30\nmax_expires = 7200\n\
             min_expires_mode = 1\nuse_path = 1\npath_mode = 0\ncase_sensitive = true\n\
             timer_interval = 10\n[auth]\nnonce_expire = 30\nnonce_count = 1\n\
             use_domain = 0\ncalculate_ha1 = 1\nalgorithm = \"SHA-256\"\nnc_array_size = 64\n",
            "k.toml",
        )
        .unwrap();
        let r = &c.registrar;
        assert_eq!(
            (r.default_expires, r.min_expires, r.max_expires),
            (600, 30, 7200)
        );
        assert_eq!(
            (r.min_expires_mode, r.path_mode, r.timer_interval_s),
            (1, 0, 10)
        );
        assert!(r.use_path && r.case_sensitive);
        let a = &c.auth;
        assert_eq!((a.nonce_expire, a.nc_max_entries), (30, 64));
        assert!(a.nonce_count && !a.use_domain && a.calculate_ha1);
        assert_eq!(a.offered_algorithms(), vec!["SHA-256".to_string()]);

        // the keys sipshard had before keep working
        let c = Config::from_toml(
            "[registrar]\ndefault_expires_s = 900\nmin_expires_s = 20\nmax_expires_s = 1000\n\
             timer_interval_s = 5\n[auth]\nnonce_expire_s = 3\nalgorithms = [\"SHA-256\", \"MD5\"]\n",
            "old.toml",
        )
        .unwrap();
        let r = &c.registrar;
        assert_eq!(
            (r.default_expires, r.min_expires, r.max_expires),
            (900, 20, 1000)
        );
        assert_eq!(r.timer_interval_s, 5);
        assert_eq!(c.auth.nonce_expire, 3);
        assert_eq!(c.auth.offered_algorithms().len(), 2);

        let e = Config::from_toml("[registrar]\nuse_path = 2\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_path") && e.contains("0/1"), "{e}");
    }

    #[test]
    fn registrar_and_auth_ranges() {
        let bad = [
            (
                "[registrar]\nmin_expires = 100\nmax_expires = 50\n",
                "registrar.min_expires",
            ),
            (
                "[registrar]\nmin_expires_mode = 2\n",
                "registrar.min_expires_mode",
            ),
            ("[registrar]\npath_mode = 3\n", "registrar.path_mode"),
            (
                "[registrar]\nmatching_mode = 4\n",
                "registrar.matching_mode",
            ),
            ("[registrar]\ndefault_q = 1001\n", "registrar.default_q"),
            (
                "[registrar]\ncontacts_per_aor_cap = 0\n",
                "registrar.contacts_per_aor_cap",
            ),
            ("[auth]\nnonce_expire = 0\n", "auth.nonce_expire"),
            (
                "[auth]\nalgorithm = \"MD5\"\nalgorithms = [\"SHA-256\"]\n",
                "auth.algorithm",
            ),
        ];
        for (text, key) in bad {
            let e = Config::from_toml(text, "r.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        // max_expires 0 is "no maximum": any min_expires is fine
        Config::from_toml("[registrar]\nmin_expires = 100000\n", "r.toml").unwrap();
    }

    #[test]
    fn auth_realm_prefix_is_stripped() {
        let a = AuthConfig {
            realm_prefix: "sip.".into(),
            ..AuthConfig::default()
        };
        assert_eq!(a.strip_realm("sip.example.com"), "example.com");
        assert_eq!(a.strip_realm("SIP.example.com"), "example.com");
        assert_eq!(a.strip_realm("example.com"), "example.com");
        assert_eq!(a.strip_realm("si"), "si");
        assert_eq!(AuthConfig::default().strip_realm("sip.x"), "sip.x");
    }
}
