//! RFC 4475 / RFC 5118 torture messages sent to the real binary over UDP:
//! valid requests reach the script (which answers `200 Parsed`), invalid ones
//! are answered the way the RFCs describe for a proxy (400 naming the fault,
//! 505, 416) or dropped where no reply can be built, and each refusal is
//! counted per reason (`stats.fetch`).
//!
//! The vectors (tests/torture/*/*.dat) are sent as they are except for one
//! edit: `;rport` is added after the top Via's sent-by so that the answers
//! come back to this test's socket (RFC 3581) rather than to port 5060.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;

const SCRIPT: &str = r#"
function ksr_request_route()
    KSR.sl.sl_send_reply(200, "Parsed")
end
"#;

/// What the proxy must send back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// A status line with this code and reason phrase.
    Status(u16, &'static str),
    /// Nothing (a response, or no usable From/To/Call-ID).
    NoAnswer,
}
use Answer::*;

const OK: Answer = Status(200, "Parsed");

const VECTORS: &[(&str, &str, Answer)] = &[
    ("rfc4475", "wsinv", OK),
    ("rfc4475", "intmeth", OK),
    ("rfc4475", "esc01", OK),
    ("rfc4475", "escnull", OK),
    ("rfc4475", "esc02", OK),
    ("rfc4475", "lwsdisp", OK),
    ("rfc4475", "longreq", OK),
    ("rfc4475", "dblreq", OK),
    ("rfc4475", "semiuri", OK),
    ("rfc4475", "transports", OK),
    ("rfc4475", "mpart01", OK),
    ("rfc4475", "unreason", NoAnswer),
    ("rfc4475", "noreason", NoAnswer),
    ("rfc4475", "badinv01", Status(400, "Bad Request (bad_via)")),
    (
        "rfc4475",
        "clerr",
        Status(400, "Bad Request (truncated_body)"),
    ),
    (
        "rfc4475",
        "ncl",
        Status(400, "Bad Request (bad_content_length)"),
    ),
    ("rfc4475", "scalar02", Status(400, "Bad Request (bad_cseq)")),
    ("rfc4475", "scalarlg", NoAnswer),
    ("rfc4475", "quotbal", Status(400, "Bad Request (bad_to)")),
    (
        "rfc4475",
        "ltgtruri",
        Status(400, "Bad Request (bad_request_uri)"),
    ),
    (
        "rfc4475",
        "lwsruri",
        Status(400, "Bad Request (bad_request_uri)"),
    ),
    (
        "rfc4475",
        "lwsstart",
        Status(400, "Bad Request (start_line_whitespace)"),
    ),
    (
        "rfc4475",
        "trws",
        Status(400, "Bad Request (start_line_whitespace)"),
    ),
    ("rfc4475", "escruri", OK),
    ("rfc4475", "baddate", OK),
    ("rfc4475", "regbadct", OK),
    ("rfc4475", "badaspec", OK),
    ("rfc4475", "baddn", OK),
    (
        "rfc4475",
        "badvers",
        Status(505, "SIP Version Not Supported"),
    ),
    (
        "rfc4475",
        "mismatch01",
        Status(400, "Bad Request (cseq_method_mismatch)"),
    ),
    (
        "rfc4475",
        "mismatch02",
        Status(400, "Bad Request (cseq_method_mismatch)"),
    ),
    ("rfc4475", "bigcode", NoAnswer),
    ("rfc4475", "badbranch", OK),
    ("rfc4475", "insuf", NoAnswer),
    ("rfc4475", "unkscm", Status(416, "Unsupported URI Scheme")),
    ("rfc4475", "novelsc", Status(416, "Unsupported URI Scheme")),
    ("rfc4475", "unksm2", OK),
    ("rfc4475", "bext01", OK),
    ("rfc4475", "invut", OK),
    ("rfc4475", "regaut01", OK),
    (
        "rfc4475",
        "multi01",
        Status(400, "Bad Request (duplicate_cseq)"),
    ),
    (
        "rfc4475",
        "mcl01",
        Status(400, "Bad Request (bad_content_length)"),
    ),
    ("rfc4475", "bcast", NoAnswer),
    ("rfc4475", "zeromf", OK),
    ("rfc4475", "cparam01", OK),
    ("rfc4475", "cparam02", OK),
    ("rfc4475", "regescrt", OK),
    ("rfc4475", "sdp01", OK),
    ("rfc4475", "inv2543", OK),
    ("rfc5118", "ipv6-good", OK),
    (
        "rfc5118",
        "ipv6-bad",
        Status(400, "Bad Request (bad_request_uri)"),
    ),
    ("rfc5118", "port-ambiguous", OK),
    ("rfc5118", "port-unambiguous", OK),
    ("rfc5118", "via-received-param-with-delim", OK),
    ("rfc5118", "via-received-param-no-delim", OK),
    ("rfc5118", "ipv6-in-sdp", OK),
    ("rfc5118", "mult-ip-in-header", OK),
    ("rfc5118", "mult-ip-in-sdp", OK),
    ("rfc5118", "ipv4-mapped-ipv6", OK),
    ("rfc5118", "ipv6-bug-abnf-3-colons", OK),
    ("rfc5118", "ipv6-correct-abnf-2-colons", OK),
];

fn load(dir: &str, name: &str) -> Vec<u8> {
    let p = format!(
        "{}/tests/torture/{dir}/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Adds `;rport` after the sent-by of the first Via header line (folded
/// lines included); messages without a Via are returned unchanged.
fn with_rport(msg: &[u8]) -> Vec<u8> {
    let lower = msg.to_ascii_lowercase();
    let mut at = None;
    let mut i = 0;
    while let Some(p) = lower[i..].windows(2).position(|w| w == b"\r\n") {
        let line = i + p + 2;
        if lower[line..].starts_with(b"\r\n") {
            break;
        }
        let name_end = lower[line..]
            .iter()
            .position(|&c| c == b':')
            .map(|c| line + c);
        if let Some(ne) = name_end {
            let name = lower[line..ne].trim_ascii();
            if name == b"via" || name == b"v" {
                at = Some(ne + 1);
                break;
            }
        }
        i = line;
    }
    let Some(mut j) = at else {
        return msg.to_vec();
    };
    // Skip "SIP / 2.0 / UDP" (with LWS and folds), then the host[:port].
    let mut slashes = 0;
    while j < msg.len() && slashes < 2 {
        if msg[j] == b'/' {
            slashes += 1;
        }
        j += 1;
    }
    let skip_lws = |mut j: usize| {
        while j < msg.len() && matches!(msg[j], b' ' | b'\t' | b'\r' | b'\n') {
            j += 1;
        }
        j
    };
    // transport, LWS, then the sent-by up to its first ';' / ',' / LWS.
    j = skip_lws(j);
    while j < msg.len() && !matches!(msg[j], b' ' | b'\t' | b'\r' | b'\n') {
        j += 1;
    }
    j = skip_lws(j);
    while j < msg.len() && !matches!(msg[j], b';' | b',' | b' ' | b'\t' | b'\r') {
        j += 1;
    }
    let mut out = msg[..j].to_vec();
    out.extend_from_slice(b";rport");
    out.extend_from_slice(&msg[j..]);
    out
}

/// Call-ID (or its compact form `i`) of the first message in `msg`.
fn call_id(msg: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case("call-id") || n.eq_ignore_ascii_case("i"))
            .then(|| v.trim().to_string())
    })
}

/// Every .dat file under tests/torture is one of the vectors (49 + 12).
#[test]
fn no_vector_file_is_left_out() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/torture");
    for (sub, want) in [("rfc4475", 49), ("rfc5118", 12)] {
        let files = std::fs::read_dir(format!("{dir}/{sub}"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "dat"))
            })
            .count();
        assert_eq!(files, want, "{sub}");
        assert_eq!(VECTORS.iter().filter(|v| v.0 == sub).count(), want, "{sub}");
    }
}

#[test]
fn torture_vectors_over_udp() {
    let srv = Server::start(ServerOpts {
        script: Some(SCRIPT),
        ..Default::default()
    });
    let sock = client();
    let mut failures = Vec::new();
    for &(dir, name, want) in VECTORS {
        let msg = with_rport(&load(dir, name));
        sock.set_read_timeout(Some(Duration::from_millis(match want {
            NoAnswer => 600,
            Status(..) => 3000,
        })))
        .unwrap();
        sock.send_to(&msg, srv.addr).unwrap();
        let got = recv(&sock);
        match (want, &got) {
            (NoAnswer, None) => {}
            (Status(code, phrase), Some(reply)) => {
                let line = reply.lines().next().unwrap_or("");
                if status(reply) != code || reason(reply) != phrase {
                    failures.push(format!("{dir}/{name}: want {code} {phrase}, got {line}"));
                }
                // The answer is this request's (dblreq: the REGISTER's).
                if let (Some(sent), Some(back)) = (call_id(&msg), header(reply, "Call-ID")) {
                    if sent != back {
                        failures.push(format!("{dir}/{name}: answer for Call-ID {back}"));
                    }
                }
            }
            (want, got) => failures.push(format!(
                "{dir}/{name}: want {want:?}, got {:?}",
                got.as_deref().and_then(|r| r.lines().next())
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        srv.log()
    );

    // Every refusal is counted under its reason; answered ones separately.
    let st = rpc(srv.rpc_port, "stats.fetch", json!(["all"]));
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, n) in [
        ("parse.bad_via", 1),
        ("parse.truncated_body", 1),
        ("parse.bad_content_length", 2),
        ("parse.bad_cseq", 2),
        ("parse.bad_to", 1),
        ("parse.bad_request_uri", 3),
        ("parse.start_line_whitespace", 2),
        ("parse.unsupported_version", 1),
        ("parse.cseq_method_mismatch", 2),
        ("parse.bad_status_code", 1),
        ("parse.missing_from", 1),
        ("parse.unsupported_uri_scheme", 2),
        ("parse.duplicate_cseq", 1),
    ] {
        want.insert(k, n);
    }
    for (k, n) in &want {
        assert_eq!(st[*k], *n, "{k}: {st}");
    }
    let refused: u64 = want.values().sum();
    assert_eq!(st["core.bad_msg_hdr"], refused, "{st}");
    let answered = VECTORS
        .iter()
        .filter(|v| matches!(v.2, Status(c, _) if c != 200))
        .count() as u64;
    assert_eq!(st["core.bad_msg_answered"], answered, "{st}");
    let parsed_ok = VECTORS.iter().filter(|v| v.2 == OK).count() as u64;
    assert_eq!(st["sl.2xx_replies"], parsed_ok, "{st}");
    // No other parse.* counter moved.
    for (k, v) in st.as_object().unwrap() {
        if k.starts_with("parse.") && !want.contains_key(k.as_str()) {
            assert_eq!(v, 0, "{k}: {st}");
        }
    }
}
