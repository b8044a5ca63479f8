//! The control-plane runtime: one tokio thread beside the shards, hosting the
//! database pool and the JSON-RPC server. Shards never run on it and never
//! block on it; they exchange messages with it over bounded channels.

use std::thread::JoinHandle;

/// A running control runtime; dropping it stops the thread.
pub struct ControlRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlRuntime {
    pub fn start() -> std::io::Result<ControlRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("control")
            .build()?;
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
            })?;
        Ok(ControlRuntime {
            handle,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
