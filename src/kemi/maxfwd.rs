//! KSR.maxfwd: Max-Forwards processing (Kamailio `maxfwd` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.maxfwd.process_maxfwd(limit)` | `int (int)` | 2 header absent, `Max-Forwards: limit` added; 1 decremented; -1 value is 0 (answer 483); -2 error (bad header value, `limit` outside 1..255) |
//! | `KSR.maxfwd.is_maxfwd_lt(max)` | `int (int)` | 1 value (after `process_maxfwd`, if called) < `max`; -1 >= `max`; -2 no header; -3 bad header value |
//!
//! As Kamailio's `max_limit` parameter (default 70), a decremented value
//! above 70 is lowered to 70. A second `process_maxfwd` call does not
//! decrement again; it returns 2 or 1 as the first did.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{ffi, MsgCtx, Shared};
use crate::sip::HdrName;

/// Kamailio's `maxfwd` `max_limit` default.
pub(crate) const MAX_LIMIT: u32 = 70;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    ffi::fast!(lua, &t, "process_maxfwd", shared, [], |s, a| {
        let limit = a.int(1)?;
        Ok(s.with_msg(|m| process_maxfwd(m, limit))?.into())
    })?;
    ffi::fast!(lua, &t, "is_maxfwd_lt", shared, [], |s, a| {
        let max = a.int(1)?;
        Ok(s.with_msg(|m| is_maxfwd_lt(m, max))?.into())
    })?;
    ksr.set("maxfwd", t)?;
    Ok(())
}

/// What `process_maxfwd` does with the received value (`None`: no header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaxFwd {
    /// Add `Max-Forwards: n`.
    Add(u32),
    /// Replace the value with `n`.
    Set(u32),
    /// The value is 0.
    Exhausted,
}

/// The decision of `process_maxfwd(limit)` for a received value.
pub(crate) fn decide(received: Option<u32>, limit: u32) -> MaxFwd {
    match received {
        None => MaxFwd::Add(limit),
        Some(0) => MaxFwd::Exhausted,
        Some(v) => MaxFwd::Set((v - 1).min(MAX_LIMIT)),
    }
}

pub(super) fn process_maxfwd(m: &mut MsgCtx, limit: i64) -> i32 {
    let msg = m.msg();
    if !msg.is_request() {
        return -2;
    }
    let Ok(limit) = u32::try_from(limit) else {
        return -2;
    };
    if !(1..=255).contains(&limit) {
        return -2;
    }
    let Ok(received) = msg.max_forwards() else {
        return -2;
    };
    if m.maxfwd.is_some() {
        return if received.is_none() { 2 } else { 1 };
    }
    match decide(received, limit) {
        MaxFwd::Add(n) => {
            m.edits
                .append_header(format!("Max-Forwards: {n}").as_bytes());
            m.maxfwd = Some(n);
            2
        }
        MaxFwd::Set(n) => {
            if let Some(idx) = m.parsed.first(HdrName::MaxForwards) {
                m.edits.replace_header_value(idx, n.to_string().as_bytes());
            }
            m.maxfwd = Some(n);
            1
        }
        MaxFwd::Exhausted => -1,
    }
}

fn is_maxfwd_lt(m: &MsgCtx, max: i64) -> i32 {
    let v = match m.maxfwd {
        Some(v) => v,
        None => match m.msg().max_forwards() {
            Ok(Some(v)) => v,
            Ok(None) => return -2,
            Err(_) => return -3,
        },
    };
    if i64::from(v) < max {
        1
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assembled, engine, global_int, request, run};
    use super::*;

    #[test]
    fn decisions() {
        for (received, limit, want) in [
            (None, 10, MaxFwd::Add(10)),
            (Some(0), 10, MaxFwd::Exhausted),
            (Some(1), 10, MaxFwd::Set(0)),
            (Some(70), 10, MaxFwd::Set(69)),
            (Some(71), 10, MaxFwd::Set(70)),
            (Some(200), 10, MaxFwd::Set(70)),
        ] {
            assert_eq!(decide(received, limit), want, "{received:?}");
        }
    }

    #[test]
    fn ksr_process_maxfwd() {
        let eng = engine(
            r#"
function ksr_request_route()
    lt_before = KSR.maxfwd.is_maxfwd_lt(5)
    rc = KSR.maxfwd.process_maxfwd(10)
    rc2 = KSR.maxfwd.process_maxfwd(10)
    lt = KSR.maxfwd.is_maxfwd_lt(5)
end
"#,
        );
        // Received value, is_maxfwd_lt(5) before, process_maxfwd(10), is_maxfwd_lt(5) after, header out.
        type Case<'a> = (Option<&'a str>, i64, i64, i64, Option<&'a str>);
        let cases: &[Case] = &[
            (None, -2, 2, -1, Some("Max-Forwards: 10\r\n")),
            (Some("0"), 1, -1, 1, Some("Max-Forwards: 0\r\n")),
            (Some("5"), -1, 1, 1, Some("Max-Forwards: 4\r\n")),
            (Some("70"), -1, 1, -1, Some("Max-Forwards: 69\r\n")),
            (Some("200"), -1, 1, -1, Some("Max-Forwards: 70\r\n")),
        ];
        for &(value, lt_before, rc, lt, want) in cases {
            let h = value.map(|v| format!("Max-Forwards: {v}"));
            let extra: Vec<&str> = h.iter().map(String::as_str).collect();
            let (m, _) = run(
                &eng,
                &request("INVITE sip:bob@example.com SIP/2.0", None, &extra),
            );
            assert_eq!(global_int(&eng, "lt_before"), lt_before, "{value:?}");
            assert_eq!(global_int(&eng, "rc"), rc, "{value:?}");
            let rc2 = if rc == -1 { -1 } else { rc };
            assert_eq!(global_int(&eng, "rc2"), rc2, "{value:?}");
            assert_eq!(global_int(&eng, "lt"), lt, "{value:?}");
            let out = assembled(&m);
            assert_eq!(out.matches("Max-Forwards").count(), 1, "{out}");
            assert!(out.contains(want.unwrap()), "{out}");
        }
    }
}
