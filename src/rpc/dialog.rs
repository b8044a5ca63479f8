//! JSON-RPC methods of the dialog module, with Kamailio's names. They read
//! and change the dialog store every shard shares (one stripe locked at a
//! time); BYEs that `dlg.end_dlg` builds are queued for the next shard
//! timer pass (at most 1 s), which sends them from the SIP socket and
//! retransmits them until their final reply.
//!
//! | method | params | result |
//! |---|---|---|
//! | `dlg.list` | – | `[{"h_entry", "h_id", "ref", "call-id", "from_uri", "to_uri", "state", "start_ts", "init_ts", "timeout", "lifetime", "dflags", "sflags", "caller": {"tag", "contact", "cseq", "route_set", "socket"}, "callee": {...}, "profiles": [{name: value}], "variables": [{name: value}]}]`, at most 100000 |
//! | `dlg.end_dlg` | h_entry, h_id | `"Ok."`: BYE to both sides of a confirmed dialog (an early one just ends); error 404 when unknown |
//! | `dlg.profile_get_size` | profile, value? | the number of active dialogs in the profile (with value) |
//! | `dlg.stats_active` | – | `{"active": {"starting", "connecting", "answering", "ongoing", "all"}}` (states 1, 2, 3, 4) |

#![forbid(unsafe_code)]

use std::sync::Arc;

use serde_json::{json, Value};

use crate::kemi::dialog_store::{ByeSide, DlgId, ST_DELETED};
use crate::rpc::jsonrpc::{MethodError, Params, Registry};
use crate::rpc::RpcContext;
use crate::shard::control::ModulesCtl;

/// Most dialogs `dlg.list` returns.
pub const LIST_MAX: usize = 100_000;

pub(crate) fn register(r: &mut Registry) {
    r.register("dlg.list", list)
        .register("dlg.end_dlg", end_dlg)
        .register("dlg.profile_get_size", profile_get_size)
        .register("dlg.stats_active", stats_active);
}

fn modules(ctx: &RpcContext) -> Result<&Arc<ModulesCtl>, MethodError> {
    ctx.ctl
        .modules()
        .ok_or_else(|| MethodError::Internal("no shards are running".into()))
}

fn int(params: &Params, pos: usize, name: &str) -> Result<u32, MethodError> {
    match params.value(pos, name) {
        Some(Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| MethodError::InvalidParams(format!("param {name} must be an integer")))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn list(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let d = &m.tables.dialog;
    let now = d.now_ms();
    let unix = crate::kemi::services::unix_now_s();
    let list: Vec<Value> = d
        .list(LIST_MAX)
        .into_iter()
        .map(|(id, x)| {
            let leg = |l: &crate::kemi::dialog_store::Leg| {
                json!({
                    "tag": text(&l.tag),
                    "contact": text(&l.contact),
                    "cseq": l.cseq.to_string(),
                    "route_set": l.route_set.iter().map(|r| text(r)).collect::<Vec<_>>().join(","),
                    "socket": format!("udp:{}", x.bind),
                })
            };
            let profiles: Vec<Value> = x
                .profiles
                .iter()
                .map(|(p, v)| {
                    let name = d
                        .profiles
                        .defs
                        .get(*p as usize)
                        .map_or("", |p| p.name.as_str());
                    json!({ name: text(v) })
                })
                .collect();
            let vars: Vec<Value> = x
                .vars
                .iter()
                .map(|(k, v)| json!({ text(k): text(v) }))
                .collect();
            let timeout = if x.state >= 3 && x.state != ST_DELETED {
                unix + x.deadline_ms.saturating_sub(now) / 1000
            } else {
                0
            };
            json!({
                "h_entry": id.h_entry,
                "h_id": id.h_id,
                "ref": 1,
                "call-id": text(&x.callid),
                "from_uri": text(&x.caller.uri),
                "to_uri": text(&x.callee.uri),
                "state": x.state,
                "start_ts": x.start_ts,
                "init_ts": x.init_ts,
                "timeout": timeout,
                "lifetime": x.lifetime_s,
                "dflags": 0,
                "sflags": x.sflags,
                "caller": leg(&x.caller),
                "callee": leg(&x.callee),
                "profiles": profiles,
                "variables": vars,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

async fn end_dlg(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(3)?;
    let m = modules(&ctx)?;
    let d = &m.tables.dialog;
    let id = DlgId {
        h_entry: int(&params, 0, "h_entry")?,
        h_id: int(&params, 1, "h_id")?,
    };
    let bind = d
        .with(id, |x| (x.state != ST_DELETED).then_some(x.bind))
        .flatten()
        .ok_or_else(|| MethodError::NotFound("Dialog not found".into()))?;
    let out = d
        .end(id, ByeSide::All, bind, d.now_ms())
        .ok_or_else(|| MethodError::NotFound("Dialog not found".into()))?;
    if d.track_byes(out, false, d.now_ms()) > 0 {
        return Err(MethodError::Internal(
            "too many BYEs waiting to be sent".into(),
        ));
    }
    Ok(json!("Ok."))
}

async fn profile_get_size(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(2)?;
    let m = modules(&ctx)?;
    let d = &m.tables.dialog;
    let name = params.str(0, "profile")?;
    let value = params.opt_str(1, "value")?;
    let p = d
        .profiles
        .find(name)
        .ok_or_else(|| MethodError::NotFound(format!("Non existing profile: {name}")))?;
    Ok(json!(d.profiles.size(
        p,
        value.map(str::as_bytes).filter(|v| !v.is_empty())
    )))
}

async fn stats_active(ctx: Arc<RpcContext>, params: Params) -> Result<Value, MethodError> {
    params.at_most(0)?;
    let m = modules(&ctx)?;
    let mut by_state = [0u64; 6];
    for (_, x) in m.tables.dialog.list(LIST_MAX) {
        if let Some(n) = by_state.get_mut(x.state as usize) {
            *n += 1;
        }
    }
    let all: u64 = by_state[1..5].iter().sum();
    Ok(json!({
        "active": {
            "starting": by_state[1],
            "connecting": by_state[2],
            "answering": by_state[3],
            "ongoing": by_state[4],
            "all": all,
        }
    }))
}
