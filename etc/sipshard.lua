-- sipshard default routing script (Kamailio KEMI / KSR API, Lua):
-- registrar and record-routing stateful proxy.
--
-- Modelled on Kamailio's misc/examples/kemi/kamailio-basic-kemi-lua.lua,
-- without NAT traversal, accounting, pike/htable or sanity checks.
-- Kamailio 5.6 runs it unchanged (app_lua; perf/kamailio/kamailio.cfg):
--   * OPTIONS to this server (keepalive, `sipsak -s sip:...@this-server`)
--     are answered 200, unless they are for a registered user;
--   * Max-Forwards is enforced (at most 10 hops from here, else 483);
--   * CANCEL and retransmissions are matched to their transactions;
--   * requests within a dialog follow the recorded route (loose routing);
--   * REGISTER is challenged (401, digest auth against the subscriber
--     table) and saved in user location;
--   * other requests from local users (From is this server's domain)
--     are challenged with 407 and checked against Proxy-Authorization;
--   * dialogs (INVITE, SUBSCRIBE) are record-routed;
--   * requests for local users are relayed to every registered contact
--     (parallel forking), 404 when there is none.
-- Replace it with `[core] script = "..."` or `--script`.

local REALM = ""  -- empty: use the From domain, as Kamailio does with "$fd"

-- SIP request routing: Kamailio's request_route{}
function ksr_request_route()
    -- per request initial checks
    ksr_route_reqinit()

    -- CANCEL processing: relayed to the branches of its INVITE
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            ksr_route_relay()
        end
        return KSR.x.exit()
    end

    -- handle retransmissions: absorbed (or answered again) by their
    -- transaction
    if not KSR.is_ACK() then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return KSR.x.exit()
        end
        if KSR.tm.t_check_trans() == 0 then
            return KSR.x.exit()
        end
    end

    -- handle requests within SIP dialogs
    ksr_route_withindlg()

    -- -- only initial requests (no To tag) from here

    -- authentication
    ksr_route_auth()

    -- record routing for dialog forming requests (in case they are routed)
    -- - remove preloaded route headers
    KSR.hdr.remove("Route")
    -- if INVITE or SUBSCRIBE
    if KSR.is_method_in("IS") then
        KSR.rr.record_route()
    end

    -- handle registrations: saved here whatever their domain (the
    -- subscriber table decides who may register), never relayed
    ksr_route_registrar()

    -- dispatch requests to foreign domains (authenticated local users only:
    -- ksr_route_auth refused the rest)
    ksr_route_sipout()

    -- -- requests for my local domains

    if KSR.pv.get("$rU") == nil then
        -- request with no Username in RURI
        KSR.sl.sl_send_reply(484, "Address Incomplete")
        return KSR.x.exit()
    end

    -- user location service
    ksr_route_location()
end

-- The KSR modules the proxy path needs.
-- Wrapper around tm's relay: stateful forwarding to the R-URI (or $du) and
-- every branch; a failure route for INVITE.
function ksr_route_relay()
    if KSR.is_INVITE() then
        KSR.tm.t_on_failure("ksr_failure_manage")
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return KSR.x.exit()
end

-- Per SIP request initial checks
function ksr_route_reqinit()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return KSR.x.exit()
    end

    -- keepalive pings for this server (any OPTIONS without a To tag for
    -- myself, unless it asks for a registered user: that one is relayed)
    if KSR.is_OPTIONS() and KSR.is_myself_ruri()
            and KSR.siputils.has_totag() < 0
            and (KSR.pv.get("$rU") == nil or KSR.registrar.registered("location") < 0) then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return KSR.x.exit()
    end
end

-- Handle requests within SIP dialogs
function ksr_route_withindlg()
    if KSR.siputils.has_totag() < 0 then
        return 1
    end

    -- sequential request within a dialog should
    -- take the path determined by record-routing
    if KSR.rr.loose_route() > 0 then
        ksr_route_relay()
        return KSR.x.exit()
    end
    if KSR.is_ACK() then
        if KSR.tm.t_check_trans() > 0 then
            -- no loose-route, but stateful ACK;
            -- must be an ACK after a 487
            -- or e.g. 404 from upstream server
            ksr_route_relay()
        end
        -- else: an ACK without a matching transaction (e.g. to a local
        -- 401/407/404) ends here
        return KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    return KSR.x.exit()
end

-- Handle SIP registrations: the REGISTER was authenticated by ksr_route_auth.
function ksr_route_registrar()
    if not KSR.is_REGISTER() then
        return 1
    end
    if KSR.registrar.save("location", 0) < 0 then
        KSR.sl.sl_reply_error()
    end
    return KSR.x.exit()
end

-- User location service
function ksr_route_location()
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        KSR.tm.t_newtran()
        if rc == -1 or rc == -3 then
            KSR.tm.t_reply(404, "Not Found")
        elseif rc == -2 then
            KSR.tm.t_reply(405, "Method Not Allowed")
        end
        return KSR.x.exit()
    end
    ksr_route_relay()
end

-- The realm: REALM, or the From domain.
function ksr_realm()
    if REALM ~= "" then
        return REALM
    end
    return KSR.pv.get("$fd") or ""
end

-- User authentication: REGISTER (401, Authorization) and requests from
-- local users (407, Proxy-Authorization).
function ksr_route_auth()
    if KSR.auth_db == nil then
        -- no authentication module: never an open registrar
        if KSR.is_REGISTER() then
            KSR.sl.sl_send_reply(501, "Not Implemented")
            return KSR.x.exit()
        end
        return 1
    end
    if KSR.is_REGISTER() or KSR.is_myself_furi() then
        -- authenticate requests: auth_check and auth_challenge pick the
        -- headers by method: REGISTER is challenged with 401 and answers in
        -- Authorization (www_authorize / www_challenge), other requests
        -- with 407 and Proxy-Authorization (proxy_authorize /
        -- proxy_challenge). Kamailio 5.6's KEMI exports only these two.
        local realm = ksr_realm()
        if KSR.auth_db.auth_check(realm, "subscriber", 1) < 0 then
            -- flags 1: qop="auth"; with [auth] nonce_count = 1 the nonce
            -- counts then protect against replays
            KSR.auth.auth_challenge(realm, 1)
            return KSR.x.exit()
        end
        -- user authenticated - remove auth header
        KSR.auth.consume_credentials()
    end
    if KSR.is_REGISTER() then
        -- registrations for any domain the subscriber table knows
        return 1
    end

    -- if caller is not local subscriber, then check if it calls
    -- a local destination, otherwise deny, not an open relay here
    if (not KSR.is_myself_furi()) and (not KSR.is_myself_ruri()) then
        KSR.sl.sl_send_reply(403, "Not relaying")
        return KSR.x.exit()
    end
    return 1
end

-- Routing to foreign domains
function ksr_route_sipout()
    if KSR.is_myself_ruri() then
        return 1
    end
    ksr_route_relay()
end

-- Manage failure routing cases: Kamailio's failure_route[...]{}. The final
-- reply (the best one of every branch) goes back to the caller.
function ksr_failure_manage()
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    return 1
end

-- SIP response handling: Kamailio's reply_route{}. Replies of transactions
-- go to them after this; others are forwarded statelessly by Via.
function ksr_reply_route()
    return 1
end
