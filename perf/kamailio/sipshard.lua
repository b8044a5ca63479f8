-- Kamailio 5.6 (app_lua) port of sipshard's default script etc/sipshard.lua
-- for perf/compare.sh: the same KSR calls in the same order, so both
-- servers run the same routing logic.
--   * OPTIONS to this server: 200 Keepalive;
--   * REGISTER: digest auth against subscriber (auth_check), then save;
--   * requests for local users: lookup, 302 to the contact;
--   * everything else: 403.

local REALM = ""  -- empty: use the From domain ("$fd")

function ksr_request_route()
    if KSR.is_OPTIONS() and KSR.is_myself_ruri() then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return KSR.x.exit()
    end

    if KSR.is_REGISTER() then
        ksr_route_register()
        return KSR.x.exit()
    end

    if KSR.is_ACK() then
        return KSR.x.exit()
    end

    if KSR.is_myself_ruri() then
        ksr_route_location()
        return KSR.x.exit()
    end

    KSR.sl.sl_send_reply(403, "Relaying Forbidden")
end

function ksr_route_register()
    local realm = REALM
    if realm == "" then realm = KSR.pv.get("$fd") or "" end
    local rc = KSR.auth_db.auth_check(realm, "subscriber", 1)
    if rc < 0 then
        KSR.auth.auth_challenge(realm, 1)
        return KSR.x.exit()
    end
    KSR.auth.consume_credentials()
    if KSR.registrar.save("location", 0) < 0 then
        KSR.sl.sl_reply_error()
    end
end

function ksr_route_location()
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        if rc == -1 or rc == -3 then
            KSR.sl.sl_send_reply(404, "Not Found")
        elseif rc == -2 then
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
        end
        return KSR.x.exit()
    end
    KSR.hdr.append_to_reply("Contact: <" .. (KSR.pv.get("$ru") or "") .. ">\r\n")
    KSR.sl.sl_send_reply(302, "Moved Temporarily")
end
