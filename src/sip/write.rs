//! Span-based message editing.
//!
//! Edits are recorded symbolically (they need neither the buffer nor the
//! index) and resolved in one ordered pass by [`Edits::assemble`], which
//! copies untouched byte ranges of the original and splices in the new bytes.
//! Nothing is re-parsed and nothing is allocated beyond `out` growth and the
//! two reusable vectors inside `Edits`.

use super::hdr::parse_via;
use super::lex::{self, ParamRanges, SplitRanges};
use super::{HdrName, Parsed, StartLine, Via};

/// Most splices one message takes (each later one is refused).
pub const MAX_SPLICES: usize = 1024;

/// A range in `Edits::data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct R(u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    SetRuri(R),
    PrependVia(R),
    TopViaReceived {
        received: Option<R>,
        rport: Option<u16>,
    },
    RemoveTopVia,
    RemoveHeader(usize),
    ReplaceHeader(usize, R),
    AppendHeader(R),
    InsertFirst(R),
    /// A line before / after header line `idx`.
    InsertBefore(usize, R),
    InsertAfter(usize, R),
    SetBody(R),
    /// Original bytes `[start, end)` replaced by the data (textops).
    Splice(u32, u32, R),
}

/// Edits against one parsed message; `assemble` writes the result by copying
/// untouched spans of the original buffer, without re-parsing.
///
/// Resolution rules: the last `set_ruri` / `set_body` wins;
/// `set_top_via_received` calls merge (the last `Some` of each field wins);
/// removing a header beats replacing it, and `remove_top_via` beats
/// `set_top_via_received`; several `prepend_via` calls stack (the last call
/// ends up on top); appended / first-inserted lines keep call order. Header
/// indices refer to the original `Parsed::headers`; out-of-range indices are
/// ignored. Inserted lines end in CRLF. Splices (`splice`) replace byte
/// ranges of the original anywhere in the message; they never overlap each
/// other, and one inside a removed or replaced header line, the top Via when
/// it is edited, or a body replaced by `set_body` is not written.
/// Content-Length follows splices in the body.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    ops: Vec<Op>,
    data: Vec<u8>,
    /// Header/body edits refused at [`MAX_EDITS`] / [`MAX_EDIT_BYTES`]
    /// (taken by [`Edits::take_refused`] to be counted).
    refused: u32,
    /// `[shard] max_edits` / `max_edit_bytes` ([`Edits::set_limits`]); 0 =
    /// the default ([`MAX_EDITS`] / [`MAX_EDIT_BYTES`]).
    max_ops: u32,
    max_bytes: u32,
}

/// Default of the most header/body edits (add, insert, replace, remove) on
/// one message (`[shard] max_edits`).
/// Request-URI, Via and `received` edits the proxy itself makes are never
/// refused.
pub const MAX_EDITS: usize = 1024;
/// Default of the most bytes those edits may carry (`[shard]
/// max_edit_bytes`; the written message is at most 64 KiB for UDP anyway).
pub const MAX_EDIT_BYTES: usize = 128 * 1024;

#[inline]
fn cp(out: &mut Vec<u8>, buf: &[u8], a: usize, b: usize) {
    if a < b {
        out.extend_from_slice(buf.get(a..b).unwrap_or(&[]));
    }
}

/// A parsed Via value plus where its `received` / `rport` parameters sit
/// (the `[name end, param end)` range, i.e. the `=value` part, if present).
pub(crate) struct ViaPlan<'a> {
    pub via: Via<'a>,
    end: usize,
    pub received_at: Option<(usize, usize)>,
    pub rport_at: Option<(usize, usize)>,
}

/// One Via parse and one parameter scan.
pub(crate) fn via_plan(item: &[u8]) -> Option<ViaPlan<'_>> {
    let (via, ps, end) = parse_via(item).ok()?;
    let params = item.get(ps..end).unwrap_or(&[]);
    let mut received_at = None;
    let mut rport_at = None;
    for p in ParamRanges::new(params) {
        let name = lex::sub(params, p.name);
        let at = Some((ps + p.name.1, ps + p.end));
        if received_at.is_none() && name.eq_ignore_ascii_case(b"received") {
            received_at = at;
        } else if rport_at.is_none() && name.eq_ignore_ascii_case(b"rport") {
            rport_at = at;
        }
    }
    Some(ViaPlan {
        via,
        end,
        received_at,
        rport_at,
    })
}

/// Writes one Via value with `received=` / `rport=` set (replacing existing
/// parameters of those names, else appending). An unparseable Via is copied
/// unchanged.
pub(crate) fn write_via_edited(
    out: &mut Vec<u8>,
    item: &[u8],
    received: Option<&[u8]>,
    rport: Option<u16>,
) {
    match via_plan(item) {
        Some(plan) => write_via_planned(out, item, &plan, received, rport),
        None => out.extend_from_slice(item),
    }
}

pub(crate) fn write_via_planned(
    out: &mut Vec<u8>,
    item: &[u8],
    plan: &ViaPlan<'_>,
    received: Option<&[u8]>,
    rport: Option<u16>,
) {
    let end = plan.end;
    let rcv_at = plan.received_at.filter(|_| received.is_some());
    let rport_at = plan.rport_at.filter(|_| rport.is_some());
    let write_rcv = |out: &mut Vec<u8>| {
        out.push(b'=');
        out.extend_from_slice(received.unwrap_or(&[]));
    };
    let write_rport = |out: &mut Vec<u8>| {
        out.push(b'=');
        lex::push_u32(out, u32::from(rport.unwrap_or(0)));
    };
    let mut cur = 0;
    match (rcv_at, rport_at) {
        (Some(a), Some(b)) if b.0 < a.0 => {
            cp(out, item, cur, b.0);
            write_rport(out);
            cp(out, item, b.1, a.0);
            write_rcv(out);
            cur = a.1;
        }
        _ => {
            if let Some(a) = rcv_at {
                cp(out, item, cur, a.0);
                write_rcv(out);
                cur = a.1;
            }
            if let Some(b) = rport_at {
                cp(out, item, cur, b.0);
                write_rport(out);
                cur = b.1;
            }
        }
    }
    cp(out, item, cur, end);
    if received.is_some() && rcv_at.is_none() {
        out.extend_from_slice(b";received");
        write_rcv(out);
    }
    if rport.is_some() && rport_at.is_none() {
        out.extend_from_slice(b";rport");
        write_rport(out);
    }
    cp(out, item, end, item.len());
}

/// Copies original ranges in increasing order, writing the splices that
/// start inside them (see [`Edits::splice`]).
struct Splicer<'a> {
    sp: Vec<(usize, usize, R)>,
    next: usize,
    /// End of a splice that ran past the last range copied.
    skip: usize,
    e: &'a Edits,
}

impl Splicer<'_> {
    fn cp(&mut self, out: &mut Vec<u8>, buf: &[u8], a: usize, b: usize) {
        self.copy(out, buf, a, b, false);
    }
    /// The last range (the body): an insert at its very end is written too.
    fn cp_end(&mut self, out: &mut Vec<u8>, buf: &[u8], a: usize, b: usize) {
        self.copy(out, buf, a, b, true);
    }
    fn copy(&mut self, out: &mut Vec<u8>, buf: &[u8], a: usize, b: usize, last: bool) {
        if self.sp.is_empty() {
            cp(out, buf, a, b);
            return;
        }
        let mut pos = a.max(self.skip);
        while let Some(&(s, e, r)) = self.sp.get(self.next) {
            if s < pos {
                // inside a range that was not copied: dropped
                self.next += 1;
                continue;
            }
            if s > b || (s == b && !(last && s == e)) {
                break;
            }
            cp(out, buf, pos, s);
            out.extend_from_slice(self.e.data(r));
            self.next += 1;
            if e > b {
                self.skip = e;
                return;
            }
            pos = e;
        }
        cp(out, buf, pos, b);
    }
}

impl Edits {
    pub fn new() -> Self {
        Edits::default()
    }
    pub fn clear(&mut self) {
        self.ops.clear();
        self.data.clear();
        self.refused = 0;
    }

    /// Bounds of this context's edits (kept across [`Edits::clear`]): set
    /// once when a shard makes the context, not per message.
    pub fn set_limits(&mut self, max_edits: usize, max_edit_bytes: usize) {
        self.max_ops = u32::try_from(max_edits).unwrap_or(u32::MAX);
        self.max_bytes = u32::try_from(max_edit_bytes).unwrap_or(u32::MAX);
    }

    /// Edits refused so far (header/body edits beyond [`MAX_EDITS`] /
    /// [`MAX_EDIT_BYTES`] are dropped and counted here).
    pub fn refused(&self) -> u32 {
        self.refused
    }

    /// Edits refused since the last call.
    pub fn take_refused(&mut self) -> u32 {
        std::mem::take(&mut self.refused)
    }

    /// Room for one more header/body edit carrying `bytes`; counts a refusal.
    fn room(&mut self, bytes: usize) -> bool {
        let max_ops = match self.max_ops {
            0 => MAX_EDITS,
            n => n as usize,
        };
        let max_bytes = match self.max_bytes {
            0 => MAX_EDIT_BYTES,
            n => n as usize,
        };
        if self.ops.len() >= max_ops || self.data.len() + bytes > max_bytes {
            self.refused = self.refused.saturating_add(1);
            return false;
        }
        true
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn stash(&mut self, bytes: &[u8]) -> R {
        let s = self.data.len();
        self.data.extend_from_slice(bytes);
        R(s as u32, self.data.len() as u32)
    }

    fn data(&self, r: R) -> &[u8] {
        self.data.get(r.0 as usize..r.1 as usize).unwrap_or(&[])
    }

    /// Replace the Request-URI.
    pub fn set_ruri(&mut self, uri: &[u8]) {
        let r = self.stash(uri);
        self.ops.push(Op::SetRuri(r));
    }
    /// Insert `Via: value` before the first Via header.
    pub fn prepend_via(&mut self, value: &[u8]) {
        let r = self.stash(value);
        self.ops.push(Op::PrependVia(r));
    }
    /// Add/replace `received=` and `rport=` on the top Via (RFC 3581).
    pub fn set_top_via_received(&mut self, received: Option<&[u8]>, rport: Option<u16>) {
        let received = received.map(|v| self.stash(v));
        self.ops.push(Op::TopViaReceived { received, rport });
    }
    /// Remove the first Via value (for replies travelling downstream).
    pub fn remove_top_via(&mut self) {
        self.ops.push(Op::RemoveTopVia);
    }
    /// Remove header line number `idx` of `Parsed::headers`.
    pub fn remove_header(&mut self, idx: usize) {
        if !self.room(0) {
            return;
        }
        self.ops.push(Op::RemoveHeader(idx));
    }
    /// Remove every header of this kind (Other: compare `name` bytes).
    pub fn remove_headers(
        &mut self,
        parsed: &Parsed,
        buf: &[u8],
        name: HdrName,
        raw_name: &[u8],
    ) -> usize {
        let kind = if name == HdrName::Other {
            HdrName::from_bytes(raw_name)
        } else {
            name
        };
        let mut n = 0;
        for (i, h) in parsed.headers.iter().enumerate() {
            let hit = if kind == HdrName::Other {
                h.name == HdrName::Other && h.name_span.get(buf).eq_ignore_ascii_case(raw_name)
            } else {
                h.name == kind
            };
            if hit {
                if !self.room(0) {
                    break;
                }
                self.ops.push(Op::RemoveHeader(i));
                n += 1;
            }
        }
        n
    }
    /// Replace the value of header line `idx`.
    pub fn replace_header_value(&mut self, idx: usize, value: &[u8]) {
        if !self.room(value.len()) {
            return;
        }
        let r = self.stash(value);
        self.ops.push(Op::ReplaceHeader(idx, r));
    }
    /// Append a header line (`"Name: value"`, no CRLF) after the last header.
    pub fn append_header(&mut self, line: &[u8]) {
        if !self.room(line.len()) {
            return;
        }
        let r = self.stash(line);
        self.ops.push(Op::AppendHeader(r));
    }
    /// Insert a header line (`"Name: value"`, no CRLF) before the first header.
    pub fn insert_header_first(&mut self, line: &[u8]) {
        if !self.room(line.len()) {
            return;
        }
        let r = self.stash(line);
        self.ops.push(Op::InsertFirst(r));
    }
    /// Insert a header line (`"Name: value"`, no CRLF) before header line
    /// `idx` of `Parsed::headers` (written even if that header is removed).
    pub fn insert_header_before(&mut self, idx: usize, line: &[u8]) {
        if !self.room(line.len()) {
            return;
        }
        let r = self.stash(line);
        self.ops.push(Op::InsertBefore(idx, r));
    }
    /// Insert a header line (`"Name: value"`, no CRLF) after header line
    /// `idx` of `Parsed::headers` (written even if that header is removed).
    pub fn insert_header_after(&mut self, idx: usize, line: &[u8]) {
        if !self.room(line.len()) {
            return;
        }
        let r = self.stash(line);
        self.ops.push(Op::InsertAfter(idx, r));
    }
    /// Replace the body; Content-Length is rewritten to match.
    pub fn set_body(&mut self, body: &[u8]) {
        if !self.room(body.len()) {
            return;
        }
        let r = self.stash(body);
        self.ops.push(Op::SetBody(r));
    }

    /// Replaces the original bytes `[start, end)` (offsets in the received
    /// buffer) with `with`; `start == end` inserts. Refused (false) when the
    /// range is inverted or overlaps an earlier splice.
    pub fn splice(&mut self, start: usize, end: usize, with: &[u8]) -> bool {
        let (Ok(a), Ok(b)) = (u32::try_from(start), u32::try_from(end)) else {
            return false;
        };
        if a > b {
            return false;
        }
        let mut n = 0;
        let clash = self.ops.iter().any(|op| match *op {
            Op::Splice(s, e, _) => {
                n += 1;
                a < e && s < b || (a == b && s < a && a < e)
            }
            _ => false,
        });
        if clash || n >= MAX_SPLICES {
            return false;
        }
        let r = self.stash(with);
        self.ops.push(Op::Splice(a, b, r));
        true
    }

    /// The splices, sorted by start (inserts at one offset keep call order).
    fn splices(&self) -> Vec<(usize, usize, R)> {
        let mut v: Vec<(usize, usize, R)> = self
            .ops
            .iter()
            .filter_map(|op| match *op {
                Op::Splice(s, e, r) => Some((s as usize, e as usize, r)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|&(s, e, _)| (s, e));
        v
    }

    /// The value header line `idx` was last replaced with, if any.
    pub fn replaced_value(&self, idx: usize) -> Option<&[u8]> {
        self.replacement(idx).map(|r| self.data(r))
    }

    /// The lines inserted before (`before`) or after header line `idx`.
    fn write_anchored(&self, out: &mut Vec<u8>, idx: usize, before: bool) {
        for op in &self.ops {
            let r = match *op {
                Op::InsertBefore(i, r) if before && i == idx => r,
                Op::InsertAfter(i, r) if !before && i == idx => r,
                _ => continue,
            };
            out.extend_from_slice(self.data(r));
            out.extend_from_slice(b"\r\n");
        }
    }

    fn removed(&self, idx: usize) -> bool {
        self.ops.contains(&Op::RemoveHeader(idx))
    }

    fn replacement(&self, idx: usize) -> Option<R> {
        self.ops.iter().rev().find_map(|op| match *op {
            Op::ReplaceHeader(i, r) if i == idx => Some(r),
            _ => None,
        })
    }

    /// Writes the edited message into `out` (cleared first).
    pub fn assemble(&self, buf: &[u8], parsed: &Parsed, out: &mut Vec<u8>) {
        out.clear();
        let hs = &parsed.headers;
        let headers_end = parsed.headers_end as usize;

        let mut ruri = None;
        let mut body = None;
        let mut received = None;
        let mut rport = None;
        let mut via_params = false;
        let mut rm_top_via = false;
        for op in &self.ops {
            match *op {
                Op::SetRuri(r) => ruri = Some(r),
                Op::SetBody(r) => body = Some(r),
                Op::TopViaReceived {
                    received: rc,
                    rport: rp,
                } => {
                    via_params = true;
                    if rc.is_some() {
                        received = rc;
                    }
                    if rp.is_some() {
                        rport = rp;
                    }
                }
                Op::RemoveTopVia => rm_top_via = true,
                _ => {}
            }
        }
        let mut sp = Splicer {
            sp: self.splices(),
            next: 0,
            skip: 0,
            e: self,
        };
        let (bs, be) = (parsed.body.start as usize, parsed.body.end as usize);
        let new_len = match body {
            Some(r) => Some(r.1 - r.0),
            None if sp.sp.iter().any(|&(s, _, _)| s >= bs) => {
                let mut n = (be - bs.min(be)) as i64;
                for &(s, e, r) in sp.sp.iter().filter(|&&(s, e, _)| s >= bs && e <= be) {
                    n += i64::from(r.1 - r.0) - (e - s) as i64;
                }
                u32::try_from(n.max(0)).ok()
            }
            None => None,
        };

        // Start line.
        let first_line = hs
            .first()
            .map_or(headers_end, |h| h.name_span.start as usize);
        match (parsed.start, ruri) {
            (StartLine::Request { uri, .. }, Some(r)) => {
                sp.cp(out, buf, parsed.msg_start(), uri.start as usize);
                out.extend_from_slice(self.data(r));
                sp.cp(out, buf, uri.end as usize, first_line);
            }
            _ => sp.cp(out, buf, parsed.msg_start(), first_line),
        }

        for op in &self.ops {
            if let Op::InsertFirst(r) = *op {
                out.extend_from_slice(self.data(r));
                out.extend_from_slice(b"\r\n");
            }
        }
        let first_via = parsed.first(HdrName::Via);
        let write_prepends = |out: &mut Vec<u8>| {
            for op in self.ops.iter().rev() {
                if let Op::PrependVia(r) = *op {
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(self.data(r));
                    out.extend_from_slice(b"\r\n");
                }
            }
        };
        if first_via.is_none() {
            write_prepends(out);
        }

        let mut cl_written = false;
        for (i, h) in hs.iter().enumerate() {
            let ls = h.name_span.start as usize;
            let le = hs
                .get(i + 1)
                .map_or(headers_end, |n| n.name_span.start as usize);
            let (vs, ve) = (h.value.start as usize, h.value.end as usize);
            if Some(i) == first_via {
                write_prepends(out);
            }
            self.write_anchored(out, i, true);
            if self.removed(i) {
                // nothing of this line
            } else if let (Some(n), HdrName::ContentLength) = (new_len, h.name) {
                sp.cp(out, buf, ls, vs);
                lex::push_u32(out, n);
                sp.cp(out, buf, ve, le);
                cl_written = true;
            } else if let Some(r) = self.replacement(i) {
                sp.cp(out, buf, ls, vs);
                out.extend_from_slice(self.data(r));
                sp.cp(out, buf, ve, le);
            } else if Some(i) == first_via && (rm_top_via || via_params) {
                let val = h.value.get(buf);
                let mut items = SplitRanges::new(val);
                let top = items.next().unwrap_or((0, 0));
                if rm_top_via {
                    match items.next() {
                        None => {}
                        Some(next) => {
                            sp.cp(out, buf, ls, vs);
                            sp.cp(out, buf, vs + next.0, le);
                        }
                    }
                } else {
                    sp.cp(out, buf, ls, vs + top.0);
                    let rcv = received.map(|r| self.data(r));
                    write_via_edited(out, lex::sub(val, top), rcv, rport);
                    sp.cp(out, buf, vs + top.1, le);
                }
            } else {
                sp.cp(out, buf, ls, le);
            }
            self.write_anchored(out, i, false);
        }

        for op in &self.ops {
            if let Op::AppendHeader(r) = *op {
                out.extend_from_slice(self.data(r));
                out.extend_from_slice(b"\r\n");
            }
        }
        if let (Some(n), false) = (new_len, cl_written) {
            out.extend_from_slice(b"Content-Length: ");
            lex::push_u32(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // Blank line, then the body.
        sp.cp(out, buf, headers_end, parsed.body.start as usize);
        match body {
            Some(r) => out.extend_from_slice(self.data(r)),
            None => sp.cp_end(out, buf, bs, be),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{parse_ok, s, Rng, INVITE, OK200, REGISTER};
    use super::super::{parse, Framing, Limits, Method, ParseError, Parsed, SipMsg, Status};
    use super::*;

    /// Applies `edit` to `orig`, checks the output frames again and hands
    /// the re-parsed message to `check`.
    fn edit_roundtrip(
        orig: &[u8],
        edit: impl FnOnce(&mut Edits, &Parsed),
        check: impl FnOnce(SipMsg<'_>, &[u8]),
    ) {
        let p = parse_ok(orig);
        let mut e = Edits::default();
        edit(&mut e, &p);
        let mut out = Vec::new();
        e.assemble(orig, &p, &mut out);
        let q = parse_ok(&out);
        check(SipMsg::new(&out, &q), &out);
    }

    #[test]
    fn splices_rewrite_byte_ranges() {
        let m: &[u8] = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            X-A: one two\r\nX-B: gone\r\nContent-Length: 5\r\n\r\nhello";
        let p = parse_ok(m);
        let at = |needle: &[u8]| m.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut e = Edits::default();
        let one = at(b"one");
        assert!(e.splice(one, one + 3, b"1"));
        // overlapping splices are refused; an insert inside one too
        assert!(!e.splice(one + 1, one + 5, b"x"));
        assert!(!e.splice(one + 1, one + 1, b"x"));
        assert!(!e.splice(5, 4, b"x"));
        // insert right after a replaced range is fine
        assert!(e.splice(one + 3, one + 3, b"+"));
        // a splice inside a removed header is not written
        let gone = at(b"gone");
        assert!(e.splice(gone, gone + 4, b"here"));
        e.remove_header(2);
        // body: replace and append at the very end; Content-Length follows
        let h = at(b"hello");
        assert!(e.splice(h, h + 1, b"J"));
        assert!(e.splice(m.len(), m.len(), b" world"));
        let mut out = Vec::new();
        e.assemble(m, &p, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             X-A: 1+ two\r\nContent-Length: 11\r\n\r\nJello world"
        );
        parse_ok(out.as_bytes());
        // the cap
        let mut e = Edits::default();
        for i in 0..MAX_SPLICES {
            assert!(e.splice(i % 20, i % 20, b"x"));
        }
        assert!(!e.splice(30, 30, b"x"));
    }

    #[test]
    fn no_edits_is_identity() {
        for m in [REGISTER, INVITE, OK200] {
            let p = parse_ok(m);
            let e = Edits::default();
            assert!(e.is_empty());
            let mut out = vec![1, 2, 3];
            e.assemble(m, &p, &mut out);
            assert_eq!(out, m);
        }
        // Leading keep-alives and trailing datagram bytes are not copied.
        let mut framed = b"\r\n\r\n".to_vec();
        framed.extend_from_slice(INVITE);
        framed.extend_from_slice(b"trailing junk");
        let p = parse_ok(&framed);
        let mut out = Vec::new();
        Edits::default().assemble(&framed, &p, &mut out);
        assert_eq!(out, INVITE);
    }

    #[test]
    fn set_ruri() {
        edit_roundtrip(
            INVITE,
            |e, _| e.set_ruri(b"sip:bob@192.0.2.4:5062;transport=udp"),
            |m, _| {
                assert_eq!(m.ruri(), Some(&b"sip:bob@192.0.2.4:5062;transport=udp"[..]));
                assert_eq!(m.method(), Some(Method::Invite));
                assert_eq!(m.check_request(), Ok(()));
                assert_eq!(m.body().len(), 149);
            },
        );
        edit_roundtrip(
            INVITE,
            |e, _| {
                e.set_ruri(b"sip:first@x");
                e.set_ruri(b"sip:second@x");
            },
            |m, _| assert_eq!(m.ruri(), Some(&b"sip:second@x"[..])),
        );
        // Responses have no R-URI: ignored.
        edit_roundtrip(
            OK200,
            |e, _| e.set_ruri(b"sip:x@y"),
            |_, out| assert_eq!(out, OK200),
        );
    }

    #[test]
    fn prepend_via() {
        edit_roundtrip(
            INVITE,
            |e, _| {
                e.prepend_via(b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1");
                e.prepend_via(b"SIP/2.0/TCP outer.example.com;branch=z9hG4bKp2");
            },
            |m, _| {
                let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host).collect();
                assert_eq!(
                    hosts,
                    [
                        &b"outer.example.com"[..],
                        b"proxy.example.com",
                        b"pc33.atlanta.example.com"
                    ]
                );
                assert_eq!(m.check_request(), Ok(()));
            },
        );
        // No Via at all: inserted as the first header.
        edit_roundtrip(
            b"OPTIONS sip:a@b SIP/2.0\r\nX-A: 1\r\n\r\n",
            |e, _| e.prepend_via(b"SIP/2.0/UDP p"),
            |m, out| {
                assert_eq!(m.top_via().unwrap().host, b"p");
                assert_eq!(
                    out,
                    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP p\r\nX-A: 1\r\n\r\n"
                );
            },
        );
        // Via is not the first header: inserted right before it.
        edit_roundtrip(
            b"OPTIONS sip:a@b SIP/2.0\r\nX-A: 1\r\nv: SIP/2.0/UDP h\r\n\r\n",
            |e, _| e.prepend_via(b"SIP/2.0/UDP p"),
            |_, out| {
                assert_eq!(out, b"OPTIONS sip:a@b SIP/2.0\r\nX-A: 1\r\nVia: SIP/2.0/UDP p\r\nv: SIP/2.0/UDP h\r\n\r\n");
            },
        );
    }

    #[test]
    fn top_via_received_and_rport() {
        type Case<'t> = (&'t [u8], Option<&'t [u8]>, Option<u16>, &'t [u8]);
        let table: &[Case<'_>] = &[
            (
                b"SIP/2.0/UDP h;branch=z9hG4bK1;rport",
                Some(b"192.0.2.9"),
                Some(6000),
                b"SIP/2.0/UDP h;branch=z9hG4bK1;rport=6000;received=192.0.2.9",
            ),
            (
                b"SIP/2.0/UDP h;rport;branch=z9hG4bK1",
                None,
                Some(6000),
                b"SIP/2.0/UDP h;rport=6000;branch=z9hG4bK1",
            ),
            (
                b"SIP/2.0/UDP h;received=1.1.1.1;rport=1",
                Some(b"2.2.2.2"),
                Some(2),
                b"SIP/2.0/UDP h;received=2.2.2.2;rport=2",
            ),
            (
                b"SIP/2.0/UDP h;rport=1;received=1.1.1.1",
                Some(b"2.2.2.2"),
                Some(2),
                b"SIP/2.0/UDP h;rport=2;received=2.2.2.2",
            ),
            (
                b"SIP/2.0/UDP h ; rport ; x=\"a;b\"",
                Some(b"3.3.3.3"),
                None,
                b"SIP/2.0/UDP h ; rport ; x=\"a;b\";received=3.3.3.3",
            ),
            (
                b"SIP/2.0/UDP h",
                Some(b"3.3.3.3"),
                Some(9),
                b"SIP/2.0/UDP h;received=3.3.3.3;rport=9",
            ),
            (
                b"SIP/2.0/UDP h;received",
                Some(b"4.4.4.4"),
                None,
                b"SIP/2.0/UDP h;received=4.4.4.4",
            ),
        ];
        for &(via, rcv, rport, want) in table {
            let mut orig = b"OPTIONS sip:a@b SIP/2.0\r\nVia: ".to_vec();
            orig.extend_from_slice(via);
            orig.extend_from_slice(
                b", SIP/2.0/UDP second;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP third\r\n\r\n",
            );
            edit_roundtrip(
                &orig,
                |e, _| e.set_top_via_received(rcv, rport),
                |m, out| {
                    let vias: Vec<_> = m.vias().collect::<Result<_, _>>().unwrap();
                    assert_eq!(vias.len(), 3, "{}", s(out));
                    assert_eq!(vias[0].raw, want, "{}", s(out));
                    assert_eq!(vias[1].host, b"second");
                    if let Some(r) = rcv {
                        assert_eq!(vias[0].received(), Some(r));
                    }
                    if let Some(p) = rport {
                        assert_eq!(vias[0].rport(), Some(Some(p)));
                    }
                },
            );
        }
        // Merging: the last Some of each field wins.
        edit_roundtrip(
            INVITE,
            |e, _| {
                e.set_top_via_received(Some(b"1.1.1.1"), Some(1));
                e.set_top_via_received(Some(b"2.2.2.2"), None);
            },
            |m, _| {
                let v = m.top_via().unwrap();
                assert_eq!(
                    (v.received(), v.rport()),
                    (Some(&b"2.2.2.2"[..]), Some(Some(1)))
                );
            },
        );
    }

    #[test]
    fn remove_top_via() {
        edit_roundtrip(
            OK200,
            |e, _| e.remove_top_via(),
            |m, _| {
                let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host).collect();
                assert_eq!(hosts, [&b"bigbox3.site3.atlanta.example.com"[..]]);
                assert_eq!(m.check_response(), Ok(()));
            },
        );
        let multi = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1 ,\r\n SIP/2.0/UDP b, SIP/2.0/UDP c\r\nVia: SIP/2.0/UDP d\r\n\r\n";
        edit_roundtrip(
            multi,
            |e, _| e.remove_top_via(),
            |m, out| {
                let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host).collect();
                assert_eq!(hosts, [&b"b"[..], b"c", b"d"]);
                assert_eq!(out, b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP b, SIP/2.0/UDP c\r\nVia: SIP/2.0/UDP d\r\n\r\n");
            },
        );
    }

    #[test]
    fn header_removal_replacement_insertion() {
        edit_roundtrip(
            REGISTER,
            |e, p| {
                let auth = p.first(HdrName::Authorization).unwrap();
                e.remove_header(auth);
                e.replace_header_value(p.first(HdrName::MaxForwards).unwrap(), b"69");
                e.replace_header_value(
                    p.first(HdrName::Contact).unwrap(),
                    b"<sip:new@192.0.2.1>;expires=60",
                );
                e.append_header(b"Path: <sip:edge.example.com;lr>");
                e.append_header(b"X-Last: 1");
                e.insert_header_first(b"X-First: 1");
                e.remove_header(999);
            },
            |m, _| {
                assert_eq!(m.check_request(), Ok(()));
                assert_eq!(m.header(HdrName::Authorization), None);
                assert_eq!(m.max_forwards(), Ok(Some(69)));
                let c = m.contacts().next().unwrap().unwrap();
                assert_eq!(
                    (c.expires(), c.name_addr().unwrap().uri),
                    (Some(60), &b"sip:new@192.0.2.1"[..])
                );
                assert_eq!(
                    m.name_addrs(HdrName::Path).next().unwrap().unwrap().uri,
                    b"sip:edge.example.com;lr"
                );
                let p = m.parsed;
                let first = &p.headers[0];
                assert_eq!(first.name_span.get(m.buf), b"X-First");
                let last = p.headers.last().unwrap();
                assert_eq!(last.name_span.get(m.buf), b"X-Last");
                assert_eq!(p.headers.len(), 10 - 1 + 3);
            },
        );
        // remove_headers by kind and by raw name.
        let orig = b"OPTIONS sip:a@b SIP/2.0\r\nX-Foo: 1\r\nVia: SIP/2.0/UDP h\r\nx-foo: 2\r\nSupported: a\r\nk: b\r\n\r\n";
        let p = parse_ok(orig);
        let mut e = Edits::default();
        assert_eq!(e.remove_headers(&p, orig, HdrName::Other, b"X-FOO"), 2);
        assert_eq!(e.remove_headers(&p, orig, HdrName::Supported, b""), 2);
        assert_eq!(e.remove_headers(&p, orig, HdrName::Other, b"v"), 1);
        assert_eq!(e.remove_headers(&p, orig, HdrName::Other, b"X-None"), 0);
        let mut out = Vec::new();
        e.assemble(orig, &p, &mut out);
        assert_eq!(out, b"OPTIONS sip:a@b SIP/2.0\r\n\r\n");
        // Removal beats replacement; last replacement wins.
        let mut e = Edits::default();
        e.replace_header_value(0, b"x");
        e.replace_header_value(0, b"y");
        e.replace_header_value(1, b"z");
        e.remove_header(1);
        e.assemble(orig, &p, &mut out);
        assert_eq!(
            s(&out),
            "OPTIONS sip:a@b SIP/2.0\r\nX-Foo: y\r\nx-foo: 2\r\nSupported: a\r\nk: b\r\n\r\n"
        );
    }

    #[test]
    fn set_body_fixes_content_length() {
        edit_roundtrip(
            INVITE,
            |e, _| e.set_body(b"v=0\r\n"),
            |m, _| {
                assert_eq!(m.body(), b"v=0\r\n");
                assert_eq!(m.content_length(), Ok(Some(5)));
                assert_eq!(m.check_request(), Ok(()));
            },
        );
        edit_roundtrip(
            INVITE,
            |e, _| e.set_body(b""),
            |m, _| {
                assert_eq!(m.body(), b"");
                assert_eq!(m.content_length(), Ok(Some(0)));
            },
        );
        // No Content-Length (datagram): one is added.
        edit_roundtrip(
            b"MESSAGE sip:a@b SIP/2.0\nl: 3\nX: 1\n\nabc",
            |e, _| e.set_body(b"hello"),
            |m, out| {
                assert_eq!(out, b"MESSAGE sip:a@b SIP/2.0\nl: 5\nX: 1\n\nhello");
                assert_eq!(m.body(), b"hello");
            },
        );
        edit_roundtrip(
            b"MESSAGE sip:a@b SIP/2.0\r\nX: 1\r\n\r\nabc",
            |e, _| e.set_body(b"hello"),
            |m, out| {
                assert_eq!(
                    out,
                    b"MESSAGE sip:a@b SIP/2.0\r\nX: 1\r\nContent-Length: 5\r\n\r\nhello"
                );
                assert_eq!(m.content_length(), Ok(Some(5)));
            },
        );
        // Stream framing needs the header: the output must frame as a stream.
        let p = parse_ok(INVITE);
        let mut e = Edits::default();
        e.remove_headers(&p, INVITE, HdrName::ContentLength, b"");
        e.set_body(b"xyz");
        let mut out = Vec::new();
        e.assemble(INVITE, &p, &mut out);
        let mut q = Parsed::default();
        assert_eq!(
            parse(&out, Framing::Stream, &Limits::default(), &mut q),
            Ok(Status::Complete(out.len()))
        );
    }

    #[test]
    fn no_allocation_once_warm() {
        let p = parse_ok(REGISTER);
        let mut e = Edits::default();
        let mut out = Vec::new();
        let run = |e: &mut Edits, out: &mut Vec<u8>| {
            e.clear();
            e.set_ruri(b"sip:bob@192.0.2.4:5062");
            e.prepend_via(b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKabc");
            e.set_top_via_received(Some(b"198.51.100.1"), Some(5099));
            e.remove_header(7);
            e.append_header(b"Path: <sip:p;lr>");
            e.assemble(REGISTER, &p, out);
        };
        run(&mut e, &mut out);
        let caps = (
            e.ops.capacity(),
            e.data.capacity(),
            out.capacity(),
            out.as_ptr(),
        );
        for _ in 0..10 {
            run(&mut e, &mut out);
            assert_eq!(
                (
                    e.ops.capacity(),
                    e.data.capacity(),
                    out.capacity(),
                    out.as_ptr()
                ),
                caps
            );
        }
        assert_eq!(parse_ok(&out).headers.len(), 11);
    }

    /// Randomized round trip: random edit sequences on random (well-formed)
    /// messages must re-parse, and every edit must be visible in the result.
    #[test]
    fn random_edit_roundtrip() {
        let mut rng = Rng(7);
        let mut out = Vec::new();
        for _ in 0..3000 {
            let (orig, names) = random_message(&mut rng);
            let p = parse_ok(&orig);
            let mut e = Edits::default();
            let mut expect_removed = vec![false; names.len()];
            let mut expect_value: Vec<Option<Vec<u8>>> = vec![None; names.len()];
            let mut appended = Vec::new();
            let mut new_body = None;
            let mut new_ruri = None;
            for _ in 0..rng.below(6) {
                match rng.below(6) {
                    0 if !names.is_empty() => {
                        let i = rng.below(names.len());
                        e.remove_header(i);
                        expect_removed[i] = true;
                    }
                    1 if !names.is_empty() => {
                        let i = rng.below(names.len());
                        if HdrName::from_bytes(&names[i].0) == HdrName::ContentLength {
                            continue;
                        }
                        let v = format!("new{}", rng.below(1000)).into_bytes();
                        e.replace_header_value(i, &v);
                        expect_value[i] = Some(v);
                    }
                    2 => {
                        let l = format!("X-App{}: {}", appended.len(), rng.below(100));
                        e.append_header(l.as_bytes());
                        appended.push(l);
                    }
                    3 => {
                        let b: Vec<u8> = (0..rng.below(40))
                            .map(|_| b'a' + rng.below(26) as u8)
                            .collect();
                        e.set_body(&b);
                        new_body = Some(b);
                    }
                    4 => {
                        let u = format!("sip:u{}@h", rng.below(100)).into_bytes();
                        e.set_ruri(&u);
                        new_ruri = Some(u);
                    }
                    _ => {}
                }
            }
            e.assemble(&orig, &p, &mut out);
            let mut q = Parsed::default();
            match parse(&out, Framing::Datagram, &Limits::default(), &mut q) {
                Ok(Status::Complete(n)) => assert_eq!(n, out.len()),
                other => panic!("{other:?}\norig:\n{}\nout:\n{}", s(&orig), s(&out)),
            }
            let m = SipMsg::new(&out, &q);
            // Surviving original headers, in order, then the appended ones.
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (i, (n, v)) in names.iter().enumerate() {
                if expect_removed[i] {
                    continue;
                }
                let v = match (&new_body, HdrName::from_bytes(n)) {
                    (Some(b), HdrName::ContentLength) => b.len().to_string().into_bytes(),
                    _ => expect_value[i].clone().unwrap_or_else(|| v.clone()),
                };
                want.push((n.clone(), v));
            }
            for l in &appended {
                let (n, v) = l.split_once(": ").unwrap();
                want.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            let got: Vec<(Vec<u8>, Vec<u8>)> = q
                .headers
                .iter()
                .map(|h| (h.name_span.get(&out).to_vec(), h.value.get(&out).to_vec()))
                .collect();
            let cl_added = new_body.is_some()
                && !want
                    .iter()
                    .any(|(n, _)| HdrName::from_bytes(n) == HdrName::ContentLength);
            if cl_added {
                want.push((
                    b"Content-Length".to_vec(),
                    new_body.as_ref().unwrap().len().to_string().into_bytes(),
                ));
            }
            assert_eq!(got, want, "\norig:\n{}\nout:\n{}", s(&orig), s(&out));
            if let Some(b) = &new_body {
                assert_eq!(m.body(), &b[..]);
            } else {
                assert_eq!(m.body(), SipMsg::new(&orig, &p).body());
            }
            if let Some(u) = &new_ruri {
                assert_eq!(m.ruri(), Some(&u[..]));
            }
        }
    }

    /// A random well-formed request: names (long/compact/other, random case),
    /// values with optional folding, CRLF or LF endings, optional body.
    type NameValues = Vec<(Vec<u8>, Vec<u8>)>;

    fn random_message(rng: &mut Rng) -> (Vec<u8>, NameValues) {
        const NAMES: &[&str] = &[
            "Via",
            "v",
            "From",
            "f",
            "To",
            "Call-ID",
            "i",
            "CSeq",
            "Contact",
            "m",
            "Subject",
            "X-Custom",
            "Max-Forwards",
            "Supported",
        ];
        let eol: &[u8] = if rng.chance(3) { b"\n" } else { b"\r\n" };
        let mut m = b"OPTIONS sip:a@b SIP/2.0".to_vec();
        m.extend_from_slice(eol);
        let mut names = Vec::new();
        for _ in 0..rng.below(12) {
            let mut n = rng.pick(NAMES).as_bytes().to_vec();
            if rng.chance(2) {
                n.iter_mut().for_each(|c| {
                    if rng.chance(2) {
                        *c = c.to_ascii_uppercase()
                    }
                });
            }
            let words = 1 + rng.below(3);
            let mut v = Vec::new();
            let mut raw = Vec::new();
            for w in 0..words {
                let mut word: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| *rng.pick(b"abcXYZ019<>;=@.:\""))
                    .filter(|&c| c != b'"')
                    .collect();
                if word.is_empty() {
                    word.push(b'w');
                }
                if w > 0 {
                    if rng.chance(3) {
                        raw.extend_from_slice(eol);
                        raw.extend_from_slice(b"  ");
                        v.extend_from_slice(eol);
                        v.extend_from_slice(b"  ");
                    } else {
                        raw.push(b' ');
                        v.push(b' ');
                    }
                }
                raw.extend_from_slice(&word);
                v.extend_from_slice(&word);
            }
            m.extend_from_slice(&n);
            m.extend_from_slice(if rng.chance(4) { b" :  " } else { b": " });
            m.extend_from_slice(&raw);
            if rng.chance(4) {
                m.extend_from_slice(b" \t");
            }
            m.extend_from_slice(eol);
            names.push((n, v));
        }
        let body: Vec<u8> = (0..rng.below(3) * rng.below(30))
            .map(|_| *rng.pick(b"xyz\r\n"))
            .collect();
        if !body.is_empty() || rng.chance(2) {
            let n = b"Content-Length".to_vec();
            let v = body.len().to_string().into_bytes();
            m.extend_from_slice(&n);
            m.extend_from_slice(b": ");
            m.extend_from_slice(&v);
            m.extend_from_slice(eol);
            names.push((n, v));
        }
        m.extend_from_slice(eol);
        m.extend_from_slice(&body);
        (m, names)
    }

    #[test]
    fn random_messages_parse_as_generated() {
        let mut rng = Rng(11);
        for _ in 0..3000 {
            let (m, names) = random_message(&mut rng);
            let p = parse_ok(&m);
            let got: Vec<(Vec<u8>, Vec<u8>)> = p
                .headers
                .iter()
                .map(|h| (h.name_span.get(&m).to_vec(), h.value.get(&m).to_vec()))
                .collect();
            assert_eq!(got, names, "{}", s(&m));
            for (h, (n, _)) in p.headers.iter().zip(&names) {
                assert_eq!(h.name, HdrName::from_bytes(n));
            }
            let _ = ParseError::Empty;
        }
    }
}
