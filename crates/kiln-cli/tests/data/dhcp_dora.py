"""Runs one DISCOVER/OFFER/REQUEST/ACK exchange for a MAC and prints the acknowledged address."""
import socket, struct, sys, time

mac = bytes.fromhex(sys.argv[1].replace(":", ""))

def message(kind, xid, options=b""):
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                         b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10, b"\0" * 64, b"\0" * 128)
    return header + b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + options + b"\xff"

def answer(sock, xid, kind):
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            continue
        if struct.unpack("!I", data[4:8])[0] == xid and bytes([53, 1, kind]) in data[240:]:
            return data
    sys.exit(f"no answer of type {kind}")

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"ksite1")
sock.bind(("0.0.0.0", 68))
sock.settimeout(0.5)
sock.sendto(message(1, 101), ("255.255.255.255", 67))
offer = answer(sock, 101, 2)
address = offer[16:20]
server = b"\x36\x04" + socket.inet_aton("10.77.0.1")
sock.sendto(message(3, 102, b"\x32\x04" + address + server), ("255.255.255.255", 67))
ack = answer(sock, 102, 5)
print(socket.inet_ntoa(ack[16:20]))
