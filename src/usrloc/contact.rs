//! One binding: [`Binding`], the compact form the location table keeps,
//! and [`Ucontact`], the same columns as owned strings (a row of Kamailio's
//! `location` table, what the table takes in and hands out); one AOR's
//! bindings ([`Record`]); the `methods` bitmask.

use crate::sip::Method;

/// `flags` bit: the contact lives in memory only and is never written to the
/// database (save flag `0x01`).
pub const FLAG_MEM_ONLY: u32 = 1;

/// Kamailio's request-method bitmask, as stored in the `methods` column.
pub mod method_bits {
    pub const INVITE: u32 = 1;
    pub const CANCEL: u32 = 2;
    pub const ACK: u32 = 4;
    pub const BYE: u32 = 8;
    pub const INFO: u32 = 16;
    pub const REGISTER: u32 = 32;
    pub const SUBSCRIBE: u32 = 64;
    pub const NOTIFY: u32 = 128;
    pub const MESSAGE: u32 = 256;
    pub const OPTIONS: u32 = 512;
    pub const PRACK: u32 = 1024;
    pub const UPDATE: u32 = 2048;
    pub const REFER: u32 = 4096;
    pub const PUBLISH: u32 = 8192;
    pub const KDMQ: u32 = 16384;
    pub const OTHER: u32 = 524_288;
    /// No `Allow` header: every method is assumed supported.
    pub const ALL: u32 = u32::MAX;
}

/// The bit of one method.
pub fn method_bit(method: Method) -> u32 {
    use method_bits as m;
    match method {
        Method::Invite => m::INVITE,
        Method::Cancel => m::CANCEL,
        Method::Ack => m::ACK,
        Method::Bye => m::BYE,
        Method::Info => m::INFO,
        Method::Register => m::REGISTER,
        Method::Subscribe => m::SUBSCRIBE,
        Method::Notify => m::NOTIFY,
        Method::Message => m::MESSAGE,
        Method::Options => m::OPTIONS,
        Method::Prack => m::PRACK,
        Method::Update => m::UPDATE,
        Method::Refer => m::REFER,
        Method::Publish => m::PUBLISH,
        Method::Kdmq => m::KDMQ,
        _ => m::OTHER,
    }
}

/// The `methods` value for a REGISTER's `Allow` header values
/// (`Allow = "Allow" HCOLON [Method *(COMMA Method)]`). No header at all
/// means [`method_bits::ALL`]; pass every Allow line.
pub fn methods_from_allow<'a, I>(allow_values: I) -> u32
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut seen_header = false;
    let mut bits = 0;
    for v in allow_values {
        seen_header = true;
        for tok in v.split(|&b| b == b',') {
            let tok = tok.trim_ascii();
            if !tok.is_empty() {
                bits |= method_bit(Method::from_bytes(tok));
            }
        }
    }
    if seen_header {
        bits
    } else {
        method_bits::ALL
    }
}

/// One binding: the columns of Kamailio's `location` table, owned. The
/// table stores each as a [`Binding`] and makes a `Ucontact` when one leaves
/// it (lookups, [`super::Changes`], the dirty batch, expiry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ucontact {
    /// Record unique id (`ruid`), the key for DB updates and deletes.
    pub ruid: String,
    /// Contact URI (`contact`), compared byte-for-byte.
    pub contact: String,
    /// Source address URI when behind NAT (`received`).
    pub received: Option<String>,
    /// Path vector, `<uri>,<uri>` (`path`, RFC 3327).
    pub path: Option<String>,
    /// Absolute expiry, unix seconds (`expires`); 0 = permanent.
    pub expires_unix_s: u64,
    /// q in thousandths (`q`); `None` = unspecified (DB -1).
    pub q: Option<u16>,
    pub callid: String,
    pub cseq: u32,
    /// usrloc flags ([`FLAG_MEM_ONLY`]).
    pub flags: u32,
    /// Branch flags saved with the contact (`cflags`).
    pub cflags: u32,
    pub user_agent: String,
    /// Local socket the REGISTER came in on, `proto:ip:port` (`socket`).
    pub socket: Option<String>,
    /// Supported methods bitmask (`methods`), see [`method_bits`].
    pub methods: u32,
    /// `+sip.instance` value without the quotes, e.g. `<urn:uuid:…>`.
    pub instance: Option<String>,
    /// RFC 5626 `reg-id`; 0 = none.
    pub reg_id: u32,
    pub last_modified_unix_s: u64,
}

impl Ucontact {
    /// Bound and not expired at `now_unix_s`.
    pub fn is_valid(&self, now_unix_s: u64) -> bool {
        is_valid(self.expires_unix_s, now_unix_s)
    }

    /// Seconds left; `u32::MAX` for a permanent contact, 0 once expired.
    pub fn remaining_s(&self, now_unix_s: u64) -> u32 {
        remaining_s(self.expires_unix_s, now_unix_s)
    }

    /// The `q` column value: q as a float, -1 when unspecified.
    pub fn q_db(&self) -> f64 {
        self.q.map_or(-1.0, |q| f64::from(q) / 1000.0)
    }

    /// q from the `q` column: negative or NaN = unspecified, above 1 clamps.
    pub fn q_from_db(q: f64) -> Option<u16> {
        if q.is_nan() || q < 0.0 {
            return None;
        }
        Some((q.min(1.0) * 1000.0).round() as u16)
    }

    pub fn is_mem_only(&self) -> bool {
        self.flags & FLAG_MEM_ONLY != 0
    }
}

/// All bindings of one AOR, kept in lookup order: q descending (unspecified
/// lowest), then most recently modified first. An owned copy of what the
/// table holds ([`super::Location::record`], [`super::Location::dump`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub aor: String,
    pub contacts: Vec<Ucontact>,
}

impl Record {
    /// Valid contacts at `now`, in lookup order.
    pub fn valid(&self, now_unix_s: u64) -> impl Iterator<Item = &Ucontact> {
        self.contacts.iter().filter(move |c| c.is_valid(now_unix_s))
    }
}

/// Longest string column a [`Binding`] keeps; longer values are cut (at a
/// character boundary). Eight of them fit the `u16` offsets; the database
/// columns hold at most 512 bytes and `save` refuses anything longer.
pub const FIELD_MAX: usize = 8191;

/// The string columns of a binding, borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingStrs<'a> {
    pub ruid: &'a str,
    pub contact: &'a str,
    pub callid: &'a str,
    pub user_agent: &'a str,
    pub received: Option<&'a str>,
    pub path: Option<&'a str>,
    pub socket: Option<&'a str>,
    pub instance: Option<&'a str>,
}

// Order of the strings in `Binding::strs`.
const RUID: usize = 0;
const CONTACT: usize = 1;
const CALLID: usize = 2;
const USER_AGENT: usize = 3;
const RECEIVED: usize = 4;
const PATH: usize = 5;
const SOCKET: usize = 6;
const INSTANCE: usize = 7;

// `Binding::bits`: which optional columns are present, q set, dirty.
const HAS_RECEIVED: u8 = 1 << 0;
const HAS_PATH: u8 = 1 << 1;
const HAS_SOCKET: u8 = 1 << 2;
const HAS_INSTANCE: u8 = 1 << 3;
const HAS_Q: u8 = 1 << 4;
/// Presence bit of each optional string, from `RECEIVED` on.
const OPTIONAL: [u8; 4] = [HAS_RECEIVED, HAS_PATH, HAS_SOCKET, HAS_INSTANCE];
const DIRTY: u8 = 1 << 5;

/// One binding as the location table keeps it: the same columns as
/// [`Ucontact`] in 72 bytes plus one heap allocation holding every string
/// (ruid, contact, Call-ID, User-Agent, received, path, socket, instance)
/// back to back, found by `u16` end offsets. String columns are read through
/// methods ([`Binding::contact`], ...) and set only by building a new one.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    /// Absolute expiry, unix seconds; 0 = permanent.
    pub expires_unix_s: u64,
    pub last_modified_unix_s: u64,
    strs: Box<str>,
    pub cseq: u32,
    /// usrloc flags ([`FLAG_MEM_ONLY`]).
    pub flags: u32,
    pub cflags: u32,
    /// Supported methods bitmask, see [`method_bits`].
    pub methods: u32,
    /// RFC 5626 `reg-id`; 0 = none.
    pub reg_id: u32,
    /// End of string `i` for the first seven; the last ends at `strs.len()`.
    ends: [u16; 7],
    q: u16,
    bits: u8,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("ruid", &self.ruid())
            .field("contact", &self.contact())
            .field("received", &self.received())
            .field("path", &self.path())
            .field("expires_unix_s", &self.expires_unix_s)
            .field("q", &self.q())
            .field("callid", &self.callid())
            .field("cseq", &self.cseq)
            .field("flags", &self.flags)
            .field("cflags", &self.cflags)
            .field("user_agent", &self.user_agent())
            .field("socket", &self.socket())
            .field("methods", &self.methods)
            .field("instance", &self.instance())
            .field("reg_id", &self.reg_id)
            .field("last_modified_unix_s", &self.last_modified_unix_s)
            .field("dirty", &self.is_dirty())
            .finish()
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Binding {
    /// A binding with these strings (each cut to [`FIELD_MAX`]), every
    /// number 0, `methods` [`method_bits::ALL`] and q unspecified.
    pub fn new(s: &BindingStrs<'_>) -> Binding {
        let parts = [
            Some(s.ruid),
            Some(s.contact),
            Some(s.callid),
            Some(s.user_agent),
            s.received,
            s.path,
            s.socket,
            s.instance,
        ];
        let len: usize = parts
            .iter()
            .map(|p| p.map_or(0, |p| p.len().min(FIELD_MAX)))
            .sum();
        let mut strs = String::with_capacity(len);
        let mut ends = [0u16; 7];
        let mut bits = 0;
        for (i, p) in parts.iter().enumerate() {
            if let Some(p) = p {
                strs.push_str(truncate_utf8(p, FIELD_MAX));
                if i >= RECEIVED {
                    bits |= OPTIONAL[i - RECEIVED];
                }
            }
            if i < ends.len() {
                // At most 8 x FIELD_MAX < u16::MAX bytes.
                ends[i] = strs.len() as u16;
            }
        }
        Binding {
            expires_unix_s: 0,
            last_modified_unix_s: 0,
            strs: strs.into_boxed_str(),
            cseq: 0,
            flags: 0,
            cflags: 0,
            methods: method_bits::ALL,
            reg_id: 0,
            ends,
            q: 0,
            bits,
        }
    }

    /// The compact form of an owned row.
    pub fn from_contact(c: &Ucontact) -> Binding {
        let mut b = Binding::new(&BindingStrs {
            ruid: &c.ruid,
            contact: &c.contact,
            callid: &c.callid,
            user_agent: &c.user_agent,
            received: c.received.as_deref(),
            path: c.path.as_deref(),
            socket: c.socket.as_deref(),
            instance: c.instance.as_deref(),
        });
        b.expires_unix_s = c.expires_unix_s;
        b.last_modified_unix_s = c.last_modified_unix_s;
        b.cseq = c.cseq;
        b.flags = c.flags;
        b.cflags = c.cflags;
        b.methods = c.methods;
        b.reg_id = c.reg_id;
        b.set_q(c.q);
        b
    }

    /// An owned row with the same columns.
    pub fn to_contact(&self) -> Ucontact {
        Ucontact {
            ruid: self.ruid().to_string(),
            contact: self.contact().to_string(),
            received: self.received().map(str::to_string),
            path: self.path().map(str::to_string),
            expires_unix_s: self.expires_unix_s,
            q: self.q(),
            callid: self.callid().to_string(),
            cseq: self.cseq,
            flags: self.flags,
            cflags: self.cflags,
            user_agent: self.user_agent().to_string(),
            socket: self.socket().map(str::to_string),
            methods: self.methods,
            instance: self.instance().map(str::to_string),
            reg_id: self.reg_id,
            last_modified_unix_s: self.last_modified_unix_s,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends.get(i).map_or(self.strs.len(), |&e| e as usize);
        &self.strs[start..end]
    }

    fn opt(&self, i: usize, bit: u8) -> Option<&str> {
        (self.bits & bit != 0).then(|| self.part(i))
    }

    /// Record unique id (`ruid`).
    pub fn ruid(&self) -> &str {
        self.part(RUID)
    }

    /// Contact URI (`contact`).
    pub fn contact(&self) -> &str {
        self.part(CONTACT)
    }

    pub fn callid(&self) -> &str {
        self.part(CALLID)
    }

    pub fn user_agent(&self) -> &str {
        self.part(USER_AGENT)
    }

    /// Source address URI when behind NAT (`received`).
    pub fn received(&self) -> Option<&str> {
        self.opt(RECEIVED, HAS_RECEIVED)
    }

    /// Path vector (`path`).
    pub fn path(&self) -> Option<&str> {
        self.opt(PATH, HAS_PATH)
    }

    /// Local socket, `proto:ip:port` (`socket`).
    pub fn socket(&self) -> Option<&str> {
        self.opt(SOCKET, HAS_SOCKET)
    }

    /// `+sip.instance` value.
    pub fn instance(&self) -> Option<&str> {
        self.opt(INSTANCE, HAS_INSTANCE)
    }

    /// q in thousandths; `None` = unspecified.
    pub fn q(&self) -> Option<u16> {
        (self.bits & HAS_Q != 0).then_some(self.q)
    }

    pub fn set_q(&mut self, q: Option<u16>) {
        match q {
            Some(q) => {
                self.q = q;
                self.bits |= HAS_Q;
            }
            None => {
                self.q = 0;
                self.bits &= !HAS_Q;
            }
        }
    }

    /// Bound and not expired at `now_unix_s`.
    pub fn is_valid(&self, now_unix_s: u64) -> bool {
        is_valid(self.expires_unix_s, now_unix_s)
    }

    /// Seconds left; `u32::MAX` for a permanent binding, 0 once expired.
    pub fn remaining_s(&self, now_unix_s: u64) -> u32 {
        remaining_s(self.expires_unix_s, now_unix_s)
    }

    pub fn is_mem_only(&self) -> bool {
        self.flags & FLAG_MEM_ONLY != 0
    }

    /// Changed since the last write-back (`db_mode` 2).
    pub(crate) fn is_dirty(&self) -> bool {
        self.bits & DIRTY != 0
    }

    pub(crate) fn set_dirty(&mut self, dirty: bool) {
        if dirty {
            self.bits |= DIRTY;
        } else {
            self.bits &= !DIRTY;
        }
    }

    /// Ordering used for lookup: q descending (unspecified lowest), then most
    /// recently modified first.
    pub(crate) fn order_key(&self) -> (i32, u64) {
        (self.q().map_or(-1, i32::from), self.last_modified_unix_s)
    }
}

/// Sorts bindings into lookup order (stable).
pub(crate) fn sort_bindings(b: &mut [Binding]) {
    if b.len() > 1 {
        b.sort_by_key(|c| std::cmp::Reverse(c.order_key()));
    }
}

/// Formats q thousandths the way it appears in a Contact: `1`, `0.5`, `0.05`, `0`.
pub fn format_q(q: u16) -> String {
    let q = q.min(1000);
    if q == 1000 {
        return "1".to_string();
    }
    if q == 0 {
        return "0".to_string();
    }
    let s = format!("0.{q:03}");
    s.trim_end_matches('0').to_string()
}

/// An expiry (`0` = permanent) is still in the future at `now_unix_s`.
fn is_valid(expires_unix_s: u64, now_unix_s: u64) -> bool {
    expires_unix_s == 0 || expires_unix_s > now_unix_s
}

/// Seconds left before `expires_unix_s`; `u32::MAX` when permanent.
fn remaining_s(expires_unix_s: u64, now_unix_s: u64) -> u32 {
    if expires_unix_s == 0 {
        return u32::MAX;
    }
    u32::try_from(expires_unix_s.saturating_sub(now_unix_s)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uc(ruid: &str, uri: &str, expires: u64) -> Ucontact {
        Ucontact {
            ruid: ruid.into(),
            contact: uri.into(),
            received: None,
            path: None,
            expires_unix_s: expires,
            q: None,
            callid: "c".into(),
            cseq: 1,
            flags: 0,
            cflags: 0,
            user_agent: String::new(),
            socket: None,
            methods: method_bits::ALL,
            instance: None,
            reg_id: 0,
            last_modified_unix_s: 0,
        }
    }

    #[test]
    fn validity_and_remaining() {
        let c = uc("r", "sip:a@b", 100);
        let table = [
            (0, true, 100),
            (99, true, 1),
            (100, false, 0),
            (1000, false, 0),
        ];
        for (now, valid, rem) in table {
            assert_eq!(c.is_valid(now), valid, "{now}");
            assert_eq!(c.remaining_s(now), rem, "{now}");
        }
        let p = uc("p", "sip:a@b", 0);
        assert!(p.is_valid(u64::MAX));
        assert_eq!(p.remaining_s(5), u32::MAX);
        let far = uc("f", "sip:a@b", u64::MAX);
        assert_eq!(far.remaining_s(0), u32::MAX);
    }

    #[test]
    fn q_db_column() {
        let table = [
            (-1.0, None),
            (f64::NAN, None),
            (0.0, Some(0)),
            (0.5, Some(500)),
            (0.1234, Some(123)),
            (1.0, Some(1000)),
            (7.0, Some(1000)),
        ];
        for (db, want) in table {
            assert_eq!(Ucontact::q_from_db(db), want, "{db}");
        }
        let mut c = uc("r", "sip:a", 0);
        assert_eq!(c.q_db(), -1.0);
        c.q = Some(250);
        assert_eq!(c.q_db(), 0.25);
        assert_eq!(Ucontact::q_from_db(c.q_db()), Some(250));
    }

    #[test]
    fn q_formatting() {
        let table = [
            (1000, "1"),
            (0, "0"),
            (500, "0.5"),
            (50, "0.05"),
            (5, "0.005"),
            (123, "0.123"),
            (990, "0.99"),
            (2000, "1"),
        ];
        for (q, want) in table {
            assert_eq!(format_q(q), want, "{q}");
        }
    }

    #[test]
    fn sorting() {
        let mut a = uc("a", "sip:a", 0);
        a.q = Some(500);
        a.last_modified_unix_s = 10;
        let mut b = uc("b", "sip:b", 0);
        b.q = None;
        b.last_modified_unix_s = 99;
        let mut c = uc("c", "sip:c", 0);
        c.q = Some(500);
        c.last_modified_unix_s = 20;
        let mut d = uc("d", "sip:d", 0);
        d.q = Some(1000);
        let mut v: Vec<Binding> = [a, b, c, d].iter().map(Binding::from_contact).collect();
        sort_bindings(&mut v);
        let order: Vec<&str> = v.iter().map(Binding::ruid).collect();
        assert_eq!(order, ["d", "c", "a", "b"]);
    }

    #[test]
    fn binding_round_trip() {
        let mut full = uc("uloc-1-2-3", "sip:a@10.0.0.1:5060;transport=tcp", 1000);
        full.received = Some("sip:198.51.100.7:40000".into());
        full.path = Some("<sip:edge;lr>,<sip:core;lr>".into());
        full.socket = Some("udp:127.0.0.1:5060".into());
        full.instance = Some("<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>".into());
        full.user_agent = "sipp/3.6 \u{e9}t\u{e9}".into();
        full.q = Some(0);
        full.cseq = u32::MAX;
        full.flags = 6;
        full.cflags = 7;
        full.methods = method_bits::INVITE;
        full.reg_id = 2;
        full.last_modified_unix_s = u64::MAX;
        let mut empty_opts = uc("", "", u64::MAX);
        empty_opts.callid = String::new();
        empty_opts.received = Some(String::new());
        empty_opts.instance = Some(String::new());
        empty_opts.q = Some(u16::MAX);
        for c in [uc("r", "sip:a@b", 0), full, empty_opts] {
            let b = Binding::from_contact(&c);
            assert_eq!(b.to_contact(), c);
            assert_eq!(b.ruid(), c.ruid);
            assert_eq!(b.contact(), c.contact);
            assert_eq!(b.callid(), c.callid);
            assert_eq!(b.user_agent(), c.user_agent);
            assert_eq!(b.received(), c.received.as_deref());
            assert_eq!(b.path(), c.path.as_deref());
            assert_eq!(b.socket(), c.socket.as_deref());
            assert_eq!(b.instance(), c.instance.as_deref());
            assert_eq!(b.q(), c.q);
            for now in [0, 5, 999, 1000, u64::MAX] {
                assert_eq!(b.is_valid(now), c.is_valid(now));
                assert_eq!(b.remaining_s(now), c.remaining_s(now));
            }
            assert!(!b.is_dirty());
        }
        assert!(
            std::mem::size_of::<Binding>() <= 72,
            "{}",
            std::mem::size_of::<Binding>()
        );
    }

    #[test]
    fn binding_cuts_long_strings() {
        let long = "\u{e9}".repeat(FIELD_MAX); // 2 bytes each
        let mut c = uc("r", &long, 0);
        c.path = Some(long.clone());
        c.callid = long.clone();
        c.user_agent = long.clone();
        c.received = Some(long.clone());
        c.socket = Some(long.clone());
        c.instance = Some(long.clone());
        c.ruid = long.clone();
        let b = Binding::from_contact(&c);
        let cut = &long[..FIELD_MAX - 1]; // FIELD_MAX is odd: back to a boundary
        for got in [
            b.ruid(),
            b.contact(),
            b.callid(),
            b.user_agent(),
            b.received().expect("received"),
            b.path().expect("path"),
            b.socket().expect("socket"),
            b.instance().expect("instance"),
        ] {
            assert_eq!(got, cut);
        }
    }

    #[test]
    fn methods() {
        use method_bits as m;
        assert_eq!(methods_from_allow(Vec::<&[u8]>::new()), m::ALL);
        assert_eq!(methods_from_allow([&b""[..]]), 0);
        assert_eq!(
            methods_from_allow([&b"INVITE, ACK ,BYE"[..], b"MESSAGE,FOO,,"]),
            m::INVITE | m::ACK | m::BYE | m::MESSAGE | m::OTHER
        );
        assert_eq!(method_bit(Method::Kdmq), 16384);
        assert_eq!(method_bit(Method::Other), m::OTHER);
    }
}
