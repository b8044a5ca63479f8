//! KSR.kx: typed getters of common message attributes (Kamailio `kemix` module).
//!
//! `get_*` return the value or nil; `gete_*` return `""` instead of nil;
//! `getw_*` return `"<<null>>"` instead of nil. Integer getters return -1 when
//! the attribute is absent.
//!
//! | KSR function | Kamailio signature | value |
//! |---|---|---|
//! | `get_ruri() get_ruser() get_rhost()` (+ `gete_`, `getw_` for user/host) | `xval ()` | `$ru $rU $rd` |
//! | `get_rport()` | `int ()` | `$rp` |
//! | `get_furi() get_fuser() get_fhost() get_ftag()` (+ `gete_`/`getw_` user/host) | `xval ()` | `$fu $fU $fd $ft` |
//! | `get_turi() get_tuser() get_thost() get_ttag()` (+ `gete_`/`getw_` user/host) | `xval ()` | `$tu $tU $td $tt` |
//! | `get_srcip() get_rcvip()` | `xval ()` | `$si $Ri` |
//! | `get_srcport() get_rcvport()` | `int ()` | `$sp $Rp` |
//! | `get_srcuri()` | `xval ()` | `sip:$si:$sp` |
//! | `get_method() get_callid() get_ua() gete_ua() getw_ua() get_body() get_duri() get_proto()` | `xval ()` | `$rm $ci $ua $rb $du $pr` |
//! | `get_status()` | `int ()` | `$rs`, -1 for a request |
//! | `get_cseq()` `get_msglen()` | `int ()` | `$cs $ml` |
//! | `get_timestamp()` | `int ()` | unix seconds |

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::Shared;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let kx = lua.create_table()?;
    let strings: &[(&str, &str)] = &[
        ("ruri", "$ru"),
        ("ruser", "$rU"),
        ("rhost", "$rd"),
        ("furi", "$fu"),
        ("fuser", "$fU"),
        ("fhost", "$fd"),
        ("ftag", "$ft"),
        ("turi", "$tu"),
        ("tuser", "$tU"),
        ("thost", "$td"),
        ("ttag", "$tt"),
        ("srcip", "$si"),
        ("rcvip", "$Ri"),
        ("method", "$rm"),
        ("callid", "$ci"),
        ("ua", "$ua"),
        ("duri", "$du"),
        ("proto", "$pr"),
    ];
    for (suffix, pvname) in strings {
        for (prefix, null) in [
            ("get_", None),
            ("gete_", Some("")),
            ("getw_", Some("<<null>>")),
        ] {
            let s = shared.clone();
            let pvname = *pvname;
            kx.set(
                format!("{prefix}{suffix}"),
                lua.create_function(move |lua, ()| {
                    let v = super::pv::get(lua, &s, pvname)?;
                    match (v, null) {
                        (Value::Nil, Some(text)) => Ok(Value::String(lua.create_string(text)?)),
                        (v, _) => Ok(v),
                    }
                })?,
            )?;
        }
    }
    let ints: &[(&str, &str)] = &[
        ("srcport", "$sp"),
        ("rcvport", "$Rp"),
        ("rport", "$rp"),
        ("status", "$rs"),
        ("cseq", "$cs"),
        ("msglen", "$ml"),
        ("timestamp", "$Ts"),
    ];
    for (suffix, pvname) in ints {
        let s = shared.clone();
        let pvname = *pvname;
        kx.set(
            format!("get_{suffix}"),
            lua.create_function(move |lua, ()| match super::pv::get(lua, &s, pvname)? {
                Value::Integer(i) => Ok(i),
                _ => Ok(-1),
            })?,
        )?;
    }
    let s = shared.clone();
    kx.set(
        "get_srcuri",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| match m.src.ip() {
                std::net::IpAddr::V4(ip) => format!("sip:{ip}:{}", m.src.port()),
                std::net::IpAddr::V6(ip) => format!("sip:[{ip}]:{}", m.src.port()),
            })
        })?,
    )?;
    let s = shared.clone();
    kx.set(
        "get_body",
        lua.create_function(move |lua, ()| s.with_msg(|m| lua.create_string(m.msg().body()))?)?,
    )?;
    ksr.set("kx", kx)?;
    Ok(())
}
