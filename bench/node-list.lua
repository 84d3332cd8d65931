-- wrk script: GET a page of 100 nodes starting at a random place in the 10,000.
local token = os.getenv("KILN_TOKEN")
local count = tonumber(os.getenv("BENCH_NODES") or "10000")
request = function()
  local path = string.format("/v1/nodes?limit=100&after=bench%05d", math.random(0, count - 101))
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end
