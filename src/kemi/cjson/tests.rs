//! lua-cjson compatibility: run through a real engine (`require "cjson"`).

use crate::kemi::testutil::engine;

const ROUTE: &str = "function ksr_request_route() end";

/// Evaluates `code` (with `cjson` and `safe` loaded) and returns its string result.
fn eval(code: &str) -> String {
    let eng = engine(ROUTE);
    let chunk = format!("local cjson = require 'cjson'\nlocal safe = require 'cjson.safe'\n{code}");
    match eng.lua().load(&chunk).eval::<mlua::Value>() {
        Ok(mlua::Value::String(s)) => s.to_string_lossy(),
        Ok(other) => format!("<{other:?}>"),
        Err(e) => format!("<error: {e}>"),
    }
}

/// The message `cjson.decode(text)` raises (through pcall, as a string).
fn decode_error(text: &str) -> String {
    let code = format!(
        "local ok, err = pcall(cjson.decode, {text:?}) assert(not ok) \
         assert(type(err) == 'string', type(err)) \
         local v, err2 = safe.decode({text:?}) assert(v == nil and err2 == err, tostring(err2)) \
         return err"
    );
    eval(&code)
}

#[test]
fn arrays_objects_and_empty_tables() {
    assert_eq!(eval("return cjson.encode({1, 2, 3})"), "[1,2,3]");
    assert_eq!(eval("return cjson.encode({})"), "{}");
    assert_eq!(eval("return cjson.encode({a = 1})"), r#"{"a":1}"#);
    assert_eq!(
        eval("return cjson.encode({{}, {x = {true, false}}})"),
        r#"[{},{"x":[true,false]}]"#
    );
    // Mixed keys: an object whose integer keys become strings.
    assert_eq!(
        eval("local t = cjson.decode(cjson.encode({1, a = 2})) return t['1'] .. ',' .. t.a"),
        "1,2"
    );
    // Holes: nulls while not too sparse, then an error (or an object).
    assert_eq!(
        eval("return cjson.encode({[1] = 1, [3] = 3})"),
        "[1,null,3]"
    );
    assert_eq!(
        eval("local ok, e = pcall(cjson.encode, {[1] = 1, [2] = 2, [20] = 3}) return e"),
        "Cannot serialise table: excessively sparse array"
    );
    assert_eq!(
        eval("cjson.encode_sparse_array(true) return cjson.encode({[1] = 1, [20] = 3}):sub(1, 1)"),
        "{"
    );
    assert_eq!(
        eval("local a, b, c = cjson.encode_sparse_array() return tostring(a) .. b .. c"),
        "false210"
    );
    // Empty tables as arrays: globally, by sentinel, by metatable.
    assert_eq!(
        eval("local old = cjson.encode_empty_table_as_object(false) return tostring(old) .. cjson.encode({a = {}})"),
        r#"false{"a":[]}"#
    );
    assert_eq!(
        eval("return cjson.encode({a = cjson.empty_array})"),
        r#"{"a":[]}"#
    );
    assert_eq!(
        eval("return cjson.encode(setmetatable({}, cjson.empty_array_mt))"),
        "[]"
    );
    assert_eq!(
        eval("return cjson.encode(setmetatable({}, cjson.array_mt))"),
        "[]"
    );
    assert_eq!(
        eval("return cjson.encode(setmetatable({1, 2}, cjson.array_mt))"),
        "[1,2]"
    );
}

#[test]
fn scalars_strings_and_numbers() {
    assert_eq!(eval("return cjson.encode(nil)"), "null");
    assert_eq!(eval("return cjson.encode(cjson.null)"), "null");
    assert_eq!(eval("return cjson.encode(true)"), "true");
    assert_eq!(eval("return cjson.encode(0.1)"), "0.1");
    assert_eq!(eval("return cjson.encode(1/3)"), "0.33333333333333");
    assert_eq!(eval("return cjson.encode(1e20)"), "1e+20");
    assert_eq!(eval("return cjson.encode(1.5e-7)"), "1.5e-07");
    assert_eq!(eval("return cjson.encode(-2.5)"), "-2.5");
    assert_eq!(eval("return cjson.encode(3)"), "3");
    assert_eq!(eval("return cjson.encode(10/2)"), "5");
    assert_eq!(
        eval("cjson.encode_number_precision(3) return cjson.encode(3.14159)"),
        "3.14"
    );
    assert_eq!(
        eval("local ok, e = pcall(cjson.encode, 0/0) return e"),
        "Cannot serialise number: must not be NaN or Infinity"
    );
    assert_eq!(
        eval("cjson.encode_invalid_numbers('null') return cjson.encode({1/0})"),
        "[null]"
    );
    assert_eq!(
        eval("cjson.encode_invalid_numbers(true) return cjson.encode(-1/0)"),
        "-Infinity"
    );
    assert_eq!(
        eval(r#"return cjson.encode('a"b\\c/d\n\1\127é')"#),
        "\"a\\\"b\\\\c\\/d\\n\\u0001\\u007fé\""
    );
    assert_eq!(
        eval("cjson.encode_escape_forward_slash(false) return cjson.encode('a/b')"),
        "\"a/b\""
    );
    assert_eq!(
        eval("local ok, e = pcall(cjson.encode, {f = print}) return e"),
        "Cannot serialise function: type not supported"
    );
    assert_eq!(
        eval("local ok, e = pcall(cjson.encode, {[true] = 1}) return e"),
        "Cannot serialise boolean: table key must be a number or string"
    );
    assert_eq!(eval("return cjson.encode({[2.5] = 1})"), r#"{"2.5":1}"#);
}

#[test]
fn fmt_g_matches_c() {
    use super::fmt_g;
    let cases = [
        (0.0, "0"),
        (100.0, "100"),
        (1e14, "1e+14"),
        (99999999999999.0, "99999999999999"),
        (123456789012345.0, "1.2345678901234e+14"), // ties-to-even like glibc's printf
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (2.5e-300, "2.5e-300"),
        (-1.25, "-1.25"),
    ];
    for (x, want) in cases {
        assert_eq!(fmt_g(x, 14), want, "{x}");
    }
}

#[test]
fn nesting_is_bounded() {
    assert_eq!(
        eval("local t = {} t[1] = t local ok, e = pcall(cjson.encode, t) return e"),
        "Cannot serialise, excessive nesting (1001)"
    );
    assert_eq!(
        eval("cjson.encode_max_depth(2) local ok, e = pcall(cjson.encode, {{{}}}) return e"),
        "Cannot serialise, excessive nesting (3)"
    );
    assert_eq!(
        decode_error(&"[".repeat(1001)),
        "Found too many nested data structures (1001) at character 1001"
    );
    assert_eq!(
        eval("cjson.decode_max_depth(3) local ok, e = pcall(cjson.decode, '[[[[1]]]]') return e"),
        "Found too many nested data structures (4) at character 4"
    );
    // Settings cannot lift the bound.
    assert!(eval("return tostring(pcall(cjson.encode_max_depth, 100000))").starts_with("false"));
    // A very long flat array is fine.
    assert_eq!(
        eval("local t = {} for i = 1, 5000 do t[i] = i end return tostring(#cjson.decode(cjson.encode(t)))"),
        "5000"
    );
}

#[test]
fn decode_values() {
    let code = r#"
        local t = cjson.decode('{"a":[1,2.5,{"b":null}],"c":"x\\u00e9\\ud83d\\ude00\\n\\/","d":false,"e":-2e3,"f":{}}')
        assert(t.a[1] == 1 and t.a[2] == 2.5 and t.a[3].b == cjson.null)
        assert(t.c == "x\195\169\240\159\152\128\n/", t.c)
        assert(t.d == false and t.e == -2000 and next(t.f) == nil)
        assert(getmetatable(t.a) == nil)
        assert(cjson.decode("null") == cjson.null)
        assert(cjson.decode(' "s" ') == "s")
        assert(cjson.decode("10") == 10)
        local huge = cjson.decode("1e400")
        assert(huge == math.huge)
        assert(cjson.decode("[NaN]")[1] ~= cjson.decode("[NaN]")[1])
        cjson.decode_array_with_array_mt(true)
        local e = cjson.decode("[]")
        assert(getmetatable(e) == cjson.array_mt)
        assert(cjson.encode(e) == "[]")
        -- cjson.new(): its own settings.
        local c2 = cjson.new()
        assert(getmetatable(c2.decode("[]")) == nil)
        c2.encode_empty_table_as_object(false)
        assert(c2.encode({}) == "[]" and cjson.encode({}) == "{}")
        assert(c2.null == cjson.null and c2.array_mt == cjson.array_mt)
        assert(require("cjson") == cjson)
        -- round trip
        local v = { name = "alice", n = 3, list = { "a", "b", { x = 1.25 } }, ok = true }
        local back = cjson.decode(cjson.encode(v))
        assert(back.name == "alice" and back.n == 3 and back.list[3].x == 1.25 and back.ok)
        return "ok"
    "#;
    assert_eq!(eval(code), "ok");
}

#[test]
fn decode_errors_as_lua_cjson() {
    assert_eq!(
        decode_error(""),
        "Expected value but found T_END at character 1"
    );
    assert_eq!(
        decode_error("{"),
        "Expected object key string but found T_END at character 2"
    );
    assert_eq!(
        decode_error("[1,]"),
        "Expected value but found T_ARR_END at character 4"
    );
    assert_eq!(
        decode_error("abc"),
        "Expected value but found invalid token at character 1"
    );
    assert_eq!(
        decode_error(r#"{"a" 1}"#),
        "Expected colon but found T_NUMBER at character 6"
    );
    assert_eq!(
        decode_error("[1 2]"),
        "Expected comma or array end but found T_NUMBER at character 4"
    );
    assert_eq!(
        decode_error(r#"{"a":1 "b"}"#),
        "Expected comma or object end but found T_STRING at character 8"
    );
    assert_eq!(
        decode_error("1 2"),
        "Expected the end but found T_NUMBER at character 3"
    );
    assert_eq!(
        decode_error(r#""\q""#),
        "Expected value but found invalid escape code at character 2"
    );
    assert_eq!(
        decode_error(r#""\ud800x""#),
        "Expected value but found invalid unicode escape code at character 2"
    );
    assert_eq!(
        decode_error(r#""abc"#),
        "Expected value but found unexpected end of string at character 5"
    );
    assert_eq!(
        eval("cjson.decode_invalid_numbers(false) local ok, e = pcall(cjson.decode, '[0x10]') return e"),
        "Expected value but found invalid number at character 2"
    );
    assert_eq!(
        eval("local ok, e = pcall(cjson.decode, nil) return e"),
        "bad argument #1 to 'decode' (string expected, got nil)"
    );
}

#[test]
fn safe_returns_nil_and_message() {
    assert_eq!(
        eval("local v, e = safe.encode(print) return tostring(v) .. '|' .. e"),
        "nil|Cannot serialise function: type not supported"
    );
    assert_eq!(
        eval("local v, e = safe.decode('{') return tostring(v) .. '|' .. e"),
        "nil|Expected object key string but found T_END at character 2"
    );
    assert_eq!(eval("return safe.encode({1})"), "[1]");
    assert_eq!(
        eval("return select('#', safe.decode('1')) .. safe._NAME"),
        "1cjson.safe"
    );
    // cjson and cjson.safe keep their own settings.
    assert_eq!(
        eval("safe.encode_empty_table_as_object(false) return cjson.encode({}) .. safe.encode({})"),
        "{}[]"
    );
}
