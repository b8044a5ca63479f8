//! Header lines for the registrar's replies: the 200 OK's `Contact` list
//! (RFC 3261 §10.3 step 8), its `Path` (RFC 3327 §5.3), and the extra headers
//! of error replies (`Min-Expires`, `Unsupported: path`, `Retry-After`).
//!
//! Output is `Name: value\r\n` lines ready to append to a reply.

use super::contact::{format_q, Binding, Ucontact};
use super::save::{SaveError, SaveOutcome};
use super::table::RegistrarParams;

/// One binding as the 200 OK lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyContact {
    pub uri: String,
    /// Seconds left.
    pub expires_s: u32,
    pub q: Option<u16>,
    pub instance: Option<String>,
    pub reg_id: u32,
    pub received: Option<String>,
}

impl ReplyContact {
    pub fn from_contact(c: &Ucontact, now_unix_s: u64) -> ReplyContact {
        ReplyContact {
            uri: c.contact.clone(),
            expires_s: c.remaining_s(now_unix_s),
            q: c.q,
            instance: c.instance.clone(),
            reg_id: c.reg_id,
            received: c.received.clone(),
        }
    }

    pub fn from_binding(c: &Binding, now_unix_s: u64) -> ReplyContact {
        ReplyContact {
            uri: c.contact().to_string(),
            expires_s: c.remaining_s(now_unix_s),
            q: c.q(),
            instance: c.instance().map(str::to_string),
            reg_id: c.reg_id,
            received: c.received().map(str::to_string),
        }
    }
}

/// Reply formatting options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyOpts<'a> {
    /// registrar `received_param` (default `"received"`): appended as
    /// `;received="<uri>"` to bindings that have one; `None` or empty: never.
    pub received_param: Option<&'a str>,
    /// Echo the Path the outcome carries (the KSR layer turns this off when
    /// the reply should not reflect it).
    pub reflect_path: bool,
}

impl Default for ReplyOpts<'_> {
    fn default() -> Self {
        ReplyOpts {
            received_param: Some("received"),
            reflect_path: true,
        }
    }
}

/// `Contact: <uri>;expires=N[;q=Q][;+sip.instance="…"][;reg-id=N][;received="…"]\r\n`
/// for each binding. `q` is written when the binding has one.
pub fn contact_headers(contacts: &[ReplyContact], opts: &ReplyOpts<'_>) -> String {
    let mut out = String::with_capacity(contacts.len() * 96);
    for c in contacts {
        out.push_str("Contact: <");
        out.push_str(&c.uri);
        out.push_str(">;expires=");
        out.push_str(&c.expires_s.to_string());
        if let Some(q) = c.q {
            out.push_str(";q=");
            out.push_str(&format_q(q));
        }
        if let Some(i) = &c.instance {
            out.push_str(";+sip.instance=\"");
            out.push_str(i);
            out.push('"');
        }
        if c.reg_id != 0 {
            out.push_str(";reg-id=");
            out.push_str(&c.reg_id.to_string());
        }
        if let (Some(name), Some(r)) = (opts.received_param.filter(|n| !n.is_empty()), &c.received)
        {
            out.push(';');
            out.push_str(name);
            out.push_str("=\"");
            out.push_str(r);
            out.push('"');
        }
        out.push_str("\r\n");
    }
    out
}

/// Every extra header of the 200 OK: the Contact lines and, when the outcome
/// carries one and `opts.reflect_path`, the `Path`.
pub fn ok_headers(outcome: &SaveOutcome, opts: &ReplyOpts<'_>) -> String {
    let mut out = contact_headers(&outcome.contacts, opts);
    if let (true, Some(p)) = (opts.reflect_path, &outcome.reply_path) {
        out.push_str("Path: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out
}

/// Extra headers of the error reply for `err`: `Min-Expires` for 423,
/// `Unsupported: path` for 420, then `P-Registrar-Error` with the reason
/// (Kamailio's text), then `Retry-After` for 5xx when configured.
pub fn error_headers(err: &SaveError, params: &RegistrarParams) -> String {
    let mut out = String::new();
    match err {
        SaveError::IntervalTooBrief { min_expires_s } => {
            out.push_str(&format!("Min-Expires: {min_expires_s}\r\n"));
        }
        SaveError::PathNotSupported => out.push_str("Unsupported: path\r\n"),
        _ => {}
    }
    out.push_str("P-Registrar-Error: ");
    out.push_str(err.error_info());
    out.push_str("\r\n");
    if err.status() >= 500 && params.retry_after_s > 0 {
        out.push_str(&format!("Retry-After: {}\r\n", params.retry_after_s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usrloc::save::Changes;

    fn rc(uri: &str, expires_s: u32) -> ReplyContact {
        ReplyContact {
            uri: uri.into(),
            expires_s,
            q: None,
            instance: None,
            reg_id: 0,
            received: None,
        }
    }

    #[test]
    fn contact_lines() {
        let mut full = rc("sip:a@10.0.0.1:5060;transport=tcp", 3599);
        full.q = Some(500);
        full.instance = Some("<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>".into());
        full.reg_id = 1;
        full.received = Some("sip:198.51.100.7:40000".into());
        let mut one = rc("sip:b@h", 60);
        one.q = Some(1000);
        let cases = [
            (vec![], ReplyOpts::default(), ""),
            (
                vec![rc("sip:a@h", 0)],
                ReplyOpts::default(),
                "Contact: <sip:a@h>;expires=0\r\n",
            ),
            (
                vec![one.clone()],
                ReplyOpts::default(),
                "Contact: <sip:b@h>;expires=60;q=1\r\n",
            ),
            (
                vec![full.clone(), one],
                ReplyOpts::default(),
                "Contact: <sip:a@10.0.0.1:5060;transport=tcp>;expires=3599;q=0.5;\
                 +sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;\
                 received=\"sip:198.51.100.7:40000\"\r\n\
                 Contact: <sip:b@h>;expires=60;q=1\r\n",
            ),
            (
                vec![full.clone()],
                ReplyOpts {
                    received_param: None,
                    reflect_path: true,
                },
                "Contact: <sip:a@10.0.0.1:5060;transport=tcp>;expires=3599;q=0.5;\
                 +sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1\r\n",
            ),
            (
                vec![full],
                ReplyOpts {
                    received_param: Some("rcv"),
                    reflect_path: true,
                },
                "Contact: <sip:a@10.0.0.1:5060;transport=tcp>;expires=3599;q=0.5;\
                 +sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;\
                 rcv=\"sip:198.51.100.7:40000\"\r\n",
            ),
        ];
        for (i, (cs, opts, want)) in cases.into_iter().enumerate() {
            assert_eq!(contact_headers(&cs, &opts), want, "case {i}");
        }
    }

    #[test]
    fn ok_with_path() {
        let o = SaveOutcome {
            aor: "a".into(),
            contacts: vec![rc("sip:a@h", 10)],
            reply_path: Some("<sip:edge.example.com;lr>".into()),
            changes: Changes::default(),
            retransmission: false,
        };
        assert_eq!(
            ok_headers(&o, &ReplyOpts::default()),
            "Contact: <sip:a@h>;expires=10\r\nPath: <sip:edge.example.com;lr>\r\n"
        );
        let no = ReplyOpts {
            reflect_path: false,
            ..Default::default()
        };
        assert_eq!(ok_headers(&o, &no), "Contact: <sip:a@h>;expires=10\r\n");
    }

    #[test]
    fn error_extras() {
        let mut p = RegistrarParams::default();
        assert_eq!(
            error_headers(&SaveError::IntervalTooBrief { min_expires_s: 60 }, &p),
            "Min-Expires: 60\r\nP-Registrar-Error: Interval too brief\r\n"
        );
        assert_eq!(
            error_headers(&SaveError::PathNotSupported, &p),
            "Unsupported: path\r\nP-Registrar-Error: No support for found Path indicated\r\n"
        );
        assert_eq!(
            error_headers(&SaveError::TooManyContacts { max: 2 }, &p),
            "P-Registrar-Error: Too many registered contacts\r\n"
        );
        p.retry_after_s = 30;
        assert_eq!(
            error_headers(&SaveError::TooManyContacts { max: 2 }, &p),
            "P-Registrar-Error: Too many registered contacts\r\nRetry-After: 30\r\n"
        );
        assert_eq!(
            error_headers(&SaveError::TableFull, &p),
            "P-Registrar-Error: Location table full\r\nRetry-After: 30\r\n"
        );
        assert_eq!(
            error_headers(&SaveError::InvalidCseq, &p),
            "P-Registrar-Error: Invalid CSeq number\r\n"
        );
    }
}
