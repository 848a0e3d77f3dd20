-- POST a Paxos notification with a NEW random UUID v4 id on every request: the intake's
-- normal case, one insert per request.
--
--   wrk -t2 -c64 -d15s -s bench/wrk/new_ids.lua http://127.0.0.1:8000/webhooks/paxos \
--       -- API_KEY [HEADER [SEED]]
--
-- Each wrk thread seeds its own generator from SEED (default: the clock) and its thread
-- number, so threads and runs never replay the same ids.

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "report.lua")

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_number", counter)
end

local headers

function init(args)
   local key = args[1] or "bench-key-000000001"
   local header = args[2] or "X-Api-Key"
   local seed = tonumber(args[3]) or os.time()
   math.randomseed(seed * 1009 + (thread_number or 0) * 7919)
   -- LuaJIT's first draws after seeding are poorly mixed: throw a few away.
   for _ = 1, 10 do math.random() end
   headers = { ["Content-Type"] = "application/json", [header] = key }
end

local r = math.random
local fmt = string.format

local function uuid4()
   -- 16-bit draws keep every value inside what string.format's %x takes on any Lua.
   return fmt("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
      r(0, 0xffff), r(0, 0xffff), r(0, 0xffff), r(0, 0xfff),
      r(0x8000, 0xbfff), r(0, 0xffff), r(0, 0xffff), r(0, 0xffff))
end

function request()
   local body = '{"id": "' .. uuid4() .. '", "type": "identity.approved", '
      .. '"source": "com.paxos", "time": "2026-01-07T14:30:02Z", "object": "event", '
      .. '"is_test": false}'
   return wrk.format("POST", nil, headers, body)
end

done = report
