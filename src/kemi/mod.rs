//! KEMI: one Lua VM per shard running a Kamailio-style routing script against
//! the `KSR` API.
//!
//! Owns: building the `KSR` table (one file per Kamailio module, each with a
//! `register` function), loading the script, running `ksr_request_route()` /
//! `ksr_reply_route()` for one message, and the route-outcome rules
//! (`KSR.x.exit()`, `KSR.x.drop()`, script errors with their traceback).
//!
//! Never: touch sockets or await I/O itself. The per-message context
//! ([`MsgCtx`]) is moved into the shard's [`Shared::cur`] slot only while the
//! route's future is being polled, so a route that suspends (waiting for the
//! database or another shard) never sees another message's context.
//!
//! Return conventions follow Kamailio's Lua binding: int functions return the
//! raw code (>0 success, <0 failure), bool functions return a Lua boolean.

// deny, not forbid: ffi.rs, and only it, allows unsafe code (the Lua C API
// on the hot path; tests/layering.rs keeps it to that file).
#![deny(unsafe_code)]

mod auth;
pub mod check_script;
mod cjson;
mod core;
mod corex;
mod ctx;
pub mod dialog;
pub mod dialog_store;
pub mod dispatcher;
pub mod exports;
mod ffi;
pub mod fuzzing;
mod hdr;
pub mod htable;
mod ipops;
mod ipops_dns;
pub mod jsonrpcs;
mod kx;
pub mod limits;
mod luacompat;
mod maxfwd;
mod nathelper;
mod native;
mod ndb_redis;
pub mod permissions;
pub mod pike;
mod pv;
pub mod registrar;
pub mod reload;
pub(crate) mod rr;
pub mod sanity;
pub mod services;
mod sipjson;
mod siputils;
mod sl;
mod sqlops;
mod tcpops;
#[cfg(test)]
mod testutil;
mod textops;
pub mod tm;
pub mod tm_store;
mod websocket;
pub mod xhttp;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use mlua::{Function, Lua, Table};

pub use ctx::{BranchSpec, MsgCtx, Outgoing};
pub use luacompat::LUA_FLAVOUR;
pub use pv::PvValue;

/// Sends a stateless reply to `m` outside the script (400 for a malformed
/// request, 500 after a script error, 503 under overload). False when no
/// reply can be built (a reply, an ACK, an unusable Via).
pub fn sl_reply(s: &Shared, m: &mut MsgCtx, code: u16, reason: &[u8]) -> bool {
    sl::reply_counted(s, m, code, reason)
}

use crate::config::ShardTuning;
use crate::stats::Counter;

/// How a route run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Returned normally or via `KSR.x.exit()`.
    Done,
    /// `KSR.x.drop()` / `KSR.drop()`.
    Drop,
    /// A Lua runtime error, with its traceback.
    Error(String),
}

/// The names this server answers for (`is_myself`): hosts and ports.
#[derive(Clone, Debug, Default)]
pub struct Myself {
    /// (lower-case host, port) pairs; port `None` matches any port.
    pub names: Vec<(String, Option<u16>)>,
    pub default_port: u16,
}

impl Myself {
    pub fn new(listen: std::net::SocketAddr, aliases: &[String]) -> Myself {
        let mut names = Vec::new();
        Self::push_listen(&mut names, listen);
        for a in aliases {
            names.push(split_host_port(&a.trim().to_ascii_lowercase()));
        }
        Myself {
            names,
            default_port: 5060,
        }
    }

    /// Also this listening address (a TCP or TLS listener on its own
    /// address or port): Kamailio counts every listen socket as myself.
    pub fn add_listen(&mut self, listen: std::net::SocketAddr) {
        let mut more = Vec::new();
        Self::push_listen(&mut more, listen);
        for n in more {
            if !self.names.contains(&n) {
                self.names.push(n);
            }
        }
    }

    fn push_listen(names: &mut Vec<(String, Option<u16>)>, listen: std::net::SocketAddr) {
        let port = listen.port();
        let ip = listen.ip();
        if ip.is_unspecified() {
            names.push(("127.0.0.1".to_string(), Some(port)));
            names.push(("[::1]".to_string(), Some(port)));
            names.push(("localhost".to_string(), Some(port)));
        } else {
            let host = match ip {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            names.push((host, Some(port)));
            if ip.is_loopback() {
                names.push(("localhost".to_string(), Some(port)));
            }
        }
    }

    /// Host (and optional port) match, case-insensitive; an absent port means
    /// 5060 (how Kamailio's rr and Via checks read a URI without a port).
    pub fn matches(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(self.default_port);
        self.names
            .iter()
            .any(|(h, p)| h.as_bytes().eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port))
    }

    /// KEMI `is_myself`: like [`Myself::matches`], but an absent port matches
    /// any port of ours (Kamailio's `check_self` with port 0).
    pub fn matches_any_port(&self, host: &[u8], port: Option<u16>) -> bool {
        match port {
            Some(_) => self.matches(host, port),
            None => self
                .names
                .iter()
                .any(|(h, _)| h.as_bytes().eq_ignore_ascii_case(host)),
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(a: &str) -> (String, Option<u16>) {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (format!("[{h}]"), tail.strip_prefix(':')),
            None => (a.to_string(), None),
        }
    } else {
        match a.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h.to_string(), Some(p)),
            _ => (a.to_string(), None),
        }
    };
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) => (host, Some(p)),
        Some(Err(_)) => (a.to_string(), None),
        None => (host, None),
    }
}

/// Counters the KSR functions bump; the shard reads them into its snapshot.
pub struct Counters {
    cells: [Cell<u64>; Counter::COUNT],
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            cells: std::array::from_fn(|_| Cell::new(0)),
        }
    }

    #[inline]
    pub fn incr(&self, c: Counter) {
        let cell = &self.cells[c as usize];
        cell.set(cell.get().wrapping_add(1));
    }

    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let cell = &self.cells[c as usize];
        cell.set(cell.get().wrapping_add(n));
    }

    pub fn values(&self) -> [u64; Counter::COUNT] {
        std::array::from_fn(|i| self.cells[i].get())
    }

    pub fn reset(&self) {
        for c in &self.cells {
            c.set(0);
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// State shared by every KSR function of one shard's VM.
pub struct Shared {
    /// The message whose route is being polled right now.
    pub cur: RefCell<Option<Box<MsgCtx>>>,
    pub shard_id: usize,
    pub shard_count: usize,
    pub myself: Myself,
    pub counters: Counters,
    /// `$var(name)`: shard-local script variables. Like Kamailio's per-process
    /// `$var`, values persist across messages unless the script resets them.
    pub vars: RefCell<HashMap<String, PvValue>>,
    /// `Server:` header value for locally generated replies.
    pub server_header: Option<Vec<u8>>,
    /// Location partition, credential cache, nonces, DB handle, mesh.
    pub services: Rc<services::Services>,
    /// The transaction store (KSR.tm), shared by every shard.
    pub tm: tm::TmHandle,
    /// The address the shard listens on (Via, Record-Route).
    pub local_addr: std::net::SocketAddr,
    /// Datagrams produced outside a message's own route (failure routes,
    /// serial forking), sent with the shard's next batch.
    pub extra_out: RefCell<Vec<(crate::sip::Dest, Vec<u8>)>>,
    /// Execution times of named routes (failure, onreply, branch), ns.
    pub route_times: RefCell<Vec<(std::sync::Arc<str>, hdrhistogram::Histogram<u64>)>>,
    /// Script-wide state of the pv module: defines, `$avp`, `$xavp`, `$rc`.
    pub pv: pv::PvState,
    /// Instructions per route call (`[shard] lua_max_instructions`).
    pub limits: limits::ScriptLimits,
    /// KSR.sqlops result containers (`$dbr`), kept across messages as in
    /// Kamailio's worker processes.
    pub sql: sqlops::SqlState,
    /// KSR.ipops DNS containers (`$dns`, `$srvquery`, `$naptrquery`).
    pub dns: ipops_dns::DnsState,
    /// KSR.ndb_redis replies (`$redis`).
    pub redis: ndb_redis::RedisState,
    /// The last `KSR.jsonrpcs.exec` answer (`$jsonrpl`).
    pub jsonrpl: RefCell<jsonrpcs::JsonRpl>,
}

impl Shared {
    /// Records a named route's execution time.
    pub fn record_route_time(&self, name: &std::sync::Arc<str>, d: std::time::Duration) {
        let ns = (d.as_nanos() as u64).max(1);
        let mut times = self.route_times.borrow_mut();
        if let Some((_, h)) = times.iter_mut().find(|(n, _)| n == name) {
            h.saturating_record(ns);
            return;
        }
        if times.len() >= 64 {
            return; // bounded: a script with more named routes is not timed beyond 64
        }
        let mut h = crate::stats::new_histogram();
        h.saturating_record(ns);
        times.push((name.clone(), h));
    }

    /// Queues the datagrams of a context that no shard path will send.
    pub fn push_extra(&self, ctx: &MsgCtx) {
        let mut extra = self.extra_out.borrow_mut();
        for o in &ctx.out {
            extra.push((
                o.dst,
                ctx.out_buf[o.start as usize..o.end as usize].to_vec(),
            ));
        }
    }

    /// Runs `f` on the current message, or fails the KSR call when a function
    /// is used outside a route (e.g. at script load).
    #[inline]
    pub fn with_msg<R>(&self, f: impl FnOnce(&mut MsgCtx) -> R) -> mlua::Result<R> {
        let mut cur = self.cur.borrow_mut();
        match cur.as_deref_mut() {
            Some(ctx) => Ok(f(ctx)),
            None => Err(mlua::Error::RuntimeError(
                "KSR function called outside of a SIP route".into(),
            )),
        }
    }
}

/// Builder input for [`Engine::new`].
pub struct EngineConfig<'a> {
    pub shard_id: usize,
    pub shard_count: usize,
    pub script: &'a str,
    pub script_name: &'a str,
    pub myself: Myself,
    pub server_header: &'a str,
    pub tuning: &'a ShardTuning,
    pub services: Rc<services::Services>,
    /// Registers `KSR.sipshard_test` (config `core.test_hooks`).
    pub test_hooks: bool,
    /// The shard's listen address.
    pub local_addr: std::net::SocketAddr,
    /// `core.defines` (`NAME` or `NAME=value`), for `KSR.kx.ifdef`/`get_def`.
    pub defines: &'a [String],
    /// Lua (`script`) or the native route (`script` unused).
    pub route: crate::config::RouteImpl,
}

/// A route to run: a wrapped Lua function, or one of the native routes
/// (src/kemi/native.rs).
#[derive(Clone)]
pub(crate) enum RouteFn {
    Lua {
        f: Function,
        /// The VM's count hook, restarted by [`RouteRun`] on each poll
        /// (LuaJIT with `lua_max_instructions` set).
        hook: Option<ffi::VmHook>,
    },
    Native(native::Route),
}

impl RouteFn {
    /// Starts the route for the message in `s.cur` (`lua`: the VM, which a
    /// native route hands to `t_relay` for branch-route lookups).
    fn start(&self, s: &Rc<Shared>, lua: &Lua) -> LuaCall {
        match self {
            RouteFn::Lua { f, .. } => Box::pin(f.call_async::<()>(())),
            RouteFn::Native(route) => route(s.clone(), lua.clone()),
        }
    }

    fn hook(&self) -> Option<&ffi::VmHook> {
        match self {
            RouteFn::Lua { hook, .. } => hook.as_ref(),
            RouteFn::Native(_) => None,
        }
    }
}

/// Named Lua functions run as failure / onreply / branch routes, each
/// wrapped like the main routes (exit sentinel, traceback), looked up once.
pub struct NamedRoutes {
    handler: Function,
    exit: mlua::Value,
    /// `ffi::arm_function` when `lua_max_instructions` is set (Lua 5.4).
    arm: Option<Function>,
    /// The VM's count hook when `lua_max_instructions` is set (LuaJIT).
    hook: Option<ffi::VmHook>,
    cache: RefCell<HashMap<String, Option<Function>>>,
    /// The native route runs: names resolve to src/kemi/native.rs.
    native: bool,
}

impl NamedRoutes {
    /// The route `name`: the script's wrapped global function of that name,
    /// or with the native route, the native function the default script
    /// defines under that name.
    pub(crate) fn get(&self, lua: &Lua, name: &str) -> Option<RouteFn> {
        if self.native {
            return native::named(name).map(RouteFn::Native);
        }
        self.get_lua(lua, name, None).map(|f| self.lua_route(f))
    }

    fn lua_route(&self, f: Function) -> RouteFn {
        RouteFn::Lua {
            f,
            hook: self.hook.clone(),
        }
    }

    /// The global function `name` called with the argument `evname`
    /// (Kamailio's KEMI event callbacks: `ksr_xhttp_event("xhttp:request")`).
    /// The native route defines none.
    pub(crate) fn get_event(&self, lua: &Lua, name: &str, evname: &str) -> Option<RouteFn> {
        if self.native {
            return None;
        }
        self.get_lua(lua, name, Some(evname))
            .map(|f| self.lua_route(f))
    }

    fn get_lua(&self, lua: &Lua, name: &str, evname: Option<&str>) -> Option<Function> {
        let key = match evname {
            Some(ev) => format!("{name}\u{0}{ev}"),
            None => name.to_string(),
        };
        if let Some(f) = self.cache.borrow().get(&key) {
            return f.clone();
        }
        let f = match lua.globals().get::<mlua::Value>(name) {
            Ok(mlua::Value::Function(f)) => {
                let f = match evname {
                    None => Some(f),
                    Some(ev) => lua
                        .load("local f, ev = ...\nreturn function() return f(ev) end")
                        .set_name("=event_callback")
                        .call::<Function>((f, ev))
                        .ok(),
                };
                f.and_then(|f| {
                    lua.load(ROUTE_WRAPPER)
                        .set_name("=route_wrapper")
                        .call::<Function>((
                            f,
                            self.handler.clone(),
                            self.exit.clone(),
                            self.arm.clone(),
                        ))
                        .ok()
                })
            }
            _ => None,
        };
        let mut cache = self.cache.borrow_mut();
        if cache.len() < 256 {
            cache.insert(key, f.clone());
        }
        f
    }
}

/// A shard's Lua VM with the script loaded. [`Engine::reload`] swaps the
/// VM (see `reload.rs`); `Shared` (counters, `$var`, the cur slot) stays.
pub struct Engine {
    shared: Rc<Shared>,
    vm: RefCell<Rc<Vm>>,
    /// Next dialog timer pass (dialog store clock, ms).
    dlg_next_ms: Cell<u64>,
}

/// One loaded script: its VM and routes. Routes running in it hold an `Rc`.
pub(crate) struct Vm {
    lua: Lua,
    request_route: RouteFn,
    reply_route: Option<RouteFn>,
    routes: Rc<NamedRoutes>,
}

/// Wraps a route so a Lua error carries its traceback and the exit sentinel
/// passes through untouched. `handler` (Rust, see [`traceback_handler`])
/// appends the traceback to string errors; the `debug` library itself is not
/// exposed to scripts.
const ROUTE_WRAPPER: &str = r#"
local route, traceback, EXIT, arm = ...
local xpcall, error = xpcall, error
-- KSR.x.exit() is the common case: answer it without calling into Rust.
local function handler(e)
    if e == EXIT then return e end
    return traceback(e)
end
if not arm then
    return function()
        local ok, err = xpcall(route, handler)
        if not ok and err ~= EXIT then error(err, 0) end
    end
end
return function()
    arm()
    local ok, err = xpcall(route, handler)
    if not ok and err ~= EXIT then error(err, 0) end
end
"#;

/// Returned by the `__*_sync` halves of KSR functions that may have to wait
/// (auth_check, registrar.save) when they cannot finish without waiting; the
/// Lua wrapper then calls the async half. Never seen by scripts.
pub(crate) const TAKE_ASYNC_PATH: i32 = -1_000_000;

/// Joins sync fast paths and async slow paths into the public KSR names, so a
/// route that needs neither the database nor another shard never suspends.
const FAST_PATHS: &str = r#"
local KSR, NEED = ...
local function join(mod, name)
    local fast, slow = mod["__" .. name .. "_sync"], mod["__" .. name .. "_async"]
    mod["__" .. name .. "_sync"], mod["__" .. name .. "_async"] = nil, nil
    mod[name] = function(...)
        local rc = fast(...)
        if rc ~= NEED then return rc end
        return slow(...)
    end
end
join(KSR.registrar, "save")
join(KSR.auth_db, "auth_check")
join(KSR.auth_db, "www_authorize")
join(KSR.auth_db, "proxy_authorize")
"#;

/// `KSR.x.exit()` raises a sentinel *value* (like Kamailio's exit), caught by
/// the route wrapper; `KSR.x.drop()` / `KSR.drop()` also mark the message.
/// Plain Lua errors: no Rust error object, no traceback is built. (The
/// engine then replaces `KSR.x.exit` with the same raise done from C,
/// `ffi::exit_function`.)
const EXIT_FUNCTIONS: &str = r#"
local KSR = ...
local mark_drop = KSR.x.__mark_drop
KSR.x.__mark_drop = nil
local EXIT = setmetatable({}, { __tostring = function() return "~~ksr~exit~~" end })
local error = error
KSR.x.exit = function() error(EXIT, 0) end
local function drop() mark_drop(); error(EXIT, 0) end
KSR.x.drop = drop
KSR.drop = drop
-- KSR.route(name): Kamailio runs the native cfg's route[name]; sipshard has
-- no native cfg, so it runs the script's function `name` (or
-- `ksr_route_<name>`) as a sub-route, in Lua so that it may suspend.
local G, type = _G, type
KSR.route = function(name)
    if type(name) ~= "string" then return -1 end
    local f = G[name]
    if type(f) ~= "function" then f = G["ksr_route_" .. name] end
    if type(f) ~= "function" then return -1 end
    local rc = f()
    if type(rc) == "number" then return rc end
    return 1
end
return EXIT
"#;

/// xpcall message handler: for a string error, appends a traceback built
/// from the Lua stack (levels above the handler itself).
fn traceback_handler(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, e: mlua::Value| {
        let mlua::Value::String(s) = &e else {
            return Ok(e);
        };
        let mut text = s.to_string_lossy();
        text.push_str("\nstack traceback:");
        for level in 1..32 {
            let Some(frame) = lua.inspect_stack(level) else {
                break;
            };
            let src = frame.source();
            let line = frame.curr_line();
            let names = frame.names();
            let short = src.short_src.as_deref().unwrap_or("?").to_string();
            if short == "[C]" && names.name.is_none() {
                continue;
            }
            let what = match names.name.as_deref() {
                Some(n) => format!("in function '{n}'"),
                None => "in main chunk".to_string(),
            };
            if line >= 0 {
                text.push_str(&format!("\n\t{short}:{line}: {what}"));
            } else {
                text.push_str(&format!("\n\t{short}: {what}"));
            }
        }
        Ok(mlua::Value::String(lua.create_string(&text)?))
    })
}

impl Engine {
    /// Creates the VM, registers `KSR`, loads the script and finds its routes.
    /// Errors name the script and line (Lua's own message format).
    pub fn new(cfg: &EngineConfig<'_>) -> Result<Engine, String> {
        Self::build(cfg, None)
    }

    /// [`Engine::new`], or a new VM around an existing shard's `Shared`.
    fn build(cfg: &EngineConfig<'_>, reuse: Option<Rc<Shared>>) -> Result<Engine, String> {
        if cfg.route == crate::config::RouteImpl::Native {
            return Self::build_native(cfg, reuse);
        }
        // Routes run as coroutines (they may wait for the database or another
        // shard); recycling them avoids a lua_newthread per message.
        let lua = Lua::new_with(
            mlua::StdLib::ALL_SAFE,
            // (catch_rust_panics stays on: turning it off wraps pcall in a C
            // function, and a route could no longer yield inside the route
            // wrapper's xpcall. A panic inside a KSR function then ends the
            // route as an error; the shard tells it from a script error by
            // its panic hook, see `exec::take_panic`.)
            mlua::LuaOptions::new().thread_pool_size(256),
        )
        .map_err(|e| e.to_string())?;
        luacompat::apply_gc(&lua, cfg.tuning);
        limits::apply_jit(&lua, cfg.tuning.lua_max_instructions > 0).map_err(|e| e.to_string())?;
        luacompat::install(&lua, cfg.script_name).map_err(|e| e.to_string())?;
        // A reload keeps the shard's state (reload.rs).
        let shared = reuse.unwrap_or_else(|| Self::new_shared(cfg));
        let ksr = lua.create_table().map_err(|e| e.to_string())?;
        register_all(&lua, &ksr, &shared).map_err(|e| format!("registering KSR: {e}"))?;
        if cfg.test_hooks {
            register_test_hooks(&lua, &ksr).map_err(|e| format!("registering KSR: {e}"))?;
        }
        let exit: mlua::Value = lua
            .load(EXIT_FUNCTIONS)
            .set_name("=ksr_exit")
            .call(ksr.clone())
            .map_err(|e| e.to_string())?;
        let x: Table = ksr.get("x").map_err(|e| e.to_string())?;
        x.set(
            "exit",
            ffi::exit_function(&lua, exit.clone()).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        lua.load(FAST_PATHS)
            .set_name("=ksr_fast_paths")
            .call::<()>((ksr.clone(), TAKE_ASYNC_PATH))
            .map_err(|e| e.to_string())?;
        luacompat::guard_modules(&lua, &ksr).map_err(|e| e.to_string())?;
        lua.globals().set("KSR", ksr).map_err(|e| e.to_string())?;

        // The memory limit covers the script's own load too.
        limits::apply_memory(&lua, cfg.tuning.lua_max_memory_bytes)?;
        lua.load(cfg.script)
            .set_name(format!("@{}", cfg.script_name))
            .exec()
            .map_err(|e| format_lua_error(&e))?;

        let globals = lua.globals();
        let handler = traceback_handler(&lua).map_err(|e| e.to_string())?;
        // Without a limit the wrapper does not call `arm` at all; under
        // LuaJIT (one hook per VM) RouteRun restarts the count instead.
        let (arm_arg, hook) = if !shared.limits.enabled() {
            (None, None)
        } else if cfg!(feature = "lua54") {
            let arm = ffi::arm_function(&lua, &shared).map_err(|e| e.to_string())?;
            (Some(arm), None)
        } else {
            let hook = ffi::VmHook::new(&lua, &shared).map_err(|e| e.to_string())?;
            (None, Some(hook))
        };
        let wrap = |name: &str| -> Result<Option<Function>, String> {
            match globals
                .get::<mlua::Value>(name)
                .map_err(|e| e.to_string())?
            {
                mlua::Value::Function(f) => {
                    let wrapper: Function = lua
                        .load(ROUTE_WRAPPER)
                        .set_name("=route_wrapper")
                        .call((f, handler.clone(), exit.clone(), arm_arg.clone()))
                        .map_err(|e| e.to_string())?;
                    Ok(Some(wrapper))
                }
                mlua::Value::Nil => Ok(None),
                _ => Err(format!("{}: `{name}` is not a function", cfg.script_name)),
            }
        };
        let request_route = wrap("ksr_request_route")?.ok_or_else(|| {
            format!(
                "{}: the script defines no ksr_request_route() function",
                cfg.script_name
            )
        })?;
        let reply_route = wrap("ksr_reply_route")?;
        let routes = Rc::new(NamedRoutes {
            handler,
            exit,
            arm: arm_arg,
            hook: hook.clone(),
            cache: RefCell::new(HashMap::new()),
            native: false,
        });
        lua.set_app_data(routes.clone());
        Ok(Engine {
            shared,
            dlg_next_ms: Cell::new(0),
            vm: RefCell::new(Rc::new(Vm {
                lua,
                request_route: RouteFn::Lua {
                    f: request_route,
                    hook: hook.clone(),
                },
                reply_route: reply_route.map(|f| RouteFn::Lua { f, hook }),
                routes,
            })),
        })
    }

    /// A shard's state, the same whichever route runs.
    fn new_shared(cfg: &EngineConfig<'_>) -> Rc<Shared> {
        Rc::new(Shared {
            cur: RefCell::new(None),
            shard_id: cfg.shard_id,
            shard_count: cfg.shard_count,
            myself: cfg.myself.clone(),
            counters: Counters::new(),
            vars: RefCell::new(HashMap::new()),
            server_header: (!cfg.server_header.is_empty())
                .then(|| cfg.server_header.as_bytes().to_vec()),
            services: cfg.services.clone(),
            tm: tm::TmHandle::new(cfg.services.tables.tm.clone(), cfg.shard_id),
            local_addr: cfg.local_addr,
            extra_out: RefCell::new(Vec::new()),
            route_times: RefCell::new(Vec::new()),
            pv: pv::PvState::new(cfg.defines),
            limits: limits::ScriptLimits::with_msg(
                cfg.tuning.lua_max_instructions,
                cfg.tuning.lua_max_memory_bytes,
                limits::MsgLimits::from_tuning(cfg.tuning),
            ),
            sql: Default::default(),
            dns: Default::default(),
            redis: Default::default(),
            jsonrpl: Default::default(),
        })
    }

    /// The native route: no script. A bare VM is kept only because the
    /// transaction layer resolves failure / onreply / branch routes through
    /// it ([`NamedRoutes`], here resolving to src/kemi/native.rs).
    fn build_native(cfg: &EngineConfig<'_>, reuse: Option<Rc<Shared>>) -> Result<Engine, String> {
        let lua = Lua::new_with(mlua::StdLib::NONE, mlua::LuaOptions::new())
            .map_err(|e| e.to_string())?;
        let shared = reuse.unwrap_or_else(|| Self::new_shared(cfg));
        let routes = Rc::new(NamedRoutes {
            handler: traceback_handler(&lua).map_err(|e| e.to_string())?,
            exit: mlua::Value::Nil,
            arm: None,
            hook: None,
            cache: RefCell::new(HashMap::new()),
            native: true,
        });
        lua.set_app_data(routes.clone());
        Ok(Engine {
            shared,
            dlg_next_ms: Cell::new(0),
            vm: RefCell::new(Rc::new(Vm {
                lua,
                request_route: RouteFn::Native(native::request_route),
                reply_route: Some(RouteFn::Native(native::reply_route)),
                routes,
            })),
        })
    }

    /// True when the routes are the native ones (`[core] route = "native"`).
    pub fn is_native(&self) -> bool {
        self.vm.borrow().routes.native
    }

    pub fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }

    /// The current VM (a handle; after a reload, the new one).
    pub fn lua(&self) -> Lua {
        self.vm.borrow().lua.clone()
    }

    /// Starts `ksr_request_route()` for `ctx`. Poll the returned future; it
    /// hands the context back with the outcome.
    pub fn run_request(&self, ctx: Box<MsgCtx>) -> RouteRun {
        let vm = self.vm.borrow().clone();
        let mut run = RouteRun::new(self.shared.clone(), ctx, &vm.request_route, &vm.lua);
        run._vm = Some(vm);
        run
    }

    /// Starts the xhttp route (`[xhttp] event_callback`, default
    /// `ksr_xhttp_event("xhttp:request")`) for an HTTP request loaded into
    /// `ctx` with [`xhttp::prepare`]. Poll the returned future; it hands the
    /// context back with what the connection does next. A target refused
    /// by `url_skip`/`url_match`, or a script without the callback, gets
    /// 404 without running Lua.
    pub fn run_xhttp(&self, ctx: Box<MsgCtx>) -> xhttp::XhttpRun {
        let settings = self.shared.services.tables.xhttp.clone();
        let vm = self.vm.borrow().clone();
        let wanted = ctx
            .http
            .is_some()
            .then(|| std::str::from_utf8(xhttp::hu(&ctx).unwrap_or_default()).unwrap_or(""))
            .is_some_and(|t| settings.wants(t));
        let route = wanted
            .then(|| {
                vm.routes
                    .get_event(&vm.lua, &settings.event_callback, "xhttp:request")
            })
            .flatten();
        match route {
            Some(f) => {
                let mut run = RouteRun::new(self.shared.clone(), ctx, &f, &vm.lua);
                run._vm = Some(vm);
                xhttp::XhttpRun {
                    shared: self.shared.clone(),
                    run: Some(run),
                    ctx: None,
                }
            }
            None => xhttp::XhttpRun {
                shared: self.shared.clone(),
                run: None,
                ctx: Some(ctx),
            },
        }
    }

    /// A received reply: `ksr_reply_route()`, then its transaction (onreply
    /// route, response selection, failure route) or stateless forwarding.
    pub fn process_reply(
        &self,
        ctx: Box<MsgCtx>,
    ) -> Pin<Box<dyn Future<Output = (Box<MsgCtx>, RouteOutcome)>>> {
        let vm = self.vm.borrow().clone();
        Box::pin(tm::reply_flow(
            self.shared.clone(),
            vm.lua.clone(),
            vm.routes.clone(),
            vm.reply_route.clone(),
            ctx,
        ))
    }

    /// Fires due transaction timers; returns the work for cells whose
    /// branches all failed (failure routes), to be polled by the shard.
    pub fn tm_tick(&self) -> Vec<Pin<Box<dyn Future<Output = ()>>>> {
        let vm = self.vm.borrow().clone();
        tm::tick(&self.shared)
            .into_iter()
            .map(|id| {
                Box::pin(tm::completed_flow(
                    self.shared.clone(),
                    vm.lua.clone(),
                    vm.routes.clone(),
                    id,
                )) as Pin<Box<dyn Future<Output = ()>>>
            })
            .collect()
    }

    /// The next deadline of this shard's transaction stripes, in ms on the
    /// store's clock (compare with [`Engine::tm_now_ms`]).
    pub fn tm_next_deadline_ms(&self) -> Option<u64> {
        self.shared.tm.next_deadline()
    }

    /// How the transaction layer sends replies at once (the shard's socket).
    pub fn set_tm_sender(&self, send: tm_store::DirectSend) {
        self.shared.tm.set_direct_sender(send);
    }

    /// True when this shard's transaction timers need a scan.
    pub fn tm_tick_due(&self) -> bool {
        self.shared.tm.tick_due(self.shared.tm.now_ms())
    }

    pub fn tm_now_ms(&self) -> u64 {
        self.shared.tm.now_ms()
    }

    /// Hands every datagram the transaction layer (and failure routes)
    /// queued to `send`.
    pub fn drain_tm(&self, mut send: impl FnMut(crate::sip::Dest, &[u8])) {
        self.shared.tm.drain(&mut send);
        let extra = std::mem::take(&mut *self.shared.extra_out.borrow_mut());
        for (dst, bytes) in extra {
            send(dst, &bytes);
        }
    }

    /// True when the transaction layer has datagrams to send.
    pub fn tm_has_output(&self) -> bool {
        self.shared.tm.has_output() || !self.shared.extra_out.borrow().is_empty()
    }

    /// Dialog timers (once a second while dialogs or unanswered BYEs
    /// exist): timeouts, BYE retransmissions and the BYEs the control plane
    /// queued; what they send leaves with the next batch.
    pub fn dlg_tick(&self) {
        let d = &self.shared.services.tables.dialog;
        if d.is_empty() && d.pending_byes() == 0 {
            return;
        }
        let now = d.now_ms();
        if now < self.dlg_next_ms.get() {
            return;
        }
        self.dlg_next_ms.set(now + 1000);
        dialog::tick(&self.shared, now);
    }

    /// The request route of `ctx` ended (dialog bookkeeping).
    #[inline]
    pub fn route_end(&self, ctx: &MsgCtx) {
        if ctx.dlg_new {
            dialog::route_end(&self.shared, ctx);
        }
    }

    /// After a route failed: when the VM is past half its
    /// `lua_max_memory_bytes`, a full collection now, so the garbage of a
    /// route stopped by the limit does not fail the next ones (LuaJIT has no
    /// emergency collection when an allocation fails).
    pub fn relieve_memory(&self) {
        let limit = self.shared.limits.max_memory_bytes;
        if limit == 0 {
            return;
        }
        let vm = self.vm.borrow().clone();
        if vm.lua.used_memory() > limit / 2 {
            let _ = vm.lua.gc_collect();
        }
    }

    /// Lua memory in use, bytes.
    pub fn used_memory_bytes(&self) -> usize {
        self.vm.borrow().lua.used_memory()
    }
}

fn register_all(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    core::register(lua, ksr, shared)?;
    sl::register(lua, ksr, shared)?;
    pv::register(lua, ksr, shared)?;
    kx::register(lua, ksr, shared)?;
    hdr::register(lua, ksr, shared)?;
    auth::register(lua, ksr, shared)?;
    registrar::register(lua, ksr, shared)?;
    tm::register(lua, ksr, shared)?;
    rr::register(lua, ksr, shared)?;
    siputils::register(lua, ksr, shared)?;
    maxfwd::register(lua, ksr, shared)?;
    tcpops::register(lua, ksr, shared)?;
    corex::register(lua, ksr, shared)?;
    htable::register(lua, ksr, shared)?;
    pike::register(lua, ksr, shared)?;
    if shared.services.tables.permissions_enabled {
        permissions::register(lua, ksr, shared)?;
    }
    sanity::register(lua, ksr, shared)?;
    nathelper::register(lua, ksr, shared)?;
    ipops::register(lua, ksr, shared)?;
    textops::register(lua, ksr, shared)?;
    sqlops::register(lua, ksr, shared)?;
    ndb_redis::register(lua, ksr, shared)?;
    jsonrpcs::register(lua, ksr, shared)?;
    sipjson::register(lua, ksr, shared)?;
    dialog::register(lua, ksr, shared)?;
    dispatcher::register(lua, ksr, shared)?;
    xhttp::register(lua, ksr, shared)?;
    websocket::register(lua, ksr, shared)?;
    Ok(())
}

/// `KSR.sipshard_test.panic(text)`: a KSR function that panics, so tests can
/// check that a panic in a callback never leaves a dead shard. Only with
/// `core.test_hooks = true`.
fn register_test_hooks(lua: &Lua, ksr: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "panic",
        lua.create_function(|_, text: String| -> mlua::Result<()> {
            panic!("KSR.sipshard_test.panic: {text}")
        })?,
    )?;
    ksr.set("sipshard_test", t)
}

pub(crate) type LuaCall = Pin<Box<dyn Future<Output = mlua::Result<()>>>>;

/// One route execution. While polled, its context sits in `Shared::cur`.
pub struct RouteRun {
    shared: Rc<Shared>,
    ctx: Option<Box<MsgCtx>>,
    call: LuaCall,
    /// Keeps the VM the route runs in alive across a reload (dropped after `call`).
    _vm: Option<Rc<Vm>>,
    /// Instructions left (`lua_max_instructions`), carried across polls.
    left: i64,
    /// `lua_max_instructions` is set.
    limited: bool,
    /// The VM's count hook, restarted on every poll (LuaJIT; Lua 5.4 keeps
    /// a count per coroutine, armed by the route wrapper).
    hook: Option<ffi::VmHook>,
}

impl RouteRun {
    fn new(shared: Rc<Shared>, ctx: Box<MsgCtx>, f: &RouteFn, lua: &Lua) -> RouteRun {
        RouteRun {
            ctx: Some(ctx),
            call: f.start(&shared, lua),
            _vm: None,
            left: shared.limits.budget(),
            limited: shared.limits.enabled(),
            hook: f.hook().cloned(),
            shared,
        }
    }
}

impl Future for RouteRun {
    type Output = (Box<MsgCtx>, RouteOutcome);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(ctx) = this.ctx.take() else {
            // Polled after completion: a caller bug, not an input fault.
            return Poll::Pending;
        };
        debug_assert!(
            this.shared.cur.borrow().is_none(),
            "route contexts must not nest"
        );
        *this.shared.cur.borrow_mut() = Some(ctx);
        let limits = &this.shared.limits;
        if this.limited {
            limits.set_left(this.left);
            limits.set_polling(true);
            if let Some(hook) = &this.hook {
                hook.restart(limits.step(), this.left < 0);
            }
        }
        let res = ffi::with_polled(&this.shared, || this.call.as_mut().poll(cx));
        if this.limited {
            this.left = limits.left();
            limits.set_polling(false);
        }
        let ctx = this.shared.cur.borrow_mut().take();
        let Some(ctx) = ctx else {
            // The slot is only ever filled/emptied here; losing it is a bug.
            unreachable!("route context vanished while polling");
        };
        match res {
            Poll::Pending => {
                this.ctx = Some(ctx);
                Poll::Pending
            }
            Poll::Ready(r) => {
                let mut ctx = ctx;
                let refused = ctx.edits.take_refused();
                if refused > 0 {
                    this.shared
                        .counters
                        .add(crate::stats::Counter::EditLimit, u64::from(refused));
                }
                let refused = ctx.pv.take_refused();
                if refused > 0 {
                    this.shared
                        .counters
                        .add(crate::stats::Counter::PvLimit, u64::from(refused));
                }
                let outcome = match r {
                    Ok(()) if ctx.dropped => RouteOutcome::Drop,
                    Ok(()) => RouteOutcome::Done,
                    Err(e) => RouteOutcome::Error(format_lua_error(&e)),
                };
                Poll::Ready((ctx, outcome))
            }
        }
    }
}

/// Lua error text with traceback, on one or more lines.
pub fn format_lua_error(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            format!("{}\n{traceback}", format_lua_error(cause))
        }
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Converts bytes for Lua, returning `nil` for `None`.
pub(crate) fn lua_opt_str(lua: &Lua, b: Option<&[u8]>) -> mlua::Result<mlua::Value> {
    match b {
        Some(b) => Ok(mlua::Value::String(lua.create_string(b)?)),
        None => Ok(mlua::Value::Nil),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn myself_matching() {
        let m = Myself::new(
            "127.0.0.1:5060".parse().unwrap(),
            &["example.com".into(), "sip.example.org:5070".into()],
        );
        assert!(m.matches(b"127.0.0.1", None));
        assert!(m.matches(b"127.0.0.1", Some(5060)));
        assert!(!m.matches(b"127.0.0.1", Some(5061)));
        assert!(m.matches(b"LOCALHOST", Some(5060)));
        assert!(m.matches(b"Example.COM", Some(9999)));
        assert!(m.matches(b"sip.example.org", Some(5070)));
        assert!(!m.matches(b"sip.example.org", None));
        assert!(!m.matches(b"10.0.0.1", None));
        // KEMI is_myself: no port in the URI matches any of our ports.
        assert!(m.matches_any_port(b"sip.example.org", None));
        assert!(m.matches_any_port(b"127.0.0.1", None));
        assert!(!m.matches_any_port(b"127.0.0.1", Some(5061)));
        assert!(!m.matches_any_port(b"10.0.0.1", None));
    }
}
