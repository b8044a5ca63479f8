//! The control-plane side of the shards: commands the JSON-RPC server (or
//! `main` at shutdown) sends to each shard, and the handle that fans them out.
//!
//! A command is queued, then the shard's doorbell is rung (an eventfd write,
//! only when the shard sleeps), so an idle shard polls nothing. Queues are
//! bounded; a full queue is an error to the caller, never a block.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::exec::Doorbell;
use crate::stats::ShardSnapshot;

/// User-location commands (`ul.*` RPC methods). Answered as JSON by the shard
/// that owns the AOR (lookup/rm) or by every shard (dump).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum UlCmd {
    /// All records this shard owns: `{"aors":[{"aor":..,"contacts":[..]}]}`.
    Dump,
    /// One AOR (`user@domain`): `{"aor":..,"contacts":[..]}` or `null`.
    Lookup { aor: String },
    /// Remove one AOR: `{"removed": n}`.
    Rm { aor: String },
}

/// One command to one shard.
#[non_exhaustive]
pub enum ShardCmd {
    /// Copy of counters and histograms; `reset` zeroes them after copying.
    Snapshot {
        reset: bool,
        reply: oneshot::Sender<ShardSnapshot>,
    },
    Ul {
        cmd: UlCmd,
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// Load this (already validated) script into a new VM and swap it in
    /// between messages; answers `(shard, result)` on `reply`.
    Reload {
        script: Arc<super::reload::ScriptSource>,
        reply: std::sync::mpsc::SyncSender<(usize, Result<(), String>)>,
    },
    /// Stop serving; pending writes are flushed first.
    Shutdown,
}

/// Script reload as the control plane sees it (`kemi.reload`,
/// `app_lua.reload`, SIGHUP): implemented by [`super::reload::Reloader`].
/// Blocking: call it from a thread that may wait (not an async task).
pub trait ScriptReload: Send + Sync {
    /// Re-reads the script file, validates it, loads it on every shard.
    fn reload(&self, origin: &str) -> Result<serde_json::Value, String>;
    /// Script path, reload count and time, last error.
    fn status(&self) -> serde_json::Value;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("shard {0} command queue is full")]
    QueueFull(usize),
    #[error("shard {0} has stopped")]
    ShardGone(usize),
    #[error("no such shard {0}")]
    NoShard(usize),
}

/// Cloneable, `Send` handle to every shard's command queue.
#[derive(Clone)]
pub struct ControlHandle {
    senders: Vec<SyncSender<ShardCmd>>,
    /// Rung after each command (none in tests that play the shard themselves).
    bells: Vec<Arc<Doorbell>>,
    /// Set at shutdown: a stop that no full queue can hold up.
    stops: Vec<Arc<AtomicBool>>,
    started: Instant,
    reloader: Option<Arc<dyn ScriptReload>>,
    /// The tables every shard shares (htable, pike, permissions), which
    /// the control plane reads and changes without a shard's help.
    modules: Option<Arc<ModulesCtl>>,
}

/// What the `htable.*`, `pike.*` and `permissions.*` RPC methods use.
pub struct ModulesCtl {
    pub tables: Arc<crate::kemi::services::SharedTables>,
    pub db: Option<crate::db::DbHandle>,
    pub permissions: crate::config::PermissionsConfig,
}

impl ControlHandle {
    pub fn new(senders: Vec<SyncSender<ShardCmd>>, started: Instant) -> Self {
        ControlHandle {
            senders,
            bells: Vec::new(),
            stops: Vec::new(),
            started,
            reloader: None,
            modules: None,
        }
    }

    /// Adds the script reloader (`kemi.reload`).
    pub fn with_reloader(mut self, r: Arc<dyn ScriptReload>) -> Self {
        self.reloader = Some(r);
        self
    }

    /// The script reloader, when the server has one.
    pub fn reloader(&self) -> Option<Arc<dyn ScriptReload>> {
        self.reloader.clone()
    }

    /// Gives the RPC methods the shared module tables.
    pub fn with_modules(mut self, modules: Arc<ModulesCtl>) -> Self {
        self.modules = Some(modules);
        self
    }

    /// The shared module tables, when the shards run.
    pub fn modules(&self) -> Option<&Arc<ModulesCtl>> {
        self.modules.as_ref()
    }

    /// Rings `bells[i]` after each command to shard `i`; `stops[i]` is the
    /// shard's stop flag.
    pub fn with_bells(mut self, bells: Vec<Arc<Doorbell>>, stops: Vec<Arc<AtomicBool>>) -> Self {
        self.bells = bells;
        self.stops = stops;
        self
    }

    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    pub fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn send(&self, shard: usize, cmd: ShardCmd) -> Result<(), ControlError> {
        let tx = self
            .senders
            .get(shard)
            .ok_or(ControlError::NoShard(shard))?;
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => ControlError::QueueFull(shard),
            TrySendError::Disconnected(_) => ControlError::ShardGone(shard),
        })?;
        if let Some(bell) = self.bells.get(shard) {
            bell.ring();
        }
        Ok(())
    }

    /// Snapshots every shard (in shard order).
    pub async fn snapshot_all(&self, reset: bool) -> Result<Vec<ShardSnapshot>, ControlError> {
        let mut rxs = Vec::with_capacity(self.senders.len());
        for shard in 0..self.senders.len() {
            let (tx, rx) = oneshot::channel();
            self.send(shard, ShardCmd::Snapshot { reset, reply: tx })?;
            rxs.push((shard, rx));
        }
        let mut out = Vec::with_capacity(rxs.len());
        for (shard, rx) in rxs {
            out.push(rx.await.map_err(|_| ControlError::ShardGone(shard))?);
        }
        Ok(out)
    }

    /// Sends a `ul` command to one shard and awaits its JSON answer.
    pub async fn ul(&self, shard: usize, cmd: UlCmd) -> Result<serde_json::Value, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.send(shard, ShardCmd::Ul { cmd, reply: tx })?;
        rx.await.map_err(|_| ControlError::ShardGone(shard))
    }

    /// Asks every shard to stop.
    pub fn shutdown(&self) {
        for stop in &self.stops {
            stop.store(true, Ordering::Release);
        }
        for shard in 0..self.senders.len() {
            if self.send(shard, ShardCmd::Shutdown).is_err() {
                if let Some(bell) = self.bells.get(shard) {
                    bell.ring();
                }
            }
        }
    }
}
