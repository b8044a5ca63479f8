//! Contact lists and URIs: `SipUri::parse`, `NameAddr::parse`, `Via::parse`,
//! parameter iteration and lookup, and the Contact values of a REGISTER
//! carrying the input as its Contact header (`SipMsg::contacts`, `expires`,
//! `q`). Must never panic, and every parameter `iter()` yields must be found
//! by `get()`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::sip::{
    parse, Contact, Framing, Limits, NameAddr, Params, Parsed, SipMsg, SipUri, Status, Via,
};

fn params(p: &Params<'_>) {
    let _ = p.is_empty();
    for (name, _value) in p.iter() {
        assert!(
            p.get(name).is_some(),
            "param {:?} iterated but not found",
            String::from_utf8_lossy(name)
        );
    }
    let _ = (p.get(b"transport"), p.get(b"lr"), p.get(b""));
}

fn uri(raw: &[u8]) {
    if let Ok(u) = SipUri::parse(raw) {
        params(&u.params);
        let _ = u.transport();
        // the parts are sub-slices of the input
        for part in [u.user, u.password, Some(u.host)].into_iter().flatten() {
            assert!(part.len() <= raw.len());
        }
    }
}

fn name_addr(raw: &[u8]) {
    if let Ok(na) = NameAddr::parse(raw) {
        params(&na.params);
        let _ = na.tag();
        uri(na.uri);
        if let Ok(u) = na.uri_parsed() {
            params(&u.params);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    uri(data);
    name_addr(data);
    if let Ok(v) = Via::parse(data) {
        params(&v.params);
        let _ = (v.branch(), v.received(), v.rport(), v.maddr());
    }
    // the input as the Contact header of a REGISTER (CR/LF turned into
    // spaces so it stays one header line)
    let value: Vec<u8> = data
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    let mut msg = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
Call-ID: 1\r\nCSeq: 1 REGISTER\r\nContact: "
        .to_vec();
    msg.extend_from_slice(&value);
    msg.extend_from_slice(b"\r\nm: ");
    msg.extend_from_slice(&value);
    msg.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let mut p = Parsed::default();
    if let Ok(Status::Complete(_)) = parse(&msg, Framing::Datagram, &Limits::default(), &mut p) {
        let m = SipMsg::new(&msg, &p);
        for c in m.contacts().take(1000).flatten() {
            let _ = (c.expires(), c.q());
            if let Some(q) = c.q() {
                assert!(q <= 1000);
            }
            if let Contact::Addr(na) = c {
                params(&na.params);
                if let Ok(u) = na.uri_parsed() {
                    params(&u.params);
                }
            }
        }
        let _ = m.check_request();
    }
});
