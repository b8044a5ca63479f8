//! The control plane: JSON-RPC 2.0 and Prometheus over one small HTTP/1.1
//! listener, the periodic HdrHistogram interval log, and the `ctl` / `report`
//! command-line clients.
//!
//! Runs on the control-plane tokio runtime and reaches the shards only through
//! [`ControlHandle`] (bounded queues, answers over oneshot channels), so it
//! never touches the message path. It must never block a shard, and never
//! panic on anything a peer sends.
//!
//! Endpoints (one listener, default `127.0.0.1:5070`):
//! - `POST /` or `POST /RPC`: JSON-RPC 2.0, like Kamailio's `jsonrpcs` over
//!   `xhttp`; single calls and batches. Methods live in a [`Registry`].
//! - `GET /metrics`: Prometheus text format 0.0.4 ([`crate::stats::prom`]).
//!
//! The HTTP server is hand-written (Content-Length bodies, keep-alive, limits
//! on head, body, connections and time) to keep hyper out of the build; see
//! [`http`] for the limits.

#![forbid(unsafe_code)]

pub mod client;
pub mod dialog;
mod hlog_task;
pub mod http;
pub mod jsonrpc;
mod kemi_methods;
pub mod methods;
pub mod modules;
pub mod report;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::client::{run_ctl, CtlArgs};
pub use self::jsonrpc::{Handler, MethodError, Params, Registry};
pub use self::report::{run_report, ReportArgs};
pub use crate::config::RpcConfig;
use crate::shard::control::ControlHandle;
pub use crate::stats::hlog::HlogConfig;
use crate::stats::prom;

/// Default listen address (Kamailio's jsonrpcs examples use 5060+10).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5070";
/// Upper bound on `max_connections`.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long a method waits for shards to answer before failing the call.
pub const SHARD_TIMEOUT: Duration = Duration::from_secs(5);

impl RpcConfig {
    /// Checks every bound; the error says which setting is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections > CONNECTIONS_MAX {
            return Err(format!("rpc.max_connections must be 1..={CONNECTIONS_MAX}"));
        }
        prom::validate_buckets_us(&self.prometheus_buckets_us)
            .map_err(|e| format!("rpc.prometheus_buckets_us: {e}"))?;
        if let Some(h) = &self.hlog {
            h.validate().map_err(|e| format!("rpc.hlog: {e}"))?;
        }
        Ok(())
    }
}

/// What every method handler gets: the shards, and process facts.
pub struct RpcContext {
    pub ctl: ControlHandle,
    /// Wall-clock time the process started (for `core.uptime`).
    pub started: SystemTime,
    /// `/metrics` bucket bounds, µs.
    pub buckets_us: Vec<f64>,
    /// Per-call limit on waiting for shards.
    pub shard_timeout: Duration,
    /// Registered method names, sorted (for `system.listMethods`).
    pub method_names: Vec<String>,
}

impl RpcContext {
    /// Runs a shard request under [`RpcContext::shard_timeout`].
    pub async fn shard_call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, crate::shard::control::ControlError>>,
    ) -> Result<T, MethodError> {
        match tokio::time::timeout(self.shard_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(MethodError::Shard(e)),
            Err(_) => Err(MethodError::Timeout),
        }
    }
}

/// Binds `cfg.listen` now (so a taken port fails at start-up), then serves the
/// built-in methods on `rt`. Returns the bound address (useful with port 0).
///
/// With `enabled = false` nothing is started and the result is an
/// `ErrorKind::Unsupported` error: check `cfg.enabled` before calling.
pub fn spawn(
    cfg: RpcConfig,
    ctl: ControlHandle,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    spawn_with(cfg, ctl, Registry::with_builtin(), rt)
}

/// [`spawn`] with a caller-built registry (built-ins plus more methods).
pub fn spawn_with(
    cfg: RpcConfig,
    ctl: ControlHandle,
    registry: Registry,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    use std::io::{Error, ErrorKind};
    if !cfg.enabled {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "rpc is disabled in the configuration",
        ));
    }
    cfg.validate()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;

    let std_listener = std::net::TcpListener::bind(cfg.listen)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;

    // Create the log now so a bad path fails start-up, not a background task.
    let hlog = match &cfg.hlog {
        Some(h) => Some(hlog_task::open(h)?),
        None => None,
    };

    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let ctx = Arc::new(RpcContext {
        ctl: ctl.clone(),
        started: SystemTime::now()
            .checked_sub(Duration::try_from_secs_f64(ctl.uptime_s()).unwrap_or_default())
            .unwrap_or_else(SystemTime::now),
        buckets_us: cfg.prometheus_buckets_us.clone(),
        shard_timeout: SHARD_TIMEOUT,
        method_names: registry.names().map(str::to_string).collect(),
    });
    let registry = Arc::new(registry);
    serve_script_exec(&ctl, registry.clone(), ctx.clone(), rt);
    let token: Option<Arc<str>> = (!cfg.token.is_empty()).then(|| Arc::from(cfg.token.as_str()));
    if token.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(
            %bound,
            "rpc listens beyond loopback without a token: set [rpc] token"
        );
    }
    rt.spawn(http::serve(
        listener,
        registry,
        Arc::clone(&ctx),
        cfg.max_connections,
        token,
    ));
    if let (Some(writer), Some(h)) = (hlog, &cfg.hlog) {
        rt.spawn(hlog_task::run(
            writer,
            Duration::from_secs(h.interval_s),
            ctx,
        ));
    }
    tracing::info!(%bound, "rpc listening (JSON-RPC on / and /RPC, Prometheus on /metrics)");
    Ok(bound)
}

/// Serves `KSR.jsonrpcs.exec` from the routing scripts: the same registry
/// as the HTTP interface, one request at a time, from a bounded queue.
fn serve_script_exec(
    ctl: &ControlHandle,
    registry: Arc<Registry>,
    ctx: Arc<RpcContext>,
    rt: &tokio::runtime::Handle,
) {
    let Some(modules) = ctl.modules() else {
        return;
    };
    let (handle, mut rx) = crate::kemi::jsonrpcs::ScriptRpc::channel(64);
    if modules.tables.rpc_exec.set(handle).is_err() {
        return; // already served (a second spawn in one process)
    }
    rt.spawn(async move {
        while let Some((body, reply)) = rx.recv().await {
            let answer = registry
                .handle_body(&ctx, &body)
                .await
                .map(|v| v.to_string().into_bytes())
                .unwrap_or_default();
            let _ = reply.send(answer);
        }
    });
}

/// The shard that answers `ul.*` for an AOR: [`crate::partition::index`] (FNV-1a 64 of the
/// ASCII-lowercased AOR, mod `n`); `None` when there are no shards.
pub fn owner_shard(aor: &str, n: usize) -> Option<usize> {
    (n > 0).then(|| crate::partition::index(aor.as_bytes(), n))
}
