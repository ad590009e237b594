"""What an operator's tools see of cqrps-server: its version, its log lines
(journald priorities, the JSON format), the process metrics every
exporter has, the exit status of a bad token file (which the systemd
unit does not restart on), and exact counters in Stats.

Environment (from ctest): CQRPS_SERVER_BIN, CQRPS_VERSION, CQR_PROTOC_C,
CQR_PROTO_FILE; PYTHONPATH holds tests/python (server_proc) and
tests/common (wire_py).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import tempfile
import time
import unittest

import wire_py
from server_proc import Server, server_bin

PRIORITY = {"debug": 7, "info": 6, "warn": 4, "error": 3}


def metrics_addr(srv: Server) -> str:
    """The metrics endpoint of a server started with --metrics-listen
    127.0.0.1:0, from its log line (the ready line on stdout was read
    with the first one)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r" metrics: listening addr=(\S+)", srv.log())
        if m:
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics address in the log:\n{srv.log()}")


def scrape(addr: str) -> str:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    assert r.status == 200
    return r.read().decode()


def sample(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    if not m:
        raise AssertionError(f"no sample {name}")
    return float(m.group(1))


class ServerOpsTest(unittest.TestCase):

    def test_version(self) -> None:
        p = subprocess.run([server_bin(), "--version"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stdout, f"cqrps-server "
                         f"{os.environ['CQRPS_VERSION']} (protocol 1)\n")

    def test_json_log_lines(self) -> None:
        with tempfile.TemporaryDirectory() as data, \
                Server(["--log-format", "json", "--data-dir", data]) as srv:
            addr = srv.addr
            self.assertEqual(srv.stop(), 0)
            lines = srv.log().splitlines()
        self.assertGreater(len(lines), 4)
        for ln in lines:
            j = json.loads(ln)  # every line is one JSON object
            self.assertEqual(list(j)[:4], ["time", "level", "module", "msg"])
            self.assertRegex(j["time"], r"^\d{4}-\d\d-\d\dT[\d:.]+Z$")
            self.assertIn(j["level"], PRIORITY)
        listening = [json.loads(ln) for ln in lines
                     if '"msg":"listening"' in ln and '"server"' in ln][0]
        self.assertEqual(listening["addr"], addr)
        self.assertEqual(listening["threads"], 2)  # a number, not "2"
        self.assertEqual(json.loads(lines[-1])["status"], 0)
        # Words after a pair: msg keeps the whole sentence, and the value
        # loses the ';' that ends the clause.
        empty = [json.loads(ln) for ln in lines if "no checkpoint" in ln][0]
        self.assertEqual(empty["dir"], data)
        self.assertEqual(empty["msg"], f"no checkpoint in dir={data}; "
                         "starting with no tables")

    def journal_run(self, stream_of_stderr: bool) -> list:
        """Starts and stops a server whose stderr is a file, with
        $JOURNAL_STREAM naming that file (as systemd names the journal's
        stream) or another one; returns its log lines."""
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "stderr")
            other = os.path.join(tmp, "other")
            tok = os.path.join(tmp, "token")
            for f in (log, other):
                open(f, "w").close()
            with open(tok, "w") as f:
                f.write("short\n")  # a short token: a warn line
            os.chmod(tok, 0o600)
            st = os.stat(log if stream_of_stderr else other)
            env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
            with open(log, "wb") as err:
                p = subprocess.Popen(
                    [server_bin(), "--listen", "127.0.0.1:0",
                     "--auth-token-file", tok], stdout=subprocess.PIPE,
                    stderr=err, env=env)
                self.assertIn(b"listening", p.stdout.readline())
                p.terminate()
                self.assertEqual(p.wait(60), 0)
                p.stdout.close()
            with open(log) as f:
                return f.read().splitlines()

    def test_journal_priorities(self) -> None:
        lines = self.journal_run(stream_of_stderr=True)
        seen = set()
        for ln in lines:
            m = re.match(r"^<(\d)>\S+ (\w+) ", ln)
            self.assertTrue(m, f"no priority prefix: {ln!r}")
            self.assertEqual(int(m.group(1)), PRIORITY[m.group(2)], ln)
            seen.add(m.group(2))
        self.assertEqual(seen, {"info", "warn"})
        # stderr is not the journal's stream: plain lines.
        for ln in self.journal_run(stream_of_stderr=False):
            self.assertRegex(ln, r"^\d{4}-")

    def test_process_metrics(self) -> None:
        launched = time.time()
        with Server(["--metrics-listen", "127.0.0.1:0"]) as srv:
            text = scrape(metrics_addr(srv))
            fds = len(os.listdir(f"/proc/{srv.pid}/fd"))
            with open(f"/proc/{srv.pid}/limits") as f:
                soft = int(re.search(r"^Max open files\s+(\d+)", f.read(),
                                     re.M).group(1))
            self.assertEqual(srv.stop(), 0)
        for name, kind in (("process_cpu_seconds_total", "counter"),
                           ("process_resident_memory_bytes", "gauge"),
                           ("process_virtual_memory_bytes", "gauge"),
                           ("process_open_fds", "gauge"),
                           ("process_max_fds", "gauge"),
                           ("process_start_time_seconds", "gauge")):
            self.assertTrue(f"# TYPE {name} {kind}\n" in text,
                            f"/metrics has no {kind} {name}")
        self.assertGreater(sample(text, "process_cpu_seconds_total"), 0)
        self.assertGreater(sample(text, "process_resident_memory_bytes"),
                           1 << 20)
        # The scrape's own connection may come or go: within a few.
        self.assertLessEqual(abs(sample(text, "process_open_fds") - fds), 3)
        self.assertEqual(sample(text, "process_max_fds"), soft)
        self.assertLess(abs(sample(text, "process_start_time_seconds") -
                            launched), 60)

    def test_bad_token_file_exits_2(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            tok = os.path.join(tmp, "token")
            with open(tok, "w") as f:
                f.write("0123456789abcdef0123\n")
            os.chmod(tok, 0o644)  # readable by others: refused
            for path in (tok, os.path.join(tmp, "missing")):
                p = subprocess.run([server_bin(), "--listen", "127.0.0.1:0",
                                    "--auth-token-file", path],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(path, p.stderr)

    def test_stats_counts_exact(self) -> None:
        msgs = wire_py.load_messages(os.environ["CQR_PROTOC_C"],
                                     os.environ["CQR_PROTO_FILE"])
        with Server() as srv:
            c = wire_py.WireClient(msgs, srv.addr)
            st = c.call("stats").stats
            c.close()
            self.assertEqual(srv.stop(), 0)
        counts, counters = dict(st.counts), dict(st.counters)
        self.assertGreater(len(counts), 20)
        for k, v in counters.items():
            if "seconds" in k:
                self.assertNotIn(k, counts)
            else:
                self.assertIn(k, counts)
                self.assertEqual(float(counts[k]), v, k)
        self.assertEqual(counts["max_table_memory"], 16 << 30)
        self.assertGreater(counts["bytes_in"], 0)


if __name__ == "__main__":
    unittest.main()
