//! Test helpers: an [`Engine`] built from a script, run on one message.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::services::{Services, SharedTables};
use super::{Engine, EngineConfig, MsgCtx, Myself, RouteOutcome};
use crate::config::{AuthConfig, RegistrarConfig, ShardTuning};
use crate::sip::Limits;

/// The address test engines listen on (also `m.local`).
pub(crate) const LOCAL: &str = "10.0.0.1:5060";

/// An engine running `script`, answering for [`LOCAL`] and `proxy.example.com`.
pub(crate) fn engine(script: &str) -> Engine {
    engine_with(script, &AuthConfig::default(), &RegistrarConfig::default())
}

/// As [`engine`], with these `[auth]` and `[registrar]` settings.
pub(crate) fn engine_with(script: &str, auth: &AuthConfig, reg: &RegistrarConfig) -> Engine {
    build(script, auth, reg, &ShardTuning::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// An engine running the native route (`[core] route = "native"`), as
/// [`engine`] otherwise.
pub(crate) fn engine_native() -> Engine {
    build_route(
        "",
        &AuthConfig::default(),
        &RegistrarConfig::default(),
        &ShardTuning::default(),
        crate::config::RouteImpl::Native,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// As [`engine`], with these `[shard]` settings; the load error as text.
pub(crate) fn engine_tuned(script: &str, tuning: &ShardTuning) -> Result<Engine, String> {
    build(
        script,
        &AuthConfig::default(),
        &RegistrarConfig::default(),
        tuning,
    )
}

fn build(
    script: &str,
    auth: &AuthConfig,
    reg: &RegistrarConfig,
    tuning: &ShardTuning,
) -> Result<Engine, String> {
    build_route(script, auth, reg, tuning, Default::default())
}

fn build_route(
    script: &str,
    auth: &AuthConfig,
    reg: &RegistrarConfig,
    tuning: &ShardTuning,
    route: crate::config::RouteImpl,
) -> Result<Engine, String> {
    let tables = std::sync::Arc::new(SharedTables::new(1, auth, reg, 0));
    let services = Rc::new(Services::new(0, 1, tables, auth, reg, [7u8; 32], None, 0).unwrap());
    Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script,
        script_name: "test.lua",
        myself: Myself::new(LOCAL.parse().unwrap(), &["proxy.example.com".into()]),
        server_header: "sipshard",
        tuning,
        services,
        test_hooks: false,
        defines: &[],
        local_addr: LOCAL.parse().unwrap(),
        route,
    })
}

/// Runs `ksr_request_route()` on `msg` (received from 192.0.2.9:5060 on
/// [`LOCAL`]); the route must not suspend.
pub(crate) fn run(eng: &Engine, msg: &[u8]) -> (Box<MsgCtx>, RouteOutcome) {
    let mut m = Box::new(MsgCtx::new(65535, 128));
    m.load(
        msg,
        "192.0.2.9:5060".parse().unwrap(),
        LOCAL.parse().unwrap(),
    );
    m.parse(&Limits::default()).expect("test message parses");
    let mut run = eng.run_request(m);
    match Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("test route suspended"),
    }
}

/// Runs the xhttp route on the HTTP request `raw` (from 192.0.2.9:5060 on
/// [`LOCAL`]); the route must not suspend.
pub(crate) fn run_http(eng: &Engine, raw: &[u8]) -> super::xhttp::XhttpOutcome {
    let limits = crate::http::Limits::default();
    let head = crate::http::parse_head(raw, &limits)
        .expect("test request parses")
        .expect("test request is whole");
    assert_eq!(head.total_len(), raw.len(), "one whole test request");
    let req = crate::http::Request {
        head,
        bytes: raw.to_vec(),
    };
    let mut m = Box::new(MsgCtx::new(65535, 128));
    assert!(super::xhttp::prepare(
        &mut m,
        &req,
        "192.0.2.9:5060".parse().unwrap(),
        LOCAL.parse().unwrap(),
        limits.headers_max,
    ));
    let mut run = eng.run_xhttp(m);
    match Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready((_, out)) => out,
        Poll::Pending => panic!("test xhttp route suspended"),
    }
}

/// The message as it would be written out with the route's header edits.
pub(crate) fn assembled(m: &MsgCtx) -> String {
    let mut out = Vec::new();
    m.edits.assemble(&m.buf[..m.len], &m.parsed, &mut out);
    String::from_utf8(out).unwrap()
}

/// A Lua global the script set (an integer, or a boolean as 1/0).
pub(crate) fn global_int(eng: &Engine, name: &str) -> i64 {
    match eng.lua().globals().get::<mlua::Value>(name).unwrap() {
        mlua::Value::Integer(i) => i,
        mlua::Value::Boolean(b) => b as i64,
        other => panic!("global {name} is {other:?}"),
    }
}

/// A Lua global string the script set ("" for nil).
pub(crate) fn global_str(eng: &Engine, name: &str) -> String {
    match eng.lua().globals().get::<mlua::Value>(name).unwrap() {
        mlua::Value::String(s) => s.to_str().unwrap().to_string(),
        mlua::Value::Nil => String::new(),
        other => panic!("global {name} is {other:?}"),
    }
}

/// A Lua global boolean the script set.
pub(crate) fn global_bool(eng: &Engine, name: &str) -> bool {
    matches!(
        eng.lua().globals().get::<mlua::Value>(name).unwrap(),
        mlua::Value::Boolean(true)
    )
}

/// Builds a request from `start` (e.g. `"BYE sip:bob@192.0.2.20 SIP/2.0"`)
/// and extra header lines, with the usual mandatory headers.
pub(crate) fn request(start: &str, to_tag: Option<&str>, extra: &[&str]) -> Vec<u8> {
    let method = start.split(' ').next().unwrap();
    let mut s = format!(
        "{start}\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-t1;rport\r\n\
         From: <sip:alice@example.com>;tag=fromtag1\r\n"
    );
    match to_tag {
        Some(t) => s.push_str(&format!("To: <sip:bob@example.com>;tag={t}\r\n")),
        None => s.push_str("To: <sip:bob@example.com>\r\n"),
    }
    s.push_str(&format!("Call-ID: t1@192.0.2.9\r\nCSeq: 2 {method}\r\n"));
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

/// Shared tables with the module settings (`[[htable]]`, `[pike]`,
/// `[permissions]`) of the TOML text `config`.
pub(crate) fn tables_with(config: &str) -> std::sync::Arc<SharedTables> {
    let cfg = crate::config::Config::from_toml(config, "test").expect("test config");
    std::sync::Arc::new(SharedTables::new(1, &cfg.auth, &cfg.registrar, 0).with_modules(&cfg))
}

/// [`engine`] for shard `shard_id` (of `shard_count`) over `tables`, so two
/// engines can share one set of tables as two shards do.
pub(crate) fn engine_on(
    script: &str,
    tables: std::sync::Arc<SharedTables>,
    shard_id: usize,
    shard_count: usize,
) -> Engine {
    engine_on_with(script, tables, shard_id, shard_count, &[])
}

/// [`engine_on`] with `core.defines`.
pub(crate) fn engine_on_with(
    script: &str,
    tables: std::sync::Arc<SharedTables>,
    shard_id: usize,
    shard_count: usize,
    defines: &[String],
) -> Engine {
    let tuning = ShardTuning::default();
    let auth = AuthConfig::default();
    let reg = RegistrarConfig::default();
    let services = Rc::new(
        Services::new(
            shard_id,
            shard_count,
            tables,
            &auth,
            &reg,
            [7u8; 32],
            None,
            0,
        )
        .unwrap(),
    );
    Engine::new(&EngineConfig {
        shard_id,
        shard_count,
        script,
        script_name: "test.lua",
        myself: Myself::new(LOCAL.parse().unwrap(), &["proxy.example.com".into()]),
        server_header: "sipshard",
        tuning: &tuning,
        services,
        test_hooks: false,
        defines,
        local_addr: LOCAL.parse().unwrap(),
        route: Default::default(),
    })
    .unwrap()
}

/// [`run`] with the message received from `src` (`ip:port`).
pub(crate) fn run_from(eng: &Engine, msg: &[u8], src: &str) -> (Box<MsgCtx>, RouteOutcome) {
    let mut m = Box::new(MsgCtx::new(65535, 128));
    m.load(msg, src.parse().unwrap(), LOCAL.parse().unwrap());
    m.parse(&Limits::default()).expect("test message parses");
    let mut run = eng.run_request(m);
    match Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("test route suspended"),
    }
}
