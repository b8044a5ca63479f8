#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/
from real messages: the <send> bodies of tests/sipp/*.xml (sipp keywords
replaced by plausible values) and the messages of
tests/differential/corpus.txt, plus a few hand-made values. Run from the
repository root: python3 fuzz/make_seeds.py"""
import hashlib, os, re, random, glob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
random.seed(4475)

SIPP = {
    "service": "bob", "remote_ip": "127.0.0.1", "remote_port": "5060",
    "local_ip": "127.0.0.1", "local_port": "5070", "transport": "UDP",
    "branch": "z9hG4bK-1-1-0", "branch-3": "z9hG4bK-1-1-3", "branch-4": "z9hG4bK-1-1-4",
    "branch-7": "z9hG4bK-1-1-7", "branch-N": "z9hG4bK-1-1-9", "call_id": "1-77@127.0.0.1",
    "call_number": "1", "caller": "alice", "pid": "77", "local_ip_type": "4",
    "media_ip": "127.0.0.1", "media_ip_type": "4", "media_port": "6000",
    "peer_tag_param": ";tag=77SIPpTag01", "next_url": "sip:bob@127.0.0.1:5080",
    "routes": "Route: <sip:127.0.0.1;lr>", "contact": "Contact: <sip:alice@127.0.0.1:5070>",
    "authentication": 'Authorization: Digest username="alice", realm="127.0.0.1", '
    'nonce="bm9uY2U", uri="sip:127.0.0.1:5060", response="6629fae49393a05397450978507c4ef1", '
    'algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001',
    "last_Via:": "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x;rport=5070;received=127.0.0.1",
    "last_From:": "From: <sip:alice@127.0.0.1>;tag=77SIPpTag001",
    "last_To:": "To: <sip:bob@127.0.0.1>;tag=tt1",
    "last_Call-ID:": "Call-ID: 1-77@127.0.0.1", "last_CSeq:": "CSeq: 1 INVITE",
    "last_Record-Route:": "Record-Route: <sip:127.0.0.1;lr;ftag=77SIPpTag001>",
    "$inv_cseq": "1", "$inv_via": "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0",
}


def finish(text):
    """Lines → CRLF message with a right Content-Length."""
    lines = [l.strip() for l in text.strip("\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    if "" in lines:
        i = lines.index("")
        head, body = lines[:i], "\r\n".join(lines[i + 1:]).strip()
        body = body + "\r\n" if body else ""
    else:
        head, body = lines, ""
    head = [h for h in head if h]
    if not any(re.match(r"(?i)(content-length|l)\s*:", h) for h in head):
        head.append("Content-Length: [len]")
    out = "\r\n".join(head) + "\r\n\r\n"
    out = out.replace("[len]", str(len(body.encode())))
    return (out + body).encode()


def sipp_messages():
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "sipp", "*.xml"))):
        src = open(path, encoding="latin-1").read()
        for m in re.finditer(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", src, re.S):
            t = m.group(1)
            t = re.sub(r"\[([^\]\s]+)\]", lambda k: SIPP.get(k.group(1), k.group(0)
                                                           if k.group(1) == "len" else "x"), t)
            yield finish(t)


def differential_messages():
    path = os.path.join(ROOT, "tests", "differential", "corpus.txt")
    if not os.path.exists(path):
        return
    cur = None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("%%% "):
            if cur:
                yield finish("\n".join(cur))
            cur = []
        elif cur is not None and not (not cur and line.startswith("#")):
            cur.append(line.replace("@CPORT@", "5070").replace("@SPORT@", "5060"))
    if cur:
        yield finish("\n".join(cur))


def put(target, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def header_values(msg, names):
    head = msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    for h in head[1:]:
        n, _, v = h.partition(b":")
        if n.strip().lower() in names:
            yield v.strip()


def main():
    msgs = list(dict.fromkeys(list(sipp_messages()) + list(differential_messages())))
    reqs = [m for m in msgs if not m.startswith(b"SIP/2.0 ")]
    resps = [m for m in msgs if m.startswith(b"SIP/2.0 ")]
    for m in reqs:
        put("requests", m)
    for m in resps:
        put("responses", m)
    for m in msgs:
        plan = bytes(random.randrange(256) for _ in range(8))
        put("writer", bytes([4]) + plan + m)
        put("writer", bytes([0]) + m)
        kplan = bytes(random.randrange(256) for _ in range(64))
        put("ksr", bytes([16]) + kplan + m)
    auth = set()
    uris = set()
    for m in msgs:
        auth.update(header_values(m, {b"authorization", b"proxy-authorization"}))
        uris.update(header_values(m, {b"contact", b"m", b"from", b"f", b"to", b"t", b"route",
                                      b"record-route", b"via", b"v", b"refer-to", b"path"}))
        first = m.split(b"\r\n", 1)[0].split(b" ")
        if len(first) == 3 and not m.startswith(b"SIP/"):
            uris.add(first[1])
    auth.update([
        b'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        b'uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", '
        b'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
        b'Digest username="a\\"b", realm="example.com", nonce="x", uri="sip:example.com", '
        b'algorithm=SHA-256, response="' + b"ab" * 32 + b'"',
        b'Digest username="u", realm="r", nonce="n", uri="u", algorithm=SHA-512-256, '
        b'qop=auth-int, nc=0000000a, cnonce="c", response="' + b"cd" * 32 + b'"',
        b"Basic dXNlcjpwYXNz",
        b"MD5,SHA-256, SHA-512-256",
    ])
    uris.update([
        b'"A \\"q\\"" <sip:a@[2001:db8::1]:5062;transport=tcp;lr>;expires=60;q=0.7',
        b'*', b'<sip:x@y;ob>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000000>";reg-id=1',
        b"sips:user:pw@host.example.com:5061;maddr=239.255.255.1;ttl=15?Subject=x&Priority=y",
        b"tel:+1-201-555-0123;phone-context=example.com",
        b"SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK77;received=192.0.2.1;rport=5070",
        b"sip:a@b;alias=192.0.2.1~5070~1",
    ])
    for v in auth:
        put("auth", v)
    for v in uris:
        put("uri", v)


main()
