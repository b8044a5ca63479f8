//! Redis for the routing script (KSR.ndb_redis): the servers of `[[redis]]`,
//! each one multiplexed connection (the `redis` crate's `ConnectionManager`,
//! reconnecting by itself) on the control runtime, and the bounded queue
//! shards send their commands on.
//!
//! Owns: connections, the per-command timeout (`cmd_timeout_ms`), turning a
//! reply into a [`RedisReply`] (hiredis' reply types, which `$redis(r=>type)`
//! shows) with a bound on its size.
//! Must never: run on a shard or block one. [`RedisHandle::command`] only
//! `try_send`s; a full queue is [`DbError::QueueFull`] at once.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{DbError, DbReply};
use crate::config::RedisServer;

/// Deepest nesting of arrays kept in a reply (a deeper one fails).
const DEPTH_MAX: usize = 32;

/// hiredis' reply type numbers (`$redis(r=>type)`, `$redisd(rpl_*)`).
pub const REPLY_STRING: i64 = 1;
pub const REPLY_ARRAY: i64 = 2;
pub const REPLY_INTEGER: i64 = 3;
pub const REPLY_NIL: i64 = 4;
pub const REPLY_STATUS: i64 = 5;
pub const REPLY_ERROR: i64 = 6;

/// One reply, as hiredis gives it (RESP2 types; RESP3 values are folded
/// into these).
#[derive(Clone, Debug, PartialEq)]
pub enum RedisReply {
    Str(Vec<u8>),
    Array(Vec<RedisReply>),
    Int(i64),
    Nil,
    Status(String),
    Error(String),
}

impl RedisReply {
    /// hiredis' type number.
    pub fn type_code(&self) -> i64 {
        match self {
            RedisReply::Str(_) => REPLY_STRING,
            RedisReply::Array(_) => REPLY_ARRAY,
            RedisReply::Int(_) => REPLY_INTEGER,
            RedisReply::Nil => REPLY_NIL,
            RedisReply::Status(_) => REPLY_STATUS,
            RedisReply::Error(_) => REPLY_ERROR,
        }
    }

    /// Converts a crate value, counting elements against `budget`; None when
    /// the reply is larger than the budget.
    fn from_value(v: redis::Value, budget: &mut usize) -> Option<RedisReply> {
        Self::from_value_at(v, budget, 0)
    }

    /// As [`RedisReply::from_value`], `depth` arrays deep (at most
    /// [`DEPTH_MAX`]).
    fn from_value_at(v: redis::Value, budget: &mut usize, depth: usize) -> Option<RedisReply> {
        *budget = budget.checked_sub(1)?;
        if depth > DEPTH_MAX {
            return None;
        }
        let array = |items: Vec<redis::Value>, budget: &mut usize| {
            items
                .into_iter()
                .map(|i| RedisReply::from_value_at(i, budget, depth + 1))
                .collect::<Option<Vec<_>>>()
                .map(RedisReply::Array)
        };
        Some(match v {
            redis::Value::Nil => RedisReply::Nil,
            redis::Value::Int(i) => RedisReply::Int(i),
            redis::Value::BulkString(b) => RedisReply::Str(b),
            redis::Value::Array(items) | redis::Value::Set(items) => array(items, budget)?,
            redis::Value::Push { data, .. } => array(data, budget)?,
            redis::Value::Map(pairs) => array(
                pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                budget,
            )?,
            redis::Value::Attribute { data, .. } => {
                RedisReply::from_value_at(*data, budget, depth + 1)?
            }
            redis::Value::SimpleString(s) => RedisReply::Status(s),
            redis::Value::Okay => RedisReply::Status("OK".to_owned()),
            redis::Value::Double(d) => RedisReply::Str(d.to_string().into_bytes()),
            redis::Value::Boolean(b) => RedisReply::Int(b.into()),
            redis::Value::VerbatimString { text, .. } => RedisReply::Str(text.into_bytes()),
            redis::Value::ServerError(e) => RedisReply::Error(server_error_text(&e)),
            other => RedisReply::Str(format!("{other:?}").into_bytes()),
        })
    }
}

/// `ERR unknown command ...`: the code and the detail, as the server sent them.
fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_owned(),
    }
}

struct Server {
    con: redis::aio::ConnectionManager,
    timeout: Duration,
}

struct Cmd {
    srv: usize,
    args: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<RedisReply, DbError>>,
}

/// The shards' side: server names and the queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisHandle {
    names: Arc<[String]>,
    timeouts: Arc<[Duration]>,
    tx: mpsc::Sender<Cmd>,
}

impl RedisHandle {
    /// Prepares a connection per server (made on first use, remade after a
    /// failure) and starts the worker on `rt`.
    pub fn start(
        servers: &[RedisServer],
        queue_depth: usize,
        in_flight_max: usize,
        reply_elements_max: usize,
        rt: &tokio::runtime::Handle,
    ) -> Result<RedisHandle, DbError> {
        let _guard = rt.enter();
        let mut out = Vec::with_capacity(servers.len());
        for s in servers {
            let bad =
                |e: redis::RedisError| DbError::BadConfig(format!("redis server {}: {e}", s.name));
            let mut info = redis::IntoConnectionInfo::into_connection_info(
                redis::ConnectionAddr::Tcp(s.host.clone(), s.port),
            )
            .map_err(bad)?;
            let mut settings = info.redis_settings().clone().set_db(s.db);
            if !s.password.is_empty() {
                settings = settings.set_password(s.password.clone());
            }
            info = info.set_redis_settings(settings);
            let client = redis::Client::open(info).map_err(bad)?;
            let timeout = Duration::from_millis(s.cmd_timeout_ms.max(1));
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(s.connect_timeout_ms.max(1))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            let con =
                redis::aio::ConnectionManager::new_lazy_with_config(client, cfg).map_err(bad)?;
            out.push(Server { con, timeout });
        }
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let timeouts: Vec<Duration> = out.iter().map(|s| s.timeout).collect();
        let (tx, rx) = mpsc::channel(queue_depth.max(1));
        rt.spawn(serve(
            Arc::new(out),
            rx,
            in_flight_max.max(1),
            reply_elements_max.max(1),
        ));
        Ok(RedisHandle {
            names: names.into(),
            timeouts: timeouts.into(),
            tx,
        })
    }

    /// The index of server `name`.
    pub fn server(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The server's `cmd_timeout_ms`.
    pub fn timeout(&self, srv: usize) -> Duration {
        self.timeouts
            .get(srv)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Sends one command (`args[0]` is its name).
    pub fn command(&self, srv: usize, args: Vec<Vec<u8>>) -> Result<DbReply<RedisReply>, DbError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Cmd { srv, args, reply }) {
            Ok(()) => Ok(DbReply { rx }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DbError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DbError::Closed),
        }
    }
}

/// Takes a command only when one of `in_flight_max` slots is free; each is
/// cut at its server's timeout, which frees the slot.
async fn serve(
    servers: Arc<Vec<Server>>,
    mut rx: mpsc::Receiver<Cmd>,
    in_flight_max: usize,
    elements_max: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(cmd) = rx.recv().await else {
            break;
        };
        let servers = servers.clone();
        tokio::spawn(async move {
            let answer = match servers.get(cmd.srv) {
                _ if cmd.reply.is_closed() => Err(DbError::Timeout),
                None => Err(DbError::BadConfig("no such redis server".into())),
                Some(s) => run(s, &cmd.args, elements_max).await,
            };
            let _ = cmd.reply.send(answer);
            drop(slot);
        });
    }
}

async fn run(s: &Server, args: &[Vec<u8>], elements_max: usize) -> Result<RedisReply, DbError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(DbError::BadConfig("empty redis command".into()));
    };
    let mut cmd = redis::cmd(&String::from_utf8_lossy(name));
    for a in rest {
        cmd.arg(a.as_slice());
    }
    let mut con = s.con.clone();
    let value = match tokio::time::timeout(s.timeout, con.req_packed_command(&cmd)).await {
        Err(_) => return Err(DbError::Timeout),
        Ok(Err(e)) if e.is_timeout() => return Err(DbError::Timeout),
        Ok(Err(e)) => match e.kind() {
            // An error reply is a reply ($redis(r=>info) shows it).
            redis::ErrorKind::Server(_) => return Ok(RedisReply::Error(e.to_string())),
            _ => return Err(DbError::Redis(e.to_string())),
        },
        Ok(Ok(v)) => v,
    };
    let mut budget = elements_max;
    RedisReply::from_value(value, &mut budget).ok_or_else(|| {
        DbError::Redis(format!(
            "reply of more than {elements_max} elements or {DEPTH_MAX} levels"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_fold_into_hiredis_types_and_are_bounded() {
        let v = redis::Value::Array(vec![
            redis::Value::BulkString(b"a".to_vec()),
            redis::Value::Int(3),
            redis::Value::Okay,
            redis::Value::Nil,
        ]);
        let mut budget = 10;
        let r = RedisReply::from_value(v.clone(), &mut budget).unwrap();
        assert_eq!(r.type_code(), REPLY_ARRAY);
        assert_eq!(
            r,
            RedisReply::Array(vec![
                RedisReply::Str(b"a".to_vec()),
                RedisReply::Int(3),
                RedisReply::Status("OK".into()),
                RedisReply::Nil,
            ])
        );
        let mut small = 4;
        assert!(RedisReply::from_value(v, &mut small).is_none());
        let mut deep = redis::Value::Nil;
        for _ in 0..40 {
            deep = redis::Value::Array(vec![deep]);
        }
        assert!(RedisReply::from_value(deep, &mut 1_000).is_none());
    }
}
