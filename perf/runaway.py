#!/usr/bin/env python3
"""What a runaway route costs the other shard: a release sipshard with 2
shards and the default lua_max_instructions runs a script whose route loops
forever for R-URI user `loop`; while each of 3 looping requests runs, 16
other clients (spread over both shards by the kernel) send OPTIONS. Prints
when the loop was stopped (500) and how many other requests were answered
within 20 ms meanwhile.

    cargo build --release && perf/runaway.py
"""
import socket, time, subprocess, os, sys, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp(prefix="sipshard-runaway-")
open(os.path.join(work, "loop.lua"), "w").write("""function ksr_request_route()
    if KSR.pv.get("$rU") == "loop" then
        while true do end
    end
    KSR.sl.sl_send_reply(200, "OK")
end
""")
open(os.path.join(work, "s.toml"), "w").write('[core]\nlisten = "127.0.0.1:5994"\n[rpc]\nlisten = "127.0.0.1:5995"\n')
srv = subprocess.Popen([os.path.join(ROOT, "target/release/sipshard"), "run", "-c", os.path.join(work, "s.toml"), "-s", os.path.join(work, "loop.lua"), "--cores", "2"], stderr=open(os.path.join(work, "srv.log"), "w"))
time.sleep(1.5)
def req(s, user, n):
    port = s.getsockname()[1]
    return (f"OPTIONS sip:{user}@127.0.0.1:5994 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}{n}\r\n"
            f"From: <sip:t@127.0.0.1>;tag=a{n}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: c{user}{n}-{port}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
others = []
for i in range(16):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); s.settimeout(0.02); others.append(s)
lp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); lp.bind(("127.0.0.1",0)); lp.setblocking(False)
for rnd in range(3):
    t0 = time.time(); lp.sendto(req(lp,"loop",rnd), ("127.0.0.1",5994))
    sent=ans=0; per=[0]*16; n=0
    while True:
        try:
            d,_ = lp.recvfrom(65535); break
        except BlockingIOError: pass
        for i,s in enumerate(others):
            n+=1; s.sendto(req(s,"ok",n), ("127.0.0.1",5994)); sent+=1
            try:
                d2,_ = s.recvfrom(65535)
                if d2.startswith(b"SIP/2.0 200"): ans+=1; per[i]+=1
            except socket.timeout: pass
    dt=time.time()-t0
    # drain
    for s in others:
        s.settimeout(0.3)
        try:
            while True: s.recvfrom(65535)
        except socket.timeout: pass
        s.settimeout(0.02)
    print(f"round {rnd}: loop answered {d[:20]!r} after {dt*1000:.0f} ms; other requests answered within 20 ms: {ans}/{sent}; clients with answers {sum(1 for p in per if p)}/16")
srv.terminate(); srv.wait()
