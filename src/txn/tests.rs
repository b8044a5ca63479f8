//! State-machine tests on a virtual clock: `now` is a number the test moves.

use std::net::SocketAddr;

use super::*;
use crate::sip::{self, Limits, Parsed, SipMsg};

const SALT: u32 = 0xabc;

fn parse(b: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    match sip::parse(b, sip::Framing::Datagram, &Limits::default(), &mut p) {
        Ok(sip::Status::Complete(_)) => p,
        other => panic!(
            "test message does not parse: {other:?}\n{}",
            String::from_utf8_lossy(b)
        ),
    }
}

fn client() -> SocketAddr {
    "127.0.0.1:5062".parse().unwrap()
}
fn callee(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6000 + n))
}

fn request(method: &str, branch: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@x>;tag=fa\r\nTo: <sip:bob@x>\r\nCall-ID: call-{branch}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The request a proxy sends on a branch: our Via on top.
fn branch_request(t: &Table<()>, id: CellId, orig: &[u8]) -> Vec<u8> {
    let r = t.next_branch(id).expect("branch room");
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
    text.into_bytes()
}

/// A reply to `req` (every Via copied), with a To tag for codes > 100.
fn response(req: &[u8], code: u16, method_override: Option<&str>) -> Vec<u8> {
    let p = parse(req);
    let m = SipMsg::new(req, &p);
    let mut out = format!("SIP/2.0 {code} Whatever\r\n").into_bytes();
    for v in m.headers(sip::HdrName::Via) {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"From: ");
    out.extend_from_slice(m.header(sip::HdrName::From).unwrap());
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(m.header(sip::HdrName::To).unwrap());
    if code > 100 {
        out.extend_from_slice(b";tag=callee");
    }
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(m.call_id().unwrap());
    let cseq = m.cseq().unwrap();
    out.extend_from_slice(
        format!(
            "\r\nCSeq: {} {}\r\nContent-Length: 0\r\n\r\n",
            cseq.num,
            method_override.unwrap_or(std::str::from_utf8(cseq.method_bytes).unwrap())
        )
        .as_bytes(),
    );
    out
}

fn sent(t: &mut Table<()>) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut v = Vec::new();
    t.drain_transmits(|d, b| v.push((d.addr, b.to_vec())));
    v
}

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn ok(t: &Table<()>) {
    t.check_invariants().unwrap();
}

struct Setup {
    t: Table<()>,
    id: CellId,
    orig: Vec<u8>,
}

fn setup(method: &str, cfg: TxnConfig) -> Setup {
    let mut t = Table::new(cfg, 0, SALT);
    let orig = request(method, "z9hG4bKclient1", 1);
    let p = parse(&orig);
    let id = t
        .create(&SipMsg::new(&orig, &p), client().into(), 0, ())
        .unwrap();
    ok(&t);
    Setup { t, id, orig }
}

fn add_branch(s: &mut Setup, n: u16, now: u64) -> (u8, Vec<u8>) {
    let req = branch_request(&s.t, s.id, &s.orig);
    let b =
        s.t.add_branch(s.id, req.clone(), callee(n).into(), now)
            .unwrap();
    ok(&s.t);
    (b, req)
}

fn respond(s: &mut Setup, req: &[u8], code: u16, now: u64) -> RespAction {
    let r = response(req, code, None);
    let p = parse(&r);
    let m = SipMsg::new(&r, &p);
    let (id, b, cancel) = s.t.match_response(&m).expect("reply matches its branch");
    assert_eq!(id, s.id);
    let a = s.t.on_response(id, b, cancel, &m, now);
    ok(&s.t);
    a
}

fn run_until(t: &mut Table<()>, until: u64) -> Vec<(u64, SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at > until {
            break;
        }
        t.handle_timeout(at);
        t.check_invariants().unwrap();
        t.drain_transmits(|d, b| out.push((at, d.addr, b.to_vec())));
    }
    out
}

#[test]
fn invite_call_provisional_and_2xx_are_forwarded_then_the_cell_ends() {
    let mut s = setup("INVITE", TxnConfig::default());
    assert!(s
        .t
        .reply(s.id, 100, b"SIP/2.0 100 Trying\r\n\r\n".to_vec(), 0));
    let (_, req) = add_branch(&mut s, 1, 0);
    let out = sent(&mut s.t);
    assert_eq!(
        out.len(),
        2,
        "100 Trying upstream and the INVITE downstream"
    );
    assert_eq!(out[0].0, client());
    assert_eq!(out[1].0, callee(1));
    assert_eq!(respond(&mut s, &req, 100, 10), RespAction::Absorbed);
    let RespAction::Forward(ringing) = respond(&mut s, &req, 180, 20) else {
        panic!("180 must be forwarded")
    };
    let p = parse(&ringing);
    let m = SipMsg::new(&ringing, &p);
    assert_eq!(m.vias().count(), 1, "our Via is stripped");
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKclient1"[..]));
    assert!(s.t.reply(s.id, 180, ringing, 20));
    let RespAction::Forward(okr) = respond(&mut s, &req, 200, 30) else {
        panic!("200 must be forwarded")
    };
    assert!(s.t.reply(s.id, 200, okr, 30));
    assert_eq!(s.t.get(s.id).unwrap().server, ServerState::Accepted);
    // A 2xx retransmission is forwarded again (RFC 6026).
    assert!(matches!(
        respond(&mut s, &req, 200, 40),
        RespAction::Forward(_)
    ));
    // No retransmission of the INVITE once answered.
    let later = run_until(&mut s.t, 100_000);
    assert!(
        later.iter().all(|(_, d, _)| *d != callee(1)),
        "nothing resent downstream: {later:?}"
    );
    assert!(s.t.is_empty(), "the cell is freed after wait_ms");
    assert_eq!(s.t.stats.freed, 1);
}

#[test]
fn timer_a_doubles_and_timer_b_gives_408() {
    let cfg = TxnConfig {
        fr_timer_ms: 10_000,
        ..TxnConfig::default()
    };
    let mut s = setup("INVITE", cfg);
    add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    let out = run_until(&mut s.t, 9_999);
    let times: Vec<u64> = out.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500], "A: T1, 2T1, 4T1, 8T1");
    assert!(out
        .iter()
        .all(|(_, _, b)| first_line(b).starts_with("INVITE")));
    run_until(&mut s.t, 10_000);
    assert_eq!(s.t.poll_event(), Some(Event::Completed(s.id)));
    assert_eq!(s.t.best(s.id), Some((0, 408)));
    let cell = s.t.get(s.id).unwrap();
    assert!(cell.branches[0].timed_out);
    assert_eq!(cell.branches[0].state, ClientState::Terminated);
}

#[test]
fn timer_e_caps_at_t2_and_timer_f_gives_408() {
    let mut s = setup("MESSAGE", TxnConfig::default());
    add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    let out = run_until(&mut s.t, 16_000);
    let times: Vec<u64> = out.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500, 11_500, 15_500]);
    run_until(&mut s.t, 30_000);
    assert_eq!(s.t.poll_event(), Some(Event::Completed(s.id)));
    assert_eq!(s.t.best(s.id), Some((0, 408)));
}

#[test]
fn non_invite_provisional_moves_e_to_t2() {
    let mut s = setup("MESSAGE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert!(matches!(
        respond(&mut s, &req, 180, 100),
        RespAction::Forward(_)
    ));
    let out = run_until(&mut s.t, 9_000);
    let times: Vec<u64> = out.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(times, vec![4100, 8100], "E: every T2 once Proceeding");
}

#[test]
fn server_invite_final_is_retransmitted_by_g_until_h() {
    let mut s = setup("INVITE", TxnConfig::default());
    assert!(s
        .t
        .reply(s.id, 486, b"SIP/2.0 486 Busy Here\r\n\r\n".to_vec(), 0));
    assert_eq!(sent(&mut s.t).len(), 1);
    let out = run_until(&mut s.t, 40_000);
    let times: Vec<u64> = out.iter().map(|(at, _, _)| *at).collect();
    let mut want = vec![500, 1500, 3500, 7500];
    let mut t = 7500;
    while t + 4000 < 32_000 {
        t += 4000;
        want.push(t);
    }
    assert_eq!(times, want, "G: T1 doubling, capped at T2, until H = 64*T1");
    assert!(out.iter().all(|(_, d, _)| *d == client()));
    assert!(s.t.is_empty(), "H ends the transaction");
    assert_eq!(s.t.stats.timeouts, 1);
}

#[test]
fn ack_confirms_and_timer_i_ends() {
    let mut s = setup("INVITE", TxnConfig::default());
    assert!(s
        .t
        .reply(s.id, 486, b"SIP/2.0 486 Busy Here\r\n\r\n".to_vec(), 0));
    sent(&mut s.t);
    let before = run_until(&mut s.t, 600);
    assert_eq!(before.len(), 1, "G fired at T1");
    let ack = request("ACK", "z9hG4bKclient1", 1);
    let p = parse(&ack);
    assert_eq!(
        s.t.on_request(&SipMsg::new(&ack, &p), 700),
        ReqMatch::Ack(s.id)
    );
    assert_eq!(s.t.get(s.id).unwrap().server, ServerState::Confirmed);
    // ACK retransmission absorbed.
    assert_eq!(
        s.t.on_request(&SipMsg::new(&ack, &p), 800),
        ReqMatch::Ack(s.id)
    );
    let out = run_until(&mut s.t, 10_000);
    assert!(out.is_empty(), "no G after the ACK: {out:?}");
    assert!(s.t.is_empty(), "I = T4 ends it");
}

#[test]
fn request_retransmissions_are_absorbed() {
    let mut s = setup("MESSAGE", TxnConfig::default());
    let p = parse(&s.orig);
    let orig = s.orig.clone();
    // Trying: absorbed silently.
    assert_eq!(
        s.t.on_request(&SipMsg::new(&orig, &p), 10),
        ReqMatch::Retransmission(s.id)
    );
    assert!(sent(&mut s.t).is_empty());
    assert!(s.t.reply(s.id, 200, b"SIP/2.0 200 OK\r\n\r\n".to_vec(), 20));
    sent(&mut s.t);
    // Completed: the final reply is sent again.
    assert_eq!(
        s.t.on_request(&SipMsg::new(&orig, &p), 30),
        ReqMatch::Retransmission(s.id)
    );
    let again = sent(&mut s.t);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, b"SIP/2.0 200 OK\r\n\r\n");
    assert!(
        !s.t.reply(s.id, 500, b"x".to_vec(), 40),
        "one final reply only"
    );
    run_until(&mut s.t, 10_000);
    assert!(s.t.is_empty(), "J = wait_ms");
    // After J the same request is new again.
    assert_eq!(
        s.t.on_request(&SipMsg::new(&orig, &p), 10_001),
        ReqMatch::None
    );
}

#[test]
fn invite_retransmission_resends_the_provisional() {
    let mut s = setup("INVITE", TxnConfig::default());
    assert!(s
        .t
        .reply(s.id, 100, b"SIP/2.0 100 Trying\r\n\r\n".to_vec(), 0));
    sent(&mut s.t);
    let orig = s.orig.clone();
    let p = parse(&orig);
    assert_eq!(
        s.t.on_request(&SipMsg::new(&orig, &p), 500),
        ReqMatch::Retransmission(s.id)
    );
    assert_eq!(sent(&mut s.t)[0].1, b"SIP/2.0 100 Trying\r\n\r\n");
}

#[test]
fn non_2xx_final_on_a_branch_is_acked_hop_by_hop() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert_eq!(respond(&mut s, &req, 486, 100), RespAction::Completed);
    let out = sent(&mut s.t);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, callee(1));
    let p = parse(&out[0].1);
    let ack = SipMsg::new(&out[0].1, &p);
    assert_eq!(ack.method(), Some(sip::Method::Ack));
    assert_eq!(ack.to().unwrap().tag(), Some(&b"callee"[..]));
    let rp = parse(&req);
    assert_eq!(
        ack.top_via().unwrap().branch(),
        SipMsg::new(&req, &rp).top_via().unwrap().branch(),
        "the ACK carries the INVITE's branch"
    );
    // The 486 retransmitted: ACK again, absorbed, no second Completed.
    assert_eq!(respond(&mut s, &req, 486, 200), RespAction::Absorbed);
    assert_eq!(sent(&mut s.t).len(), 1);
    assert_eq!(s.t.best(s.id), Some((0, 486)));
    let stored = s.t.get(s.id).unwrap().branches[0].reply.clone().unwrap();
    let sp = parse(&stored);
    assert_eq!(SipMsg::new(&stored, &sp).vias().count(), 1);
}

#[test]
fn cancel_waits_for_a_provisional_then_is_sent() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    s.t.cancel(s.id, 100);
    assert!(
        sent(&mut s.t).is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    // No INVITE retransmissions once the CANCEL is owed.
    assert!(run_until(&mut s.t, 400).is_empty());
    let _ = run_until(&mut s.t, 600);
    assert_eq!(
        respond(&mut s, &req, 180, 700),
        RespAction::Absorbed,
        "canceled: not forwarded"
    );
    let out = sent(&mut s.t);
    assert_eq!(out.len(), 1);
    assert!(first_line(&out[0].1).starts_with("CANCEL sip:bob@127.0.0.1"));
    // 200 for the CANCEL: absorbed; CANCEL retransmissions stop.
    let cancel = out[0].1.clone();
    let r = response(&cancel, 200, None);
    let p = parse(&r);
    let m = SipMsg::new(&r, &p);
    let (id, b, is_cancel) = s.t.match_response(&m).unwrap();
    assert!(is_cancel);
    assert_eq!(
        s.t.on_response(id, b, is_cancel, &m, 710),
        RespAction::Absorbed
    );
    // 487 for the INVITE: ACKed, all final.
    assert_eq!(respond(&mut s, &req, 487, 720), RespAction::Completed);
    assert_eq!(s.t.best(s.id), Some((0, 487)));
    let out = sent(&mut s.t);
    assert!(first_line(&out[0].1).starts_with("ACK"));
    let later = run_until(&mut s.t, 3000);
    assert!(later
        .iter()
        .all(|(_, _, b)| !first_line(b).starts_with("CANCEL")));
}

#[test]
fn cancel_is_retransmitted_without_an_answer() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    respond(&mut s, &req, 180, 10);
    sent(&mut s.t);
    s.t.cancel(s.id, 100);
    assert_eq!(sent(&mut s.t).len(), 1);
    let out = run_until(&mut s.t, 3000);
    let cancels: Vec<u64> = out
        .iter()
        .filter(|(_, _, b)| first_line(b).starts_with("CANCEL"))
        .map(|(at, _, _)| *at)
        .collect();
    assert_eq!(cancels, vec![600, 1600]);
}

#[test]
fn parallel_fork_first_2xx_wins_and_the_other_branch_is_cancelled() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, r1) = add_branch(&mut s, 1, 0);
    let (_, r2) = add_branch(&mut s, 2, 0);
    assert_eq!(sent(&mut s.t).len(), 2);
    assert!(matches!(
        respond(&mut s, &r1, 180, 10),
        RespAction::Forward(_)
    ));
    assert!(matches!(
        respond(&mut s, &r2, 180, 11),
        RespAction::Forward(_)
    ));
    let RespAction::Forward(okr) = respond(&mut s, &r2, 200, 20) else {
        panic!()
    };
    assert!(s.t.reply(s.id, 200, okr, 20));
    let out = sent(&mut s.t);
    let cancels: Vec<_> = out
        .iter()
        .filter(|(_, b)| first_line(b).starts_with("CANCEL"))
        .collect();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].0, callee(1), "the other branch is cancelled");
    // Its 487 is ACKed and absorbed; nothing goes upstream.
    assert_eq!(respond(&mut s, &r1, 487, 30), RespAction::Absorbed);
    // A 2xx from the other branch too is forwarded (§16.7 step 5).
    assert!(matches!(
        respond(&mut s, &r1, 200, 31),
        RespAction::Absorbed | RespAction::Forward(_)
    ));
}

#[test]
fn six_xx_cancels_the_rest_and_wins() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, r1) = add_branch(&mut s, 1, 0);
    let (_, r2) = add_branch(&mut s, 2, 0);
    respond(&mut s, &r1, 180, 5);
    sent(&mut s.t);
    assert_eq!(
        respond(&mut s, &r2, 603, 10),
        RespAction::Absorbed,
        "branch 1 still pending"
    );
    assert!(sent(&mut s.t)
        .iter()
        .any(|(d, b)| *d == callee(1) && first_line(b).starts_with("CANCEL")));
    assert_eq!(respond(&mut s, &r1, 487, 20), RespAction::Completed);
    assert_eq!(s.t.best(s.id), Some((1, 603)));
}

#[test]
fn best_response_selection() {
    let mut s = setup("INVITE", TxnConfig::default());
    let mut reqs = Vec::new();
    for n in 0..4 {
        reqs.push(add_branch(&mut s, n, 0).1);
    }
    sent(&mut s.t);
    assert_eq!(respond(&mut s, &reqs[0], 503, 1), RespAction::Absorbed);
    assert_eq!(respond(&mut s, &reqs[1], 404, 1), RespAction::Absorbed);
    assert_eq!(respond(&mut s, &reqs[2], 407, 1), RespAction::Absorbed);
    assert_eq!(respond(&mut s, &reqs[3], 302, 1), RespAction::Completed);
    assert_eq!(s.t.best(s.id), Some((3, 302)), "lowest class");
    let mut s = setup("INVITE", TxnConfig::default());
    let a = add_branch(&mut s, 0, 0).1;
    let b = add_branch(&mut s, 1, 0).1;
    respond(&mut s, &a, 404, 1);
    respond(&mut s, &b, 407, 1);
    assert_eq!(s.t.best(s.id), Some((1, 407)), "407 preferred in 4xx");
}

#[test]
fn fr_inv_timer_cancels_a_ringing_branch_and_gives_408() {
    let cfg = TxnConfig {
        fr_inv_timer_ms: 3000,
        ..TxnConfig::default()
    };
    let mut s = setup("INVITE", cfg);
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert!(matches!(
        respond(&mut s, &req, 180, 100),
        RespAction::Forward(_)
    ));
    let out = run_until(&mut s.t, 3100);
    assert!(
        out.iter()
            .any(|(at, _, b)| *at == 3100 && first_line(b).starts_with("CANCEL")),
        "CANCEL at 100 + fr_inv: {out:?}"
    );
    assert_eq!(s.t.poll_event(), Some(Event::Completed(s.id)));
    assert_eq!(s.t.best(s.id), Some((0, 408)));
    // The callee's 487 later: ACKed, absorbed.
    assert_eq!(respond(&mut s, &req, 487, 3200), RespAction::Absorbed);
    assert!(sent(&mut s.t)
        .iter()
        .any(|(_, b)| first_line(b).starts_with("ACK")));
}

#[test]
fn reordered_and_duplicate_replies() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    assert!(matches!(
        respond(&mut s, &req, 200, 10),
        RespAction::Forward(_)
    ));
    assert_eq!(
        respond(&mut s, &req, 180, 11),
        RespAction::Absorbed,
        "late 180"
    );
    assert_eq!(
        respond(&mut s, &req, 486, 12),
        RespAction::Absorbed,
        "late 486"
    );
    let mut s = setup("MESSAGE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    assert!(matches!(
        respond(&mut s, &req, 200, 10),
        RespAction::Forward(_)
    ));
    assert!(s.t.reply(s.id, 200, b"x".to_vec(), 10));
    assert_eq!(
        respond(&mut s, &req, 200, 11),
        RespAction::Absorbed,
        "duplicate"
    );
    assert_eq!(
        respond(&mut s, &req, 100, 12),
        RespAction::Absorbed,
        "late 100"
    );
}

#[test]
fn stale_and_foreign_replies_do_not_match() {
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    let r = response(&req, 180, None);
    s.t.release(s.id);
    let p = parse(&r);
    assert!(
        s.t.match_response(&SipMsg::new(&r, &p)).is_none(),
        "released cell"
    );
    // A new cell in the same slot has a new generation.
    let orig = request("INVITE", "z9hG4bKother", 1);
    let po = parse(&orig);
    s.t.create(&SipMsg::new(&orig, &po), client().into(), 0, ())
        .unwrap();
    assert!(
        s.t.match_response(&SipMsg::new(&r, &p)).is_none(),
        "stale generation"
    );
    // Another shard's or another run's branch.
    let mut other: Table<()> = Table::new(TxnConfig::default(), 0, SALT + 1);
    assert!(other.match_response(&SipMsg::new(&r, &p)).is_none());
    other.handle_timeout(1);
    // Wrong CSeq method.
    let mut s = setup("INVITE", TxnConfig::default());
    let (_, req) = add_branch(&mut s, 1, 0);
    let r = response(&req, 200, Some("BYE"));
    let p = parse(&r);
    assert!(s.t.match_response(&SipMsg::new(&r, &p)).is_none());
}

#[test]
fn max_cells_and_max_branches_are_enforced() {
    let cfg = TxnConfig {
        max_cells: 2,
        max_branches: 1,
        ..TxnConfig::default()
    };
    let mut t: Table<()> = Table::new(cfg, 0, SALT);
    for i in 0..2 {
        let r = request("INVITE", &format!("z9hG4bK{i}"), 1);
        let p = parse(&r);
        t.create(&SipMsg::new(&r, &p), client().into(), 0, ())
            .unwrap();
    }
    let r = request("INVITE", "z9hG4bK9", 1);
    let p = parse(&r);
    assert_eq!(
        t.create(&SipMsg::new(&r, &p), client().into(), 0, ()),
        Err(Full)
    );
    assert_eq!(t.stats.full, 1);
    let mut s = setup(
        "INVITE",
        TxnConfig {
            max_branches: 1,
            ..TxnConfig::default()
        },
    );
    add_branch(&mut s, 1, 0);
    assert!(s.t.next_branch(s.id).is_none());
}

#[test]
fn a_cell_nobody_answers_expires_and_is_freed() {
    let mut s = setup("INVITE", TxnConfig::default());
    let guard = 120_000 + 64 * 500;
    run_until(&mut s.t, guard);
    assert_eq!(s.t.poll_event(), Some(Event::Expired(s.id)));
    assert!(s.t.reply(
        s.id,
        408,
        b"SIP/2.0 408 Request Timeout\r\n\r\n".to_vec(),
        guard
    ));
    run_until(&mut s.t, guard + 100_000);
    assert!(s.t.is_empty());
}

#[test]
fn rfc2543_request_matching() {
    let mut t: Table<()> = Table::new(TxnConfig::default(), 0, SALT);
    let r = request("INVITE", "old1", 1);
    let p = parse(&r);
    let id = t
        .create(&SipMsg::new(&r, &p), client().into(), 0, ())
        .unwrap();
    assert_eq!(
        t.on_request(&SipMsg::new(&r, &p), 1),
        ReqMatch::Retransmission(id)
    );
    let other = request("INVITE", "old1", 2);
    let po = parse(&other);
    assert_eq!(
        t.on_request(&SipMsg::new(&other, &po), 1),
        ReqMatch::None,
        "other CSeq"
    );
    let cancel = request("CANCEL", "old1", 1);
    let pc = parse(&cancel);
    assert_eq!(
        t.find_invite_for_cancel(&SipMsg::new(&cancel, &pc)),
        Some(id)
    );
}

#[test]
fn cancel_matches_its_invite() {
    let mut s = setup("INVITE", TxnConfig::default());
    let cancel = request("CANCEL", "z9hG4bKclient1", 1);
    let p = parse(&cancel);
    let m = SipMsg::new(&cancel, &p);
    assert_eq!(
        s.t.on_request(&m, 1),
        ReqMatch::None,
        "a CANCEL is its own transaction"
    );
    assert_eq!(s.t.find_invite_for_cancel(&m), Some(s.id));
    let c = s.t.create(&m, client().into(), 1, ()).unwrap();
    assert_ne!(c, s.id);
    assert_eq!(s.t.on_request(&m, 2), ReqMatch::Retransmission(c));
}

/// Random event sequences (a deterministic generator): the table never
/// panics and never holds a cell without a timer; every cell ends.
#[test]
fn random_event_sequences_keep_the_invariants() {
    for seed in 1..300u64 {
        let mut x = seed;
        let bytes: Vec<u8> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if let Err(e) = super::fuzzing::drive(&bytes) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn timer_k_ends_a_completed_non_invite_branch_after_t4() {
    // wait_ms (timer J of the server side) longer than T4, so the cell
    // outlives its branch.
    let cfg = TxnConfig {
        wait_ms: 20_000,
        ..TxnConfig::default()
    };
    let mut s = setup("MESSAGE", cfg);
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert!(matches!(
        respond(&mut s, &req, 200, 100),
        RespAction::Forward(_)
    ));
    assert!(s
        .t
        .reply(s.id, 200, b"SIP/2.0 200 OK\r\n\r\n".to_vec(), 100));
    // Completed: a retransmitted 200 is absorbed, nothing is resent.
    assert_eq!(respond(&mut s, &req, 200, 200), RespAction::Absorbed);
    assert_eq!(
        s.t.get(s.id).unwrap().branches[0].state,
        ClientState::Completed
    );
    run_until(&mut s.t, 100 + 5000 - 1);
    assert_eq!(
        s.t.get(s.id).unwrap().branches[0].state,
        ClientState::Completed
    );
    run_until(&mut s.t, 100 + 5000);
    assert_eq!(
        s.t.get(s.id).map(|c| c.branches[0].state),
        Some(ClientState::Terminated),
        "K = T4 after the final reply"
    );
}

#[test]
fn timer_d_ends_a_completed_invite_branch_after_wait() {
    let cfg = TxnConfig {
        wait_ms: 2000,
        ..TxnConfig::default()
    };
    let mut s = setup("INVITE", cfg);
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert_eq!(respond(&mut s, &req, 486, 100), RespAction::Completed);
    run_until(&mut s.t, 100 + 2000 - 1);
    assert_eq!(
        s.t.get(s.id).unwrap().branches[0].state,
        ClientState::Completed
    );
    // A 486 retransmission inside D is ACKed again.
    assert_eq!(respond(&mut s, &req, 486, 1500), RespAction::Absorbed);
    assert!(sent(&mut s.t)
        .iter()
        .any(|(_, b)| first_line(b).starts_with("ACK")));
    run_until(&mut s.t, 100 + 2000);
    assert_eq!(
        s.t.get(s.id).map(|c| c.branches[0].state),
        Some(ClientState::Terminated),
        "D = wait_ms after the final reply"
    );
}

#[test]
fn timers_l_and_m_keep_an_answered_invite_for_wait_ms() {
    let cfg = TxnConfig {
        wait_ms: 3000,
        ..TxnConfig::default()
    };
    let mut s = setup("INVITE", cfg);
    let (_, req) = add_branch(&mut s, 1, 0);
    let RespAction::Forward(ok) = respond(&mut s, &req, 200, 100) else {
        panic!()
    };
    assert!(s.t.reply(s.id, 200, ok, 100));
    run_until(&mut s.t, 100 + 3000 - 1);
    assert!(s.t.get(s.id).is_some(), "Accepted until L/M");
    assert!(matches!(
        respond(&mut s, &req, 200, 2000),
        RespAction::Forward(_)
    ));
    run_until(&mut s.t, 100 + 3000);
    assert!(s.t.is_empty(), "L and M = wait_ms");
}

#[test]
fn a_longer_per_cell_fr_inv_timer_is_not_cut_by_the_guard() {
    let mut s = setup("INVITE", TxnConfig::default());
    s.t.get_mut(s.id).unwrap().fr_inv_timer_ms = 300_000;
    let (_, req) = add_branch(&mut s, 1, 0);
    sent(&mut s.t);
    assert!(matches!(
        respond(&mut s, &req, 180, 100),
        RespAction::Forward(_)
    ));
    run_until(&mut s.t, 299_000);
    assert_eq!(s.t.poll_event(), None, "still ringing at 299 s");
    run_until(&mut s.t, 300_100);
    assert_eq!(s.t.poll_event(), Some(Event::Completed(s.id)));
    assert_eq!(s.t.best(s.id), Some((0, 408)));
}

#[test]
fn the_timer_heap_grows_with_live_cells_not_with_the_call_rate() {
    let cfg = TxnConfig {
        wait_ms: 100,
        ..TxnConfig::default()
    };
    let mut t: Table<()> = Table::new(cfg, 0, SALT);
    // 20 000 short transactions, each answered at once and gone after
    // wait_ms; their guard timers (minutes) must not pile up.
    let mut now = 1;
    for i in 0..20_000u32 {
        let r = request("MESSAGE", &format!("z9hG4bKrate{i}"), 1);
        let p = parse(&r);
        let id = t
            .create(&SipMsg::new(&r, &p), client().into(), now, ())
            .unwrap();
        assert!(t.reply(id, 200, b"SIP/2.0 200 OK\r\n\r\n".to_vec(), now));
        t.drain_transmits(|_, _| {});
        now += 1;
        t.handle_timeout(now);
    }
    t.check_invariants().unwrap();
    assert!(t.len() <= 101, "{} cells alive", t.len());
    assert!(
        t.timer_entries() <= 1024 + 16 * t.len() + 1,
        "{} heap entries for {} cells",
        t.timer_entries(),
        t.len()
    );
}
