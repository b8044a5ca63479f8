//! sipshard: a thread-per-core SIP proxy/registrar whose routing logic is Lua
//! written against Kamailio's KSR (KEMI) API.
//!
//! Layers, dependencies pointing one way:
//! `sip` (sans-IO parser/writer), `partition` (key hashing, lock stripes) ←
//! `auth`, `usrloc` (pure) ← `exec` (a shard's tasks and timers) ← `kemi`
//! (Lua per shard) ← `shard` / `transport` (shard threads, epoll, sockets).
//! `db` and `rpc` are the control plane: they run on their own tokio thread and
//! talk to shards only over bounded channels. See `docs/ARCHITECTURE.md`.

pub mod auth;
pub mod config;
pub mod db;
pub mod dispatcher;
pub mod exec;
pub mod flood;
pub mod http;
pub mod kemi;
pub mod loadgen;
pub mod partition;
pub mod rpc;
pub mod shard;
pub mod sip;
pub mod stats;
pub mod transport;
pub mod txn;
pub mod usrloc;
