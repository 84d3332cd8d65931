-- wrk script for nginx: the same node's meta-data as a static file, /cloud-init/<address>/meta-data.
local count = tonumber(os.getenv("BENCH_NODES") or "10000")
request = function()
  local i = math.random(0, count - 1)
  local address = string.format("10.100.%d.%d", math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/cloud-init/" .. address .. "/meta-data")
end
