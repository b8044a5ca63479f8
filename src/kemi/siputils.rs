//! KSR.siputils: SIP message tests (Kamailio `siputils` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.siputils.has_totag()` | `int ()` | 1 the To header has a non-empty tag, -1 otherwise |
//! | `KSR.siputils.is_request()` | `int ()` | 1 request / -1 reply |
//! | `KSR.siputils.is_reply()` | `int ()` | 1 reply / -1 request |

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{MsgCtx, Shared};

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "has_totag",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(has_totag(m))))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_request",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(m.msg().is_request())))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_reply",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(!m.msg().is_request())))?,
    )?;
    ksr.set("siputils", t)?;
    Ok(())
}

fn rc(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

/// The To header carries a non-empty tag (an in-dialog request).
pub(crate) fn has_totag(m: &MsgCtx) -> bool {
    m.msg()
        .to()
        .ok()
        .and_then(|t| t.tag())
        .is_some_and(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, request, run};

    #[test]
    fn has_totag_and_kind() {
        let eng = engine(
            "function ksr_request_route() t = KSR.siputils.has_totag() q = KSR.siputils.is_request() r = KSR.siputils.is_reply() end",
        );
        for (tag, want) in [(Some("abc"), 1), (None, -1), (Some(""), -1)] {
            run(&eng, &request("BYE sip:bob@192.0.2.20 SIP/2.0", tag, &[]));
            assert_eq!(global_int(&eng, "t"), want, "{tag:?}");
            assert_eq!(global_int(&eng, "q"), 1);
            assert_eq!(global_int(&eng, "r"), -1);
        }
    }
}
