//! Route execution micro-benchmark: one `ksr_request_route()` of the bundled
//! default script (OPTIONS keepalive: is_OPTIONS, is_myself_ruri,
//! sl_send_reply, x.exit) and of a trivial reply script, through the real
//! engine (mlua VM, KSR table, context slot), hot in cache.
//!
//! `cargo bench --bench route -- --warm-up-time 1 --measurement-time 3`

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::config::{AuthConfig, RegistrarConfig, ShardTuning, DEFAULT_SCRIPT};
use sipshard::kemi::services::{Services, SharedTables};
use sipshard::kemi::{Engine, EngineConfig, MsgCtx, Myself};
use sipshard::sip::Limits;

const OPTIONS: &[u8] = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-1-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bench@127.0.0.1>;tag=1\r\n\
To: <sip:127.0.0.1:5060>\r\n\
Call-ID: bench-1@127.0.0.1\r\n\
CSeq: 1 OPTIONS\r\n\
User-Agent: sipshard-bench\r\n\
Content-Length: 0\r\n\r\n";

const TRIVIAL: &str = "function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') end";
const TRIVIAL_EXIT: &str =
    "function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') KSR.x.exit() end";
const TRIVIAL_MYSELF: &str =
    "function ksr_request_route() if KSR.is_OPTIONS() and KSR.is_myself_ruri() then KSR.sl.sl_send_reply(200, 'OK') end end";

fn engine(script: &str) -> Engine {
    let tuning = ShardTuning::default();
    let services = Rc::new(
        Services::new(
            0,
            1,
            std::sync::Arc::new(SharedTables::new(
                1,
                &AuthConfig::default(),
                &RegistrarConfig::default(),
                0,
            )),
            &AuthConfig::default(),
            &RegistrarConfig::default(),
            [7u8; 32],
            None,
            0,
        )
        .unwrap(),
    );
    Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script,
        script_name: "bench",
        myself: Myself::new("127.0.0.1:5060".parse().unwrap(), &[]),
        server_header: "sipshard",
        tuning: &tuning,
        services,
        test_hooks: false,
        defines: &[],
        local_addr: "127.0.0.1:5060".parse().unwrap(),
        route: Default::default(),
    })
    .unwrap()
}

fn bench_route(c: &mut Criterion) {
    let limits = Limits::default();
    let local = "127.0.0.1:5060".parse().unwrap();
    for (name, script) in [
        ("default_script_options", DEFAULT_SCRIPT),
        ("trivial_reply", TRIVIAL),
        ("trivial_reply_exit", TRIVIAL_EXIT),
        ("trivial_reply_is_myself", TRIVIAL_MYSELF),
    ] {
        let eng = engine(script);
        let mut ctx = Some(Box::new(MsgCtx::new(65535, 128)));
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut m = ctx.take().unwrap();
                m.load(OPTIONS, "127.0.0.1:40000".parse().unwrap(), local);
                m.parse(&limits).unwrap();
                let (m, _outcome) = futures_lite::future::block_on(eng.run_request(m));
                assert_eq!(m.out.len(), 1);
                ctx = Some(m);
            })
        });
    }
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
