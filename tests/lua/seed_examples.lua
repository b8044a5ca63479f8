-- The Lua examples of the talk this project follows (../shared/seed/
-- 000_*.txt, "Seeing Is Believing"), each as shown there, run by
-- tests/seed_examples.rs. The request's user picks the example. Where a
-- slide has a typo or Python syntax, the Lua equivalent is used and the
-- comment says so.

local json = require("cjson")

-- Source IP Matching - replace the permissions module - (verbatim)
ALLOWADDR={
    "127.0.0.1/32",
    "10.0.0.1/24"
};

-- match source ip against ALLOWADDR list
function ksr_is_src_trusted()
    local srcaddr = KSR.kx.get_srcip();
    for idx, val in pairs(ALLOWADDR) do
        if KSR.ipops.ip_is_in_subnet(srcaddr, val) > 0 then
            return true;
        end
    end
    return false;
end

-- IP authorization and user authentication (the slide's "..." user
-- authentication part is a 403 here)
function ksr_route_auth()
    -- from trusted list of addresses
    if ksr_is_src_trusted() then
        return 1;
    end
    KSR.sl.sl_send_reply(403, "Not trusted")
    KSR.x.exit()
end

function ksr_route_relay()
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    KSR.x.exit()
end

-- Routing to foreign domains. The slide's Lua calls
-- KSR.hdr.append_hf(...), which Kamailio's KSR.hdr does not export (it
-- raises "function not exported" in Kamailio 5.6 and in sipshard); its
-- Python twin on the same slide uses KSR.hdr.append, which runs here.
function ksr_route_sipout()
    if KSR.is_myself(KSR.pv.get("$ru")) then return 1; end

    KSR.hdr.append("P-Hint: outbound\r\n");
    ksr_route_relay();
    KSR.x.exit();
end

-- The slide's Lua exactly as printed, for the record (see above).
function ksr_route_sipout_as_printed()
    if KSR.is_myself(KSR.pv.get("$ru")) then return 1; end

    KSR.hdr.append_hf("P-Hint: outbound\r\n");
    ksr_route_relay();
    KSR.x.exit();
end

local function yn(b)
    if b then return "yes" end
    return "no"
end

local function answer(hdrs)
    for _, h in ipairs(hdrs) do
        KSR.hdr.append_to_reply(h .. "\r\n")
    end
    KSR.sl.sl_send_reply(200, "OK")
    KSR.x.exit()
end

function ksr_request_route()
    -- the friendly-scanner check (verbatim; has_user_agent() returns an
    -- int, and every number is true in Lua, so the test sends a User-Agent)
    if KSR.corex.has_user_agent() then
        local K_ua = KSR.pv.get("$ua");
        if string.find(K_ua, "friendly-scanner")
            or string.find(K_ua, "sipcli") then
            KSR.sl.sl_send_reply(200, "OK");
            KSR.x.exit();
        end
    end

    local user = KSR.pv.get("$rU") or ""

    if user == "sipout" then
        ksr_route_sipout()
        KSR.sl.sl_send_reply(200, "Local")
        return KSR.x.exit()
    end

    if user == "sipout-as-printed" then
        local ok, err = pcall(ksr_route_sipout_as_printed)
        KSR.hdr.append_to_reply("X-Error: " .. tostring(err):gsub("[\r\n].*", "") .. "\r\n")
        KSR.sl.sl_send_reply(500, "As printed")
        return KSR.x.exit()
    end

    if user == "htable" then
        KSR.pv.sets("$sht(t=>x)", "kamailio");
        KSR.pv.seti("$shtex(t=>x)", 300);
        -- "is equivalent with" (the slide writes KSRhtable.sht_setxs, a
        -- typo for KSR.htable.sht_setxs; key y so both can be compared)
        KSR.htable.sht_setxs("t", "y", "kamailio", 300);
        return answer({
            "X-X: " .. tostring(KSR.pv.get("$sht(t=>x)")),
            "X-X-Expires: " .. tostring(KSR.pv.get("$shtex(t=>x)")),
            "X-Y: " .. tostring(KSR.pv.get("$sht(t=>y)")),
            "X-Y-Expires: " .. tostring(KSR.pv.get("$shtex(t=>y)")),
        })
    end

    if user == "ipban" then
        -- use instead (verbatim): the key is the source IP
        KSR.pv.seti("$sht(ipban=>$si)", 1);
        return answer({ "X-Ban: " .. tostring(KSR.pv.get("$sht(ipban=>$si)")) })
    end

    if user == "ipban-concat" then
        -- "do not use" form; the slide concatenates with `+` (JavaScript/
        -- Python), Lua's operator is `..`
        KSR.pv.seti("$sht(ipban=>" .. KSR.pv.gete("$si") .. ")", 1);
        return answer({ "X-Ban: " .. tostring(KSR.pv.get("$sht(ipban=>$si)")) })
    end

    if user == "myself" then
        return answer({
            "X-Ruri: " .. yn(KSR.is_myself_ruri()),
            "X-Furi: " .. yn(KSR.is_myself_furi()),
            "X-Turi: " .. yn(KSR.is_myself_turi()),
            "X-Srcip: " .. yn(KSR.is_myself_srcip()),
            "X-Is-Myself-Ru: " .. yn(KSR.is_myself(KSR.pv.get("$ru"))),
        })
    end

    if user == "methods" then
        local a, b, c, d = false, false, false, false
        if KSR.pv.get("$rm") == "CANCEL" then a = true end
        if KSR.is_CANCEL() then b = true end
        if string.find("INVITE,BYE,SUBSCRIBE,UPDATE", KSR.pv.get("$rm")) then c = true end
        if KSR.is_method_in("IBSU") then d = true end
        return answer({
            "X-Cancel: " .. yn(a) .. " " .. yn(b),
            "X-IBSU: " .. yn(c) .. " " .. yn(d),
        })
    end

    if user == "trusted" then
        ksr_route_auth()
        return answer({ "X-Trusted: yes" })
    end

    if user == "json" then
        -- SIPJSON Module (the slide reads KSR.pv.get("var(json)"); the
        -- pseudo-variable needs its `$`, as in every other example)
        KSR.sipjson.sj_serialize("0B", "$var(json)")
        local KV = json.decode(KSR.pv.get("$var(json)"))
        if KV["rm"] == "INVITE" then
            return answer({ "X-Json-Rm: " .. KV["rm"], "X-Json-Ru: " .. tostring(KV["ru"]) })
        end
        return answer({ "X-Json-Rm: other" })
    end

    KSR.sl.sl_send_reply(404, "No such example")
end
