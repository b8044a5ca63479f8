//! User location, pure: the per-shard table of AOR → bindings ([`Location`])
//! and the RFC 3261 §10.3 registrar logic that edits it ([`Location::save`]),
//! with Kamailio `registrar` / `usrloc` behaviour and return codes.
//!
//! This module owns the bindings of the AORs routed to this shard. It must
//! never do I/O: no sockets, no database (it *reports* changes — per save in
//! [`SaveOutcome::changes`] for write-through, accumulated in
//! [`Location::take_dirty`] for write-back — and restores from rows given to
//! [`Location::load`]), no clock reads (`now_unix_s` is always a parameter),
//! no randomness (ruids come from [`RuidGen`]), no executor, script engine or
//! database crate. The table is bounded: at most `max_aors` AORs and
//! `max_contacts_per_aor` bindings each, and a bounded dirty set.
//!
//! It takes plain typed inputs ([`SaveRequest`], [`ContactSpec`]) so the KSR
//! layer builds them from the parsed REGISTER (To URI → AOR, Contact values,
//! Expires, Call-ID, CSeq, Path, Allow, User-Agent, received/socket).
//!
//! Contact URIs are compared as strings (Kamailio's contact matching), not with
//! RFC 3261 §19.1.4 URI equivalence.

#![forbid(unsafe_code)]

mod contact;
mod reply;
mod ruid;
mod save;
mod table;

pub use contact::{
    format_q, method_bit, method_bits, methods_from_allow, Binding, BindingStrs, Record, Ucontact,
    FIELD_MAX, FLAG_MEM_ONLY,
};
pub use reply::{contact_headers, error_headers, ok_headers, ReplyContact, ReplyOpts};
pub use ruid::RuidGen;
pub use save::{Changes, ContactSpec, SaveError, SaveFlags, SaveOutcome, SaveRequest};
pub use table::{
    Contacts, DirtyBatch, Expired, LoadReport, Location, LocationParams, MatchingMode,
    MinExpiresMode, PathMode, RegisteredMatch, RegistrarParams, Unregister, UnregisterError,
};

/// Return codes of Kamailio `registrar` functions, as its documentation lists
/// them ("Return codes" of `save`, `lookup`, `registered`, `unregister`). KSR
/// returns these to Lua unchanged.
pub mod codes {
    /// `save()`: contacts inserted.
    pub const SAVE_INSERTED: i32 = 1;
    /// `save()`: contacts updated.
    pub const SAVE_UPDATED: i32 = 2;
    /// `save()`: contacts deleted.
    pub const SAVE_DELETED: i32 = 3;
    /// `save()`: contacts returned (a query, or nothing changed).
    pub const SAVE_RETURNED: i32 = 4;
    /// `save()`: error.
    pub const SAVE_ERROR: i32 = -1;
    /// `save()`: error, too many contacts for AOR.
    pub const SAVE_TOO_MANY_CONTACTS: i32 = -2;

    /// `lookup()`: contacts found and returned.
    pub const LOOKUP_FOUND: i32 = 1;
    /// `lookup()`: no contact found.
    pub const LOOKUP_NOT_FOUND: i32 = -1;
    /// `lookup()`: contacts found, but method not supported.
    pub const LOOKUP_METHOD_NOT_SUPPORTED: i32 = -2;
    /// `lookup()`: internal error during processing.
    pub const LOOKUP_INTERNAL_ERROR: i32 = -3;

    /// `registered()`: the AOR is registered (KSR true).
    pub const REGISTERED_TRUE: i32 = 1;
    /// `registered()`: not registered (KSR false).
    pub const REGISTERED_FALSE: i32 = -1;

    /// `unregister()`: successfully deleted contact(s). Note: Kamailio
    /// documents 0, which a native config script treats as "exit"; the KSR
    /// layer should decide whether to map it to 1 for Lua.
    pub const UNREGISTER_OK: i32 = 0;
    /// `unregister()`: failed to extract or parse the AOR from the argument.
    pub const UNREGISTER_BAD_AOR: i32 = -1;
    /// `unregister()`: error in unregistering user.
    pub const UNREGISTER_ERROR: i32 = -2;
    /// `unregister()`: contacts for AOR not found.
    pub const UNREGISTER_NOT_FOUND: i32 = -3;
}

/// `lookup()` result code plus the contacts (empty unless found).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LookupCode {
    Found,
    NotFound,
    MethodNotSupported,
    InternalError,
}

impl LookupCode {
    pub const fn code(self) -> i32 {
        match self {
            LookupCode::Found => codes::LOOKUP_FOUND,
            LookupCode::NotFound => codes::LOOKUP_NOT_FOUND,
            LookupCode::MethodNotSupported => codes::LOOKUP_METHOD_NOT_SUPPORTED,
            LookupCode::InternalError => codes::LOOKUP_INTERNAL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kamailio_docs() {
        let table = [
            (codes::SAVE_INSERTED, 1),
            (codes::SAVE_UPDATED, 2),
            (codes::SAVE_DELETED, 3),
            (codes::SAVE_RETURNED, 4),
            (codes::SAVE_ERROR, -1),
            (codes::SAVE_TOO_MANY_CONTACTS, -2),
            (codes::LOOKUP_FOUND, 1),
            (codes::LOOKUP_NOT_FOUND, -1),
            (codes::LOOKUP_METHOD_NOT_SUPPORTED, -2),
            (codes::LOOKUP_INTERNAL_ERROR, -3),
            (codes::REGISTERED_TRUE, 1),
            (codes::REGISTERED_FALSE, -1),
            (codes::UNREGISTER_OK, 0),
            (codes::UNREGISTER_BAD_AOR, -1),
            (codes::UNREGISTER_ERROR, -2),
            (codes::UNREGISTER_NOT_FOUND, -3),
        ];
        for (i, (got, want)) in table.into_iter().enumerate() {
            assert_eq!(got, want, "row {i}");
        }
        assert_eq!(LookupCode::Found.code(), 1);
        assert_eq!(LookupCode::NotFound.code(), -1);
        assert_eq!(LookupCode::MethodNotSupported.code(), -2);
        assert_eq!(LookupCode::InternalError.code(), -3);
    }
}
