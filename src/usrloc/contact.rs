//! One binding ([`Ucontact`], a row of Kamailio's `location` table) and one
//! AOR's bindings ([`Record`]), plus the `methods` bitmask.

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

/// One binding: the columns of Kamailio's `location` table.
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
        self.expires_unix_s == 0 || self.expires_unix_s > now_unix_s
    }

    /// Seconds left; `u32::MAX` for a permanent contact, 0 once expired.
    pub fn remaining_s(&self, now_unix_s: u64) -> u32 {
        if self.expires_unix_s == 0 {
            return u32::MAX;
        }
        u32::try_from(self.expires_unix_s.saturating_sub(now_unix_s)).unwrap_or(u32::MAX)
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

    /// Ordering used for lookup: q descending (unspecified lowest), then most
    /// recently modified first.
    pub(crate) fn order_key(&self) -> (i32, u64) {
        (self.q.map_or(-1, i32::from), self.last_modified_unix_s)
    }
}

/// All bindings of one AOR, kept in lookup order: q descending (unspecified
/// lowest), then most recently modified first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub aor: String,
    pub contacts: Vec<Ucontact>,
}

impl Record {
    pub(crate) fn sort(&mut self) {
        self.contacts
            .sort_by_key(|c| std::cmp::Reverse(c.order_key()));
    }

    /// Valid contacts at `now`, in lookup order.
    pub fn valid(&self, now_unix_s: u64) -> impl Iterator<Item = &Ucontact> {
        self.contacts.iter().filter(move |c| c.is_valid(now_unix_s))
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
        let mut r = Record::default();
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
        r.contacts = vec![a, b, c, d];
        r.sort();
        let order: Vec<&str> = r.contacts.iter().map(|c| c.ruid.as_str()).collect();
        assert_eq!(order, ["d", "c", "a", "b"]);
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
