-- Test proxy for tests/proxy.rs: registrar + record-routing stateful proxy,
-- no authentication. Kamailio 5.6 (app_lua, tests/kamailio/kamailio.cfg)
-- runs it unchanged, so the same sipp scenarios check both servers.
--
-- Uses only: KSR.is_* / is_myself_*, KSR.x.exit, KSR.sl, KSR.hdr.remove,
-- KSR.pv, KSR.maxfwd, KSR.siputils.has_totag, KSR.rr, KSR.registrar,
-- KSR.tm, KSR.tmx.t_precheck_trans.
--
-- Users the tests rely on:
--   any user      REGISTER saved as sent (no auth), INVITE/MESSAGE relayed
--                 to every registered contact (parallel forking)
--   noanswer*     INVITE with a 2 s fr_inv timer: a callee that rings and
--                 never answers is cancelled and the caller gets 408
--   <user>        when the callee answers 486 (or is not reachable at all:
--                 408 without any reply), the failure route retries the
--                 AOR "<user>-2" (a second line), once

local FR_INV_SHORT_MS = 2000
local FR_SHORT_MS = 1000

function ksr_request_route()
    -- per request initial checks
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return KSR.x.exit()
    end

    -- CANCEL: relayed to the branches of the INVITE it cancels
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            ksr_route_relay()
        end
        return KSR.x.exit()
    end

    -- retransmissions are absorbed by their transaction
    if not KSR.is_ACK() then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return KSR.x.exit()
        end
        if KSR.tm.t_check_trans() == 0 then
            return KSR.x.exit()
        end
    end

    -- requests within a dialog follow the recorded route
    ksr_route_withindlg()

    -- initial requests
    if KSR.is_REGISTER() then
        if KSR.registrar.save("location", 0) < 0 then
            KSR.sl.sl_reply_error()
        end
        return KSR.x.exit()
    end

    if not KSR.is_myself_ruri() then
        KSR.sl.sl_send_reply(403, "Not relaying")
        return KSR.x.exit()
    end

    -- preloaded routes are not ours to follow; dialogs go through us
    KSR.hdr.remove("Route")
    if KSR.is_method_in("IS") then
        KSR.rr.record_route()
    end

    local callee = KSR.pv.get("$rU") or ""
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        KSR.tm.t_newtran()
        if rc == -2 then
            KSR.tm.t_reply(405, "Method Not Allowed")
        else
            KSR.tm.t_reply(404, "Not Found")
        end
        return KSR.x.exit()
    end

    if KSR.is_INVITE() then
        if string.sub(callee, 1, 8) == "noanswer" then
            -- ring for 2 s at most
            KSR.tm.t_set_fr(FR_INV_SHORT_MS, FR_SHORT_MS)
        end
        KSR.tm.t_on_failure("ksr_failure_manage")
    end
    ksr_route_relay()
end

function ksr_route_relay()
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return KSR.x.exit()
end

function ksr_route_withindlg()
    if KSR.siputils.has_totag() < 0 then
        return 1
    end
    if KSR.rr.loose_route() > 0 then
        ksr_route_relay()
        return KSR.x.exit()
    end
    if KSR.is_ACK() then
        if KSR.tm.t_check_trans() > 0 then
            -- ACK of a negative reply relayed by us without Route: hop by hop
            ksr_route_relay()
        end
        return KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    return KSR.x.exit()
end

-- failure route of an INVITE: every branch ended with a negative reply (or
-- timed out). It runs once: it is not armed again for the second try.
function ksr_failure_manage()
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    local code = KSR.pv.get("$T_reply_code")
    local busy = code == 486
    -- the callee never answered at all (not even 1xx): unreachable
    local unreachable = code == 408 and KSR.tm.t_branch_timeout() > 0
        and KSR.tm.t_branch_replied() < 0
    if not (busy or unreachable) then
        return 1
    end
    local user = KSR.pv.get("$tU") or ""
    local second = "sip:" .. user .. "-2@" .. (KSR.pv.get("$td") or "")
    if KSR.registrar.lookup_uri("location", second) < 0 then
        return 1
    end
    KSR.info("failure route: " .. tostring(code) .. " from " .. user
        .. ", trying " .. second .. "\n")
    if KSR.tm.t_relay() < 0 then
        KSR.err("failure route: relay to " .. second .. " failed\n")
    end
    return 1
end
