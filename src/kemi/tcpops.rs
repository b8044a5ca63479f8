//! KSR.tcpops: TCP/TLS connection state (Kamailio `tcpops` module, the
//! functions that need no event routes). `conid` is the connection id of
//! `$conid` / `KSR.kx.get_conid()`.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.tcpops.tcp_conid_alive(conid)` | `int (int)` | 1 the connection is up; -1 it does not exist, is closed or about to be |
//! | `KSR.tcpops.tcp_conid_state(conid)` | `int (int)` | 1 up; 3 an outgoing connection being set up (connect, TLS handshake); -1 does not exist or closed; -3 write error, about to close |
//! | `KSR.tcpops.tcp_close_connection()` | `int ()` | 1 the connection the message came on will be closed (by its shard, at once); -1 the message did not come over TCP/TLS |
//! | `KSR.tcpops.tcp_close_connection_id(conid)` | `int (int)` | 1 connection `conid` will be closed; -1 no such connection |
//!
//! Without `[tcp]` / `[tls]` every connection is unknown (-1).

use std::rc::Rc;

use mlua::{Lua, Table};

use super::Shared;
use crate::transport::conn::ConnState;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let state = |s: &Shared, id: i64| -> ConnState {
        match (s.services.tables.conns.get(), u64::try_from(id)) {
            (Some(c), Ok(id)) => c.state_of(id),
            _ => ConnState::Gone,
        }
    };
    let s = shared.clone();
    t.set(
        "tcp_conid_alive",
        lua.create_function(move |_, id: i64| {
            let st = state(&s, id);
            s.with_msg(|_| if st == ConnState::Up { 1 } else { -1 })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "tcp_conid_state",
        lua.create_function(move |_, id: i64| {
            let st = state(&s, id);
            s.with_msg(|_| match st {
                ConnState::Up => 1,
                ConnState::Connecting => 3,
                ConnState::Broken => -3,
                ConnState::Gone => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "tcp_close_connection",
        lua.create_function(move |_, ()| {
            let id = s.with_msg(|m| m.conn_id)?;
            Ok(close(&s, id))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "tcp_close_connection_id",
        lua.create_function(move |_, id: i64| {
            s.with_msg(|_| ())?;
            Ok(close(&s, u64::try_from(id).ok()))
        })?,
    )?;
    ksr.set("tcpops", t)?;
    Ok(())
}

fn close(s: &Shared, id: Option<u64>) -> i32 {
    match (s.services.tables.conns.get(), id) {
        (Some(c), Some(id)) if c.close_id(id) => 1,
        _ => -1,
    }
}
