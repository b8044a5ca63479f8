//! A driver for random event sequences, shared by the unit tests and the
//! `txn` fuzz target: bytes pick requests, replies (with CANCEL replies and
//! ACKs), local replies, CANCELs and clock jumps. After every step the
//! table's invariants must hold; at the end, after enough time, every cell
//! must be gone.

use std::net::SocketAddr;

use super::{CellId, Event, ReqMatch, RespAction, Table, TxnConfig};
use crate::sip::{self, HdrName, Limits, Parsed, SipMsg};

fn parse(b: &[u8]) -> Option<Parsed> {
    let mut p = Parsed::default();
    match sip::parse(b, sip::Framing::Datagram, &Limits::default(), &mut p) {
        Ok(sip::Status::Complete(_)) => Some(p),
        _ => None,
    }
}

fn request(method: &str, branch: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@x>;tag=fa\r\nTo: <sip:bob@x>\r\nCall-ID: call-{branch}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn response(req: &[u8], code: u16, method: Option<&str>) -> Option<Vec<u8>> {
    let p = parse(req)?;
    let m = SipMsg::new(req, &p);
    let mut out = format!("SIP/2.0 {code} X\r\n").into_bytes();
    for v in m.headers(HdrName::Via) {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"From: <sip:alice@x>;tag=fa\r\nTo: <sip:bob@x>;tag=t\r\nCall-ID: ");
    out.extend_from_slice(m.call_id()?);
    let cseq = m.cseq().ok()?;
    let method = method.unwrap_or(std::str::from_utf8(cseq.method_bytes).ok()?);
    out.extend_from_slice(
        format!(
            "\r\nCSeq: {} {method}\r\nContent-Length: 0\r\n\r\n",
            cseq.num
        )
        .as_bytes(),
    );
    Some(out)
}

fn with_our_via(t: &Table<()>, id: CellId, orig: &[u8]) -> Option<Vec<u8>> {
    let r = t.next_branch(id)?;
    let mut br = Vec::new();
    t.write_branch(r, &mut br);
    let text = String::from_utf8_lossy(orig).replacen(
        "Via: ",
        &format!(
            "Via: SIP/2.0/UDP 127.0.0.1:5060;branch={}\r\nVia: ",
            String::from_utf8_lossy(&br)
        ),
        1,
    );
    Some(text.into_bytes())
}

/// Runs the sequence `data` describes; `Err` names a broken invariant.
pub fn drive(data: &[u8]) -> Result<(), String> {
    let mut it = data.iter().copied();
    let mut next = move |n: usize| -> Option<usize> { it.next().map(|b| b as usize % n.max(1)) };
    let cfg = TxnConfig {
        max_cells: 8,
        max_branches: 3,
        fr_timer_ms: 4000,
        fr_inv_timer_ms: 8000,
        ..TxnConfig::default()
    };
    let client: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5062));
    let callee: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6000));
    let mut t: Table<()> = Table::new(cfg, 0, 0xabc);
    let mut now = 0u64;
    let mut cells: Vec<(CellId, Vec<u8>)> = Vec::new();
    let mut branches: Vec<Vec<u8>> = Vec::new();
    let settle = |t: &mut Table<()>, now: u64| {
        while let Some(ev) = t.poll_event() {
            let (Event::Completed(id) | Event::Expired(id)) = ev;
            t.reply(id, 408, b"SIP/2.0 408 x\r\n\r\n".to_vec(), now);
        }
    };
    while let Some(op) = next(9) {
        match op {
            0 | 1 => {
                let method = ["INVITE", "MESSAGE", "BYE", "CANCEL"][next(4).unwrap_or(0)];
                let r = request(method, &format!("z9hG4bK{}", next(6).unwrap_or(0)), 1);
                if let Some(p) = parse(&r) {
                    let m = SipMsg::new(&r, &p);
                    if t.on_request(&m, now) == ReqMatch::None {
                        if let Ok(id) = t.create(&m, client.into(), now, ()) {
                            cells.push((id, r));
                        }
                    }
                }
            }
            2 => {
                if let Some((id, orig)) = cells.get(next(cells.len() + 1).unwrap_or(0)) {
                    if t.get(*id).is_some() {
                        if let Some(req) = with_our_via(&t, *id, orig) {
                            if t.add_branch(*id, req.clone(), callee.into(), now).is_ok() {
                                branches.push(req);
                            }
                        }
                    }
                }
            }
            3 | 4 => {
                if let Some(req) = branches.get(next(branches.len() + 1).unwrap_or(0)) {
                    let code = [100, 180, 200, 404, 486, 487, 603][next(7).unwrap_or(0)];
                    let cancel = next(5) == Some(0);
                    if let Some(r) = response(req, code, cancel.then_some("CANCEL")) {
                        if let Some(p) = parse(&r) {
                            let m = SipMsg::new(&r, &p);
                            if let Some((id, b, c)) = t.match_response(&m) {
                                if let RespAction::Forward(bytes) = t.on_response(id, b, c, &m, now)
                                {
                                    t.reply(id, code, bytes, now);
                                }
                            }
                        }
                    }
                }
            }
            5 => {
                if let Some((id, _)) = cells.get(next(cells.len() + 1).unwrap_or(0)) {
                    let code = [100, 180, 200, 408, 486][next(5).unwrap_or(0)];
                    t.reply(*id, code, b"SIP/2.0 x\r\n\r\n".to_vec(), now);
                }
            }
            6 => {
                if let Some((id, _)) = cells.get(next(cells.len() + 1).unwrap_or(0)) {
                    t.cancel(*id, now);
                }
            }
            7 => {
                if let Some((_, orig)) = cells.get(next(cells.len() + 1).unwrap_or(0)) {
                    let ack = String::from_utf8_lossy(orig)
                        .replacen("INVITE sip", "ACK sip", 1)
                        .replacen(" INVITE\r\n", " ACK\r\n", 1)
                        .into_bytes();
                    if let Some(p) = parse(&ack) {
                        t.on_request(&SipMsg::new(&ack, &p), now);
                    }
                }
            }
            _ => {
                now += [1, 100, 1000, 10_000, 60_000][next(5).unwrap_or(0)];
                t.handle_timeout(now);
                settle(&mut t, now);
            }
        }
        t.drain_transmits(|_, _| {});
        t.check_invariants()?;
    }
    for _ in 0..50 {
        now += 60_000;
        t.handle_timeout(now);
        settle(&mut t, now);
        t.check_invariants()?;
    }
    if !t.is_empty() {
        return Err(format!("{} cells never ended", t.len()));
    }
    Ok(())
}
