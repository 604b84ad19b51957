#!/usr/bin/env python3
"""A raw NBD client that misbehaves on purpose, for tests/nbd/tools.sh.

Each scenario connects to the server, does something wrong and checks that the server
answers with an error (or closes the connection) instead of crashing. Exits non-zero
with a one-line reason when the server's answer is not what the protocol requires.

  badclient.py unix:PATH|tcp:HOST:PORT SCENARIO [EXPORT] [TOKEN]
"""
import socket
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF
OPT_GO, OPT_LIST, OPT_STRUCTURED = 7, 3, 8
REP_ACK, REP_INFO = 1, 3
ERR_UNSUP, ERR_POLICY, ERR_UNKNOWN = 2**31 + 1, 2**31 + 2, 2**31 + 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_BLOCK_STATUS = 0, 1, 2, 7
EPERM, EINVAL, ENOSPC, EOVERFLOW = 1, 22, 28, 75


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def connect(addr):
    kind, rest = addr.split(":", 1)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(rest)
    else:
        host, port = rest.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.settimeout(10)
    return s


def recv(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError(f"connection closed after {len(b)} of {n} bytes")
        b += c
    return b


def closed(s):
    """True when the server closed the connection (EOF or reset)."""
    try:
        while s.recv(4096):
            pass  # what the server sent before closing (a greeting, a reply)
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def greet(s):
    magic, opt, flags = struct.unpack(">QQH", recv(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT or not flags & 1:
        fail("bad greeting")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def reply(s):
    magic, opt, kind, n = struct.unpack(">QIII", recv(s, 20))
    if magic != OPT_REPLY:
        fail(f"bad option reply magic {magic:#x}")
    return opt, kind, recv(s, n)


def go(s, name, structured=True):
    if structured:
        option(s, OPT_STRUCTURED)
        if reply(s)[1] != REP_ACK:
            fail("structured replies refused")
    n = name.encode()
    option(s, OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    size = None
    while True:
        _, kind, data = reply(s)
        if kind == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size, flags = struct.unpack(">QH", data[2:12])
        elif kind == REP_ACK:
            return size, flags
        else:
            return None, kind


def request(s, cmd, off, length, payload=b"", flags=0, cookie=7):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, off, length) + payload)


def structured_reply(s):
    """(error, payload) of a structured reply (error 0 on success), all chunks read."""
    err, data = 0, b""
    while True:
        magic, flags, kind, cookie, n = struct.unpack(">IHHQI", recv(s, 20))
        if magic == SIMPLE_MAGIC:
            fail("simple reply after structured replies were negotiated")
        if magic != STRUCT_MAGIC:
            fail(f"bad reply magic {magic:#x}")
        body = recv(s, n)
        if kind & 0x8000:
            err = struct.unpack(">I", body[:4])[0]
        else:
            data += body
        if flags & 1:
            return err, data


def expect_error(s, want, what):
    err, _ = structured_reply(s)
    if err != want:
        fail(f"{what}: error {err}, expected {want}")
    print(f"ok: {what} -> errno {err}")


def still_serves(s, size):
    request(s, CMD_READ, size - 4096, 4096)
    err, data = structured_reply(s)
    if err or len(data) != 8 + 4096:
        fail(f"the connection stopped working after an error (err {err})")


def main():
    addr, scenario = sys.argv[1], sys.argv[2]
    export = sys.argv[3] if len(sys.argv) > 3 else ""
    token = sys.argv[4] if len(sys.argv) > 4 else None
    name = f"{token}/{export}" if token else export
    s = connect(addr)
    if scenario == "garbage":
        s.sendall(b"\xde\xad\xbe\xef" * 64)
        if not closed(s):
            fail("garbage did not close the connection")
        print("ok: garbage closed the connection")
    elif scenario == "garbage-request":
        greet(s)
        size, _ = go(s, name)
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 64)
        if not closed(s):
            fail("a bad request magic did not close the connection")
        print("ok: garbage in transmission closed the connection")
    elif scenario == "unknown-option":
        greet(s)
        option(s, 0x7777, b"abc")
        _, kind, _ = reply(s)
        if kind != ERR_UNSUP:
            fail(f"unknown option answered {kind:#x}")
        size, _ = go(s, name)  # negotiation goes on after the error
        if size is None:
            fail("GO failed after an unknown option")
        print("ok: unknown option -> NBD_REP_ERR_UNSUP, negotiation went on")
    elif scenario == "unknown-export":
        greet(s)
        size, kind = go(s, name + "-nope")
        if size is not None or kind != ERR_UNKNOWN:
            fail(f"unknown export answered {kind}")
        print("ok: unknown export -> NBD_REP_ERR_UNKNOWN")
    elif scenario == "wrong-token":
        greet(s)
        size, kind = go(s, "wrongwrongwrongwrong/" + export)
        if size is not None or kind != ERR_POLICY:
            fail(f"wrong token answered {kind}")
        option(s, OPT_LIST)
        if reply(s)[1] != ERR_POLICY:
            fail("LIST without a token was not refused")
        print("ok: wrong token -> NBD_REP_ERR_POLICY, LIST refused")
    elif scenario == "bad-requests":
        greet(s)
        size, _ = go(s, name)
        request(s, CMD_READ, size - 4096, 8192)
        expect_error(s, EINVAL, "read beyond the end")
        request(s, CMD_READ, 2**64 - 512, 1024)
        expect_error(s, EINVAL, "read at an offset that overflows")
        request(s, CMD_READ, 0, 64 << 20)
        expect_error(s, EINVAL, "read of 64 MiB (over the limit)")
        request(s, 42, 0, 0)
        expect_error(s, EINVAL, "unknown command")
        request(s, CMD_BLOCK_STATUS, 0, 4096)
        expect_error(s, EINVAL, "block status without a metadata context")
        request(s, CMD_WRITE, size, 512, b"z" * 512)
        expect_error(s, ENOSPC, "write beyond the end")
        still_serves(s, size)
        request(s, CMD_WRITE, 0, 64 << 20)
        err, _ = structured_reply(s)
        if err != EOVERFLOW or not closed(s):
            fail(f"oversized write: error {err} and the connection should close")
        print("ok: oversized write -> EOVERFLOW and the connection closed")
    elif scenario == "read-only":
        greet(s)
        size, flags = go(s, name)
        if not flags & 2:
            fail("snapshot export is not flagged read-only")
        request(s, CMD_WRITE, 0, 4096, b"w" * 4096)
        expect_error(s, EPERM, "write to a snapshot export")
        request(s, 4, 0, 4096)  # TRIM
        expect_error(s, EPERM, "trim of a snapshot export")
        request(s, 6, 0, 4096)  # WRITE_ZEROES
        expect_error(s, EPERM, "write-zeroes of a snapshot export")
        still_serves(s, size)
        request(s, CMD_DISC, 0, 0)
    else:
        fail(f"unknown scenario {scenario}")


if __name__ == "__main__":
    try:
        main()
    except (EOFError, OSError) as e:
        fail(str(e))
