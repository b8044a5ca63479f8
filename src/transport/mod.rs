//! Socket code, and only socket code: UDP sockets built with socket2 (one
//! shared by every shard, or one per shard with SO_REUSEPORT), TCP/TLS
//! connections and the registry every shard sends through (`conn`, `tls`),
//! and the Linux calls the shard loop waits and reads with (`sys`).
//!
//! Never: parse SIP or call into Lua.

pub mod conn;
pub mod sys;
pub mod tls;
pub mod udp;
