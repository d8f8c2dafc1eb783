-- wrk script: POST /users/follow with a fresh (follower token, target) pair per request, read
-- from the file in FOLLOW_PAIRS ("token,targetId" per line, written by the bench example with
-- --serve). Each wrk thread takes every n-th pair so no pair is sent twice (a repeat is a 409,
-- which wrk counts as a non-2xx response). Pass wrk's thread count after `--` (default 2):
--   wrk -t2 ... -s follow.lua URL -- 2
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  pairs_list = {}
  for line in io.lines(os.getenv("FOLLOW_PAIRS")) do
    local token, target = line:match("([^,]+),([^,]+)")
    table.insert(pairs_list, { token, target })
  end
  stride = tonumber(args[1] or "2")
  index = id + 1
end

function request()
  local pair = pairs_list[index]
  if pair == nil then
    pair = pairs_list[1] -- out of fresh pairs: repeats show up as non-2xx
  end
  index = index + stride
  return wrk.format("POST", "/users/follow", {
    ["Authorization"] = "Bearer " .. pair[1],
    ["Content-Type"] = "application/json",
  }, '{"userIdToFollow":"' .. pair[2] .. '"}')
end
