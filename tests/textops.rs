//! KSR.textops / KSR.textopsx through the real binary: rewrites of a relayed
//! request checked on the wire at the UAS, and a reply status changed in
//! the onreply route on its way back.

mod common;

use common::*;

const SCRIPT: &str = r#"
function ksr_request_route()
    KSR.textops.subst([[/^(X-Num: )00([0-9]+)/\1+\2 $fU/]])
    KSR.textops.subst_body("/^c=IN IP4 .*$/c=IN IP4 203.0.113.9\r/")
    KSR.textops.remove_hf_re("^X-Secret")
    KSR.textops.replace("X-Old", "X-Renamed")
    KSR.textops.subst_user("/^00/+/")
    KSR.pv.sets("$du", "sip:127.0.0.1:@UAS@")
    KSR.tm.t_on_reply("onreply")
    KSR.tm.t_relay()
end

function onreply()
    if KSR.pv.get("$rs") == 603 then
        KSR.textopsx.change_reply_status(404, "Not Here")
    end
end
"#;

/// A reply to `req` with the request's Via, From, To (tagged), Call-ID, CSeq.
fn reply_to(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in req.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line};tag=uas1\r\n")),
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[test]
fn textops_rewrites_on_the_wire() {
    let uas = client();
    let uas_port = uas.local_addr().unwrap().port();
    let script = SCRIPT.replace("@UAS@", &uas_port.to_string());
    let srv = Server::start(ServerOpts {
        script: Some(&script),
        cores: "2",
        ..Default::default()
    });
    let sock = client();
    let me = sock.local_addr().unwrap();
    let sdp = "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 0\r\n";
    let msg = format!(
        "MESSAGE sip:0049301234@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-tx1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: textops-1@test\r\n\
         CSeq: 1 MESSAGE\r\n\
         X-Num: 0049301234\r\n\
         X-Secret-Token: s3cr3t\r\n\
         X-Old: kept value\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{sdp}",
        port = me.port(),
        len = sdp.len()
    );
    sock.send_to(msg.as_bytes(), srv.addr).unwrap();
    let got = recv(&uas).expect("the relayed request reaches the UAS");
    assert!(
        got.starts_with("MESSAGE sip:+49301234@example.com SIP/2.0\r\n"),
        "{got}"
    );
    assert_eq!(
        header(&got, "X-Num").as_deref(),
        Some("+49301234 alice"),
        "{got}"
    );
    assert!(!got.contains("X-Secret"), "{got}");
    assert_eq!(
        header(&got, "X-Renamed").as_deref(),
        Some("kept value"),
        "{got}"
    );
    let want = "v=0\r\nc=IN IP4 203.0.113.9\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert!(got.ends_with(&format!("\r\n\r\n{want}")), "{got}");
    assert_eq!(
        header(&got, "Content-Length").as_deref(),
        Some(want.len().to_string().as_str()),
        "{got}"
    );

    // the UAS declines; the onreply route turns 603 into 404
    let rpl = reply_to(&got, 603, "Decline");
    uas.send_to(rpl.as_bytes(), srv.addr).unwrap();
    let back = recv(&sock).expect("the reply reaches the UAC");
    assert_eq!(status(&back), 404, "{back}");
    assert_eq!(reason(&back), "Not Here", "{back}");
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}
