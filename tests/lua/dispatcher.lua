-- Load-balancing proxy for tests/dispatcher.rs: record-routing stateful
-- relay to a dispatcher set chosen by the R-URI user, failing over to the
-- next destination of the set when one answers 503 or not at all.
-- Kamailio 5.6 runs it unchanged (perf/kamailio/dispatcher.cfg).
--
--   rr@...        set 1, round robin (alg 4)
--   weight@...    set 2, weight attribute (alg 9)
--   failover@...  set 3, priority order (alg 8): first answers 503
--   silent@...    set 4, priority order (alg 8): first never answers
--   any other     set 1, alg 4
--
-- Uses only: KSR.is_*, KSR.x.exit, KSR.sl, KSR.hdr.remove, KSR.pv,
-- KSR.maxfwd, KSR.siputils.has_totag, KSR.rr, KSR.tm, KSR.tmx,
-- KSR.dispatcher.

local SETS = {
    rr = { 1, 4 },
    weight = { 2, 9 },
    failover = { 3, 8 },
    silent = { 4, 8 },
}
-- a destination that gives no reply at all is given up after 1 s
local FR_MS = 1000
local FR_INV_MS = 5000

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return KSR.x.exit()
    end

    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return KSR.x.exit()
    end

    if not KSR.is_ACK() then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return KSR.x.exit()
        end
        if KSR.tm.t_check_trans() == 0 then
            return KSR.x.exit()
        end
    end

    -- within a dialog: follow the recorded route
    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            KSR.tm.t_relay()
        elseif KSR.is_ACK() and KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return KSR.x.exit()
    end

    if KSR.is_OPTIONS() and KSR.is_myself_ruri() and (KSR.pv.get("$rU") == nil) then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return KSR.x.exit()
    end

    KSR.hdr.remove("Route")
    if KSR.is_INVITE() then
        KSR.rr.record_route()
    end

    local pick = SETS[KSR.pv.get("$rU") or ""] or SETS.rr
    if KSR.dispatcher.ds_select_dst(pick[1], pick[2]) < 0 then
        KSR.sl.sl_send_reply(503, "No destination available")
        return KSR.x.exit()
    end
    if KSR.is_INVITE() then
        KSR.tm.t_set_fr(FR_INV_MS, FR_MS)
        KSR.tm.t_on_failure("ksr_failure_dispatch")
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return KSR.x.exit()
end

-- every branch failed: on 503 or no answer (408), the next destination
function ksr_failure_dispatch()
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    local code = KSR.pv.get("$T_reply_code")
    if code ~= 503 and code ~= 408 then
        return 1
    end
    if KSR.dispatcher.ds_next_dst() < 0 then
        return 1
    end
    KSR.info("dispatcher failover after " .. tostring(code) .. " to "
        .. tostring(KSR.pv.get("$du")) .. " (XAVP head "
        .. tostring(KSR.pv.get("$xavp(_dsdst_=>uri)")) .. ")\n")
    KSR.tm.t_set_fr(FR_INV_MS, FR_MS)
    KSR.tm.t_on_failure("ksr_failure_dispatch")
    KSR.tm.t_relay()
    return 1
end
