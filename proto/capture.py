#!/usr/bin/env python3
"""Capture EPMD test vectors from the real thing.

Runs OTP's C epmd on an upstream loopback port, a recording TCP proxy in
front of it, and real clients (`erl` nodes, OTP's `epmd` client) against the
proxy. Every proxied connection becomes one vector file in proto/vectors/:
the bytes the client sent, the bytes the C epmd answered, and whether the
C epmd closed the connection or kept it open.

Usage (needs erlang-base; loopback only):  python3 proto/capture.py
"""
import glob
import os
import socket
import subprocess
import tempfile
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "vectors")
UP, PROXY = 14901, 14902
EPMD = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))[-1]

records = []  # (client_bytes, server_bytes, closed_by_server)
lock = threading.Lock()


def relay(client):
    up = socket.create_connection(("127.0.0.1", UP))
    sent, got = bytearray(), bytearray()
    closed = {"server": False}

    def c2s():
        while True:
            try:
                b = client.recv(65536)
            except OSError:
                b = b""
            if not b:
                try:
                    up.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            sent.extend(b)
            up.sendall(b)

    t = threading.Thread(target=c2s, daemon=True)
    t.start()
    while True:
        try:
            b = up.recv(65536)
        except OSError:
            b = b""
        if not b:
            closed["server"] = True
            break
        got.extend(b)
        client.sendall(b)
    # Pass the close on at once: Erlang's client waits for it.
    try:
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    client.close()
    with lock:
        records.append((bytes(sent), bytes(got), closed["server"]))


def serve(listener):
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=relay, args=(c,), daemon=True).start()


def write(name, what, rec, keep_open=False):
    sent, got, _ = rec
    path = os.path.join(OUT, name + ".vec")
    with open(path, "w") as f:
        f.write(f"# {what}\n")
        f.write("# captured by proto/capture.py: real client -> recording proxy -> "
                f"OTP C epmd ({os.path.basename(os.path.dirname(os.path.dirname(EPMD)))})\n")
        f.write("> " + sent.hex(" ") + "\n")
        f.write("< " + got.hex(" ") + "\n")
        f.write("= " + ("open" if keep_open else "closed") + "\n")
    print("wrote", path)


def main():
    procs = []
    try:
        run(procs)
    finally:
        for p in procs:
            p.kill()


def run(procs):
    os.makedirs(OUT, exist_ok=True)
    epmd = subprocess.Popen([EPMD, "-port", str(UP), "-relaxed_command_check"])
    procs.append(epmd)
    time.sleep(0.5)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", PROXY))
    ls.listen(64)
    threading.Thread(target=serve, args=(ls,), daemon=True).start()
    env = dict(os.environ, ERL_EPMD_PORT=str(PROXY))
    erl = ["erl", "-noshell", "-start_epmd", "false", "-setcookie", "vec"]
    # The VMs run in a scratch directory: a crash dump never lands in the repo.
    scratch = tempfile.mkdtemp(prefix="capture-")
    node = subprocess.Popen(erl + ["-name", "vec@127.0.0.1",
                                   "-eval", "receive stop -> ok end"], env=env,
                            cwd=scratch)
    procs.append(node)
    time.sleep(3)
    subprocess.run(erl + ["-name", "probe@127.0.0.1", "-eval",
                          "pong = net_adm:ping('vec@127.0.0.1'), halt()."],
                   env=env, check=True, cwd=scratch)
    client = lambda *a: subprocess.run([EPMD, "-port", str(PROXY), *a],
                                       stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    client("-names")
    client("-dump")
    client("-stop", "nobody")
    # Malformed requests, sent raw: the C epmd closes without a reply.
    for name, what, raw in MALFORMED:
        with socket.create_connection(("127.0.0.1", PROXY)) as c:
            c.sendall(raw)
            c.settimeout(2)
            got = b""
            try:
                while True:
                    b = c.recv(4096)
                    if not b:
                        break
                    got += b
            except socket.timeout:
                raise SystemExit(f"{name}: C epmd kept the connection open")
        write(name, what + " (sent raw by capture.py)", (raw, got, True))
    client("-kill")  # vec is still registered, but relaxed: OK
    time.sleep(0.5)
    node.kill()
    time.sleep(0.3)
    with lock:
        recs = list(records)
    by_first = {}
    for r in recs:
        code = r[0][2:3]
        by_first.setdefault(code, []).append(r)
    write("alive2_erl25", "ALIVE2_REQ from a real `erl -name probe@127.0.0.1` node (OTP 25) "
          "and the C epmd's ALIVE2_X_RESP; the node keeps the connection open",
          by_first[b"x"][0], keep_open=True)
    write("port_please2_erl25_hit", "PORT_PLEASE2_REQ sent by `net_adm:ping('vec@127.0.0.1')` "
          "and the PORT2_RESP for the registered node", by_first[b"z"][0])
    write("names_epmd_client", "NAMES_REQ from `epmd -names` with node vec registered", by_first[b"n"][0])
    write("dump_epmd_client", "DUMP_REQ from `epmd -dump`: vec active, probe old/unused", by_first[b"d"][0])
    write("stop_unknown_epmd_client", "STOP_REQ from `epmd -stop nobody` "
          "(relaxed epmd): NOEXIST then STOPPED", by_first[b"s"][0])
    write("kill_epmd_client", "KILL_REQ from `epmd -kill` (relaxed epmd)", by_first[b"k"][0])
    epmd.kill()
    ls.close()


def frame(payload):
    return len(payload).to_bytes(2, "big") + payload


MALFORMED = [
    ("bad_length_zero", "length 0", b"\x00\x00"),
    ("bad_length_3058", "length 3058 (one past the limit)", frame(b"n" * 3058)),
    ("bad_two_requests_one_write", "two NAMES_REQ in one write", frame(b"n") * 2),
    ("bad_obsolete_alive_req", "obsolete ALIVE_REQ 'a'", frame(b"a\x10\x68foo")),
    ("bad_alive2_nul_in_name", "ALIVE2_REQ whose name holds a NUL",
     frame(b"x\x10\x68\x4d\x00\x00\x06\x00\x05\x00\x03a\x00b\x00\x00")),
    ("bad_alive2_truncated", "ALIVE2_REQ whose name length runs past the packet",
     frame(b"x\x10\x68\x4d\x00\x00\x06\x00\x05\x00\x09abc\x00\x00")),
    ("bad_port_please2_empty", "PORT_PLEASE2_REQ with an empty name", frame(b"z")),
]


if __name__ == "__main__":
    sys.exit(main())
