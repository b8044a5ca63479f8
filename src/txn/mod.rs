//! RFC 3261 transactions for a stateful proxy, sans-IO.
//!
//! One [`Cell`] is what Kamailio's tm calls a transaction: the server
//! transaction of a request this proxy received, plus one client
//! transaction per branch it relayed that request to (§16.6), plus the
//! response context of §16.7. The [`Table`] owns every cell of one shard.
//!
//! The table never touches a socket or reads a clock: callers pass `now`
//! (milliseconds on any monotonic scale) and SIP bytes in, and take out
//!   - datagrams to send, with [`Table::drain_transmits`] (retransmissions,
//!     hop-by-hop ACKs, CANCELs, replies to the upstream client),
//!   - [`Event`]s for the transaction user (the KSR tm module) with
//!     [`Table::poll_event`], and
//!   - the next deadline with [`Table::poll_timeout`]; at or after it the
//!     caller calls [`Table::handle_timeout`].
//!
//! Timers (RFC 3261 §17, unreliable transport): A and E retransmit a
//! branch's request (T1 doubling; E capped at T2), B and F end a branch that
//! got no final reply after `fr_timer_ms` (Kamailio's fr_timer), and an
//! INVITE branch that got a provisional reply waits `fr_inv_timer_ms`
//! (Kamailio's fr_inv_timer, the RFC's timer C) before it is CANCELled and
//! counted as 408. G retransmits a final non-2xx reply to the client (T1
//! doubling, capped at T2) until H (64·T1) or the ACK; I (T4) absorbs ACK
//! retransmissions; K (T4) absorbs reply retransmissions of a non-INVITE
//! branch. D (INVITE branch completed), J (non-INVITE server completed) and
//! L/M (RFC 6026 Accepted, after a 2xx) last `wait_ms`, Kamailio's
//! wt_timer, instead of the RFC's 32 s, as Kamailio does. Every cell also
//! carries a guard timer, so no cell ever lives without a timer.
//!
//! Every table has a maximum: `max_cells` cells, `max_branches` branches a
//! cell.

#![forbid(unsafe_code)]

pub mod build;
#[doc(hidden)]
pub mod fuzzing;
mod table;

pub use build::{BranchRef, BRANCH_PREFIX};
pub use table::{
    Branch, Cell, CellId, ClientState, Event, Full, ReqMatch, RespAction, ServerState, Table,
    TxnStats,
};

/// Transaction timers and limits. Milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnConfig {
    /// RFC 3261 T1: round-trip estimate, first retransmission interval.
    pub t1_ms: u64,
    /// T2: the longest retransmission interval of non-INVITE requests and
    /// INVITE final replies.
    pub t2_ms: u64,
    /// T4: how long the network may hold a message (timers I and K).
    pub t4_ms: u64,
    /// A branch without a final reply after this long gets a local 408
    /// (timers B and F; Kamailio `fr_timer`).
    pub fr_timer_ms: u64,
    /// An INVITE branch that sent a provisional reply but no final one after
    /// this long is CANCELled and counted as 408 (Kamailio `fr_inv_timer`).
    pub fr_inv_timer_ms: u64,
    /// How long a finished transaction stays to absorb retransmissions
    /// (timers D, J, L and M; Kamailio `wt_timer`).
    pub wait_ms: u64,
    /// Cells in the table at most; `create` fails beyond it.
    pub max_cells: usize,
    /// Branches of one cell at most (parallel and serial together).
    pub max_branches: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            fr_timer_ms: 30_000,
            fr_inv_timer_ms: 120_000,
            wait_ms: 5000,
            max_cells: 65_536,
            max_branches: 12,
        }
    }
}

#[cfg(test)]
mod tests;
