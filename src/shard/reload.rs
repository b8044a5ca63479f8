//! Script reload for the whole server: `sipshard ctl kemi.reload` (or
//! Kamailio's name `app_lua.reload`) and SIGHUP.
//!
//! 1. The script file (`core.script`) is read again and loaded once on the
//!    calling thread (the control thread) into a throw-away engine: a syntax
//!    error, an error at load or a missing `ksr_request_route` is refused
//!    with Lua's message and no shard is touched.
//! 2. The source is sent to every shard's control queue; each shard builds a
//!    new VM around its existing state at the top of its loop, between
//!    messages, and swaps it in ([`crate::kemi::Engine::reload`]). Messages
//!    already read keep their routes; suspended ones finish in the old VM;
//!    nothing is lost or answered twice.
//!
//! With `[core] route = "native"` there is no script: a reload touches
//! nothing and answers success with `"reloaded": false` and a note.
//!
//! Reloads are serialised. The count, the time of the last one and the last
//! error are kept here (`kemi.status`), and each reload logs one line.

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::control::{ControlHandle, ScriptReload, ShardCmd};
use super::ShardParams;

/// How long a reload waits for every shard to swap.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A script's text and name (the path, as Lua's messages show it).
pub struct ScriptSource {
    pub text: String,
    pub name: String,
}

#[derive(Default)]
struct Status {
    reloads: u64,
    failed: u64,
    last_reload_unix_s: Option<u64>,
    last_error: Option<String>,
    script_name: String,
}

/// The server's reloader (one per process).
pub struct Reloader {
    params: Arc<ShardParams>,
    ctl: ControlHandle,
    status: Mutex<Status>,
}

impl Reloader {
    pub fn new(params: Arc<ShardParams>, ctl: ControlHandle) -> Reloader {
        let script_name = params.script_name.clone();
        Reloader {
            params,
            ctl,
            status: Mutex::new(Status {
                script_name,
                ..Status::default()
            }),
        }
    }

    fn run(&self, origin: &str) -> Result<Value, String> {
        if self.params.config.core.route == crate::config::RouteImpl::Native {
            tracing::info!(origin, "native route: no script to reload");
            return Ok(json!({
                "script": crate::config::NATIVE_ROUTE_NAME,
                "route": "native",
                "reloaded": false,
                "shards": self.ctl.shard_count(),
                "note": "the native route is compiled in: nothing to reload",
            }));
        }
        let t0 = Instant::now();
        let (text, name) = super::load_script(&self.params.config)?;
        // Validate on this thread first: a broken script never reaches a shard.
        self.params
            .engine_from(
                0,
                &self.params.config.shard,
                self.params.config.core.listen,
                &text,
                &name,
            )
            .map(drop)?;
        // The TLS certificate and key are read again with the script (a
        // bad file refuses the reload; the running ones stay).
        if let Some(tls) = self.params.tables.conns.get().and_then(|c| c.tls.clone()) {
            tls.reload().map_err(|e| format!("[tls]: {e}"))?;
        }
        let src = Arc::new(ScriptSource { text, name });
        let n = self.ctl.shard_count();
        let (tx, rx) = sync_channel(n.max(1));
        let mut errors = Vec::new();
        let mut asked = 0;
        for shard in 0..n {
            match self.ctl.send(
                shard,
                ShardCmd::Reload {
                    script: src.clone(),
                    reply: tx.clone(),
                },
            ) {
                Ok(()) => asked += 1,
                Err(e) => errors.push(format!("shard {shard}: {e}")),
            }
        }
        drop(tx);
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let mut done = 0;
        while done < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Ok(()))) => done += 1,
                Ok((shard, Err(e))) => {
                    done += 1;
                    errors.push(format!("shard {shard}: {e}"));
                }
                Err(_) => {
                    errors.push(format!(
                        "{} shard(s) did not answer within {RELOAD_TIMEOUT:?}",
                        asked - done
                    ));
                    break;
                }
            }
        }
        if !errors.is_empty() {
            return Err(format!(
                "script {} reloaded on {} of {n} shard(s): {}",
                src.name,
                n - errors.len().min(n),
                errors.join("; ")
            ));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.reloads += 1;
        st.last_reload_unix_s = Some(unix_now());
        st.script_name = src.name.clone();
        let reloads = st.reloads;
        drop(st);
        tracing::info!(
            script = %src.name,
            origin,
            shards = n,
            reloads,
            ms = format!("{ms:.1}"),
            "script reloaded"
        );
        Ok(json!({"script": src.name, "shards": n, "reloads": reloads, "ms": ms}))
    }
}

/// Serialises reloads (a second caller waits for the first).
static RELOAD_LOCK: Mutex<()> = Mutex::new(());

impl ScriptReload for Reloader {
    fn reload(&self, origin: &str) -> Result<Value, String> {
        let _one = RELOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.run(origin);
        if let Err(e) = &r {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.failed += 1;
            st.last_error = Some(e.clone());
            drop(st);
            tracing::error!(
                origin,
                "script reload refused, the running script stays: {e}"
            );
        }
        r
    }

    fn status(&self) -> Value {
        let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "script": st.script_name,
            "route": match self.params.config.core.route {
                crate::config::RouteImpl::Lua => "lua",
                crate::config::RouteImpl::Native => "native",
            },
            "reloads": st.reloads,
            "reloads_failed": st.failed,
            "last_reload": st.last_reload_unix_s,
            "last_error": st.last_error,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The shard's half: a new VM from `src` around this shard's state.
pub(super) fn apply(shard: &super::io::Shard, src: &ScriptSource) -> Result<(), String> {
    let r = shard.params.reload_engine(
        &shard.engine,
        shard.id,
        &shard.engine_tuning,
        shard.local,
        &src.text,
        &src.name,
    );
    match &r {
        Ok(()) => tracing::debug!(shard = shard.id, script = %src.name, "script swapped"),
        Err(e) => tracing::error!(shard = shard.id, "script reload failed on this shard: {e}"),
    }
    r
}
