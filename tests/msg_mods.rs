//! Message-level KSR modules through the real binary: `KSR.force_rport()`,
//! `KSR.sanity`, and `KSR.nathelper` NAT detection feeding the registrar.

mod common;

use common::*;

const SCRIPT: &str = r#"
function ksr_request_route()
    KSR.force_rport()
    if KSR.sanity.sanity_check(17895, 7) < 0 then
        KSR.x.exit()
    end
    if KSR.nathelper and KSR.nathelper.nat_uac_test(19) > 0 then
        if KSR.is_REGISTER() then
            KSR.nathelper.fix_nated_register()
        end
        KSR.setflag(5)
    end
    if KSR.is_REGISTER() then
        if KSR.registrar.save("location", 0) < 0 then
            KSR.sl.sl_reply_error()
        end
        KSR.x.exit()
    end
    if KSR.registrar.lookup("location") > 0 then
        KSR.hdr.append_to_reply("X-Du: " .. (KSR.pv.get("$du") or "") .. "\r\n")
        KSR.sl.sl_send_reply(302, "Moved Temporarily")
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not Found")
end
"#;

#[test]
fn nat_register_sanity_and_force_rport() {
    let srv = Server::start(ServerOpts {
        script: Some(SCRIPT),
        cores: "2",
        ..Default::default()
    });
    let sock = client();
    let me = sock.local_addr().unwrap();

    // A REGISTER from behind a NAT: private Via (no rport) and Contact.
    // Without force_rport the 200 would go to 127.0.0.1:5060 (the Via port).
    let reg = "REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bK-nat1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=n1\r\n\
        To: <sip:alice@example.com>\r\n\
        Call-ID: nat-reg-1@test\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@192.168.1.5:5060>;expires=600\r\n\
        Content-Length: 0\r\n\r\n";
    let reply = exchange(&sock, srv.addr, reg.as_bytes()).expect("200 OK reaches the source port");
    assert_eq!(status(&reply), 200, "{reply}");
    let via = header(&reply, "Via").unwrap();
    assert!(via.contains(&format!("rport={}", me.port())), "{via}");
    let contact = header(&reply, "Contact").unwrap();
    assert!(
        contact.contains(&format!("received=\"sip:127.0.0.1:{}\"", me.port())),
        "{contact}"
    );

    // Lookup sends to the NAT binding.
    let inv = request(&sock, "INVITE", "sip:alice@example.com", "");
    let reply = exchange(&sock, srv.addr, inv.as_bytes()).expect("302");
    assert_eq!(status(&reply), 302, "{reply}");
    assert_eq!(
        header(&reply, "X-Du").as_deref(),
        Some(format!("sip:127.0.0.1:{}", me.port()).as_str()),
        "{reply}"
    );

    // sanity: a bad Expires value is answered by the module.
    let bad = request(&sock, "INVITE", "sip:bob@example.com", "Expires: 1x\r\n");
    let reply = exchange(&sock, srv.addr, bad.as_bytes()).expect("400");
    assert_eq!(status(&reply), 400, "{reply}");
    assert_eq!(reason(&reply), "Expires value is illegal");
    let (clean, log) = srv.stop();
    assert!(clean, "{log}");
}
