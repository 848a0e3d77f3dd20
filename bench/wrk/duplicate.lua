-- POST the SAME Paxos notification on every request: Paxos retrying a delivery. The first
-- request stores the event; every later one is a duplicate that only bumps a counter.
--
--   wrk -t2 -c64 -d15s -s bench/wrk/duplicate.lua http://127.0.0.1:8000/webhooks/paxos \
--       -- API_KEY [HEADER [EVENT_ID]]

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "report.lua")

function init(args)
   local key = args[1] or "bench-key-000000001"
   local header = args[2] or "X-Api-Key"
   local event_id = args[3] or "6f1c8f2e-3b7a-4d2c-9a51-0c7e4b2d9f10"
   local body = '{"id": "' .. event_id .. '", "type": "identity.approved", '
      .. '"source": "com.paxos", "time": "2026-01-07T14:30:02Z", "object": "event", '
      .. '"is_test": false}'
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers[header] = key
end

done = report
