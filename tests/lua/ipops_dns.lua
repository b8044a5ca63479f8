-- tests/ipops_dns.rs: KSR.ipops DNS functions, their return codes and the
-- $dns / $srvquery / $naptrquery values reported in headers of a 200 to
-- OPTIONS. The request's headers say what to look up:
--
--   OPTIONS sip:addr@   X-Host, X-Ip: dns_query, dns_sys_match_ip,
--                       dns_int_match_ip
--   OPTIONS sip:srv@    X-Name: srv_query
--   OPTIONS sip:naptr@  X-Name: naptr_query
--   OPTIONS sip:ptr@    X-Ip: ptr_query
--   OPTIONS sip:ttl@    dns_set_local_ttl(7200)
--   OPTIONS sip:ping@   answered at once (no lookup)

local function hdr(name, value)
    KSR.hdr.append_to_reply(name .. ": " .. tostring(value) .. "\r\n")
end

local function hv(name)
    return KSR.pv.gete("$hdr(" .. name .. ")")
end

local function addr()
    local host = hv("X-Host")
    hdr("X-Rc", KSR.ipops.dns_query(host, "h"))
    local n = KSR.pv.get("$dns(h=>count)")
    hdr("X-Count", n)
    hdr("X-V4", KSR.pv.get("$dns(h=>ipv4)"))
    hdr("X-V6", KSR.pv.get("$dns(h=>ipv6)"))
    local all = {}
    KSR.pv.seti("$var(i)", 0)
    while KSR.pv.get("$var(i)") < n do
        all[#all + 1] = KSR.pv.get("$dns(h=>addr[$var(i)])") .. "/"
            .. KSR.pv.get("$dns(h=>type[$var(i)])")
        KSR.pv.seti("$var(i)", KSR.pv.get("$var(i)") + 1)
    end
    hdr("X-Addrs", table.concat(all, ","))
    hdr("X-Last", KSR.pv.get("$dns(h=>addr[-1])"))
    hdr("X-Past", KSR.pv.get("$dns(h=>addr[" .. n .. "])"))
    local ip = hv("X-Ip")
    if ip ~= "" then
        hdr("X-Sys", KSR.ipops.dns_sys_match_ip(host, ip))
        hdr("X-Int", KSR.ipops.dns_int_match_ip(host, ip))
    end
end

local function srv()
    hdr("X-Rc", KSR.ipops.srv_query(hv("X-Name"), "s"))
    local n = KSR.pv.get("$srvquery(s=>count)")
    hdr("X-Count", n)
    local all = {}
    for i = 0, n - 1 do
        local k = "[" .. i .. "])"
        all[#all + 1] = KSR.pv.get("$srvquery(s=>priority" .. k) .. "/"
            .. KSR.pv.get("$srvquery(s=>weight" .. k) .. "/"
            .. KSR.pv.get("$srvquery(s=>port" .. k) .. "/"
            .. KSR.pv.get("$srvquery(s=>target" .. k)
    end
    hdr("X-Records", table.concat(all, ","))
end

local function naptr()
    hdr("X-Rc", KSR.ipops.naptr_query(hv("X-Name"), "n"))
    local n = KSR.pv.get("$naptrquery(n=>count)")
    hdr("X-Count", n)
    local all = {}
    for i = 0, n - 1 do
        local k = "[" .. i .. "])"
        local parts = {}
        for _, f in ipairs({ "order", "pref", "flags", "services", "regex", "replace" }) do
            parts[#parts + 1] = tostring(KSR.pv.get("$naptrquery(n=>" .. f .. k))
        end
        all[#all + 1] = table.concat(parts, "/")
    end
    hdr("X-Records", table.concat(all, ","))
end

function ksr_request_route()
    local u = KSR.pv.get("$rU")
    if u == "addr" then
        addr()
    elseif u == "srv" then
        srv()
    elseif u == "naptr" then
        naptr()
    elseif u == "ptr" then
        hdr("X-Rc", KSR.ipops.ptr_query(hv("X-Ip"), "p"))
        for _, k in ipairs({ "count", "hostname", "addr", "type", "ipv4", "ipv6" }) do
            hdr("X-" .. k, KSR.pv.get("$ptrquery(p=>" .. k .. ")"))
        end
    elseif u == "ttl" then
        hdr("X-Rc", KSR.ipops.dns_set_local_ttl(7200))
    end
    KSR.sl.sl_send_reply(200, "OK")
end
