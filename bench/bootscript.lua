-- wrk script: GET /boot/v1/bootscript?mac=<boot MAC of a random node of the 10,000>.
local count = tonumber(os.getenv("BENCH_NODES") or "10000")
request = function()
  local i = math.random(0, count - 1)
  local mac = string.format("52:54:01:%02x:%02x:%02x", math.floor(i / 65536), math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/boot/v1/bootscript?mac=" .. mac)
end
