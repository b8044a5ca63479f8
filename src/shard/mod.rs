//! Shards: one glommio executor per core. (placeholder)
pub mod control;
