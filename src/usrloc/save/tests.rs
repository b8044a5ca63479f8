//! Table-driven tests of `save` (RFC 3261 §10.3 branches, Kamailio limits).

use super::*;
use crate::usrloc::table::{LocationParams, RegistrarParams};
use crate::usrloc::{codes, RuidGen};

const T0: u64 = 1_700_000_000;

fn loc_with(params: LocationParams, reg: RegistrarParams) -> Location {
    Location::new(params, reg, RuidGen::new(1, 100))
}

fn loc() -> Location {
    loc_with(
        LocationParams {
            track_dirty: true,
            ..Default::default()
        },
        RegistrarParams::default(),
    )
}

fn spec(uri: &str) -> ContactSpec<'_> {
    ContactSpec::new(uri)
}

fn spec_exp(uri: &str, expires_s: u32) -> ContactSpec<'_> {
    ContactSpec {
        expires_s: Some(expires_s),
        ..ContactSpec::new(uri)
    }
}

fn req<'a>(contacts: &'a [ContactSpec<'a>], call_id: &'a str, cseq: u32) -> SaveRequest<'a> {
    SaveRequest {
        aor: "alice",
        contacts,
        call_id,
        cseq,
        user_agent: "ua/1",
        ..Default::default()
    }
}

fn uris(o: &SaveOutcome) -> Vec<(&str, u32)> {
    o.contacts
        .iter()
        .map(|c| (c.uri.as_str(), c.expires_s))
        .collect()
}

fn bound(l: &Location, now: u64) -> Vec<String> {
    let mut v: Vec<String> = l
        .lookup("alice", now)
        .map(|v| v.iter().map(|c| c.contact.clone()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn expires_sources_and_limits() {
    // (contact param, Expires header, override, registrar params tweak, expected expires or error)
    type Tweak = fn(&mut RegistrarParams);
    let none: Tweak = |_| {};
    let max_600: Tweak = |p| p.max_expires_s = 600;
    let reject: Tweak = |p| p.min_expires_mode = MinExpiresMode::Reject;
    let no_min: Tweak = |p| p.min_expires_s = 0;
    type Case = (
        Option<u32>,
        Option<u32>,
        Option<u32>,
        Tweak,
        Result<u32, SaveError>,
    );
    let cases: [Case; 12] = [
        (None, None, None, none, Ok(3600)),
        (None, Some(1800), None, none, Ok(1800)),
        (Some(120), Some(1800), None, none, Ok(120)),
        (Some(120), Some(1800), Some(900), none, Ok(900)),
        (None, Some(7200), None, max_600, Ok(600)),
        (Some(u32::MAX), None, None, max_600, Ok(600)),
        (Some(u32::MAX), None, None, none, Ok(u32::MAX)),
        (Some(30), None, None, none, Ok(60)),
        (
            Some(30),
            None,
            None,
            reject,
            Err(SaveError::IntervalTooBrief { min_expires_s: 60 }),
        ),
        (
            Some(59),
            Some(3600),
            None,
            reject,
            Err(SaveError::IntervalTooBrief { min_expires_s: 60 }),
        ),
        (Some(1), None, None, no_min, Ok(1)),
        (Some(60), None, None, reject, Ok(60)),
    ];
    for (i, (param, hdr, over, tweak, want)) in cases.into_iter().enumerate() {
        let mut reg = RegistrarParams::default();
        tweak(&mut reg);
        let mut l = loc_with(LocationParams::default(), reg);
        let c = [ContactSpec {
            expires_s: param,
            ..spec("sip:a@h")
        }];
        let r = SaveRequest {
            expires_hdr_s: hdr,
            expires_override_s: over,
            ..req(&c, "c", 1)
        };
        let got = l.save(T0, &r).map(|o| o.contacts[0].expires_s);
        assert_eq!(got, want, "case {i}");
        if want.is_err() {
            assert!(l.is_empty(), "case {i}: nothing committed");
        } else {
            let stored = &l.record("alice").expect("rec").contacts[0];
            assert_eq!(
                stored.expires_unix_s,
                T0 + u64::from(want.clone().unwrap_or(0)),
                "case {i}"
            );
        }
    }
}

#[test]
fn insert_refresh_remove_codes() {
    let mut l = loc();
    // Query on an empty AOR.
    let o = l.save(T0, &req(&[], "c", 1)).expect("query");
    assert_eq!((o.code(), o.contacts.len()), (codes::SAVE_RETURNED, 0));
    // Insert.
    let c = [spec("sip:a@1")];
    let o = l.save(T0, &req(&c, "c", 1)).expect("insert");
    assert_eq!(o.code(), codes::SAVE_INSERTED);
    assert_eq!(uris(&o), [("sip:a@1", 3600)]);
    let ruid = o.changes.inserted[0].ruid.clone();
    assert_eq!(ruid, "uloc-64-1-1");
    // Refresh with a higher CSeq: updated, same ruid.
    let o = l.save(T0 + 100, &req(&c, "c", 2)).expect("refresh");
    assert_eq!(o.code(), codes::SAVE_UPDATED);
    assert_eq!(o.changes.updated[0].ruid, ruid);
    assert_eq!(uris(&o), [("sip:a@1", 3600)]);
    // Query returns remaining time.
    let o = l.save(T0 + 200, &req(&[], "x", 1)).expect("query");
    assert_eq!(
        (o.code(), uris(&o)),
        (codes::SAVE_RETURNED, vec![("sip:a@1", 3500)])
    );
    // expires=0 for an unknown contact: nothing happens.
    let z = [spec_exp("sip:a@9", 0)];
    let o = l.save(T0 + 300, &req(&z, "c", 3)).expect("noop");
    assert_eq!(o.code(), codes::SAVE_RETURNED);
    assert!(o.changes.is_empty());
    // expires=0 via header removes.
    let r = SaveRequest {
        expires_hdr_s: Some(0),
        ..req(&c, "c", 4)
    };
    let o = l.save(T0 + 300, &r).expect("remove");
    assert_eq!(o.code(), codes::SAVE_DELETED);
    assert_eq!(o.changes.deleted[0].ruid, ruid);
    assert!(o.contacts.is_empty());
    assert!(l.is_empty(), "empty records are dropped");
}

#[test]
fn mixed_request_updates_adds_removes() {
    let mut l = loc();
    let c = [spec("sip:a@1"), spec("sip:a@2")];
    l.save(T0, &req(&c, "c", 1)).expect("two");
    let c = [
        spec_exp("sip:a@1", 0),
        spec_exp("sip:a@2", 120),
        spec("sip:a@3"),
    ];
    let o = l.save(T0 + 1, &req(&c, "c", 2)).expect("mixed");
    assert_eq!(o.code(), codes::SAVE_INSERTED);
    assert_eq!(
        (
            o.changes.inserted.len(),
            o.changes.updated.len(),
            o.changes.deleted.len()
        ),
        (1, 1, 1)
    );
    let mut got = uris(&o);
    got.sort();
    assert_eq!(got, [("sip:a@2", 120), ("sip:a@3", 3600)]);
}

#[test]
fn star_branches() {
    let c2 = [spec("sip:a@1"), spec("sip:a@2")];
    let star = [spec("*")];
    let star_and = [spec("*"), spec("sip:a@1")];
    // (contacts, Expires header, call-id, cseq, expected)
    type Case<'a> = (
        &'a [ContactSpec<'a>],
        Option<u32>,
        &'a str,
        u32,
        Result<usize, SaveError>,
    );
    let cases: [Case<'_>; 8] = [
        (&star, Some(0), "other", 1, Ok(2)),
        (&star, Some(0), "c", 6, Ok(2)),
        (
            &star,
            Some(3600),
            "c",
            6,
            Err(SaveError::StarExpiresNotZero),
        ),
        (&star, None, "c", 6, Err(SaveError::StarExpiresNotZero)),
        (
            &star_and,
            Some(0),
            "c",
            6,
            Err(SaveError::StarWithOtherContacts),
        ),
        // same Call-ID, lower CSeq: the request fails
        (&star, Some(0), "c", 4, Err(SaveError::InvalidCseq)),
        // same Call-ID and CSeq, after cseq_delay: fails
        (&star, Some(0), "c", 5, Err(SaveError::InvalidCseq)),
        // expires param on '*' is irrelevant, only the header counts
        (
            &[ContactSpec {
                expires_s: Some(0),
                ..ContactSpec::new("*")
            }],
            None,
            "c",
            6,
            Err(SaveError::StarExpiresNotZero),
        ),
    ];
    for (i, (contacts, hdr, cid, cseq, want)) in cases.into_iter().enumerate() {
        let mut l = loc();
        l.save(T0, &req(&c2, "c", 5)).expect("setup");
        let r = SaveRequest {
            expires_hdr_s: hdr,
            ..req(contacts, cid, cseq)
        };
        let got = l.save(T0 + 100, &r).map(|o| {
            assert_eq!(o.code(), codes::SAVE_DELETED, "case {i}");
            assert!(o.contacts.is_empty());
            o.changes.deleted.len()
        });
        assert_eq!(got, want, "case {i}");
        let left = bound(&l, T0 + 100).len();
        assert_eq!(left, if want.is_ok() { 0 } else { 2 }, "case {i}: atomic");
    }
    // Star on an empty AOR is fine.
    let mut l = loc();
    let r = SaveRequest {
        expires_hdr_s: Some(0),
        ..req(&star, "c", 1)
    };
    assert_eq!(l.save(T0, &r).map(|o| o.code()), Ok(codes::SAVE_RETURNED));
}

#[test]
fn star_retransmission_within_delay() {
    let mut l = loc();
    let c = [spec("sip:a@1")];
    l.save(T0, &req(&c, "c", 5)).expect("setup");
    let star = [spec("*")];
    let r = SaveRequest {
        expires_hdr_s: Some(0),
        ..req(&star, "c", 5)
    };
    let o = l.save(T0 + 2, &r).expect("retransmission");
    assert!(o.retransmission);
    assert_eq!(o.code(), codes::SAVE_RETURNED);
    assert_eq!(bound(&l, T0 + 2), ["sip:a@1"]);
}

#[test]
fn call_id_and_cseq_rules() {
    // Binding made at T0 with Call-ID "c", CSeq 5. (call-id, cseq, at, expected outcome)
    #[derive(Debug, PartialEq)]
    enum Want {
        Updated,
        Retrans,
        Err(SaveError),
    }
    let cases = [
        ("c", 6, T0 + 1, Want::Updated),
        ("c", 5, T0 + 1, Want::Retrans),
        ("c", 5, T0 + 20, Want::Retrans),
        ("c", 5, T0 + 21, Want::Err(SaveError::InvalidCseq)),
        ("c", 4, T0 + 1, Want::Err(SaveError::InvalidCseq)),
        ("c", 0, T0 + 1, Want::Err(SaveError::InvalidCseq)),
        ("other", 1, T0 + 1, Want::Updated), // another Call-ID replaces
        ("other", 5, T0 + 1, Want::Updated),
        // binding expired (default 3600 s): no CSeq check
        ("c", 1, T0 + 3600, Want::Updated),
    ];
    for (i, (cid, cseq, at, want)) in cases.into_iter().enumerate() {
        let mut l = loc();
        let c = [spec("sip:a@1")];
        let first = l.save(T0, &req(&c, "c", 5)).expect("setup");
        let ruid = first.changes.inserted[0].ruid.clone();
        let got = match l.save(at, &req(&c, cid, cseq)) {
            Ok(o) if o.retransmission => {
                assert!(o.changes.is_empty(), "case {i}");
                assert_eq!(uris(&o).len(), 1);
                Want::Retrans
            }
            Ok(o) => {
                assert_eq!(o.code(), codes::SAVE_UPDATED, "case {i}");
                assert_eq!(o.changes.updated[0].ruid, ruid, "case {i}: ruid kept");
                assert_eq!(o.changes.updated[0].callid, cid);
                Want::Updated
            }
            Err(e) => Want::Err(e),
        };
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn failure_is_atomic() {
    let mut l = loc();
    let c = [spec("sip:a@1"), spec("sip:a@2")];
    l.save(T0, &req(&c, "c", 5)).expect("setup");
    let before: Vec<Ucontact> = l.record("alice").expect("rec").contacts.clone();
    l.take_dirty();
    // First contact would be removed, a new one added, but the third fails.
    let bad = [
        spec_exp("sip:a@1", 0),
        spec("sip:a@3"),
        ContactSpec {
            q: Some(1001),
            ..spec("sip:a@4")
        },
    ];
    assert_eq!(l.save(T0 + 1, &req(&bad, "c", 6)), Err(SaveError::InvalidQ));
    assert_eq!(l.record("alice").expect("rec").contacts, before);
    assert_eq!(l.take_dirty(), Default::default());
    // CSeq failure on a later contact, too.
    let bad = [spec_exp("sip:a@1", 0), spec("sip:a@2")];
    assert_eq!(
        l.save(T0 + 100, &req(&bad, "c", 4)),
        Err(SaveError::InvalidCseq)
    );
    assert_eq!(l.record("alice").expect("rec").contacts, before);
}

#[test]
fn instance_and_reg_id_matching() {
    let inst = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";
    let mut l = loc();
    let c = [ContactSpec {
        instance: Some(inst),
        reg_id: Some(1),
        ..spec("sip:a@10.0.0.1:5060")
    }];
    let o = l.save(T0, &req(&c, "c", 1)).expect("first");
    let ruid = o.changes.inserted[0].ruid.clone();
    // New IP (e.g. new NAT binding), same instance and reg-id: same binding.
    let c = [ContactSpec {
        instance: Some(inst),
        reg_id: Some(1),
        ..spec("sip:a@10.0.0.2:5060")
    }];
    let o = l.save(T0 + 1, &req(&c, "c2", 1)).expect("moved");
    assert_eq!(o.code(), codes::SAVE_UPDATED);
    assert_eq!(o.changes.updated[0].ruid, ruid);
    assert_eq!(uris(&o), [("sip:a@10.0.0.2:5060", 3600)]);
    // Same instance, another reg-id (second flow): a new binding.
    let c = [ContactSpec {
        instance: Some(inst),
        reg_id: Some(2),
        ..spec("sip:a@10.0.0.2:5060")
    }];
    let o = l.save(T0 + 2, &req(&c, "c3", 1)).expect("flow 2");
    assert_eq!(o.code(), codes::SAVE_INSERTED);
    assert_eq!(o.contacts.len(), 2);
    assert_eq!(
        o.contacts
            .iter()
            .filter(|c| c.instance.as_deref() == Some(inst))
            .count(),
        2
    );
    // Another instance with a URI equal to a stored one: not the same binding.
    let c = [ContactSpec {
        instance: Some("<urn:uuid:other>"),
        ..spec("sip:a@10.0.0.2:5060")
    }];
    let o = l.save(T0 + 3, &req(&c, "c4", 1)).expect("other instance");
    assert_eq!(o.code(), codes::SAVE_INSERTED);
    // A URI-only binding is adopted when the UA starts sending an instance.
    let mut l = loc();
    l.save(T0, &req(&[spec("sip:b@h")], "c", 1)).expect("plain");
    let c = [ContactSpec {
        instance: Some(inst),
        ..spec("sip:b@h")
    }];
    let o = l.save(T0 + 1, &req(&c, "c", 2)).expect("adopt");
    assert_eq!(o.code(), codes::SAVE_UPDATED);
    assert_eq!(
        l.record("alice").expect("rec").contacts[0]
            .instance
            .as_deref(),
        Some(inst)
    );
    // Removal by instance with expires=0 and any URI.
    let c = [ContactSpec {
        instance: Some(inst),
        ..spec_exp("sip:whatever", 0)
    }];
    let o = l.save(T0 + 2, &req(&c, "c", 3)).expect("remove");
    assert_eq!(o.code(), codes::SAVE_DELETED);
}

#[test]
fn matching_modes() {
    let cases = [
        // (mode, second request contact, second call-id, bindings after)
        (MatchingMode::Contact, "sip:a@1", "c2", 1),
        (MatchingMode::Contact, "sip:a@2", "c1", 2),
        (MatchingMode::ContactCallid, "sip:a@1", "c2", 2),
        (MatchingMode::ContactCallid, "sip:a@1", "c1", 1),
        (MatchingMode::Callid, "sip:a@2", "c1", 1),
        (MatchingMode::Callid, "sip:a@1", "c2", 2),
        (MatchingMode::ContactPath, "sip:a@1", "c2", 1),
    ];
    for (i, (mode, uri, cid, want)) in cases.into_iter().enumerate() {
        let mut l = loc_with(
            LocationParams {
                matching_mode: mode,
                ..Default::default()
            },
            RegistrarParams::default(),
        );
        l.save(T0, &req(&[spec("sip:a@1")], "c1", 1))
            .expect("first");
        let c = [spec(uri)];
        l.save(T0 + 1, &req(&c, cid, 2)).expect("second");
        assert_eq!(
            l.record("alice").expect("rec").contacts.len(),
            want,
            "case {i} {mode:?}"
        );
    }
    // ContactPath: same URI through another path is another binding.
    let reg = RegistrarParams {
        use_path: true,
        path_mode: PathMode::Off,
        ..Default::default()
    };
    let mut l = loc_with(
        LocationParams {
            matching_mode: MatchingMode::ContactPath,
            ..Default::default()
        },
        reg,
    );
    let c = [spec("sip:a@1")];
    l.save(
        T0,
        &SaveRequest {
            path: Some("<sip:p1;lr>"),
            ..req(&c, "c1", 1)
        },
    )
    .expect("p1");
    l.save(
        T0,
        &SaveRequest {
            path: Some("<sip:p2;lr>"),
            ..req(&c, "c1", 2)
        },
    )
    .expect("p2");
    assert_eq!(l.record("alice").expect("rec").contacts.len(), 2);
    l.save(
        T0,
        &SaveRequest {
            path: Some("<sip:p1;lr>"),
            ..req(&c, "c1", 3)
        },
    )
    .expect("p1 again");
    assert_eq!(l.record("alice").expect("rec").contacts.len(), 2);
}

#[test]
fn max_contacts_limits() {
    let reg = RegistrarParams {
        max_contacts: 2,
        ..Default::default()
    };
    let mut l = loc_with(LocationParams::default(), reg);
    let two = [spec("sip:a@1"), spec("sip:a@2")];
    l.save(T0, &req(&two, "c", 1)).expect("two");
    let third = [spec("sip:a@3")];
    let e = l.save(T0 + 1, &req(&third, "c", 2)).expect_err("three");
    assert_eq!(e, SaveError::TooManyContacts { max: 2 });
    assert_eq!(
        (e.status(), e.reason(), e.code()),
        (503, "Service Unavailable", -2)
    );
    assert_eq!(bound(&l, T0 + 1), ["sip:a@1", "sip:a@2"]);
    // Replacing one with another in one request stays within the limit.
    let swap = [spec_exp("sip:a@1", 0), spec("sip:a@3")];
    assert_eq!(
        l.save(T0 + 2, &req(&swap, "c", 3)).map(|o| o.code()),
        Ok(codes::SAVE_INSERTED)
    );
    // Per-request override.
    let cs = [spec("sip:a@4")];
    let r = SaveRequest {
        max_contacts: Some(3),
        ..req(&cs, "c", 4)
    };
    assert!(l.save(T0 + 3, &r).is_ok());
    // Lowering the limit does not block refreshes or removals.
    let cs = [spec("sip:a@4")];
    let r = SaveRequest {
        max_contacts: Some(1),
        ..req(&cs, "c", 5)
    };
    assert_eq!(
        l.save(T0 + 4, &r).map(|o| o.code()),
        Ok(codes::SAVE_UPDATED)
    );
    let cs = [spec_exp("sip:a@4", 0)];
    let r = SaveRequest {
        max_contacts: Some(1),
        ..req(&cs, "c", 6)
    };
    assert_eq!(
        l.save(T0 + 5, &r).map(|o| o.code()),
        Ok(codes::SAVE_DELETED)
    );
    // Expired bindings do not count.
    let mut l = loc_with(
        LocationParams::default(),
        RegistrarParams {
            max_contacts: 1,
            ..Default::default()
        },
    );
    l.save(T0, &req(&[spec_exp("sip:a@1", 60)], "c", 1))
        .expect("one");
    let o = l
        .save(T0 + 60, &req(&[spec("sip:a@2")], "c", 2))
        .expect("old one expired");
    assert_eq!(o.changes.deleted.len(), 1, "expired binding purged");
    assert_eq!(uris(&o), [("sip:a@2", 3600)]);
}

#[test]
fn table_bounds() {
    let params = LocationParams {
        max_aors: 1,
        max_contacts_per_aor: 2,
        ..Default::default()
    };
    let mut l = loc_with(params, RegistrarParams::default());
    l.save(T0, &req(&[spec("sip:a@1"), spec("sip:a@2")], "c", 1))
        .expect("fill");
    let e = l
        .save(T0, &req(&[spec("sip:a@3")], "c", 2))
        .expect_err("hard per-AOR bound");
    assert_eq!(e, SaveError::TooManyContacts { max: 2 });
    let other = [spec("sip:b@1")];
    let r = SaveRequest {
        aor: "bob",
        ..req(&other, "c", 1)
    };
    let e = l.save(T0, &r).expect_err("table full");
    assert_eq!(
        (e.clone(), e.status(), e.code()),
        (SaveError::TableFull, 503, -1)
    );
    // Queries and removals for unknown AORs are fine with a full table.
    let cs = [spec_exp("sip:b@1", 0)];
    let r = SaveRequest {
        aor: "bob",
        ..req(&cs, "c", 1)
    };
    assert!(l.save(T0, &r).is_ok());
    assert_eq!(l.len(), 1);
}

#[test]
fn single_contact_flag() {
    let mut l = loc();
    l.save(T0, &req(&[spec("sip:a@1"), spec("sip:a@2")], "c", 1))
        .expect("two");
    let cs = [spec("sip:a@3")];
    let r = SaveRequest {
        flags: SaveFlags(SaveFlags::SINGLE_CONTACT),
        ..req(&cs, "c", 2)
    };
    let o = l.save(T0 + 1, &r).expect("single");
    assert_eq!(uris(&o), [("sip:a@3", 3600)]);
    assert_eq!(o.changes.deleted.len(), 2);
    // Refreshing the same contact keeps it.
    let cs = [spec("sip:a@3")];
    let r = SaveRequest {
        flags: SaveFlags(SaveFlags::SINGLE_CONTACT),
        ..req(&cs, "c", 3)
    };
    let o = l.save(T0 + 2, &r).expect("refresh");
    assert_eq!((o.code(), o.contacts.len()), (codes::SAVE_UPDATED, 1));
}

#[test]
fn path_modes() {
    // (use_path, mode, Supported: path, expect stored, expect reflected, or error)
    let cases = [
        (false, PathMode::Strict, false, Ok((false, false))),
        (true, PathMode::Off, false, Ok((true, false))),
        (true, PathMode::Off, true, Ok((true, false))),
        (true, PathMode::Lazy, false, Ok((true, false))),
        (true, PathMode::Lazy, true, Ok((true, true))),
        (
            true,
            PathMode::Strict,
            false,
            Err(SaveError::PathNotSupported),
        ),
        (true, PathMode::Strict, true, Ok((true, true))),
    ];
    for (i, (use_path, path_mode, supported, want)) in cases.into_iter().enumerate() {
        let reg = RegistrarParams {
            use_path,
            path_mode,
            ..Default::default()
        };
        let mut l = loc_with(LocationParams::default(), reg);
        let c = [spec("sip:a@1")];
        let r = SaveRequest {
            path: Some("<sip:edge;lr>"),
            path_supported: supported,
            ..req(&c, "c", 1)
        };
        let got = l.save(T0, &r).map(|o| {
            let stored = l.record("alice").expect("rec").contacts[0].path.is_some();
            (stored, o.reply_path.is_some())
        });
        assert_eq!(got, want, "case {i}");
    }
    assert_eq!(SaveError::PathNotSupported.status(), 420);
}

#[test]
fn field_validation() {
    let long_uri = format!("sip:{}@h", "a".repeat(600));
    let long_cid = "c".repeat(256);
    let long_path = "p".repeat(513);
    let long_inst = "i".repeat(256);
    let mut l = loc();
    let c = [spec(&long_uri)];
    assert_eq!(l.save(T0, &req(&c, "c", 1)), Err(SaveError::ContactTooLong));
    let c = [spec("")];
    assert_eq!(l.save(T0, &req(&c, "c", 1)), Err(SaveError::EmptyContact));
    let c = [spec("sip:a@h")];
    assert_eq!(
        l.save(T0, &req(&c, &long_cid, 1)),
        Err(SaveError::FieldTooLong("Call-ID"))
    );
    let r = SaveRequest {
        path: Some(&long_path),
        ..req(&c, "c", 1)
    };
    assert_eq!(l.save(T0, &r), Err(SaveError::FieldTooLong("Path")));
    let r = SaveRequest {
        received: Some(&long_path),
        ..req(&c, "c", 1)
    };
    assert_eq!(l.save(T0, &r), Err(SaveError::FieldTooLong("received")));
    let r = SaveRequest {
        socket: Some(&long_path),
        ..req(&c, "c", 1)
    };
    assert_eq!(l.save(T0, &r), Err(SaveError::FieldTooLong("socket")));
    let ci = [ContactSpec {
        instance: Some(&long_inst),
        ..spec("sip:a@h")
    }];
    assert_eq!(
        l.save(T0, &req(&ci, "c", 1)),
        Err(SaveError::FieldTooLong("+sip.instance"))
    );
    let r = SaveRequest {
        q_override: Some(2000),
        ..req(&c, "c", 1)
    };
    assert_eq!(l.save(T0, &r), Err(SaveError::InvalidQ));
    let r = SaveRequest {
        aor: "",
        ..req(&c, "c", 1)
    };
    assert_eq!(l.save(T0, &r), Err(SaveError::InvalidAor));
    assert!(l.is_empty());
    // A long User-Agent is truncated at a char boundary, not refused.
    let ua = "é".repeat(200);
    let r = SaveRequest {
        user_agent: &ua,
        ..req(&c, "c", 1)
    };
    l.save(T0, &r).expect("ua");
    let stored = &l.record("alice").expect("rec").contacts[0].user_agent;
    assert!(
        stored.len() <= 255 && stored.len() >= 254,
        "{}",
        stored.len()
    );
}

#[test]
fn stored_columns() {
    let mut l = loc();
    let c = [ContactSpec {
        q: Some(700),
        ..spec("sip:a@10.0.0.1")
    }];
    let r = SaveRequest {
        aor: "Alice",
        received: Some("sip:198.51.100.1:5062"),
        socket: Some("udp:192.0.2.1:5060"),
        methods: Some(crate::usrloc::method_bits::INVITE),
        cflags: 64,
        ..req(&c, "cid-1", 7)
    };
    l.save(T0, &r).expect("save");
    let s = &l.lookup("ALICE", T0).expect("found")[0];
    assert_eq!(s.contact, "sip:a@10.0.0.1");
    assert_eq!(s.received.as_deref(), Some("sip:198.51.100.1:5062"));
    assert_eq!(s.socket.as_deref(), Some("udp:192.0.2.1:5060"));
    assert_eq!(s.methods, crate::usrloc::method_bits::INVITE);
    assert_eq!(
        (s.q, s.cflags, s.cseq, s.callid.as_str()),
        (Some(700), 64, 7, "cid-1")
    );
    assert_eq!((s.expires_unix_s, s.last_modified_unix_s), (T0 + 3600, T0));
    assert_eq!(s.user_agent, "ua/1");
    assert_eq!(s.flags, 0);
    // default_q and q override
    let reg = RegistrarParams {
        default_q: Some(100),
        ..Default::default()
    };
    let mut l = loc_with(LocationParams::default(), reg);
    l.save(T0, &req(&[spec("sip:x")], "c", 1))
        .expect("default q");
    assert_eq!(l.lookup("alice", T0).expect("x")[0].q, Some(100));
    let cs = [ContactSpec {
        q: Some(1),
        ..spec("sip:x")
    }];
    let r = SaveRequest {
        q_override: Some(900),
        ..req(&cs, "c", 2)
    };
    l.save(T0, &r).expect("override q");
    assert_eq!(l.lookup("alice", T0).expect("x")[0].q, Some(900));
}

#[test]
fn reply_lists_all_bindings_in_lookup_order() {
    let mut l = loc();
    let c = [
        ContactSpec {
            q: Some(100),
            ..spec_exp("sip:low", 600)
        },
        ContactSpec {
            q: Some(900),
            ..spec_exp("sip:high", 300)
        },
        spec("sip:none"),
    ];
    let o = l.save(T0, &req(&c, "c", 1)).expect("save");
    assert_eq!(
        uris(&o),
        [("sip:high", 300), ("sip:low", 600), ("sip:none", 3600)]
    );
    let o = l
        .save(T0 + 100, &req(&[spec("sip:new")], "c", 2))
        .expect("another");
    assert_eq!(
        uris(&o),
        [
            ("sip:high", 200),
            ("sip:low", 500),
            ("sip:new", 3600),
            ("sip:none", 3500)
        ]
    );
    assert_eq!(l.query("alice", T0 + 100), o.contacts);
}

#[test]
fn dirty_tracking_write_back() {
    let mut l = loc();
    let o = l
        .save(T0, &req(&[spec("sip:a@1"), spec("sip:a@2")], "c", 1))
        .expect("two");
    let r1 = o.changes.inserted[0].ruid.clone();
    let r2 = o.changes.inserted[1].ruid.clone();
    l.check_dirty();
    let d = l.take_dirty();
    assert_eq!(
        d.upserts
            .iter()
            .map(|(a, c)| (a.as_str(), c.ruid.as_str()))
            .collect::<Vec<_>>(),
        [("alice", r1.as_str()), ("alice", r2.as_str())]
    );
    assert!(d.deletes.is_empty() && !d.overflowed);
    // Update then delete before the flush: only the delete is written.
    l.save(T0 + 1, &req(&[spec("sip:a@1")], "c", 2))
        .expect("refresh");
    l.save(T0 + 2, &req(&[spec_exp("sip:a@1", 0)], "c", 3))
        .expect("remove");
    l.save(T0 + 3, &req(&[spec("sip:a@2")], "c", 4))
        .expect("refresh 2");
    l.check_dirty();
    let d = l.take_dirty();
    assert_eq!(d.deletes, [r1]);
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(d.upserts[0].1.ruid, r2);
    assert_eq!(d.upserts[0].1.cseq, 4, "the current row is written");
    // Memory-only saves never reach the DB.
    let cs = [spec("sip:m")];
    let r = SaveRequest {
        flags: SaveFlags(SaveFlags::MEM_ONLY),
        ..req(&cs, "c", 5)
    };
    let o = l.save(T0 + 4, &r).expect("mem");
    assert!(o.changes.inserted[0].is_mem_only());
    l.check_dirty();
    assert_eq!(l.take_dirty(), Default::default());
    // A later normal save of the same binding clears the flag and writes it.
    l.save(T0 + 5, &req(&[spec("sip:m")], "c", 6))
        .expect("normal");
    l.check_dirty();
    let d = l.take_dirty();
    assert_eq!(d.upserts.len(), 1);
    assert!(!d.upserts[0].1.is_mem_only());
    l.check_dirty();
}

#[test]
fn error_replies_table() {
    let cases = [
        (SaveError::InvalidAor, 400, -1),
        (SaveError::StarWithOtherContacts, 400, -1),
        (SaveError::StarExpiresNotZero, 400, -1),
        (SaveError::EmptyContact, 400, -1),
        (SaveError::ContactTooLong, 400, -1),
        (SaveError::FieldTooLong("Call-ID"), 400, -1),
        (SaveError::InvalidQ, 400, -1),
        (SaveError::InvalidCseq, 400, -1),
        (SaveError::IntervalTooBrief { min_expires_s: 60 }, 423, -1),
        (SaveError::TooManyContacts { max: 1 }, 503, -2),
        (SaveError::TableFull, 503, -1),
        (SaveError::PathNotSupported, 420, -1),
    ];
    for (e, status, code) in cases {
        assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
        assert!(!e.reason().is_empty() && !e.to_string().is_empty());
    }
    assert_eq!(
        SaveError::IntervalTooBrief { min_expires_s: 1 }.reason(),
        "Interval Too Brief"
    );
}

#[test]
fn duplicate_contact_in_one_request() {
    let mut l = loc();
    let c = [spec_exp("sip:a@1", 600), spec_exp("sip:a@1", 0)];
    let o = l.save(T0, &req(&c, "c", 1)).expect("dup");
    assert!(!o.retransmission);
    assert_eq!(o.code(), codes::SAVE_INSERTED);
    assert_eq!(uris(&o), [("sip:a@1", 600)], "the first wins");
    let o = l.save(T0 + 1, &req(&c, "c", 2)).expect("dup refresh");
    assert_eq!(
        (o.code(), o.changes.updated.len()),
        (codes::SAVE_UPDATED, 1)
    );
}
