//! Lua 5.1 idioms, `require` next to the script, the KSR module guards.

use std::rc::Rc;

use crate::config::{AuthConfig, LuaGc, RegistrarConfig, ShardTuning};
use crate::kemi::services::{Services, SharedTables};
use crate::kemi::testutil::{engine, request, run, LOCAL};
use crate::kemi::{Engine, EngineConfig, Myself, RouteOutcome};

fn engine_with(script: &str, script_name: &str, tuning: &ShardTuning) -> Result<Engine, String> {
    let auth = AuthConfig::default();
    let reg = RegistrarConfig::default();
    let tables = std::sync::Arc::new(SharedTables::new(1, &auth, &reg, 0));
    let services = Rc::new(Services::new(
        0, 1, tables, &auth, &reg, [7u8; 32], None, 0,
    )?);
    Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script,
        script_name,
        myself: Myself::new(LOCAL.parse().unwrap(), &[]),
        server_header: "sipshard",
        tuning,
        services,
        test_hooks: false,
        defines: &[],
        local_addr: LOCAL.parse().unwrap(),
        route: Default::default(),
    })
}

fn global_str(eng: &Engine, name: &str) -> String {
    match eng.lua().globals().get::<mlua::Value>(name).unwrap() {
        mlua::Value::String(s) => s.to_string_lossy(),
        other => panic!("global {name} is {other:?}"),
    }
}

/// A script written for Kamailio's Lua 5.1 runs; what differs between the
/// flavours is the number formatting.
#[test]
fn lua51_idioms() {
    let script = r#"
        local t = {10, 20, 30}
        local a, b, c = unpack(t)
        local f = loadstring("return 1 + ...")
        local words = {}
        for w in string.gfind("alpha beta gamma", "%a+") do words[table.getn(words) + 1] = w end
        R_UNPACK = a + b + c
        R_LOADSTRING = f(41)
        R_GETN = table.getn(t)
        R_GFIND = table.concat(words, ",")
        R_MOD = math.mod(7, 3)
        R_DIV = tostring(10 / 2)
        R_HALF = tostring(7 / 2)
        R_FLOOR = tostring(math.floor(7 / 2))
        R_FMT = string.format("%d|%5.1f|%s", 3.0, 2.5, 10 / 2)
        R_MAXN = table.maxn({1, 2, [7] = 3})
        -- 5.2+ names used by sipshard's own scripts work too
        R_TUNPACK = select(string.char(35), table.unpack({1, 2, 3}))
        R_PACK = table.pack(1, nil, 3).n
        function ksr_request_route() end
    "#;
    let eng = engine(script);
    let g = |n| crate::kemi::testutil::global_int(&eng, n);
    assert_eq!(g("R_UNPACK"), 60);
    assert_eq!(g("R_LOADSTRING"), 42);
    assert_eq!(g("R_GETN"), 3);
    assert_eq!(global_str(&eng, "R_GFIND"), "alpha,beta,gamma");
    assert_eq!(g("R_MOD"), 1);
    assert_eq!(global_str(&eng, "R_HALF"), "3.5");
    assert_eq!(global_str(&eng, "R_FLOOR"), "3");
    assert_eq!(g("R_MAXN"), 7);
    assert_eq!(g("R_TUNPACK"), 3);
    assert_eq!(g("R_PACK"), 3);
    if cfg!(feature = "luajit") {
        assert_eq!(global_str(&eng, "R_DIV"), "5");
        assert_eq!(global_str(&eng, "R_FMT"), "3|  2.5|5");
    } else {
        assert_eq!(global_str(&eng, "R_DIV"), "5.0");
        assert_eq!(global_str(&eng, "R_FMT"), "3|  2.5|5.0");
    }
}

/// setfenv/getfenv and module(): real under LuaJIT, approximations in 5.4.
#[test]
fn module_and_fenv() {
    let script = r#"
        local m = loadstring('module("mylib", package.seeall) return package.loaded.mylib')()
        R_MODULE = (package.loaded.mylib == m and mylib == m and m._NAME == "mylib") and 1 or 0
        R_GETFENV = (getfenv(1) ~= nil) and 1 or 0
        function ksr_request_route() end
    "#;
    let eng = engine(script);
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_MODULE"), 1);
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_GETFENV"), 1);
    if cfg!(feature = "luajit") {
        let eng = engine(
            r#"
            local function f() return x end
            setfenv(f, { x = 7 })
            R_SETFENV = f()
            function ksr_request_route() end
        "#,
        );
        assert_eq!(crate::kemi::testutil::global_int(&eng, "R_SETFENV"), 7);
    }
}

/// `require` finds the script's own helper files next to it, whatever the
/// working directory (tests run in the crate root).
#[test]
fn require_next_to_the_script() {
    let dir = std::env::temp_dir().join(format!("sipshard-luacompat-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("helpers.lua"),
        "local M = {} function M.greet(n) return 'hi ' .. n end return M",
    )
    .unwrap();
    std::fs::write(dir.join("lib").join("init.lua"), "return { answer = 42 }").unwrap();
    let script_path = dir.join("main.lua");
    let script = r#"
        local h = require "helpers"
        local lib = require "lib"
        R_GREET = h.greet("bob")
        R_ANSWER = lib.answer
        R_SAME = (require("helpers") == h) and 1 or 0
        function ksr_request_route() end
    "#;
    std::fs::write(&script_path, script).unwrap();
    let eng = engine_with(
        script,
        script_path.to_str().unwrap(),
        &ShardTuning::default(),
    );
    std::fs::remove_dir_all(&dir).ok();
    let eng = eng.unwrap();
    assert_eq!(global_str(&eng, "R_GREET"), "hi bob");
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_ANSWER"), 42);
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_SAME"), 1);
    // A missing helper is a load error naming the module.
    let err = engine_with(
        "require 'nope'",
        "/nonexistent/x.lua",
        &ShardTuning::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("module 'nope' not found"), "{err}");
}

/// Modules sipshard lacks are nil; a missing function of a present module
/// is an error naming it.
#[test]
fn missing_modules_and_functions() {
    let script = r#"
        R_RTPPROXY = (KSR.rtpproxy == nil) and 1 or 0
        R_TM = (KSR.tm ~= nil and KSR.tm.t_relay ~= nil) and 1 or 0
        local ok, err = pcall(function() return KSR.sl.sl_foo end)
        R_ERR = err
        function ksr_request_route()
            if KSR.rtpproxy then KSR.rtpproxy.rtpproxy_manage() end
            KSR.tm.t_foo()
        end
    "#;
    let eng = engine(script);
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_RTPPROXY"), 1);
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_TM"), 1);
    assert!(
        global_str(&eng, "R_ERR").ends_with("KSR.sl.sl_foo: function not exported by sipshard"),
        "{}",
        global_str(&eng, "R_ERR")
    );
    let (_m, outcome) = run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
    let RouteOutcome::Error(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        e.starts_with("test.lua:8: KSR.tm.t_foo: function not exported by sipshard"),
        "{e}"
    );
}

/// `lua_gc = "generational"` works in both flavours (LuaJIT falls back to
/// the incremental collector).
#[test]
fn generational_gc_setting_degrades() {
    let tuning = ShardTuning {
        lua_gc: LuaGc::Generational,
        lua_gc_step: 20,
        lua_gc_pause: 100,
        ..ShardTuning::default()
    };
    let eng = engine_with(
        "function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') end",
        "gc.lua",
        &tuning,
    )
    .unwrap();
    let (m, outcome) = run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
    assert_eq!(outcome, RouteOutcome::Done);
    assert_eq!(m.out.len(), 1);
}

#[test]
fn flavour_is_the_configured_one() {
    let eng = engine("R_JIT = (jit ~= nil) and 1 or 0 function ksr_request_route() end");
    let want = if cfg!(feature = "luajit") { 1 } else { 0 };
    assert_eq!(crate::kemi::testutil::global_int(&eng, "R_JIT"), want);
}

/// A route that suspends (as auth_check / registrar.save do on their slow
/// paths) inside the route wrapper's xpcall and a script pcall, then resumes
/// and ends with `KSR.x.exit()`: coroutines yield across pcall in both
/// flavours.
#[test]
fn suspending_route_resumes() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    let script = r#"
        function ksr_request_route()
            local ok, v = pcall(function() return WAIT_ONCE(41) end)
            if ok and v == 42 then
                KSR.sl.sl_send_reply(200, "Resumed")
            else
                KSR.sl.sl_send_reply(500, tostring(v))
            end
            KSR.x.exit()
            KSR.sl.sl_send_reply(500, "after exit")
        end
    "#;
    let eng = engine(script);
    let wait = eng
        .lua()
        .create_async_function(|_, n: i64| async move {
            futures_lite::future::yield_now().await;
            Ok(n + 1)
        })
        .unwrap();
    eng.lua().globals().set("WAIT_ONCE", wait).unwrap();
    for _ in 0..3 {
        let mut m = Box::new(crate::kemi::MsgCtx::new(65535, 128));
        let msg = request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]);
        m.load(
            &msg,
            "192.0.2.9:5060".parse().unwrap(),
            LOCAL.parse().unwrap(),
        );
        m.parse(&crate::sip::Limits::default()).unwrap();
        let mut run = eng.run_request(m);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            Pin::new(&mut run).poll(&mut cx).is_pending(),
            "the route suspends"
        );
        let Poll::Ready((m, outcome)) = Pin::new(&mut run).poll(&mut cx) else {
            panic!("the route did not finish")
        };
        assert_eq!(outcome, RouteOutcome::Done);
        assert_eq!(m.out.len(), 1);
        let reply =
            String::from_utf8_lossy(&m.out_buf[m.out[0].start as usize..m.out[0].end as usize])
                .into_owned();
        assert!(reply.starts_with("SIP/2.0 200 Resumed"), "{reply}");
    }
}
