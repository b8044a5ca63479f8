-- Minesweeper over SIP and HTTP: the game from the ClueCon talk "Versatile
-- SIP routing: Kamailio embedded scripting languages" (KEMI), on sipshard.
--
--   curl http://127.0.0.1:5060/e-1-2         explore row 1, column 2
--   curl http://127.0.0.1:5060/d-3-4         defuse (flag) row 3, column 4
--   curl http://127.0.0.1:5060/new           a new game
--   curl http://127.0.0.1:5060/              the board
--   sipsak -vvv -s sip:e-4-5@127.0.0.1       the same over SIP OPTIONS: the
--                                            reason phrase says what
--                                            happened, the body is the board
--
-- Commands: e-X-Y explore, d-X-Y defuse (X row, Y column, from 1).
-- Map: H unexplored, W defused, X buuum!, 0-8 explored (mines around).
--
-- The game lives in the htable "mines", so every shard (and every client)
-- plays the same board. Config (etc/examples/minesweeper.toml):
--
--   [core]
--   script = "etc/examples/minesweeper.lua"
--   defines = ["MINESWEEPER_SEED=42"]   # optional: the same mines every run
--   [[htable]]
--   name = "mines"
--   [tcp]
--   enable = true                        # HTTP comes on the SIP TCP port
--
-- An HTTP request runs ksr_xhttp_event("xhttp:request") ([xhttp]
-- event_callback), a SIP request ksr_request_route().

local ROWS, COLS, MINES = 5, 6, 5
local T = "mines"

local function get(k)
	return KSR.htable.sht_get(T, k)
end

local function set(k, v)
	if type(v) == "number" then
		KSR.htable.sht_seti(T, k, v)
	else
		KSR.htable.sht_sets(T, k, v)
	end
end

local function cell(r, c)
	return "c-" .. r .. "-" .. c
end

local function is_mine(r, c)
	return get("m-" .. r .. "-" .. c) == 1
end

-- Park-Miller minimal standard generator: exact in Lua 5.1 doubles, so a
-- seed gives the same mines under LuaJIT and Lua 5.4.
local function next_rand(x)
	return (x * 16807) % 2147483647
end

local function new_game()
	local game = (get("game") or 0) + 1
	local seed = KSR.kx.get_defn("MINESWEEPER_SEED")
	if seed == 0 then
		seed = KSR.kx.get_timestamp()
	end
	local x = (seed + game * 7919) % 2147483646 + 1
	for r = 1, ROWS do
		for c = 1, COLS do
			set(cell(r, c), "H")
			set("m-" .. r .. "-" .. c, 0)
		end
	end
	local placed = 0
	while placed < MINES do
		x = next_rand(x)
		local n = x % (ROWS * COLS)
		local r, c = math.floor(n / COLS) + 1, n % COLS + 1
		if not is_mine(r, c) then
			set("m-" .. r .. "-" .. c, 1)
			placed = placed + 1
		end
	end
	set("game", game)
	set("state", "playing")
	return game
end

local function ensure_game()
	if get("state") == nil then
		new_game()
	end
end

local function around(r, c)
	local n = 0
	for dr = -1, 1 do
		for dc = -1, 1 do
			local rr, cc = r + dr, c + dc
			if (dr ~= 0 or dc ~= 0) and rr >= 1 and rr <= ROWS and cc >= 1 and cc <= COLS
				and is_mine(rr, cc) then
				n = n + 1
			end
		end
	end
	return n
end

local function count_explored()
	local n = 0
	for r = 1, ROWS do
		for c = 1, COLS do
			if string.match(get(cell(r, c)) or "", "^%d$") then
				n = n + 1
			end
		end
	end
	return n
end

-- Opens (r, c) and, around a 0, its neighbours (an explicit stack, at most
-- ROWS * COLS cells).
local function open(r, c)
	local stack = { { r, c } }
	while #stack > 0 do
		local p = table.remove(stack)
		local pr, pc = p[1], p[2]
		if get(cell(pr, pc)) == "H" then
			local n = around(pr, pc)
			set(cell(pr, pc), tostring(n))
			if n == 0 then
				for dr = -1, 1 do
					for dc = -1, 1 do
						local rr, cc = pr + dr, pc + dc
						if rr >= 1 and rr <= ROWS and cc >= 1 and cc <= COLS then
							stack[#stack + 1] = { rr, cc }
						end
					end
				end
			end
		end
	end
end

local function board()
	local lines = {}
	lines[#lines + 1] = "game " .. get("game") .. ": " .. get("state")
		.. " (" .. ROWS .. "x" .. COLS .. ", " .. MINES .. " mines)"
	local head = "   "
	for c = 1, COLS do
		head = head .. " " .. c
	end
	lines[#lines + 1] = head
	for r = 1, ROWS do
		local row = " " .. r .. " "
		for c = 1, COLS do
			row = row .. " " .. get(cell(r, c))
		end
		lines[#lines + 1] = row
	end
	return table.concat(lines, "\n") .. "\n"
end

-- Runs a command; returns (status code, reason phrase). "e-X-Y", "d-X-Y",
-- "new", "board" (or "").
local function play(cmd)
	if cmd == "new" then
		new_game()
		return 200, "New Game"
	end
	ensure_game()
	if cmd == "" or cmd == "board" then
		return 200, "Board"
	end
	local op, r, c = string.match(cmd, "^([edED])%-(%d+)%-(%d+)$")
	r, c = tonumber(r), tonumber(c)
	if not op or r < 1 or r > ROWS or c < 1 or c > COLS then
		return 400, "Bad Command"
	end
	if get("state") ~= "playing" then
		return 409, "Game Over"
	end
	op = string.lower(op)
	local here = get(cell(r, c))
	if op == "d" then
		if here ~= "H" then
			return 200, "Nothing To Defuse"
		end
		set(cell(r, c), "W")
		return 200, "Defused"
	end
	if here ~= "H" then
		return 200, "Already Explored"
	end
	if is_mine(r, c) then
		set(cell(r, c), "X")
		set("state", "lost")
		return 200, "Buuum"
	end
	open(r, c)
	if count_explored() == ROWS * COLS - MINES then
		set("state", "won")
		return 200, "You Won"
	end
	return 200, "Safe"
end

-- SIP: OPTIONS sip:e-2-5@127.0.0.1 plays; other requests are refused.
function ksr_request_route()
	if not KSR.is_OPTIONS() then
		KSR.sl.sl_send_reply(405, "Only OPTIONS Here")
		return
	end
	local cmd = KSR.kx.gete_ruser()
	local code, reason = play(cmd)
	KSR.textops.set_reply_body(board(), "text/plain")
	KSR.sl.sl_send_reply(code, reason)
end

-- HTTP: GET /e-1-2, /d-1-2, /new, /.
function ksr_xhttp_event(evname)
	local url = KSR.pv.get("$hu") or "/"
	local cmd = string.match(url, "^/([^?#]*)") or ""
	local code, reason = play(cmd)
	KSR.xhttp.xhttp_reply(code, reason, "text/plain", reason .. "\n" .. board())
end
