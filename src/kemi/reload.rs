//! Script reload inside one shard: a new Lua VM from new source, swapped in
//! between messages.
//!
//! The new VM is registered around the shard's existing [`Shared`], so
//! counters, `$var` values (Kamailio keeps `$var` in the pv module, not in
//! the Lua state, and they survive `app_lua.reload` there too), the
//! transaction handle and the route histograms carry over. Routes that are
//! suspended when the swap happens (waiting for the database or another
//! shard) finish in the VM they started in: each [`super::RouteRun`] holds
//! an `Rc` of its VM, which is freed when the last such route ends.
//!
//! Transaction callbacks (failure / onreply / branch routes) are stored by
//! *name* in the cell and looked up in the VM current when they run, so a
//! transaction created under the old script runs the new script's function
//! of the same name — what Kamailio's `app_lua.reload` does (each process
//! reloads at its next `lua_run`; `t_on_failure("name")` is resolved by name
//! in whatever script that process has loaded when the reply comes). A
//! function the new script no longer defines is skipped, as an unset route.

use std::rc::Rc;

use super::{Engine, EngineConfig};

impl Engine {
    /// Loads `cfg.script` into a fresh VM that shares this engine's state and
    /// makes it the one new messages run in. On error (syntax error, no
    /// `ksr_request_route`, error at load) nothing changes. Call it between
    /// messages, never from inside a route.
    pub fn reload(&self, cfg: &EngineConfig<'_>) -> Result<(), String> {
        if self.shared.cur.borrow().is_some() {
            return Err("reload requested while a route is running".into());
        }
        let fresh = Engine::build(cfg, Some(self.shared.clone()))?;
        let vm = fresh.vm.into_inner();
        let old = std::mem::replace(&mut *self.vm.borrow_mut(), vm);
        // The old VM lives on while suspended routes still hold it.
        drop(old);
        Ok(())
    }

    /// How many holders the current VM has (1 when no route runs in it).
    pub fn vm_holders(&self) -> usize {
        Rc::strong_count(&self.vm.borrow())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::super::testutil::{engine, global_int, run};
    use super::super::{EngineConfig, Myself, RouteOutcome};
    use crate::config::ShardTuning;

    const OPTIONS: &[u8] = b"OPTIONS sip:proxy.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:proxy.example.com>\r\n\
Call-ID: reload-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    struct PendingOnce(bool);

    impl Future for PendingOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn cfg<'a>(eng: &super::Engine, tuning: &'a ShardTuning, script: &'a str) -> EngineConfig<'a> {
        EngineConfig {
            shard_id: 0,
            shard_count: 1,
            script,
            script_name: "new.lua",
            myself: Myself::default(),
            server_header: "",
            tuning,
            services: eng.shared().services.clone(),
            test_hooks: false,
            defines: &[],
            local_addr: super::super::testutil::LOCAL.parse().unwrap(),
            route: Default::default(),
        }
    }

    fn script(version: u32) -> String {
        format!(
            "version = {version}\n\
             function ksr_request_route()\n\
               KSR.pv.seti('$var(n)', (KSR.pv.get('$var(n)') or 0) + 1)\n\
               seen = KSR.pv.get('$var(n)')\n\
               KSR.sl.sl_send_reply(200, 'v{version}')\n\
             end\n"
        )
    }

    fn reason(m: &super::super::MsgCtx) -> String {
        let out = String::from_utf8_lossy(&m.out_buf).to_string();
        out.lines().next().unwrap_or("").to_string()
    }

    #[test]
    fn reload_swaps_the_script_and_keeps_vars() {
        let eng = engine(&script(1));
        let (m, o) = run(&eng, OPTIONS);
        assert_eq!(o, RouteOutcome::Done);
        assert_eq!(reason(&m), "SIP/2.0 200 v1");
        let old = eng.lua().weak();
        let tuning = ShardTuning::default();
        let s2 = script(2);
        eng.reload(&cfg(&eng, &tuning, &s2)).unwrap();
        // Nothing holds the old VM: it is closed at once.
        assert!(
            old.try_upgrade().is_none(),
            "the old Lua state is still alive"
        );
        let (m, _) = run(&eng, OPTIONS);
        assert_eq!(reason(&m), "SIP/2.0 200 v2");
        assert_eq!(global_int(&eng, "version"), 2);
        // $var lives in the shard, not in the VM: the count goes on.
        assert_eq!(global_int(&eng, "seen"), 2);
    }

    #[test]
    fn a_broken_script_is_refused_and_the_old_one_stays() {
        let eng = engine(&script(1));
        let tuning = ShardTuning::default();
        let err = eng
            .reload(&cfg(&eng, &tuning, "function ksr_request_route(\n"))
            .unwrap_err();
        assert!(err.contains("new.lua:"), "{err}");
        let err = eng.reload(&cfg(&eng, &tuning, "x = 1\n")).unwrap_err();
        assert!(err.contains("ksr_request_route"), "{err}");
        let (m, _) = run(&eng, OPTIONS);
        assert_eq!(reason(&m), "SIP/2.0 200 v1");
    }

    #[test]
    fn a_suspended_route_finishes_in_its_old_vm() {
        // The route waits once (as for the database), the script is
        // reloaded, then the route resumes in the old VM.
        let old = "function ksr_request_route()\n\
                   wait_once()\n\
                   KSR.sl.sl_send_reply(200, 'old')\nend\n";
        let eng = engine(old);
        let f = eng
            .lua()
            .create_async_function(|_, ()| async {
                PendingOnce(false).await;
                Ok(())
            })
            .unwrap();
        eng.lua().globals().set("wait_once", f).unwrap();
        let mut m = Box::new(super::super::MsgCtx::new(65535, 128));
        m.load(
            OPTIONS,
            "192.0.2.9:5060".parse().unwrap(),
            super::super::testutil::LOCAL.parse().unwrap(),
        );
        m.parse(&crate::sip::Limits::default()).unwrap();
        let mut r = eng.run_request(m);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut r).poll(&mut cx).is_pending());
        assert_eq!(eng.vm_holders(), 2);
        let tuning = ShardTuning::default();
        let s2 = script(2);
        eng.reload(&cfg(&eng, &tuning, &s2)).unwrap();
        assert_eq!(eng.vm_holders(), 1);
        let (m, o) = loop {
            if let Poll::Ready(x) = Pin::new(&mut r).poll(&mut cx) {
                break x;
            }
        };
        assert_eq!(o, RouteOutcome::Done);
        assert_eq!(reason(&m), "SIP/2.0 200 old");
        let old = r._vm.as_ref().unwrap().lua.weak();
        drop(r);
        assert!(
            old.try_upgrade().is_none(),
            "the old VM outlived its last route"
        );
        let (m, _) = run(&eng, OPTIONS);
        assert_eq!(reason(&m), "SIP/2.0 200 v2");
    }

    /// A transaction armed under the old script runs the failure route of
    /// the same name in the new script (Kamailio's app_lua.reload: routes
    /// are resolved by name in the script loaded when they run).
    #[test]
    fn an_old_transaction_runs_the_new_scripts_failure_route() {
        use crate::sip::{HdrName, Parsed, SipMsg};
        let script = |v: u32| {
            format!(
                "function ksr_request_route()\n\
                   KSR.tm.t_on_failure('failed')\n\
                   KSR.tm.t_relay()\n\
                 end\n\
                 function failed() which = {v}; code = KSR.pv.get('$T_reply_code') end\n"
            )
        };
        let eng = engine(&script(1));
        let inv = super::super::testutil::request(
            "INVITE sip:bob@192.0.2.20:5070 SIP/2.0",
            None,
            &["Max-Forwards: 70"],
        );
        let (_, o) = run(&eng, &inv);
        assert_eq!(o, RouteOutcome::Done);
        let mut out = Vec::new();
        eng.drain_tm(|_, b| out.push(String::from_utf8_lossy(b).to_string()));
        let fwd = out
            .iter()
            .find(|m| m.starts_with("INVITE"))
            .expect("relayed INVITE")
            .clone();

        let tuning = ShardTuning::default();
        let s2 = script(2);
        eng.reload(&cfg(&eng, &tuning, &s2)).unwrap();

        // 486 from the callee to the relayed INVITE.
        let b = fwd.as_bytes();
        let mut p = Parsed::default();
        crate::sip::parse(
            b,
            crate::sip::Framing::Datagram,
            &crate::sip::Limits::default(),
            &mut p,
        )
        .unwrap();
        let m = SipMsg::new(b, &p);
        let mut reply = "SIP/2.0 486 Busy Here\r\n".to_string();
        for v in m.headers(HdrName::Via) {
            reply.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(v)));
        }
        let h = |n| String::from_utf8_lossy(m.header(n).unwrap()).to_string();
        reply.push_str(&format!(
            "From: {}\r\nTo: {};tag=callee\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            h(HdrName::From),
            h(HdrName::To),
            String::from_utf8_lossy(m.call_id().unwrap()),
            h(HdrName::CSeq),
        ));
        let mut ctx = Box::new(super::super::MsgCtx::new(65535, 128));
        ctx.load(
            reply.as_bytes(),
            "192.0.2.20:5070".parse().unwrap(),
            super::super::testutil::LOCAL.parse().unwrap(),
        );
        ctx.parse(&crate::sip::Limits::default()).unwrap();
        let mut f = eng.process_reply(ctx);
        assert!(f
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready());
        assert_eq!(global_int(&eng, "which"), 2);
        assert_eq!(global_int(&eng, "code"), 486);
    }
}
