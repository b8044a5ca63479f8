-- tests/sqlops_redis.rs: calls steered by an SQL routing table or a Redis
-- key, the $dbr / $redis / $jsonrpl values a lookup leaves reported in
-- headers of a 200 to OPTIONS, and KSR.sipjson.sj_serialize decoded with
-- cjson (as in the ClueCon talk).
--
-- core.defines: RT_TABLE (the routing table: prefix, dst, weight, note),
-- RKEY (the Redis key prefix). Connections: sqlops "rt", redis "r1".
--
--   INVITE/MESSAGE (X-Lookup: sql or none) dst of the row prefix = $rU
--     (INVITEs record-routed; ACK/BYE follow the route: whole sipp calls)
--   INVITE/MESSAGE with "X-Lookup: redis"  GET <RKEY><$rU>
--     found: relayed to sip:<dst>; not found: 404; lookup failed: 503
--   OPTIONS sip:sqlinfo@   sql_query/xquery/pvquery/$sqlrows in headers
--   OPTIONS sip:redisinfo@ redis_cmd replies of each type in headers
--   OPTIONS sip:rpc@       KSR.jsonrpcs.exec("core.version"), stats
--   OPTIONS sip:json@      sj_serialize("0Bct") decoded with cjson

local cjson = require "cjson"

local RT = KSR.kx.get_def("RT_TABLE")
local RKEY = KSR.kx.get_def("RKEY")

local function hdr(name, value)
    KSR.hdr.append_to_reply(name .. ": " .. tostring(value) .. "\r\n")
end

local function relay_to(hostport)
    KSR.pv.sets("$du", "sip:" .. hostport)
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
end

local function route_sql(user)
    local rc = KSR.sqlops.sql_query("rt",
        "SELECT dst, weight FROM " .. RT .. " WHERE prefix = '" .. user .. "'", "route")
    hdr("X-Sql-Rc", rc)
    if rc == 1 then
        relay_to(KSR.pv.get("$dbr(route=>[0,0])"))
    elseif rc == 2 then
        KSR.sl.sl_send_reply(404, "No Route")
    else
        KSR.sl.sl_send_reply(503, "SQL Unavailable")
    end
end

local function route_redis(user)
    local rc = KSR.ndb_redis.redis_cmd_p1("r1", "GET " .. RKEY .. "%s", user, "route")
    hdr("X-Redis-Rc", rc)
    if rc < 0 then
        KSR.sl.sl_send_reply(503, "Redis Unavailable")
    elseif KSR.pv.get("$redis(route=>type)") == KSR.pv.get("$redisd(rpl_nil)") then
        KSR.sl.sl_send_reply(404, "No Route")
    else
        relay_to(KSR.pv.get("$redis(route=>value)"))
    end
end

local function sqlinfo()
    local rc = KSR.sqlops.sql_query("rt",
        "SELECT prefix, dst, weight, note FROM " .. RT .. " ORDER BY prefix", "ra")
    hdr("X-Rc", rc)
    hdr("X-Rows", KSR.pv.get("$dbr(ra=>rows)"))
    hdr("X-Cols", KSR.pv.get("$dbr(ra=>cols)"))
    hdr("X-Colname", KSR.pv.get("$dbr(ra=>colname[1])"))
    KSR.pv.seti("$var(i)", 1)
    hdr("X-Cell", KSR.pv.get("$dbr(ra=>[$var(i),1])"))
    -- integers stay integers
    hdr("X-Weight-Type", type(KSR.pv.get("$dbr(ra=>[0,2])")))
    hdr("X-Weight-Sum", (KSR.pv.get("$dbr(ra=>[0,2])") or 0) + (KSR.pv.get("$dbr(ra=>[1,2])") or 0))
    hdr("X-Null", KSR.sqlops.sql_is_null("ra", 0, 3) .. "," .. KSR.sqlops.sql_is_null("ra", 1, 3))
    hdr("X-Num", KSR.sqlops.sql_num_rows("ra") .. "x" .. KSR.sqlops.sql_num_columns("ra"))
    hdr("X-Get", tostring(KSR.sqlops.sql_result_get("ra", 0, 3)) .. ","
        .. KSR.sqlops.sql_result_gete("ra", 0, 3) .. "," .. KSR.sqlops.sql_result_getz("ra", 0, 3))
    KSR.sqlops.sql_result_free("ra")
    hdr("X-Freed-Rows", KSR.pv.get("$dbr(ra=>rows)"))
    hdr("X-None", KSR.sqlops.sql_query("rt",
        "SELECT dst FROM " .. RT .. " WHERE prefix = 'nobody'", "ra"))
    hdr("X-Bad", KSR.sqlops.sql_query("rt", "SELECT no_such_column FROM " .. RT, "ra"))
    hdr("X-Nocon", KSR.sqlops.sql_query("nocon", "SELECT 1", "ra"))
    hdr("X-Xq", KSR.sqlops.sql_xquery("rt",
        "SELECT prefix, dst FROM " .. RT .. " ORDER BY prefix", "xr"))
    hdr("X-Xavp", tostring(KSR.pv.get("$xavp(xr=>prefix)")) .. "," .. tostring(KSR.pv.get("$xavp(xr[1]=>prefix)")))
    hdr("X-Pvq", KSR.sqlops.sql_pvquery("rt",
        "SELECT dst, weight FROM " .. RT .. " WHERE prefix = 'bob'", "$var(dst), $var(w)"))
    hdr("X-Pv", KSR.pv.get("$var(dst)") .. "/" .. KSR.pv.get("$var(w)"))
    hdr("X-Upd", KSR.sqlops.sql_query("rt",
        "UPDATE " .. RT .. " SET weight = weight + 1 WHERE prefix IN ('alice', 'bob')", ""))
    hdr("X-Sqlrows", KSR.pv.get("$sqlrows(rt)"))
    KSR.sl.sl_send_reply(200, "OK")
end

local function redisinfo()
    local k = RKEY .. "info"
    hdr("X-Set", KSR.ndb_redis.redis_cmd("r1", "SET " .. k .. " hello", "r"))
    hdr("X-Set-Type", KSR.pv.get("$redis(r=>type)"))
    hdr("X-Set-Info", KSR.pv.get("$redis(r=>info)"))
    KSR.ndb_redis.redis_cmd_p2("r1", "SET %s %s", k .. ":sp", "two words", "r")
    KSR.ndb_redis.redis_cmd_p1("r1", "GET %s", k .. ":sp", "r")
    hdr("X-Spaced", KSR.pv.get("$redis(r=>value)"))
    KSR.ndb_redis.redis_cmd("r1", "INCR " .. k .. ":n", "n")
    KSR.ndb_redis.redis_cmd("r1", "INCR " .. k .. ":n", "n")
    hdr("X-Incr", KSR.pv.get("$redis(n=>value)") .. "/" .. KSR.pv.get("$redis(n=>type)"))
    KSR.ndb_redis.redis_cmd_p3("r1", "RPUSH %s %s %s", k .. ":l", "a", "b", "l")
    KSR.ndb_redis.redis_cmd("r1", "LRANGE " .. k .. ":l 0 -1", "l")
    hdr("X-List", KSR.pv.get("$redis(l=>type)") .. "/" .. KSR.pv.get("$redis(l=>size)") .. "/"
        .. KSR.pv.get("$redis(l=>value[0])") .. KSR.pv.get("$redis(l=>value[1])") .. "/"
        .. KSR.pv.get("$redis(l=>type[1])"))
    hdr("X-Err", KSR.ndb_redis.redis_cmd("r1", "INCR " .. k, "e"))
    hdr("X-Err-Type", KSR.pv.get("$redis(e=>type)"))
    hdr("X-Err-Info", KSR.pv.get("$redis(e=>info)"))
    KSR.ndb_redis.redis_cmd("r1", "GET " .. k .. ":absent", "g")
    hdr("X-Nil", KSR.pv.get("$redis(g=>type)") .. "/" .. tostring(KSR.pv.get("$redis(g=>value)")))
    hdr("X-Free", KSR.ndb_redis.redis_free("n") .. "/" .. tostring(KSR.pv.get("$redis(n=>value)")))
    hdr("X-Nosrv", KSR.ndb_redis.redis_cmd("nosrv", "PING", "p"))
    KSR.sl.sl_send_reply(200, "OK")
end

local function rpc()
    hdr("X-Exec", KSR.jsonrpcs.exec('{"jsonrpc": "2.0", "method": "core.version", "id": 7}'))
    hdr("X-Code", KSR.pv.get("$jsonrpl(code)"))
    hdr("X-Text", KSR.pv.get("$jsonrpl(text)"))
    local body = cjson.decode(KSR.pv.get("$jsonrpl(body)"))
    hdr("X-Version", type(body.result) == "string" and body.result or "none")
    hdr("X-Id", body.id)
    -- a method that asks every shard, this one included
    hdr("X-Stats", KSR.jsonrpcs.execx(
        '{"jsonrpc": "2.0", "method": "stats.fetch", "params": ["jsonrpcs:"], "id": 2}'))
    local stats = cjson.decode(KSR.jsonrpcs.response())
    hdr("X-Stats-Has", stats.result and stats.result["jsonrpcs.exec"] ~= nil and "yes" or "no")
    KSR.jsonrpcs.exec("no.such_method")
    hdr("X-Missing", KSR.pv.get("$jsonrpl(code)"))
    hdr("X-Badjson", KSR.jsonrpcs.exec("{nope"))
    KSR.sl.sl_send_reply(200, "OK")
end

local function json()
    if KSR.sipjson.sj_serialize("0Bct", "$var(json)") < 0 then
        KSR.sl.sl_send_reply(500, "No JSON")
        return
    end
    local j = cjson.decode(KSR.pv.get("$var(json)"))
    hdr("X-J", table.concat({ j.mt, j.rm, j.pr, j.rU, j.rd, j.fU, j.ci, j.tU, j.cs, j.rb, j.ua,
        type(j.sp), j.rs }, "|"))
    KSR.sl.sl_send_reply(200, "OK")
end

function ksr_request_route()
    if KSR.is_OPTIONS() and KSR.siputils.has_totag() < 0 then
        local user = KSR.pv.get("$rU")
        if user == "sqlinfo" then return sqlinfo() end
        if user == "redisinfo" then return redisinfo() end
        if user == "rpc" then return rpc() end
        if user == "json" then return json() end
        KSR.sl.sl_send_reply(200, "Keepalive")
        return
    end
    -- CANCEL follows its INVITE; retransmissions are absorbed
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return
    end
    if not KSR.is_ACK() and KSR.tmx.t_precheck_trans() > 0 then
        KSR.tm.t_check_trans()
        return
    end
    -- within a dialog: follow the recorded route
    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            KSR.tm.t_relay()
        elseif KSR.is_ACK() and KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        elseif not KSR.is_ACK() then
            KSR.sl.sl_send_reply(404, "Not here")
        end
        return
    end
    if KSR.is_INVITE() or KSR.is_MESSAGE() then
        if KSR.is_INVITE() then
            KSR.rr.record_route()
        end
        local how = KSR.pv.get("$hdr(X-Lookup)")
        local user = KSR.pv.get("$rU") or ""
        if how == "redis" then
            return route_redis(user)
        end
        return route_sql(user)
    end
    KSR.sl.sl_send_reply(405, "Method Not Allowed")
end
