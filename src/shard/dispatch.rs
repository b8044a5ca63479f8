//! Which shard runs a message, and the hand-over queues between shards.
//!
//! Decided once, after parsing and before any route runs, so no route ever
//! waits for another core:
//! - replies run where they were read: the transaction store is shared
//!   (`kemi::tm_store`, docs/ARCHITECTURE.md decision 6);
//! - with `dispatch = "local"` (the default) so do requests: the tables
//!   they touch are shared;
//! - with `dispatch = "callid"`, REGISTER and OPTIONS pings stay and every
//!   other request goes to the shard of its Call-ID (a dialog's requests
//!   meet on one shard); with `dispatch = "key"`, a REGISTER goes to the
//!   shard of its To AOR and any other request to the shard of its Call-ID.
//!
//! A hand-over moves the message's context (its buffer and parse index) to
//! the owner's bounded inbox and rings the owner's doorbell if it sleeps.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Dispatch;
use crate::exec::Doorbell;
use crate::kemi::MsgCtx;
use crate::partition;
use crate::sip::{Method, SipMsg, SipUri};

/// The shard that runs `msg` (`me` when it stays here).
pub fn target(msg: &SipMsg<'_>, me: usize, shards: usize, mode: Dispatch) -> usize {
    if shards <= 1 || !msg.is_request() {
        // Replies run where they are read: the transaction store is shared
        // (kemi::tm_store), so the shard that reads one completes it.
        return me;
    }
    match mode {
        Dispatch::Local => me,
        Dispatch::Key => {
            if msg.method() == Some(Method::Register) {
                if let Some(uri) = msg.to().ok().and_then(|t| SipUri::parse(t.uri).ok()) {
                    let user = uri.user.unwrap_or(b"");
                    return partition::index_parts(&[user, b"@", uri.host], shards);
                }
            }
            match msg.call_id() {
                Some(id) => partition::index(id, shards),
                None => me,
            }
        }
        Dispatch::Callid => match msg.method() {
            Some(Method::Register) => me,
            Some(Method::Options)
                if msg
                    .ruri()
                    .and_then(|r| SipUri::parse(r).ok())
                    .is_some_and(|u| u.user.is_none()) =>
            {
                me
            }
            _ => match msg.call_id() {
                Some(id) => partition::index(id, shards),
                None => me,
            },
        },
    }
}

/// One shard's inbox of messages handed over by the others.
struct Inbox {
    queue: Mutex<VecDeque<Box<MsgCtx>>>,
    /// Queue length, readable without the lock (the loop checks it before
    /// it parks).
    len: AtomicUsize,
    bell: Arc<Doorbell>,
}

/// Every shard's inbox; shared by all shards.
pub struct Peers {
    inboxes: Vec<Inbox>,
    max: usize,
}

impl Peers {
    /// One inbox per doorbell (shard order), each holding at most `max`.
    pub fn new(bells: &[Arc<Doorbell>], max: usize) -> Peers {
        Peers {
            inboxes: bells
                .iter()
                .map(|b| Inbox {
                    queue: Mutex::new(VecDeque::new()),
                    len: AtomicUsize::new(0),
                    bell: b.clone(),
                })
                .collect(),
            max: max.max(1),
        }
    }

    /// Queues `ctx` for shard `to`; gives it back when that inbox is full.
    pub fn hand_over(&self, to: usize, ctx: Box<MsgCtx>) -> Result<(), Box<MsgCtx>> {
        let Some(inbox) = self.inboxes.get(to) else {
            return Err(ctx);
        };
        {
            let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.max {
                return Err(ctx);
            }
            q.push_back(ctx);
            inbox.len.store(q.len(), Ordering::Release);
        }
        inbox.bell.ring();
        Ok(())
    }

    /// Something waits in `me`'s inbox.
    #[inline]
    pub fn has_work(&self, me: usize) -> bool {
        self.inboxes
            .get(me)
            .is_some_and(|i| i.len.load(Ordering::Acquire) > 0)
    }

    /// Moves everything in `me`'s inbox to `out`.
    pub fn take(&self, me: usize, out: &mut Vec<Box<MsgCtx>>) {
        let Some(inbox) = self.inboxes.get(me) else {
            return;
        };
        if inbox.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(q.drain(..));
        inbox.len.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Framing, Limits, Parsed};

    fn parsed(text: &str) -> (Vec<u8>, Parsed) {
        let buf = text.replace('\n', "\r\n").into_bytes();
        let mut p = Parsed::default();
        crate::sip::parse(&buf, Framing::Datagram, &Limits::default(), &mut p).unwrap();
        (buf, p)
    }

    #[test]
    fn replies_stay_where_read_requests_by_mode() {
        let reply = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsS1.abc\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@x>;tag=2\nCall-ID: c1\nCSeq: 1 INVITE\nContent-Length: 0\n\n";
        let (buf, p) = parsed(reply);
        let m = SipMsg::new(&buf, &p);
        for mode in [Dispatch::Local, Dispatch::Key, Dispatch::Callid] {
            assert_eq!(target(&m, 0, 2, mode), 0, "{mode:?}");
            assert_eq!(target(&m, 1, 2, mode), 1, "{mode:?}");
        }

        let reg = |user: &str, cid: &str| {
            format!("REGISTER sip:x SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKq\nFrom: <sip:{user}@x>;tag=1\nTo: <sip:{user}@x>\nCall-ID: {cid}\nCSeq: 1 REGISTER\nContent-Length: 0\n\n")
        };
        let mut seen = [0usize; 2];
        for i in 0..64 {
            let (buf, p) = parsed(&reg(&format!("u{i}"), "same-call-id"));
            let m = SipMsg::new(&buf, &p);
            assert_eq!(target(&m, 1, 2, Dispatch::Local), 1);
            let t = target(&m, 0, 2, Dispatch::Key);
            assert_eq!(t, partition::index(format!("u{i}@x").as_bytes(), 2));
            seen[t] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        let invite = "INVITE sip:b@x SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKq\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@x>\nCall-ID: call-42\nCSeq: 1 INVITE\nContent-Length: 0\n\n";
        let (buf, p) = parsed(invite);
        assert_eq!(
            target(&SipMsg::new(&buf, &p), 0, 2, Dispatch::Key),
            partition::index(b"call-42", 2)
        );
    }

    #[test]
    fn inbox_is_bounded_and_rings() {
        let rings = Arc::new(AtomicUsize::new(0));
        let r = rings.clone();
        let bell = Arc::new(Doorbell::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let peers = Peers::new(std::slice::from_ref(&bell), 2);
        let ctx = || Box::new(MsgCtx::new(1024, 16));
        assert!(!peers.has_work(0));
        bell.park();
        assert!(peers.hand_over(0, ctx()).is_ok());
        assert_eq!(rings.load(Ordering::SeqCst), 1);
        assert!(peers.hand_over(0, ctx()).is_ok());
        assert!(peers.hand_over(0, ctx()).is_err(), "full");
        assert!(peers.hand_over(5, ctx()).is_err(), "no such shard");
        assert!(peers.has_work(0));
        let mut out = Vec::new();
        peers.take(0, &mut out);
        assert_eq!(out.len(), 2);
        assert!(!peers.has_work(0));
    }
}
