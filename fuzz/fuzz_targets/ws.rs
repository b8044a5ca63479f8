//! WebSocket frames (`sipshard::http::ws`). Two halves, chosen by the first
//! byte: raw bytes into `Conn::handle_bytes` (split at a point the input
//! picks), and a plan of client frames (opcode, fin, payload) encoded with
//! `encode_client_frame` and decoded back. Must never panic; after a close
//! or a failure nothing more is delivered; every delivered text message is
//! UTF-8 and within the limits; what the server writes parses as unmasked
//! frames; well-formed plans deliver exactly their messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::http::ws::{encode_client_frame, Conn, Event, Opcode, WsLimits};

const LIMITS: WsLimits = WsLimits {
    frame_bytes_max: 1024,
    message_bytes_max: 2048,
    fragments_max: 8,
};

fn check_server_frames(mut b: &[u8]) {
    while !b.is_empty() {
        assert!(b.len() >= 2);
        assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert!(b.len() >= at + len);
        b = &b[at + len..];
    }
}

fn events(c: &mut Conn) -> Vec<Event> {
    let ev: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    let mut ended = false;
    for e in &ev {
        assert!(!ended, "an event after the end: {ev:?}");
        match e {
            Event::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok());
                assert!(t.len() <= LIMITS.message_bytes_max);
            }
            Event::Binary(b) => assert!(b.len() <= LIMITS.message_bytes_max),
            Event::Closed { .. } | Event::Failed { .. } => ended = true,
        }
    }
    check_server_frames(&c.poll_transmit());
    ev
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let cut = if rest.is_empty() { 0 } else { mode as usize % rest.len() };
        let mut c = Conn::new(LIMITS);
        c.handle_bytes(&rest[..cut]);
        let mut ev = events(&mut c);
        c.handle_bytes(&rest[cut..]);
        ev.extend(events(&mut c));
        let mut whole = Conn::new(LIMITS);
        whole.handle_bytes(rest);
        assert_eq!(events(&mut whole), ev, "the split does not matter");
        return;
    }
    // a plan: [op, len, payload...]*; fin on every frame but continuations
    // opened by a non-fin first frame as the plan says
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mut open: Option<(Opcode, Vec<u8>)> = None;
    let mut p = rest;
    while let [op, len, tail @ ..] = p {
        let n = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(n);
        p = next;
        let fin = op & 0x80 != 0;
        let mask = [op.wrapping_mul(3), *len, 7, 0x55];
        match (op & 3, open.take()) {
            (0, None) | (1, None) => {
                let opcode = if op & 3 == 0 { Opcode::Text } else { Opcode::Binary };
                let body: Vec<u8> = if opcode == Opcode::Text {
                    String::from_utf8_lossy(payload).into_owned().into_bytes()
                } else {
                    payload.to_vec()
                };
                if body.len() > LIMITS.frame_bytes_max {
                    break;
                }
                encode_client_frame(&mut wire, opcode, &body, fin, mask);
                if fin {
                    want.push(if opcode == Opcode::Text {
                        Event::Text(body)
                    } else {
                        Event::Binary(body)
                    });
                } else {
                    open = Some((opcode, body));
                }
            }
            (2, o) => {
                encode_client_frame(&mut wire, Opcode::Ping, &payload[..n.min(125)], true, mask);
                open = o;
            }
            (_, Some((opcode, mut body))) => {
                // continuation: binary bytes only, so the text stays UTF-8
                let part: Vec<u8> = payload.iter().map(|b| b & 0x7f).collect();
                encode_client_frame(&mut wire, Opcode::Continuation, &part, fin, mask);
                body.extend_from_slice(&part);
                if fin {
                    want.push(if opcode == Opcode::Text {
                        Event::Text(body)
                    } else {
                        Event::Binary(body)
                    });
                } else {
                    open = Some((opcode, body));
                }
            }
            _ => {}
        }
    }
    let mut c = Conn::new(WsLimits {
        frame_bytes_max: 1 << 20,
        message_bytes_max: 1 << 20,
        fragments_max: 1 << 20,
    });
    c.handle_bytes(&wire);
    let got: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(got, want);
});
