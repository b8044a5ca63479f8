//! HTTP/1.1 request framing (`sipshard::http`): `parse_head`, the pipelining
//! `Framer`, `classify`, `parse_response_head` on raw input. Must never
//! panic; the framer must hand out the same requests whether the input
//! arrives at once or split at two points chosen by its first bytes, and
//! each request must be exactly its head plus its Content-Length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::http::{classify, parse_head, parse_response_head, Framer, Limits, Request};

fn drain(f: &mut Framer, out: &mut Vec<Request>) -> bool {
    loop {
        match f.poll_request() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        head_bytes_max: 2048,
        headers_max: 16,
        body_bytes_max: 4096,
    };
    let _ = classify(data);
    let _ = parse_response_head(data, &limits);
    if let Ok(Some(h)) = parse_head(data, &limits) {
        assert!(h.head_len <= data.len());
        assert!(h.head_len <= limits.head_bytes_max);
        assert!(h.content_length <= limits.body_bytes_max);
        assert!(h.version_minor <= 1);
    }
    let (cut1, cut2, input) = match data {
        [a, b, rest @ ..] => {
            let n = rest.len().max(1);
            let c1 = *a as usize % n;
            let c2 = (c1 + *b as usize % n).min(rest.len());
            (c1.min(rest.len()), c2, rest)
        }
        _ => (0, 0, data),
    };
    let mut whole = Framer::new(limits);
    whole.handle_bytes(input);
    let mut a = Vec::new();
    let ok_a = drain(&mut whole, &mut a);
    let mut split = Framer::new(limits);
    let mut b = Vec::new();
    let mut ok_b = true;
    for part in [&input[..cut1], &input[cut1..cut2], &input[cut2..]] {
        split.handle_bytes(part);
        if !drain(&mut split, &mut b) {
            ok_b = false;
            break;
        }
    }
    // Split input may fail earlier (a partial head over the limit is seen
    // sooner), never later: every request handed out whole must match.
    let n = a.len().min(b.len());
    assert_eq!(a[..n], b[..n]);
    if ok_a && ok_b {
        assert_eq!(a.len(), b.len());
    }
    let mut pos = 0;
    for r in &a {
        assert_eq!(r.bytes.len(), r.head.total_len());
        assert_eq!(&input[pos..pos + r.bytes.len()], &r.bytes[..]);
        assert_eq!(r.body().len(), r.head.content_length);
        pos += r.bytes.len();
    }
});
