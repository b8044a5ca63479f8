//! The span writer: parse a message, apply random `Edits` (header removes,
//! replacements, appends, inserts before / after / first, R-URI, prepended
//! Vias, top-Via `received`/`rport`, top-Via removal, body), assemble,
//! parse the output again and compare it with a model of the edits: the
//! start line, every header line (name and value, in order), the Via list
//! (branch, received, rport) and the body must be what the edits say.
//!
//! Input: `k = data[0] * 2`; `data[1..1 + k]` is the edit plan, the rest the
//! message. Only messages that pass `check_request` / `check_response` are
//! edited (a message that does not is replaced by a built-in one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::sip::{
    parse, Edits, Framing, HdrName, Limits, Parsed, SipMsg, StartLine, Status, Via,
};

const BUILTIN: &[&[u8]] = &[
    b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1;rport, SIP/2.0/TCP 10.1.1.1;branch=z9hG4bK-0\r\nv: SIP/2.0/UDP 10.2.2.2:5070;received=10.2.2.2;branch=z9hG4bK-00\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=ft1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nX-A: a\r\nContent-Length: 4\r\n\r\nbody",
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsip1.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;rport=5060;received=192.0.2.9;branch=z9hG4bK-1\r\nFrom: <sip:alice@example.com>;tag=ft1\r\nTo: <sip:bob@example.com>;tag=tt1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
];

const URIS: &[&[u8]] = &[
    b"sip:fuzz@example.com",
    b"sip:bob@192.0.2.7:5070;transport=tcp",
    b"sips:[2001:db8::1]:5061;lr",
    b"tel:+123456",
];
const VALUES: &[&[u8]] = &[
    b"v",
    b"a b c",
    b"<sip:x@y>;tag=1",
    b"0",
    b"x;y=z",
    b"\"q, r\"",
];
const IPS: &[&[u8]] = &[b"198.51.100.1", b"2001:db8::5", b"10.0.0.1"];

type ViaItem = Option<(Option<Vec<u8>>, Option<Vec<u8>>, Option<Option<u16>>)>;

fn via_item(v: Result<Via<'_>, sipshard::sip::ParseError>) -> ViaItem {
    v.ok().map(|v| {
        (
            v.branch().map(<[u8]>::to_vec),
            v.received().map(<[u8]>::to_vec),
            v.rport(),
        )
    })
}

/// The Via items of one header value (parsed inside a throwaway response).
fn via_items(value: &[u8]) -> Vec<ViaItem> {
    let mut msg = b"SIP/2.0 200 OK\r\nVia: ".to_vec();
    msg.extend_from_slice(value);
    msg.extend_from_slice(b"\r\n\r\n");
    let mut p = Parsed::default();
    match parse(&msg, Framing::Datagram, &big_limits(), &mut p) {
        Ok(Status::Complete(_)) => SipMsg::new(&msg, &p).vias().map(via_item).collect(),
        _ => vec![None],
    }
}

fn big_limits() -> Limits {
    Limits {
        max_headers: 4096,
        max_msg_len: 1 << 20,
    }
}

#[derive(Debug, PartialEq)]
enum Val {
    Exact(Vec<u8>),
    /// The top Via line after `set_top_via_received` / `remove_top_via`.
    Edited,
}

fn parse_ok<'a>(buf: &[u8], p: &'a mut Parsed) -> bool {
    matches!(
        parse(buf, Framing::Datagram, &big_limits(), p),
        Ok(Status::Complete(n)) if n == buf.len()
    )
}

fn sane(buf: &[u8], p: &Parsed) -> bool {
    let m = SipMsg::new(buf, p);
    if m.is_request() {
        m.check_request().is_ok()
    } else {
        m.check_response().is_ok()
    }
}

fuzz_target!(|data: &[u8]| {
    let k = usize::from(data.first().copied().unwrap_or(0)) * 2;
    let plan = data.get(1..(1 + k).min(data.len())).unwrap_or(&[]);
    let mut buf = data.get(1 + k..).unwrap_or(&[]);
    let mut p = Parsed::default();
    if !(parse_ok(buf, &mut p) && sane(buf, &p)) {
        let i = usize::from(plan.first().copied().unwrap_or(0)) % BUILTIN.len();
        buf = BUILTIN[i];
        assert!(parse_ok(buf, &mut p) && sane(buf, &p));
    }
    let hs = &p.headers;
    let n = hs.len();
    let is_request = matches!(p.start, StartLine::Request { .. });
    let first_via = p.first(HdrName::Via);

    let mut e = Edits::new();
    let mut removed = vec![false; n];
    let mut replaced: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut before: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    let mut after: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    let mut first_lines: Vec<Vec<u8>> = Vec::new();
    let mut appended: Vec<Vec<u8>> = Vec::new();
    let mut prepends: Vec<Vec<u8>> = Vec::new();
    let mut ruri: Option<Vec<u8>> = None;
    let mut body: Option<Vec<u8>> = None;
    let (mut rcv, mut rport): (Option<Vec<u8>>, Option<u16>) = (None, None);
    let (mut via_params, mut rm_top) = (false, false);

    let mut it = plan.iter().copied();
    let mut serial = 0u32;
    while let Some(op) = it.next() {
        let arg = usize::from(it.next().unwrap_or(0));
        serial += 1;
        let idx = if n == 0 { 0 } else { arg % n };
        let line = format!("X-Fz-{serial}: v{serial}").into_bytes();
        match op % 11 {
            0 if n > 0 => {
                e.remove_header(idx);
                removed[idx] = true;
            }
            1 if n > 0 => {
                // only headers whose value the parser does not check
                let h = hs[idx];
                let v: &[u8] = if h.name == HdrName::Via {
                    b"SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKrep"
                } else if h.name == HdrName::Other {
                    VALUES[arg % VALUES.len()]
                } else {
                    continue;
                };
                e.replace_header_value(idx, v);
                replaced[idx] = Some(v.to_vec());
            }
            2 => {
                e.append_header(&line);
                appended.push(line);
            }
            3 => {
                e.insert_header_first(&line);
                first_lines.push(line);
            }
            4 if n > 0 => {
                e.insert_header_before(idx, &line);
                before[idx].push(line);
            }
            5 if n > 0 => {
                e.insert_header_after(idx, &line);
                after[idx].push(line);
            }
            6 if is_request => {
                let u = URIS[arg % URIS.len()];
                e.set_ruri(u);
                ruri = Some(u.to_vec());
            }
            7 => {
                let v = format!("SIP/2.0/UDP 192.0.2.{}:5060;branch=z9hG4bKpv{serial}", arg)
                    .into_bytes();
                e.prepend_via(&v);
                prepends.push(v);
            }
            8 => {
                let r = (arg & 1 == 1).then(|| IPS[(arg >> 1) % IPS.len()]);
                let rp = (arg & 8 == 8).then_some(arg as u16 * 97);
                e.set_top_via_received(r, rp);
                via_params = true;
                if let Some(r) = r {
                    rcv = Some(r.to_vec());
                }
                if rp.is_some() {
                    rport = rp;
                }
            }
            9 => {
                e.remove_top_via();
                rm_top = true;
            }
            10 => {
                let b = vec![b'b'; arg];
                e.set_body(&b);
                body = Some(b);
            }
            _ => {}
        }
    }

    // The model.
    let mut exp: Vec<(Vec<u8>, Val)> = Vec::new();
    let split = |l: &[u8]| -> (Vec<u8>, Val) {
        let c = l.iter().position(|&b| b == b':').unwrap();
        (l[..c].to_vec(), Val::Exact(l[c + 2..].to_vec()))
    };
    let mut exp_vias: Vec<ViaItem> = Vec::new();
    for l in &first_lines {
        exp.push(split(l));
    }
    let push_prepends = |exp: &mut Vec<(Vec<u8>, Val)>, vias: &mut Vec<ViaItem>| {
        for v in prepends.iter().rev() {
            exp.push((b"Via".to_vec(), Val::Exact(v.clone())));
            vias.extend(via_items(v));
        }
    };
    if first_via.is_none() {
        push_prepends(&mut exp, &mut exp_vias);
    }
    let mut cl_written = false;
    for (i, h) in hs.iter().enumerate() {
        let name = h.name_span.get(buf).to_vec();
        let value = h.value.get(buf);
        if Some(i) == first_via {
            push_prepends(&mut exp, &mut exp_vias);
        }
        for l in &before[i] {
            exp.push(split(l));
        }
        if removed[i] {
        } else if let (Some(b), HdrName::ContentLength) = (&body, h.name) {
            exp.push((name, Val::Exact(b.len().to_string().into_bytes())));
            cl_written = true;
        } else if let Some(r) = &replaced[i] {
            if h.name == HdrName::Via {
                exp_vias.extend(via_items(r));
            }
            exp.push((name, Val::Exact(r.clone())));
        } else if Some(i) == first_via && (rm_top || via_params) {
            let mut items = via_items(value);
            if rm_top {
                if items.len() > 1 {
                    items.remove(0);
                    exp.push((name, Val::Edited));
                    exp_vias.extend(items);
                }
            } else {
                if let Some(Some(top)) = items.first_mut() {
                    if let Some(r) = &rcv {
                        top.1 = Some(r.clone());
                    }
                    if let Some(rp) = rport {
                        top.2 = Some(Some(rp));
                    }
                }
                exp.push((name, Val::Edited));
                exp_vias.extend(items);
            }
        } else {
            if h.name == HdrName::Via {
                exp_vias.extend(via_items(value));
            }
            exp.push((name, Val::Exact(value.to_vec())));
        }
        for l in &after[i] {
            exp.push(split(l));
        }
    }
    for l in &appended {
        exp.push(split(l));
    }
    if let (Some(b), false) = (&body, cl_written) {
        exp.push((
            b"Content-Length".to_vec(),
            Val::Exact(b.len().to_string().into_bytes()),
        ));
    }
    let exp_body = body.clone().unwrap_or_else(|| p.body.get(buf).to_vec());

    let mut out = Vec::new();
    e.assemble(buf, &p, &mut out);
    let mut q = Parsed::default();
    let r = parse(&out, Framing::Datagram, &big_limits(), &mut q);
    assert!(
        matches!(r, Ok(Status::Complete(_))),
        "edited message does not parse: {r:?}\n{}",
        String::from_utf8_lossy(&out)
    );
    let show = || String::from_utf8_lossy(&out).into_owned();
    let m = SipMsg::new(&out, &q);
    let orig = SipMsg::new(buf, &p);
    assert_eq!(m.is_request(), orig.is_request());
    if is_request {
        assert_eq!(m.method_bytes(), orig.method_bytes(), "{}", show());
        let want = ruri.as_deref().or(orig.ruri());
        assert_eq!(m.ruri(), want, "{}", show());
    } else {
        assert_eq!(m.status(), orig.status(), "{}", show());
        assert_eq!(m.reason(), orig.reason(), "{}", show());
    }
    let got: Vec<(Vec<u8>, Vec<u8>)> = q
        .headers
        .iter()
        .map(|h| (h.name_span.get(&out).to_vec(), h.value.get(&out).to_vec()))
        .collect();
    assert_eq!(got.len(), exp.len(), "header count\n{}", show());
    for ((gn, gv), (en, ev)) in got.iter().zip(&exp) {
        assert_eq!(gn, en, "header name\n{}", show());
        if let Val::Exact(ev) = ev {
            assert_eq!(
                String::from_utf8_lossy(gv),
                String::from_utf8_lossy(ev),
                "header value\n{}",
                show()
            );
        }
    }
    let got_vias: Vec<ViaItem> = m.vias().map(via_item).collect();
    assert_eq!(got_vias, exp_vias, "Via list\n{}", show());
    assert_eq!(m.body(), &exp_body[..], "body\n{}", show());
});
