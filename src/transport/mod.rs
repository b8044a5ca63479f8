//! Socket code, and only socket code: per-shard SO_REUSEPORT UDP sockets built
//! with socket2 and handed to glommio.
//!
//! Never: parse SIP or call into Lua.

pub mod udp;
