-- wrk script for the create workload's saturation runs: POST /users with a unique user per
-- request, the same body as run.py's create_body(). Run with one wrk thread (-t1), so the
-- counter is unique; the first script argument is the run's tag, the second (optional) the
-- Authorization header value (wrk ... -- TAG "Bearer TOKEN").
local counter = 0
local tag = "wrk"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  if args[1] then tag = args[1] end
  if args[2] then wrk.headers["Authorization"] = args[2] end
end

function request()
  counter = counter + 1
  local body = string.format('{"email":"u%s-%d@bench.example","name":"Bench User %d"}',
                             tag, counter, counter)
  return wrk.format(nil, "/users", nil, body)
end
