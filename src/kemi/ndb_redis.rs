//! KSR.ndb_redis: Redis commands from the route (Kamailio `ndb_redis`
//! module) to the servers of `[[redis]]`.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.ndb_redis.redis_cmd(srv, cmd, res)` | `int (str, str, str)` | 1 the reply is in `$redis(res=>...)`; -1 unknown server, an error reply (kept: `$redis(res=>info)`), no answer within `cmd_timeout_ms`, connection failure, queue full, `%s` without a parameter, or `redis_replies_max` replies in use |
//! | `KSR.ndb_redis.redis_cmd_p1(srv, cmd, p1, res)` | `int (str, str, str, str)` | as redis_cmd; each `%s` in `cmd` takes the next parameter whole (spaces included) |
//! | `KSR.ndb_redis.redis_cmd_p2(srv, cmd, p1, p2, res)` | `int (str, str, str, str, str)` | as redis_cmd_p1 |
//! | `KSR.ndb_redis.redis_cmd_p3(srv, cmd, p1, p2, p3, res)` | `int (str, str, str, str, str, str)` | as redis_cmd_p1 |
//! | `KSR.ndb_redis.redis_free(res)` | `int (str)` | 1 the reply is gone (reads null); -1 no such reply |
//!
//! Pseudo-variables (through `KSR.pv`): `$redis(res=>type)` (hiredis'
//! numbers: 1 string, 2 array, 3 integer, 4 nil, 5 status, 6 error),
//! `$redis(res=>value)` (string or integer; null for other types),
//! `$redis(res=>info)` (the text of a status or error reply), `$redis(res=>size)`
//! (elements of an array), `$redis(res=>value[n])`, `$redis(res=>type[n])`,
//! nested arrays as `$redis(res=>value[0]=>value[1])`; `$redisd(rpl_str)`
//! (`rpl_arr`, `rpl_int`, `rpl_err`, `rpl_sts`, `rpl_nil`) give the type
//! numbers.
//!
//! The command is split at spaces into arguments (hiredis' format: `%s`
//! inside an argument is replaced by the next parameter, `%%` is `%`). A
//! command suspends the route (never the shard) until Redis answers or
//! `cmd_timeout_ms` passes; waits are counted (`ndb_redis.commands`,
//! `ndb_redis.timeouts`, `ndb_redis.errors`) and timed (`ndb_redis_wait` in
//! `kemi.route_latency`). Each server is one multiplexed connection on the
//! control thread, made on first use and remade after a failure. Replies
//! stay in the shard until freed or replaced, at most `[db]
//! redis_replies_max` names, each at most `redis_reply_elements_max`
//! elements.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table};

use super::pv::Val;
use super::services::unix_now_s;
use super::Shared;
use crate::db::redis::{self as rd, RedisReply};
use crate::db::DbError;
use crate::stats::Counter;

/// Longest command (all arguments) accepted.
const CMD_BYTES_MAX: usize = 512 * 1024;

/// This shard's replies.
pub struct RedisState {
    replies: RefCell<HashMap<String, Option<RedisReply>>>,
    wait_name: Arc<str>,
    log_s: Cell<u64>,
}

impl Default for RedisState {
    fn default() -> Self {
        RedisState {
            replies: RefCell::new(HashMap::new()),
            wait_name: Arc::from("ndb_redis_wait"),
            log_s: Cell::new(0),
        }
    }
}

fn warn_limited(s: &Shared, what: std::fmt::Arguments<'_>) {
    let now = unix_now_s();
    if s.redis.log_s.get() != now {
        s.redis.log_s.set(now);
        tracing::warn!(shard = s.shard_id, "ndb_redis: {what}");
    }
}

type S = mlua::String;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "redis_cmd",
        lua.create_async_function(move |_, (srv, cmd, res): (S, S, S)| {
            let s = s.clone();
            async move { Ok(redis_cmd(&s, &srv, &cmd, &[], &res).await) }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "redis_cmd_p1",
        lua.create_async_function(move |_, (srv, cmd, p1, res): (S, S, S, S)| {
            let s = s.clone();
            async move { Ok(redis_cmd(&s, &srv, &cmd, &[p1], &res).await) }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "redis_cmd_p2",
        lua.create_async_function(move |_, (srv, cmd, p1, p2, res): (S, S, S, S, S)| {
            let s = s.clone();
            async move { Ok(redis_cmd(&s, &srv, &cmd, &[p1, p2], &res).await) }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "redis_cmd_p3",
        lua.create_async_function(move |_, (srv, cmd, p1, p2, p3, res): (S, S, S, S, S, S)| {
            let s = s.clone();
            async move { Ok(redis_cmd(&s, &srv, &cmd, &[p1, p2, p3], &res).await) }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "redis_free",
        lua.create_function(move |_, res: S| {
            let name = res.to_string_lossy();
            Ok(match s.redis.replies.borrow_mut().get_mut(&name) {
                Some(r) => {
                    *r = None;
                    1
                }
                None => -1,
            })
        })?,
    )?;
    ksr.set("ndb_redis", t)
}

/// Splits `cmd` at whitespace; `%s` takes the next parameter, `%%` is `%`.
/// None when a `%s` has no parameter left or the command is empty.
pub(crate) fn build_args(cmd: &[u8], params: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    let mut next = params.iter();
    let mut args = Vec::new();
    for token in cmd
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let mut arg = Vec::with_capacity(token.len());
        let mut i = 0;
        while let Some(&b) = token.get(i) {
            if b == b'%' {
                match token.get(i + 1) {
                    Some(b's') => {
                        arg.extend_from_slice(next.next()?);
                        i += 2;
                        continue;
                    }
                    Some(b'%') => {
                        arg.push(b'%');
                        i += 2;
                        continue;
                    }
                    _ => {}
                }
            }
            arg.push(b);
            i += 1;
        }
        args.push(arg);
    }
    (!args.is_empty()).then_some(args)
}

async fn redis_cmd(s: &Rc<Shared>, srv: &S, cmd: &S, params: &[S], res: &S) -> i32 {
    let res = res.to_string_lossy();
    let srv = srv.to_string_lossy();
    let params: Vec<mlua::BorrowedBytes<'_>> = params.iter().map(|p| p.as_bytes()).collect();
    let params: Vec<&[u8]> = params.iter().map(|p| &p[..]).collect();
    let total = cmd.as_bytes().len() + params.iter().map(|p| p.len()).sum::<usize>();
    let args = if total > CMD_BYTES_MAX {
        None
    } else {
        build_args(&cmd.as_bytes(), &params)
    };
    let Some(args) = args else {
        s.counters.incr(Counter::RedisErrors);
        warn_limited(
            s,
            format_args!("bad command (empty, too long, or %s without a parameter)"),
        );
        return -1;
    };
    let Some((handle, idx)) = s
        .services
        .redis
        .as_ref()
        .and_then(|h| h.server(&srv).map(|i| (h, i)))
    else {
        s.counters.incr(Counter::RedisErrors);
        warn_limited(s, format_args!("no [[redis]] server named {srv:?}"));
        return -1;
    };
    {
        let mut replies = s.redis.replies.borrow_mut();
        if !replies.contains_key(&res) && replies.len() >= s.services.redis_replies_max {
            drop(replies);
            s.counters.incr(Counter::RedisRepliesFull);
            warn_limited(
                s,
                format_args!(
                    "reply {res:?} refused: {} replies in use ([db] redis_replies_max)",
                    s.services.redis_replies_max
                ),
            );
            return -1;
        }
        // The previous reply of this name is gone whatever happens next.
        replies.insert(res.clone(), None);
    }
    s.counters.incr(Counter::RedisCommands);
    let t0 = Instant::now();
    let answer = match handle.command(idx, args) {
        Err(e) => Err(e),
        Ok(fut) => {
            let limit = handle.timeout(idx) + Duration::from_millis(50);
            crate::exec::timeout(limit, fut)
                .await
                .unwrap_or(Err(DbError::Timeout))
        }
    };
    s.record_route_time(&s.redis.wait_name, t0.elapsed());
    match answer {
        Ok(reply) => {
            let code = if let RedisReply::Error(e) = &reply {
                s.counters.incr(Counter::RedisErrors);
                warn_limited(s, format_args!("error reply from {srv:?}: {e}"));
                -1
            } else {
                1
            };
            s.redis.replies.borrow_mut().insert(res, Some(reply));
            code
        }
        Err(e) => {
            s.counters.incr(if matches!(e, DbError::Timeout) {
                Counter::RedisTimeouts
            } else {
                Counter::RedisErrors
            });
            warn_limited(s, format_args!("command to {srv:?} failed: {e}"));
            -1
        }
    }
}

/// `name[n]` → (name, Some(n)); `name` → (name, None); `n` may be `$var(x)`.
fn key_index<'a>(s: &Shared, key: &'a str) -> Option<(&'a str, Option<i64>)> {
    match key.split_once('[') {
        None => Some((key, None)),
        Some((k, rest)) => {
            let n = rest.strip_suffix(']')?;
            Some((k, Some(super::pv::index_arg(s, n)?)))
        }
    }
}

fn element(r: &RedisReply, n: i64) -> Option<&RedisReply> {
    match r {
        RedisReply::Array(items) => items.get(usize::try_from(n).ok()?),
        _ => None,
    }
}

/// `$redis(res=>key)`, keys as Kamailio's.
pub(super) fn pv_redis(s: &Shared, arg: &str) -> Val {
    let mut parts = arg.split("=>").map(str::trim);
    let Some(name) = parts.next() else {
        return Val::Null;
    };
    let keys: Vec<&str> = parts.collect();
    let replies = s.redis.replies.borrow();
    let Some(Some(top)) = replies.get(name) else {
        return Val::Null;
    };
    let mut reply: &RedisReply = top;
    let Some((last, path)) = keys.split_last() else {
        return Val::Null;
    };
    // Every key before the last one steps into an array element.
    for k in path {
        match key_index(s, k) {
            Some((_, Some(n))) => match element(reply, n) {
                Some(e) => reply = e,
                None => return Val::Null,
            },
            _ => return Val::Null,
        }
    }
    let Some((key, idx)) = key_index(s, last) else {
        return Val::Null;
    };
    let scalar = |r: &RedisReply| match r {
        RedisReply::Str(b) => Val::Str(b.clone()),
        RedisReply::Int(i) => Val::Int(*i),
        _ => Val::Null,
    };
    match (key, idx) {
        ("type", None) => Val::Int(reply.type_code()),
        ("type", Some(n)) => element(reply, n).map_or(Val::Null, |e| Val::Int(e.type_code())),
        ("value", None) => scalar(reply),
        ("value", Some(n)) => element(reply, n).map_or(Val::Null, scalar),
        ("info", None) => match reply {
            RedisReply::Str(b) => Val::Str(b.clone()),
            RedisReply::Status(t) | RedisReply::Error(t) => Val::Str(t.as_bytes().to_vec()),
            _ => Val::Null,
        },
        ("size", None) => match reply {
            RedisReply::Array(items) => Val::Int(items.len() as i64),
            _ => Val::Null,
        },
        _ => Val::Null,
    }
}

/// `$redisd(rpl_str|rpl_arr|rpl_int|rpl_err|rpl_sts|rpl_nil)`.
pub(super) fn pv_redisd(arg: &str) -> Val {
    match arg.trim() {
        "rpl_str" => Val::Int(rd::REPLY_STRING),
        "rpl_arr" => Val::Int(rd::REPLY_ARRAY),
        "rpl_int" => Val::Int(rd::REPLY_INTEGER),
        "rpl_nil" => Val::Int(rd::REPLY_NIL),
        "rpl_sts" => Val::Int(rd::REPLY_STATUS),
        "rpl_err" => Val::Int(rd::REPLY_ERROR),
        _ => Val::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &str, params: &[&str]) -> Option<Vec<String>> {
        let p: Vec<&[u8]> = params.iter().map(|p| p.as_bytes()).collect();
        build_args(cmd.as_bytes(), &p).map(|a| {
            a.into_iter()
                .map(|x| String::from_utf8(x).unwrap())
                .collect()
        })
    }

    #[test]
    fn commands_split_like_hiredis_format() {
        assert_eq!(args("SET foo bar", &[]).unwrap(), ["SET", "foo", "bar"]);
        assert_eq!(args("GET %s", &["foo bar"]).unwrap(), ["GET", "foo bar"]);
        assert_eq!(
            args("HMGET k:%s %s  %s", &["1", "f1", "f2"]).unwrap(),
            ["HMGET", "k:1", "f1", "f2"]
        );
        assert_eq!(args("SET a 100%%", &[]).unwrap(), ["SET", "a", "100%"]);
        assert!(args("GET %s", &[]).is_none());
        assert!(args("   ", &[]).is_none());
    }
}
