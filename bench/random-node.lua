-- wrk script: GET /v1/nodes/<random node of the 10,000 loaded by scripts/bench-api>.
local token = os.getenv("KILN_TOKEN")
local count = tonumber(os.getenv("BENCH_NODES") or "10000")
request = function()
  local path = string.format("/v1/nodes/bench%05d", math.random(0, count - 1))
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end
