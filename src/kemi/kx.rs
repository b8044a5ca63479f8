//! KSR.kx: typed getters of common message attributes (Kamailio `kemix` module).
//!
//! `get_*` return the value or nil; `gete_*` return `""` instead of nil;
//! `getw_*` return `"<<null>>"` instead of nil. Integer getters return -1 when
//! the attribute is absent.
//!
//! | KSR function | Kamailio signature | value |
//! |---|---|---|
//! | `KSR.kx.get_ruri/gete_ruri/getw_ruri()` | `xval ()` | `$ru` |
//! | `KSR.kx.get_ruser/gete_ruser/getw_ruser()` | `xval ()` | `$rU` |
//! | `KSR.kx.get_rhost/gete_rhost/getw_rhost()` | `xval ()` | `$rd` |
//! | `KSR.kx.get_rport()` | `int ()` | `$rp` |
//! | `KSR.kx.get_furi/gete_furi/getw_furi()` | `xval ()` | `$fu` |
//! | `KSR.kx.get_fuser/gete_fuser/getw_fuser()` | `xval ()` | `$fU` |
//! | `KSR.kx.get_fhost/gete_fhost/getw_fhost()` | `xval ()` | `$fd` |
//! | `KSR.kx.get_ftag/gete_ftag/getw_ftag()` | `xval ()` | `$ft` |
//! | `KSR.kx.get_turi/gete_turi/getw_turi()` | `xval ()` | `$tu` |
//! | `KSR.kx.get_tuser/gete_tuser/getw_tuser()` | `xval ()` | `$tU` |
//! | `KSR.kx.get_thost/gete_thost/getw_thost()` | `xval ()` | `$td` |
//! | `KSR.kx.get_ttag/gete_ttag/getw_ttag()` | `xval ()` | `$tt` |
//! | `KSR.kx.get_srcip/gete_srcip/getw_srcip()` | `xval ()` | `$si` |
//! | `KSR.kx.get_rcvip/gete_rcvip/getw_rcvip()` | `xval ()` | `$Ri` |
//! | `KSR.kx.get_srcport()` / `get_rcvport()` | `int ()` | `$sp $Rp` |
//! | `KSR.kx.get_srcuri()` | `xval ()` | `sip:$si:$sp` |
//! | `KSR.kx.get_method/gete_method/getw_method()` | `xval ()` | `$rm` |
//! | `KSR.kx.get_callid/gete_callid/getw_callid()` | `xval ()` | `$ci` |
//! | `KSR.kx.get_ua/gete_ua/getw_ua()` | `xval ()` | `$ua` |
//! | `KSR.kx.get_duri/gete_duri/getw_duri()` | `xval ()` | `$du` |
//! | `KSR.kx.get_proto/gete_proto/getw_proto()` | `xval ()` | `$pr` |
//! | `KSR.kx.get_body()` | `xval ()` | `$rb` |
//! | `KSR.kx.get_status()` | `int ()` | `$rs`, -1 for a request |
//! | `KSR.kx.get_cseq()` / `get_msglen()` | `int ()` | `$cs $ml` |
//! | `KSR.kx.get_timestamp()` | `int ()` | unix seconds |

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
