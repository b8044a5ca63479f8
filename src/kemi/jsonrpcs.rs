//! KSR.jsonrpcs: control-plane methods run from the route (Kamailio
//! `jsonrpcs` module's `jsonrpc_exec`).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.jsonrpcs.exec(cmd)` | `int (str)` | 1 the method ran (its answer, success or error, is in `$jsonrpl(code/text/body)`); -1 not JSON, no `"jsonrpc": "2.0"`, the control interface is off, its queue is full, or no answer within 5 s |
//! | `KSR.jsonrpcs.execx(cmd)` | `int (str)` | as exec |
//! | `KSR.jsonrpcs.response()` | `xval ()` | the last answer's body; `""` before any |
//! | `KSR.jsonrpcs.dispatch()` | `int ()` | -1: sipshard serves JSON-RPC on its control interface, not over SIP/xhttp |
//!
//! `cmd` is a JSON-RPC 2.0 document (`{"jsonrpc": "2.0", "method":
//! "core.version", "id": 1}`), or, a sipshard shortcut, a bare method name
//! (`core.version`). It runs in-process on the control thread through the
//! same method table as `sipshard ctl`; the route suspends meanwhile (a
//! method that asks every shard, like `stats.fetch`, is answered by this
//! shard's loop too). `$jsonrpl(code)` is 200 with `$jsonrpl(text)` `OK`
//! for a result, else the error's code and message; `$jsonrpl(body)` is
//! the whole JSON-RPC answer.

use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use tokio::sync::{mpsc, oneshot};

use super::pv::Val;
use super::Shared;
use crate::stats::Counter;

/// Longest request document accepted.
const CMD_BYTES_MAX: usize = 64 * 1024;
/// Longest wait for the control thread.
const EXEC_TIMEOUT: Duration = Duration::from_secs(5);

/// One request: the JSON-RPC document and where its answer goes.
pub type ScriptRpcRequest = (Vec<u8>, oneshot::Sender<Vec<u8>>);

/// The shards' way to the control plane's method table (set once by
/// `rpc::spawn`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ScriptRpc {
    tx: mpsc::Sender<ScriptRpcRequest>,
}

impl ScriptRpc {
    /// A handle and the queue (of `depth` requests) the control plane serves.
    pub fn channel(depth: usize) -> (ScriptRpc, mpsc::Receiver<ScriptRpcRequest>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (ScriptRpc { tx }, rx)
    }
}

/// The last answer (`$jsonrpl`).
#[derive(Clone, Debug, Default)]
pub struct JsonRpl {
    pub code: i64,
    pub text: Option<String>,
    pub body: Option<String>,
    /// Unix second of the last failure logged (one line a second at most).
    log_s: u64,
}

/// Counts a failed exec and logs it, once a second at most.
fn fail(s: &Shared, why: &str) -> i32 {
    s.counters.incr(Counter::JsonrpcsFailed);
    let now = super::services::unix_now_s();
    let mut r = s.jsonrpl.borrow_mut();
    if r.log_s != now {
        r.log_s = now;
        tracing::warn!(shard = s.shard_id, "jsonrpcs.exec: {why}");
    }
    -1
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    for name in ["exec", "execx"] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_async_function(move |_, cmd: mlua::String| {
                let s = s.clone();
                async move { Ok(exec(&s, &cmd.as_bytes()).await) }
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "response",
        lua.create_function(move |lua, ()| {
            let body = s.jsonrpl.borrow().body.clone().unwrap_or_default();
            Ok(Value::String(lua.create_string(body)?))
        })?,
    )?;
    t.set("dispatch", lua.create_function(|_, ()| Ok(-1))?)?;
    ksr.set("jsonrpcs", t)
}

/// A full document, or a bare method name made into one.
fn request_document(cmd: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(cmd).ok()?.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if v.get("jsonrpc").and_then(|j| j.as_str()) != Some("2.0") {
            return None;
        }
        let mut v = v;
        // Kamailio answers every exec; a notification (no id) would get none.
        if let Some(o) = v.as_object_mut() {
            o.entry("id").or_insert(serde_json::json!(1));
        }
        return serde_json::to_vec(&v).ok();
    }
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    valid.then(|| {
        serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "method": text, "id": 1}))
            .unwrap_or_default()
    })
}

/// code, text from an answer document.
fn outcome(body: &[u8]) -> (i64, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (500, Some("Internal Server Error".into()));
    };
    match v.get("error") {
        Some(e) => (
            e.get("code").and_then(|c| c.as_i64()).unwrap_or(500),
            e.get("message").and_then(|m| m.as_str()).map(str::to_owned),
        ),
        None => (200, Some("OK".into())),
    }
}

async fn exec(s: &Rc<Shared>, cmd: &[u8]) -> i32 {
    s.counters.incr(Counter::JsonrpcsExec);
    let doc = if cmd.len() > CMD_BYTES_MAX {
        None
    } else {
        request_document(cmd)
    };
    let Some(doc) = doc else {
        return fail(s, "not a JSON-RPC 2.0 document");
    };
    let Some(rpc) = s.services.tables.rpc_exec.get() else {
        return fail(s, "the control interface is off");
    };
    let (reply, rx) = oneshot::channel();
    if rpc.tx.try_send((doc, reply)).is_err() {
        return fail(s, "the control queue (64) is full");
    }
    let body = match crate::exec::timeout(EXEC_TIMEOUT, rx).await {
        Ok(Ok(body)) => body,
        _ => return fail(s, "no answer within 5 s"),
    };
    let (code, text) = outcome(&body);
    let mut r = s.jsonrpl.borrow_mut();
    r.code = code;
    r.text = text;
    r.body = Some(String::from_utf8_lossy(&body).into_owned());
    1
}

/// `$jsonrpl(code|text|body)`.
pub(super) fn pv_jsonrpl(s: &Shared, key: &str) -> Val {
    let r = s.jsonrpl.borrow();
    match key.trim() {
        "code" => Val::Int(r.code),
        "text" => r.text.as_ref().map_or(Val::Null, |t| Val::s(t.as_bytes())),
        "body" => r.body.as_ref().map_or(Val::Null, |t| Val::s(t.as_bytes())),
        _ => Val::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_method_names() {
        let d = request_document(b"core.version").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["method"], "core.version");
        assert_eq!(v["id"], 1);
        let d = request_document(br#"{"jsonrpc":"2.0","method":"a.b"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["id"], 1);
        assert!(request_document(br#"{"method":"a.b"}"#).is_none());
        assert!(request_document(b"core version").is_none());
        assert!(request_document(b"{not json").is_none());
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome(br#"{"jsonrpc":"2.0","result":{},"id":1}"#),
            (200, Some("OK".into()))
        );
        assert_eq!(
            outcome(
                br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}"#
            ),
            (-32601, Some("Method not found".into()))
        );
    }
}
