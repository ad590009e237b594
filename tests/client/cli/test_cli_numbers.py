"""The `cqrps` CLI's numbers, versions and ping, against a scripted peer.

A counter of 2^53 + 1 cannot come from a real server in a test, so a
small peer speaks the wire protocol (messages built by python3-protobuf
from the schema itself: tests/common/wire_py.py) and answers Hello,
Stats and DescribeTable with the figures the test chooses. The CLI runs
as a user runs it; its JSON is read by Python's json module, whose
integers are exact, so "round-trips" means equal as integers.

Environment (from ctest): CQRPS_CLI_BIN, CQR_PROTOC_C, CQR_PROTO_FILE,
CQRPS_VERSION.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import unittest

import wire_py

CLI = os.environ.get("CQRPS_CLI_BIN", "")
BIG = 2 ** 53 + 1          # the first integer a double cannot hold
GIB16 = 17179869184        # the example: %.9g made it ...200
U64_MAX = 2 ** 64 - 1


def load_messages() -> dict:
    """The schema's message classes (tests/common/wire_py.py)."""
    return wire_py.load_messages(os.environ["CQR_PROTOC_C"],
                                 os.environ["CQR_PROTO_FILE"])


class Peer:
    """A loopback listener that answers like a server with set figures."""

    def __init__(self, msgs: dict, counts: bool = True) -> None:
        self.m = msgs
        self.counts = counts
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.th = threading.Thread(target=self.accept, daemon=True)
        self.th.start()

    def close(self) -> None:
        self.sock.close()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,),
                             daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    q = wire_py.recv_msg(conn, self.m["cqrps.v1.Request"])
                    wire_py.send_msg(conn, self.answer(q))
            except (EOFError, OSError):
                return

    def table(self, r, name: str) -> None:
        r.name = name
        r.config.kind = 3
        r.config.dim = 8
        r.config.seed = U64_MAX
        r.config.optimizer.kind = 2
        r.config.optimizer.lr = 0.001
        r.known_ids = BIG
        r.param_bytes = GIB16

    def answer(self, q):
        r = self.m["cqrps.v1.Response"](id=q.id)
        op = q.WhichOneof("op")
        if op == "hello":
            r.hello.protocol_version = 1
            r.hello.server_version = "fake-0"
            r.hello.max_frame_bytes = 64 << 20
            r.hello.max_batch = 1 << 20
        elif op == "stats":
            st = r.stats
            st.server_version = "fake-0"
            st.uptime_seconds = 1.5
            st.requests = BIG
            self.table(st.tables.add(), "t")
            st.counters["big"] = float(BIG)      # 2^53: what a double holds
            st.counters["bytes"] = float(GIB16)
            st.counters["ratio"] = 0.25
            if self.counts:
                st.counts["big"] = BIG
                st.counts["bytes"] = GIB16
        elif op == "describe_table":
            self.table(r.table, q.describe_table.name)
        else:
            r.status = 15  # UNSUPPORTED
            r.message = "scripted peer"
        return r


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([CLI, *args], capture_output=True, text=True,
                       timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"cqrps {args}: {p.returncode}\n{p.stderr}")
    return p


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CliNumbersTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        if not CLI:
            raise unittest.SkipTest("run through ctest (CQRPS_CLI_BIN)")
        cls.msgs = load_messages()
        cls.peer = Peer(cls.msgs)
        cls.peer2 = Peer(cls.msgs)              # a second shard
        cls.old = Peer(cls.msgs, counts=False)  # a server without `counts`

    @classmethod
    def tearDownClass(cls) -> None:
        for p in (cls.peer, cls.peer2, cls.old):
            p.close()

    def test_json_counter_round_trips_exactly(self) -> None:
        out = cli("--addr", self.peer.addr, "--json", "stats").stdout
        self.assertEqual(out.count("\n"), 1)
        j = json.loads(out)
        self.assertIs(j["ok"], True)
        self.assertEqual(j["counters"]["big"], BIG)
        self.assertIsInstance(j["counters"]["big"], int)
        self.assertEqual(j["counters"]["bytes"], GIB16)
        self.assertEqual(j["counters"]["ratio"], 0.25)
        self.assertEqual(j["requests"], BIG)
        self.assertEqual(j["uptime_seconds"], 1.5)
        t = j["tables"][0]
        self.assertEqual(t["known_ids"], BIG)
        self.assertEqual(t["param_bytes"], GIB16)
        self.assertEqual(t["config"]["seed"], U64_MAX)
        self.assertIn('"lr":0.001,', out)  # the float's shortest digits

    def test_sharded_counts_sum_exactly(self) -> None:
        addrs = f"{self.peer.addr},{self.peer2.addr}"
        j = json.loads(cli("--addr", addrs, "--json", "stats").stdout)
        self.assertEqual(j["shards"], 2)
        self.assertEqual(j["counters"]["big"], 2 * BIG)
        self.assertEqual(j["counters"]["bytes"], 2 * GIB16)

    def test_old_server_whole_numbers(self) -> None:
        """Without exact counts, whole doubles still print in full."""
        j = json.loads(cli("--addr", self.old.addr, "--json",
                           "stats").stdout)
        self.assertEqual(j["counters"]["bytes"], GIB16)
        self.assertEqual(j["counters"]["big"], 2 ** 53)
        text = cli("--addr", self.old.addr, "stats").stdout
        self.assertRegex(text, r"\n  bytes +17179869184\n")

    def test_text_integers_whole(self) -> None:
        text = cli("--addr", self.peer.addr, "stats").stdout
        self.assertRegex(text, r"\n  big +9007199254740993\n")
        self.assertRegex(text, r"\n  bytes +17179869184\n")
        self.assertRegex(text, r"\n  ratio +0\.25\n")
        self.assertRegex(text, r"requests: +9007199254740993 ")
        self.assertNotIn("e+", text)
        text = cli("--addr", self.peer.addr, "describe", "t").stdout
        self.assertRegex(text, r"seed: +18446744073709551615\n")
        self.assertRegex(text, r"known_ids: +9007199254740993\n")

    def test_json_describe(self) -> None:
        j = json.loads(cli("--addr", self.peer.addr, "--json", "describe",
                           "t").stdout)
        self.assertEqual(j["table"]["known_ids"], BIG)
        self.assertEqual(j["table"]["config"]["seed"], U64_MAX)

    def test_version(self) -> None:
        p = cli("--version")
        self.assertEqual(p.stdout,
                         f"cqrps {os.environ['CQRPS_VERSION']} (protocol 1)\n")
        self.assertIn("cqrps --version", cli("--help").stdout)

    def test_ping(self) -> None:
        out = cli("--addr", self.peer.addr, "ping").stdout
        self.assertRegex(out, rf"^pong from {self.peer.addr}: cqrps-server "
                         r"fake-0 \(protocol 1\), 1 shard, admin \w+, "
                         r"[0-9.]+ ms\n$")
        j = json.loads(cli("--addr", f"{self.peer.addr},{self.old.addr}",
                           "--json", "ping").stdout)
        self.assertEqual((j["ok"], j["server_version"], j["protocol_version"],
                          j["shards"]), (True, "fake-0", 1, 2))
        self.assertGreater(j["seconds"], 0)

    def test_ping_nobody(self) -> None:
        addr = f"127.0.0.1:{free_port()}"
        p = cli("--addr", addr, "ping", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"^cqrps: ping: CONNECTION: ")
        p = cli("--addr", addr, "--json", "ping", check=False)
        self.assertEqual(p.returncode, 1)
        j = json.loads(p.stdout)
        self.assertEqual((j["ok"], j["status"], j["code"]),
                         (False, "CONNECTION", -17))


if __name__ == "__main__":
    unittest.main()
