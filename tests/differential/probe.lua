-- Differential probe (tests/differential.rs): runs unchanged on Kamailio 5.6
-- (app_lua) and on sipshard. For every request it evaluates one group of
-- getters (header `X-Group: n`, PER getters a group) and answers 200 with one
-- `X-P: <name>\t<type>:<value>` header per getter, plus `X-N: <count>`. A
-- reply (top Via the server's, next Via the test's) gets the same headers
-- added in ksr_reply_route and is forwarded back to the test.
-- Values are escaped (\r \n \t \\ and bytes outside printable ASCII as \xHH)
-- so every value fits on one header line. Times are reported as "now" when
-- within 10 s of the script's own clock.

local PER = 12
local P = {}

local function add(name, f) P[#P + 1] = { name, f } end
local function pv(name) add(name, function() return KSR.pv.get(name) end) end
local function now_check(v)
	if type(v) == "number" and math.abs(v - os.time()) < 10 then return "now" end
	return v
end

-- pseudo-variables
for _, n in ipairs({
	"$rm", "$ru", "$ruri", "$rU", "$rd", "$rp", "$rz", "$rv", "$du", "$ou", "$oU", "$od",
	"$fu", "$fU", "$fd", "$fn", "$ft", "$tu", "$tU", "$td", "$tn", "$tt",
	"$ci", "$cs", "$rs", "$rr", "$ua", "$ct", "$cT", "$cl", "$mb", "$ml", "$mt", "$bs", "$rb",
	"$si", "$sp", "$Ri", "$Rp", "$pr", "$proto", "$au", "$ar", "$adu", "$bf", "$mf",
	"$var(probe_unset)", "$avp(probe_unset)", "$xavp(probe_unset)",
	"$hdr(Via)", "$hdr(via)", "$hdr(v)", "$hdr(X-Multi)", "$hdr(Nope)", "$hdr(Contact)",
	"$(hdr(X-Multi)[0])", "$(hdr(X-Multi)[1])", "$(hdr(X-Multi)[-1])", "$(hdr(X-Multi)[5])",
	"$(hdr(Via)[*])", "$hdrc(Via)", "$hdrc(X-Multi)", "$hdrc(Nope)",
	"$(ru{uri.user})", "$(ru{uri.host})", "$(ru{uri.port})", "$(ru{uri.params})",
	"$(ru{uri.param,user})", "$(ru{uri.scheme})", "$(ru{s.len})", "$(ru{uri.user}{s.len})",
	"$(fu{uri.user})", "$(fu{uri.host})", "$(hdr(From){tobody.user})",
	"$(hdr(From){tobody.host})", "$(hdr(From){tobody.uri})", "$(hdr(From){tobody.display})",
	"$(hdr(To){tobody.tag})", "$(hdr(From){tobody.params})",
	"$(hdr(Contact){nameaddr.uri})", "$(hdr(Contact){nameaddr.name})",
	"$(hdr(Contact){nameaddr.uri}{uri.host})",
	"$(hdr(Via){param.value,branch})", "$(hdr(Via){param.value,rport})",
	"$(hdr(Via){param.value,nope})",
	"$(ci{s.toupper})", "$(rm{s.tolower})", "$(ci{s.substr,0,3})", "$(ci{s.substr,2,0})",
	"$(cs{s.int})", "$(hdr(X-Num){s.int})", "$(fn{s.len})", "$(rb{s.len})",
	"$(hdr(X-Num){s.int}{s.len})", "$(ru{s.tolower}{uri.user})",
	"$(ru{uri.param,transport})", "$(ct{nameaddr.uri})", "$(ct{tobody.user})",
	"$(hdr(CSeq){s.int})", "$(ci{s.substr,-3,0})", "$(ci{s.substr,1,100})", "$(du{s.len})",
	"$(hdr(Authorization)[0])", "$hdr(Proxy-Authorization)", "$(hdr(Record-Route)[-2])",
	"$hdrc(Record-Route)", "$(fu{uri.params})", "$(tu{uri.port})", "$(hdr(Contact)[1])",
	"$(hdr(m)[*])", "$(hdr(X-Empty){s.len})", "$hdr(X-Empty)", "$(fn{s.tolower})",
	"$(hdr(Via){param.count})", "$(ru{uri.params}{param.count})", "$(ru{uri.params}{param.name,1})",
	"$(ru{uri.params}{param.valueat,0})", "$(ru{uri.params}{param.name,9})", "$(ua{s.trim})",
	"$(ua{s.ltrim})", "$(ua{s.rtrim})", "$(ci{s.md5})", "$(ci{s.sha256})", "$(rm{s.encode.hexa})",
	"$(ci{s.select,0,@})", "$(ci{s.select,-1,.})", "$(ci{s.select,5,.})", "$(ci{s.strip,2})",
	"$(ci{s.striptail,3})", "$(ci{s.strip,99})", "$(ci{s.numeric})", "$(ru{uri.transport})",
	"$(ru{uri.maddr})", "$(ru{uri.ttl})", "$(ru{uri.method})",
	"$rP", "$su", "$sut", "$Ru", "$Rut", "$RAi", "$RAp", "$dd", "$dp", "$dP",
	"$hfl(Via)", "$(hfl(Via)[1])", "$(hfl(Via)[-1])", "$hflc(Via)", "$hflc(Record-Route)",
	"$(hfl(Record-Route)[2])", "$(hfl(Contact)[1])", "$hflc(Contact)", "$hflc(X-Multi)",
	"$(hfl(Record-Route)[1])", "$hfl(Contact)", "$(hfl(Contact)[2])", "$(hfl(Via)[2])",
	"$(hfl(X-Multi)[1])",
	"$nope", "$(hdr(X-Multi)", "ru", "$hdr()", "$(ru{uri.nope})", "$(ru{s.substr,x,1})",
}) do pv(n) end
add("$du parts", function()
	KSR.pv.sets("$du", "sip:192.0.2.4:5099;transport=tcp")
	local a = tostring(KSR.pv.get("$dd")) .. "|" .. tostring(KSR.pv.get("$dp")) .. "|"
		.. tostring(KSR.pv.get("$dP"))
	KSR.pv.sets("$du", "sip:proxy.example.com")
	a = a .. "|" .. tostring(KSR.pv.get("$dd")) .. "|" .. tostring(KSR.pv.get("$dp")) .. "|"
		.. tostring(KSR.pv.get("$dP")) .. "|" .. type(KSR.pv.get("$dp"))
	KSR.pv.unset("$du")
	return a
end)

add("$Ts", function() return now_check(KSR.pv.get("$Ts")) end)
add("$TS", function() return now_check(KSR.pv.get("$TS")) end)
add("$timef(%Y)", function()
	local v = KSR.pv.get("$timef(%Y)")
	if v == os.date("%Y") then return "this-year" end
	return v
end)

-- KSR.pv API
add("pv.gete(unset var)", function() return KSR.pv.gete("$var(probe_unset)") end)
add("pv.getw(unset avp)", function() return KSR.pv.getw("$avp(probe_unset)") end)
add("pv.gete(unset avp)", function() return KSR.pv.gete("$avp(probe_unset)") end)
add("pv.getw($du)", function() return KSR.pv.getw("$du") end)
add("pv.getvs($du)", function() return KSR.pv.getvs("$du", "dflt") end)
add("pv.getvn($du)", function() return KSR.pv.getvn("$du", 7) end)
add("pv.getvs($ci)", function() return KSR.pv.getvs("$ci", "dflt") end)
add("pv.geti($cs)", function() return KSR.pv.geti("$cs") end)
add("pv.geti($du)", function() return KSR.pv.geti("$du") end)
add("pv.geti($ru)", function() return KSR.pv.geti("$ru") end)
add("pv.geti($sp)", function() return KSR.pv.geti("$sp") end)
add("pv.getvn($cs)", function() return KSR.pv.getvn("$cs", 7) end)
add("pv.getvn($ml)", function() return KSR.pv.getvn("$ml", 7) end)
add("pv.getvs($sp)", function() return KSR.pv.getvs("$sp", "x") end)
add("pv.gete($fd)", function() return KSR.pv.gete("$fd") end)
add("pv.getw($ft)", function() return KSR.pv.getw("$ft") end)
add("pv.is_null($du)", function() return KSR.pv.is_null("$du") end)
add("pv.is_null($var(unset))", function() return KSR.pv.is_null("$var(probe_unset)") end)
add("pv.sets var", function()
	local rc = KSR.pv.sets("$var(probe_s)", "abc")
	return tostring(rc) .. "|" .. tostring(KSR.pv.get("$var(probe_s)"))
end)
add("pv.seti var", function()
	local rc = KSR.pv.seti("$var(probe_i)", 12)
	return tostring(rc) .. "|" .. tostring(KSR.pv.get("$var(probe_i)")) .. "|"
		.. type(KSR.pv.get("$var(probe_i)"))
end)
add("pv.unset var", function()
	KSR.pv.sets("$var(probe_u)", "x")
	local rc = KSR.pv.unset("$var(probe_u)")
	local v = KSR.pv.get("$var(probe_u)")
	return tostring(rc) .. "|" .. tostring(v) .. "|" .. type(v)
end)
add("pv.avp set/get", function()
	KSR.pv.sets("$avp(probe_a)", "one")
	KSR.pv.sets("$avp(probe_a)", "two")
	local v1, v0 = KSR.pv.get("$(avp(probe_a)[1])"), KSR.pv.get("$avp(probe_a)")
	local c = KSR.pv.get("$cnt($avp(probe_a))")
	KSR.pv.unset("$avp(probe_a)")
	return tostring(v0) .. "|" .. tostring(v1) .. "|" .. tostring(c) .. "|"
		.. tostring(KSR.pv.get("$avp(probe_a)"))
end)
add("pv.sets $ru", function()
	local rc = KSR.pv.sets("$rU", "newuser")
	local v = KSR.pv.get("$ru")
	return tostring(rc) .. "|" .. tostring(v)
end)

-- KSR.pvx: xavp / avp / var
local function dump(v)
	if type(v) ~= "table" then return type(v) .. ":" .. tostring(v) end
	local keys = {}
	for k in pairs(v) do keys[#keys + 1] = tostring(k) end
	table.sort(keys)
	local out = {}
	for _, k in ipairs(keys) do
		local x = v[k]
		if x == nil then x = v[tonumber(k)] end
		out[#out + 1] = k .. "=" .. dump(x)
	end
	return "{" .. table.concat(out, ",") .. "}"
end
add("pvx.xavp_params_explode", function()
	local rc = KSR.pvx.xavp_params_explode("a=1;b=two;c", "probe_x")
	local r = tostring(rc) .. "|" .. dump(KSR.pv.get("$xavp(probe_x=>a)")) .. "|"
		.. dump(KSR.pv.get("$xavp(probe_x=>b)")) .. "|" .. dump(KSR.pv.get("$xavp(probe_x=>c)"))
		.. "|" .. dump(KSR.pvx.xavp_get_keys("probe_x", 0))
	KSR.pvx.xavp_rm("probe_x")
	return r .. "|" .. dump(KSR.pvx.xavp_is_null("probe_x"))
end)
add("pvx.xavp_child", function()
	local a = KSR.pvx.xavp_child_sets("probe_c", "k", "v1")
	local b = KSR.pvx.xavp_child_seti("probe_c", "n", 5)
	local r = dump(a) .. dump(b) .. "|" .. dump(KSR.pvx.xavp_child_get("probe_c", "k")) .. "|"
		.. dump(KSR.pvx.xavp_child_get("probe_c", "n")) .. "|"
		.. dump(KSR.pvx.xavp_child_gete("probe_c", "zz")) .. "|"
		.. dump(KSR.pvx.xavp_child_getw("probe_c", "zz")) .. "|"
		.. dump(KSR.pvx.xavp_child_is_null("probe_c", "zz")) .. "|"
		.. dump(KSR.pv.get("$xavp(probe_c=>k)"))
	KSR.pvx.xavp_rm("probe_c")
	return r
end)
add("pvx.xavp_sets/get", function()
	local a = KSR.pvx.xavp_sets("probe_s", "v")
	local r = dump(a) .. "|" .. dump(KSR.pvx.xavp_get("probe_s")) .. "|"
		.. dump(KSR.pvx.xavp_gete("probe_none")) .. "|" .. dump(KSR.pvx.xavp_getw("probe_none"))
		.. "|" .. dump(KSR.pvx.xavp_get("probe_none"))
	KSR.pvx.xavp_rm("probe_s")
	return r
end)
add("pvx.pv_var_to_xavp", function()
	KSR.pv.sets("$var(probe_v1)", "x1")
	KSR.pv.seti("$var(probe_v2)", 3)
	local rc = KSR.pvx.pv_var_to_xavp("probe_v1", "probe_vx")
	local r = dump(rc) .. "|" .. dump(KSR.pv.get("$xavp(probe_vx=>probe_v1)"))
	KSR.pvx.xavp_rm("probe_vx")
	return r
end)
add("pvx.xavp_params_implode", function()
	KSR.pvx.xavp_params_explode("a=1;b=two", "probe_i")
	local rc = KSR.pvx.xavp_params_implode("probe_i", "$var(probe_imp)")
	KSR.pvx.xavp_rm("probe_i")
	return dump(rc) .. "|" .. dump(KSR.pv.get("$var(probe_imp)"))
end)
add("pvx.avp", function()
	local a = KSR.pvx.avp_sets("probe_pa", "s")
	local r = dump(a) .. "|" .. dump(KSR.pvx.avp_get("probe_pa")) .. "|"
		.. dump(KSR.pvx.avp_gete("probe_none")) .. "|" .. dump(KSR.pvx.avp_getw("probe_none"))
		.. "|" .. dump(KSR.pvx.avp_is_null("probe_none"))
	KSR.pvx.avp_rm("probe_pa")
	return r .. "|" .. dump(KSR.pvx.avp_is_null("probe_pa"))
end)
add("pvx.var", function()
	local a = KSR.pvx.var_sets("probe_pv", "s")
	local b = KSR.pvx.var_seti("probe_pn", 4)
	return dump(a) .. dump(b) .. "|" .. dump(KSR.pvx.var_get("probe_pv")) .. "|"
		.. dump(KSR.pvx.var_get("probe_pn"))
end)

add("xavp stack", function()
	KSR.pv.sets("$xavp(a=>x)", "a0x") KSR.pv.sets("$xavp(a[0]=>y)", "a0y")
	KSR.pv.sets("$xavp(a=>x)", "a1x") KSR.pv.sets("$xavp(a[0]=>y)", "a1y")
	KSR.pv.sets("$xavp(a[0]=>y)", "a1y2")
	local r = { dump(KSR.pvx.xavp_getd_p1("a", 0)), dump(KSR.pvx.xavp_getd_p1("a", 1)),
		dump(KSR.pvx.xavp_getd_p1("a", 5)), dump(KSR.pvx.xavp_get_keys("a", 1)),
		dump(KSR.pv.get("$xavp(a[1]=>x)")), dump(KSR.pv.get("$xavp(a=>y)")),
		dump(KSR.pv.get("$xavp(a=>y[1])")), dump(KSR.pv.get("$(xavp(a=>y)[1])")),
		dump(KSR.pv.get("$cnt($xavp(a))")) }
	KSR.pvx.xavp_child_sets("a", "z", "zz")
	r[#r + 1] = dump(KSR.pvx.xavp_getd_p1("a", 0)) .. dump(KSR.pvx.xavp_get_keys("a", 0))
	r[#r + 1] = dump(KSR.pvx.xavp_copy("a", 1, "b")) .. dump(KSR.pvx.xavp_getd_p1("b", 0))
	KSR.pv.unset("$xavp(a=>y)")
	r[#r + 1] = dump(KSR.pvx.xavp_getd_p1("a", 0))
	KSR.pv.unset("$xavp(a)")
	r[#r + 1] = dump(KSR.pv.get("$cnt($xavp(a))"))
	KSR.pvx.xavp_rm("a") KSR.pvx.xavp_rm("b")
	return table.concat(r, "|")
end)
add("xavp_slist_explode", function()
	local r = dump(KSR.pvx.xavp_slist_explode(" a = b; c=d;;", "=;", "t", "s1"))
		.. dump(KSR.pvx.xavp_getd_p1("s1", 0))
		.. dump(KSR.pvx.xavp_slist_explode(" a = b; c=d;;", "=;", "", "s2"))
		.. dump(KSR.pvx.xavp_getd_p1("s2", 0))
		.. dump(KSR.pvx.xavp_child_rm("s1", "v")) .. dump(KSR.pvx.xavp_getd_p1("s1", 0))
	KSR.pvx.xavp_rm("s1") KSR.pvx.xavp_rm("s2")
	return r
end)
add("xavu / xavi", function()
	local P = KSR.pvx
	local r = { dump(P.xavu_sets("u", "a")) .. dump(P.xavu_sets("u", "b")) .. dump(P.xavu_get("u"))
		.. dump(KSR.pv.get("$xavu(u)")),
		dump(P.xavu_child_sets("c", "f", "1")) .. dump(P.xavu_child_sets("c", "f", "2"))
		.. dump(P.xavu_child_get("c", "f")) .. dump(KSR.pv.get("$xavu(c=>f)"))
		.. dump(P.xavu_child_is_null("c", "g")) .. dump(P.xavu_is_null("c")),
		dump(P.xavu_params_explode("a=1;b=2", "pe")) .. dump(KSR.pv.get("$xavu(pe=>b)")) }
	KSR.pv.sets("$xavu(w=>k)", "v1") KSR.pv.sets("$xavu(w=>k)", "v2")
	r[#r + 1] = dump(KSR.pv.get("$xavu(w=>k)"))
	r[#r + 1] = dump(P.xavi_sets("MiX", "a")) .. dump(P.xavi_get("mix")) .. dump(KSR.pv.get("$xavi(MIX)"))
	r[#r + 1] = dump(P.xavi_child_sets("Ci", "FoO", "1")) .. dump(P.xavi_child_get("ci", "foo"))
		.. dump(KSR.pv.get("$xavi(CI=>FOO)"))
	r[#r + 1] = dump(P.xavu_rm("u")) .. dump(P.xavu_is_null("u")) .. dump(P.xavu_gete("u"))
		.. dump(P.xavu_getw("u")) .. dump(P.xavi_rm("MIX")) .. dump(P.xavi_is_null("mix"))
	for _, n in ipairs({ "c", "pe", "w" }) do P.xavu_rm(n) end
	P.xavi_rm("ci")
	return table.concat(r, "|")
end)
add("pvx.evalx", function()
	local r = {}
	for _, fmt in ipairs({ "m=$rm u=$(ru{uri.user})", "n=$du", "x=$var(zz) y", "lit $$ z",
		"end $", "a $ b", "$hdr(Call-ID)|$ci", "$nope", "" }) do
		local rc = KSR.pvx.evalx("$var(ev)", fmt)
		r[#r + 1] = tostring(rc) .. "=" .. dump(KSR.pv.get("$var(ev)"))
		KSR.pv.unset("$var(ev)")
	end
	return table.concat(r, "|")
end)
add("pvx.sbranch", function()
	local r = { dump(KSR.pv.get("$sbranch(uri)")), dump(KSR.pv.get("$branch(count)")) }
	KSR.pv.sets("$sbranch(uri)", "sip:x@192.0.2.1") KSR.pv.sets("$sbranch(dst_uri)", "sip:192.0.2.2")
	KSR.pv.seti("$sbranch(q)", 500)
	r[#r + 1] = dump(KSR.pv.get("$sbranch(uri)")) .. dump(KSR.pv.get("$sbranch(q)"))
		.. dump(KSR.pv.get("$sbranch(dst_uri)"))
	r[#r + 1] = dump(KSR.pvx.sbranch_append()) .. dump(KSR.pv.get("$(branch(uri)[0])"))
		.. dump(KSR.pv.get("$(branch(q)[0])")) .. dump(KSR.pv.get("$(branch(dst_uri)[0])"))
		.. dump(KSR.pv.get("$branch(count)"))
	r[#r + 1] = dump(KSR.pvx.sbranch_set_ruri()) .. dump(KSR.pv.get("$ru")) .. dump(KSR.pv.get("$du"))
	r[#r + 1] = dump(KSR.pvx.sbranch_reset()) .. dump(KSR.pv.get("$sbranch(uri)"))
		.. dump(KSR.pv.get("$sbranch(q)"))
	return table.concat(r, "|")
end)

-- KSR.kx (not get_conid: Kamailio 5.6 crashes on it for a UDP message)
for _, n in ipairs({
	"get_ruri", "get_ruser", "gete_ruser", "getw_ruser", "get_rhost", "gete_rhost", "getw_rhost",
	"get_ouri", "get_furi", "get_fuser", "gete_fuser", "getw_fuser", "get_fhost", "gete_fhost",
	"getw_fhost", "get_turi", "get_tuser", "gete_tuser", "getw_tuser", "get_thost",
	"gete_thost", "getw_thost", "get_duri", "gete_duri", "getw_duri", "get_cturi",
	"gete_cturi", "getw_cturi", "get_nhuri", "get_srcuri", "get_srcaddr_sock", "get_ua",
	"gete_ua", "getw_ua", "get_srcip", "get_srcport", "get_send_sock", "get_send_sock_name",
	"get_send_sock_port", "get_rcvip", "get_rcv_sock_name", "get_rcvport", "get_rcvadvip",
	"get_rcvadvport", "get_rcvaddr_sock", "get_proto", "get_protoid", "get_au", "getw_au",
	"gete_au", "get_method", "get_status", "gets_status", "get_body", "getw_body", "gete_body",
	"get_bodylen", "get_callid", "get_msgbuf", "get_msglen", "get_msgtype",
}) do
	add("kx." .. n, function() return KSR.kx[n]() end)
end
add("kx.get_timestamp", function() return now_check(KSR.kx.get_timestamp()) end)
for _, a in ipairs({ { "get_def", "PROBE_DEF" }, { "get_def", "PROBE_FLAG" },
	{ "get_def", "PROBE_NOPE" }, { "get_defn", "PROBE_NUM" }, { "get_defn", "PROBE_DEF" },
	{ "get_defn", "PROBE_NOPE" }, { "ifdef", "PROBE_FLAG" }, { "ifdef", "PROBE_NOPE" },
	{ "ifndef", "PROBE_FLAG" }, { "ifndef", "PROBE_NOPE" }, { "get_env", "PROBE_ENV" },
	{ "get_env", "PROBE_NOPE" }, { "get_envn", "PROBE_ENVN" }, { "get_envn", "PROBE_ENV" },
	{ "get_envn", "PROBE_NOPE" } }) do
	add("kx." .. a[1] .. "(" .. a[2] .. ")", function() return KSR.kx[a[1]](a[2]) end)
end

-- KSR.hdr
local H = {
	{ "get", "Via" }, { "get", "X-Multi" }, { "get", "Nope" }, { "gete", "Nope" },
	{ "getw", "Nope" }, { "gete", "Call-ID" }, { "getw", "f" }, { "is_present", "X-Multi" },
	{ "is_present", "Nope" }, { "is_present", "i" },
	{ "get_idx", "X-Multi", 0 }, { "get_idx", "X-Multi", 1 }, { "get_idx", "X-Multi", -1 },
	{ "get_idx", "X-Multi", 9 }, { "gete_idx", "X-Multi", 9 }, { "getw_idx", "X-Multi", 9 },
	{ "match_content", "X-Multi", "eq", "m2", "a" }, { "match_content", "X-Multi", "eq", "M1", "f" },
	{ "match_content", "X-Multi", "eq", "m2, m3", "l" }, { "match_content", "X-Multi", "ne", "m9", "a" },
	{ "match_content", "X-Multi", "ne", "m9", "o" }, { "match_content", "X-Multi", "sw", "m", "a" },
	{ "match_content", "X-Multi", "in", "2", "a" }, { "match_content", "X-Multi", "in", "2", "o" },
	{ "match_content", "X-Multi", "re", "m", "a" }, { "match_content", "X-Multi", "eq", "m1", "0" },
	{ "match_content", "Nope", "ne", "x", "o" }, { "match_content", "f", "sw", "\"alice", "f" },
	-- (texts end in CRLF: Kamailio adds a text without one as it is, glued to
	-- the next header line; sipshard ends the line — docs/kemi.md)
	{ "append", "X-App: 1\r\n" }, { "append", "" }, { "insert", "X-Ins: 1\r\n" },
	{ "remove", "X-Multi" }, { "remove", "Nope" }, { "rmappend", "X-Num", "X-Num: 9\r\n" },
	{ "rminsert", "Nope", "X-RI: 1\r\n" }, { "append_after", "X-AA: 1\r\n", "Call-ID" },
	{ "append_after", "X-AB: 1\r\n", "Nope" }, { "insert_before", "X-IB: 1\r\n", "CSeq" },
	{ "insert_before", "X-IC: 1\r\n", "nope" }, { "append_after", "X-AD: 1\r\n", "v" },
}
for _, a in ipairs(H) do
	local label = "hdr." .. a[1] .. "(" .. table.concat(a, ",", 2):gsub("\r\n", "") .. ")"
	add(label, function() return KSR.hdr[a[1]]((table.unpack or unpack)(a, 2)) end)
end

-- return code of the previous KSR call
add("$rc after -1", function()
	KSR.hdr.is_present("Nope")
	return tostring(KSR.pv.get("$rc")) .. "|" .. tostring(KSR.pv.get("$retcode"))
end)

local function esc(s)
	return (s:gsub("[%c\\\128-\255]", function(c)
		if c == "\r" then return "\\r" elseif c == "\n" then return "\\n"
		elseif c == "\t" then return "\\t" elseif c == "\\" then return "\\\\" end
		return string.format("\\x%02x", c:byte())
	end))
end

-- textops functions with results only (their edits are not looked at)
add("textops.regex_substring", function()
	local r = {}
	for _, a in ipairs({ { "___ abc123def ___ ghi456 ___", "([a-z]*)([0-9]+)([a-z]*)", 1, 3 },
		{ "___ abc123def ___", "([a-z]*)([0-9]+)([a-z]*)", 0, 3 },
		{ "___ abc123def ___", "([a-z]*)([0-9]+)([a-z]*)", 2, 2 },
		{ "___ abc123def ___", "([a-z]*)([0-9]+)(x)?", 3, 4 },
		{ "ABC", "b", 0, 1 }, { KSR.pv.get("$ci") or "", "^([^@]+)@", 1, 2 },
		{ "x", "(", 0, 1 }, { "inv1@127", "^([^@]+)@", 1, 2 }, { "inv1@127", "([^@]+)@", 1, 2 },
		{ "inv1@127", "^(inv)", 1, 2 }, { "inv1@127", "(inv)", 1, 2 }, { "inv1@127", "(inv)", 0, 1 },
		{ "inv1@127", "n", 0, 1 }, { "inv1@127", "(n)(v)", 2, 3 } }) do
		KSR.pv.unset("$var(rs)")
		local rc = KSR.textops.regex_substring(a[1], a[2], a[3], a[4], "$var(rs)")
		r[#r + 1] = tostring(rc) .. "=" .. dump(KSR.pv.get("$var(rs)"))
	end
	return table.concat(r, "|")
end)
add("textops.is_audio_on_hold", function() return KSR.textops.is_audio_on_hold() end)
add("textops.remove_hf_match", function()
	return table.concat({ KSR.textops.remove_hf_match("X-Nope", "eq", "x"),
		KSR.textops.remove_hf_match("X-Multi", "in", "zzz"),
		KSR.textops.remove_hf_match("X-Multi", "xx", "m1"),
		KSR.textops.remove_hf_match("X-Multi", "eq", "m1"),
		KSR.textops.remove_hf_match("X-Num", "re", "^[0-9]+ABC$"),
		KSR.textops.remove_hf_match("X-Empty", "ne", "q") }, ",")
end)
add("textops.replace_body_atonce", function()
	return table.concat({ KSR.textops.replace_body_atonce("zzz", "y"),
		KSR.textops.replace_body_atonce("^v=0.+$", "") }, ",")
end)

local function report(add_header)
	local g = tonumber(KSR.pv.get("$hdr(X-Group)") or "0") or 0
	local last = math.min(#P, (g + 1) * PER)
	for i = g * PER + 1, last do
		local name, f = P[i][1], P[i][2]
		local ok, v = pcall(f)
		local line
		if ok then
			line = type(v) .. ":" .. esc(tostring(v))
		else
			line = "error:"
		end
		add_header("X-P: " .. name .. "\t" .. line .. "\r\n")
	end
	add_header("X-N: " .. #P .. "\r\n")
end

function ksr_request_route()
	report(KSR.hdr.append_to_reply)
	KSR.sl.sl_send_reply(200, "OK")
	KSR.x.exit()
end

function ksr_reply_route()
	report(KSR.hdr.append)
end
