//! Byte classes and small allocation-free lexing helpers shared by the framing
//! parser, the typed header views and the writers.
//!
//! Every helper takes indices that may be out of range and degrades to "no
//! match" instead of panicking: all accesses go through `get`.

/// Builds a `[bool; 256]` class table at compile time.
macro_rules! byte_table {
    (|$c:ident| $pred:expr) => {{
        let mut t = [false; 256];
        let mut i = 0usize;
        while i < 256 {
            let $c = i as u8;
            t[i] = $pred;
            i += 1;
        }
        t
    }};
}

/// RFC 3261 `token` characters (header names, methods, transports, params).
pub(crate) static TOKEN: [bool; 256] = byte_table!(|c| c.is_ascii_alphanumeric()
    || matches!(
        c,
        b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
    ));

/// Header field value bytes on one line: HT, SP, visible ASCII, DEL and
/// UTF-8 (anything >= 0x80). CR, LF and the other C0 controls stop the scan.
/// (DEL is outside RFC 3261 TEXT-UTF8 but harmless; tolerating it keeps the
/// eight-bytes-at-a-time scan to one test.)
pub(crate) static VALUE: [bool; 256] = byte_table!(|c| c == b'\t' || c >= 0x20);

/// Request-URI bytes in the start line: visible ASCII only.
pub(crate) static URI_CHAR: [bool; 256] = byte_table!(|c| c > 0x20 && c < 0x7f);

/// Hostname / IPv4 characters (`_` tolerated, as deployed stacks send it).
pub(crate) static HOST: [bool; 256] =
    byte_table!(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));

/// Characters inside an IPv6 reference `[...]`.
pub(crate) static IPV6: [bool; 256] =
    byte_table!(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));

/// URI userinfo characters (user and password), lenient: visible ASCII except
/// the delimiters that can never appear unescaped there.
pub(crate) static USERINFO: [bool; 256] =
    byte_table!(|c| c > 0x20 && c < 0x7f && !matches!(c, b'@' | b'<' | b'>' | b'"' | b':'));

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// First index `>= i` holding any byte of `set` (or `b.len()`), eight bytes
/// at a time. `haszero(x) = (x - 0x01..) & !x & 0x80..` can only report false
/// positives *above* a true zero byte, so its lowest flagged byte is exact.
#[inline]
pub(crate) fn find_any<const N: usize>(b: &[u8], mut i: usize, set: [u8; N]) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let w = u64::from_le_bytes(a);
        let mut hit = 0;
        for n in set {
            let x = w ^ (LO * u64::from(n));
            hit |= x.wrapping_sub(LO) & !x & HI;
        }
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if set.contains(&c) {
            return i;
        }
        i += 1;
    }
    i.max(b.len())
}

/// Bytes as text: borrowed when they are UTF-8, with U+FFFD for bad
/// sequences otherwise. `str::from_utf8` checks ASCII a word at a time
/// where `String::from_utf8_lossy` walks it byte by byte, so valid input
/// (nearly all of it) takes that path first.
pub(crate) fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Linear white space as the typed parsers see it: folded continuation
/// lines stay inside value spans, so CR and LF count as white space too.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub(crate) fn trim_lws(b: &[u8]) -> &[u8] {
    let (s, e) = trim_range(b, 0, b.len());
    b.get(s..e).unwrap_or(&[])
}

/// Trims LWS from `b[s..e]`, returning the new bounds.
#[inline]
pub(crate) fn trim_range(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    e = e.min(b.len());
    while s < e && b.get(s).is_some_and(|&c| is_lws(c)) {
        s += 1;
    }
    while e > s && b.get(e - 1).is_some_and(|&c| is_lws(c)) {
        e -= 1;
    }
    (s, e.max(s))
}

/// First index `>= i` that is not LWS (or `b.len()`).
#[inline]
pub(crate) fn skip_lws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if !is_lws(c) {
            return i;
        }
        i += 1;
    }
    i
}

/// First index `>= i` whose byte is not in `table` (or `b.len()`).
#[inline]
pub(crate) fn scan_class(b: &[u8], mut i: usize, table: &[bool; 256]) -> usize {
    while let Some(&c) = b.get(i) {
        if !table[c as usize] {
            return i;
        }
        i += 1;
    }
    i
}

/// Position of the first `needle` in `b`.
#[inline]
pub(crate) fn find(b: &[u8], needle: u8) -> Option<usize> {
    let i = find_any(b, 0, [needle]);
    (i < b.len()).then_some(i)
}

/// Strict decimal: one or more ASCII digits, value must fit `u32`.
pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
        if v > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(v as u32)
}

/// Decimal digits, saturating at `u32::MAX` (delta-seconds semantics,
/// RFC 3261 §20.19: larger values are treated as 2**32-1).
pub(crate) fn parse_u32_saturating(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = (v * 10 + u64::from(c - b'0')).min(u64::from(u32::MAX));
    }
    Some(v as u32)
}

/// A port: 1 to 5 digits, at most 65535.
pub(crate) fn parse_port(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 5 {
        return None;
    }
    parse_u32(b).and_then(|v| u16::try_from(v).ok())
}

/// Appends the decimal form of `n` without allocating a temporary string.
pub(crate) fn push_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(tmp.get(i..).unwrap_or(&[]));
}

/// Index just past a quoted string that starts at `b[i] == '"'`, honouring
/// backslash escapes; `None` if unterminated.
pub(crate) fn skip_quoted(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while let Some(&c) = b.get(j) {
        match c {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Splits a header value at commas that are outside quoted strings and
/// `<...>`, yielding trimmed `(start, end)` ranges relative to the value.
/// Empty elements (`a,,b`, trailing comma) are skipped, but an entirely empty
/// value yields one empty range so typed parsers can report it.
#[derive(Clone, Debug)]
pub(crate) struct SplitRanges<'a> {
    s: &'a [u8],
    pos: usize,
    yielded: bool,
}

impl<'a> SplitRanges<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        SplitRanges {
            s,
            pos: 0,
            yielded: false,
        }
    }
}

impl Iterator for SplitRanges<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let s = self.s;
        while self.pos <= s.len() {
            let start = self.pos;
            let mut i = start;
            let mut angle = false;
            let end = loop {
                i = find_any(s, i, [b'"', b'<', b'>', b',']);
                match s.get(i) {
                    None => break s.len(),
                    Some(b'"') => match skip_quoted(s, i) {
                        Some(j) => i = j,
                        None => break s.len(),
                    },
                    Some(b'<') => {
                        angle = true;
                        i += 1;
                    }
                    Some(b'>') => {
                        angle = false;
                        i += 1;
                    }
                    Some(b',') if !angle => break i,
                    Some(_) => i += 1,
                }
            };
            self.pos = end + 1;
            let (a, b) = trim_range(s, start, end);
            if a < b {
                self.yielded = true;
                return Some((a, b));
            }
        }
        if !self.yielded {
            self.yielded = true;
            return Some((0, 0));
        }
        None
    }
}

/// One `;name[=value]` parameter, as offsets into the scanned slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParamRange {
    /// Offset of the `;` (or of the name when there is no leading `;`).
    pub start: usize,
    /// End of the parameter (before the next `;`, trailing LWS trimmed).
    pub end: usize,
    pub name: (usize, usize),
    pub value: Option<(usize, usize)>,
}

/// Scans a `;a=b;c` parameter list; quoted values may contain `;`.
#[derive(Clone, Debug)]
pub(crate) struct ParamRanges<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> ParamRanges<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        ParamRanges { s, pos: 0 }
    }
}

impl Iterator for ParamRanges<'_> {
    type Item = ParamRange;

    fn next(&mut self) -> Option<ParamRange> {
        let s = self.s;
        loop {
            let mut i = skip_lws(s, self.pos);
            if i >= s.len() {
                self.pos = s.len();
                return None;
            }
            let start = i;
            if s.get(i) == Some(&b';') {
                i += 1;
            }
            let seg_start = i;
            let mut eq = None;
            let seg_end = loop {
                i = find_any(s, i, [b'"', b';', b'=']);
                match s.get(i) {
                    None => break s.len(),
                    Some(b';') => break i,
                    Some(b'"') => match skip_quoted(s, i) {
                        Some(j) => i = j,
                        None => break s.len(),
                    },
                    Some(b'=') => {
                        if eq.is_none() {
                            eq = Some(i);
                        }
                        i += 1;
                    }
                    Some(_) => i += 1,
                }
            };
            self.pos = seg_end;
            let (name, value) = match eq {
                Some(q) => (
                    trim_range(s, seg_start, q),
                    Some(trim_range(s, q + 1, seg_end)),
                ),
                None => (trim_range(s, seg_start, seg_end), None),
            };
            if name.0 == name.1 {
                continue;
            }
            let end = trim_range(s, start, seg_end).1;
            return Some(ParamRange {
                start,
                end,
                name,
                value,
            });
        }
    }
}

/// Slice helper that never panics.
#[inline]
pub(crate) fn sub(b: &[u8], r: (usize, usize)) -> &[u8] {
    b.get(r.0..r.1).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_borrows_utf8_and_replaces_bad_bytes() {
        assert!(matches!(
            text(b"alice@example.com"),
            std::borrow::Cow::Borrowed("alice@example.com")
        ));
        assert!(matches!(
            text("jürgen".as_bytes()),
            std::borrow::Cow::Borrowed("jürgen")
        ));
        assert_eq!(text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(text(b""), "");
    }

    fn split(s: &str) -> Vec<&str> {
        SplitRanges::new(s.as_bytes())
            .map(|r| std::str::from_utf8(sub(s.as_bytes(), r)).unwrap())
            .collect()
    }

    #[test]
    fn split_respects_quotes_and_angles() {
        assert_eq!(split("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(
            split("\"x, y\" <sip:a,b@h>;q=1, <sip:c@d>"),
            ["\"x, y\" <sip:a,b@h>;q=1", "<sip:c@d>"]
        );
        assert_eq!(split("a,,b,"), ["a", "b"]);
        assert_eq!(split(""), [""]);
        assert_eq!(split("  "), [""]);
        assert_eq!(split("\"unterminated, x"), ["\"unterminated, x"]);
        assert_eq!(split("\"esc\\\" ,\" , b"), ["\"esc\\\" ,\"", "b"]);
    }

    #[test]
    fn params_scan() {
        let s = b";branch=z9hG4bK1 ; rport;received = 1.2.3.4;x=\"a;b\";;";
        let v: Vec<_> = ParamRanges::new(s)
            .map(|p| (sub(s, p.name).to_vec(), p.value.map(|v| sub(s, v).to_vec())))
            .collect();
        assert_eq!(
            v,
            vec![
                (b"branch".to_vec(), Some(b"z9hG4bK1".to_vec())),
                (b"rport".to_vec(), None),
                (b"received".to_vec(), Some(b"1.2.3.4".to_vec())),
                (b"x".to_vec(), Some(b"\"a;b\"".to_vec())),
            ]
        );
    }

    #[test]
    fn find_any_is_exact() {
        let mut rng = 0x1234_5678_u64;
        for len in 0..40 {
            for _ in 0..200 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        [b'a', b',', b';', 0, 1, 0xff, 0x80, b'<'][(rng % 8) as usize]
                    })
                    .collect();
                for start in 0..=len {
                    let want = v[start..]
                        .iter()
                        .position(|c| [b',', b'<', 0].contains(c))
                        .map_or(len, |p| p + start);
                    assert_eq!(
                        find_any(&v, start, [b',', b'<', 0]),
                        want,
                        "{v:?} from {start}"
                    );
                }
                assert_eq!(find(&v, b';'), v.iter().position(|&c| c == b';'));
            }
        }
        assert_eq!(find_any(b"abc", 7, [b'a']), 7);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"000000000000012"), Some(12));
        assert_eq!(parse_u32(b"99999999999999"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"1a"), None);
        assert_eq!(parse_u32_saturating(b"99999999999999"), Some(u32::MAX));
        assert_eq!(parse_port(b"65535"), Some(65535));
        assert_eq!(parse_port(b"65536"), None);
        let mut o = Vec::new();
        for n in [0u32, 7, 10, 65535, u32::MAX] {
            o.clear();
            push_u32(&mut o, n);
            assert_eq!(o, n.to_string().as_bytes());
        }
    }
}
