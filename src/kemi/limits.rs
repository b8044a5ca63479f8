//! Script limits: instructions per route call and Lua memory per shard.
//!
//! Instructions: a count hook (`lua_sethook`, every `step` instructions,
//! see `ffi.rs`). The route wrapper arms it when the route starts (`__arm`,
//! on the running coroutine: Lua 5.4 keeps hooks per coroutine, LuaJIT per
//! VM), restarting the count; [`super::RouteRun`] restarts it each time it
//! polls a route again after a suspension (LuaJIT: other routes ran on the
//! VM's one count meanwhile) and carries the route's remaining budget across
//! polls. The hook charges only the route being polled ([`ScriptLimits`]'
//! `polling`). When the budget is spent the hook raises a Lua error naming
//! the script line; it raises again on every instruction after, so a script
//! `pcall` cannot swallow it. The shard then answers 500 like any script
//! error.
//!
//! Under LuaJIT, compiled traces never call hooks, so with a limit set the
//! JIT compiler is turned off for the VM (`jit.off()`, and `jit.on` made a
//! no-op): the interpreter runs every route (see docs/tuning.md for the
//! cost). The hook, once set, stays: under LuaJIT it is the VM's, and a
//! coroutine the script creates runs hooked too (under Lua 5.4 it inherits
//! the hook of the coroutine that creates it).
//!
//! Memory: `Lua::set_memory_limit` (mlua's allocator; both flavours), so an
//! allocation beyond it fails with a Lua "not enough memory" error.

use std::cell::{Cell, RefCell};

use mlua::Lua;

/// Bounds on what a route may add to a message and to the shard's
/// `$var`s (`[shard]` keys), read once when the shard starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgLimits {
    /// `pv_max_value_bytes`: largest `$var` / `$avp` / `$xavp` string value.
    pub pv_max_value_bytes: usize,
    /// `pv_max_bytes_per_msg`: string bytes one message's `$avp`s and
    /// `$xavp`s may add up to.
    pub pv_max_bytes_per_msg: usize,
    /// `pv_max_vars`: `$var()` names a shard may hold.
    pub pv_max_vars: usize,
    /// `max_edits` / `max_edit_bytes`: header/body edits on one message.
    pub max_edits: usize,
    pub max_edit_bytes: usize,
}

impl MsgLimits {
    pub fn from_tuning(t: &crate::config::ShardTuning) -> MsgLimits {
        MsgLimits {
            pv_max_value_bytes: t.pv_max_value_bytes,
            pv_max_bytes_per_msg: t.pv_max_bytes_per_msg,
            pv_max_vars: t.pv_max_vars,
            max_edits: t.max_edits,
            max_edit_bytes: t.max_edit_bytes,
        }
    }
}

impl Default for MsgLimits {
    fn default() -> Self {
        MsgLimits::from_tuning(&crate::config::ShardTuning::default())
    }
}

/// Per-shard limit state (in [`Shared`]).
pub struct ScriptLimits {
    /// Per-message and `$var` bounds.
    pub msg: MsgLimits,
    /// `[shard] lua_max_instructions`; 0 = no limit.
    pub max_instructions: u64,
    /// `[shard] lua_max_memory_bytes`; 0 = no limit.
    pub max_memory_bytes: usize,
    /// Hook period, instructions.
    step: u32,
    /// Instructions left to the route being polled.
    left: Cell<i64>,
    /// A route is being polled: the hook charges it (Lua code run outside
    /// routes, such as a reload's, is not charged).
    polling: Cell<bool>,
    /// The error of the route stopped last (with its script line).
    stopped: RefCell<String>,
}

impl ScriptLimits {
    pub fn new(max_instructions: u64, max_memory_bytes: usize) -> ScriptLimits {
        ScriptLimits::with_msg(max_instructions, max_memory_bytes, MsgLimits::default())
    }

    pub fn with_msg(
        max_instructions: u64,
        max_memory_bytes: usize,
        msg: MsgLimits,
    ) -> ScriptLimits {
        // Fine enough to stop close to the limit, coarse enough that the
        // hook itself costs nothing measurable (it runs once per `step`).
        let step = (max_instructions / 20).clamp(1_000, 1_000_000) as u32;
        ScriptLimits {
            msg,
            max_instructions,
            max_memory_bytes,
            step,
            left: Cell::new(0),
            polling: Cell::new(false),
            stopped: RefCell::new(String::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_instructions > 0
    }

    /// The budget of a route that has not started.
    pub(crate) fn budget(&self) -> i64 {
        self.max_instructions.min(i64::MAX as u64) as i64
    }

    pub(crate) fn set_left(&self, n: i64) {
        self.left.set(n);
    }

    pub(crate) fn left(&self) -> i64 {
        self.left.get()
    }

    /// Hook period, instructions.
    pub(crate) fn step(&self) -> u32 {
        self.step
    }

    pub(crate) fn polling(&self) -> bool {
        self.polling.get()
    }

    /// Set while [`super::RouteRun`] polls a route.
    pub(crate) fn set_polling(&self, on: bool) {
        self.polling.set(on);
    }

    pub(crate) fn stopped(&self) -> String {
        self.stopped.borrow().clone()
    }

    pub(crate) fn set_stopped(&self, text: String) {
        *self.stopped.borrow_mut() = text;
    }
}

/// LuaJIT: traces do not run hooks, so the JIT is off while a limit is set.
pub(crate) fn apply_jit(lua: &Lua, limited: bool) -> mlua::Result<()> {
    if cfg!(feature = "luajit") && limited {
        lua.load(r#"if jit then jit.off(); jit.flush(); jit.on = function() end end"#)
            .set_name("=limits")
            .exec()?;
    }
    Ok(())
}

/// `[shard] lua_max_memory_bytes` (0 = none).
pub(crate) fn apply_memory(lua: &Lua, bytes: usize) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    lua.set_memory_limit(bytes)
        .map(|_| ())
        .map_err(|e| format!("lua_max_memory_bytes: {e}"))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use crate::config::ShardTuning;
    use crate::kemi::testutil::{engine_tuned, global_int, request, run};
    use crate::kemi::RouteOutcome;
    use crate::stats::Counter;

    fn tuned(max_instructions: u64, max_memory: usize) -> ShardTuning {
        ShardTuning {
            lua_max_instructions: max_instructions,
            lua_max_memory_bytes: max_memory,
            ..ShardTuning::default()
        }
    }

    fn options() -> Vec<u8> {
        request("OPTIONS sip:proxy.example.com SIP/2.0", None, &[])
    }

    const LOOP: &str = r#"
n = 0
function ksr_request_route()
    n = n + 1
    if KSR.pv.get("$rU") == "loop" then
        while true do end
    end
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

    #[test]
    fn runaway_loop_is_stopped_with_its_line_and_the_vm_goes_on() {
        let eng = engine_tuned(LOOP, &tuned(1_000_000, 0)).unwrap();
        let looping = request("OPTIONS sip:loop@proxy.example.com SIP/2.0", None, &[]);
        let (_, outcome) = run(&eng, &looping);
        let RouteOutcome::Error(text) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(text.contains("test.lua:6:"), "{text}");
        assert!(text.contains("lua_max_instructions (1000000)"), "{text}");
        let c = eng.shared().counters.values();
        assert_eq!(c[Counter::LuaInstructionLimit as usize], 1);
        // The next message gets a fresh budget and runs.
        let (m, outcome) = run(&eng, &options());
        assert_eq!(outcome, RouteOutcome::Done);
        assert!(!m.out.is_empty());
        assert_eq!(global_int(&eng, "n"), 2);
        // A second runaway is stopped too.
        let (_, outcome) = run(&eng, &looping);
        assert!(matches!(outcome, RouteOutcome::Error(_)));
        let c = eng.shared().counters.values();
        assert_eq!(c[Counter::LuaInstructionLimit as usize], 2);
    }

    /// A JIT-friendly numeric loop (LuaJIT would compile it into a trace
    /// that never calls hooks) and a loop that pcalls its way around.
    #[test]
    fn hot_loops_and_pcall_do_not_escape() {
        let script = r#"
function ksr_request_route()
    local x = 0
    if KSR.pv.get("$rU") == "pcall" then
        while true do pcall(function() for i = 1, 1e12 do x = x + i end end) end
    end
    for i = 1, 1e12 do x = x + i % 7 end
end
"#;
        let eng = engine_tuned(script, &tuned(2_000_000, 0)).unwrap();
        for _ in 0..3 {
            let (_, outcome) = run(&eng, &options());
            assert!(matches!(outcome, RouteOutcome::Error(_)), "{outcome:?}");
        }
        let m = request("OPTIONS sip:pcall@proxy.example.com SIP/2.0", None, &[]);
        let (_, outcome) = run(&eng, &m);
        assert!(matches!(outcome, RouteOutcome::Error(_)), "{outcome:?}");
        let c = eng.shared().counters.values();
        assert_eq!(c[Counter::LuaInstructionLimit as usize], 4);
    }

    #[test]
    fn ordinary_routes_are_untouched_and_zero_means_off() {
        let script = r#"
function ksr_request_route()
    local t = {}
    for i = 1, 1000 do t[#t + 1] = tostring(i) end
    done = #t
end
"#;
        let eng = engine_tuned(script, &tuned(1_000_000, 0)).unwrap();
        for _ in 0..50 {
            assert_eq!(run(&eng, &options()).1, RouteOutcome::Done);
        }
        assert_eq!(global_int(&eng, "done"), 1000);
        let eng = engine_tuned(script, &tuned(0, 0)).unwrap();
        assert_eq!(run(&eng, &options()).1, RouteOutcome::Done);
        assert!(!eng.shared().limits.enabled());
    }

    /// The budget is per route call and survives suspensions: a route that
    /// suspends between two half-budget loops is not stopped, one that
    /// loops past the whole budget across a suspension is.
    #[test]
    fn budget_is_carried_across_suspensions() {
        let script = r#"
function ksr_request_route()
    local x = 0
    for i = 1, tonumber(KSR.pv.get("$rU")) do x = x + 1 end
    wait_once()
    for i = 1, tonumber(KSR.pv.get("$rU")) do x = x + 1 end
end
"#;
        let eng = engine_tuned(script, &tuned(1_000_000, 0)).unwrap();
        let f = eng
            .lua()
            .create_async_function(|_, ()| async {
                PendingOnce(false).await;
                Ok(())
            })
            .unwrap();
        eng.lua().globals().set("wait_once", f).unwrap();
        let poll_all = |user: &str| {
            let msg = request(
                &format!("OPTIONS sip:{user}@proxy.example.com SIP/2.0"),
                None,
                &[],
            );
            let mut m = Box::new(crate::kemi::MsgCtx::new(65535, 128));
            m.load(
                &msg,
                "192.0.2.9:5060".parse().unwrap(),
                "10.0.0.1:5060".parse().unwrap(),
            );
            m.parse(&crate::sip::Limits::default()).unwrap();
            let mut run = eng.run_request(m);
            let mut polls = 0;
            loop {
                polls += 1;
                // Another route's poll in between takes the hook away.
                if let Poll::Ready((_, o)) =
                    Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop()))
                {
                    return (o, polls);
                }
                let _ = crate::kemi::testutil::run(&eng, &options());
            }
        };
        // 2 instructions an iteration (add, forloop): 100k iterations twice
        // stays well below 1M.
        let (o, polls) = poll_all("100000");
        assert_eq!(o, RouteOutcome::Done);
        assert_eq!(polls, 2);
        // 300k twice: each half alone stays below, together they do not.
        let (o, _) = poll_all("300000");
        assert!(matches!(o, RouteOutcome::Error(_)), "{o:?}");
    }

    #[test]
    fn oversized_pv_values_are_refused_and_counted() {
        let script = r#"
function ksr_request_route()
    big = KSR.pv.sets("$var(big)", string.rep("x", 70000))
    small = KSR.pv.sets("$var(small)", string.rep("x", 1000))
    big_set = KSR.pv.get("$var(big)") ~= 0
    avp_big = KSR.pv.sets("$avp(a)", string.rep("x", 70000))
    avp_big_set = KSR.pv.is_null("$avp(a)") == false
    avp_n = 0
    for i = 1, 40 do
        if KSR.pv.sets("$avp(b)", string.rep("y", 60000)) then avp_n = avp_n + 1 end
    end
end
"#;
        let eng = engine_tuned(script, &tuned(0, 0)).unwrap();
        assert_eq!(run(&eng, &options()).1, RouteOutcome::Done);
        assert_eq!(global_int(&eng, "big"), 0);
        assert_eq!(global_int(&eng, "small"), 1);
        assert_eq!(global_int(&eng, "big_set"), 0);
        assert_eq!(global_int(&eng, "avp_big_set"), 0);
        let c = eng.shared().counters.values();
        // $var(big), $avp(a) and the 23 $avp(b) values beyond the budget
        assert_eq!(c[Counter::PvLimit as usize], 25);
        // 1 MiB of $avp per message: 17 values of 60 000 bytes (+ name).
        assert_eq!(global_int(&eng, "avp_n"), 17);
        // The budget is per message: the next one starts afresh.
        assert_eq!(run(&eng, &options()).1, RouteOutcome::Done);
        assert_eq!(global_int(&eng, "avp_n"), 17);
    }

    /// Why the JIT is off under a limit: LuaJIT's compiled traces do not
    /// run count hooks. The same loop fires the hook on every 1 000th
    /// instruction when interpreted, and almost never once compiled.
    #[cfg(feature = "luajit")]
    #[test]
    fn luajit_traces_skip_count_hooks() {
        use std::rc::Rc;
        let fires = |jit: bool| {
            let lua = mlua::Lua::new();
            let n = Rc::new(std::cell::Cell::new(0u64));
            let n2 = n.clone();
            lua.load(if jit { "jit.on()" } else { "jit.off()" })
                .exec()
                .unwrap();
            lua.set_hook(
                mlua::HookTriggers::new().every_nth_instruction(1000),
                move |_, _| {
                    n2.set(n2.get() + 1);
                    Ok(mlua::VmState::Continue)
                },
            );
            lua.load("local x = 0 for i = 1, 2e7 do x = x + i % 7 end")
                .exec()
                .unwrap();
            n.get()
        };
        let (interpreted, compiled) = (fires(false), fires(true));
        eprintln!("count hook fires: interpreted {interpreted}, JIT {compiled}");
        assert!(interpreted > 40_000, "{interpreted}");
        assert!(compiled < interpreted / 100, "{compiled} vs {interpreted}");
    }

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

    #[test]
    fn memory_hog_gets_a_lua_error_and_the_vm_goes_on() {
        let script = r#"
function ksr_request_route()
    if KSR.pv.get("$rU") == "hog" then
        local t = {}
        for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end
    end
    ok = (ok or 0) + 1
end
"#;
        let eng = engine_tuned(script, &tuned(0, 32 << 20)).unwrap();
        let hog = request("OPTIONS sip:hog@proxy.example.com SIP/2.0", None, &[]);
        let (_, outcome) = run(&eng, &hog);
        let RouteOutcome::Error(text) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(text.contains("memory"), "{text}");
        eng.relieve_memory();
        assert!(eng.used_memory_bytes() < 32 << 20);
        assert_eq!(run(&eng, &options()).1, RouteOutcome::Done);
        assert_eq!(global_int(&eng, "ok"), 1);
    }
}
