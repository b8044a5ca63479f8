//! Instruction-count harness (REGISTER from `samples.rs`, as in the criterion bench) for callgrind (stable on noisy machines, unlike
//! wall time): runs one operation N times so that
//! `valgrind --tool=callgrind` total / N is the cost per operation.
//!
//!   cargo build --release --example instructions
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 100000
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 0   # baseline
//!
//! `perf/instructions.sh` runs both and prints the difference per operation.
//!
//! Route modes (one `ksr_request_route()` through the real engine, as in
//! `route.rs`; compare Lua flavours with `--no-default-features --features lua54`):
//!   route_options   the default script, OPTIONS keepalive (200)
//!   route_register  the default script, REGISTER with stale credentials (401)
//!   route_save      `KSR.registrar.save("location", 0)` of a REGISTER (refresh, 200)
//!   route_lua       a Lua-heavy route: string/table work, no KSR call but the reply
//!   route_script    the Lua script in file `$SCRIPT`, on the OPTIONS (it
//!                   must send one reply), to cost one KSR call or construct
//!   route_register_auth  the default script, REGISTER with valid digest
//!                   credentials (cached subscriber, a nonce of this engine):
//!                   auth_check, consume_credentials, save, 200
//!
//! `NO_ROUTE=1` with any route mode: the same loop without the route (load
//! and parse only), the baseline for the route's own instructions.
//!
//! Native route modes (`[core] route = "native"`, src/kemi/native.rs: the
//! default script's logic in Rust on the same KSR functions):
//!   route_options_native, route_register_native, route_register_auth_native
//!
//! Flood control modes (what `[flood]` adds to each request before parsing,
//! clock read included; sources rotate over 1 000 IPs):
//!   flood_off       `[flood]` off: the shard's one branch
//!   flood_rate      `per_source_rate` on (token bucket per source)
//!   flood_bans      only `auth_failures_max` on, no ban issued yet

use std::rc::Rc;

use sipshard::config::{AuthConfig, RegistrarConfig, RouteImpl, ShardTuning, DEFAULT_SCRIPT};
use sipshard::kemi::services::{Services, SharedTables};
use sipshard::kemi::{Engine, EngineConfig, MsgCtx, Myself};
use sipshard::sip::{build_reply, parse, Framing, Limits, Parsed, ReplyOpts, SipMsg};

#[path = "samples.rs"]
mod samples;
use samples::REGISTER;

const OPTIONS: &[u8] = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-1-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bench@127.0.0.1>;tag=1\r\n\
To: <sip:127.0.0.1:5060>\r\n\
Call-ID: bench-1@127.0.0.1\r\n\
CSeq: 1 OPTIONS\r\n\
User-Agent: sipshard-bench\r\n\
Content-Length: 0\r\n\r\n";

const SAVE: &str = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        if KSR.registrar.save("location", 0) < 0 then KSR.sl.sl_reply_error() end
        return KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
end
"#;

const LUA_HEAVY: &str = r#"
local fmt, concat = string.format, table.concat
function ksr_request_route()
    local parts = {}
    local ua = KSR.pv.get("$ua") or ""
    for w in string.gmatch(ua, "[%w%.]+") do parts[#parts + 1] = w:lower() end
    local acc = 0
    for i = 1, 50 do acc = acc + (i % 7) * 3 end
    local t = { user = KSR.pv.get("$fU") or "", n = acc, tag = fmt("%s-%d", concat(parts, "."), acc) }
    if t.tag ~= "" and t.n > 0 then KSR.sl.sl_send_reply(200, "OK") end
    return KSR.x.exit()
end
"#;

fn engine(script: &str) -> Engine {
    engine_route(script, RouteImpl::Lua)
}

fn engine_route(script: &str, route: RouteImpl) -> Engine {
    engine_auth(
        script,
        route,
        &AuthConfig::default(),
        &RegistrarConfig::default(),
    )
}

fn engine_auth(script: &str, route: RouteImpl, auth: &AuthConfig, reg: &RegistrarConfig) -> Engine {
    let mut tuning = ShardTuning::default();
    // LUA_MAX_INSTRUCTIONS=0 measures the route without the count hook
    // (and, under LuaJIT, with the JIT compiler on).
    if let Some(n) = std::env::var("LUA_MAX_INSTRUCTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tuning.lua_max_instructions = n;
    }
    let tables = std::sync::Arc::new(SharedTables::new(1, auth, reg, 0));
    let services =
        Rc::new(Services::new(0, 1, tables, auth, reg, [7u8; 32], None, 0).expect("services"));
    Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script,
        script_name: "bench",
        myself: Myself::new(
            "127.0.0.1:5060".parse().expect("addr"),
            &["registrar.example.com".into()],
        ),
        server_header: "sipshard",
        tuning: &tuning,
        services,
        test_hooks: false,
        defines: &[],
        local_addr: "127.0.0.1:5060".parse().expect("addr"),
        route,
    })
    .expect("engine")
}

/// Runs `msg` through `script`'s request route `n` times.
fn route(script: &str, msg: &[u8], n: usize) {
    route_on(engine(script), msg, n);
}

/// Runs `msg` through `eng`'s request route `n` times.
fn route_on(eng: Engine, msg: &[u8], n: usize) {
    let limits = Limits::default();
    let local = "127.0.0.1:5060".parse().expect("addr");
    let src = "192.0.2.44:5060".parse().expect("addr");
    let mut ctx = Box::new(MsgCtx::new(65535, 128));
    let mut first = String::new();
    let mut first_line = Vec::new();
    // NO_ROUTE=1: only load and parse (the baseline perf/instructions.sh
    // subtracts to count the route alone)
    if std::env::var_os("NO_ROUTE").is_some() {
        let mut total = 0;
        for _ in 0..n {
            ctx.load(std::hint::black_box(msg), src, local);
            ctx.parse(&limits).expect("valid message");
            total += ctx.len;
        }
        println!("loaded and parsed x{n}: {total} bytes");
        return;
    }
    for i in 0..n {
        ctx.load(msg, src, local);
        ctx.parse(&limits).expect("valid message");
        let (m, outcome) = futures_lite::future::block_on(eng.run_request(ctx));
        ctx = m;
        let reply = |ctx: &MsgCtx| -> Vec<u8> {
            ctx.out
                .first()
                .map(|o| ctx.out_buf[o.start as usize..o.end as usize].to_vec())
                .unwrap_or_default()
        };
        assert_eq!(ctx.out.len(), 1, "one reply per route");
        // every route answers alike (e.g. each REGISTER is saved again):
        // the status line, compared without allocating
        let o = &ctx.out[0];
        let out = &ctx.out_buf[o.start as usize..o.end as usize];
        let line = &out[..out.iter().position(|&c| c == b'\r').unwrap_or(out.len())];
        if i == 0 {
            let b = reply(&ctx);
            first_line = line.to_vec();
            first = format!(
                "{outcome:?} {:?}",
                String::from_utf8_lossy(&b[..b.len().min(40)])
            );
        }
        assert!(
            line == first_line.as_slice(),
            "route {i}: {:?}, first: {first}",
            String::from_utf8_lossy(line)
        );
    }
    let how = if eng.is_native() {
        "native route".to_string()
    } else {
        format!("lua: {}", sipshard::kemi::LUA_FLAVOUR)
    };
    println!("first route: {first}; {how}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn md5_hex(text: &str) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(text.as_bytes()))
}

/// `route_register_auth`: the default route (Lua or native) on a REGISTER
/// whose digest response is right. The subscriber is put in the credential
/// cache (as a database answer would be) and the nonce comes from a 401 of
/// this engine, before the timed loop (the same for every N).
fn route_register_auth(route: RouteImpl, n: usize) {
    // the cached subscriber, the nonce and the same Call-ID/CSeq being
    // accepted again (registrar cseq_delay) must outlast a slow callgrind
    // run: all of them count wall-clock seconds
    let auth = AuthConfig {
        cache_ttl_s: 86_400,
        nonce_expire: 86_400,
        ..AuthConfig::default()
    };
    let reg = RegistrarConfig {
        cseq_delay: 86_400,
        ..RegistrarConfig::default()
    };
    let eng = engine_auth(DEFAULT_SCRIPT, route, &auth, &reg);
    let (user, realm, pw) = ("alice", "registrar.example.com", "secret");
    let now = sipshard::kemi::services::unix_now_ms() / 1000;
    eng.shared()
        .services
        .tables
        .creds
        .get(user.as_bytes())
        .insert(
            user,
            "",
            Some(std::sync::Arc::new(sipshard::kemi::services::CachedCred {
                password: pw.into(),
                ha1: md5_hex(&format!("{user}:{realm}:{pw}")),
                ha1b: String::new(),
            })),
            now,
        );
    let text = String::from_utf8_lossy(REGISTER);
    let bare: String = text
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("Authorization:"))
        .collect();
    // the challenge
    let limits = Limits::default();
    let local = "127.0.0.1:5060".parse().expect("addr");
    let src = "192.0.2.44:5060".parse().expect("addr");
    let mut ctx = Box::new(MsgCtx::new(65535, 128));
    ctx.load(bare.as_bytes(), src, local);
    ctx.parse(&limits).expect("valid message");
    let (ctx, _) = futures_lite::future::block_on(eng.run_request(ctx));
    let o = ctx.out.first().expect("a 401");
    let reply =
        String::from_utf8_lossy(&ctx.out_buf[o.start as usize..o.end as usize]).into_owned();
    let nonce = reply
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no nonce in {reply}"));
    let uri = "sip:registrar.example.com";
    let (nc, cnonce) = ("00000001", "a1b2c3d4");
    let ha1 = md5_hex(&format!("{user}:{realm}:{pw}"));
    let ha2 = md5_hex(&format!("REGISTER:{uri}"));
    let resp = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"{user}\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"{uri}\",response=\"{resp}\",algorithm=MD5,qop=auth,nc={nc},cnonce=\"{cnonce}\"\r\n"
    );
    let msg = bare.replacen("Allow-Events:", &format!("{auth}Allow-Events:"), 1);
    route_on(eng, msg.as_bytes(), n);
}

/// `n` flood checks as the shard makes them (`shard::io::on_datagram`).
fn flood(what: &str, n: usize) {
    let mut cfg = sipshard::config::FloodConfig::default();
    match what {
        "flood_rate" => {
            cfg.per_source_rate = 1_000_000;
            cfg.per_source_burst = 1_000_000;
        }
        "flood_bans" => cfg.auth_failures_max = 10,
        _ => {}
    }
    let flood = sipshard::flood::Flood::new(&cfg);
    let on = std::hint::black_box(cfg.enabled());
    let mut passed = 0usize;
    for i in 0..n {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + (i % 1000) as u32));
        if on && flood.needs_check() {
            let c = flood.check(
                std::hint::black_box(ip),
                sipshard::kemi::services::unix_now_ms(),
            );
            if c.verdict != sipshard::flood::Verdict::Pass {
                continue;
            }
        }
        passed += 1;
    }
    println!("{what} x{n}: {passed} passed");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "parse_reply".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    match what.as_str() {
        "flood_off" | "flood_rate" | "flood_bans" => return flood(&what, n),
        "route_options" => return route(DEFAULT_SCRIPT, OPTIONS, n),
        "route_register" => return route(DEFAULT_SCRIPT, REGISTER, n),
        "route_save" => return route(SAVE, REGISTER, n),
        "route_lua" => return route(LUA_HEAVY, REGISTER, n),
        "route_script" => {
            let path = std::env::var("SCRIPT").expect("SCRIPT=path of a Lua script");
            let script = std::fs::read_to_string(&path).expect("SCRIPT readable");
            return route(&script, OPTIONS, n);
        }
        "route_register_auth" => return route_register_auth(RouteImpl::Lua, n),
        "route_options_native" => return route_on(engine_route("", RouteImpl::Native), OPTIONS, n),
        "route_register_native" => {
            return route_on(engine_route("", RouteImpl::Native), REGISTER, n)
        }
        "route_register_auth_native" => return route_register_auth(RouteImpl::Native, n),
        _ => {}
    }
    let limits = Limits::default();
    let mut parsed = Parsed::default();
    let mut out = Vec::with_capacity(1024);
    let mut total = 0usize;
    for _ in 0..n {
        let buf = std::hint::black_box(REGISTER);
        parse(buf, Framing::Datagram, &limits, &mut parsed).expect("valid REGISTER");
        if what == "parse_reply" {
            let msg = SipMsg::new(buf, &parsed);
            let opts = ReplyOpts {
                force_rport: false,
                to_tag: Some(b"ss0123456789abcdef"),
                src_ip: Some(b"192.0.2.44"),
                src_port: Some(5060),
                ..Default::default()
            };
            build_reply(&msg, 200, b"OK", &opts, &mut out);
        }
        total += std::hint::black_box(out.len() + parsed.headers.len());
    }
    println!("{what} x{n}: {total}");
}
