//! The Lua runtime around a script, as Kamailio's app_lua gives it: the
//! language flavour, `require` of the script's own helper files, the `cjson`
//! module and the guards on `KSR` module tables.
//!
//! Flavour (cargo feature): `luajit` (default) runs the Lua 5.1 language like
//! Kamailio's app_lua (Debian links liblua5.1, many deployments LuaJIT), so
//! 5.1 idioms (`unpack`, `loadstring`, `setfenv`, `module`,
//! `tostring(10/2) == "5"`) work natively; a few 5.2+ library functions that
//! scripts written for 5.4 may use (`table.unpack`, `table.pack`,
//! `math.tointeger`) are added. `lua54` keeps Lua 5.4 and adds the 5.1
//! library shims instead (`unpack`, `loadstring`, approximations of
//! `setfenv`/`getfenv` and `module`); 5.4's number formatting (`"5.0"`)
//! stays. Both get the 5.1 names that LuaJIT dropped too (`string.gfind`,
//! `math.mod`, `table.setn`).
//!
//! Never: load C modules (`package.loadlib` is disabled by mlua's safe mode;
//! a vendored Lua cannot load them anyway).

use std::path::Path;

use mlua::{Lua, Table};

use crate::config::{LuaGc, ShardTuning};

#[cfg(not(any(feature = "luajit", feature = "lua54")))]
compile_error!("enable exactly one Lua flavour: feature `luajit` (default) or `lua54`");

/// The Lua flavour this build runs, for logs and `version` output.
pub const LUA_FLAVOUR: &str = if cfg!(feature = "luajit") {
    "LuaJIT (Lua 5.1)"
} else {
    "Lua 5.4"
};

/// Applies `[shard] lua_gc*`. Generational mode exists only in Lua 5.4:
/// under LuaJIT it falls back to the incremental collector with Lua's own
/// defaults (its step/pause numbers mean something else in generational
/// mode) and says so once.
pub(crate) fn apply_gc(lua: &Lua, tuning: &ShardTuning) {
    match tuning.lua_gc {
        LuaGc::Incremental => {
            lua.gc_inc(tuning.lua_gc_pause, tuning.lua_gc_step, 0);
        }
        #[cfg(feature = "lua54")]
        LuaGc::Generational => {
            lua.gc_gen(tuning.lua_gc_step, tuning.lua_gc_pause);
        }
        #[cfg(not(feature = "lua54"))]
        LuaGc::Generational => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "lua_gc = \"generational\" needs Lua 5.4; this build runs {LUA_FLAVOUR}: \
                     using the incremental collector (pause 200, stepmul 200)"
                )
            });
            lua.gc_inc(200, 200, 0);
        }
    }
}

/// Lua 5.1 library names that neither LuaJIT nor 5.4 have (5.1 had them
/// through its default compatibility switches), for both flavours.
const COMPAT_51: &str = r##"
local type, error, pairs = type, error, pairs
string.gfind = string.gfind or string.gmatch
math.mod = math.mod or math.fmod
table.getn = table.getn or function(t) return #t end
table.setn = table.setn or function() error("'setn' is obsolete", 2) end
math.pow = math.pow or function(x, y) return x ^ y end
math.log10 = math.log10 or function(x) return math.log(x, 10) end
table.maxn = table.maxn or function(t)
    local n = 0
    for k in pairs(t) do
        if type(k) == "number" and k > n then n = k end
    end
    return n
end
"##;

/// Library additions for the flavour (see the module doc).
#[cfg(feature = "luajit")]
const FLAVOUR_SHIMS: &str = r##"
table.unpack = table.unpack or unpack
if not table.pack then
    function table.pack(...) return { n = select("#", ...), ... } end
end
if not math.tointeger then
    local floor, type = math.floor, type
    function math.tointeger(x)
        if type(x) == "number" and floor(x) == x and x == x and x ~= 1/0 and x ~= -1/0 then
            return x
        end
        return nil
    end
end
"##;

#[cfg(not(feature = "luajit"))]
const FLAVOUR_SHIMS: &str = r##"
local type, error, select, rawget, setmetatable = type, error, select, rawget, setmetatable
unpack = unpack or table.unpack
loadstring = loadstring or load
-- getfenv/setfenv: approximations over the _ENV upvalue cannot be built
-- without the debug library; functions see the globals table.
getfenv = getfenv or function(f)
    if f == nil or type(f) == "number" or type(f) == "function" then return _G end
    error("bad argument #1 to 'getfenv'", 2)
end
setfenv = setfenv or function(f, t)
    if t == _G then return f end
    error("setfenv is not supported by sipshard's Lua 5.4 runtime (build with LuaJIT)", 2)
end
-- module(name [, ...]): creates/reuses the global table `name`, registers it
-- in package.loaded. Lua 5.4 cannot switch the caller's environment, so the
-- module's functions must be declared as fields (M.f = ...).
module = module or function(name, ...)
    local t = package.loaded[name]
    if type(t) ~= "table" then
        t = rawget(_G, name)
        if type(t) ~= "table" then t = {} end
        _G[name] = t
    end
    t._NAME, t._M = name, t
    t._PACKAGE = name:match("^(.*)%.[^.]*$") or ""
    package.loaded[name] = t
    for i = 1, select("#", ...) do
        local opt = select(i, ...)
        if type(opt) == "function" then opt(t) end
    end
    return t
end
package.seeall = package.seeall or function(m)
    setmetatable(m, { __index = _G })
end
"##;

/// Prepares the globals before the script runs: flavour shims,
/// `package.path` starting with the script's own directory, and the
/// `cjson` / `cjson.safe` modules in `package.preload`.
pub(crate) fn install(lua: &Lua, script_name: &str) -> mlua::Result<()> {
    lua.load(COMPAT_51).set_name("=luacompat").exec()?;
    lua.load(FLAVOUR_SHIMS).set_name("=luacompat").exec()?;
    let package: Table = lua.globals().get("package")?;
    let default_path: String = package.get("path").unwrap_or_default();
    package.set("path", script_path(script_name, &default_path))?;
    // C modules cannot be loaded: no cpath searches of the system.
    package.set("cpath", "")?;
    let preload: Table = package.get("preload")?;
    preload.set(
        "cjson",
        lua.create_function(|lua, ()| super::cjson::module(lua, false))?,
    )?;
    preload.set(
        "cjson.safe",
        lua.create_function(|lua, ()| super::cjson::module(lua, true))?,
    )?;
    Ok(())
}

/// `<dir>/?.lua;<dir>/?/init.lua;` + the default path, where `<dir>` is the
/// directory of the script file (absolute when the file exists, so the
/// current working directory does not matter).
fn script_path(script_name: &str, default_path: &str) -> String {
    let p = Path::new(script_name);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    if !p.is_file() {
        return default_path.to_string();
    }
    let dir = dir.canonicalize().unwrap_or(dir);
    let dir = dir.to_string_lossy().replace(';', "");
    format!("{dir}/?.lua;{dir}/?/init.lua;{default_path}")
}

/// Makes a missing function of an existing `KSR` module a clear error
/// (`KSR.tm.t_foo: function not exported by sipshard`) instead of "attempt to
/// call a nil value". Modules sipshard does not have stay `nil`, so
/// `if KSR.rtpproxy then` guards work as in Kamailio. Present functions are
/// found by the table lookup itself and never reach `__index`.
pub(crate) fn guard_modules(lua: &Lua, ksr: &Table) -> mlua::Result<()> {
    lua.load(GUARD_MODULES)
        .set_name("=ksr_guard")
        .call::<()>(ksr.clone())
}

const GUARD_MODULES: &str = r#"
local KSR = ...
local error, tostring = error, tostring
for name, m in pairs(KSR) do
    if type(m) == "table" and getmetatable(m) == nil then
        local prefix = "KSR." .. name .. "."
        setmetatable(m, { __index = function(_, k)
            error(prefix .. tostring(k) .. ": function not exported by sipshard", 2)
        end })
    end
end
"#;

#[cfg(test)]
mod tests;
