//! KSR.textops / KSR.textopsx: regular-expression search and rewrite of the
//! message text (Kamailio `textops` and `textopsx`).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.textops.search(re)` | `int (str)` | 1 when `re` matches the message as received (start line included), -1 not |
//! | `KSR.textops.search_body(re)` | `int (str)` | 1 match in the body / -1 (also for no body) |
//! | `KSR.textops.search_hf(hf, re, flags)` | `int (str, str, str)` | 1 when a value of header `hf` matches: any (flags `""`), the first (`f`) or the last (`l`) / -1 |
//! | `KSR.textops.search_append(re, txt)` | `int (str, str)` | 1: txt inserted after the first match in the headers and body / -1 none |
//! | `KSR.textops.subst(subst)` | `int (str)` | 1: `/re/repl/flags` applied to headers and body (not the start line) / -1 no match or bad expression |
//! | `KSR.textops.subst_uri(subst)` | `int (str)` | 1: the Request-URI rewritten / -1 |
//! | `KSR.textops.subst_user(subst)` | `int (str)` | 1: the R-URI user part rewritten / -1 |
//! | `KSR.textops.subst_body(subst)` | `int (str)` | 1: applied to the body / -1 (also for no body) |
//! | `KSR.textops.subst_hf(hf, subst, flags)` | `int (str, str, str)` | 1: applied to the values of header `hf`, all (`a`), first (`f`) or last (`l`) / -1 |
//! | `KSR.textops.replace(re, txt)` | `int (str, str)` | 1: first match in headers and body replaced by txt (literal) / -1 |
//! | `KSR.textops.replace_all(re, txt)` | `int (str, str)` | 1: every match replaced / -1 |
//! | `KSR.textops.replace_body(re, txt)` | `int (str, str)` | 1: first match in the body replaced / -1 |
//! | `KSR.textops.replace_body_all(re, txt)` | `int (str, str)` | 1: every match in the body replaced / -1 |
//! | `KSR.textops.has_body()` | `int ()` | 1 when Content-Length is above 0 / -1 |
//! | `KSR.textops.has_body_type(ctype)` | `int (str)` | 1 body of type `type/subtype` (no Content-Type counts as application/sdp) / -1 |
//! | `KSR.textops.is_present_hf(hf)` | `int (str)` | 1 present / -1 |
//! | `KSR.textops.is_present_hf_re(re)` | `int (str)` | 1 a header name matches / -1 |
//! | `KSR.textops.remove_hf(hf)` | `int (str)` | 1, removed or not (as Kamailio) |
//! | `KSR.textops.remove_hf_re(re)` | `int (str)` | 1 some header whose name matches removed / -1 none |
//! | `KSR.textops.remove_hf_exp(re, skip)` | `int (str, str)` | 1 headers matching `re` and not `skip` removed / -1 none |
//! | `KSR.textops.set_body(body, ctype)` | `int (str, str)` | 1: body and Content-Type set / -1 an argument empty |
//! | `KSR.textops.set_reply_body(body, ctype)` | `int (str, str)` | 1: the next local reply (sl or tm) carries body and Content-Type / -1 an argument empty or over 16 KiB |
//! | `KSR.textops.filter_body(ctype)` | `int (str)` | 1: a multipart/mixed body cut down to the content of its first `ctype` part (the Content-Type header is left as is, as Kamailio) / -1 |
//! | `KSR.textops.starts_with(s, prefix)` | `int (str, str)` | 1 / -1 (s sorts after) / -2 (before) |
//! | `KSR.textops.cmp_str(s1, s2)` | `int (str, str)` | 1 equal / -1 s1 greater / -2 s1 smaller |
//! | `KSR.textops.cmp_istr(s1, s2)` | `int (str, str)` | same, ignoring ASCII case |
//! | `KSR.textops.in_list(s, list, sep)` | `int (str, str, str)` | 1 `s` is an item of `list` split at the first char of `sep` (items trimmed) / -1 |
//! | `KSR.textops.search_append_body(re, txt)` | `int (str, str)` | 1: txt inserted after the first match in the body / -1 |
//! | `KSR.textops.search_str(text, re)` | `int (str, str)` | 1 match / -1 none / 2 empty `re` / -2 empty text or bad `re` |
//! | `KSR.textops.subst_v(text, subst, pv)` | `int (str, str, str)` | 1: the substituted text stored in pseudo-variable `pv` / -1 no match or `pv` not writable; sipshard extension (Kamailio 5.7+, not in 5.6) |
//! | `KSR.textops.replace_hdrs(re, txt)` | `int (str, str)` | 1: first match in the header lines replaced / -1 |
//! | `KSR.textops.replace_str(key, txt, mode)` | `int (str, str, str)` | 1 (also when `key` is not found, as Kamailio): literal `key` after the start line replaced, first (`f`, `""`) or all (`a`) |
//! | `KSR.textops.replace_body_str(key, txt, mode)` | `int (str, str, str)` | same in the body |
//! | `KSR.textops.replace_hdrs_str(key, txt, mode)` | `int (str, str, str)` | same in the header lines; -1 when there are none |
//! | `KSR.textops.remove_hf_idx(hf, idx)` | `int (str, int)` | 1: the idx-th `hf` header removed (negative from the end) / 2 no idx-th (idx >= 0) |
//! | `KSR.textops.ends_with(s, suffix)` | `int (str, str)` | 1 / -1 / -2 as `starts_with` |
//! | `KSR.textops.str_find(s, needle)` / `str_ifind(s, needle)` | `int (str, str)` | 1-based position of needle (`ifind`: ignoring ASCII case) / -1 |
//! | `KSR.textops.str_any_in(s, chars)` / `str_all_in(s, chars)` | `int (str, str)` | 1 when any / all of `chars` occur in `s` / -1; sipshard extension (Kamailio 5.7+, not in 5.6) |
//! | `KSR.textops.in_list_prefix(s, list, sep)` | `int (str, str, str)` | 1 some item of `list` is a prefix of `s` / -1 |
//! | `KSR.textops.is_privacy(type)` | `int (str)` | 1 the Privacy header lists `type` (header, session, user, none, critical, id, history) / -1 |
//! | `KSR.textops.replace_body_atonce(re, txt)` | `int (str, str)` | 1: every match replaced, matching over the whole body at once (`.` matches a newline, `^`/`$` only at its ends; as in Kamailio 5.6 the body's last byte is left out) / -1 |
//! | `KSR.textops.regex_substring(itext, re, mindex, mcount, dpv)` | `int (str, str, int, int, str)` | 1: group `mindex` (0 the whole match) of the first match stored in `dpv` / -2 no match (`^` never matches: Kamailio 5.6 searches the text as not starting a line) / -1 group unset, `mindex >= mcount`, bad expression or `dpv` not writable |
//! | `KSR.textops.remove_hf_match(hf, op, expr)` | `int (str, str, str)` | 1: the `hf` headers whose value is equal to (`eq`), not equal to (`ne`), contains (`in`) or matches (`re`) `expr` removed / -2 none / -1 bad `op` |
//! | `KSR.textops.is_audio_on_hold()` | `int ()` | 1 an SDP audio stream is held the RFC 2543 way (connection address 0.0.0.0), 2 the RFC 3264 way (`a=sendonly`/`a=inactive`) / -1 none or no SDP body |
//! | `KSR.textopsx.msg_apply_changes()` | `int ()` | 1: edits written into the message, later reads see them / -1 (after the transaction exists, in tm's reply or failure routes, or when the result does not parse) |
//! | `KSR.textopsx.change_reply_status(code, reason)` | `int (int, str)` | 1 / -1 (code outside 100..699, empty reason, a 1xx/2xx class change, or not a reply: Kamailio 5.6 returns 1 there and overwrites the request line) |
//! | `KSR.textopsx.change_reply_status_code(code)` | `int (int)` | 1 / -1, keeping the reason phrase |
//! | `KSR.textopsx.remove_body()` | `int ()` | 1, body removed (Content-Length 0) or none there (as Kamailio) |
//! | `KSR.textopsx.keep_hf()` | `int ()` | -1 (Kamailio 5.6's code, always): removes every header but From, To, Call-ID, CSeq, Via, Contact, Content-Length, Content-Type, Route, Record-Route, Max-Forwards |
//! | `KSR.textopsx.keep_hf_re(re)` | `int (str)` | -1 likewise; also keeps the headers whose name matches `re` |
//! | `KSR.textopsx.fnmatch(val, pattern)` | `int (str, str)` | 0 (Kamailio's KEMI code) when the shell pattern matches / -1 |
//! | `KSR.textopsx.fnmatch_ex(val, pattern, flags)` | `int (str, str, str)` | same; flags `i` ignores case as documented (the Debian build of Kamailio 5.6.3 checked here ignores `i`: compiled without FNM_CASEFOLD) |
//! | `KSR.textopsx.hf_iterator_start(iname)` / `hf_iterator_end(iname)` | `int (str)` | 1: iterator (at most 4 names) before the first header / -1 |
//! | `KSR.textopsx.hf_iterator_next(iname)` / `hf_iterator_prev(iname)` | `int (str)` | 1 moved to the next / previous header / -1 past the last |
//! | `KSR.textopsx.hf_iterator_rm(iname)` | `int (str)` | 1 current header removed / -1 none |
//! | `KSR.textopsx.hf_iterator_append(iname, text)` / `hf_iterator_insert(iname, text)` | `int (str, str)` | 1 text (a header line) added after / before the current header / -1 none |
//! | `KSR.textopsx.hf_iterator_hname(iname)` / `hf_iterator_hbody(iname)` | `xval (str)` | current header's name / value, nil when none |
//!
//! Regular expressions: Kamailio compiles them as POSIX extended with
//! `REG_ICASE | REG_NEWLINE` (the `re` arguments above), and a `subst`
//! expression `/re/repl/flags` with `REG_NEWLINE` plus flags `i`
//! (case-insensitive), `g` (every match) and `s` (`.` matches newline). In
//! the replacement `\0`..`\9` are the match and its groups, `\u` the
//! Request-URI, `\n \r \t \\ \$` those characters, and `$pv` a
//! pseudo-variable's value. sipshard runs them with the `regex` crate (linear
//! time, a 256 KiB compiled-size limit): `^`/`$` match at line ends and `.`
//! not a newline as in Kamailio, but it picks the leftmost-first rather than
//! POSIX leftmost-longest alternative (`a|ab` on `ab` matches `a`), `[^x]`
//! also matches a newline, and Perl escapes (`\d`, `\b`) have their Perl
//! meaning. Matching is ASCII (bytes). Like Kamailio, an empty match fails
//! the call (-1), one replacement longer than 1023 bytes fails it, and edits
//! apply to the message as received (two `subst` calls on the same bytes: the
//! second is not applied); `msg_apply_changes()` makes them visible. Most
//! 1024 splices per message.
//!
//! `msg_apply_changes()` really rebuilds the message (sipshard needs it for
//! the same reason Kamailio does: `search`, `is_present_hf` and the other
//! readers see the received bytes until then). As Kamailio documents, it is
//! for the request route before the transaction exists, or the core reply
//! route. The R-URI set by `$ru`/`subst_uri` stays a pending rewrite.
//!
//! `append_hf`, `insert_hf` and `append_to_reply` are not KEMI exports of
//! Kamailio's textops: scripts call `KSR.hdr.append/insert/append_to_reply`.
//! Return codes above were checked against Kamailio 5.6.3 running the same
//! calls (app_lua), and the rewritten messages compared on the wire.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use mlua::{Lua, Table};
use regex::bytes::{Regex, RegexBuilder};

use super::Shared;
use crate::sip::{HdrName, StartLine};

/// Compiled-size limit of one expression.
const RE_SIZE_LIMIT: usize = 256 * 1024;
/// Compiled expressions kept per engine (cleared when full).
const RE_CACHE: usize = 128;
/// Largest reply body (and reply headers) `set_reply_body` takes.
const MAX_REPLY_BODY: usize = 16 * 1024;
/// Kamailio's replacement buffer (REPLACE_BUFFER_SIZE - 1).
const MAX_REPLACEMENT: usize = 1023;
/// Most matches one call rewrites.
const MAX_MATCHES: usize = crate::sip::MAX_SPLICES;

type Key = (Vec<u8>, bool, bool);

#[derive(Default)]
struct ReCache(RefCell<HashMap<Key, Rc<Regex>>>);

impl ReCache {
    /// POSIX-style flags: `icase`, `newline` (REG_NEWLINE: `.` stops at a
    /// newline, `^`/`$` match at lines).
    fn get(&self, pat: &[u8], icase: bool, newline: bool) -> Option<Rc<Regex>> {
        let key = (pat.to_vec(), icase, newline);
        if let Some(r) = self.0.borrow().get(&key) {
            return Some(r.clone());
        }
        let text = std::str::from_utf8(pat).ok()?;
        let re = RegexBuilder::new(text)
            .unicode(false)
            .case_insensitive(icase)
            .multi_line(newline)
            .dot_matches_new_line(!newline)
            .size_limit(RE_SIZE_LIMIT)
            .dfa_size_limit(RE_SIZE_LIMIT)
            .build();
        let re = match re {
            Ok(r) => Rc::new(r),
            Err(e) => {
                tracing::debug!("textops: bad regular expression: {e}");
                return None;
            }
        };
        let mut c = self.0.borrow_mut();
        if c.len() >= RE_CACHE {
            c.clear();
        }
        c.insert(key, re.clone());
        Some(re)
    }
}

/// One piece of a `subst` replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(Vec<u8>),
    Group(usize),
    Uri,
    Pv(String),
}

/// A parsed `/re/repl/flags`.
#[derive(Debug, PartialEq, Eq)]
struct SubstExpr {
    re: Vec<u8>,
    toks: Vec<Tok>,
    icase: bool,
    newline: bool,
    global: bool,
}

/// End (exclusive) of the pseudo-variable spec starting at `s[0] == '$'`.
fn pv_end(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    if s.get(1) != Some(&b'(') {
        while s
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            i += 1;
        }
        if i == 1 {
            return None;
        }
    }
    if s.get(i) == Some(&b'(') {
        let mut depth = 0usize;
        loop {
            match s.get(i)? {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    Some(i)
}

fn parse_subst(e: &[u8]) -> Option<SubstExpr> {
    let (&sep, rest) = e.split_first()?;
    if e.len() < 3 || sep == b'\\' {
        return None;
    }
    // the expression ends at the first separator not preceded by a backslash
    let re_end = (0..rest.len()).find(|&i| rest[i] == sep && (i == 0 || rest[i - 1] != b'\\'))?;
    let re = rest[..re_end].to_vec();
    let repl = rest.get(re_end + 1..)?;
    let mut toks = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    let mut end = None;
    while let Some(&c) = repl.get(i) {
        if c == b'\\' {
            let Some(&n) = repl.get(i + 1) else {
                break;
            };
            let tok = match n {
                b'n' => Tok::Lit(vec![b'\n']),
                b'r' => Tok::Lit(vec![b'\r']),
                b't' => Tok::Lit(vec![b'\t']),
                b'u' => Tok::Uri,
                b'0'..=b'9' => Tok::Group(usize::from(n - b'0')),
                other => Tok::Lit(vec![other]),
            };
            match tok {
                Tok::Lit(b) => lit.extend_from_slice(&b),
                t => {
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    toks.push(t);
                }
            }
            i += 2;
        } else if c == b'$' {
            let n = pv_end(&repl[i..])?;
            if !lit.is_empty() {
                toks.push(Tok::Lit(std::mem::take(&mut lit)));
            }
            toks.push(Tok::Pv(String::from_utf8(repl[i..i + n].to_vec()).ok()?));
            i += n;
        } else if c == sep {
            end = Some(i);
            break;
        } else {
            lit.push(c);
            i += 1;
        }
    }
    let end = end?;
    if !lit.is_empty() {
        toks.push(Tok::Lit(lit));
    }
    let (mut icase, mut newline, mut global) = (false, true, false);
    for f in &repl[end + 1..] {
        match f {
            b'i' => icase = true,
            b's' => newline = false,
            b'g' => global = true,
            _ => return None,
        }
    }
    Some(SubstExpr {
        re,
        toks,
        icase,
        newline,
        global,
    })
}

/// Resolved replacement pieces: literal bytes or a group number.
enum Piece {
    Bytes(Vec<u8>),
    Group(usize),
}

/// (start, end, replacement) of each match in `input`; `None` on an empty
/// match or an oversized replacement (Kamailio's errors).
fn run_subst(
    re: &Regex,
    pieces: &[Piece],
    global: bool,
    input: &[u8],
) -> Option<Vec<(usize, usize, Vec<u8>)>> {
    let mut out = Vec::new();
    for caps in re.captures_iter(input) {
        let m = caps.get(0)?;
        if m.start() == m.end() {
            return None;
        }
        let mut r = Vec::new();
        for p in pieces {
            match p {
                Piece::Bytes(b) => r.extend_from_slice(b),
                Piece::Group(g) => {
                    if let Some(c) = caps.get(*g) {
                        r.extend_from_slice(c.as_bytes());
                    }
                }
            }
            if r.len() > MAX_REPLACEMENT {
                return None;
            }
        }
        out.push((m.start(), m.end(), r));
        if !global || out.len() >= MAX_MATCHES {
            break;
        }
    }
    Some(out)
}

/// Expression, replacement pieces, `g` flag.
type Prepared = (Rc<Regex>, Vec<Piece>, bool);

/// A parsed subst with its pseudo-variables and `\u` resolved (outside the
/// message borrow, since reading a pseudo-variable borrows it).
fn prepare(lua: &Lua, s: &Shared, cache: &ReCache, expr: &[u8]) -> mlua::Result<Option<Prepared>> {
    let Some(se) = parse_subst(expr) else {
        return Ok(None);
    };
    let Some(re) = cache.get(&se.re, se.icase, se.newline) else {
        return Ok(None);
    };
    let mut pieces = Vec::with_capacity(se.toks.len());
    for t in se.toks {
        pieces.push(match t {
            Tok::Lit(b) => Piece::Bytes(b),
            Tok::Group(g) => Piece::Group(g),
            Tok::Uri => Piece::Bytes(
                s.with_msg(|m| m.ruri().map(<[u8]>::to_vec))?
                    .unwrap_or_default(),
            ),
            Tok::Pv(name) => Piece::Bytes(match super::pv::get_val(lua, s, &name)? {
                super::pv::Val::Null => super::pv::NULL_TEXT.as_bytes().to_vec(),
                super::pv::Val::Int(i) => i.to_string().into_bytes(),
                super::pv::Val::Str(b) => b,
            }),
        });
    }
    Ok(Some((re, pieces, se.global)))
}

/// Applies `subs` (offsets relative to `base` in the received buffer) as
/// splices; 1 when at least one was applied, else -1.
fn splice_all(m: &mut super::MsgCtx, base: usize, subs: &[(usize, usize, Vec<u8>)]) -> i64 {
    let bs = m.parsed.body.start as usize;
    let mut done = 0;
    for (a, b, r) in subs {
        let (a, b) = (base + a, base + b);
        if a < bs && b > bs {
            continue; // across the header/body boundary: not applied
        }
        if m.edits.splice(a, b, r) {
            done += 1;
        }
    }
    if done > 0 {
        1
    } else {
        -1
    }
}

/// Start of the first header line (Kamailio's `get_header`).
fn headers_start(m: &super::MsgCtx) -> usize {
    m.parsed
        .headers
        .first()
        .map_or(m.parsed.headers_end as usize, |h| {
            h.name_span.start as usize
        })
}

/// Indices of the headers named `name` (compact forms match their full name).
fn header_hits(m: &super::MsgCtx, name: &[u8]) -> Vec<usize> {
    let kind = HdrName::from_bytes(name);
    let buf = &m.buf[..m.len];
    let mut out = Vec::new();
    for (i, h) in m.parsed.headers.iter().enumerate() {
        let hit = if kind == HdrName::Other {
            h.name == HdrName::Other && h.name_span.get(buf).eq_ignore_ascii_case(name)
        } else {
            h.name == kind
        };
        if hit {
            out.push(i);
        }
    }
    out
}

/// The headers to work on for flags `f` (first), `l` (last), else all.
fn pick(hits: Vec<usize>, flags: &[u8]) -> Vec<usize> {
    match flags.first() {
        Some(b'f') => hits.into_iter().take(1).collect(),
        Some(b'l') => hits.last().copied().into_iter().collect(),
        _ => hits,
    }
}

fn code(b: bool) -> i64 {
    if b {
        1
    } else {
        -1
    }
}

fn cmp_code(o: std::cmp::Ordering) -> i64 {
    match o {
        std::cmp::Ordering::Equal => 1,
        std::cmp::Ordering::Greater => -1,
        std::cmp::Ordering::Less => -2,
    }
}

fn in_list(subject: &[u8], list: &[u8], sep: &[u8]) -> bool {
    let Some(&sep) = sep.first() else {
        return false;
    };
    if subject.is_empty() || list.is_empty() {
        return false;
    }
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    list.split(|c| *c == sep).any(|item| {
        let start = item.iter().position(|c| !ws(c)).unwrap_or(item.len());
        let end = item.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
        item.get(start..end) == Some(subject)
    })
}

/// Privacy header values Kamailio knows (RFC 3323, RFC 3325, RFC 4244).
const PRIVACY: &[&[u8]] = &[
    b"header",
    b"session",
    b"user",
    b"none",
    b"critical",
    b"id",
    b"history",
];

/// Parts of the message the literal replacements work on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Headers and body (after the start line).
    Msg,
    Body,
    /// The header lines only.
    Hdrs,
}

impl Region {
    fn range(self, m: &super::MsgCtx) -> (usize, usize) {
        match self {
            Region::Msg => (headers_start(m), m.len),
            Region::Body => (m.parsed.body.start as usize, m.len),
            Region::Hdrs => (headers_start(m), m.parsed.headers_end as usize),
        }
    }
}

/// `input` with each (start, end) range replaced.
fn rebuild(input: &[u8], subs: &[(usize, usize, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut pos = 0;
    for (a, b, r) in subs {
        out.extend_from_slice(input.get(pos..*a).unwrap_or(&[]));
        out.extend_from_slice(r);
        pos = *b;
    }
    out.extend_from_slice(input.get(pos..).unwrap_or(&[]));
    out
}

/// Kamailio's filter_body on a multipart/mixed `body`: the range of the
/// content of the first part whose `Content-Type: ` line starts with `want`
/// (what follows that line's CRLF, blank lines skipped, up to the CRLF
/// before the next boundary line).
fn filter_part(body: &[u8], ct: &[u8], want: &[u8]) -> Option<(usize, usize)> {
    let lower = ct.to_ascii_lowercase();
    if !lower.trim_ascii_start().starts_with(b"multipart/mixed") || want.is_empty() {
        return None;
    }
    let bpos = lower.windows(9).position(|w| w == b"boundary=")? + 9;
    let raw = &ct[bpos..];
    let raw = raw.split(|c| *c == b';').next().unwrap_or(&[]).trim_ascii();
    let boundary = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    if boundary.is_empty() {
        return None;
    }
    let mut delim = b"\r\n--".to_vec();
    delim.extend_from_slice(boundary);
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w.eq_ignore_ascii_case(needle))
            .map(|p| p + from)
    };
    let mut at = 0;
    while let Some(h) = find(body, b"Content-Type: ", at) {
        at = h + 14;
        if h != 0 && body.get(h - 1) != Some(&b'\n') {
            continue; // not at a line start
        }
        let v = body.get(at..)?;
        if v.len() <= want.len() + 2 {
            return None;
        }
        if !v[..want.len()].eq_ignore_ascii_case(want) {
            continue;
        }
        if v.get(want.len()..want.len() + 2) != Some(b"\r\n") {
            return None;
        }
        let mut start = at + want.len() + 2;
        while matches!(body.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let end = body
            .get(start..)?
            .windows(delim.len())
            .position(|w| w == &delim[..])?
            + start;
        return Some((start, end));
    }
    None
}

/// Kamailio's in_list_prefix: some (trimmed, non-empty) item starts `subject`.
fn in_list_prefix(subject: &[u8], list: &[u8], sep: &[u8]) -> bool {
    let Some(&sep) = sep.first() else {
        return false;
    };
    if subject.is_empty() || list.is_empty() {
        return false;
    }
    list.split(|c| *c == sep).any(|item| {
        let item = item.trim_ascii();
        !item.is_empty() && subject.starts_with(item)
    })
}

/// `type/subtype` of the message's Content-Type (application/sdp when absent).
fn content_type(m: &super::MsgCtx) -> Vec<u8> {
    let ct = m
        .msg()
        .header_by_name(b"content-type")
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| b"application/sdp".to_vec());
    let main = ct.split(|c| *c == b';').next().unwrap_or(&[]);
    let mut t: Vec<u8> = main
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .copied()
        .collect();
    t.make_ascii_lowercase();
    t
}

fn body_len(m: &super::MsgCtx) -> usize {
    let b = m.parsed.body;
    (b.end as usize).saturating_sub(b.start as usize)
}

/// Rewrites the status code digits in place and the reason through a splice.
fn change_status(m: &mut super::MsgCtx, new: i64, reason: Option<&[u8]>) -> i64 {
    let StartLine::Response {
        code: cur,
        reason: rs,
        version,
    } = m.parsed.start
    else {
        return -1;
    };
    if !(100..=699).contains(&new) || reason.is_some_and(<[u8]>::is_empty) {
        return -1;
    }
    let cur = i64::from(cur);
    if (new < 300 || cur < 300) && new / 100 != cur / 100 {
        return -1;
    }
    let line = m
        .buf
        .get(version.end as usize..rs.start as usize)
        .unwrap_or(&[]);
    let Some(at) = line.iter().position(u8::is_ascii_digit) else {
        return -1;
    };
    let at = version.end as usize + at;
    let digits = [
        b'0' + (new / 100) as u8,
        b'0' + (new / 10 % 10) as u8,
        b'0' + (new % 10) as u8,
    ];
    match m.buf.get_mut(at..at + 3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) => d.copy_from_slice(&digits),
        _ => return -1,
    }
    if let StartLine::Response { code, .. } = &mut m.parsed.start {
        *code = new as u16;
    }
    if let Some(r) = reason {
        if !m.edits.splice(rs.start as usize, rs.end as usize, r) {
            return -1;
        }
    }
    1
}

/// `msg_apply_changes`: the edited message becomes the message.
fn apply_changes(m: &mut super::MsgCtx) -> i64 {
    use super::tm::RouteKind;
    let allowed = match m.tm.kind {
        RouteKind::Request => m.tm.cell.is_none(),
        RouteKind::Reply => true,
        _ => false,
    };
    if !allowed {
        return -1;
    }
    if m.edits.is_empty() {
        return 1;
    }
    let mut out = Vec::with_capacity(m.len + 256);
    m.edits.assemble(&m.buf[..m.len], &m.parsed, &mut out);
    let mut p = crate::sip::Parsed::default();
    match crate::sip::parse(
        &out,
        crate::sip::Framing::Datagram,
        &crate::sip::Limits::default(),
        &mut p,
    ) {
        Ok(crate::sip::Status::Complete(_)) => {}
        _ => return -1,
    }
    m.len = out.len();
    m.buf = out;
    m.parsed = p;
    m.edits.clear();
    // the Max-Forwards edit is now in the buffer
    1
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let cache = Rc::new(ReCache::default());
    type S = mlua::String;

    // search(re), search_body(re)
    for (name, body) in [("search", false), ("search_body", true)] {
        let (s, c) = (shared.clone(), cache.clone());
        t.set(
            name,
            lua.create_function(move |_, re: S| {
                let Some(re) = c.get(&re.as_bytes(), true, true) else {
                    return Ok(-1);
                };
                s.with_msg(|m| {
                    let hay = if body {
                        m.parsed.body.get(&m.buf[..m.len])
                    } else {
                        &m.buf[..m.len]
                    };
                    code(!hay.is_empty() && re.is_match(hay))
                })
            })?,
        )?;
    }
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "search_hf",
        lua.create_function(move |_, (hf, re, flags): (S, S, S)| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            let flags = flags.as_bytes();
            s.with_msg(|m| {
                let hits = pick(header_hits(m, &hf.as_bytes()), &flags);
                let buf = &m.buf[..m.len];
                code(
                    hits.iter()
                        .filter_map(|&i| m.parsed.headers.get(i))
                        .any(|h| re.is_match(h.value.get(buf))),
                )
            })
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "search_append",
        lua.create_function(move |_, (re, txt): (S, S)| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            let txt = txt.as_bytes();
            s.with_msg(|m| {
                let hs = headers_start(m);
                let Some(found) = re.find(m.buf.get(hs..m.len).unwrap_or(&[])) else {
                    return -1;
                };
                splice_all(m, hs, &[(found.end(), found.end(), txt.to_vec())])
            })
        })?,
    )?;

    // subst family
    #[derive(Clone, Copy)]
    enum Where {
        Msg,
        Body,
    }
    for (name, place) in [("subst", Where::Msg), ("subst_body", Where::Body)] {
        let (s, c) = (shared.clone(), cache.clone());
        t.set(
            name,
            lua.create_function(move |lua, expr: S| {
                let Some((re, pieces, global)) = prepare(lua, &s, &c, &expr.as_bytes())? else {
                    return Ok(-1);
                };
                s.with_msg(|m| {
                    let base = match place {
                        Where::Msg => headers_start(m),
                        Where::Body => m.parsed.body.start as usize,
                    };
                    let input = m.buf.get(base..m.len).unwrap_or(&[]);
                    if input.is_empty() {
                        return -1;
                    }
                    match run_subst(&re, &pieces, global, input) {
                        Some(subs) if !subs.is_empty() => splice_all(m, base, &subs),
                        _ => -1,
                    }
                })
            })?,
        )?;
    }
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "subst_hf",
        lua.create_function(move |lua, (hf, expr, flags): (S, S, S)| {
            let Some((re, pieces, global)) = prepare(lua, &s, &c, &expr.as_bytes())? else {
                return Ok(-1);
            };
            let flags = flags.as_bytes();
            s.with_msg(|m| {
                let hits = pick(header_hits(m, &hf.as_bytes()), &flags);
                let mut ret = -1;
                for i in hits {
                    let Some(h) = m.parsed.headers.get(i) else {
                        continue;
                    };
                    let (vs, ve) = (h.value.start as usize, h.value.end as usize);
                    let input = m.buf.get(vs..ve).unwrap_or(&[]);
                    match run_subst(&re, &pieces, global, input) {
                        Some(subs) if !subs.is_empty() => {
                            if splice_all(m, vs, &subs) == 1 {
                                ret = 1;
                            }
                        }
                        Some(_) => {}
                        None => return -1,
                    }
                }
                ret
            })
        })?,
    )?;
    for (name, user) in [("subst_uri", false), ("subst_user", true)] {
        let (s, c) = (shared.clone(), cache.clone());
        t.set(
            name,
            lua.create_function(move |lua, expr: S| {
                let Some((re, pieces, global)) = prepare(lua, &s, &c, &expr.as_bytes())? else {
                    return Ok(-1);
                };
                let input = if user {
                    match super::pv::get_val(lua, &s, "$rU")? {
                        super::pv::Val::Str(b) => b,
                        _ => Vec::new(),
                    }
                } else {
                    match s.with_msg(|m| m.ruri().map(<[u8]>::to_vec))? {
                        Some(r) => r,
                        None => return Ok(-1),
                    }
                };
                let Some(subs) = run_subst(&re, &pieces, global, &input) else {
                    return Ok(-1);
                };
                if subs.is_empty() {
                    return Ok(-1);
                }
                let out = rebuild(&input, &subs);
                if user {
                    let ok = super::pv::set(&s, "$rU", Some(super::pv::PvValue::Str(out)))?;
                    Ok(code(ok))
                } else {
                    s.with_msg(|m| {
                        if m.msg().ruri().is_none() {
                            return -1;
                        }
                        m.new_ruri = Some(out);
                        1
                    })
                }
            })?,
        )?;
    }
    for (name, body, all) in [
        ("replace", false, false),
        ("replace_all", false, true),
        ("replace_body", true, false),
        ("replace_body_all", true, true),
    ] {
        let (s, c) = (shared.clone(), cache.clone());
        t.set(
            name,
            lua.create_function(move |_, (re, txt): (S, S)| {
                let Some(re) = c.get(&re.as_bytes(), true, true) else {
                    return Ok(-1);
                };
                let txt = txt.as_bytes();
                s.with_msg(|m| {
                    let base = if body {
                        m.parsed.body.start as usize
                    } else {
                        headers_start(m)
                    };
                    replace_literal(m, &re, base, m.len, &txt, all)
                })
            })?,
        )?;
    }

    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "replace_body_atonce",
        lua.create_function(move |_, (re, txt): (S, S)| {
            // no REG_NEWLINE: the expression sees the body as one text
            let Some(re) = c.get(&re.as_bytes(), true, false) else {
                return Ok(-1);
            };
            let txt = txt.as_bytes();
            s.with_msg(|m| {
                let base = m.parsed.body.start as usize;
                // Kamailio 5.6 leaves the body's last byte out of the match
                // (seen on the wire: `^v=0.+$` keeps the final newline).
                let end = m.len.saturating_sub(1).max(base);
                replace_literal(m, &re, base, end, &txt, true)
            })
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "regex_substring",
        lua.create_function(
            move |_, (text, re, mindex, mcount, dpv): (S, S, i64, i64, S)| {
                // POSIX extended, no flags (Kamailio's regex_substring)
                let Some(re) = c.get(&re.as_bytes(), false, false) else {
                    return Ok(-1);
                };
                if mindex < 0 || mcount <= 0 || mindex >= mcount {
                    return Ok(-1);
                }
                // Kamailio 5.6 matches as if the text did not start a line
                // (`^` never matches): a newline in front, searched from 1,
                // gives the same without multi-line mode.
                let mut text = text.as_bytes().to_vec();
                text.insert(0, b'\n');
                let Some(caps) = re.captures_at(&text, 1) else {
                    return Ok(-2);
                };
                let Some(group) = caps.get(mindex as usize).map(|g| g.as_bytes().to_vec()) else {
                    return Ok(-1);
                };
                let dpv = dpv.to_str()?;
                Ok(
                    match super::pv::set(&s, &dpv, Some(super::pv::PvValue::Str(group))) {
                        Ok(true) => 1,
                        _ => -1,
                    },
                )
            },
        )?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "remove_hf_match",
        lua.create_function(move |_, (hf, op, expr): (S, S, S)| {
            let (op, expr) = (op.as_bytes(), expr.as_bytes());
            let re = match &op[..] {
                b"re" => match c.get(&expr, true, true) {
                    Some(re) => Some(re),
                    None => return Ok(-1),
                },
                b"eq" | b"ne" | b"in" => None,
                _ => return Ok(-1),
            };
            s.with_msg(|m| {
                let buf = &m.buf[..m.len];
                let hits: Vec<usize> = header_hits(m, &hf.as_bytes())
                    .into_iter()
                    .filter(|&i| {
                        let v = m.parsed.headers[i].value.get(buf).trim_ascii();
                        match (&op[..], &re) {
                            (b"eq", _) => v == &expr[..],
                            (b"ne", _) => v != &expr[..],
                            (b"in", _) => {
                                expr.is_empty() || v.windows(expr.len()).any(|w| w == &expr[..])
                            }
                            (_, Some(re)) => re.is_match(v),
                            _ => false,
                        }
                    })
                    .collect();
                for &i in &hits {
                    m.edits.remove_header(i);
                }
                if hits.is_empty() {
                    -2
                } else {
                    1
                }
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "is_audio_on_hold",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                if body_len(m) == 0 || content_type(m) != b"application/sdp" {
                    return -1;
                }
                let body = m
                    .buf
                    .get(m.parsed.body.start as usize..m.parsed.body.end as usize)
                    .unwrap_or(&[]);
                audio_hold(body)
            })
        })?,
    )?;

    // headers
    let s = shared.clone();
    t.set(
        "is_present_hf",
        lua.create_function(move |_, hf: S| {
            s.with_msg(|m| code(!header_hits(m, &hf.as_bytes()).is_empty()))
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "is_present_hf_re",
        lua.create_function(move |_, re: S| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            s.with_msg(|m| {
                let buf = &m.buf[..m.len];
                code(
                    m.parsed
                        .headers
                        .iter()
                        .any(|h| re.is_match(h.name_span.get(buf))),
                )
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "remove_hf",
        lua.create_function(move |_, hf: S| {
            s.with_msg(|m| {
                for i in header_hits(m, &hf.as_bytes()) {
                    m.edits.remove_header(i);
                }
                1
            })
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "remove_hf_re",
        lua.create_function(move |_, re: S| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            s.with_msg(|m| remove_matching(m, &re, None))
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "remove_hf_exp",
        lua.create_function(move |_, (re, skip): (S, S)| {
            let (Some(re), Some(skip)) = (
                c.get(&re.as_bytes(), true, true),
                c.get(&skip.as_bytes(), true, true),
            ) else {
                return Ok(-1);
            };
            s.with_msg(|m| remove_matching(m, &re, Some(&skip)))
        })?,
    )?;

    // body
    let s = shared.clone();
    t.set(
        "has_body",
        lua.create_function(move |_, ()| s.with_msg(|m| code(body_len(m) > 0)))?,
    )?;
    let s = shared.clone();
    t.set(
        "has_body_type",
        lua.create_function(move |_, ctype: S| {
            let want = ctype.as_bytes().to_ascii_lowercase();
            s.with_msg(|m| {
                if want.is_empty() {
                    return code(body_len(m) > 0);
                }
                code(body_len(m) > 0 && content_type(m) == want)
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "set_body",
        lua.create_function(move |_, (body, ctype): (S, S)| {
            let (body, ctype) = (body.as_bytes(), ctype.as_bytes());
            if body.is_empty() || ctype.is_empty() {
                return Ok(-1);
            }
            s.with_msg(|m| {
                let cur = m.msg().header_by_name(b"content-type").map(<[u8]>::to_vec);
                if cur.as_deref() != Some(&ctype[..]) {
                    for i in header_hits(m, b"content-type") {
                        m.edits.remove_header(i);
                    }
                    let mut line = b"Content-Type: ".to_vec();
                    line.extend_from_slice(&ctype);
                    m.edits.append_header(&line);
                }
                m.edits.set_body(&body);
                1
            })
        })?,
    )?;

    let s = shared.clone();
    t.set(
        "set_reply_body",
        lua.create_function(move |_, (body, ctype): (S, S)| {
            let (body, ctype) = (body.as_bytes(), ctype.as_bytes());
            if body.is_empty()
                || ctype.is_empty()
                || ctype.contains(&b'\n')
                || ctype.contains(&b'\r')
            {
                return Ok(-1);
            }
            s.with_msg(|m| {
                if body.len() > MAX_REPLY_BODY
                    || m.reply_headers.len() + ctype.len() > MAX_REPLY_BODY
                {
                    return -1;
                }
                m.reply_headers.extend_from_slice(b"Content-Type: ");
                m.reply_headers.extend_from_slice(&ctype);
                m.reply_headers.extend_from_slice(b"\r\n");
                m.reply_body.clear();
                m.reply_body.extend_from_slice(&body);
                1
            })
        })?,
    )?;

    let s = shared.clone();
    t.set(
        "filter_body",
        lua.create_function(move |_, ctype: S| {
            let want = ctype.as_bytes();
            s.with_msg(|m| {
                let ct = m.msg().header_by_name(b"content-type").map(<[u8]>::to_vec);
                let (bs, be) = (m.parsed.body.start as usize, m.parsed.body.end as usize);
                let body = m.buf.get(bs..be).unwrap_or(&[]);
                match ct.and_then(|ct| filter_part(body, &ct, &want)) {
                    Some((a, b)) => {
                        let ok = m.edits.splice(bs, bs + a, b"") && m.edits.splice(bs + b, be, b"");
                        code(ok)
                    }
                    None => -1,
                }
            })
        })?,
    )?;

    // strings
    let starts: fn(&[u8], &[u8]) -> i64 = |a, b| {
        if a.len() < b.len() {
            return -1;
        }
        cmp_code(a[..b.len()].cmp(b))
    };
    let cmp: fn(&[u8], &[u8]) -> i64 = |a, b| cmp_code(a.cmp(b));
    let icmp: fn(&[u8], &[u8]) -> i64 =
        |a, b| cmp_code(a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()));
    for (name, f) in [
        ("starts_with", starts),
        ("cmp_str", cmp),
        ("cmp_istr", icmp),
    ] {
        t.set(
            name,
            lua.create_function(move |_, (a, b): (S, S)| Ok(f(&a.as_bytes(), &b.as_bytes())))?,
        )?;
    }
    t.set(
        "in_list",
        lua.create_function(|_, (v, list, sep): (S, S, S)| {
            Ok(code(in_list(
                &v.as_bytes(),
                &list.as_bytes(),
                &sep.as_bytes(),
            )))
        })?,
    )?;

    // more of textops: body search_append, string tests, privacy, literal replace
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "search_append_body",
        lua.create_function(move |_, (re, txt): (S, S)| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            let txt = txt.as_bytes();
            s.with_msg(|m| {
                let bs = m.parsed.body.start as usize;
                let body = m.buf.get(bs..m.len).unwrap_or(&[]);
                let Some(found) = re.find(body) else {
                    return -1;
                };
                splice_all(m, bs, &[(found.end(), found.end(), txt.to_vec())])
            })
        })?,
    )?;
    let c = cache.clone();
    t.set(
        "search_str",
        lua.create_function(move |_, (text, re): (S, S)| {
            let (text, re) = (text.as_bytes(), re.as_bytes());
            if re.is_empty() {
                return Ok(2);
            }
            if text.is_empty() {
                return Ok(-2);
            }
            Ok(match c.get(&re, true, true) {
                Some(re) => code(re.is_match(&text)),
                None => -2,
            })
        })?,
    )?;
    t.set(
        "ends_with",
        lua.create_function(|_, (v, suffix): (S, S)| {
            let (v, sfx) = (v.as_bytes(), suffix.as_bytes());
            if sfx.len() > v.len() {
                return Ok(-1);
            }
            Ok(cmp_code(v[v.len() - sfx.len()..].cmp(&sfx[..])))
        })?,
    )?;
    for (name, icase) in [("str_find", false), ("str_ifind", true)] {
        t.set(
            name,
            lua.create_function(move |_, (txt, needle): (S, S)| {
                let (mut txt, mut needle) = (txt.as_bytes().to_vec(), needle.as_bytes().to_vec());
                if icase {
                    txt.make_ascii_lowercase();
                    needle.make_ascii_lowercase();
                }
                if needle.len() > txt.len() {
                    return Ok(-1);
                }
                if needle.is_empty() {
                    return Ok(1);
                }
                Ok(txt
                    .windows(needle.len())
                    .position(|w| w == &needle[..])
                    .map_or(-1, |p| p as i64 + 1))
            })?,
        )?;
    }
    for (name, all) in [("str_any_in", false), ("str_all_in", true)] {
        t.set(
            name,
            lua.create_function(move |_, (txt, chars): (S, S)| {
                let (txt, chars) = (txt.as_bytes(), chars.as_bytes());
                if txt.is_empty() || chars.is_empty() {
                    return Ok(-1);
                }
                Ok(code(if all {
                    chars.iter().all(|c| txt.contains(c))
                } else {
                    txt.iter().any(|c| chars.contains(c))
                }))
            })?,
        )?;
    }
    t.set(
        "in_list_prefix",
        lua.create_function(|_, (v, list, sep): (S, S, S)| {
            Ok(code(in_list_prefix(
                &v.as_bytes(),
                &list.as_bytes(),
                &sep.as_bytes(),
            )))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "is_privacy",
        lua.create_function(move |_, what: S| {
            let what = what.as_bytes().to_ascii_lowercase();
            if !PRIVACY.contains(&&what[..]) {
                return Ok(-1);
            }
            let vals = s.with_msg(|m| super::pv::header_values(m, b"Privacy"))?;
            Ok(code(vals.iter().any(|v| {
                v.split(|c| *c == b';')
                    .any(|p| p.trim_ascii().eq_ignore_ascii_case(&what))
            })))
        })?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "subst_v",
        lua.create_function(move |lua, (text, expr, dst): (S, S, S)| {
            let Some((re, pieces, global)) = prepare(lua, &s, &c, &expr.as_bytes())? else {
                return Ok(-1);
            };
            let text = text.as_bytes();
            let Some(subs) = run_subst(&re, &pieces, global, &text) else {
                return Ok(-1);
            };
            if subs.is_empty() {
                return Ok(-1);
            }
            let out = rebuild(&text, &subs);
            let dst = dst.to_str()?;
            Ok(
                match super::pv::set(&s, &dst, Some(super::pv::PvValue::Str(out))) {
                    Ok(true) => 1,
                    _ => -1,
                },
            )
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "remove_hf_idx",
        lua.create_function(move |_, (hf, idx): (S, i64)| {
            s.with_msg(|m| {
                let hits = header_hits(m, &hf.as_bytes());
                let pos = if idx >= 0 {
                    idx
                } else {
                    hits.len() as i64 + idx
                };
                match usize::try_from(pos).ok().and_then(|p| hits.get(p)) {
                    Some(&i) => {
                        m.edits.remove_header(i);
                        1
                    }
                    None if idx >= 0 => 2,
                    None => 1,
                }
            })
        })?,
    )?;
    for (name, region) in [
        ("replace_str", Region::Msg),
        ("replace_body_str", Region::Body),
        ("replace_hdrs_str", Region::Hdrs),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (key, val, mode): (S, S, S)| {
                let (key, val, mode) = (key.as_bytes(), val.as_bytes(), mode.as_bytes());
                let all = !matches!(mode.first(), None | Some(b'f' | b'F'));
                s.with_msg(|m| {
                    let (a, b) = region.range(m);
                    let hay = m.buf.get(a..b).unwrap_or(&[]);
                    if hay.is_empty() {
                        return if region == Region::Hdrs { -1 } else { 1 };
                    }
                    if key.is_empty() {
                        return 1;
                    }
                    let mut subs = Vec::new();
                    let mut at = 0;
                    while let Some(p) = hay
                        .get(at..)
                        .and_then(|h| h.windows(key.len()).position(|w| w == &key[..]))
                    {
                        subs.push((at + p, at + p + key.len(), val.to_vec()));
                        at += p + key.len();
                        if !all || subs.len() >= MAX_MATCHES {
                            break;
                        }
                    }
                    splice_all(m, a, &subs);
                    1
                })
            })?,
        )?;
    }
    let (s, c) = (shared.clone(), cache.clone());
    t.set(
        "replace_hdrs",
        lua.create_function(move |_, (re, txt): (S, S)| {
            let Some(re) = c.get(&re.as_bytes(), true, true) else {
                return Ok(-1);
            };
            let txt = txt.as_bytes();
            s.with_msg(|m| {
                let (a, b) = Region::Hdrs.range(m);
                let hay = m.buf.get(a..b).unwrap_or(&[]);
                match re.find(hay) {
                    Some(f) if f.start() < f.end() => {
                        splice_all(m, a, &[(f.start(), f.end(), txt.to_vec())])
                    }
                    _ => -1,
                }
            })
        })?,
    )?;
    ksr.set("textops", t)?;

    // textopsx
    let x = lua.create_table()?;
    let s = shared.clone();
    x.set(
        "msg_apply_changes",
        lua.create_function(move |_, ()| s.with_msg(apply_changes))?,
    )?;
    let s = shared.clone();
    x.set(
        "change_reply_status",
        lua.create_function(move |_, (c, reason): (i64, S)| {
            let reason = reason.as_bytes();
            s.with_msg(|m| change_status(m, c, Some(&reason)))
        })?,
    )?;
    let s = shared.clone();
    x.set(
        "change_reply_status_code",
        lua.create_function(move |_, c: i64| s.with_msg(|m| change_status(m, c, None)))?,
    )?;
    let s = shared.clone();
    x.set(
        "remove_body",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                if body_len(m) > 0 {
                    m.edits.set_body(b"");
                }
                1
            })
        })?,
    )?;

    let s = shared.clone();
    x.set(
        "keep_hf",
        lua.create_function(move |_, ()| s.with_msg(|m| keep_hf(m, None)))?,
    )?;
    let (s, c) = (shared.clone(), cache.clone());
    x.set(
        "keep_hf_re",
        lua.create_function(move |_, re: S| {
            let re = re.as_bytes();
            if re.is_empty() {
                return s.with_msg(|m| keep_hf(m, None));
            }
            let Some(re) = c.get(&re, true, true) else {
                return Ok(-1);
            };
            s.with_msg(|m| keep_hf(m, Some(&re)))
        })?,
    )?;
    x.set(
        "fnmatch",
        lua.create_function(|_, (v, pat): (S, S)| {
            Ok(if fnmatch(&pat.as_bytes(), &v.as_bytes(), false) {
                0
            } else {
                -1
            })
        })?,
    )?;
    x.set(
        "fnmatch_ex",
        lua.create_function(|_, (v, pat, flags): (S, S, S)| {
            let icase = matches!(flags.as_bytes().first(), Some(b'i' | b'I'));
            Ok(if fnmatch(&pat.as_bytes(), &v.as_bytes(), icase) {
                0
            } else {
                -1
            })
        })?,
    )?;
    let iters: Rc<RefCell<Vec<HfIter>>> = Rc::default();
    let hf_iter = |name: &'static str, op: IterOp| {
        let (s, iters) = (shared.clone(), iters.clone());
        lua.create_function(move |_, iname: S| {
            let iname = iname.as_bytes().to_vec();
            s.with_msg(|m| iter_step(&mut iters.borrow_mut(), m, &iname, op))
        })
        .map(|f| (name, f))
    };
    for (name, op) in [
        ("hf_iterator_start", IterOp::Start),
        ("hf_iterator_next", IterOp::Next),
        ("hf_iterator_prev", IterOp::Prev),
        ("hf_iterator_end", IterOp::End),
        ("hf_iterator_rm", IterOp::Rm),
    ] {
        let (n, f) = hf_iter(name, op)?;
        x.set(n, f)?;
    }
    for (name, after) in [("hf_iterator_append", true), ("hf_iterator_insert", false)] {
        let (s, iters) = (shared.clone(), iters.clone());
        x.set(
            name,
            lua.create_function(move |_, (iname, text): (S, S)| {
                let (iname, text) = (iname.as_bytes(), text.as_bytes());
                let mut line: &[u8] = &text;
                while let [rest @ .., b'\r' | b'\n'] = line {
                    line = rest;
                }
                s.with_msg(|m| {
                    let Some(i) = iter_cur(&iters.borrow(), m, &iname) else {
                        return -1;
                    };
                    if !line.is_empty() {
                        if after {
                            m.edits.insert_header_after(i, line);
                        } else {
                            m.edits.insert_header_before(i, line);
                        }
                    }
                    1
                })
            })?,
        )?;
    }
    for (name, body) in [("hf_iterator_hname", false), ("hf_iterator_hbody", true)] {
        let (s, iters) = (shared.clone(), iters.clone());
        x.set(
            name,
            lua.create_function(move |lua, iname: S| {
                let iname = iname.as_bytes();
                let v = s.with_msg(|m| {
                    let i = iter_cur(&iters.borrow(), m, &iname)?;
                    let h = m.parsed.headers.get(i)?;
                    let span = if body { h.value } else { h.name_span };
                    Some(span.get(&m.buf[..m.len]).to_vec())
                })?;
                super::lua_opt_str(lua, v.as_deref())
            })?,
        )?;
    }
    ksr.set("textopsx", x)?;
    Ok(())
}

/// Kamailio's keep_hf: removes every header but the ones routing needs
/// (From, To, Call-ID, CSeq, Via, Contact, Content-Length/-Type, Route,
/// Record-Route, Max-Forwards) and, with `re`, the ones whose name matches.
/// Returns -1 as Kamailio 5.6 does.
fn keep_hf(m: &mut super::MsgCtx, re: Option<&Regex>) -> i64 {
    use HdrName::*;
    let buf = &m.buf[..m.len];
    let drop: Vec<usize> = m
        .parsed
        .headers
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            !matches!(
                h.name,
                From | To
                    | CallId
                    | CSeq
                    | Via
                    | Contact
                    | ContentLength
                    | ContentType
                    | Route
                    | RecordRoute
                    | MaxForwards
            ) && !re.is_some_and(|r| r.is_match(h.name_span.get(buf)))
        })
        .map(|(i, _)| i)
        .collect();
    for i in drop {
        m.edits.remove_header(i);
    }
    -1
}

/// fnmatch(3) without flags (or with FNM_CASEFOLD): `*`, `?`, `[...]`
/// (`!`/`^` negation, ranges) and `\` escapes. Iterative; backtracks only
/// to the last `*`, so O(len(p) * len(v)) at worst.
fn fnmatch(p: &[u8], v: &[u8], icase: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if icase {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // one pattern element at p[i]: (matches byte c, length of the element)
    let one = |i: usize, c: u8| -> Option<(bool, usize)> {
        match *p.get(i)? {
            b'?' => Some((true, 1)),
            b'\\' => match p.get(i + 1) {
                Some(&n) => Some((eq(n, c), 2)),
                None => Some((eq(b'\\', c), 1)),
            },
            b'[' => {
                let mut j = i + 1;
                let neg = matches!(p.get(j), Some(b'!' | b'^'));
                if neg {
                    j += 1;
                }
                let mut hit = false;
                let mut first = true;
                loop {
                    let &a = p.get(j)?; // unterminated: '[' is literal (below)
                    if a == b']' && !first {
                        break;
                    }
                    first = false;
                    if p.get(j + 1) == Some(&b'-') && p.get(j + 2).is_some_and(|&b| b != b']') {
                        let b = p[j + 2];
                        let (lo, hi, cc) = if icase {
                            (
                                a.to_ascii_lowercase(),
                                b.to_ascii_lowercase(),
                                c.to_ascii_lowercase(),
                            )
                        } else {
                            (a, b, c)
                        };
                        hit |= lo <= cc && cc <= hi;
                        j += 3;
                    } else {
                        hit |= eq(a, c);
                        j += 1;
                    }
                }
                Some((hit != neg, j + 1 - i))
            }
            other => Some((eq(other, c), 1)),
        }
    };
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if p.get(pi) == Some(&b'*') {
            pi += 1;
            star = Some((pi, vi));
            continue;
        }
        let step = match one(pi, v[vi]) {
            Some(r) => Some(r),
            // an unterminated '[' is a literal
            None if p.get(pi) == Some(&b'[') => Some((eq(b'[', v[vi]), 1)),
            None => None,
        };
        match step {
            Some((true, n)) => {
                pi += n;
                vi += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    pi = sp;
                    vi = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// One named header iterator (Kamailio keeps four, per process).
struct HfIter {
    name: Vec<u8>,
    /// Current header index; None before the first.
    it: Option<usize>,
    eoh: bool,
}

const HF_ITERATORS: usize = 4;

#[derive(Clone, Copy)]
enum IterOp {
    Start,
    Next,
    Prev,
    End,
    Rm,
}

fn iter_cur(iters: &[HfIter], m: &super::MsgCtx, name: &[u8]) -> Option<usize> {
    let it = iters.iter().find(|i| i.name == name)?;
    it.it.filter(|&i| i < m.parsed.headers.len())
}

fn iter_step(iters: &mut Vec<HfIter>, m: &mut super::MsgCtx, name: &[u8], op: IterOp) -> i64 {
    let n = m.parsed.headers.len();
    let pos = iters.iter().position(|i| i.name == name);
    let k = match (op, pos) {
        (_, Some(k)) => k,
        (IterOp::Start, None) => {
            if iters.len() >= HF_ITERATORS || name.is_empty() || name.len() >= 32 {
                return -1;
            }
            iters.push(HfIter {
                name: name.to_vec(),
                it: None,
                eoh: false,
            });
            iters.len() - 1
        }
        _ => return -1,
    };
    let Some(it) = iters.get_mut(k) else {
        return -1;
    };
    match op {
        IterOp::Start | IterOp::End => {
            it.it = None;
            it.eoh = false;
            1
        }
        IterOp::Next => {
            if it.eoh {
                return -1;
            }
            let next = it.it.map_or(0, |i| i + 1);
            if next < n {
                it.it = Some(next);
                1
            } else {
                it.it = None;
                it.eoh = true;
                -1
            }
        }
        IterOp::Prev => {
            if it.eoh {
                return -1;
            }
            it.it = match it.it {
                Some(i) if i > 0 => Some(i - 1),
                _ => None,
            };
            1
        }
        IterOp::Rm => match it.it.filter(|&i| i < n) {
            Some(i) => {
                m.edits.remove_header(i);
                1
            }
            None => -1,
        },
    }
}

/// Removes the headers whose name matches `re` and not `skip`; 1 / -1 none.
/// Replaces the first (or, with `all`, every) match of `re` in
/// `buf[base..end]` by the literal `txt`: 1, or -1 for no match, an empty
/// match or an empty range (Kamailio's `replace*`).
fn replace_literal(
    m: &mut super::MsgCtx,
    re: &Regex,
    base: usize,
    end: usize,
    txt: &[u8],
    all: bool,
) -> i64 {
    let input = m.buf.get(base..end).unwrap_or(&[]);
    if input.is_empty() {
        return -1;
    }
    // the text is literal (no back-references): no size cap
    let mut subs = Vec::new();
    for f in re.find_iter(input) {
        if f.start() == f.end() {
            return -1;
        }
        subs.push((f.start(), f.end(), txt.to_vec()));
        if !all || subs.len() >= MAX_MATCHES {
            break;
        }
    }
    if subs.is_empty() {
        -1
    } else {
        splice_all(m, base, &subs)
    }
}

/// Hold type of the first held audio stream of an SDP body: 1 connection
/// address 0.0.0.0 (RFC 2543), 2 `sendonly`/`inactive` (RFC 3264), -1 none.
/// Media-level `c=` and direction attributes override the session's.
fn audio_hold(sdp: &[u8]) -> i64 {
    fn null_conn(v: &[u8]) -> bool {
        // c=IN IP4 0.0.0.0 (an RFC 2543 hold; the IPv6 null address too)
        let addr = v.split(|c| *c == b' ').nth(2).unwrap_or(&[]);
        let addr = addr.split(|c| *c == b'/').next().unwrap_or(&[]);
        addr == b"0.0.0.0" || addr == b"::"
    }
    fn direction(v: &[u8]) -> Option<bool> {
        match v {
            b"sendonly" | b"inactive" => Some(true),
            b"sendrecv" | b"recvonly" => Some(false),
            _ => None,
        }
    }
    // (null connection, held direction) of the session, then of the stream
    let (mut s_null, mut s_dir) = (false, false);
    let mut stream: Option<(bool, Option<bool>, Option<bool>)> = None; // audio?, null, dir
    let verdict =
        |st: Option<(bool, Option<bool>, Option<bool>)>, s_null: bool, s_dir: bool| match st {
            Some((true, null, _)) if null.unwrap_or(s_null) => 1,
            Some((true, _, dir)) if dir.unwrap_or(s_dir) => 2,
            _ => -1,
        };
    for line in sdp.split(|c| *c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (Some(&kind), Some(b'=')) = (line.first(), line.get(1)) else {
            continue;
        };
        let v = &line[2..];
        match (kind, stream.as_mut()) {
            (b'm', _) => {
                let done = verdict(stream, s_null, s_dir);
                if done > 0 {
                    return done;
                }
                stream = Some((v.starts_with(b"audio "), None, None));
            }
            (b'c', None) => s_null = null_conn(v),
            (b'c', Some(st)) => st.1 = Some(null_conn(v)),
            (b'a', None) => s_dir = direction(v).unwrap_or(s_dir),
            (b'a', Some(st)) => {
                if let Some(d) = direction(v) {
                    st.2 = Some(d);
                }
            }
            _ => {}
        }
    }
    verdict(stream, s_null, s_dir)
}

fn remove_matching(m: &mut super::MsgCtx, re: &Regex, skip: Option<&Regex>) -> i64 {
    let buf = &m.buf[..m.len];
    let hits: Vec<usize> = m
        .parsed
        .headers
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let n = h.name_span.get(buf);
            re.is_match(n) && !skip.is_some_and(|s| s.is_match(n))
        })
        .map(|(i, _)| i)
        .collect();
    for &i in &hits {
        m.edits.remove_header(i);
    }
    code(!hits.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{assembled, engine, request, run};

    fn with_body(body: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-1\r\n\
             From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Runs `code` (Lua expressions joined into the global `r`) on `msg`.
    fn eval(exprs: &str, msg: &[u8]) -> (String, String, Box<crate::kemi::MsgCtx>) {
        let eng = engine(&format!(
            "function ksr_request_route() r = table.concat({{{exprs}}}, '|') end"
        ));
        let (m, _) = run(&eng, msg);
        let r: String = eng.lua().globals().get("r").unwrap();
        (r, assembled(&m), m)
    }

    #[test]
    fn subst_expressions_parse_as_kamailio() {
        let e = parse_subst(br"/^(To:.*)bob(.*)$/\1carol\2\n$fU/ig").unwrap();
        assert_eq!(e.re, b"^(To:.*)bob(.*)$");
        assert!(e.icase && e.global && e.newline);
        assert_eq!(
            e.toks,
            vec![
                Tok::Group(1),
                Tok::Lit(b"carol".to_vec()),
                Tok::Group(2),
                Tok::Lit(b"\n".to_vec()),
                Tok::Pv("$fU".into())
            ]
        );
        let e = parse_subst(br"#a\#b#$(hdr(X))x\u#s").unwrap();
        assert_eq!(e.re, br"a\#b");
        assert!(!e.newline && !e.icase && !e.global);
        assert_eq!(
            e.toks,
            vec![
                Tok::Pv("$(hdr(X))".into()),
                Tok::Lit(b"x".to_vec()),
                Tok::Uri
            ]
        );
        for bad in [&b"/a/b/x"[..], b"/a/b", b"\\a\\b\\", b"/a", b"", b"/a/$(x/"] {
            assert!(
                parse_subst(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn search_family_sees_the_received_message() {
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &["X-A: Hello World"],
        );
        let (r, _, _) = eval(
            r#"KSR.hdr.append("X-New: 1"), KSR.textops.search("x-new"),
               KSR.textops.search("^options sip:a@"), KSR.textops.search("hello world"),
               KSR.textops.search("nowhere"), KSR.textops.search("(unclosed"),
               KSR.textops.search_body("."), KSR.textops.search_hf("X-A", "wor", ""),
               KSR.textops.search_hf("X-A", "^world", "f"), KSR.textops.search_hf("X-B", ".", "l"),
               KSR.textops.is_present_hf("x-a"), KSR.textops.is_present_hf("X-New"),
               KSR.textops.is_present_hf_re("^x-"), KSR.textops.is_present_hf_re("^zz"),
               KSR.textops.search_hf("v", "192", "")"#,
            &msg,
        );
        assert_eq!(r, "1|-1|1|1|-1|-1|-1|1|-1|-1|1|-1|1|-1|1");
    }

    #[test]
    fn subst_rewrites_on_the_wire() {
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &["X-A: one two", "X-B: one"],
        );
        let (r, out, _) = eval(
            r#"KSR.textops.subst([[/^X-A: ([a-z]+) ([a-z]+)/X-A: \2 \1 $fU/]]),
               KSR.textops.subst("/^X-B: ONE\r$/X-B: uno\r/i"), KSR.textops.subst("/^X-B: ONE/x/"),
               KSR.textops.subst("/nomatch/x/"), KSR.textops.subst("/x*/y/"),
               KSR.textops.subst("/bad/flags/q"), KSR.textops.subst("/sip:a@/sip:z@/")"#,
            &msg,
        );
        assert_eq!(r, "1|1|-1|-1|-1|-1|-1");
        assert!(out.contains("\r\nX-A: two one alice\r\n"), "{out}");
        assert!(out.contains("\r\nX-B: uno\r\n"), "{out}");
        // subst starts after the start line
        assert!(
            out.starts_with("OPTIONS sip:a@example.com SIP/2.0\r\n"),
            "{out}"
        );
        let (r, out, _) = eval(
            r#"KSR.textops.subst_hf("From", "/alice/ALICE/", "a"),
               KSR.textops.subst_hf("To", "/zz/y/", "f"), KSR.textops.replace_all("one", "1"),
               KSR.textops.replace("example\\.com", "ex.org"), KSR.textops.replace("zzz", "y")"#,
            &msg,
        );
        assert_eq!(r, "1|-1|1|1|-1");
        assert!(out.contains("From: <sip:ALICE@ex.org>;tag="), "{out}");
        assert!(out.contains("X-A: 1 two\r\nX-B: 1\r\n"), "{out}");
        assert!(out.contains("To: <sip:bob@example.com>"), "{out}");
    }

    #[test]
    fn body_edits_keep_content_length_true() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 0\r\n";
        let (r, out, _) = eval(
            r#"KSR.textops.has_body(), KSR.textops.has_body_type("application/sdp"),
               KSR.textops.has_body_type("text/plain"), KSR.textops.search_body("^c=IN"),
               KSR.textops.subst_body("/^c=IN IP4 (.*)$/c=IN IP4 203.0.113.77\r/"),
               KSR.textops.replace_body_all("audio", "AUDIO")"#,
            &with_body(sdp),
        );
        assert_eq!(r, "1|1|-1|1|1|1");
        let want = "v=0\r\nc=IN IP4 203.0.113.77\r\nm=AUDIO 4000 RTP/AVP 0\r\n";
        assert!(out.ends_with(&format!("\r\n\r\n{want}")), "{out}");
        assert!(
            out.contains(&format!("Content-Length: {}\r\n", want.len())),
            "{out}"
        );
        // no body: -1 everywhere
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let (r, _, _) = eval(
            r#"KSR.textops.has_body(), KSR.textops.subst_body("/a/b/"),
               KSR.textops.replace_body("a", "b"), KSR.textopsx.remove_body()"#,
            &msg,
        );
        assert_eq!(r, "-1|-1|-1|1");
        let (r, out, _) = eval(
            r#"KSR.textopsx.remove_body(), KSR.textops.set_body("", "text/plain")"#,
            &with_body(sdp),
        );
        assert_eq!(r, "1|-1");
        assert!(
            out.contains("Content-Length: 0\r\n") && out.ends_with("\r\n\r\n"),
            "{out}"
        );
        let (r, out, _) = eval(
            r#"KSR.textops.set_body("hi", "text/plain")"#,
            &with_body(sdp),
        );
        assert_eq!(r, "1");
        assert!(out.contains("Content-Type: text/plain\r\n"), "{out}");
        assert!(!out.contains("application/sdp"), "{out}");
        assert!(
            out.ends_with("Content-Length: 2\r\n\r\nhi") || out.ends_with("\r\n\r\nhi"),
            "{out}"
        );
    }

    #[test]
    fn uri_and_user_and_search_append() {
        let msg = request(
            "INVITE sip:0044123@example.com;user=phone SIP/2.0",
            None,
            &[],
        );
        let (r, out, m) = eval(
            r#"KSR.textops.subst_user("/^00/+/"), KSR.textops.subst_uri("/;user=phone$//"),
               KSR.textops.subst_uri("/nomatch/x/"), KSR.textops.subst_user("/zz/x/"),
               KSR.textops.search_append("^CSeq: [0-9]+ INVITE", " ;x"),
               KSR.textops.search_append("nomatch", "x")"#,
            &msg,
        );
        assert_eq!(r, "1|1|-1|-1|1|-1");
        assert_eq!(m.ruri(), Some(&b"sip:+44123@example.com"[..]));
        assert!(out.contains("CSeq: 2 INVITE ;x\r\n"), "{out}");
    }

    #[test]
    fn remove_family_and_apply_changes() {
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &["X-A: 1", "X-B: 2", "P-Keep: 3"],
        );
        let (r, out, _) = eval(
            r#"KSR.textops.remove_hf("X-Nope"), KSR.textops.remove_hf_re("^zz"),
               KSR.textops.remove_hf_exp("^[xp]-", "^p-keep$"), KSR.textops.remove_hf_exp("^zz", "a")"#,
            &msg,
        );
        assert_eq!(r, "1|-1|1|-1");
        assert!(
            !out.contains("X-A") && !out.contains("X-B") && out.contains("P-Keep: 3"),
            "{out}"
        );
        let (r, out, m) = eval(
            r#"KSR.hdr.append("X-New: 1"), KSR.textops.is_present_hf("X-New"),
               KSR.textopsx.msg_apply_changes(), KSR.textops.is_present_hf("X-New"),
               KSR.textops.search("X-New: 1"), KSR.textops.subst("/X-New: 1/X-New: 2/"),
               KSR.textopsx.msg_apply_changes(), KSR.textops.search("X-New: 2")"#,
            &msg,
        );
        assert_eq!(r, "1|-1|1|1|1|1|1|1");
        assert!(
            out.contains("X-New: 2\r\n") && !out.contains("X-New: 1"),
            "{out}"
        );
        assert!(m.edits.is_empty());
    }

    #[test]
    fn change_reply_status_rewrites_the_status_line() {
        let reply = b"SIP/2.0 603 Decline\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-1\r\n\
            From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let load = || {
            let mut m = Box::new(crate::kemi::MsgCtx::new(65535, 64));
            m.load(
                reply,
                "192.0.2.9:5060".parse().unwrap(),
                "10.0.0.1:5060".parse().unwrap(),
            );
            m.parse(&crate::sip::Limits::default()).unwrap();
            m
        };
        let mut m = load();
        assert_eq!(change_status(&mut m, 404, Some(b"Not Here")), 1);
        let out = assembled(&m);
        assert!(out.starts_with("SIP/2.0 404 Not Here\r\nVia:"), "{out}");
        assert!(matches!(
            m.parsed.start,
            StartLine::Response { code: 404, .. }
        ));
        let mut m = load();
        assert_eq!(change_status(&mut m, 480, None), 1);
        assert!(assembled(&m).starts_with("SIP/2.0 480 Decline\r\n"));
        let mut m = load();
        for (c, r) in [(200, &b"OK"[..]), (99, b"x"), (700, b"x"), (404, b"")] {
            assert_eq!(change_status(&mut m, c, Some(r)), -1, "{c}");
        }
        // a request is not a reply
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let (r, _, _) = eval(r#"KSR.textopsx.change_reply_status(404, "x")"#, &msg);
        assert_eq!(r, "-1");
    }

    #[test]
    fn string_helpers() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let (r, _, _) = eval(
            r#"KSR.textops.cmp_str("abc", "abc"), KSR.textops.cmp_str("abd", "abc"),
               KSR.textops.cmp_str("ab", "abc"), KSR.textops.cmp_istr("ABC", "abc"),
               KSR.textops.starts_with("abcdef", "abc"), KSR.textops.starts_with("ab", "abc"),
               KSR.textops.starts_with("abc", "abd"), KSR.textops.in_list("b", " a, b ,c", ","),
               KSR.textops.in_list("d", "a,b,c", ","), KSR.textops.in_list("", "a", ",")"#,
            &msg,
        );
        assert_eq!(r, "1|-1|-2|1|1|-1|-2|1|-1|-1");
    }

    #[test]
    fn more_textops() {
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &[
                "X-A: 1",
                "X-A: 2",
                "X-A: 3",
                "Privacy: id; header",
                "X-L: foo foo",
            ],
        );
        let (r, out, _) = eval(
            r#"KSR.textops.search_str("Hello", "^h"), KSR.textops.search_str("Hello", "x"),
               KSR.textops.search_str("Hello", ""), KSR.textops.search_str("", "x"),
               KSR.textops.ends_with("abc", "bc"), KSR.textops.ends_with("c", "bc"),
               KSR.textops.str_find("abcabc", "ca"), KSR.textops.str_ifind("ABC", "b"),
               KSR.textops.str_find("abc", "x"), KSR.textops.str_any_in("abc", "xc"),
               KSR.textops.str_all_in("abc", "ax"), KSR.textops.in_list_prefix("12345", "9, 123", ","),
               KSR.textops.in_list_prefix("12", "123", ","), KSR.textops.is_privacy("header"),
               KSR.textops.is_privacy("user"), KSR.textops.is_privacy("bogus"),
               KSR.textops.subst_v("abc", "/b/X/", "$var(v)"), KSR.pv.get("$var(v)"),
               KSR.textops.subst_v("abc", "/z/X/", "$var(v)"),
               KSR.textops.remove_hf_idx("X-A", 1), KSR.textops.remove_hf_idx("X-A", -1),
               KSR.textops.remove_hf_idx("X-A", 7), KSR.textops.remove_hf_idx("X-A", -9),
               KSR.textops.replace_str("foo", "bar", "a"), KSR.textops.replace_str("nope", "x", "f"),
               KSR.textops.replace_hdrs("^Privacy: id", "Privacy: none"), KSR.textops.replace_hdrs("zzz", "y")"#,
            &msg,
        );
        assert_eq!(
            r,
            "1|-1|2|-2|1|-1|3|2|-1|1|-1|1|-1|1|-1|-1|1|aXc|-1|1|1|2|1|1|1|1|-1"
        );
        assert!(
            out.contains("X-A: 1\r\nPrivacy: none; header\r\nX-L: bar bar\r\n"),
            "{out}"
        );
        let (r, out, _) = eval(
            r#"KSR.textops.search_append_body("^m=audio", " x"), KSR.textops.search_append_body("zz", "y"),
               KSR.textops.replace_body_str("IN IP4", "IN  IP4", "f")"#,
            &with_body("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n"),
        );
        assert_eq!(r, "1|-1|1");
        let want = "v=0\r\nc=IN  IP4 1.2.3.4\r\nm=audio x 1 RTP/AVP 0\r\n";
        assert!(out.ends_with(want), "{out}");
        assert!(
            out.contains(&format!("Content-Length: {}\r\n", want.len())),
            "{out}"
        );
    }

    #[test]
    fn textopsx_iterators_keep_hf_fnmatch() {
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &["X-A: 1", "User-Agent: u"],
        );
        let (r, out, _) = eval(
            r#"KSR.textopsx.fnmatch("abc.txt", "*.txt"), KSR.textopsx.fnmatch("abc", "a?d"),
               KSR.textopsx.fnmatch("b", "[a-c]"), KSR.textopsx.fnmatch("d", "[!a-c]"),
               KSR.textopsx.fnmatch("ABC", "abc"), KSR.textopsx.fnmatch_ex("ABC", "a*", "i"),
               KSR.textopsx.fnmatch("a*", "a\\*"), KSR.textopsx.fnmatch("[x", "[x"),
               KSR.textopsx.hf_iterator_next("nope"), KSR.textopsx.hf_iterator_start("i1"),
               (function()
                  local names = {}
                  while KSR.textopsx.hf_iterator_next("i1") > 0 do
                    local n = KSR.textopsx.hf_iterator_hname("i1")
                    names[#names + 1] = n
                    if n == "X-A" then KSR.textopsx.hf_iterator_rm("i1") end
                    if n == "CSeq" then
                      KSR.textopsx.hf_iterator_append("i1", "X-After: " .. KSR.textopsx.hf_iterator_hbody("i1") .. "\r\n")
                      KSR.textopsx.hf_iterator_insert("i1", "X-Before: 1")
                    end
                  end
                  return table.concat(names, ",")
                end)(),
               KSR.textopsx.hf_iterator_next("i1"), tostring(KSR.textopsx.hf_iterator_hname("i1")),
               KSR.textopsx.hf_iterator_end("i1"), KSR.textopsx.hf_iterator_prev("i1")"#,
            &msg,
        );
        assert_eq!(
            r,
            "0|-1|0|0|-1|0|0|0|-1|1|Via,From,To,Call-ID,CSeq,X-A,User-Agent,Content-Length|-1|nil|1|1"
        );
        assert!(
            out.contains("X-Before: 1\r\nCSeq: 2 OPTIONS\r\nX-After: 2 OPTIONS\r\nUser-Agent"),
            "{out}"
        );
        let (r, out, _) = eval(r#"KSR.textopsx.keep_hf_re("^user-")"#, &msg);
        assert_eq!(r, "-1");
        assert!(
            !out.contains("X-A") && out.contains("User-Agent: u\r\n"),
            "{out}"
        );
        assert!(out.contains("Call-ID:") && out.contains("Via:"), "{out}");
        // a pathological pattern stays bounded
        let v = vec![b'a'; 5000];
        let p = b"*a*a*a*a*a*a*a*a*b";
        let t = std::time::Instant::now();
        assert!(!fnmatch(p, &v, false));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn set_reply_body_goes_into_the_local_reply() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let eng = engine(
            r#"function ksr_request_route()
                 r = table.concat({KSR.textops.set_reply_body("", "text/plain"),
                   KSR.textops.set_reply_body("pong", "text/plain"), KSR.sl.sl_send_reply(200, "OK")}, "|")
               end"#,
        );
        let (m, _) = run(&eng, &msg);
        let r: String = eng.lua().globals().get("r").unwrap();
        assert_eq!(r, "-1|1|1");
        let o = m.out.first().expect("a reply");
        let out =
            String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]).into_owned();
        assert!(out.starts_with("SIP/2.0 200 OK\r\n"), "{out}");
        assert!(out.contains("\r\nContent-Type: text/plain\r\n"), "{out}");
        assert!(out.ends_with("Content-Length: 4\r\n\r\npong"), "{out}");
    }

    #[test]
    fn filter_body_keeps_one_part() {
        let body = "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 1.2.3.4\r\n\r\n--b1--\r\n";
        let msg = format!(
            "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-1\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:b@x>\r\nCall-ID: fb\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed;boundary=\"b1\"\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (r, out, _) = eval(
            r#"KSR.textops.filter_body("application/sdp"), KSR.textops.filter_body("image/png")"#,
            msg.as_bytes(),
        );
        assert_eq!(r, "1|-1");
        let want = "v=0\r\nc=IN IP4 1.2.3.4\r\n";
        assert!(
            out.ends_with(&format!("Content-Length: {}\r\n\r\n{want}", want.len())),
            "{out}"
        );
        let (r, _, _) = eval(
            r#"KSR.textops.filter_body("application/sdp")"#,
            &with_body("v=0\r\n"),
        );
        assert_eq!(r, "-1");
        assert_eq!(
            filter_part(
                body.as_bytes(),
                b"multipart/mixed;boundary=b1",
                b"text/plain"
            ),
            Some((34, 39))
        );
    }

    #[test]
    fn hostile_expressions_are_bounded() {
        let cache = ReCache::default();
        // over the compiled-size limit: refused, not built
        assert!(cache.get(b"(a{1000}){1000}", true, true).is_none());
        // a classic backtracking bomb is linear here
        let re = cache.get(b"^(a+)+$", false, true).unwrap();
        let hay = vec![b'a'; 60_000];
        let mut bad = hay.clone();
        bad.push(b'!');
        let t = std::time::Instant::now();
        assert!(re.is_match(&hay) && !re.is_match(&bad));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // replace_all on every byte stops at MAX_MATCHES splices
        let pieces = [Piece::Bytes(b"bb".to_vec())];
        let re = cache.get(b"a", false, true).unwrap();
        let subs = run_subst(&re, &pieces, true, &hay).unwrap();
        assert_eq!(subs.len(), MAX_MATCHES);
        // oversized replacement: Kamailio's error
        let big = [Piece::Group(0), Piece::Group(0)];
        let re = cache.get(b"a+", false, true).unwrap();
        assert!(run_subst(&re, &big, false, &hay).is_none());
    }
}
