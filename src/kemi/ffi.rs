//! The Lua C API, called directly where mlua's safe layer costs more than
//! the work it wraps: the KSR functions a short route calls on every
//! message, `KSR.x.exit()`, and the `lua_max_instructions` count hook.
//!
//! Owns: [`set_fast`] (a KSR function as a plain Lua C function: its
//! arguments read straight off the Lua stack, no mlua callback frame, no
//! registry references, no argument copies), [`exit_function`] and the count
//! hook ([`arm_function`], [`VmHook`]). docs/ARCHITECTURE.md (decision 11)
//! gives the figures that justify this file.
//!
//! Never: call mlua from a C function (mlua tracks the running coroutine
//! itself, and a C function runs outside its bookkeeping), or let a Lua
//! error cross a Rust frame that owns a value with a destructor. The rules
//! that keep it sound:
//!
//! * every Rust value with drop glue lives in [`call_fast`]'s inner closure,
//!   which returns a plain [`Out`] before any Lua API call that may raise
//!   (`lua_pushlstring` on a full heap, `lua_error`); a string on its way to
//!   Lua is held as raw parts and freed after the push (leaked, never
//!   double-freed, if the push raises);
//! * the only Lua calls made while Rust values are alive cannot raise:
//!   `lua_type`, `lua_tonumberx`, `lua_tolstring` on a string (a number
//!   argument is turned into a string before, see [`set_fast`]'s `strings`);
//! * a C function finds its shard through a slot number (upvalue 1) in a
//!   per-thread table of `Weak<Shared>`: no raw pointer to Rust data is
//!   ever handed to Lua;
//! * panics are caught in the same closure and raised as Lua errors (the
//!   shard's panic hook has recorded them, as for mlua's callbacks).

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use mlua::{ffi, Function, Lua, Table, Value};

use super::Shared;
use crate::stats::Counter;

/// What a fast KSR function hands back to Lua.
pub(crate) enum Ret {
    Nil,
    Bool(bool),
    Int(i64),
    Str(Vec<u8>),
    /// Not handled here: call the function's mlua version
    /// ([`set_fast_or`]) with the same arguments and return what it does.
    Slow,
}

impl From<bool> for Ret {
    fn from(b: bool) -> Ret {
        Ret::Bool(b)
    }
}

impl From<i32> for Ret {
    fn from(i: i32) -> Ret {
        Ret::Int(i64::from(i))
    }
}

/// A fast KSR function (see [`fast_fn!`]): its body, given the shard and the
/// call's arguments, and the argument positions it reads as strings.
pub(crate) trait Fast {
    /// Bit `p - 1`: argument `p` is read as a string.
    const STRINGS: u32;
    fn call(s: &Rc<Shared>, a: &Args) -> mlua::Result<Ret>;
}

/// A [`Fast`] function's C function, for [`set_fast`].
pub(crate) struct FastFn(ffi::lua_CFunction);

impl FastFn {
    pub(crate) fn of<F: Fast>() -> FastFn {
        FastFn(call_fast::<F>)
    }
}

/// `fast_fn!([string argument positions], |s, a| body)`: a [`FastFn`] whose
/// body gets `s: &Rc<Shared>` and `a: &Args`; one C function per use, the
/// body inlined in it.
macro_rules! fast_fn {
    ([$($p:literal),*], $f:expr) => {{
        struct F;
        impl $crate::kemi::ffi::Fast for F {
            const STRINGS: u32 = {
                $(assert!($p >= 1 && $p <= 4, "string arguments are 1 to 4");)*
                0 $(| (1 << ($p - 1)))*
            };
            #[inline(always)]
            fn call(
                s: &std::rc::Rc<$crate::kemi::Shared>,
                a: &$crate::kemi::ffi::Args,
            ) -> mlua::Result<$crate::kemi::ffi::Ret> {
                let f: fn(
                    &std::rc::Rc<$crate::kemi::Shared>,
                    &$crate::kemi::ffi::Args,
                ) -> mlua::Result<$crate::kemi::ffi::Ret> = $f;
                f(s, a)
            }
        }
        $crate::kemi::ffi::FastFn::of::<F>()
    }};
}

/// `fast!(lua, table, name, shared, [string positions], |s, a| body)`:
/// [`set_fast`] of a [`fast_fn!`].
macro_rules! fast {
    ($lua:expr, $table:expr, $name:expr, $shared:expr, [$($p:literal),*], $f:expr) => {
        $crate::kemi::ffi::set_fast(
            $lua,
            $table,
            $name,
            $shared,
            $crate::kemi::ffi::fast_fn!([$($p),*], $f),
        )
    };
}
pub(crate) use fast;
pub(crate) use fast_fn;

/// String arguments a fast function may read: positions 1 to this.
const STRING_ARGS_MAX: usize = 4;

/// The arguments of one fast call, read on demand from the Lua stack
/// (string arguments read once by the call).
pub(crate) struct Args {
    state: *mut ffi::lua_State,
    /// Bit `p - 1`: argument `p` is one the function reads as a string.
    declared: u32,
    /// The string arguments' bytes (null: not a string), by position.
    strings: [(*const u8, usize); STRING_ARGS_MAX],
}

impl Args {
    /// Argument `pos` (from 1) as an integer, converted as mlua converts an
    /// `i64` argument: a number (truncated toward zero) or a string
    /// coercible to one.
    pub(crate) fn int(&self, pos: c_int) -> mlua::Result<i64> {
        debug_assert!((1..=16).contains(&pos), "argument {pos}");
        #[cfg(feature = "lua54")]
        {
            let mut ok = 0;
            // SAFETY: `pos` is a small positive index, acceptable in a C
            // call (nil past the arguments); lua_tointegerx reads (and
            // parses a string) without allocating.
            let i = unsafe { ffi::lua_tointegerx(self.state, pos, &mut ok) };
            if ok != 0 {
                return Ok(i);
            }
        }
        // SAFETY: as above; lua_tonumber converts a numeric string without
        // allocating or raising, and gives 0 for anything else.
        let x = unsafe { ffi::lua_tonumber(self.state, pos) };
        // SAFETY: as above.
        if x == 0.0 && unsafe { ffi::lua_isnumber(self.state, pos) } == 0 {
            return Err(bad_arg(pos, self.type_name(pos), "i64", NOT_A_NUMBER));
        }
        // mlua: an integral number as it is, else num_traits' cast
        // (truncation; out of range and NaN refused).
        if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&x) {
            return Ok(x as i64);
        }
        Err(bad_arg(pos, self.type_name(pos), "i64", "out of range"))
    }

    /// Argument `pos` as an integer, `None` when it is nil or absent.
    pub(crate) fn opt_int(&self, pos: c_int) -> mlua::Result<Option<i64>> {
        if self.type_name(pos) == "nil" {
            return Ok(None);
        }
        self.int(pos).map(Some)
    }

    /// Argument `pos` as bytes (mlua's `String` argument: a string, or a
    /// number made one by the call). `pos` must be one of the function's
    /// string positions ([`fast_fn!`]).
    pub(crate) fn bytes(&self, pos: c_int) -> mlua::Result<&[u8]> {
        self.string(pos, "string")
    }

    /// Argument `pos` as UTF-8 text (a Rust `String` argument of mlua).
    pub(crate) fn str(&self, pos: c_int) -> mlua::Result<&str> {
        let b = self.string(pos, "String")?;
        if b.is_ascii() {
            // ASCII is UTF-8 (pv names, realms): no full validation.
            // SAFETY: every byte is below 0x80.
            return Ok(unsafe { std::str::from_utf8_unchecked(b) });
        }
        std::str::from_utf8(b).map_err(|e| bad_arg(pos, "string", "String", &e.to_string()))
    }

    fn string(&self, pos: c_int, to: &str) -> mlua::Result<&[u8]> {
        let declared =
            pos >= 1 && pos as usize <= STRING_ARGS_MAX && self.declared & (1 << (pos - 1)) != 0;
        if !declared {
            debug_assert!(false, "argument {pos} is not declared a string");
            return Err(mlua::Error::RuntimeError(format!(
                "argument {pos} is not declared a string"
            )));
        }
        let (p, len) = self.strings[pos as usize - 1];
        if p.is_null() {
            return Err(bad_arg(
                pos,
                self.type_name(pos),
                to,
                "expected string or number",
            ));
        }
        // SAFETY: call_fast read these bytes from argument `pos`, a string
        // for the whole call (the borrow of `self` cannot outlive the call:
        // Args lives in call_fast).
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// mlua's name of argument `pos`'s type (`nil` past the last one).
    fn type_name(&self, pos: c_int) -> &'static str {
        // SAFETY: `pos` is a small positive index, acceptable in a C call
        // (LUA_TNONE past the arguments).
        type_name(unsafe { ffi::lua_type(self.state, pos) })
    }
}

const NOT_A_NUMBER: &str = "expected number or string coercible to number";

/// mlua's error for an argument it cannot convert.
// (mlua's BadArgument holds its cause in an Arc, whatever the error type)
#[allow(clippy::arc_with_non_send_sync)]
fn bad_arg(pos: c_int, from: &'static str, to: &str, why: &str) -> mlua::Error {
    mlua::Error::BadArgument {
        to: None,
        pos: pos as usize,
        name: None,
        cause: Arc::new(mlua::Error::FromLuaConversionError {
            from,
            to: to.to_string(),
            message: Some(why.to_string()),
        }),
    }
}

/// mlua's names of Lua types (`Value::type_name`).
fn type_name(t: c_int) -> &'static str {
    match t {
        ffi::LUA_TNIL | ffi::LUA_TNONE => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TLIGHTUSERDATA => "lightuserdata",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TTHREAD => "thread",
        ffi::LUA_TUSERDATA => "userdata",
        _ => "other",
    }
}

thread_local! {
    /// Each shard's state, by slot: the C functions of a VM find their shard
    /// by the slot in their upvalue. Only ever grows (one entry per shard
    /// state built on this thread), so a slot never names another shard.
    static SHARDS: RefCell<Vec<Weak<Shared>>> = const { RefCell::new(Vec::new()) };
}

/// The slot of `shared` in this thread's table (added on first use).
fn slot_of(shared: &Rc<Shared>) -> usize {
    SHARDS.with(|v| {
        let mut v = v.borrow_mut();
        // A Weak keeps its allocation: no other Shared can have this address.
        if let Some(i) = v.iter().position(|w| w.as_ptr() == Rc::as_ptr(shared)) {
            return i;
        }
        v.push(Rc::downgrade(shared));
        v.len() - 1
    })
}

fn shared_at(slot: usize) -> Option<Rc<Shared>> {
    SHARDS.with(|v| v.borrow().get(slot).and_then(Weak::upgrade))
}

/// A string for Lua, as raw parts: no destructor runs if a Lua error
/// unwinds past it (the bytes then leak).
struct RawBytes {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

impl RawBytes {
    fn new(v: Vec<u8>) -> RawBytes {
        let mut v = std::mem::ManuallyDrop::new(v);
        RawBytes {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Pushes the bytes as a Lua string, then frees them.
    ///
    /// # Safety
    /// `state` is the running state with a free stack slot, and `self` came
    /// from [`RawBytes::new`] and is used once.
    // SAFETY: an unsafe fn: its callers uphold the contract above.
    unsafe fn push(self, state: *mut ffi::lua_State) {
        // SAFETY: ptr/len describe the Vec's initialised bytes.
        unsafe { ffi::lua_pushlstring(state, self.ptr.cast::<c_char>(), self.len) };
        // SAFETY: the parts of the Vec RawBytes::new took apart, rebuilt once.
        drop(unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) });
    }
}

/// A fast call's outcome, free of destructors (see the module rules).
enum Out {
    Nil,
    Bool(bool),
    Int(i64),
    Str(RawBytes),
    Slow,
    Error(RawBytes),
}

thread_local! {
    /// The shard whose route is being polled on this thread ([`with_polled`]),
    /// null otherwise: a fast function called from a route takes it from
    /// here instead of looking its own shard up.
    static POLLED: Cell<*const Rc<Shared>> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` (the poll of one of `shared`'s routes) with `shared` as the
/// shard of every fast function called meanwhile. Lua states are separate,
/// so a route can only reach the functions of its own VM, whose shard is
/// `shared`.
pub(crate) fn with_polled<R>(shared: &Rc<Shared>, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Rc<Shared>);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLLED.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(POLLED.with(|p| p.replace(shared)));
    f()
}

/// The C function of a [`Fast`] function. Upvalues: 1 the shard slot (used
/// outside routes, see [`with_polled`]), 2 the mlua version for
/// [`Ret::Slow`] (nil without one).
// SAFETY: a lua_CFunction: only Lua calls it, with its running state.
unsafe extern "C-unwind" fn call_fast<F: Fast>(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua calls this with its running state. A Lua call gives C
    // functions LUA_MINSTACK free slots, and lua_tolstring on a number
    // (converted in place, which may allocate and raise) runs before any
    // Rust value with a destructor exists.
    let mut strings = [(std::ptr::null::<u8>(), 0usize); STRING_ARGS_MAX];
    let mut bits = F::STRINGS;
    while bits != 0 {
        let pos = bits.trailing_zeros() as usize + 1;
        bits &= bits - 1;
        let mut len = 0usize;
        // lua_tolstring gives null for a non-string and turns a number
        // into a string in place (which may allocate and raise).
        // SAFETY: `pos` is in 1..=STRING_ARGS_MAX (fast_fn!), acceptable
        // in a C call; no Rust value with a destructor exists yet.
        let p = unsafe { ffi::lua_tolstring(state, pos as c_int, &mut len) };
        strings[pos - 1] = (p.cast::<u8>(), len);
    }
    let polled = POLLED.with(Cell::get);
    // Outside routes only: upvalue 1, the integer slot set by set_fast.
    // SAFETY: reading an integer upvalue neither allocates nor raises.
    let slot = polled
        .is_null()
        .then(|| unsafe { ffi::lua_tointeger(state, ffi::lua_upvalueindex(1)) } as usize);
    let args = Args {
        state,
        declared: F::STRINGS,
        strings,
    };
    let out = match catch_unwind(AssertUnwindSafe(|| match slot {
        None => {
            // SAFETY: POLLED is only non-null inside with_polled's closure,
            // which is running on this thread (this call is part of it) and
            // borrows the Rc for that whole time.
            let s = unsafe { &*polled };
            F::call(s, &args)
        }
        Some(slot) => match shared_at(slot) {
            Some(s) => F::call(&s, &args),
            None => Err(mlua::Error::RuntimeError(
                "KSR function called after its shard was stopped".into(),
            )),
        },
    })) {
        Ok(Ok(Ret::Nil)) => Out::Nil,
        Ok(Ok(Ret::Bool(b))) => Out::Bool(b),
        Ok(Ok(Ret::Int(i))) => Out::Int(i),
        Ok(Ok(Ret::Str(v))) => Out::Str(RawBytes::new(v)),
        Ok(Ok(Ret::Slow)) => Out::Slow,
        Ok(Err(e)) => Out::Error(RawBytes::new(super::format_lua_error(&e).into_bytes())),
        Err(payload) => {
            let text = format!("panic: {}", crate::exec::panic_text(&*payload));
            drop(payload);
            Out::Error(RawBytes::new(text.into_bytes()))
        }
    };
    // SAFETY: nothing with a destructor is alive from here on (`args` and
    // the closure's values are plain data or dropped); pushing one value
    // fits the C function's stack allowance.
    unsafe {
        match out {
            Out::Nil => ffi::lua_pushnil(state),
            Out::Bool(b) => ffi::lua_pushboolean(state, c_int::from(b)),
            Out::Int(i) => push_int(state, i),
            Out::Str(b) => b.push(state),
            Out::Slow => {
                // The arguments are still the call's whole stack.
                let n = ffi::lua_gettop(state);
                ffi::lua_pushvalue(state, ffi::lua_upvalueindex(2));
                ffi::lua_insert(state, 1);
                ffi::lua_call(state, n, ffi::LUA_MULTRET);
                return ffi::lua_gettop(state);
            }
            Out::Error(b) => {
                b.push(state);
                raise(state)
            }
        }
    }
    1
}

/// `lua_pushinteger` (LuaJIT's integers are doubles: as mlua pushes i64).
///
/// # Safety
/// `state` is the running state with a free stack slot.
// SAFETY: an unsafe fn: its callers uphold the contract above.
unsafe fn push_int(state: *mut ffi::lua_State, i: i64) {
    // SAFETY: forwarded from the caller.
    unsafe { ffi::lua_pushinteger(state, i as ffi::lua_Integer) }
}

/// `lua_error` with the value on top of the stack.
///
/// # Safety
/// `state` is the running state and no Rust frame between here and the
/// nearest Lua protected call owns a value with a destructor.
// SAFETY: an unsafe fn: its callers uphold the contract above.
unsafe fn raise(state: *mut ffi::lua_State) -> ! {
    // SAFETY: forwarded from the caller.
    unsafe { ffi::lua_error(state) }
}

/// Sets `table[name]` to the fast function `f` (made with [`fast_fn!`]) of
/// `shared`'s shard.
pub(crate) fn set_fast(
    lua: &Lua,
    table: &Table,
    name: &str,
    shared: &Rc<Shared>,
    f: FastFn,
) -> mlua::Result<()> {
    table.set(name, fast_function(lua, shared, f, None)?)
}

/// [`set_fast`], with `slow` (the mlua version of the same function) for
/// the calls `f` answers with [`Ret::Slow`].
pub(crate) fn set_fast_or(
    lua: &Lua,
    table: &Table,
    name: &str,
    shared: &Rc<Shared>,
    f: FastFn,
    slow: Function,
) -> mlua::Result<()> {
    table.set(name, fast_function(lua, shared, f, Some(slow))?)
}

fn fast_function(
    lua: &Lua,
    shared: &Rc<Shared>,
    f: FastFn,
    slow: Option<Function>,
) -> mlua::Result<Function> {
    let slot = slot_of(shared);
    // exec_raw pushes `slow` (a function or nil); the C closure takes the
    // slot and `slow` as upvalues and is left alone on the stack.
    // SAFETY: a protected call on the main state (an allocation failure
    // raises into it), with room for 3 more values.
    unsafe {
        lua.exec_raw(slow, |state| {
            ffi::lua_pushinteger(state, slot as ffi::lua_Integer);
            ffi::lua_insert(state, -2);
            ffi::lua_pushcclosure(state, f.0, 2);
        })
    }
}

/// `KSR.x.exit()`: raises `exit` (the route wrapper's sentinel) straight
/// from C, without a Lua frame or `error`'s argument checks.
pub(crate) fn exit_function(lua: &Lua, sentinel: Value) -> mlua::Result<Function> {
    // SAFETY: a lua_CFunction: only Lua calls it, with its running state.
    unsafe extern "C-unwind" fn exit(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua; upvalue 1 is the sentinel (exit_function);
        // no Rust value is alive in this frame.
        unsafe {
            ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
            raise(state)
        }
    }
    // SAFETY: exec_raw pushes `exit` (the argument) and runs the closure in
    // a protected call; it returns the closure left on the stack.
    unsafe {
        lua.exec_raw(sentinel, |state| {
            ffi::lua_pushcclosure(state, exit, 1);
        })
    }
}

/// Registry key of the shard slot the count hook charges.
static HOOK_SLOT_KEY: u8 = 0;

/// `__arm()`, which the route wrapper calls first thing when
/// `lua_max_instructions` is set: sets the count hook on the running
/// coroutine (the whole VM under LuaJIT), restarting its count. Also
/// records which shard the VM's hook charges.
pub(crate) fn arm_function(lua: &Lua, shared: &Rc<Shared>) -> mlua::Result<Function> {
    // SAFETY: a lua_CFunction: only Lua calls it, with its running state.
    unsafe extern "C-unwind" fn arm(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua with its running state; upvalue 1 is the
        // hook period (arm_function). lua_sethook neither allocates nor
        // raises.
        unsafe {
            let step = ffi::lua_tointeger(state, ffi::lua_upvalueindex(1)) as c_int;
            ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, step);
        }
        0
    }
    let slot = slot_of(shared);
    let step = shared.limits.step();
    // SAFETY: exec_raw runs the closure in a protected call on the main
    // state (allocation failures become an Err); registry[&HOOK_SLOT_KEY]
    // = slot, then the closure, which exec_raw returns.
    unsafe {
        lua.exec_raw((), |state| {
            set_hook_slot(state, slot);
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(step));
            ffi::lua_pushcclosure(state, arm, 1);
        })
    }
}

/// A VM's count hook, set from Rust: under LuaJIT the hook and its count
/// are the VM's (one for all coroutines), so [`super::RouteRun`] restarts
/// the count before each poll of a route instead of the route wrapper
/// arming it from inside.
#[derive(Clone)]
pub(crate) struct VmHook {
    /// The VM (weak: the VM holds its routes, which hold this).
    lua: mlua::WeakLua,
    main: *mut ffi::lua_State,
}

impl VmHook {
    /// The hook of `lua`'s VM, charging `shared`'s routes.
    pub(crate) fn new(lua: &Lua, shared: &Rc<Shared>) -> mlua::Result<VmHook> {
        let slot = slot_of(shared);
        let mut main = std::ptr::null_mut();
        // SAFETY: exec_raw runs the closure in a protected call on the VM's
        // current state (the main one: no route runs while an engine is
        // built); registry[&HOOK_SLOT_KEY] = slot.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                set_hook_slot(state, slot);
                main = state;
            })
        }?;
        Ok(VmHook {
            lua: lua.weak(),
            main,
        })
    }

    /// Restarts the count: every `step` instructions, or every one when
    /// the route's budget is spent.
    pub(crate) fn restart(&self, step: u32, spent: bool) {
        let count = if spent { 1 } else { step as c_int };
        let Some(_alive) = self.lua.try_upgrade() else {
            return;
        };
        // SAFETY: `main` is the main state of the VM `_alive` holds;
        // lua_sethook only stores the hook and its count in the VM (LuaJIT
        // allows it at any time, even from a signal handler), neither
        // allocating nor raising.
        unsafe {
            ffi::lua_sethook(self.main, Some(count_hook), ffi::LUA_MASKCOUNT, count);
        }
    }
}

/// registry[&HOOK_SLOT_KEY] = `slot`: the shard the count hook charges.
///
/// # Safety
/// `state` is in a protected call with 2 free stack slots.
// SAFETY: an unsafe fn: its callers uphold the contract above.
unsafe fn set_hook_slot(state: *mut ffi::lua_State, slot: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        ffi::lua_pushlightuserdata(state, std::ptr::addr_of!(HOOK_SLOT_KEY) as *mut c_void);
        ffi::lua_pushinteger(state, slot as ffi::lua_Integer);
        ffi::lua_rawset(state, ffi::LUA_REGISTRYINDEX);
    }
}

/// What the count hook does after charging the route.
enum HookVerdict {
    Continue,
    /// Fire every `n` instructions from now on.
    Recount(c_int),
    /// Stop the route with this error (and fire on every instruction).
    Raise(RawBytes),
}

/// The count hook: charges the route being polled with the instructions
/// since the last call; past its budget, raises the "route stopped" error
/// (the first time with the script line, counted), and again on every
/// instruction after, so that a script `pcall` cannot keep the route going.
// SAFETY: a lua_Hook: only Lua calls it, with its running state.
unsafe extern "C-unwind" fn count_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    // SAFETY: called by Lua with its running state and a valid `ar`; the
    // registry read pushes and pops one value (hooks have LUA_MINSTACK
    // slots) and lua_getinfo("Sl") fills `ar` without allocating.
    let (slot, count, file, line) = unsafe {
        ffi::lua_pushlightuserdata(state, std::ptr::addr_of!(HOOK_SLOT_KEY) as *mut c_void);
        ffi::lua_rawget(state, ffi::LUA_REGISTRYINDEX);
        let slot = ffi::lua_tointeger(state, -1) as usize;
        ffi::lua_settop(state, -2);
        let count = ffi::lua_gethookcount(state);
        ffi::lua_getinfo(state, c"Sl".as_ptr(), ar);
        let src = &(*ar).short_src;
        let file: [u8; 60] = std::array::from_fn(|i| src.get(i).map_or(0, |&c| c as u8));
        (slot, count, file, (*ar).currentline)
    };
    let verdict = catch_unwind(AssertUnwindSafe(|| {
        let Some(s) = shared_at(slot) else {
            return HookVerdict::Continue;
        };
        let limits = &s.limits;
        let step = limits.step() as c_int;
        if !limits.polling() {
            // Lua code outside any route (loading, a reload): not charged.
            return if count == step {
                HookVerdict::Continue
            } else {
                HookVerdict::Recount(step)
            };
        }
        let before = limits.left();
        let left = before.saturating_sub(i64::from(count));
        limits.set_left(left);
        if left >= 0 {
            // Another route's spent budget may have left the VM's hook
            // firing on every instruction: back to the period.
            return if count == step {
                HookVerdict::Continue
            } else {
                HookVerdict::Recount(step)
            };
        }
        if before >= 0 {
            // First time over: count it and keep the script line for every
            // later raise.
            s.counters.incr(Counter::LuaInstructionLimit);
            let end = file.iter().position(|&c| c == 0).unwrap_or(file.len());
            let file = String::from_utf8_lossy(&file[..end]);
            limits.set_stopped(format!(
                "{file}:{line}: route stopped: more than lua_max_instructions ({}) \
                 Lua instructions",
                limits.max_instructions
            ));
        }
        HookVerdict::Raise(RawBytes::new(limits.stopped().into_bytes()))
    }))
    .unwrap_or(HookVerdict::Continue);
    // SAFETY: nothing with a destructor is alive here; lua_sethook neither
    // allocates nor raises; raising from a count hook is allowed.
    unsafe {
        match verdict {
            HookVerdict::Continue => {}
            HookVerdict::Recount(n) => {
                ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, n);
            }
            HookVerdict::Raise(msg) => {
                ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, 1);
                msg.push(state);
                raise(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::kemi::testutil::{engine, global_bool, global_int, global_str, request, run};
    use crate::kemi::RouteOutcome;

    fn options() -> Vec<u8> {
        request("OPTIONS sip:192.0.2.20 SIP/2.0", None, &[])
    }

    fn status(m: &crate::kemi::MsgCtx) -> String {
        let o = &m.out[0];
        let out = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
        out.lines().next().unwrap_or("").to_string()
    }

    /// Arguments convert as they did through mlua: numbers and numeric
    /// strings both ways, fractions truncated, the same errors for the rest.
    #[test]
    fn arguments_convert_as_mlua_converted_them() {
        let eng = engine(
            r#"function ksr_request_route()
                 mf = KSR.maxfwd.process_maxfwd(10.7)
                 lt = KSR.maxfwd.is_maxfwd_lt("70")
                 opt = KSR.is_method_in("O") and KSR.is_method("options")
                 num = KSR.is_method_in(1)
                 rU = KSR.pv.get("$rU")
                 ok1, e1 = pcall(KSR.pv.get)
                 ok2, e2 = pcall(KSR.sl.sl_send_reply, nil, "x")
                 ok3, e3 = pcall(KSR.sl.sl_send_reply, "abc", "x")
                 ok4, e4 = pcall(KSR.auth.auth_challenge, {}, 1)
                 KSR.sl.sl_send_reply("200", 404)
               end"#,
        );
        let (m, outcome) = run(&eng, &options());
        assert_eq!(outcome, RouteOutcome::Done);
        assert_eq!(status(&m), "SIP/2.0 200 404");
        // no Max-Forwards: added with 10 (10.7 truncated), and 10 < 70
        assert_eq!(global_int(&eng, "mf"), 2);
        assert_eq!(global_int(&eng, "lt"), 1);
        assert!(global_bool(&eng, "opt"));
        assert!(!global_bool(&eng, "num"));
        assert_eq!(global_str(&eng, "rU"), "");
        for (ok, err, want) in [
            (
                "ok1",
                "e1",
                "bad argument #1: error converting Lua nil to String (expected string or number)",
            ),
            (
                "ok2",
                "e2",
                "bad argument #1: error converting Lua nil to i64 \
                 (expected number or string coercible to number)",
            ),
            (
                "ok3",
                "e3",
                "bad argument #1: error converting Lua string to i64 \
                 (expected number or string coercible to number)",
            ),
            (
                "ok4",
                "e4",
                "bad argument #1: error converting Lua table to String (expected string or number)",
            ),
        ] {
            assert!(!global_bool(&eng, ok), "{ok}");
            assert_eq!(global_str(&eng, err), want, "{err}");
        }
    }

    /// The argument errors read as mlua's own (first line: mlua's error
    /// values also carry a traceback).
    #[test]
    fn argument_errors_match_mlua() {
        let eng = engine("function ksr_request_route() end");
        let lua = eng.lua();
        let g = lua.globals();
        let f = lua
            .create_function(|_, _: (i64, mlua::String)| Ok(()))
            .unwrap();
        g.set("mlua_reply", f).unwrap();
        let f = lua.create_function(|_, _: (String, i64)| Ok(())).unwrap();
        g.set("mlua_challenge", f).unwrap();
        let first_lines: Vec<Vec<String>> = lua
            .load(
                r#"local function first(f, ...)
                     local ok, e = pcall(f, ...)
                     return (tostring(e):gsub("\n.*", ""))
                   end
                   local out = {}
                   for _, args in ipairs({ {nil, "x"}, {"abc", "x"}, {{}, "x"}, {200, {}}, {200} }) do
                     out[#out + 1] = { first(mlua_reply, args[1], args[2]),
                                       first(KSR.sl.sl_send_reply, args[1], args[2]) }
                   end
                   for _, args in ipairs({ {nil, 1}, {{}, 1}, {"r", "x"}, {"r"} }) do
                     out[#out + 1] = { first(mlua_challenge, args[1], args[2]),
                                       first(KSR.auth.auth_challenge, args[1], args[2]) }
                   end
                   return out"#,
            )
            .eval::<Vec<Vec<String>>>()
            .unwrap();
        assert_eq!(first_lines.len(), 9);
        for pair in first_lines {
            assert_eq!(pair[1], pair[0]);
        }
    }

    /// A fast function's error ends the route with the script's traceback.
    #[test]
    fn an_error_names_the_script_line() {
        let eng = engine("function ksr_request_route()\n  KSR.sl.sl_send_reply(nil, 'x')\nend\n");
        let (_, outcome) = run(&eng, &options());
        let RouteOutcome::Error(text) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(text.starts_with("bad argument #1"), "{text}");
        assert!(text.contains("test.lua:2:"), "{text}");
    }

    /// `KSR.x.exit()` is a Lua error: a script `pcall` catches it and the
    /// route goes on (as in Kamailio, whose exit raises too); uncaught, it
    /// ends the route from any depth as a normal end.
    #[test]
    fn exit_is_an_error_a_pcall_catches() {
        let eng = engine(
            r#"local function deep(n) if n == 0 then KSR.x.exit() end deep(n - 1) end
               function ksr_request_route()
                 local ok, e = pcall(KSR.x.exit)
                 caught = not ok and tostring(e) == "~~ksr~exit~~"
                 KSR.sl.sl_send_reply(200, "OK")
                 deep(5)
                 after = true
               end"#,
        );
        let (m, outcome) = run(&eng, &options());
        assert_eq!(outcome, RouteOutcome::Done);
        assert_eq!(status(&m), "SIP/2.0 200 OK");
        assert!(global_bool(&eng, "caught"));
        assert!(!global_bool(&eng, "after"));
    }

    /// Outside a route (the script's load) a fast function finds its shard
    /// by its slot: message functions fail as before, the others work.
    #[test]
    fn outside_a_route_the_shard_is_found_by_slot() {
        let eng = engine(
            r#"KSR.pv.sets("$var(x)", "loaded")
               loaded = KSR.pv.get("$var(x)")
               local ok, e = pcall(KSR.is_INVITE)
               outside = not ok and e
               function ksr_request_route()
                 seen = KSR.pv.get("$var(x)")
                 KSR.sl.sl_send_reply(200, "OK")
               end"#,
        );
        assert_eq!(global_str(&eng, "loaded"), "loaded");
        assert_eq!(
            global_str(&eng, "outside"),
            "KSR function called outside of a SIP route"
        );
        run(&eng, &options());
        assert_eq!(global_str(&eng, "seen"), "loaded");
    }

    /// Two engines on one thread: each VM's functions and count hook find
    /// their own shard.
    #[test]
    fn two_engines_on_one_thread_keep_their_shards() {
        let script = r#"function ksr_request_route()
                          KSR.pv.seti("$var(n)", (KSR.pv.get("$var(n)") or 0) + 1)
                          KSR.sl.sl_send_reply(200, "OK")
                        end"#;
        let (a, b) = (engine(script), engine(script));
        for _ in 0..3 {
            run(&a, &options());
        }
        run(&b, &options());
        let n = |e: &crate::kemi::Engine| {
            e.lua()
                .load(r#"return KSR.pv.get("$var(n)")"#)
                .eval::<i64>()
                .unwrap()
        };
        assert_eq!((n(&a), n(&b)), (3, 1));
    }
}
