//! JSON-RPC 2.0 envelopes and the method registry.
//!
//! One table maps a method name to an async handler; features add methods by
//! calling [`Registry::register`] before the server starts. This module knows
//! nothing about HTTP: it turns a request body into a response body.
//!
//! Error codes: the spec's `-32700` (parse), `-32600` (invalid request),
//! `-32601` (method not found), `-32602` (invalid params), `-32603`
//! (internal); server-defined `-32000` (a shard refused or is gone) and
//! `-32001` (shards did not answer in time); and Kamailio's `404` for a
//! missing AOR.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::rpc::RpcContext;
use crate::shard::control::ControlError;

/// Most calls in one batch.
pub const BATCH_MAX: usize = 64;
/// Longest method name accepted by `register` and by the dispatcher.
pub const METHOD_NAME_MAX: usize = 64;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const SHARD_ERROR: i64 = -32000;
pub const SHARD_TIMEOUT: i64 = -32001;
pub const NOT_FOUND: i64 = 404;

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, MethodError>> + Send>>;
/// A registered method.
pub type Handler = Arc<dyn Fn(Arc<RpcContext>, Params) -> HandlerFuture + Send + Sync>;

/// Why a method failed; each maps to one JSON-RPC error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    #[error("{0}")]
    InvalidParams(String),
    /// Kamailio answers `404` for a missing AOR or record.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Shard(#[from] ControlError),
    #[error("shards did not answer in time")]
    Timeout,
    #[error("{0}")]
    Internal(String),
}

impl MethodError {
    pub fn code(&self) -> i64 {
        match self {
            MethodError::InvalidParams(_) => INVALID_PARAMS,
            MethodError::NotFound(_) => NOT_FOUND,
            MethodError::Shard(_) => SHARD_ERROR,
            MethodError::Timeout => SHARD_TIMEOUT,
            MethodError::Internal(_) => INTERNAL_ERROR,
        }
    }
}

/// A call's `params`: absent (empty), positional (array) or named (object).
/// Accessors take both a position and a name, so `["location", "a@b"]` and
/// `{"table": "location", "aor": "a@b"}` read the same.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(Value);

impl Params {
    pub fn new(value: Value) -> Self {
        debug_assert!(matches!(
            value,
            Value::Null | Value::Array(_) | Value::Object(_)
        ));
        Params(value)
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positional params (empty for named params).
    pub fn positional(&self) -> &[Value] {
        match &self.0 {
            Value::Array(a) => a,
            _ => &[],
        }
    }

    pub fn value(&self, pos: usize, name: &str) -> Option<&Value> {
        match &self.0 {
            Value::Array(a) => a.get(pos),
            Value::Object(o) => o.get(name),
            _ => None,
        }
    }

    /// An optional string param; another type is an invalid-params error.
    pub fn opt_str(&self, pos: usize, name: &str) -> Result<Option<&str>, MethodError> {
        match self.value(pos, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(MethodError::InvalidParams(format!(
                "param {name} must be a string"
            ))),
        }
    }

    pub fn str(&self, pos: usize, name: &str) -> Result<&str, MethodError> {
        self.opt_str(pos, name)?
            .ok_or_else(|| MethodError::InvalidParams(format!("missing param {name}")))
    }

    /// Fails when more than `max` params were given.
    pub fn at_most(&self, max: usize) -> Result<(), MethodError> {
        if self.len() > max {
            return Err(MethodError::InvalidParams(format!(
                "at most {max} params expected"
            )));
        }
        Ok(())
    }
}

/// Method name -> handler. Re-registering a name replaces its handler.
#[derive(Clone, Default)]
pub struct Registry {
    methods: BTreeMap<String, Handler>,
}

impl Registry {
    /// No methods at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in methods ([`crate::rpc::methods`]).
    pub fn with_builtin() -> Self {
        let mut r = Self::new();
        crate::rpc::methods::register_builtin(&mut r);
        r
    }

    /// Adds (or replaces) `name`. Names are `1..=64` bytes of
    /// `[A-Za-z0-9_.]`; a bad name is a programming error and is refused with
    /// a log line rather than a panic.
    pub fn register<F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(Arc<RpcContext>, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
    {
        if !valid_method_name(name) {
            tracing::error!(name, "refusing to register rpc method with an invalid name");
            return self;
        }
        let handler: Handler = Arc::new(move |ctx, params| Box::pin(handler(ctx, params)));
        self.methods.insert(name.to_string(), handler);
        self
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.methods.get(name)
    }

    /// Handles one HTTP request body; `None` when every call was a
    /// notification (nothing to answer).
    pub async fn handle_body(&self, ctx: &Arc<RpcContext>, body: &[u8]) -> Option<Value> {
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Some(error_response(
                    Value::Null,
                    PARSE_ERROR,
                    &format!("Parse error: {e}"),
                ))
            }
        };
        match parsed {
            Value::Array(calls) => {
                if calls.is_empty() {
                    return Some(error_response(
                        Value::Null,
                        INVALID_REQUEST,
                        "Invalid Request: empty batch",
                    ));
                }
                if calls.len() > BATCH_MAX {
                    return Some(error_response(
                        Value::Null,
                        INVALID_REQUEST,
                        &format!("Invalid Request: batch of more than {BATCH_MAX} calls"),
                    ));
                }
                let mut out = Vec::with_capacity(calls.len());
                for call in calls {
                    if let Some(resp) = self.handle_call(ctx, call).await {
                        out.push(resp);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            call => self.handle_call(ctx, call).await,
        }
    }

    /// One call object; `None` for a valid notification.
    async fn handle_call(&self, ctx: &Arc<RpcContext>, call: Value) -> Option<Value> {
        let Value::Object(mut obj) = call else {
            return Some(error_response(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: not an object",
            ));
        };
        // The id is echoed even when the rest of the call is invalid, if it
        // is itself valid (string, number or null).
        let id = match obj.remove("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
            Some(_) => {
                return Some(error_response(
                    Value::Null,
                    INVALID_REQUEST,
                    "Invalid Request: bad id",
                ));
            }
        };
        let reply_id = id.clone().unwrap_or(Value::Null);
        if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
            return Some(error_response(
                reply_id,
                INVALID_REQUEST,
                "Invalid Request: jsonrpc must be \"2.0\"",
            ));
        }
        let method = match obj.get("method") {
            Some(Value::String(m)) => m.clone(),
            _ => {
                return Some(error_response(
                    reply_id,
                    INVALID_REQUEST,
                    "Invalid Request: method must be a string",
                ))
            }
        };
        let params = match obj.remove("params") {
            None => Params::default(),
            Some(p @ (Value::Array(_) | Value::Object(_))) => Params::new(p),
            Some(_) => {
                return Some(error_response(
                    reply_id,
                    INVALID_REQUEST,
                    "Invalid Request: params must be an array or an object",
                ));
            }
        };
        let result = match self.methods.get(&method) {
            None => Err((METHOD_NOT_FOUND, "Method not found".to_string())),
            Some(handler) => handler(Arc::clone(ctx), params)
                .await
                .map_err(|e| (e.code(), e.to_string())),
        };
        // A notification gets no answer, not even an error (JSON-RPC 2.0 §4.1).
        let id = id?;
        Some(match result {
            Ok(value) => json!({"jsonrpc": "2.0", "result": value, "id": id}),
            Err((code, message)) => error_response(id, code, &message),
        })
    }
}

fn valid_method_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= METHOD_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
}
