-- sipshard default routing script (Kamailio KEMI / KSR API, Lua).
--
-- Modelled on Kamailio's misc/examples/kemi/kamailio-basic-kemi-lua.lua:
--   * OPTIONS to this server are answered 200 (keepalive / sipsak ping);
--   * REGISTER is challenged with digest auth against the subscriber table
--     and saved in user location;
--   * requests for local users are looked up in user location;
--   * everything else gets a clear stateless reply.

local REALM = ""  -- empty: use the From domain, as Kamailio does with "$fd"

function ksr_request_route()
    -- keepalive pings and `sipsak -s sip:...@this-server`
    if KSR.is_OPTIONS() and KSR.is_myself_ruri() then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return KSR.x.exit()
    end

    if KSR.is_REGISTER() then
        ksr_route_register()
        return KSR.x.exit()
    end

    if KSR.is_ACK() then
        -- stateless: an ACK to a locally generated negative reply ends here
        return KSR.x.exit()
    end

    if KSR.is_myself_ruri() then
        ksr_route_location()
        return KSR.x.exit()
    end

    KSR.sl.sl_send_reply(403, "Relaying Forbidden")
end

-- REGISTER: authenticate, then save the bindings.
function ksr_route_register()
    if KSR.auth_db == nil or KSR.registrar == nil then
        KSR.sl.sl_send_reply(501, "Not Implemented")
        return KSR.x.exit()
    end
    local realm = REALM
    if realm == "" then realm = KSR.pv.get("$fd") or "" end
    local rc = KSR.auth_db.auth_check(realm, "subscriber", 1)
    if rc < 0 then
        -- flags 1: qop="auth", so nonce counts protect against replays
        KSR.auth.auth_challenge(realm, 1)
        return KSR.x.exit()
    end
    -- user authenticated - remove auth header
    KSR.auth.consume_credentials()
    if KSR.registrar.save("location", 0) < 0 then
        KSR.sl.sl_reply_error()
    end
end

-- Requests for a local user: look the user up in user location.
function ksr_route_location()
    if KSR.registrar == nil then
        KSR.sl.sl_send_reply(404, "Not Found")
        return KSR.x.exit()
    end
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        if rc == -1 or rc == -3 then
            KSR.sl.sl_send_reply(404, "Not Found")
        elseif rc == -2 then
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
        end
        return KSR.x.exit()
    end
    -- Stateful forwarding arrives with the tm module; until then, redirect
    -- the caller to the registered contact (RFC 3261 §8.3).
    KSR.hdr.append_to_reply("Contact: <" .. (KSR.pv.get("$ru") or "") .. ">\r\n")
    KSR.sl.sl_send_reply(302, "Moved Temporarily")
end

function ksr_reply_route()
    -- replies to requests this server did not send statefully are dropped
end
