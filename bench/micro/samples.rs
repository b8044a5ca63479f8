//! Sample messages shared by the micro-benchmarks.

#![allow(dead_code)]

/// A typical REGISTER with digest credentials (~560 bytes).
pub const REGISTER: &[u8] = b"REGISTER sip:registrar.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.44:5060;branch=z9hG4bK-524287-1---a3f5b2c1d9e8f7a6;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@192.0.2.44:5060;rinstance=6f8d2a1b3c4e5f60;transport=UDP>;expires=3600\r\n\
To: <sip:alice@registrar.example.com>\r\n\
From: <sip:alice@registrar.example.com>;tag=3f2a9c71\r\n\
Call-ID: ZDM4ZjYxYjc0NGQ0ZDFkOTJhNzc2OGJmMWFmY2E2NmE\r\n\
CSeq: 2 REGISTER\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
User-Agent: Zoiper rv2.10.20.4\r\n\
Authorization: Digest username=\"alice\",realm=\"registrar.example.com\",nonce=\"Y2FmZWJhYmUxMjM0NTY3OA\",uri=\"sip:registrar.example.com\",response=\"3b1f6e9d2c7a8b4e5f0a1d2c3b4a5968\",algorithm=MD5,qop=auth,nc=00000001,cnonce=\"a1b2c3d4\"\r\n\
Allow-Events: presence, kpml, talk\r\n\
Content-Length: 0\r\n\
\r\n";
