//! Bytes the transaction layer writes itself: branch ids, matching keys, and
//! the CANCEL and hop-by-hop ACK a client transaction derives from the
//! request it sent (RFC 3261 §9.1, §17.1.1.3).

use crate::sip::{self, HdrName, Limits, Method, Parsed, SipMsg};

/// Branch ids start with the magic cookie and sipshard's shard marker (the
/// shard dispatcher reads `sS<shard>.` to hand a reply to its owner).
pub const BRANCH_PREFIX: &str = "z9hG4bKsS";

/// Where a branch id points: the cell slot, its generation and the branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchRef {
    pub slot: u32,
    pub gen: u32,
    pub branch: u8,
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut n = 0;
    let mut v = v;
    loop {
        tmp[n] = HEX[(v & 0xf) as usize];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend(tmp[..n].iter().rev());
}

fn parse_hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d as u64;
    }
    Some(v)
}

/// `z9hG4bKsS<shard>.<salt>.<slot>.<gen>.<branch>` (hex fields).
pub fn write_branch(out: &mut Vec<u8>, shard: usize, salt: u32, r: BranchRef) {
    out.extend_from_slice(BRANCH_PREFIX.as_bytes());
    out.extend_from_slice(shard.to_string().as_bytes());
    out.push(b'.');
    push_hex(out, salt as u64);
    out.push(b'.');
    push_hex(out, r.slot as u64);
    out.push(b'.');
    push_hex(out, r.gen as u64);
    out.push(b'.');
    push_hex(out, r.branch as u64);
}

/// The number after [`BRANCH_PREFIX`] (the stripe or shard that wrote the
/// branch), if `b` is a sipshard branch.
pub fn branch_stripe(b: &[u8]) -> Option<usize> {
    let rest = b.strip_prefix(BRANCH_PREFIX.as_bytes())?;
    let dot = rest.iter().position(|&c| c == b'.')?;
    let digits = &rest[..dot];
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads a branch id written by [`write_branch`] for this shard and salt.
pub fn parse_branch(b: &[u8], shard: usize, salt: u32) -> Option<BranchRef> {
    let rest = b.strip_prefix(BRANCH_PREFIX.as_bytes())?;
    let mut it = rest.split(|&c| c == b'.');
    let sh = it.next()?;
    if sh != shard.to_string().as_bytes() {
        return None;
    }
    if parse_hex(it.next()?)? != salt as u64 {
        return None;
    }
    let slot = u32::try_from(parse_hex(it.next()?)?).ok()?;
    let gen = u32::try_from(parse_hex(it.next()?)?).ok()?;
    let branch = u8::try_from(parse_hex(it.next()?)?).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some(BranchRef { slot, gen, branch })
}

/// The server-transaction matching key of a request (RFC 3261 §17.2.3):
/// with a magic-cookie branch, branch + sent-by + method (ACK counts as
/// INVITE); otherwise the RFC 2543 fallback: Request-URI, From tag,
/// Call-ID, CSeq number, top Via and method. `None` when the request lacks
/// what either needs.
pub fn server_key(msg: &SipMsg<'_>, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let via = msg.top_via().ok()?;
    let method = match msg.method()? {
        Method::Ack => b"INVITE".as_slice(),
        _ => msg.method_bytes(),
    };
    match via.branch() {
        Some(br) if br.len() > 7 && br[..7].eq_ignore_ascii_case(b"z9hG4bK") => {
            out.push(b'1');
            out.extend_from_slice(method);
            out.push(0);
            out.extend_from_slice(br);
            out.push(0);
            out.extend(via.host.iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            crate::sip::lex::push_u32(out, u32::from(via.port.unwrap_or(5060)));
        }
        _ => {
            let cseq = msg.cseq().ok()?;
            out.push(b'2');
            out.extend_from_slice(method);
            out.push(0);
            out.extend_from_slice(msg.ruri()?);
            out.push(0);
            out.extend_from_slice(msg.call_id()?);
            out.push(0);
            out.extend_from_slice(msg.from().ok()?.tag().unwrap_or(b""));
            out.push(0);
            crate::sip::lex::push_u32(out, cseq.num);
            out.push(0);
            out.extend_from_slice(via.raw);
        }
    }
    Some(())
}

/// The key of the INVITE a CANCEL (same branch / same 2543 identity) cancels.
pub fn invite_key_of_cancel(msg: &SipMsg<'_>, out: &mut Vec<u8>) -> Option<()> {
    server_key(msg, out)?;
    // Swap the method part ("CANCEL") for "INVITE".
    let m = b"CANCEL";
    if out.get(1..1 + m.len()) != Some(m) {
        return None;
    }
    out.splice(1..1 + m.len(), b"INVITE".iter().copied());
    Some(())
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes a CANCEL (or, with `to_of_reply`, the ACK for a non-2xx final
/// reply) for the request `req` this proxy sent: same Request-URI, top Via
/// only, Route set, From, Call-ID, CSeq number; To from the request (CANCEL)
/// or from the reply (ACK). False when `req` does not parse.
pub fn write_cancel_or_ack(req: &[u8], to_of_reply: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut parsed = Parsed::default();
    if !matches!(
        sip::parse(req, sip::Framing::Datagram, &Limits::default(), &mut parsed),
        Ok(sip::Status::Complete(_))
    ) {
        return false;
    }
    let msg = SipMsg::new(req, &parsed);
    let (Some(ruri), Some(via), Some(from), Some(callid), Ok(cseq)) = (
        msg.ruri(),
        msg.header(HdrName::Via),
        msg.header(HdrName::From),
        msg.call_id(),
        msg.cseq(),
    ) else {
        return false;
    };
    // Only the top Via value (a line may carry several).
    let top_via = msg.vias().next().and_then(|v| v.ok()).map(|v| v.raw);
    let via = top_via.unwrap_or(via);
    let to = match to_of_reply {
        Some(t) => t,
        None => match msg.header(HdrName::To) {
            Some(t) => t,
            None => return false,
        },
    };
    let method: &[u8] = if to_of_reply.is_some() {
        b"ACK"
    } else {
        b"CANCEL"
    };
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(ruri);
    out.extend_from_slice(b" SIP/2.0\r\n");
    header_line(out, "Via", via);
    for r in msg.headers(HdrName::Route) {
        header_line(out, "Route", r);
    }
    header_line(out, "From", from);
    header_line(out, "To", to);
    header_line(out, "Call-ID", callid);
    out.extend_from_slice(b"CSeq: ");
    out.extend_from_slice(cseq.num.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(method);
    out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_stripe_reads_the_prefix_and_rejects_others() {
        let r = BranchRef {
            slot: 1,
            gen: 2,
            branch: 0,
        };
        let mut b = Vec::new();
        write_branch(&mut b, 17, 9, r);
        assert_eq!(branch_stripe(&b), Some(17));
        for bad in [
            &b"z9hG4bK776asdhds"[..],
            b"z9hG4bKsS.x",
            b"z9hG4bKsS12345.x",
            b"z9hG4bKsS1x.y",
            b"z9hG4bKsS1",
        ] {
            assert_eq!(branch_stripe(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn branch_roundtrip() {
        let r = BranchRef {
            slot: 0x1234,
            gen: 7,
            branch: 3,
        };
        let mut out = Vec::new();
        write_branch(&mut out, 1, 0xdead_beef, r);
        assert_eq!(out, b"z9hG4bKsS1.deadbeef.1234.7.3");
        assert_eq!(parse_branch(&out, 1, 0xdead_beef), Some(r));
        assert_eq!(parse_branch(&out, 0, 0xdead_beef), None);
        assert_eq!(parse_branch(&out, 1, 1), None);
        assert_eq!(
            parse_branch(b"z9hG4bKsS1.deadbeef.1234.7", 1, 0xdead_beef),
            None
        );
        assert_eq!(parse_branch(b"z9hG4bKabc", 1, 0xdead_beef), None);
        assert_eq!(
            parse_branch(b"z9hG4bKsS1.deadbeef.1234.7.3.9", 1, 0xdead_beef),
            None
        );
        // The dispatcher reads `z9hG4bKsS<shard>.` (shard::dispatch::branch_shard).
        assert!(out.starts_with(b"z9hG4bKsS1."));
    }

    fn parsed(b: &[u8]) -> Parsed {
        let mut p = Parsed::default();
        sip::parse(b, sip::Framing::Datagram, &Limits::default(), &mut p).unwrap();
        p
    }

    const INV: &[u8] = b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsS0.1.2.3.0, SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKa\r\nRoute: <sip:10.0.0.9;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:alice@x>;tag=a1\r\nTo: <sip:bob@x>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn cancel_and_ack_from_request() {
        let mut out = Vec::new();
        assert!(write_cancel_or_ack(INV, None, &mut out));
        let p = parsed(&out);
        let m = SipMsg::new(&out, &p);
        assert_eq!(m.method(), Some(Method::Cancel));
        assert_eq!(m.ruri(), Some(&b"sip:bob@127.0.0.1:5070"[..]));
        assert_eq!(m.vias().count(), 1);
        assert_eq!(
            m.top_via().unwrap().branch(),
            Some(&b"z9hG4bKsS0.1.2.3.0"[..])
        );
        assert_eq!(m.cseq().unwrap().num, 7);
        assert_eq!(m.cseq().unwrap().method, Method::Cancel);
        assert_eq!(m.header(HdrName::Route), Some(&b"<sip:10.0.0.9;lr>"[..]));
        assert!(m.check_request().is_ok());

        assert!(write_cancel_or_ack(
            INV,
            Some(b"<sip:bob@x>;tag=b9"),
            &mut out
        ));
        let p = parsed(&out);
        let m = SipMsg::new(&out, &p);
        assert_eq!(m.method(), Some(Method::Ack));
        assert_eq!(m.to().unwrap().tag(), Some(&b"b9"[..]));
        assert!(m.check_request().is_ok());
        assert!(!write_cancel_or_ack(b"garbage", None, &mut out));
    }

    #[test]
    fn keys_match_ack_and_cancel_to_invite() {
        let inv = b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP Host.example:5062;branch=z9hG4bK77\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: k\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let ack = b"ACK sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP host.example:5062;branch=z9hG4bK77\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=x\r\nCall-ID: k\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
        let can = b"CANCEL sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP host.example:5062;branch=z9hG4bK77\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: k\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
        let (pi, pa, pc) = (parsed(inv), parsed(ack), parsed(can));
        let (mut ki, mut ka, mut kc, mut kci) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        server_key(&SipMsg::new(inv, &pi), &mut ki).unwrap();
        server_key(&SipMsg::new(ack, &pa), &mut ka).unwrap();
        server_key(&SipMsg::new(can, &pc), &mut kc).unwrap();
        invite_key_of_cancel(&SipMsg::new(can, &pc), &mut kci).unwrap();
        assert_eq!(
            ki, ka,
            "ACK matches its INVITE (host compared case-insensitively)"
        );
        assert_ne!(ki, kc, "CANCEL is its own transaction");
        assert_eq!(ki, kci, "CANCEL finds its INVITE");
        // RFC 2543 fallback (no cookie).
        let old = b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h2:5062;branch=abc\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: k\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let old_ack = b"ACK sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h2:5062;branch=abc\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=zz\r\nCall-ID: k\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
        let (po, poa) = (parsed(old), parsed(old_ack));
        let (mut ko, mut koa) = (Vec::new(), Vec::new());
        server_key(&SipMsg::new(old, &po), &mut ko).unwrap();
        server_key(&SipMsg::new(old_ack, &poa), &mut koa).unwrap();
        assert_eq!(ko[0], b'2');
        assert_eq!(ko, koa);
    }
}
