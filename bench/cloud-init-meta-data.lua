-- wrk script: GET /cloud-init/meta-data for a random node of the 10,000, named by the
-- X-Forwarded-For header of a trusted proxy (wrk itself has one source address).
local count = tonumber(os.getenv("BENCH_NODES") or "10000")
request = function()
  local i = math.random(0, count - 1)
  local address = string.format("10.100.%d.%d", math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/cloud-init/meta-data", { ["X-Forwarded-For"] = address })
end
