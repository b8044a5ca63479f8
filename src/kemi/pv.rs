//! KSR.pv: pseudo-variables (Kamailio `pv` module / core PVs).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.pv.get(name)` | `xval (str)` | string, integer, or nil when null |
//! | `KSR.pv.gete(name)` | `xval (str)` | like get, `""` when null |
//! | `KSR.pv.getw(name)` | `xval (str)` | like get, `"<<null>>"` when null |
//! | `KSR.pv.sets(name, value)` | `void (str, str)` | nothing |
//! | `KSR.pv.seti(name, value)` | `void (str, int)` | nothing |
//! | `KSR.pv.unset(name)` | `void (str)` | nothing |
//! | `KSR.pv.is_null(name)` | `bool (str)` | true when null |
//!
//! Readable: `$rm $ru $rU $rd $rp $rz $du $bf $si $sp $Ri $Rp $pr $proto $ua $ci $fu
//! $fU $fd $fn $ft $tu $tU $td $tn $tt $cs $rs $rr $mb $ml $ct $au $ar $adu
//! $hdr(Name) $var(name) $shard $Ts`. Writable: `$ru $rU $rd $rp $du $var(name)`.
//! `$shard` (the shard number) is a sipshard extension. `$sht(t=>k)`,
//! `$shtex(t=>k)`, `$shtinc`, `$shtcn`, `$shtcv`, `$shtitkey`, `$shtitval`:
//! see the htable module.

use std::rc::Rc;

use mlua::{IntoLua, Lua, Table, Value};

use super::{MsgCtx, Shared};
use crate::sip::{HdrName, SipUri};

/// A `$var` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvValue {
    Int(i64),
    Str(Vec<u8>),
}

enum NullMode {
    Nil,
    Empty,
    Print,
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let pv = lua.create_table()?;
    for (name, mode) in [
        ("get", NullMode::Nil),
        ("gete", NullMode::Empty),
        ("getw", NullMode::Print),
    ] {
        let s = shared.clone();
        pv.set(
            name,
            lua.create_function(move |lua, name: mlua::String| {
                let v = get(lua, &s, &name.to_str()?)?;
                Ok(match (v, &mode) {
                    (Value::Nil, NullMode::Nil) => Value::Nil,
                    (Value::Nil, NullMode::Empty) => Value::String(lua.create_string("")?),
                    (Value::Nil, NullMode::Print) => Value::String(lua.create_string("<<null>>")?),
                    (v, _) => v,
                })
            })?,
        )?;
    }
    let s = shared.clone();
    pv.set(
        "sets",
        lua.create_function(move |_, (name, value): (mlua::String, mlua::String)| {
            set(
                &s,
                &name.to_str()?,
                Some(PvValue::Str(value.as_bytes().to_vec())),
            )
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "seti",
        lua.create_function(move |_, (name, value): (mlua::String, i64)| {
            set(&s, &name.to_str()?, Some(PvValue::Int(value)))
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "unset",
        lua.create_function(move |_, name: mlua::String| set(&s, &name.to_str()?, None))?,
    )?;
    let s = shared.clone();
    pv.set(
        "is_null",
        lua.create_function(move |lua, name: mlua::String| {
            Ok(get(lua, &s, &name.to_str()?)?.is_nil())
        })?,
    )?;
    ksr.set("pv", pv)?;
    Ok(())
}

fn var_name(name: &str) -> Option<&str> {
    name.strip_prefix("$var(").and_then(|r| r.strip_suffix(')'))
}

/// Reads a pseudo-variable; `Nil` for null or unknown.
pub(super) fn get(lua: &Lua, s: &Shared, name: &str) -> mlua::Result<Value> {
    if let Some(v) = var_name(name) {
        return match s.vars.borrow().get(v) {
            Some(PvValue::Int(i)) => Ok(Value::Integer(*i)),
            Some(PvValue::Str(b)) => Ok(Value::String(lua.create_string(b)?)),
            None => Ok(Value::Nil),
        };
    }
    if name.starts_with("$T_") {
        return super::tm::pv_get(lua, s, name);
    }
    if name.starts_with("$sht") {
        if let Some(v) = super::htable::pv_get(lua, s, name) {
            return v;
        }
    }
    match name {
        "$shard" => return Ok(Value::Integer(s.shard_id as i64)),
        "$Ts" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return Ok(Value::Integer(now as i64));
        }
        _ => {}
    }
    s.with_msg(|m| read_msg_pv(lua, m, name))?
}

fn str_val(lua: &Lua, b: Option<&[u8]>) -> mlua::Result<Value> {
    super::lua_opt_str(lua, b)
}

fn ip_text(ip: std::net::IpAddr) -> String {
    ip.to_string()
}

fn read_msg_pv(lua: &Lua, m: &MsgCtx, name: &str) -> mlua::Result<Value> {
    let msg = m.msg();
    if let Some(h) = name.strip_prefix("$hdr(").and_then(|r| r.strip_suffix(')')) {
        return str_val(lua, msg.header_by_name(h.as_bytes()));
    }
    let ruri_part = |f: fn(&SipUri<'_>) -> Option<Vec<u8>>| -> mlua::Result<Value> {
        let r = m
            .ruri()
            .and_then(|r| SipUri::parse(r).ok().and_then(|u| f(&u)));
        str_val(lua, r.as_deref())
    };
    match name {
        "$rm" => str_val(lua, Some(msg.method_bytes())),
        "$ru" => str_val(lua, m.ruri()),
        "$rU" => ruri_part(|u| u.user.map(|x| x.to_vec())),
        "$rd" => ruri_part(|u| Some(u.host.to_vec())),
        "$rp" => {
            let port = m
                .ruri()
                .and_then(|r| SipUri::parse(r).ok())
                .map(|u| u.port.unwrap_or(5060));
            Ok(port.map(|p| Value::Integer(p as i64)).unwrap_or(Value::Nil))
        }
        "$rz" => ruri_part(|u| {
            Some(
                match u.scheme {
                    crate::sip::Scheme::Sip => "sip",
                    crate::sip::Scheme::Sips => "sips",
                    crate::sip::Scheme::Tel => "tel",
                    crate::sip::Scheme::Other => "",
                }
                .as_bytes()
                .to_vec(),
            )
        }),
        "$du" => str_val(lua, m.dst_uri.as_deref()),
        "$bf" => Ok(Value::Integer(i64::from(m.bflags))),
        "$si" => ip_text(m.src.ip()).into_lua(lua),
        "$sp" => Ok(Value::Integer(m.src.port() as i64)),
        "$Ri" => ip_text(m.local.ip()).into_lua(lua),
        "$Rp" => Ok(Value::Integer(m.local.port() as i64)),
        "$pr" | "$proto" => "udp".into_lua(lua),
        "$ua" => str_val(lua, msg.user_agent()),
        "$ci" => str_val(lua, msg.call_id()),
        "$fu" => str_val(lua, msg.from().ok().map(|f| f.uri)),
        "$fU" => str_val(
            lua,
            msg.from()
                .ok()
                .and_then(|f| f.uri_parsed().ok())
                .and_then(|u| u.user),
        ),
        "$fd" => str_val(
            lua,
            msg.from()
                .ok()
                .and_then(|f| f.uri_parsed().ok())
                .map(|u| u.host),
        ),
        "$fn" => str_val(lua, msg.from().ok().and_then(|f| f.display)),
        "$ft" => str_val(lua, msg.from().ok().and_then(|f| f.tag())),
        "$tu" => str_val(lua, msg.to().ok().map(|t| t.uri)),
        "$tU" => str_val(
            lua,
            msg.to()
                .ok()
                .and_then(|t| t.uri_parsed().ok())
                .and_then(|u| u.user),
        ),
        "$td" => str_val(
            lua,
            msg.to()
                .ok()
                .and_then(|t| t.uri_parsed().ok())
                .map(|u| u.host),
        ),
        "$tn" => str_val(lua, msg.to().ok().and_then(|t| t.display)),
        "$tt" => str_val(lua, msg.to().ok().and_then(|t| t.tag())),
        "$cs" => Ok(msg
            .cseq()
            .map(|c| Value::Integer(c.num as i64))
            .unwrap_or(Value::Nil)),
        "$rs" => Ok(msg
            .status()
            .map(|c| Value::Integer(c as i64))
            .unwrap_or(Value::Nil)),
        "$rr" => str_val(lua, msg.reason()),
        "$mb" => str_val(lua, Some(msg.buf)),
        "$ml" => Ok(Value::Integer(m.len as i64)),
        "$ct" => str_val(lua, msg.header(HdrName::Contact)),
        "$au" => str_val(lua, m.auth_user.as_deref().map(str::as_bytes)),
        "$ar" => str_val(lua, m.auth_realm.as_deref().map(str::as_bytes)),
        "$adu" => str_val(lua, m.auth_digest_uri.as_deref().map(str::as_bytes)),
        _ => Ok(Value::Nil),
    }
}

/// Writes a pseudo-variable (`None` = unset). Unknown or read-only names are
/// a script error, as in Kamailio.
fn set(s: &Shared, name: &str, value: Option<PvValue>) -> mlua::Result<()> {
    if let Some(v) = var_name(name) {
        let mut vars = s.vars.borrow_mut();
        match value {
            Some(val) => {
                // Bounded like every table: a runaway script cannot grow it forever.
                if vars.len() >= MAX_VARS && !vars.contains_key(v) {
                    return Err(mlua::Error::RuntimeError(format!(
                        "too many $var() names (max {MAX_VARS})"
                    )));
                }
                vars.insert(v.to_string(), val);
            }
            None => {
                vars.remove(v);
            }
        }
        return Ok(());
    }
    if name.starts_with("$sht") {
        if let Some(r) = super::htable::pv_set(s, name, value.clone()) {
            return r;
        }
    }
    let text = match &value {
        Some(PvValue::Str(b)) => Some(b.clone()),
        Some(PvValue::Int(i)) => Some(i.to_string().into_bytes()),
        None => None,
    };
    s.with_msg(|m| match name {
        "$ru" => {
            m.new_ruri = text;
            Ok(())
        }
        "$du" => {
            m.dst_uri = text;
            Ok(())
        }
        "$rU" | "$rd" | "$rp" => {
            let Some(cur) = m.ruri().map(<[u8]>::to_vec) else {
                return Ok(());
            };
            let Ok(u) = SipUri::parse(&cur) else {
                return Err(mlua::Error::RuntimeError(
                    "cannot rewrite a malformed R-URI".into(),
                ));
            };
            let new = rebuild_uri(&u, name, text.as_deref());
            m.new_ruri = Some(new);
            Ok(())
        }
        _ => Err(mlua::Error::RuntimeError(format!(
            "pseudo-variable {name} is not writable"
        ))),
    })?
}

const MAX_VARS: usize = 1024;

/// A URI with its user, host or port replaced (`None` removes user/port).
fn rebuild_uri(u: &SipUri<'_>, which: &str, v: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(u.raw.len() + 16);
    out.extend_from_slice(match u.scheme {
        crate::sip::Scheme::Sips => b"sips:",
        crate::sip::Scheme::Tel => b"tel:",
        _ => b"sip:",
    });
    let user = if which == "$rU" { v } else { u.user };
    if let Some(user) = user.filter(|x| !x.is_empty()) {
        out.extend_from_slice(user);
        if let Some(pw) = u.password {
            out.push(b':');
            out.extend_from_slice(pw);
        }
        out.push(b'@');
    }
    out.extend_from_slice(if which == "$rd" {
        v.unwrap_or(u.host)
    } else {
        u.host
    });
    let port_text;
    let port: Option<&[u8]> = if which == "$rp" {
        v
    } else {
        port_text = u.port.map(|p| p.to_string());
        port_text.as_deref().map(str::as_bytes)
    };
    if let Some(p) = port.filter(|x| !x.is_empty()) {
        out.push(b':');
        out.extend_from_slice(p);
    }
    out.extend_from_slice(u.params.raw);
    if !u.headers.is_empty() {
        out.push(b'?');
        out.extend_from_slice(u.headers);
    }
    out
}
