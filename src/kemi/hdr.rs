//! KSR.hdr: header manipulation (Kamailio `textops`/`textopsx`/`sl` helpers).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.hdr.append(txt)` | `int (str)` | 1 (txt is a full line, CRLF optional; an empty txt adds nothing); -1 beyond 1 024 edits / 128 KiB on the message (sipshard bound) |
//! | `KSR.hdr.insert(txt)` | `int (str)` | 1 (before the first header); -1 beyond the edit bound |
//! | `KSR.hdr.remove(name)` | `int (str)` | 1, whether or not a header was there (as Kamailio) |
//! | `KSR.hdr.rmappend(name, txt)` | `int (str, str)` | 1: remove `name`, then append txt; -1 beyond the edit bound |
//! | `KSR.hdr.rminsert(name, txt)` | `int (str, str)` | 1: remove `name`, then insert txt; -1 beyond the edit bound |
//! | `KSR.hdr.is_present(name)` | `int (str)` | 1 present / -1 absent |
//! | `KSR.hdr.get(name)` | `xval (str)` | first value or nil |
//! | `KSR.hdr.gete(name)` / `getw(name)` | `xval (str)` | first value, or `""` / `"<null>"` |
//! | `KSR.hdr.get_idx(name, idx)` | `xval (str, int)` | value of the idx-th header of that name (0 first, -1 last), or nil |
//! | `KSR.hdr.gete_idx(name, idx)` / `getw_idx(name, idx)` | `xval (str, int)` | same, `""` / `"<null>"` when absent |
//! | `KSR.hdr.match_content(name, op, value, which)` | `bool (str, str, str, str)` | see below |
//! | `KSR.hdr.append_to_reply(txt)` | `int (str)` | 1 / -1 (added to the next local reply) |
//!
//! `match_content` compares header values with `value`, case-insensitively:
//! op `eq` (equal), `sw` (starts with), `in` (contains), `ne` (true when the
//! lengths differ: what Kamailio 5.6 computes); `which` is `f` (first
//! header), `l` (last), `a` (all must match) or `o` (any one). Anything else,
//! or no such header, is false.
//! | `KSR.hdr.append_after(txt, name)` | `int (str, str)` | 1: added after the first `name` header (after the last header when there is none, as Kamailio); -1 beyond the edit bound |
//! | `KSR.hdr.insert_before(txt, name)` | `int (str, str)` | 1: added before the first `name` header (before the first header when there is none); -1 beyond the edit bound |

use std::rc::Rc;

use mlua::{Lua, Table};

use super::ffi::{self, Ret};
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

/// `KSR.hdr.match_content` on the values of one header name.
fn match_content(vals: &[Vec<u8>], op: &[u8], val: &[u8], which: &[u8]) -> bool {
    let one = |h: &Vec<u8>| -> bool {
        let h = h.to_ascii_lowercase();
        let v = val.to_ascii_lowercase();
        match op {
            b"eq" => h == v,
            b"ne" => h.len() != v.len(),
            b"sw" => h.starts_with(&v),
            b"in" => v.is_empty() || h.windows(v.len()).any(|w| w == &v[..]),
            _ => false,
        }
    };
    if vals.is_empty() || !matches!(op, b"eq" | b"ne" | b"sw" | b"in") {
        return false;
    }
    match which {
        b"f" => vals.first().is_some_and(one),
        b"l" => vals.last().is_some_and(one),
        b"a" => vals.iter().all(one),
        b"o" => vals.iter().any(one),
        _ => false,
    }
}

/// Index in `Parsed::headers` of the first header named `name`.
fn header_index(m: &super::MsgCtx, name: &[u8]) -> Option<usize> {
    let kind = HdrName::from_bytes(name);
    let buf = &m.buf[..m.len];
    m.parsed.headers.iter().position(|h| {
        if kind == HdrName::Other {
            h.name == HdrName::Other && h.name_span.get(buf).eq_ignore_ascii_case(name)
        } else {
            h.name == kind
        }
    })
}

/// Removes every header named `name` from the outgoing message.
pub(super) fn remove(s: &Shared, name: &[u8]) -> mlua::Result<usize> {
    s.with_msg(|m| {
        let kind = HdrName::from_bytes(name);
        let buf = &m.buf[..m.len];
        m.edits.remove_headers(&m.parsed, buf, kind, name)
    })
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let hdr = lua.create_table()?;
    let s = shared.clone();
    hdr.set(
        "append",
        lua.create_function(move |_, txt: mlua::String| {
            let txt = txt.as_bytes();
            let line = line_without_crlf(&txt);
            if line.is_empty() {
                return Ok(1); // nothing to add (Kamailio: 1)
            }
            s.with_msg(|m| edit_code(m, |e| e.append_header(line)))
        })?,
    )?;
    let s = shared.clone();
    hdr.set(
        "insert",
        lua.create_function(move |_, txt: mlua::String| {
            let txt = txt.as_bytes();
            let line = line_without_crlf(&txt);
            if line.is_empty() {
                return Ok(1);
            }
            s.with_msg(|m| edit_code(m, |e| e.insert_header_first(line)))
        })?,
    )?;
    ffi::fast!(lua, &hdr, "remove", shared, [1], |s, a| {
        remove(s, a.bytes(1)?)?;
        Ok(Ret::Int(1))
    })?;
    for (fname, first) in [("rmappend", false), ("rminsert", true)] {
        let s = shared.clone();
        hdr.set(
            fname,
            lua.create_function(move |_, (name, txt): (mlua::String, mlua::String)| {
                remove(&s, &name.as_bytes())?;
                let txt = txt.as_bytes();
                let line = line_without_crlf(&txt);
                if line.is_empty() {
                    return Ok(1);
                }
                s.with_msg(|m| {
                    edit_code(m, |e| {
                        if first {
                            e.insert_header_first(line)
                        } else {
                            e.append_header(line)
                        }
                    })
                })
            })?,
        )?;
    }
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
    for (fname, null) in [("gete", Some("")), ("getw", Some(super::pv::NULL_TEXT))] {
        let s = shared.clone();
        hdr.set(
            fname,
            lua.create_function(move |lua, name: mlua::String| {
                let name = name.as_bytes();
                let v = s.with_msg(|m| m.msg().header_by_name(&name).map(<[u8]>::to_vec))?;
                lua.create_string(v.as_deref().unwrap_or(null.unwrap_or("").as_bytes()))
            })?,
        )?;
    }
    for (fname, null) in [
        ("get_idx", None),
        ("gete_idx", Some("")),
        ("getw_idx", Some(super::pv::NULL_TEXT)),
    ] {
        let s = shared.clone();
        hdr.set(
            fname,
            lua.create_function(move |lua, (name, idx): (mlua::String, i64)| {
                let name = name.to_str()?;
                let v = super::pv::get_val(lua, &s, &format!("$(hdr({name})[{idx}])"))?;
                match (v, null) {
                    (super::pv::Val::Null, Some(t)) => {
                        Ok(mlua::Value::String(lua.create_string(t)?))
                    }
                    (v, _) => v.into_lua(lua),
                }
            })?,
        )?;
    }
    for (fname, after) in [("append_after", true), ("insert_before", false)] {
        let s = shared.clone();
        hdr.set(
            fname,
            lua.create_function(move |_, (txt, name): (mlua::String, mlua::String)| {
                let txt = txt.as_bytes();
                let line = line_without_crlf(&txt);
                let name = name.as_bytes();
                if line.is_empty() {
                    return Ok(1);
                }
                s.with_msg(|m| {
                    let at = header_index(m, &name);
                    edit_code(m, |e| match (at, after) {
                        (Some(idx), true) => e.insert_header_after(idx, line),
                        (Some(idx), false) => e.insert_header_before(idx, line),
                        (None, true) => e.append_header(line),
                        (None, false) => e.insert_header_first(line),
                    })
                })
            })?,
        )?;
    }
    let s = shared.clone();
    hdr.set(
        "match_content",
        lua.create_function(
            move |_,
                  (name, op, val, which): (
                mlua::String,
                mlua::String,
                mlua::String,
                mlua::String,
            )| {
                let (op, val, which) = (op.as_bytes(), val.as_bytes(), which.as_bytes());
                let vals = s.with_msg(|m| super::pv::header_values(m, &name.as_bytes()))?;
                Ok(match_content(&vals, &op, &val, &which))
            },
        )?,
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

/// Runs one header edit: 1, or -1 when the message already holds
/// `MAX_EDITS` edits / `MAX_EDIT_BYTES` (the edit is dropped and counted in
/// `core.edit_limit` when the route ends).
fn edit_code(m: &mut super::MsgCtx, f: impl FnOnce(&mut crate::sip::Edits)) -> i32 {
    let before = m.edits.refused();
    f(&mut m.edits);
    if m.edits.refused() > before {
        -1
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::match_content;
    use crate::kemi::testutil::{assembled, engine, request, run};

    /// Edits beyond `MAX_EDITS` are refused (-1), counted, and the message
    /// keeps the ones before.
    #[test]
    fn edits_beyond_the_limit_are_refused() {
        use crate::sip::MAX_EDITS;
        let script = r#"
function ksr_request_route()
    ok, refused = 0, 0
    for i = 1, 1100 do
        if KSR.hdr.append("X-N: " .. i .. "\r\n") == 1 then ok = ok + 1 else refused = refused + 1 end
    end
    big = KSR.hdr.insert("X-Big: " .. string.rep("b", 200000) .. "\r\n")
end
"#;
        let eng = engine(script);
        let (m, _) = run(
            &eng,
            &request("OPTIONS sip:a@example.com SIP/2.0", None, &[]),
        );
        let g = |n: &str| crate::kemi::testutil::global_int(&eng, n);
        assert_eq!(g("ok"), MAX_EDITS as i64);
        assert_eq!(g("refused"), 1100 - MAX_EDITS as i64);
        assert_eq!(g("big"), -1);
        let out = assembled(&m);
        assert!(out.contains(&format!("X-N: {MAX_EDITS}\r\n")));
        assert!(!out.contains(&format!("X-N: {}\r\n", MAX_EDITS + 1)));
        let c = eng.shared().counters.values();
        assert_eq!(
            c[crate::stats::Counter::EditLimit as usize],
            1100 - MAX_EDITS as u64 + 1
        );
    }

    #[test]
    fn match_content_as_kamailio() {
        let v = vec![b"m1".to_vec(), b"m2, m3".to_vec()];
        let m = |op: &str, val: &str, which: &str| {
            match_content(&v, op.as_bytes(), val.as_bytes(), which.as_bytes())
        };
        assert!(m("eq", "M1", "f"));
        assert!(!m("eq", "m1", "l"));
        assert!(m("eq", "m2, m3", "l"));
        assert!(m("eq", "m1", "o"));
        assert!(!m("eq", "m1", "a"));
        assert!(m("sw", "m", "a"));
        assert!(m("in", "3", "o"));
        assert!(!m("in", "3", "a"));
        // Kamailio 5.6's `ne` is "lengths differ"
        assert!(!m("ne", "m9", "a"));
        assert!(m("ne", "9", "a"));
        assert!(!m("re", "m", "o"));
        assert!(!m("eq", "m1", "0"));
        assert!(!match_content(&[], b"ne", b"x", b"o"));
    }

    #[test]
    fn remove_rmappend_and_getters() {
        let eng = engine(
            r#"function ksr_request_route()
                 r = table.concat({KSR.hdr.remove("X-Nope"), KSR.hdr.rmappend("X-A", "X-A: new\r\n"),
                   KSR.hdr.gete("X-Nope"), KSR.hdr.getw("X-Nope"), KSR.hdr.get_idx("X-A", -1),
                   KSR.hdr.gete_idx("X-A", 5)}, "|")
               end"#,
        );
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &["X-A: one", "X-A: two"],
        );
        let (m, _) = run(&eng, &msg);
        let r: String = eng.lua().globals().get("r").unwrap();
        assert_eq!(r, "1|1||<null>|two|");
        let out = assembled(&m);
        assert!(out.contains("X-A: new\r\n"), "{out}");
        assert!(!out.contains("X-A: one"), "{out}");
    }

    #[test]
    fn append_after_and_insert_before() {
        let eng = engine(
            r#"function ksr_request_route()
                 r = table.concat({KSR.hdr.append_after("X-AA: 1\r\n", "call-id"),
                   KSR.hdr.insert_before("X-IB: 1", "CSeq"), KSR.hdr.append_after("X-AB: 1", "Nope"),
                   KSR.hdr.insert_before("X-IC: 1", "Nope"), KSR.hdr.append("")}, "|")
               end"#,
        );
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let (m, _) = run(&eng, &msg);
        let r: String = eng.lua().globals().get("r").unwrap();
        assert_eq!(r, "1|1|1|1|1");
        let out = assembled(&m);
        let lines: Vec<&str> = out.split("\r\n").collect();
        let pos = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
        assert_eq!(pos("X-AA:"), pos("Call-ID:") + 1, "{out}");
        assert_eq!(pos("X-IB:") + 1, pos("CSeq:"), "{out}");
        assert_eq!(pos("X-IC:"), 1, "{out}");
        assert!(pos("X-AB:") > pos("CSeq:"), "{out}");
    }
}
