"""A hostile DHCP client for Kiln's lab test: floods the server with random MACs and malformed
packets, then checks that a known machine still gets its reservation. Runs inside a lab host's
namespace; prints one line, OK or FAIL."""
import os, random, socket, struct, sys, time

KNOWN_MAC = bytes.fromhex("525400beef01")
EXPECTED = socket.inet_aton("10.77.0.11")
FLOOD = int(sys.argv[1]) if len(sys.argv) > 1 else 3000

def discover(mac, xid, options=b""):
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                         b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10, b"\0" * 64, b"\0" * 128)
    return header + b"\x63\x82\x53\x63" + b"\x35\x01\x01" + options + b"\xff"

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"ksite1")
sock.bind(("0.0.0.0", 68))
target = ("255.255.255.255", 67)
random.seed(7)
sent = 0
for i in range(FLOOD):
    sock.sendto(discover(os.urandom(6), random.getrandbits(32)), target); sent += 1
for length in list(range(0, 300, 7)) + [576, 1400]:
    sock.sendto(os.urandom(length), target); sent += 1
valid = discover(KNOWN_MAC, 1)
for cut in range(0, len(valid), 13):
    sock.sendto(valid[:cut], target); sent += 1
overflows = [
    b"\x0c\xff" + b"A" * 10,          # host name claiming 255 bytes, 10 present
    b"\x34\x01\x03",                  # option overload: options in file and sname
    b"\x37\x00",                      # empty parameter request list
    b"\x3d\xfe" + b"\x01" * 254,      # long client identifier
    b"\x5d\x01\x00",                  # truncated architecture
    b"\x4d\x00",                      # empty user class
    b"\x00" * 300,                    # padding only
]
for options in overflows:
    sock.sendto(discover(KNOWN_MAC, 2, options), target); sent += 1
# The known machine must still get its reservation, promptly.
sock.settimeout(0.5)
deadline = time.time() + 15
while time.time() < deadline:
    sock.sendto(discover(KNOWN_MAC, 0xC0FFEE), target)
    try:
        while True:
            data, _ = sock.recvfrom(2048)
            xid = struct.unpack("!I", data[4:8])[0]
            if xid == 0xC0FFEE and data[16:20] == EXPECTED:
                print(f"OK sent={sent}")
                sys.exit(0)
    except socket.timeout:
        continue
print(f"FAIL sent={sent}: no offer of 10.77.0.11 to the known machine")
sys.exit(1)
