//! JSON-RPC methods of the shared-state KSR modules (htable, pike,
//! permissions), with Kamailio's names, and of sipshard's `[flood]` table. They read and change the tables
//! every shard shares directly (each call locks one stripe at a time), so no
//! shard is asked.
//!
//! | method | params | result |
//! |---|---|---|
//! | `htable.listTables` | – | `[{"name", "dbtable", "dbmode", "expire", "updateexpire", "size", "dmqreplicate": 0, "items"}]` |
//! | `htable.stats` | – | `[{"name", "slots", "all", "min", "max"}]` (stripes as slots) |
//! | `htable.dump` | table | `[{"name", "value", "expires"?}]` sorted by name, at most 100000 |
//! | `htable.get` | table, key | `{"item": {"name", "value"}}`; error 404 when absent |
//! | `htable.sets` | table, key, value | `"Ok. Key set to new value."` |
//! | `htable.seti` | table, key, integer | as sets |
//! | `htable.setex` | table, key, expire | `"Ok. Key expire set to new value."` |
//! | `htable.setxs` | table, key, value, expire | as sets |
//! | `htable.setxi` | table, key, integer, expire | as sets |
//! | `htable.reload` | table | `"Ok. Table reloaded."`: the table emptied and read again from its `dbtable` |
//! | `htable.delete` | table, key | `"Ok. Key deleted."` |
//! | `htable.flush` | table | `"Ok. Table flushed."` |
//! | `pike.top` | – or `"ALL"`/`"HOT"`/`"WARM"` | `[{"ip_addr", "leaf_hits_prev", "leaf_hits_curr", "expires", "status"}]` (default HOT: blocked IPs) |
//! | `flood.list` | – or `"BANNED"`/`"ALL"` | `[{"ip_addr", "banned", "expires", "auth_failures", "dropped"}]` (default BANNED; ALL adds sources with failed authentications in the window or requests dropped; `expires` is the Unix second the ban ends) |
//! | `flood.unban` | ip | `"Ok. Source unbanned."`; error 404 when it was not banned |
//! | `permissions.addressReload` | – | `"Ok. Reload successful."` (reads the address table again) |
//! | `permissions.addressDump` | – | `[{"grp", "ip_addr", "mask", "port", "tag"}]` |
//! | `dispatcher.list` | – | `{"NRSETS", "RECORDS": [{"SET": {"ID", "TARGETS": [{"DEST": {"URI", "FLAGS", "PRIORITY", "ATTRS"? (when it has attrs): {"BODY", "DUID", "MAXLOAD", "WEIGHT", "RWEIGHT", "SOCKET", "SOCKNAME", "OBPROXY"}, "LATENCY"? (with `ds_ping_latency_stats`): {"AVG", "STD", "EST", "MAX", "TIMEOUT"}}}]}}]}` (FLAGS: `A`/`I`/`T`/`D` then `P` probing or `X`) |
//! | `dispatcher.reload` | – | `"Ok. Dispatcher successfully reloaded."` (file or database read again; state of kept destinations kept) |
//! | `dispatcher.set_state` | state (`a`/`i`/`t`/`d`, `p` for probing), group, address or `all` | `"Ok. Dispatcher state updated."`; error 404 when no such destination |
//! | `dispatcher.ping_active` | – or 0/1 | `{"OldPingState", "NewPingState"}` (or `{"PingState"}`): keepalives on or off |

#![forbid(unsafe_code)]

use std::sync::Arc;

use serde_json::{json, Value};

use crate::kemi::htable::{item_json, HtValue, Htable, DUMP_MAX};
use crate::kemi::services::{unix_now_ms, unix_now_s};
use crate::rpc::jsonrpc::{MethodError, Params, Registry};
use crate::rpc::RpcContext;
use crate::shard::control::ModulesCtl;

/// Most entries `pike.top` lists.
pub const PIKE_TOP_MAX: usize = 10_000;

pub(crate) fn register(r: &mut Registry) {
    r.register("htable.listTables", list_tables)
        .register("htable.stats", stats)
        .register("htable.dump", dump)
        .register("htable.get", get)
        .register("htable.sets", sets)
        .register("htable.seti", seti)
        .register("htable.setex", setex)
        .register("htable.setxs", setxs)
        .register("htable.setxi", setxi)
        .register("htable.reload", reload)
        .register("htable.delete", delete)
        .register("htable.flush", flush)
        .register("pike.top", pike_top)
        .register("flood.list", flood_list)
        .register("flood.unban", flood_unban)
        .register("permissions.addressReload", address_reload)
        .register("permissions.addressDump", address_dump)
        .register("dispatcher.list", ds_list)
        .register("dispatcher.reload", ds_reload)
        .register("dispatcher.set_state", ds_set_state)
        .register("dispatcher.ping_active", ds_ping_active);
}

fn modules(ctx: &RpcContext) -> Result<&Arc<ModulesCtl>, MethodError> {
    ctx.ctl
        .modules()
        .ok_or_else(|| MethodError::Internal("no shards are running".into()))
}

/// A string param; numbers are taken as their text (a key `15`).
fn text(params: &Params, pos: usize, name: &str) -> Result<String, MethodError> {
    match params.value(pos, name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        None | Some(Value::Null) => {
            Err(MethodError::InvalidParams(format!("missing param {name}")))
        }
        Some(_) => Err(MethodError::InvalidParams(format!(
            "param {name} must be a string"
        ))),
    }
}

fn int(params: &Params, pos: usize, name: &str) -> Result<i64, MethodError> {
    match params.value(pos, name) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| MethodError::InvalidParams(format!("param {name} must be an integer")))
}

fn table<'a>(m: &'a ModulesCtl, params: &Params) -> Result<&'a Htable, MethodError> {
    let name = params.str(0, "htable")?;
    m.tables
        .htable
        .table(name)
        .ok_or_else(|| MethodError::NotFound(format!("htable not found: {name}")))
}

async fn list_tables(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let list: Vec<Value> = m
        .tables
        .htable
        .tables()
        .iter()
        .map(|t| {
            json!({
                "name": t.def.name,
                "dbtable": t.def.dbtable,
                "dbmode": t.def.dbmode,
                "expire": t.def.autoexpire,
                "updateexpire": u8::from(t.def.updateexpire),
                "size": 1u64 << t.def.size.clamp(2, 14),
                "dmqreplicate": 0,
                "items": t.len(),
                "max_items": t.def.max_items,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

async fn stats(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let list: Vec<Value> = m
        .tables
        .htable
        .tables()
        .iter()
        .map(|t| {
            json!({
                "name": t.def.name,
                "slots": 1u64 << t.def.size.clamp(2, 14),
                "all": t.len(),
                "full_errors": t.full_errors.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    Ok(Value::Array(list))
}

async fn dump(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let t = table(m, &params)?;
    let (items, _truncated) = t.dump(unix_now_s(), DUMP_MAX);
    Ok(Value::Array(
        items.iter().map(|(k, v, e)| item_json(k, v, *e)).collect(),
    ))
}

async fn get(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(2)?;
    let m = modules(&ctx)?;
    let t = table(m, &params)?;
    let key = text(&params, 1, "key")?;
    match t.get_raw(&key, unix_now_s()) {
        Some(v) => Ok(json!({"item": item_json(&key, &v, 0)})),
        None => Err(MethodError::NotFound(
            "Key name doesn't exist in htable.".into(),
        )),
    }
}

fn set(ctx: &RpcContext, params: &Params, int_value: bool) -> Result<Value, MethodError> {
    set_ex(ctx, params, int_value, false)
}

fn set_ex(
    ctx: &RpcContext,
    params: &Params,
    int_value: bool,
    with_expire: bool,
) -> Result<Value, MethodError> {
    params.at_most(if with_expire { 4 } else { 3 })?;
    let m = modules(ctx)?;
    let t = table(m, params)?;
    let key = text(params, 1, "key")?;
    let value = if int_value {
        HtValue::Int(int(params, 2, "value")?)
    } else {
        HtValue::Str(text(params, 2, "value")?)
    };
    let exv = if with_expire {
        int(params, 3, "expire")?
    } else {
        0
    };
    if !t.set(&key, value, exv, unix_now_s()) {
        return Err(MethodError::Internal(
            "Unable to set value (table full or key too long)".into(),
        ));
    }
    Ok(json!("Ok. Key set to new value."))
}

async fn sets(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    set(&ctx, &params, false)
}

async fn seti(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    set(&ctx, &params, true)
}

async fn setxs(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    set_ex(&ctx, &params, false, true)
}

async fn setxi(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    set_ex(&ctx, &params, true, true)
}

async fn reload(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let t = table(m, &params)?;
    if t.def.dbtable.is_empty() {
        return Err(MethodError::InvalidParams(format!(
            "htable {} has no dbtable",
            t.def.name
        )));
    }
    let Some(db) = m.db.as_ref() else {
        return Err(MethodError::Internal("no database".into()));
    };
    let rows = db
        .htable_load(&t.def.dbtable, t.def.max_items)
        .map_err(|e| MethodError::Internal(format!("Reload failed: {e}")))?
        .await
        .map_err(|e| MethodError::Internal(format!("Reload failed: {e}")))?;
    t.reset();
    let (loaded, skipped) = t.load_rows(&rows, unix_now_s());
    tracing::info!(table = %t.def.name, loaded, skipped, "htable reloaded from the database");
    Ok(json!("Ok. Table reloaded."))
}

async fn setex(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(3)?;
    let m = modules(&ctx)?;
    let t = table(m, &params)?;
    let key = text(&params, 1, "key")?;
    t.set_expire(&key, int(&params, 2, "expire")?, unix_now_s());
    Ok(json!("Ok. Key expire set to new value."))
}

async fn delete(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(2)?;
    let m = modules(&ctx)?;
    let t = table(m, &params)?;
    t.remove(&text(&params, 1, "key")?);
    Ok(json!("Ok. Key deleted."))
}

async fn flush(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    table(m, &params)?.reset();
    Ok(json!("Ok. Table flushed."))
}

async fn pike_top(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let filter = params.opt_str(0, "filter")?.unwrap_or("HOT");
    let hot_only = match filter.to_ascii_uppercase().as_str() {
        "HOT" => true,
        "ALL" | "WARM" => false,
        _ => {
            return Err(MethodError::InvalidParams(
                "filter must be ALL, HOT or WARM".into(),
            ))
        }
    };
    let list: Vec<Value> = m
        .tables
        .pike
        .top(hot_only, unix_now_s(), PIKE_TOP_MAX)
        .iter()
        .map(|e| {
            json!({
                "ip_addr": e.ip.to_string(),
                "leaf_hits_prev": e.hits_prev,
                "leaf_hits_curr": e.hits_curr,
                "expires": e.expires,
                "status": if e.blocked { "HOT" } else { "WARM" },
            })
        })
        .collect();
    Ok(Value::Array(list))
}

async fn flood_list(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let filter = params.opt_str(0, "filter")?.unwrap_or("BANNED");
    let banned_only = match filter.to_ascii_uppercase().as_str() {
        "BANNED" => true,
        "ALL" => false,
        _ => {
            return Err(MethodError::InvalidParams(
                "filter must be BANNED or ALL".into(),
            ))
        }
    };
    let list: Vec<Value> = m
        .tables
        .flood
        .list(banned_only, unix_now_ms(), PIKE_TOP_MAX)
        .iter()
        .map(|e| {
            json!({
                "ip_addr": e.ip.to_string(),
                "banned": e.banned_until_s.is_some(),
                "expires": e.banned_until_s,
                "auth_failures": e.auth_failures,
                "dropped": e.dropped,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

async fn flood_unban(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let ip = text(&params, 0, "ip")?;
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| MethodError::InvalidParams(format!("not an IP address: {ip}")))?;
    if m.tables.flood.unban(ip, unix_now_ms()) {
        tracing::info!(src = %ip, "flood ban lifted by the control interface");
        Ok(json!("Ok. Source unbanned."))
    } else {
        Err(MethodError::NotFound(format!("{ip} is not banned")))
    }
}

async fn address_reload(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    if !m.tables.permissions_enabled {
        return Err(MethodError::Internal("permissions is not enabled".into()));
    }
    let Some(db) = m.db.as_ref() else {
        return Err(MethodError::Internal("no database".into()));
    };
    match m.tables.reload_addresses(db, &m.permissions).await {
        Ok((n, skipped)) => {
            tracing::info!(entries = n, skipped, "permissions address table reloaded");
            Ok(json!("Ok. Reload successful."))
        }
        Err(e) => Err(MethodError::Internal(format!("Reload failed: {e}"))),
    }
}

async fn address_dump(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let set = m.tables.permissions.current();
    Ok(Value::Array(
        set.entries()
            .iter()
            .map(|e| {
                json!({
                    "grp": e.grp,
                    "ip_addr": e.ip_addr,
                    "mask": e.mask,
                    "port": e.port,
                    "tag": e.tag,
                })
            })
            .collect(),
    ))
}

fn dispatcher(m: &ModulesCtl) -> Result<&Arc<crate::dispatcher::Dispatcher>, MethodError> {
    m.tables
        .dispatcher
        .as_ref()
        .ok_or_else(|| MethodError::Internal("dispatcher is not loaded".into()))
}

async fn ds_list(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let ds = dispatcher(m)?;
    let stats = m.tables.dispatcher_cfg.ds_ping_latency_stats != 0;
    let list = ds.list();
    let records: Vec<Value> = list
        .sets
        .iter()
        .map(|set| {
            let targets: Vec<Value> = set
                .dests
                .iter()
                .map(|d| {
                    let a = &d.attrs;
                    let mut dest = json!({
                        "URI": d.uri,
                        "FLAGS": d.flags_text(),
                        "PRIORITY": d.priority,
                    });
                    // Kamailio 5.6 lists ATTRS only for a destination with attrs.
                    if !a.body.is_empty() {
                        dest["ATTRS"] = json!({
                            "BODY": a.body,
                            "DUID": a.duid,
                            "MAXLOAD": a.maxload,
                            "WEIGHT": a.weight,
                            "RWEIGHT": a.rweight,
                            "SOCKET": a.socket,
                            "SOCKNAME": a.sockname,
                            "OBPROXY": a.obproxy,
                        });
                    }
                    if stats {
                        let l = d.latency.view();
                        dest["LATENCY"] = json!({
                            "AVG": l.avg,
                            "STD": l.std,
                            "EST": l.est,
                            "MAX": l.max_ms,
                            "TIMEOUT": l.timeouts,
                        });
                    }
                    json!({ "DEST": dest })
                })
                .collect();
            json!({ "SET": { "ID": set.id, "TARGETS": targets } })
        })
        .collect();
    Ok(json!({ "NRSETS": list.sets.len(), "RECORDS": records }))
}

async fn ds_reload(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let ds = dispatcher(m)?;
    match crate::kemi::dispatcher::load(ds, &m.tables.dispatcher_cfg, m.db.as_ref()).await {
        Ok((n, skipped)) => {
            tracing::info!(destinations = n, skipped, "dispatcher reloaded");
            Ok(json!("Ok. Dispatcher successfully reloaded."))
        }
        Err(e) => Err(MethodError::Internal(format!("Reload failed: {e}"))),
    }
}

async fn ds_set_state(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(3)?;
    let m = modules(&ctx)?;
    let ds = dispatcher(m)?;
    let state = text(&params, 0, "state")?;
    let group = int(&params, 1, "group")?;
    let address = text(&params, 2, "address")?;
    let Some(st) = crate::dispatcher::list::parse_state(&state) else {
        return Err(MethodError::InvalidParams(format!("bad state {state:?}")));
    };
    let list = ds.list();
    let set = i32::try_from(group)
        .ok()
        .and_then(|g| list.set(g))
        .ok_or_else(|| MethodError::NotFound(format!("group not found: {group}")))?;
    if address == "all" {
        for d in &set.dests {
            d.set_state(st);
        }
    } else {
        let i = set
            .find(&address)
            .ok_or_else(|| MethodError::NotFound(format!("destination not found: {address}")))?;
        if let Some(d) = set.dests.get(i) {
            d.set_state(st);
        }
    }
    Ok(json!("Ok. Dispatcher state updated."))
}

async fn ds_ping_active(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(1)?;
    let m = modules(&ctx)?;
    let ds = dispatcher(m)?;
    let mut p = ds.prober();
    if params.value(0, "state").is_none() {
        return Ok(json!({ "PingState": i32::from(p.active) }));
    }
    let new = int(&params, 0, "state")?;
    let old = i32::from(p.active);
    p.active = new != 0;
    Ok(json!({ "OldPingState": old, "NewPingState": i32::from(p.active) }))
}
