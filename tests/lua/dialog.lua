-- Test script for tests/dialog.rs: a record-routing stateful proxy that
-- tracks every INVITE dialog with KSR.dialog and sends all calls to the
-- callee at core define UAS (`ip:port`).
--
-- Users the tests rely on:
--   limited   at most CALL_LIMIT (core define) concurrent calls in profile
--             "calls"; the next one gets 486 (a call limiter)
--   short     the dialog times out after 1 s (dlg_set_timeout): with
--             [dialog] send_bye = 1 both sides get a BYE
--   ctxbye    $dlg_ctx(timeout_bye) = 1 and $dlg_ctx(timeout_int) = 1 set
--             before dlg_manage() (Kamailio's dlg_manage example): BYE to
--             both sides after 1 s whatever send_bye says
--   any other a plain tracked call
-- MESSAGE to sip:dlg-bye@<proxy> with X-Dlg-Callid / X-Dlg-Ftag /
-- X-Dlg-Ttag ends that dialog on both sides (dlg_get + dlg_bye("all")):
-- 200 when it was found, 404 otherwise.
-- In-dialog BYEs carry X-Dlg-* headers with $dlg(...) / $dlg_var(...)
-- values as seen in the BYE's route, for the callee's trace.

local UAS = KSR.kx.get_def("UAS")
local LIMIT = KSR.kx.get_defn("CALL_LIMIT")

function ksr_request_route()
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

    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            if KSR.is_BYE() then
                local ok = KSR.dialog.is_known_dlg()
                KSR.hdr.append("X-Dlg-Known: " .. ok .. "\r\n")
                KSR.hdr.append("X-Dlg-State: " .. tostring(KSR.pv.get("$dlg(state)")) .. "\r\n")
                KSR.hdr.append("X-Dlg-Caller: " .. tostring(KSR.pv.get("$dlg_var(caller)")) .. "\r\n")
                KSR.hdr.append("X-Dlg-Same-Callid: "
                    .. tostring(KSR.pv.get("$dlg(callid)") == KSR.pv.get("$ci")) .. "\r\n")
                KSR.hdr.append("X-Dlg-Flag3: " .. KSR.dialog.dlg_isflagset(3) .. "\r\n")
            end
            KSR.tm.t_relay()
        elseif KSR.is_ACK() then
            if KSR.tm.t_check_trans() > 0 then
                KSR.tm.t_relay()
            end
        else
            KSR.sl.sl_send_reply(404, "Not here")
        end
        return KSR.x.exit()
    end

    if KSR.is_MESSAGE() and KSR.pv.get("$rU") == "dlg-bye" then
        local ci = KSR.pv.gete("$hdr(X-Dlg-Callid)")
        local ft = KSR.pv.gete("$hdr(X-Dlg-Ftag)")
        local tt = KSR.pv.gete("$hdr(X-Dlg-Ttag)")
        if KSR.dialog.dlg_get(ci, ft, tt) > 0 and KSR.dialog.dlg_bye("all") > 0 then
            KSR.sl.sl_send_reply(200, "Dialog ended")
        else
            KSR.sl.sl_send_reply(404, "No such dialog")
        end
        return KSR.x.exit()
    end

    if not KSR.is_INVITE() then
        KSR.sl.sl_send_reply(405, "Method Not Allowed")
        return KSR.x.exit()
    end

    if KSR.pv.get("$rU") == "ctxbye" then
        KSR.pv.seti("$dlg_ctx(timeout_bye)", 1)
        KSR.pv.seti("$dlg_ctx(timeout_int)", 1)
    end
    -- set before the dialog exists: linked to the one dlg_manage() creates
    KSR.dialog.set_dlg_profile("caller", KSR.kx.get_fuser())
    if KSR.dialog.dlg_manage() < 0 then
        KSR.sl.sl_send_reply(500, "No dialog")
        return KSR.x.exit()
    end
    local user = KSR.pv.get("$rU") or ""
    if user == "limited" then
        KSR.dialog.get_profile_size("calls", "", "$var(calls)")
        if KSR.pv.get("$var(calls)") >= LIMIT then
            KSR.sl.sl_send_reply(486, "Too Many Calls")
            return KSR.x.exit()
        end
        KSR.dialog.set_dlg_profile("calls", "")
    elseif user == "short" then
        KSR.dialog.dlg_set_timeout(1)
    end
    KSR.pv.sets("$dlg_var(caller)", KSR.kx.get_fuser())
    KSR.dialog.dlg_setflag(3)

    KSR.rr.record_route()
    KSR.pv.sets("$du", "sip:" .. UAS)
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
end
