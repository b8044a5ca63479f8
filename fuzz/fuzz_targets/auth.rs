//! Digest `Authorization` / `Proxy-Authorization` values: `Credentials::parse`,
//! `find_credentials`, `pre_auth` (nonce check), `post_auth` (digest math
//! with a password and with stored HA1 of both lengths, nonce-count
//! tracking), `parse_algorithms` and `NonceKey::check` on raw input. Must
//! never panic; parsed credentials must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::auth::{
    find_credentials, parse_algorithms, post_auth, pre_auth, verify, Credentials, DigestRequest,
    NcTracker, NonceKey, Secret,
};

fuzz_target!(|data: &[u8]| {
    let key = NonceKey::new([9u8; 32]);
    if let Ok(c) = Credentials::parse(data) {
        // qop comes with cnonce and nc, and the response has the
        // algorithm's hex length (the parser's documented guarantees)
        assert_eq!(c.qop.is_some(), c.cnonce.is_some() && c.nc.is_some());
        assert!(c.response.bytes().all(|b| b.is_ascii_hexdigit()));
        let _ = (
            c.username.unescaped(),
            c.realm.unescaped(),
            c.nonce.unescaped(),
            c.uri.unescaped(),
            c.opaque.map(|o| o.unescaped()),
        );
        let req = DigestRequest {
            method: "REGISTER",
            body: b"v=0\r\n",
            call_id: b"c1",
            cseq: 1,
            cseq_method: b"REGISTER",
        };
        let mut nc = NcTracker::new(64);
        for secret in [
            Secret::Password("secret"),
            Secret::Ha1("00112233445566778899aabbccddeeff"),
            Secret::Ha1("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
            Secret::Ha1(""),
        ] {
            let _ = verify(&c, "INVITE", b"", secret);
            let _ = post_auth(&c, Some(secret), &req, Some(&mut nc));
        }
        let _ = post_auth(&c, None, &req, None);
        let realm = c.realm.unescaped();
        let _ = key.check(&c.nonce.unescaped(), &realm, 1_700_000_000);
    }
    // several header values, split at a NUL byte
    let values: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let _ = find_credentials(values.iter().copied(), "example.com");
    let _ = pre_auth(values.iter().copied(), "example.com", &key, 1_700_000_000);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_algorithms(s);
        let _ = key.check(s, "example.com", 1_700_000_000);
        let _ = key.check(s, s, u64::MAX);
    }
});
