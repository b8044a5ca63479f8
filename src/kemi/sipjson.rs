//! KSR.sipjson: the message as a JSON document (Kamailio `sipjson` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.sipjson.sj_serialize(smode, pvname)` | `int (str, str)` | 1 the document written to `pvname` (`$var(json)`, `$avp(x)`, ...); -1 empty `smode`, outside a route, or `pvname` not writable |
//!
//! Attributes carry the pseudo-variable names, as in Kamailio: always `mt`
//! (1 reply, 2 request: the reverse of `$mt`), `rm`, `pr`, `si`, `sp`, `Ri`, `Rp`, `ru`, `rU`, `rd`,
//! `rp` (port number, 0 when none), `rs`, `rr` (status and reason of a reply;
//! 0 and `""` for a request), `fU`, `fd`, `ua`, `ci`; with `B` in `smode` the
//! body `rb`, with `c` the CSeq number `cs`, with `t` `tU` and `td`. `0`
//! asks for the defaults only. A null value is written as `""`. Decode it in
//! the script with `cjson.decode(KSR.pv.get("$var(json)"))`.

use std::rc::Rc;

use mlua::{Lua, Table};
use serde_json::{Map, Value as Json};

use super::pv::{PvValue, Val};
use super::Shared;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "sj_serialize",
        lua.create_function(move |lua, (smode, pvname): (mlua::String, mlua::String)| {
            Ok(serialize(
                lua,
                &s,
                &smode.to_string_lossy(),
                &pvname.to_string_lossy(),
            ))
        })?,
    )?;
    ksr.set("sipjson", t)
}

fn json_of(v: Val, number: bool) -> Json {
    match v {
        Val::Int(i) => Json::from(i),
        Val::Str(b) if number => Json::from(
            std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .unwrap_or(0),
        ),
        Val::Str(b) => Json::from(String::from_utf8_lossy(&b).into_owned()),
        Val::Null if number => Json::from(0),
        Val::Null => Json::from(""),
    }
}

fn serialize(lua: &Lua, s: &Shared, smode: &str, pvname: &str) -> i32 {
    if smode.is_empty() {
        return -1;
    }
    let Ok(is_request) = s.with_msg(|m| m.msg().is_request()) else {
        return -1;
    };
    let mut doc = Map::new();
    // Not `$mt` (1 request, 2 reply): sipjson numbers them the other way.
    doc.insert("mt".into(), Json::from(if is_request { 2 } else { 1 }));
    let mut put = |key: &str, pv: Option<&str>, number: bool| {
        let v = match pv {
            Some(name) => super::pv::get_val(lua, s, name).unwrap_or(Val::Null),
            None => Val::Null,
        };
        doc.insert(key.to_owned(), json_of(v, number));
    };
    put("rm", Some("$rm"), false);
    put("pr", Some("$pr"), false);
    put("si", Some("$si"), false);
    put("sp", Some("$sp"), true);
    put("Ri", Some("$Ri"), false);
    put("Rp", Some("$Rp"), true);
    let req = |name| is_request.then_some(name);
    put("ru", req("$ru"), false);
    put("rU", req("$rU"), false);
    put("rd", req("$rd"), false);
    put("rp", req("$rp"), true);
    let rpl = |name| (!is_request).then_some(name);
    put("rs", rpl("$rs"), true);
    put("rr", rpl("$rr"), false);
    put("fU", Some("$fU"), false);
    put("fd", Some("$fd"), false);
    put("ua", Some("$ua"), false);
    put("ci", Some("$ci"), false);
    for flag in smode.chars() {
        match flag {
            'B' => put("rb", Some("$rb"), false),
            'c' => put("cs", Some("$cs"), false),
            't' => {
                put("tU", Some("$tU"), false);
                put("td", Some("$td"), false);
            }
            _ => {}
        }
    }
    let text = Json::Object(doc).to_string();
    match super::pv::set(s, pvname, Some(PvValue::Str(text.into_bytes()))) {
        Ok(true) => 1,
        _ => -1,
    }
}
