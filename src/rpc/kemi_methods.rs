//! Script methods: reload and the KSR export list.
//!
//! | method | params | result |
//! |---|---|---|
//! | `kemi.reload` / `app_lua.reload` | – (or Kamailio's script id `0`) | `{"script", "shards", "reloads", "ms"}`; error -32603 with Lua's message when the new script does not load (the old one keeps running) |
//! | `kemi.status` | – | `{"script", "reloads", "reloads_failed", "last_reload" (unix s or null), "last_error"}` |
//! | `app_lua.list` | – | `[{"id": 0, "path": script}]` |
//! | `app_lua.api_list` | – | `{"msize": n, "methods": [{"ret", "module", "name", "params"}]}` (as Kamailio) |

#![forbid(unsafe_code)]

use std::sync::Arc;

use serde_json::{json, Value};

use crate::rpc::jsonrpc::{MethodError, Params, Registry};
use crate::rpc::RpcContext;
use crate::shard::control::ScriptReload;

pub(crate) fn register(r: &mut Registry) {
    r.register("kemi.reload", reload)
        .register("app_lua.reload", reload)
        .register("kemi.status", status)
        .register("app_lua.list", list)
        .register("app_lua.api_list", api_list);
}

/// `kemi.reloads` and `kemi.reloads_failed` for `stats.fetch`.
pub(crate) fn reload_stats(r: &dyn ScriptReload) -> Vec<(String, i128)> {
    let st = r.status();
    ["reloads", "reloads_failed"]
        .iter()
        .map(|k| {
            (
                format!("kemi.{k}"),
                i128::from(st[*k].as_u64().unwrap_or(0)),
            )
        })
        .collect()
}

fn reloader(ctx: &RpcContext) -> Result<Arc<dyn ScriptReload>, MethodError> {
    ctx.ctl
        .reloader()
        .ok_or_else(|| MethodError::Internal("this server cannot reload its script".into()))
}

async fn reload(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    // Kamailio's optional script id: sipshard has one script, id 0.
    match params.value(0, "id") {
        None => {}
        Some(v) if v.as_i64() == Some(0) || v.as_str() == Some("0") => {}
        Some(v) => return Err(MethodError::InvalidParams(format!("no script with id {v}"))),
    }
    let r = reloader(&ctx)?;
    // Blocking (builds a VM, waits for every shard): off the runtime thread.
    tokio::task::spawn_blocking(move || r.reload("rpc"))
        .await
        .map_err(|e| MethodError::Internal(e.to_string()))?
        .map_err(MethodError::Internal)
}

async fn status(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    Ok(reloader(&ctx)?.status())
}

async fn list(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let st = reloader(&ctx)?.status();
    Ok(json!([{"id": 0, "path": st["script"]}]))
}

async fn api_list(_ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    tokio::task::spawn_blocking(|| {
        crate::kemi::exports::exports().map(|l| crate::kemi::exports::api_list_json(&l))
    })
    .await
    .map_err(|e| MethodError::Internal(e.to_string()))?
    .map_err(MethodError::Internal)
}
