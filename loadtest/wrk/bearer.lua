-- wrk script for the public API with a bearer token, used by docs/benchmarks.md:
--   TOKEN=... wrk -t2 -c32 -d20s --latency -s loadtest/wrk/bearer.lua 'http://127.0.0.1:3000/posts/feed?limit=20'
--   TOKEN=... METHOD=POST BODY='{"caption":"hi","mediaUrl":"https://cdn.example.com/a.jpg"}' \
--     wrk -t2 -c32 -d20s --latency -s loadtest/wrk/bearer.lua http://127.0.0.1:3000/posts
-- TOKEN is an access token (`instaclone-loadtest seed-feed` writes one; loadtest/wrk/README.md
-- says how to get another). Prints the count of each response status at the end.
local token = os.getenv("TOKEN")
if token == nil or token == "" then
  io.stderr:write("bearer.lua: set TOKEN to an access token\n")
  os.exit(1)
end
wrk.method = os.getenv("METHOD") or "GET"
wrk.headers["Authorization"] = "Bearer " .. token
local body = os.getenv("BODY")
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

-- Each wrk thread runs its own copy of this script and `done` yet another, so the counts are
-- kept per thread (a global, for thread:get) and summed at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write(string.format("status %d: %d\n", status, count))
  end
end
