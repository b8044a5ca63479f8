//! Per-shard counters and route-time histograms, and the snapshot type the
//! control plane merges on read.
//!
//! Shards own their `ShardStats` outright (no atomics, no locks on the message
//! path); the control plane asks for a [`ShardSnapshot`] over a channel.

pub mod hlog;
pub mod prom;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Route histograms record nanoseconds, 1 ns .. 60 s, 3 significant digits.
pub const HIST_MAX_NS: u64 = 60_000_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_SIGFIG)
        .expect("static histogram bounds are valid")
}

macro_rules! counters {
    ($( $variant:ident => $name:literal, $help:literal; )*) => {
        /// Every counter a shard keeps. Names follow Kamailio's `stats.fetch`
        /// (`group.name`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $( $variant, )* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name, )* }
            }
            pub fn help(self) -> &'static str {
                match self { $( Counter::$variant => $help, )* }
            }
        }
    };
}

counters! {
    RcvRequests => "core.rcv_requests", "SIP requests received";
    RcvReplies => "core.rcv_replies", "SIP replies received";
    FwdRequests => "core.fwd_requests", "requests forwarded";
    FwdReplies => "core.fwd_replies", "replies forwarded";
    DropRequests => "core.drop_requests", "requests dropped by the script";
    DropReplies => "core.drop_replies", "replies dropped";
    ErrRequests => "core.err_requests", "requests whose route raised a script error";
    BadMsgHdr => "core.bad_msg_hdr", "messages dropped or refused as malformed";
    RoutesSuspended => "core.routes_suspended", "routes that waited (database, another shard) before finishing";
    BadUris => "core.bad_URIs_rcvd", "malformed URIs seen by the script";
    SlReplies1xx => "sl.1xx_replies", "1xx replies sent by sl";
    SlReplies2xx => "sl.2xx_replies", "2xx replies sent by sl";
    SlReplies3xx => "sl.3xx_replies", "3xx replies sent by sl";
    SlReplies4xx => "sl.4xx_replies", "4xx replies sent by sl";
    SlReplies5xx => "sl.5xx_replies", "5xx replies sent by sl";
    SlReplies6xx => "sl.6xx_replies", "6xx replies sent by sl";
    SlSentReplies => "sl.sent_replies", "all replies sent statelessly";
    SlSentErrReplies => "sl.sent_err_replies", "stateless replies that failed to send";
    SendErrors => "core.send_errors", "datagrams the socket refused";
    AuthSuccess => "auth.successes", "credentials that checked";
    AuthFailure => "auth.failures", "credentials that did not check";
    AuthChallenges => "auth.challenges", "challenges sent";
    AuthStaleNonce => "auth.stale_nonces", "stale nonces seen";
    AuthDbTimeout => "auth.db_timeouts", "credential lookups that timed out";
    UlRegistered => "usrloc.registered_users", "contacts saved";
    UlExpired => "usrloc.expired_contacts", "contacts removed by expiry";
    DbQueries => "db.queries", "database requests sent";
    DbErrors => "db.errors", "database requests failed or timed out";
    DbQueueFull => "db.queue_full", "database requests refused at once: [db] queue_depth requests were pending";
    DbWriteRetries => "db.write_retries", "location writes sent again after a database failure";
    DbWritesDropped => "db.writes_dropped", "location writes dropped: the retry queue was full";
    DispatchSent => "shard.dispatch_sent", "messages handed to the shard that owns them before their route ran";
    DispatchRecv => "shard.dispatch_recv", "messages another shard handed to this one";
    DispatchDropped => "shard.dispatch_dropped", "messages dropped because the owner's dispatch queue was full";
    Panics => "shard.panics", "panics caught in a route or task (the shard went on)";
    RecvErrors => "core.recv_errors", "socket receive errors";
    LuaInstructionLimit => "core.lua_instruction_limit", "route calls stopped at lua_max_instructions";
    TooManyContacts => "registrar.too_many_contacts", "REGISTERs refused before copying: more Contacts than contacts_per_aor_cap";
    InflightLimit => "core.inflight_limit", "requests answered 503 and replies dropped: [shard] max_inflight routes were suspended";
    EditLimit => "core.edit_limit", "header/body edits refused: more than [shard] max_edits (or max_edit_bytes) on one message";
    PvLimit => "core.pv_limit", "$var/$avp/$xavp writes refused: too many or too large";
    TmCreated => "tm.created", "transactions created";
    TmBranches => "tm.branches", "branches relayed statefully";
    TmFull => "tm.full", "transactions refused: the table was full";
    TmUnresolvable => "tm.unresolvable", "branches without a usable destination (not an IP literal)";
    DialogFull => "dialog.full", "dlg_manage refused: the dialog table was full ([dialog] max_dialogs)";
    TmForeignReplies => "tm.foreign_replies", "replies handled by a shard other than the one whose route created their transaction";
    SqlopsQueries => "sqlops.queries", "KSR.sqlops queries a route waited for";
    SqlopsAsyncQueries => "sqlops.async_queries", "sql_query_async queries queued";
    SqlopsErrors => "sqlops.errors", "KSR.sqlops queries that failed (SQL error, unknown connection, queue full)";
    SqlopsTimeouts => "sqlops.timeouts", "KSR.sqlops queries not answered within query_timeout_ms";
    SqlopsRowsTruncated => "sqlops.rows_truncated", "KSR.sqlops results cut at max_rows";
    SqlopsResultsFull => "sqlops.results_full", "KSR.sqlops queries refused: sqlops_results_maxsize result names in use";
    IpopsDnsLookups => "ipops.dns_lookups", "KSR.ipops DNS lookups a route waited for";
    IpopsDnsFailures => "ipops.dns_failures", "KSR.ipops DNS lookups that failed (resolver error, queue full; not-found names excluded)";
    IpopsDnsTimeouts => "ipops.dns_timeouts", "KSR.ipops DNS lookups not answered within dns_timeout_ms";
    IpopsDnsTruncated => "ipops.dns_truncated", "KSR.ipops DNS answers cut at 32 records or 64-byte strings";
    IpopsContainersFull => "ipops.containers_full", "KSR.ipops lookups refused: pv_containers_max containers in use";
    RedisCommands => "ndb_redis.commands", "KSR.ndb_redis commands a route waited for";
    RedisErrors => "ndb_redis.errors", "KSR.ndb_redis commands that failed (error reply, connection, queue full)";
    RedisTimeouts => "ndb_redis.timeouts", "KSR.ndb_redis commands not answered within cmd_timeout_ms";
    RedisRepliesFull => "ndb_redis.replies_full", "KSR.ndb_redis commands refused: redis_replies_max reply names in use";
    JsonrpcsExec => "jsonrpcs.exec", "KSR.jsonrpcs.exec calls";
    JsonrpcsFailed => "jsonrpcs.failed", "KSR.jsonrpcs.exec calls that got no answer (bad document, control interface off, queue full, timeout)";
    FloodRateLimited => "flood.rate_limited", "requests over [flood] per_source_rate (dropped, or answered 503 with answer_503)";
    FloodBannedDrops => "flood.banned_drops", "requests from a banned source dropped before the route";
    FloodBans => "flood.bans", "sources banned after auth_failures_max failed authentications";
    XhttpRequests => "xhttp.requests", "HTTP requests on a SIP stream port given to the xhttp route";
    XhttpBadRequests => "xhttp.bad_requests", "HTTP requests refused before the route (malformed or over an [xhttp] bound; connection closed)";
    WsUpgrades => "websocket.upgrades", "connections upgraded to WebSocket by KSR.websocket.handle_handshake";
    WsMessages => "websocket.messages", "SIP messages received in WebSocket frames";
    WsProtocolErrors => "websocket.protocol_errors", "WebSocket connections closed for a protocol error (1002, 1007, 1009)";
    FloodTableFull => "flood.table_full", "sources forgotten with state left: the [flood] table was at max_sources";
    DsLoadFull => "dispatcher.load_full", "calls not tracked for call-load dispatching (alg 10): the table held max_calls";
    DsProbesSent => "dispatcher.probes_sent", "keepalive requests sent to destinations (first transmissions)";
    DsProbeReplies => "dispatcher.probe_replies", "replies to keepalive requests (never routed)";
    SanityFailed => "sanity.failed", "messages that failed a KSR.sanity check";
    BadMsgAnswered => "core.bad_msg_answered", "malformed requests answered (400, 416, 505) instead of dropped";
    ParseEmpty => "parse.empty", "malformed messages: empty";
    ParseTooLarge => "parse.too_large", "malformed messages: too large";
    ParseBadStartLine => "parse.bad_start_line", "malformed messages: bad start line";
    ParseBadMethod => "parse.bad_method", "malformed messages: bad method";
    ParseBadRequestUri => "parse.bad_request_uri", "malformed messages: bad request uri";
    ParseBadVersion => "parse.bad_version", "malformed messages: bad version";
    ParseBadStatusCode => "parse.bad_status_code", "malformed messages: bad status code";
    ParseBadHeaderName => "parse.bad_header_name", "malformed messages: bad header name";
    ParseBadHeaderLine => "parse.bad_header_line", "malformed messages: bad header line";
    ParseTooManyHeaders => "parse.too_many_headers", "malformed messages: too many headers";
    ParseMissingEndOfHeaders => "parse.missing_end_of_headers", "malformed messages: missing end of headers";
    ParseBadContentLength => "parse.bad_content_length", "malformed messages: bad content length";
    ParseTruncatedBody => "parse.truncated_body", "malformed messages: truncated body";
    ParseMissingVia => "parse.missing_via", "malformed messages: missing via";
    ParseMissingFrom => "parse.missing_from", "malformed messages: missing from";
    ParseMissingTo => "parse.missing_to", "malformed messages: missing to";
    ParseMissingCallId => "parse.missing_call_id", "malformed messages: missing call id";
    ParseMissingCSeq => "parse.missing_cseq", "malformed messages: missing cseq";
    ParseBadVia => "parse.bad_via", "malformed messages: bad via";
    ParseBadFrom => "parse.bad_from", "malformed messages: bad from";
    ParseBadTo => "parse.bad_to", "malformed messages: bad to";
    ParseBadCSeq => "parse.bad_cseq", "malformed messages: bad cseq";
    ParseCSeqMethodMismatch => "parse.cseq_method_mismatch", "malformed messages: cseq method mismatch";
    ParseBadMaxForwards => "parse.bad_max_forwards", "malformed messages: bad max forwards";
    ParseBadContact => "parse.bad_contact", "malformed messages: bad contact";
    ParseBadExpires => "parse.bad_expires", "malformed messages: bad expires";
    ParseBadUri => "parse.bad_uri", "malformed messages: bad uri";
    ParseBadNameAddr => "parse.bad_name_addr", "malformed messages: bad name addr";
    ParseUnsupportedVersion => "parse.unsupported_version", "malformed messages: unsupported version";
    ParseUnsupportedUriScheme => "parse.unsupported_uri_scheme", "malformed messages: unsupported uri scheme";
    ParseStartLineWhitespace => "parse.start_line_whitespace", "malformed messages: start line whitespace";
    ParseDuplicateFrom => "parse.duplicate_from", "malformed messages: duplicate from";
    ParseDuplicateTo => "parse.duplicate_to", "malformed messages: duplicate to";
    ParseDuplicateCallId => "parse.duplicate_call_id", "malformed messages: duplicate call id";
    ParseDuplicateCSeq => "parse.duplicate_cseq", "malformed messages: duplicate cseq";
    ParseDuplicateMaxForwards => "parse.duplicate_max_forwards", "malformed messages: duplicate max forwards";
}

/// The per-reason counter of a parse error (`parse.<reason>`).
pub fn parse_error_counter(e: crate::sip::ParseError) -> Counter {
    use crate::sip::ParseError as E;
    match e {
        E::Empty => Counter::ParseEmpty,
        E::TooLarge => Counter::ParseTooLarge,
        E::BadStartLine => Counter::ParseBadStartLine,
        E::BadMethod => Counter::ParseBadMethod,
        E::BadRequestUri => Counter::ParseBadRequestUri,
        E::BadVersion => Counter::ParseBadVersion,
        E::BadStatusCode => Counter::ParseBadStatusCode,
        E::BadHeaderName => Counter::ParseBadHeaderName,
        E::BadHeaderLine => Counter::ParseBadHeaderLine,
        E::TooManyHeaders => Counter::ParseTooManyHeaders,
        E::MissingEndOfHeaders => Counter::ParseMissingEndOfHeaders,
        E::BadContentLength => Counter::ParseBadContentLength,
        E::TruncatedBody => Counter::ParseTruncatedBody,
        E::MissingVia => Counter::ParseMissingVia,
        E::MissingFrom => Counter::ParseMissingFrom,
        E::MissingTo => Counter::ParseMissingTo,
        E::MissingCallId => Counter::ParseMissingCallId,
        E::MissingCSeq => Counter::ParseMissingCSeq,
        E::BadVia => Counter::ParseBadVia,
        E::BadFrom => Counter::ParseBadFrom,
        E::BadTo => Counter::ParseBadTo,
        E::BadCSeq => Counter::ParseBadCSeq,
        E::CSeqMethodMismatch => Counter::ParseCSeqMethodMismatch,
        E::BadMaxForwards => Counter::ParseBadMaxForwards,
        E::BadContact => Counter::ParseBadContact,
        E::BadExpires => Counter::ParseBadExpires,
        E::BadUri => Counter::ParseBadUri,
        E::BadNameAddr => Counter::ParseBadNameAddr,
        E::UnsupportedVersion => Counter::ParseUnsupportedVersion,
        E::UnsupportedUriScheme => Counter::ParseUnsupportedUriScheme,
        E::StartLineWhitespace => Counter::ParseStartLineWhitespace,
        E::DuplicateFrom => Counter::ParseDuplicateFrom,
        E::DuplicateTo => Counter::ParseDuplicateTo,
        E::DuplicateCallId => Counter::ParseDuplicateCallId,
        E::DuplicateCSeq => Counter::ParseDuplicateCSeq,
        E::DuplicateMaxForwards => Counter::ParseDuplicateMaxForwards,
    }
}

/// One route's histogram plus its name (`request_route`, `reply_route`, ...).
#[derive(Clone, Debug)]
pub struct RouteHistogram {
    pub route: String,
    pub hist: Histogram<u64>,
}

/// What one shard reports when asked.
#[derive(Clone, Debug)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub cpu: Option<usize>,
    pub uptime_s: f64,
    pub counters: [u64; Counter::COUNT],
    /// Point-in-time values: `usrloc.contacts`, `shard.inflight`, ...
    pub gauges: Vec<(&'static str, i64)>,
    pub routes: Vec<RouteHistogram>,
    /// The shard's effective tuning knobs, for `core.shards`.
    pub tuning: serde_json::Value,
}

/// Summary figures in microseconds (floats), Kamailio's KEMI table plus percentiles.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub cnt: u64,
    pub sum_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
}

impl LatencySummary {
    pub fn from_hist(h: &Histogram<u64>) -> LatencySummary {
        let cnt = h.len();
        if cnt == 0 {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        let sum_ns = h.mean() * cnt as f64;
        LatencySummary {
            cnt,
            sum_us: sum_ns / 1000.0,
            min_us: us(h.min()),
            max_us: us(h.max()),
            avg_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
        }
    }
}

/// Merges the same route across shards (shards record with equal bounds).
pub fn merge_routes(shards: &[ShardSnapshot]) -> Vec<RouteHistogram> {
    let mut out: Vec<RouteHistogram> = Vec::new();
    for s in shards {
        for r in &s.routes {
            match out.iter_mut().find(|m| m.route == r.route) {
                Some(m) => {
                    // Same bounds on every shard, so add cannot fail; a failure
                    // would only drop figures from a report, never panic.
                    let _ = m.hist.add(&r.hist);
                }
                None => out.push(r.clone()),
            }
        }
    }
    out
}

/// Formats route figures as the shutdown table (Kamailio's KEMI perf shape plus percentiles).
pub fn format_route_table(routes: &[RouteHistogram]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>10} {:>14} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "route",
        "cnt",
        "sum_us",
        "min_us",
        "max_us",
        "avg_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99.9_us"
    );
    for r in routes {
        let l = LatencySummary::from_hist(&r.hist);
        let _ = writeln!(
            s,
            "{:<20} {:>10} {:>14.1} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            r.route,
            l.cnt,
            l.sum_us,
            l.min_us,
            l.max_us,
            l.avg_us,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us
        );
    }
    s
}
