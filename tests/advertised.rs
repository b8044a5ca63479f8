//! `KSR.set_advertised_address` / `KSR.set_advertised_port` on the wire:
//! the relayed request's Via and Record-Route carry the advertised host and
//! port instead of the receiving address, for that message only.
//!
//!   cargo test --test advertised

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

const SCRIPT: &str = r#"
function ksr_request_route()
    local u = KSR.pv.get("$rU")
    if u == "adv" then
        KSR.set_advertised_address("sip.example.net")
        KSR.set_advertised_port(5099)
    elseif u == "advport" then
        KSR.set_advertised_port(5098)
    elseif u == "bad" then
        local a = KSR.set_advertised_address("no spaces allowed")
        local p = KSR.set_advertised_port(70000)
        KSR.hdr.append("X-Rc: " .. a .. " " .. p .. "\r\n")
    end
    KSR.rr.record_route()
    if u == "stateless" then
        KSR.set_advertised_address("192.0.2.7")
        KSR.forward()
        return
    end
    KSR.tm.t_relay()
end
"#;

/// Relays a MESSAGE for `user` to a sink; returns (top Via, Record-Route, message).
fn relayed(srv: &Server, sink: &UdpSocket, user: &str) -> (String, String, String) {
    let c = client();
    let ruri = format!("sip:{user}@{}", sink.local_addr().unwrap());
    c.send_to(request(&c, "MESSAGE", &ruri, "").as_bytes(), srv.addr)
        .unwrap();
    let m = recv(sink).unwrap_or_else(|| panic!("{user}: not relayed\n{}", srv.log()));
    let via = headers(&m, "Via").into_iter().next().unwrap();
    let rr = header(&m, "Record-Route").unwrap_or_default();
    (via, rr, m)
}

#[test]
fn advertised_address_and_port_go_into_via_and_record_route() {
    let srv = Server::start(ServerOpts {
        script: Some(SCRIPT),
        cores: "2",
        ..Default::default()
    });
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = srv.addr.to_string();

    let (via, rr, m) = relayed(&srv, &sink, "adv");
    assert!(
        via.starts_with("SIP/2.0/UDP sip.example.net:5099;branch="),
        "{m}"
    );
    assert!(rr.starts_with("<sip:sip.example.net:5099;lr"), "{m}");

    let (via, rr, m) = relayed(&srv, &sink, "advport");
    assert!(via.starts_with("SIP/2.0/UDP 127.0.0.1:5098;branch="), "{m}");
    assert!(rr.starts_with("<sip:127.0.0.1:5098;lr"), "{m}");

    // the next message is not affected
    let (via, rr, m) = relayed(&srv, &sink, "plain");
    assert!(via.starts_with(&format!("SIP/2.0/UDP {me};branch=")), "{m}");
    assert!(rr.starts_with(&format!("<sip:{me};lr")), "{m}");

    let (via, _, m) = relayed(&srv, &sink, "bad");
    assert_eq!(header(&m, "X-Rc").as_deref(), Some("-1 -1"), "{m}");
    assert!(via.starts_with(&format!("SIP/2.0/UDP {me};branch=")), "{m}");

    let (via, rr, m) = relayed(&srv, &sink, "stateless");
    assert!(
        via.starts_with(&format!(
            "SIP/2.0/UDP 192.0.2.7:{};branch=",
            srv.addr.port()
        )),
        "{m}"
    );
    assert!(
        rr.starts_with(&format!("<sip:192.0.2.7:{};lr", srv.addr.port())),
        "{m}"
    );
}
