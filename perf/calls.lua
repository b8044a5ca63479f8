-- Calls benchmark script (perf/compare.sh, CALLS): sipshard and Kamailio 5.6
-- both run this file unchanged.
--
-- A registrar without authentication and a record-routing stateful proxy:
-- the sipp callee registers once, then the sipp caller's calls
-- (INVITE, 180, 200, ACK, pause, BYE, 200) are relayed to it, ACK and BYE
-- along the recorded route.

function ksr_request_route()
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

    -- within a dialog: follow the recorded route
    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            return ksr_route_relay()
        end
        if KSR.is_ACK() then
            if KSR.tm.t_check_trans() > 0 then
                return ksr_route_relay()
            end
            return KSR.x.exit()
        end
        KSR.sl.sl_send_reply(404, "Not here")
        return KSR.x.exit()
    end

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

    KSR.hdr.remove("Route")
    if KSR.is_INVITE() then
        KSR.rr.record_route()
    end
    if KSR.registrar.lookup("location") < 0 then
        KSR.tm.t_newtran()
        KSR.tm.t_reply(404, "Not Found")
        return KSR.x.exit()
    end
    ksr_route_relay()
end

function ksr_route_relay()
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return KSR.x.exit()
end
