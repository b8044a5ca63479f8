//! KSR.hdr: header manipulation (Kamailio `textops`/`textopsx`/`sl` helpers).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.hdr.append(txt)` | `int (str)` | 1 / -1 (txt is a full line, CRLF optional) |
//! | `KSR.hdr.insert(txt)` | `int (str)` | 1 / -1 (before the first header) |
//! | `KSR.hdr.remove(name)` | `int (str)` | number removed (>0) or -1 when none |
//! | `KSR.hdr.is_present(name)` | `int (str)` | 1 present / -1 absent |
//! | `KSR.hdr.get(name)` | `xval (str)` | first value or nil |
//! | `KSR.hdr.append_to_reply(txt)` | `int (str)` | 1 / -1 (added to the next local reply) |

use std::rc::Rc;

use mlua::{Lua, Table};

use super::Shared;
use crate::sip::HdrName;

/// Most bytes of headers a script may queue for one reply.
const MAX_REPLY_HEADERS_BYTES: usize = 8192;

fn line_without_crlf(b: &[u8]) -> &[u8] {
    let mut b = b;
    while let [rest @ .., b'\r' | b'\n'] = b {
        b = rest;
    }
    b
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let hdr = lua.create_table()?;
    let s = shared.clone();
    hdr.set(
        "append",
        lua.create_function(move |_, txt: mlua::String| {
            let txt = txt.as_bytes();
            let line = line_without_crlf(&txt);
            if line.is_empty() || !line.contains(&b':') {
                return Ok(-1);
            }
            s.with_msg(|m| m.edits.append_header(line))?;
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "insert",
        lua.create_function(move |_, txt: mlua::String| {
            let txt = txt.as_bytes();
            let line = line_without_crlf(&txt);
            if line.is_empty() || !line.contains(&b':') {
                return Ok(-1);
            }
            s.with_msg(|m| m.edits.insert_header_first(line))?;
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "remove",
        lua.create_function(move |_, name: mlua::String| {
            let name = name.as_bytes();
            let n = s.with_msg(|m| {
                let kind = HdrName::from_bytes(&name);
                let buf = &m.buf[..m.len];
                m.edits.remove_headers(&m.parsed, buf, kind, &name)
            })?;
            Ok(if n > 0 { n as i64 } else { -1 })
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "is_present",
        lua.create_function(move |_, name: mlua::String| {
            let name = name.as_bytes();
            s.with_msg(|m| {
                if m.msg().header_by_name(&name).is_some() {
                    1
                } else {
                    -1
                }
            })
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "get",
        lua.create_function(move |lua, name: mlua::String| {
            let name = name.as_bytes();
            s.with_msg(|m| super::lua_opt_str(lua, m.msg().header_by_name(&name)))?
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "append_to_reply",
        lua.create_function(move |_, txt: mlua::String| {
            let txt = txt.as_bytes();
            let line = line_without_crlf(&txt);
            if line.is_empty() {
                return Ok(-1);
            }
            s.with_msg(|m| {
                if m.reply_headers.len() + line.len() + 2 > MAX_REPLY_HEADERS_BYTES {
                    return -1;
                }
                m.reply_headers.extend_from_slice(line);
                m.reply_headers.extend_from_slice(b"\r\n");
                1
            })
        })?,
    )?;
    ksr.set("hdr", hdr)?;
    Ok(())
}
