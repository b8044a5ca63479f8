//! A driver for random KSR call sequences on random messages, shared by the
//! `ksr` fuzz target (`fuzz/fuzz_targets/ksr.rs`) and a unit test.
//!
//! Input layout: `k = data[0] * 4`; `data[1..1 + k]` is the *plan*, the rest
//! the *message*. A message that does not parse is replaced by one of a few
//! built-in ones (chosen by the plan), so random bytes still reach the KSR
//! layer. The plan is decoded into up to [`MAX_OPS`] calls of live `KSR.*`
//! functions (the ones of `pv`, `pvx`, `hdr`, `siputils`, `nathelper`,
//! `sanity`, `htable`, `kx`, `textops`, `textopsx`, `dialog` and
//! `dispatcher` weighted up; dispatcher with two sets from [`DS_LIST`]), each with arguments of the types
//! its signature row gives (ints from interesting values, strings from a
//! dictionary of pv names with transformations, header names, URIs, or raw
//! plan bytes); sometimes one argument too few or too many. The calls run
//! inside `ksr_request_route()` (`ksr_reply_route()` for replies), each
//! under `pcall`: Lua errors are fine, a Rust panic is a bug (mlua's `pcall`
//! does not catch panics). Afterwards the route's header edits are
//! assembled and the result parsed again (it may be malformed: the script
//! can append anything; it must not panic).
//!
//! Functions doing I/O outside the message (files, sending, forwarding,
//! `t_relay`) or calling arbitrary routes (`x.modf`) are left out.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use mlua::{Function, Lua, Table, Value};

use super::services::{Services, SharedTables};
use super::{Engine, EngineConfig, MsgCtx, Myself};
use crate::config::{Config, ShardTuning};
use crate::sip::{self, Framing, Limits, Parsed, Status};

/// Most KSR calls one input makes.
pub const MAX_OPS: usize = 48;

const SCRIPT: &str = r#"
local unpack = table.unpack or unpack
local function run_plan()
  local plan = FUZZ_PLAN
  if plan == nil then return end
  for i = 1, #plan do
    local op = plan[i]
    pcall(op.f, unpack(op, 1, op.n))
  end
end
function ksr_request_route() run_plan() end
function ksr_reply_route() run_plan() end
function ksr_onreply_route() run_plan() end
function ksr_failure_route() run_plan() end
"#;

const CONFIG: &str = r#"
[[htable]]
name = "ipban"
size = 4
autoexpire = 300
max_items = 1000

[[htable]]
name = "t"
size = 2
initval = 0
max_items = 1000

[permissions]
enable = true

[dialog]
profiles_no_value = "calls"
profiles_with_value = "caller"
max_dialogs = 1000

[dispatcher]
list_file = "@LIST@"
flags = 2
"#;

/// The dispatcher sets (written to a temporary file once, at build).
const DS_LIST: &str = "1 sip:10.0.0.2:5060 0 0 weight=50\n1 sip:10.0.0.3:5060 0 0 weight=50\n\
2 sip:[2001:db8::5]:5080;transport=tcp 8 10 duid=x\n";

const LOCAL: &str = "10.0.0.1:5060";

/// Messages used when the input's own does not parse.
const BUILTIN: &[&[u8]] = &[
    b"INVITE sip:bob@example.com;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1;rport\r\n\
Via: SIP/2.0/TCP 10.1.1.1:5070;branch=z9hG4bK-0;received=10.1.1.1\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=ft1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: c1@192.0.2.9\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.1.1.1:5070;transport=tcp>;expires=60\r\n\
Record-Route: <sip:p1.example.com;lr>\r\n\
Route: <sip:10.0.0.1;lr;ftag=ft1>\r\n\
User-Agent: fuzz\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 76\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
    b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.2:5060;branch=z9hG4bK-r1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=r1\r\n\
To: <sip:alice@example.com>\r\n\
Call-ID: reg1@192.168.1.2\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:alice@192.168.1.2:5060>;expires=3600;q=0.5, \"x\" <sip:a2@[2001:db8::1]:5062;ob>;+sip.instance=\"<urn:uuid:1>\"\r\n\
Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"abc\", uri=\"sip:example.com\", response=\"00112233445566778899aabbccddeeff\", qop=auth, nc=00000001, cnonce=\"c\"\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n",
    b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsip1.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1;rport=5060;received=192.0.2.9\r\n\
From: <sip:alice@example.com>;tag=ft1\r\n\
To: <sip:bob@example.com>;tag=tt1\r\n\
Call-ID: c1@192.0.2.9\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:bob@203.0.113.5:5060>\r\n\
Content-Length: 0\r\n\r\n",
    b"OPTIONS sip:10.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-o1\r\n\
From: <sip:ping@invalid>;tag=o1\r\n\
To: <sip:10.0.0.1>\r\n\
Call-ID: o1\r\n\
CSeq: 7 OPTIONS\r\n\
Max-Forwards: 0\r\n\
Content-Length: 0\r\n\r\n",
];

/// Strings arguments are drawn from.
const DICT: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "2",
    "65536",
    "x",
    "y",
    "t",
    "k",
    "ipban",
    "$si",
    "$ru",
    "$rU",
    "$rd",
    "$rp",
    "$rz",
    "$fu",
    "$fU",
    "$fd",
    "$fn",
    "$ft",
    "$tu",
    "$tU",
    "$tt",
    "$ci",
    "$cs",
    "$rm",
    "$rs",
    "$rr",
    "$si",
    "$sp",
    "$Ri",
    "$Rp",
    "$du",
    "$ds",
    "$ai",
    "$ct",
    "$cT",
    "$cl",
    "$ua",
    "$rb",
    "$mb",
    "$ml",
    "$br",
    "$bR",
    "$ruid",
    "$T_branch_idx",
    "$hdr(Via)",
    "$hdr(v)",
    "$hdr(Contact)",
    "$(hdr(Via)[1])",
    "$(hdr(Via)[-1])",
    "$(hdr(Via)[*])",
    "$hdrc(Via)",
    "$var(x)",
    "$var(y)",
    "$avp(a)",
    "$(avp(a)[*])",
    "$(avp(a)[0])",
    "$xavp(x=>y)",
    "$xavp(x[0]=>y)",
    "$sht(t=>k)",
    "$sht(ipban=>$si)",
    "$shtex(t=>k)",
    "$shtcn(t=>k.*)",
    "$(ru{s.len})",
    "$(ru{uri.user})",
    "$(ru{uri.host})",
    "$(ru{uri.param,transport})",
    "$(ru{uri.params}{param.count,;})",
    "$(fu{s.substr,1,3})",
    "$(fu{s.substr,-100,1000})",
    "$(ci{s.md5})",
    "$(ci{s.sha256})",
    "$(var(x){s.int})",
    "$(ct{tobody.uri})",
    "$(ct{nameaddr.uri})",
    "$(ct{param.value,expires})",
    "$(rb{line.count})",
    "$(rb{line.at,1})",
    "$(ua{s.select,0, })",
    "$(ua{s.select,-5,;})",
    "$(hdr(X){s.escape.common})",
    "$(ru{s.strip,-1})",
    "$(ru{s.striptail,99})",
    "$(ru{s.ftime,%Y})",
    "$(ru{s.unbracket})",
    "$(ru{s.encode.base64}{s.decode.base64})",
    "$(ru{s.rm,a})",
    "$(ru{s.replace,a,b})",
    "$(ru{s.numeric})",
    "$(ru{s.tolower})",
    "$(ru{s.prefixes,4})",
    "$(ru{s.corehash,128})",
    "$(ru{s.urlencode.param})",
    "$(ru{s.unquote})",
    "$(ru{s.after,@})",
    "$(ru{s.before,@})",
    "$(ru{s.encode.hexa})",
    "$(var(x){s.decode.hexa})",
    "$(var(x){re.subst,/a/b/g})",
    "$(ru{uri.saor})",
    "$(ru{uri.tosocket})",
    "$(fu{uri.duri})",
    "$(si{ip.isip})",
    "$(si{ip.family})",
    "$(var(x){dns.query})",
    "$(var(x){json.parse,a})",
    "$null",
    "$",
    "$(",
    "$(ru{",
    "$(ru{s.",
    "$((",
    "$var(",
    "$hdr()",
    "$(hdr(Via)[999999999999])",
    "$(ru{s.substr,a,b})",
    "$(ru{s.select,9999999999,,})",
    "$(var(x){s.int}{s.len}{s.len}{s.len})",
    "Via",
    "v",
    "Contact",
    "m",
    "X-Fuzz",
    "Route",
    "Record-Route",
    "Content-Length",
    "l",
    "Max-Forwards",
    "To",
    "From",
    "Call-ID",
    "CSeq",
    "Authorization",
    "User-Agent",
    "Expires",
    "X-Fuzz: a\r\n",
    "X-A: 1\r\nX-B: 2\r\n",
    "Via: SIP/2.0/UDP 1.2.3.4\r\n",
    "X-N: \r\n",
    ":\r\n",
    "\r\n",
    "\r\n\r\n",
    "sip:alice@example.com",
    "sip:bob@192.0.2.1:5060;transport=tcp;lr",
    "sips:[2001:db8::1]:5061",
    "sip:[2001:db8::1",
    "tel:+1234;phone-context=x",
    "sip:a@b;x=1;y;z=%41?h=v",
    "<sip:x@y>",
    "sip:",
    "sip:@",
    "sip:a@b:99999",
    "sip:a@b:0",
    "sip:;;;",
    "sip:a@b;alias=1.2.3.4~5060~1",
    "sip:a@b;alias=1.2.3.4~99999~9",
    "sip:a@b;alias=~~",
    "example.com",
    "10.0.0.1",
    "192.168.0.1",
    "2001:db8::1",
    "[2001:db8::1]",
    "1.2.3.4:5060",
    "udp",
    "tcp",
    "tls",
    "ws",
    "sctp",
    "expires",
    "lr",
    "transport",
    ";a=1;b",
    "a=1;b=2",
    "a.*",
    "[",
    "(",
    "*",
    "\\",
    "/a/b/",
    "/(/x/",
    "%",
    "%00",
    "%zz",
    "\0",
    "\u{e9}",
    "\u{ffff}",
    "INVITE,REGISTER",
    "INVITE",
    "ACK",
    "text/plain",
    "application/sdp",
    "17",
    "4294967296",
    "-2147483649",
];

/// Interesting ints.
const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    31,
    32,
    63,
    64,
    100,
    180,
    200,
    299,
    300,
    404,
    486,
    500,
    699,
    700,
    1000,
    65535,
    65536,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    i64::MAX,
    i64::MIN,
];

/// Modules weighted up in the plan's choice.
const FOCUS: &[&str] = &[
    "pv.",
    "pvx.",
    "hdr.",
    "siputils.",
    "nathelper.",
    "sanity.",
    "htable.",
    "kx.",
    "textops.",
    "textopsx.",
    "dialog.",
    "dispatcher.",
];

fn denied(name: &str) -> bool {
    name.contains("file_")
        || name.contains("send_data")
        || name.contains("modf")
        || name.contains("sleep")
        || name.contains("t_relay")
        || name == "forward"
        || name == "forward_uri"
        || name.starts_with("corex.set_s")
        || name.ends_with("get_env")
        || name.ends_with("get_envn")
}

struct Func {
    f: Function,
    /// One entry per parameter: true for an int.
    ints: Vec<bool>,
    /// Parameters that may be left out (trailing optional ones).
    optional: usize,
}

struct Harness {
    eng: Engine,
    funcs: Vec<Func>,
    runs: u64,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn build() -> Result<Harness, String> {
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let list =
        std::env::temp_dir().join(format!("sipshard-fuzz-ds-{}-{n}.list", std::process::id()));
    std::fs::write(&list, DS_LIST).map_err(|e| e.to_string())?;
    let config = CONFIG.replace("@LIST@", &list.display().to_string());
    let cfg = Config::from_toml(&config, "fuzz").map_err(|e| e.to_string())?;
    let tuning = ShardTuning::default();
    let tables =
        std::sync::Arc::new(SharedTables::new(1, &cfg.auth, &cfg.registrar, 0).with_modules(&cfg));
    if let Some(ds) = &tables.dispatcher {
        // a list file: loading awaits nothing
        let mut load = std::pin::pin!(super::dispatcher::load(ds, &cfg.dispatcher, None));
        match load.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => {
                r?;
            }
            Poll::Pending => return Err("dispatcher list load pending".into()),
        }
    }
    let _ = std::fs::remove_file(&list);
    let services = Rc::new(Services::new(
        0,
        1,
        tables,
        &cfg.auth,
        &cfg.registrar,
        [7u8; 32],
        None,
        0,
    )?);
    let local = LOCAL.parse().map_err(|e| format!("{e}"))?;
    let eng = Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script: SCRIPT,
        script_name: "fuzz.lua",
        myself: Myself::new(local, &["proxy.example.com".into()]),
        server_header: "sipshard",
        tuning: &tuning,
        services,
        test_hooks: false,
        defines: &[],
        local_addr: local,
        route: Default::default(),
    })?;
    let lua = eng.lua();
    let sigs = super::exports::signatures();
    let mut funcs = Vec::new();
    for name in super::exports::live_names(&lua)? {
        if denied(&name) {
            continue;
        }
        let Some(f) = lookup(&lua, &name) else {
            continue;
        };
        let (ints, optional) = match sigs.get(&name) {
            Some(s) => (
                s.params.iter().map(|(t, _)| t.contains("int")).collect(),
                s.params.iter().filter(|(t, _)| t.starts_with('[')).count(),
            ),
            None => (vec![false, false], 2),
        };
        let weight = if FOCUS.iter().any(|m| name.starts_with(m)) {
            3
        } else {
            1
        };
        for _ in 0..weight {
            funcs.push(Func {
                f: f.clone(),
                ints: ints.clone(),
                optional,
            });
        }
    }
    if funcs.is_empty() {
        return Err("no KSR functions".into());
    }
    Ok(Harness {
        eng,
        funcs,
        runs: 0,
    })
}

fn lookup(lua: &Lua, name: &str) -> Option<Function> {
    let mut t: Table = lua.globals().get("KSR").ok()?;
    let mut parts = name.split('.').peekable();
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            return t.get(p).ok();
        }
        t = t.get(p).ok()?;
    }
    None
}

/// Plan bytes; zeros once exhausted.
struct Cursor<'a> {
    d: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> u8 {
        let b = self.d.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        b
    }
    fn done(&self) -> bool {
        self.i >= self.d.len()
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = self.i.min(self.d.len());
        let e = (s + n).min(self.d.len());
        self.i = e;
        self.d.get(s..e).unwrap_or(&[])
    }
    fn int(&mut self) -> i64 {
        let b = self.byte();
        if b < 0xE0 {
            INTS.get(usize::from(b) % INTS.len()).copied().unwrap_or(0)
        } else {
            let r = self.take(4);
            let mut v = [0u8; 4];
            v[..r.len()].copy_from_slice(r);
            i64::from(i32::from_le_bytes(v))
        }
    }
    fn string(&mut self, lua: &Lua) -> mlua::Result<Value> {
        let b = self.byte();
        let bytes: Vec<u8> = if b < 0xC0 {
            DICT.get(usize::from(b) % DICT.len())
                .copied()
                .unwrap_or("")
                .as_bytes()
                .to_vec()
        } else if b < 0xE0 {
            // a dictionary pv name wrapped in a raw transformation
            let base = DICT
                .get(usize::from(self.byte()) % DICT.len())
                .copied()
                .unwrap_or("");
            let n = usize::from(self.byte() % 32);
            let raw = self.take(n);
            let mut s = b"$(".to_vec();
            s.extend_from_slice(base.trim_start_matches('$').as_bytes());
            s.push(b'{');
            s.extend_from_slice(raw);
            s.extend_from_slice(b"})");
            s
        } else {
            let n = usize::from(self.byte() % 64);
            self.take(n).to_vec()
        };
        Ok(Value::String(lua.create_string(&bytes)?))
    }
}

/// Builds the Lua plan table from the plan bytes.
fn plan_table(lua: &Lua, funcs: &[Func], plan: &[u8]) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let mut c = Cursor { d: plan, i: 0 };
    let mut k = 0;
    while !c.done() && k < MAX_OPS {
        let idx = usize::from(u16::from_le_bytes([c.byte(), c.byte()]));
        let Some(func) = funcs.get(idx % funcs.len()) else {
            break;
        };
        let shape = c.byte();
        let mut n = func.ints.len();
        match shape & 7 {
            0 => n = n.saturating_sub(func.optional.max(1)),
            1 => n += 1,
            _ => {}
        }
        let op = lua.create_table()?;
        for i in 0..n {
            let v = if func.ints.get(i).copied().unwrap_or(false) && shape & 0x80 == 0 {
                Value::Integer(c.int())
            } else if func.ints.get(i).copied().unwrap_or(false) {
                // an int parameter given as a (maybe numeric) string
                c.string(lua)?
            } else if shape & 0x40 != 0 && i == 0 {
                Value::Integer(c.int())
            } else {
                c.string(lua)?
            };
            op.raw_set(i + 1, v)?;
        }
        op.raw_set("n", n)?;
        op.raw_set("f", func.f.clone())?;
        k += 1;
        t.raw_set(k, op)?;
    }
    Ok(t)
}

fn parses(msg: &[u8]) -> bool {
    let mut p = Parsed::default();
    matches!(
        sip::parse(msg, Framing::Datagram, &Limits::default(), &mut p),
        Ok(Status::Complete(_))
    )
}

/// Runs one input. `Err` only for harness failures (the engine could not be
/// built); a Rust panic inside a KSR function propagates.
pub fn drive(data: &[u8]) -> Result<(), String> {
    let k = usize::from(data.first().copied().unwrap_or(0)) * 4;
    let plan = data.get(1..(1 + k).min(data.len())).unwrap_or(&[]);
    let mut msg = data.get(1 + k..).unwrap_or(&[]);
    if !parses(msg) {
        let i = usize::from(plan.first().copied().unwrap_or(0)) % BUILTIN.len();
        msg = BUILTIN.get(i).copied().unwrap_or(b"");
    }
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        if h.as_ref().is_none_or(|x| x.runs >= 5000) {
            *h = Some(build()?);
        }
        let Some(harness) = h.as_mut() else {
            return Err("no harness".to_string());
        };
        harness.runs += 1;
        let lua = harness.eng.lua();
        let table = plan_table(&lua, &harness.funcs, plan).map_err(|e| e.to_string())?;
        lua.globals()
            .set("FUZZ_PLAN", table)
            .map_err(|e| e.to_string())?;
        let mut ctx = Box::new(MsgCtx::new(65535, 128));
        ctx.load(
            msg,
            "192.0.2.9:5060".parse().map_err(|e| format!("{e}"))?,
            LOCAL.parse().map_err(|e| format!("{e}"))?,
        );
        if ctx.parse(&Limits::default()).is_err() {
            return Ok(());
        }
        let request = matches!(ctx.parsed.start, sip::StartLine::Request { .. });
        let mut cx = Context::from_waker(Waker::noop());
        let done = if request {
            let mut run = harness.eng.run_request(ctx);
            match Pin::new(&mut run).poll(&mut cx) {
                Poll::Ready((ctx, _)) => Some(ctx),
                Poll::Pending => None,
            }
        } else {
            let mut run = harness.eng.process_reply(ctx);
            match run.as_mut().poll(&mut cx) {
                Poll::Ready((ctx, _)) => Some(ctx),
                Poll::Pending => None,
            }
        };
        let _ = lua.globals().set("FUZZ_PLAN", Value::Nil);
        match done {
            Some(ctx) => {
                let mut out = Vec::new();
                ctx.edits.assemble(
                    &ctx.buf[..ctx.len.min(ctx.buf.len())],
                    &ctx.parsed,
                    &mut out,
                );
                let _ = parses(&out);
                harness.eng.drain_tm(|_, _| {});
            }
            // A suspended route (a database or transaction wait): start
            // over with a fresh engine rather than keep half-run state.
            None => *h = None,
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_run_without_panics() {
        let mut seed = 0x1234_5678_u64;
        for round in 0..200u32 {
            let mut data = vec![64u8];
            for _ in 0..256 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.push(seed as u8);
            }
            if let Some(m) = BUILTIN.get(round as usize % BUILTIN.len()) {
                data.extend_from_slice(m);
            }
            drive(&data).unwrap();
        }
    }

    #[test]
    fn dispatcher_dialog_and_textops_are_in_the_plan() {
        let h = build().unwrap();
        let lua = h.eng.lua();
        for name in [
            "dispatcher.ds_select_dst",
            "dialog.dlg_manage",
            "textops.search",
        ] {
            let f = lookup(&lua, name).unwrap_or_else(|| panic!("{name} not live"));
            assert!(h.funcs.iter().any(|x| x.f == f), "{name} not in the plan");
        }
        // the sets of DS_LIST are loaded: set 2 exists, set 3 does not
        let exists = lookup(&lua, "dispatcher.ds_list_exists").unwrap();
        assert_eq!(exists.call::<i64>(2).unwrap(), 1);
        assert!(exists.call::<i64>(3).unwrap() < 0);
    }

    #[test]
    fn plan_bytes_decode_to_typed_calls() {
        let h = build().unwrap();
        let lua = h.eng.lua();
        let sets = lookup(&lua, "pv.sets").unwrap();
        let idx = h.funcs.iter().position(|f| f.f == sets).unwrap() as u16;
        let dict = |s: &str| DICT.iter().position(|d| *d == s).unwrap() as u8;
        let [lo, hi] = idx.to_le_bytes();
        // shape 2: the signature's arity, typed; two dictionary strings
        let plan = [lo, hi, 2, dict("$var(x)"), dict("t")];
        let t = plan_table(&lua, &h.funcs, &plan).unwrap();
        assert_eq!(t.raw_len(), 1);
        let op: Table = t.raw_get(1).unwrap();
        assert!(op.raw_get::<Function>("f").unwrap() == sets);
        assert_eq!(op.raw_get::<usize>("n").unwrap(), 2);
        assert_eq!(op.raw_get::<String>(1).unwrap(), "$var(x)");
        assert_eq!(op.raw_get::<String>(2).unwrap(), "t");
        // shape 1: one argument too many
        let plan = [lo, hi, 1, dict("x"), dict("y"), dict("k")];
        let op: Table = plan_table(&lua, &h.funcs, &plan)
            .unwrap()
            .raw_get(1)
            .unwrap();
        assert_eq!(op.raw_get::<usize>("n").unwrap(), 3);
    }
}
