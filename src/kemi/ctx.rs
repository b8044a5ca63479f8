//! The per-message context: the received bytes, their parse index, and what
//! the script asked for (rewrites, replies, drop). Allocated once per shard
//! slot and reused; nothing here is copied per KSR call.

use std::net::SocketAddr;

use crate::sip::{Dest, Edits, Framing, Limits, ParseError, Parsed, Proto, SipMsg, Status};

/// One datagram to send once the route has finished (or suspended).
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub start: u32,
    pub end: u32,
    pub dst: Dest,
}

/// One more destination for a request, beside the Request-URI
/// (`KSR.corex.append_branch`, a `registrar.lookup` that found several
/// contacts). `t_relay()` sends one client transaction per branch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchSpec {
    /// Request-URI of the branch.
    pub uri: Vec<u8>,
    /// Where to send it instead of the URI's host (`$du` of the branch).
    pub dst_uri: Option<Vec<u8>>,
    /// Path vector (RFC 3327) to add as Route headers, `<uri>,<uri>`.
    pub path: Option<Vec<u8>>,
    /// q-value in thousandths; `None` = unspecified (ranks as 1.0).
    pub q: Option<u16>,
    /// Branch flags (`KSR.setbflag` on that branch).
    pub bflags: u32,
}

/// A received message and the route's effects on it.
pub struct MsgCtx {
    /// Receive buffer; `len` bytes are valid.
    pub buf: Vec<u8>,
    pub len: usize,
    pub parsed: Parsed,
    pub src: SocketAddr,
    pub local: SocketAddr,
    /// Transport the message arrived on (`$pr`); replies to a request
    /// that came on a connection go back on it.
    pub proto: Proto,
    /// Id of the TCP/TLS connection the message came on (`$conid`).
    pub conn_id: Option<u64>,
    /// Rewritten Request-URI (`$ru`, `$rU`, `$rd`, `$rp`, registrar lookup).
    pub new_ruri: Option<Vec<u8>>,
    /// Destination URI (`$du`).
    pub dst_uri: Option<Vec<u8>>,
    /// Header edits to the message (KSR.hdr.*).
    pub edits: Edits,
    /// Path vector of the main branch (set by `registrar.lookup`): sent as
    /// Route headers in front of the request.
    pub path: Option<Vec<u8>>,
    /// q-value of the main branch (registrar lookup), thousandths.
    pub ruri_q: Option<u16>,
    /// Branch flags of the main branch (`KSR.setbflag`, `$bf`).
    pub bflags: u32,
    /// Extra branches (`append_branch`, lookup forking), in order.
    pub branches: Vec<BranchSpec>,
    /// Record-Route the route asked for (`KSR.rr.record_route*`), added to
    /// the request when it is relayed.
    pub rr: super::rr::RrPending,
    /// Transaction state of this message (KSR.tm).
    pub tm: super::tm::TmCtx,
    /// Max-Forwards value `KSR.maxfwd.process_maxfwd` gave the request
    /// (header added or decremented through `edits`); None when not called
    /// or the value was 0.
    pub maxfwd: Option<u32>,
    /// Complete header lines (CRLF-terminated) to add to the next local reply.
    pub reply_headers: Vec<u8>,
    /// Body of the next local reply (`KSR.textops.set_reply_body`).
    pub reply_body: Vec<u8>,
    /// Encoded datagrams to send, back to back in `out_buf`.
    pub out_buf: Vec<u8>,
    pub out: Vec<Outgoing>,
    /// Status of the last local reply sent for this message.
    pub replied: Option<u16>,
    pub dropped: bool,
    /// Message flags (`KSR.setflag`).
    pub flags: u32,
    /// Scratch space for building replies.
    pub scratch: Vec<u8>,
    /// Reply code/reason a module suggests for `KSR.sl.sl_reply_error()`.
    pub last_error: Option<(u16, &'static str)>,
    /// Auth results of this message (`$au`, `$ar`, `$adu`).
    pub auth_user: Option<String>,
    pub auth_realm: Option<String>,
    pub auth_digest_uri: Option<String>,
    /// The last credentials check found a stale nonce (challenge with stale=true).
    pub auth_stale: bool,
    /// The last credentials check could not read the subscriber (database
    /// down, hung or its queue full): a challenge answers 500 instead.
    pub auth_db_failed: bool,
    /// `KSR.force_rport()`: replies go to the source port and carry `rport=`
    /// even when the top Via did not ask for it.
    pub force_rport: bool,
    /// `KSR.set_reply_no_connect()` / `KSR.set_forward_no_connect()`: replies
    /// / requests of this message only go on a connection that exists (no
    /// new TCP/TLS connection is opened for them).
    pub reply_no_connect: bool,
    pub forward_no_connect: bool,
    /// `KSR.corex.set_send_socket("tcp:...")`: the transport relayed
    /// requests use whatever their URI says.
    pub force_proto: Option<Proto>,
    /// Script flags (`KSR.setsflag`): like Kamailio's, zero at the start of
    /// each route run.
    pub sflags: u32,
    /// Extended flags (`KSR.corex.setxflag`, 0..63).
    pub xflags: u64,
    /// Source URI `KSR.nathelper.fix_nated_register()` stored for the
    /// registrar (`received` of the saved contacts).
    pub nat_received: Option<String>,
    /// Reply a failed sanity check asked for (`KSR.sanity.sanity_reply()`).
    pub sanity_error: Option<(u16, &'static str)>,
    /// `$avp` / `$xavp` of this message (KSR.pv, KSR.pvx).
    pub pv: super::pv::PvMsg,
    /// The message's dialog (KSR.dialog), once known.
    pub dlg: Option<super::dialog_store::DlgId>,
    /// `dlg_manage()` created that dialog on this message.
    pub dlg_new: bool,
    /// `KSR.set_advertised_address` / `set_advertised_port`: the host and
    /// port written in this message's Via and Record-Route when relayed.
    pub adv_addr: Option<Vec<u8>>,
    pub adv_port: Option<u16>,
    /// `$dlg_ctx(timeout_bye)` / `$dlg_ctx(timeout_int)` set before the
    /// dialog exists (applied by `dlg_manage()`).
    pub dlg_ctx_bye: Option<bool>,
    pub dlg_ctx_timeout: Option<u64>,
    /// `set_dlg_profile` before the dialog exists: (profile, value), added
    /// when `dlg_manage()` creates it (at most 32).
    pub dlg_profiles: Vec<(u16, Vec<u8>)>,
    /// The HTTP request this context holds (KSR.xhttp), if it is one.
    pub http: Option<Box<super::xhttp::HttpCtx>>,
    /// `KSR.websocket.close*()`: close that connection with (code, reason).
    pub ws_close: Option<(u16, Vec<u8>)>,
}

impl MsgCtx {
    /// Applies the shard's per-message bounds (`[shard] max_edits`,
    /// `pv_max_*`): once, when the shard makes the context.
    pub fn set_limits(&mut self, l: &super::limits::MsgLimits) {
        self.edits.set_limits(l.max_edits, l.max_edit_bytes);
        self.pv
            .set_limits(l.pv_max_value_bytes, l.pv_max_bytes_per_msg);
    }

    /// A context whose buffer grows to the datagram it holds (up to
    /// `max_msg_bytes + 1`: one spare byte tells a truncated datagram apart).
    pub fn new(max_msg_bytes: usize, max_headers: usize) -> MsgCtx {
        let _ = max_headers;
        MsgCtx {
            buf: Vec::with_capacity((max_msg_bytes + 1).min(2048)),
            len: 0,
            parsed: Parsed::default(),
            src: SocketAddr::from(([0, 0, 0, 0], 0)),
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            proto: Proto::Udp,
            conn_id: None,
            new_ruri: None,
            dst_uri: None,
            edits: Edits::default(),
            path: None,
            ruri_q: None,
            bflags: 0,
            branches: Vec::new(),
            rr: Default::default(),
            tm: Default::default(),
            maxfwd: None,
            reply_headers: Vec::new(),
            reply_body: Vec::new(),
            out_buf: Vec::with_capacity(1024),
            out: Vec::with_capacity(2),
            replied: None,
            dropped: false,
            flags: 0,
            scratch: Vec::with_capacity(1024),
            last_error: None,
            auth_user: None,
            auth_realm: None,
            auth_digest_uri: None,
            auth_stale: false,
            auth_db_failed: false,
            force_rport: false,
            reply_no_connect: false,
            forward_no_connect: false,
            force_proto: None,
            sflags: 0,
            xflags: 0,
            nat_received: None,
            sanity_error: None,
            pv: Default::default(),
            dlg: None,
            dlg_new: false,
            adv_addr: None,
            adv_port: None,
            dlg_ctx_bye: None,
            dlg_ctx_timeout: None,
            dlg_profiles: Vec::new(),
            http: None,
            ws_close: None,
        }
    }

    /// Takes a copy of a received datagram (the context is sized to it, so a
    /// suspended or queued message holds its own bytes, not a 64 KiB slot)
    /// and clears the previous message's effects.
    pub fn load(&mut self, bytes: &[u8], src: SocketAddr, local: SocketAddr) {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        self.len = bytes.len();
        self.src = src;
        self.local = local;
        self.proto = Proto::Udp;
        self.conn_id = None;
        self.reset();
    }

    /// Frees buffers that grew beyond `keep_bytes` (a rare large message),
    /// so a pooled context does not pin them.
    pub fn shrink(&mut self, keep_bytes: usize) {
        for b in [&mut self.buf, &mut self.out_buf, &mut self.scratch] {
            if b.capacity() > keep_bytes {
                b.clear();
                b.shrink_to(keep_bytes / 4);
            }
        }
    }

    /// Clears the route's effects before the next message.
    pub fn reset(&mut self) {
        self.new_ruri = None;
        self.dst_uri = None;
        self.edits.clear();
        self.path = None;
        self.ruri_q = None;
        self.bflags = 0;
        self.branches.clear();
        self.rr = Default::default();
        self.tm = Default::default();
        self.maxfwd = None;
        self.reply_headers.clear();
        self.reply_body.clear();
        self.out_buf.clear();
        self.out.clear();
        self.replied = None;
        self.dropped = false;
        self.flags = 0;
        self.last_error = None;
        self.auth_user = None;
        self.auth_realm = None;
        self.auth_digest_uri = None;
        self.auth_stale = false;
        self.auth_db_failed = false;
        self.force_rport = false;
        self.reply_no_connect = false;
        self.forward_no_connect = false;
        self.force_proto = None;
        self.sflags = 0;
        self.xflags = 0;
        self.nat_received = None;
        self.sanity_error = None;
        self.pv.clear();
        self.dlg = None;
        self.dlg_new = false;
        self.adv_addr = None;
        self.adv_port = None;
        self.dlg_ctx_bye = None;
        self.dlg_ctx_timeout = None;
        self.dlg_profiles.clear();
        self.http = None;
        self.ws_close = None;
    }

    /// Parses `buf[..len]` as one datagram.
    pub fn parse(&mut self, limits: &Limits) -> Result<(), ParseError> {
        match crate::sip::parse(
            &self.buf[..self.len],
            Framing::Datagram,
            limits,
            &mut self.parsed,
        )? {
            Status::Complete(_) => Ok(()),
            Status::Partial => Err(ParseError::TruncatedBody),
        }
    }

    #[inline]
    pub fn msg(&self) -> SipMsg<'_> {
        SipMsg::new(&self.buf[..self.len], &self.parsed)
    }

    /// Where a reply to this message goes when it goes to `addr`: over the
    /// connection the request came on (RFC 3261 §18.2.2), else UDP.
    #[inline]
    pub fn reply_dest(&self, addr: SocketAddr) -> Dest {
        if self.proto.is_stream() {
            Dest::new(self.src, self.proto)
        } else {
            Dest::udp(addr)
        }
    }

    /// Queues `bytes` for sending to `dst`.
    pub fn push_out(&mut self, bytes: &[u8], dst: Dest) {
        let start = self.out_buf.len();
        self.out_buf.extend_from_slice(bytes);
        self.out.push(Outgoing {
            start: start as u32,
            end: self.out_buf.len() as u32,
            dst,
        });
    }

    /// The current Request-URI: rewritten or original.
    pub fn ruri(&self) -> Option<&[u8]> {
        match &self.new_ruri {
            Some(r) => Some(r),
            None => self.msg().ruri(),
        }
    }
}
