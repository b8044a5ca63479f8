//! KSR.rr: Record-Route and loose routing (Kamailio `rr` module).
//!
//! (Being written: see issue 8.)

use super::{MsgCtx, Shared};

/// What `record_route*()` / `add_rr_param()` asked for; turned into a
/// Record-Route header when the request is relayed ([`write_record_route`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RrPending {}

/// Writes the complete `Record-Route: ...\r\n` line(s) this request must
/// carry when relayed (nothing when the route did not record-route).
pub(crate) fn write_record_route(_s: &Shared, _m: &MsgCtx, _out: &mut Vec<u8>) {}
