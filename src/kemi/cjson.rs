//! `require "cjson"` / `require "cjson.safe"`: lua-cjson's API (the
//! OpenResty flavour Kamailio scripts use), implemented in Rust.
//!
//! | function | behaviour |
//! |---|---|
//! | `encode(v)` | JSON text; a table whose keys are exactly integers 1..n is an array, an empty table `{}` (see `encode_empty_table_as_object`), anything else an object; numbers `%.14g`; `cjson.null` / `nil` → `null` |
//! | `decode(s)` | Lua value; `null` → `cjson.null`; errors like lua-cjson (`Expected value but found invalid token at character 1`) |
//! | `null`, `empty_array`, `array_mt`, `empty_array_mt` | sentinels and metatables |
//! | `encode_empty_table_as_object(b)`, `decode_array_with_array_mt(b)`, `encode_sparse_array(convert, ratio, safe)`, `encode_number_precision(n)`, `encode_escape_forward_slash(b)`, `encode_max_depth(n)`, `decode_max_depth(n)`, `encode_invalid_numbers(b\|"null")`, `decode_invalid_numbers(b)`, `encode_keep_buffer(b)` | per-instance settings; each returns the current value(s) |
//! | `new()` | an independent instance with default settings |
//!
//! `cjson` raises on errors, `cjson.safe` returns `nil, message`.
//! Bounded: nesting depth is capped at 1000 (lua-cjson's default), both ways.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{LightUserData, Lua, MultiValue, Table, Value};

/// Deepest nesting accepted by encode and decode, whatever the settings.
const MAX_DEPTH: i64 = 1000;

static EMPTY_ARRAY_MARK: u8 = 0;

fn empty_array() -> Value {
    Value::LightUserData(LightUserData(
        std::ptr::addr_of!(EMPTY_ARRAY_MARK) as *mut std::ffi::c_void
    ))
}

#[derive(Clone)]
struct Cfg {
    sparse_convert: bool,
    sparse_ratio: i64,
    sparse_safe: i64,
    encode_max_depth: i64,
    decode_max_depth: i64,
    precision: usize,
    /// 0 off (error), 1 on (NaN/Infinity), 2 null.
    encode_invalid: u8,
    decode_invalid: bool,
    escape_slash: bool,
    empty_table_as_object: bool,
    decode_array_mt: bool,
    keep_buffer: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            sparse_convert: false,
            sparse_ratio: 2,
            sparse_safe: 10,
            encode_max_depth: MAX_DEPTH,
            decode_max_depth: MAX_DEPTH,
            precision: 14,
            encode_invalid: 0,
            decode_invalid: true,
            escape_slash: true,
            empty_table_as_object: true,
            decode_array_mt: false,
            keep_buffer: true,
        }
    }
}

/// Shared by every instance (as lua-cjson keeps them in the registry).
struct Marks {
    array_mt: Table,
    empty_array_mt: Table,
}

fn marks(lua: &Lua) -> mlua::Result<Rc<Marks>> {
    if let Some(m) = lua.app_data_ref::<Rc<Marks>>() {
        return Ok(m.clone());
    }
    let m = Rc::new(Marks {
        array_mt: lua.create_table()?,
        empty_array_mt: lua.create_table()?,
    });
    lua.set_app_data(m.clone());
    Ok(m)
}

/// Wraps the Rust halves (which return `value, err`) so `cjson` raises a
/// plain string error, like lua-cjson, and `cjson.safe` returns `nil, err`.
const WRAP: &str = r#"
local M, enc, dec, safe = ...
local error = error
if safe then
    M.encode = function(...)
        local r, e = enc(...)
        if e then return nil, e end
        return r
    end
    M.decode = function(...)
        local r, e = dec(...)
        if e then return nil, e end
        return r
    end
else
    M.encode = function(...)
        local r, e = enc(...)
        if e then error(e, 0) end
        return r
    end
    M.decode = function(...)
        local r, e = dec(...)
        if e then error(e, 0) end
        return r
    end
end
return M
"#;

/// A new module instance with default settings.
pub(crate) fn module(lua: &Lua, safe: bool) -> mlua::Result<Table> {
    let cfg = Rc::new(RefCell::new(Cfg::default()));
    let marks = marks(lua)?;
    let m = lua.create_table()?;
    m.set("_NAME", if safe { "cjson.safe" } else { "cjson" })?;
    m.set("_VERSION", "2.1.0.14")?;
    m.set("null", Value::NULL)?;
    m.set("empty_array", empty_array())?;
    m.set("array_mt", marks.array_mt.clone())?;
    m.set("empty_array_mt", marks.empty_array_mt.clone())?;

    let (c, mk) = (cfg.clone(), marks.clone());
    let enc = lua.create_function(move |lua, args: MultiValue| {
        if args.len() != 1 {
            return Ok((
                Value::Nil,
                Some("bad argument #1 to 'encode' (expected 1 argument)".to_string()),
            ));
        }
        let cfg = c.borrow().clone();
        match encode(&cfg, &mk, args[0].clone()) {
            Ok(out) => Ok((Value::String(lua.create_string(&out)?), None)),
            Err(e) => Ok((Value::Nil, Some(e))),
        }
    })?;
    let (c, mk) = (cfg.clone(), marks.clone());
    let dec = lua.create_function(move |lua, v: Value| {
        let text = match &v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Integer(i) => i.to_string().into_bytes(),
            Value::Number(n) => n.to_string().into_bytes(),
            other => {
                return Ok((
                    Value::Nil,
                    Some(format!(
                        "bad argument #1 to 'decode' (string expected, got {})",
                        lua_type_name(other)
                    )),
                ))
            }
        };
        let cfg = c.borrow().clone();
        let mut p = Parser {
            lua,
            cfg: &cfg,
            marks: &mk,
            s: &text,
            pos: 0,
        };
        match p.document() {
            Ok(v) => Ok((v, None)),
            Err(Fail::Json(e)) => Ok((Value::Nil, Some(e))),
            Err(Fail::Lua(e)) => Err(e),
        }
    })?;
    lua.load(WRAP)
        .set_name("=cjson")
        .call::<()>((m.clone(), enc, dec, safe))?;

    bool_option(lua, &m, "encode_empty_table_as_object", &cfg, |c| {
        &mut c.empty_table_as_object
    })?;
    bool_option(lua, &m, "decode_array_with_array_mt", &cfg, |c| {
        &mut c.decode_array_mt
    })?;
    bool_option(lua, &m, "encode_escape_forward_slash", &cfg, |c| {
        &mut c.escape_slash
    })?;
    bool_option(lua, &m, "decode_invalid_numbers", &cfg, |c| {
        &mut c.decode_invalid
    })?;
    bool_option(lua, &m, "encode_keep_buffer", &cfg, |c| &mut c.keep_buffer)?;
    int_option(lua, &m, "encode_max_depth", &cfg, 1, MAX_DEPTH, |c| {
        &mut c.encode_max_depth
    })?;
    int_option(lua, &m, "decode_max_depth", &cfg, 1, MAX_DEPTH, |c| {
        &mut c.decode_max_depth
    })?;
    let c = cfg.clone();
    m.set(
        "encode_number_precision",
        lua.create_function(move |_, v: Option<i64>| {
            let mut c = c.borrow_mut();
            if let Some(n) = v {
                if !(1..=16).contains(&n) {
                    return Err(arg_error(
                        "encode_number_precision",
                        "expected integer between 1 and 16",
                    ));
                }
                c.precision = n as usize;
            }
            Ok(c.precision as i64)
        })?,
    )?;
    let c = cfg.clone();
    m.set(
        "encode_invalid_numbers",
        lua.create_function(move |lua, v: Value| {
            let mut c = c.borrow_mut();
            c.encode_invalid = match &v {
                Value::Nil => c.encode_invalid,
                Value::Boolean(b) => u8::from(*b),
                Value::String(s) => match s.to_str()?.as_ref() {
                    "off" => 0,
                    "on" => 1,
                    "null" => 2,
                    _ => {
                        return Err(arg_error(
                            "encode_invalid_numbers",
                            "invalid option; expected off, on or null",
                        ))
                    }
                },
                _ => return Err(arg_error("encode_invalid_numbers", "boolean expected")),
            };
            Ok(match c.encode_invalid {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => Value::String(lua.create_string("null")?),
            })
        })?,
    )?;
    let c = cfg.clone();
    m.set(
        "encode_sparse_array",
        lua.create_function(
            move |_, (convert, ratio, safe): (Value, Option<i64>, Option<i64>)| {
                let mut guard = c.borrow_mut();
                let c = &mut *guard;
                match convert {
                    Value::Nil => {}
                    Value::Boolean(b) => c.sparse_convert = b,
                    Value::String(s) if &*s.to_str()? == "on" => c.sparse_convert = true,
                    Value::String(s) if &*s.to_str()? == "off" => c.sparse_convert = false,
                    _ => return Err(arg_error("encode_sparse_array", "boolean expected")),
                }
                for (v, slot) in [(ratio, &mut c.sparse_ratio), (safe, &mut c.sparse_safe)] {
                    if let Some(v) = v {
                        if !(0..=i64::from(i32::MAX)).contains(&v) {
                            return Err(arg_error(
                                "encode_sparse_array",
                                "expected integer between 0 and 2147483647",
                            ));
                        }
                        *slot = v;
                    }
                }
                Ok((c.sparse_convert, c.sparse_ratio, c.sparse_safe))
            },
        )?,
    )?;
    m.set(
        "new",
        lua.create_function(move |lua, ()| module(lua, safe))?,
    )?;
    Ok(m)
}

fn arg_error(func: &str, why: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!("bad argument #1 to '{func}' ({why})"))
}

fn bool_option(
    lua: &Lua,
    m: &Table,
    name: &'static str,
    cfg: &Rc<RefCell<Cfg>>,
    field: fn(&mut Cfg) -> &mut bool,
) -> mlua::Result<()> {
    let c = cfg.clone();
    let f = lua.create_function(move |_, v: Value| {
        let mut c = c.borrow_mut();
        let slot = field(&mut c);
        match v {
            Value::Nil => {}
            Value::Boolean(b) => *slot = b,
            Value::String(s) if &*s.to_str()? == "on" => *slot = true,
            Value::String(s) if &*s.to_str()? == "off" => *slot = false,
            _ => {
                return Err(arg_error(
                    name,
                    "invalid option; expected boolean, on or off",
                ))
            }
        }
        Ok(*slot)
    })?;
    m.set(name, f)
}

fn int_option(
    lua: &Lua,
    m: &Table,
    name: &'static str,
    cfg: &Rc<RefCell<Cfg>>,
    min: i64,
    max: i64,
    field: fn(&mut Cfg) -> &mut i64,
) -> mlua::Result<()> {
    let c = cfg.clone();
    let f = lua.create_function(move |_, v: Option<i64>| {
        let mut c = c.borrow_mut();
        let slot = field(&mut c);
        if let Some(v) = v {
            if !(min..=max).contains(&v) {
                return Err(arg_error(
                    name,
                    &format!("expected integer between {min} and {max}"),
                ));
            }
            *slot = v;
        }
        Ok(*slot)
    })?;
    m.set(name, f)
}

/// Lua's type name, as `lua_typename` gives it.
fn lua_type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::LightUserData(_) | Value::UserData(_) => "userdata",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "userdata",
    }
}

fn unsupported(v: &Value, why: &str) -> String {
    format!("Cannot serialise {}: {why}", lua_type_name(v))
}

// ===== encoding =====

/// A container being written: an array (next index, length) or an object
/// (its pairs, next one).
enum Open {
    Array(Table, i64, i64),
    Object(Vec<(Value, Value)>, usize),
}

/// Encodes `root` with an explicit stack (no recursion: the depth bound, not
/// the thread's stack, limits nesting).
fn encode(cfg: &Cfg, marks: &Marks, root: Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut pending = Some(root);
    loop {
        if let Some(v) = pending.take() {
            match v {
                Value::Table(t) => {
                    if let Some(open) =
                        open_table(cfg, marks, &t, stack.len() as i64 + 1, &mut out)?
                    {
                        stack.push(open);
                    }
                }
                other => encode_scalar(cfg, &other, &mut out)?,
            }
        }
        let Some(top) = stack.last_mut() else {
            break;
        };
        match top {
            Open::Array(t, i, n) => {
                if *i < *n {
                    if *i > 0 {
                        out.push(b',');
                    }
                    *i += 1;
                    pending = Some(t.raw_get(*i).map_err(|e| e.to_string())?);
                } else {
                    out.push(b']');
                    stack.pop();
                }
            }
            Open::Object(pairs, i) => {
                if let Some((k, v)) = pairs.get_mut(*i) {
                    if *i > 0 {
                        out.push(b',');
                    }
                    *i += 1;
                    encode_key(cfg, k, &mut out)?;
                    out.push(b':');
                    pending = Some(std::mem::replace(v, Value::Nil));
                } else {
                    out.push(b'}');
                    stack.pop();
                }
            }
        }
    }
    Ok(out)
}

fn encode_scalar(cfg: &Cfg, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(i) => encode_integer(cfg, *i, out),
        Value::Number(n) => encode_number(cfg, *n, v, out)?,
        Value::String(s) => encode_string(cfg, &s.as_bytes(), out),
        Value::LightUserData(p) if p.0.is_null() => out.extend_from_slice(b"null"),
        Value::LightUserData(_) if *v == empty_array() => out.extend_from_slice(b"[]"),
        other => return Err(unsupported(other, "type not supported")),
    }
    Ok(())
}

fn encode_key(cfg: &Cfg, k: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match k {
        Value::String(s) => encode_string(cfg, &s.as_bytes(), out),
        Value::Integer(i) => {
            out.push(b'"');
            encode_integer(cfg, *i, out);
            out.push(b'"');
        }
        Value::Number(n) => {
            out.push(b'"');
            encode_number(cfg, *n, k, out)?;
            out.push(b'"');
        }
        other => return Err(unsupported(other, "table key must be a number or string")),
    }
    Ok(())
}

#[cfg(feature = "lua54")]
fn encode_integer(_cfg: &Cfg, i: i64, out: &mut Vec<u8>) {
    // Lua 5.3+: integers are written as integers (OpenResty's lua-cjson).
    out.extend_from_slice(i.to_string().as_bytes());
}

#[cfg(not(feature = "lua54"))]
fn encode_integer(cfg: &Cfg, i: i64, out: &mut Vec<u8>) {
    // Lua 5.1 has only doubles: lua-cjson writes every number with %.14g.
    out.extend_from_slice(fmt_g(i as f64, cfg.precision).as_bytes());
}

fn encode_number(cfg: &Cfg, n: f64, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    if !n.is_finite() {
        match cfg.encode_invalid {
            0 => return Err(unsupported(v, "must not be NaN or Infinity")),
            1 => {
                out.extend_from_slice(if n.is_nan() {
                    &b"NaN"[..]
                } else if n < 0.0 {
                    &b"-Infinity"[..]
                } else {
                    &b"Infinity"[..]
                });
            }
            _ => out.extend_from_slice(b"null"),
        }
        return Ok(());
    }
    out.extend_from_slice(fmt_g(n, cfg.precision).as_bytes());
    Ok(())
}

/// C's `%.<prec>g`.
pub(crate) fn fmt_g(x: f64, prec: usize) -> String {
    let prec = prec.clamp(1, 17);
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{:.*e}", prec - 1, x);
    let Some((mant, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= prec as i32 {
        let mant = trim_fraction(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.unsigned_abs())
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        trim_fraction(&format!("{x:.decimals$}")).to_string()
    }
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn encode_string(cfg: &Cfg, s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' if cfg.escape_slash => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The array length of `t` if its keys are exactly positive integers
/// (`None`: an object), after lua-cjson's sparse-array rule.
fn array_length(cfg: &Cfg, t: &Table) -> Result<Option<i64>, String> {
    let mut max: i64 = 0;
    let mut items: i64 = 0;
    let mut object = false;
    t.for_each(|k: Value, _v: Value| {
        let idx = match k {
            Value::Integer(i) if i >= 1 => Some(i),
            Value::Number(n) if n >= 1.0 && n.floor() == n && n < 9.0e15 => Some(n as i64),
            _ => None,
        };
        match idx {
            Some(i) => {
                max = max.max(i);
                items += 1;
                Ok(())
            }
            None => {
                object = true;
                // Stop the walk early.
                Err(mlua::Error::RuntimeError(String::new()))
            }
        }
    })
    .ok();
    if object {
        return Ok(None);
    }
    if cfg.sparse_ratio > 0 && max > items.saturating_mul(cfg.sparse_ratio) && max > cfg.sparse_safe
    {
        if !cfg.sparse_convert {
            return Err("Cannot serialise table: excessively sparse array".to_string());
        }
        return Ok(None);
    }
    Ok(Some(max))
}

/// Starts writing table `t` at nesting `depth`: writes an empty container
/// whole (`None`), else its opening bracket and returns what remains.
fn open_table(
    cfg: &Cfg,
    marks: &Marks,
    t: &Table,
    depth: i64,
    out: &mut Vec<u8>,
) -> Result<Option<Open>, String> {
    if depth > cfg.encode_max_depth.min(MAX_DEPTH) {
        return Err(format!("Cannot serialise, excessive nesting ({depth})"));
    }
    let mt = t.metatable();
    let (as_array, as_empty_array) = match &mt {
        Some(mt) => (*mt == marks.array_mt, *mt == marks.empty_array_mt),
        None => (false, false),
    };
    let len = if as_array {
        Some(t.raw_len() as i64)
    } else {
        array_length(cfg, t)?
    };
    match len {
        Some(0) if !as_array && cfg.empty_table_as_object && !as_empty_array => {
            out.extend_from_slice(b"{}");
            Ok(None)
        }
        Some(0) => {
            out.extend_from_slice(b"[]");
            Ok(None)
        }
        Some(n) => {
            out.push(b'[');
            Ok(Some(Open::Array(t.clone(), 0, n)))
        }
        None => {
            let mut pairs = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                pairs.push(pair.map_err(|e| e.to_string())?);
            }
            out.push(b'{');
            Ok(Some(Open::Object(pairs, 0)))
        }
    }
}

// ===== decoding =====

enum Fail {
    /// A JSON error, lua-cjson's text.
    Json(String),
    /// Lua itself failed (memory).
    Lua(mlua::Error),
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Fail {
        Fail::Lua(e)
    }
}

/// What a token is, for error messages (lua-cjson's names).
enum Tok {
    ObjBegin,
    ObjEnd,
    ArrBegin,
    ArrEnd,
    Str(Vec<u8>),
    Num(Value),
    Bool(bool),
    Null,
    Colon,
    Comma,
    End,
    /// An invalid token, with the reason and its 0-based position.
    Error(&'static str, usize),
}

impl Tok {
    fn name(&self) -> &'static str {
        match self {
            Tok::ObjBegin => "T_OBJ_BEGIN",
            Tok::ObjEnd => "T_OBJ_END",
            Tok::ArrBegin => "T_ARR_BEGIN",
            Tok::ArrEnd => "T_ARR_END",
            Tok::Str(_) => "T_STRING",
            Tok::Num(_) => "T_NUMBER",
            Tok::Bool(_) => "T_BOOLEAN",
            Tok::Null => "T_NULL",
            Tok::Colon => "T_COLON",
            Tok::Comma => "T_COMMA",
            Tok::End => "T_END",
            Tok::Error(why, _) => why,
        }
    }
}

struct Parser<'a> {
    lua: &'a Lua,
    cfg: &'a Cfg,
    marks: &'a Marks,
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// Parses the whole text with an explicit stack of open containers.
    fn document(&mut self) -> Result<Value, Fail> {
        enum Cur {
            Array(Table, i64),
            Object(Table, Vec<u8>),
        }
        let mut stack: Vec<Cur> = Vec::new();
        let (mut tok, mut at) = self.next_token();
        loop {
            // A value starts at `tok`.
            let mut v = match tok {
                Tok::Str(s) => Value::String(self.lua.create_string(&s)?),
                Tok::Num(v) => v,
                Tok::Bool(b) => Value::Boolean(b),
                Tok::Null => Value::NULL,
                Tok::ObjBegin | Tok::ArrBegin => {
                    let depth = stack.len() as i64 + 1;
                    if depth > self.cfg.decode_max_depth.min(MAX_DEPTH) {
                        return Err(Fail::Json(format!(
                            "Found too many nested data structures ({depth}) at character {}",
                            at + 1
                        )));
                    }
                    let t = self.lua.create_table()?;
                    let is_obj = matches!(tok, Tok::ObjBegin);
                    if !is_obj && self.cfg.decode_array_mt {
                        t.set_metatable(Some(self.marks.array_mt.clone()));
                    }
                    let (next, nat) = self.next_token();
                    match (is_obj, next) {
                        (true, Tok::ObjEnd) | (false, Tok::ArrEnd) => Value::Table(t),
                        (true, next) => {
                            let key = self.key(next, nat)?;
                            stack.push(Cur::Object(t, key));
                            (tok, at) = self.next_token();
                            continue;
                        }
                        (false, next) => {
                            stack.push(Cur::Array(t, 1));
                            (tok, at) = (next, nat);
                            continue;
                        }
                    }
                }
                other => return Err(self.expected("value", &other, at)),
            };
            // Store the finished value in its container(s).
            loop {
                match stack.last_mut() {
                    None => {
                        let (end, eat) = self.next_token();
                        if !matches!(end, Tok::End) {
                            return Err(self.expected("the end", &end, eat));
                        }
                        return Ok(v);
                    }
                    Some(Cur::Array(t, i)) => {
                        t.raw_set(*i, v)?;
                        *i += 1;
                        let (sep, sat) = self.next_token();
                        match sep {
                            Tok::Comma => {
                                (tok, at) = self.next_token();
                                break;
                            }
                            Tok::ArrEnd => {}
                            other => return Err(self.expected("comma or array end", &other, sat)),
                        }
                    }
                    Some(Cur::Object(t, key)) => {
                        t.raw_set(self.lua.create_string(&*key)?, v)?;
                        let (sep, sat) = self.next_token();
                        match sep {
                            Tok::Comma => {
                                let (kt, kat) = self.next_token();
                                *key = self.key(kt, kat)?;
                                (tok, at) = self.next_token();
                                break;
                            }
                            Tok::ObjEnd => {}
                            other => return Err(self.expected("comma or object end", &other, sat)),
                        }
                    }
                }
                // The container closed: it is the value for its parent.
                v = match stack.pop() {
                    Some(Cur::Array(t, _)) | Some(Cur::Object(t, _)) => Value::Table(t),
                    None => Value::Nil,
                };
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self, tok: Tok, at: usize) -> Result<Vec<u8>, Fail> {
        let Tok::Str(key) = tok else {
            return Err(self.expected("object key string", &tok, at));
        };
        let (colon, cat) = self.next_token();
        if !matches!(colon, Tok::Colon) {
            return Err(self.expected("colon", &colon, cat));
        }
        Ok(key)
    }

    fn expected(&self, what: &str, found: &Tok, at: usize) -> Fail {
        let at = match found {
            Tok::Error(_, p) => *p,
            _ => at,
        };
        Fail::Json(format!(
            "Expected {what} but found {} at character {}",
            found.name(),
            at + 1
        ))
    }

    fn next_token(&mut self) -> (Tok, usize) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
        let at = self.pos;
        let Some(&c) = self.s.get(at) else {
            return (Tok::End, at);
        };
        let simple = match c {
            b'{' => Some(Tok::ObjBegin),
            b'}' => Some(Tok::ObjEnd),
            b'[' => Some(Tok::ArrBegin),
            b']' => Some(Tok::ArrEnd),
            b',' => Some(Tok::Comma),
            b':' => Some(Tok::Colon),
            0 => return (Tok::End, at),
            _ => None,
        };
        if let Some(t) = simple {
            self.pos += 1;
            return (t, at);
        }
        let rest = &self.s[at..];
        let tok = if c == b'"' {
            self.string()
        } else if c == b'-' || c == b'+' || c.is_ascii_digit() {
            self.number()
        } else if rest.starts_with(b"true") {
            self.pos += 4;
            Tok::Bool(true)
        } else if rest.starts_with(b"false") {
            self.pos += 5;
            Tok::Bool(false)
        } else if rest.starts_with(b"null") {
            self.pos += 4;
            Tok::Null
        } else if matches!(c, b'i' | b'I' | b'n' | b'N') {
            self.number()
        } else {
            Tok::Error("invalid token", at)
        };
        (tok, at)
    }

    fn string(&mut self) -> Tok {
        let mut out = Vec::new();
        self.pos += 1; // opening quote
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Tok::Error("unexpected end of string", self.pos);
            };
            match c {
                b'"' => {
                    self.pos += 1;
                    return Tok::Str(out);
                }
                0 => return Tok::Error("unexpected end of string", self.pos),
                b'\\' => {
                    let esc = self.s.get(self.pos + 1).copied().unwrap_or(0);
                    let ch = match esc {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            match self.unicode_escape() {
                                Some((cp, len)) => {
                                    let mut buf = [0u8; 4];
                                    out.extend_from_slice(cp.encode_utf8(&mut buf).as_bytes());
                                    self.pos += len;
                                }
                                None => return Tok::Error("invalid unicode escape code", self.pos),
                            }
                            continue;
                        }
                        _ => return Tok::Error("invalid escape code", self.pos),
                    };
                    out.push(ch);
                    self.pos += 2;
                }
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.s.get(at..at + 4)?;
        let h = std::str::from_utf8(h).ok()?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    }

    /// `\uXXXX` (or a surrogate pair) at `pos`: the character and the
    /// escape's length.
    fn unicode_escape(&self) -> Option<(char, usize)> {
        let hi = self.hex4(self.pos + 2)?;
        if hi & 0xF800 != 0xD800 {
            return char::from_u32(hi).map(|c| (c, 6));
        }
        if hi & 0x400 != 0 {
            return None; // a low surrogate first
        }
        if self.s.get(self.pos + 6) != Some(&b'\\') || self.s.get(self.pos + 7) != Some(&b'u') {
            return None;
        }
        let lo = self.hex4(self.pos + 8)?;
        if lo & 0xFC00 != 0xDC00 {
            return None;
        }
        let cp = (((hi & 0x3FF) << 10) | (lo & 0x3FF)) + 0x10000;
        char::from_u32(cp).map(|c| (c, 12))
    }

    fn number(&mut self) -> Tok {
        let start = self.pos;
        let s = self.s;
        let mut p = start;
        let neg = match s.get(p) {
            Some(b'-') => {
                p += 1;
                true
            }
            Some(b'+') => {
                if !self.cfg.decode_invalid {
                    return Tok::Error("invalid number", start);
                }
                p += 1;
                false
            }
            _ => false,
        };
        let word = |p: usize, w: &str| {
            s.get(p..p + w.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(w.as_bytes()))
        };
        // Infinity / NaN / hexadecimal: only with decode_invalid_numbers.
        let special = if word(p, "infinity") {
            Some((f64::INFINITY, 8))
        } else if word(p, "inf") {
            Some((f64::INFINITY, 3))
        } else if word(p, "nan") {
            Some((f64::NAN, 3))
        } else {
            None
        };
        if let Some((v, len)) = special {
            if !self.cfg.decode_invalid {
                return Tok::Error("invalid number", start);
            }
            self.pos = p + len;
            return Tok::Num(Value::Number(if neg { -v } else { v }));
        }
        if s.get(p) == Some(&b'0') && matches!(s.get(p + 1), Some(b'x' | b'X')) {
            if !self.cfg.decode_invalid {
                return Tok::Error("invalid number", start);
            }
            let digits = s[p + 2..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            let text = std::str::from_utf8(&s[p + 2..p + 2 + digits]).unwrap_or("");
            let Ok(v) = i64::from_str_radix(text, 16) else {
                return Tok::Error("invalid number", start);
            };
            self.pos = p + 2 + digits;
            return Tok::Num(Value::Integer(if neg { -v } else { v }));
        }
        let int_digits = s[p..].iter().take_while(|b| b.is_ascii_digit()).count();
        if int_digits > 1 && s[p] == b'0' && !self.cfg.decode_invalid {
            return Tok::Error("invalid number", start);
        }
        let mut q = p + int_digits;
        let mut integral = true;
        let mut frac_digits = 0;
        if s.get(q) == Some(&b'.') {
            frac_digits = s[q + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            q += 1 + frac_digits;
            integral = false;
        }
        if int_digits == 0 && frac_digits == 0 {
            return Tok::Error("invalid number", start);
        }
        if matches!(s.get(q), Some(b'e' | b'E')) {
            let mut r = q + 1;
            if matches!(s.get(r), Some(b'+' | b'-')) {
                r += 1;
            }
            let exp_digits = s[r.min(s.len())..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if exp_digits > 0 {
                q = r + exp_digits;
                integral = false;
            }
        }
        let text = std::str::from_utf8(&s[start..q]).unwrap_or("");
        let text = text.strip_prefix('+').unwrap_or(text);
        self.pos = q;
        if integral {
            if let Ok(i) = text.parse::<i64>() {
                return Tok::Num(Value::Integer(i));
            }
        }
        match text.parse::<f64>() {
            Ok(v) => Tok::Num(Value::Number(v)),
            Err(_) => Tok::Error("invalid number", start),
        }
    }
}

#[cfg(test)]
mod tests;
