"""A shard of deploy/k8s run as the kubelet would run it, without a cluster.

The pod is composed from the shipped files only: its command line from
the image (deploy/Dockerfile ENTRYPOINT/CMD) and the StatefulSet's
container (command/args, as the kubelet combines them); the ConfigMap's
keys and the token Secret's keys (kustomization.yaml's secretGenerator)
as files at the volumes' mount paths, laid out as the kubelet writes them
(`..data` symlinks; the Secret's defaultMode; the pod's fsGroup); the
PersistentVolumeClaim as a directory owned by the fsGroup; the user and
group of the pod's securityContext, no capabilities, no new privileges,
and a read-only root filesystem; its own network namespace (so it binds
0.0.0.0:7070 and :7071 as in the pod).

The test re-runs itself inside private mount, network and PID namespaces
(`unshare`, as root): /etc, /var, /run and /usr/local are overlays whose
writes stay in a tmpfs that vanishes with the namespace, so the host is
not touched. The built cqrps-server and cqrps stand where the image puts
them (/usr/local/bin). Then, inside:

1. the startup, liveness and readiness probes of the StatefulSet answer
   200, and so does the image's HEALTHCHECK command;
2. a client without the token is refused; with the Secret's tokens the
   CLI creates a table and takes a checkpoint;
3. SIGTERM (the kubelet's stop) exits 0 after the shutdown checkpoint,
   within terminationGracePeriodSeconds; the data dir belongs to the
   pod's user;
4. a new pod on the same volume restores the table.

Skipped when not root or when unshare/setpriv/mount are missing.
Environment (from ctest): CQRPS_SERVER_BIN, CQRPS_CLI_BIN.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

from deploy_files import (image_command, image_healthcheck, k8s_argv,
                          k8s_docs, run_tests, runtime_stage)

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodTest(unittest.TestCase):

    def test_pod(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("needs root (unshare, mounts)")
        for tool in ("unshare", "setpriv", "mount"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} missing (Debian: util-linux)")
        for var in ("CQRPS_SERVER_BIN", "CQRPS_CLI_BIN"):
            if not os.environ.get(var):
                self.skipTest(f"{var} not set (run through ctest)")
        with tempfile.TemporaryDirectory(prefix="cqrps-pod-") as tmp:
            env = dict(os.environ, CQR_POD_TMP=tmp,
                       CQR_PARENT_MNT_NS=os.readlink("/proc/self/ns/mnt"))
            p = subprocess.run(
                ["unshare", "--mount", "--net", "--pid", "--fork",
                 "--mount-proc", "--kill-child", "--propagation", "private",
                 sys.executable, os.path.abspath(__file__), "--inner"],
                env=env, capture_output=True, text=True, timeout=280)
        print(p.stdout)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("pod: all steps passed", p.stdout)


# ---- Inside the namespaces --------------------------------------------------

def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, timeout=60)


def overlay(target: str, tmp: str) -> None:
    """Writes under target go to a tmpfs from now on (this namespace)."""
    name = target.strip("/").replace("/", "_")
    up, wk = f"{tmp}/up/{name}", f"{tmp}/wk/{name}"
    os.makedirs(up)
    os.makedirs(wk)
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir={target},upperdir={up},workdir={wk}", target)


def kubelet_volume(path: str, files: dict, mode: int, gid: int) -> None:
    """A ConfigMap or Secret volume as the kubelet's atomic writer lays it
    out: the files in a hidden timestamped directory, `..data` pointing
    to it, and one symlink per key through `..data`."""
    os.makedirs(path, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    stamp = os.path.join(path, "..2024_01_01_00_00_00.000000001")
    os.mkdir(stamp)
    for key, data in files.items():
        f = os.path.join(stamp, key)
        with open(f, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.chown(f, 0, gid)
        os.chmod(f, mode)
    os.symlink(os.path.basename(stamp), os.path.join(path, "..data"))
    for key in files:
        os.symlink(os.path.join("..data", key), os.path.join(path, key))


def lo_up() -> None:
    """ip link set lo up, by ioctl (no iproute2 needed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))  # GIFFLAGS
    flags = struct.unpack("16sH", ifr[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIFFLAGS
    s.close()


class Pod:
    """The container process of one pod start."""

    def __init__(self, argv, uid, gid, fsgroup, workdir, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}",
             f"--groups={fsgroup}", "--no-new-privs", "--inh-caps=-all",
             "--bounding-set=-all", "--", *argv],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
            env={"PATH": PATH, "HOSTNAME": "cqrps-0"}, cwd=workdir)
        self.lines = self.read_lines(2, 60)

    def read_lines(self, n: int, timeout: float):
        fd = self.proc.stdout.fileno()
        buf, deadline = b"", time.monotonic() + timeout
        while buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no ready lines: {buf!r}\n{self.text()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                buf += chunk
        return buf.decode().splitlines()

    def text(self) -> str:
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, grace: float) -> int:
        """The kubelet's stop: SIGTERM, SIGKILL after the grace period."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the pod outlived its grace period")


def http_get(port: int, path: str):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read().decode()


def probe(port: int, path: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            status, body = http_get(port, path)
            if status == 200:
                return
        except OSError as e:
            status, body = None, str(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} on {port}: {status} {body}")
        time.sleep(0.2)


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["cqrps", *args], capture_output=True, text=True,
                       timeout=60, env={"PATH": PATH})
    if ok and p.returncode != 0:
        raise AssertionError(f"cqrps {args}: {p.returncode}\n{p.stderr}")
    return p


def inner() -> int:
    if os.readlink("/proc/self/ns/mnt") == os.environ["CQR_PARENT_MNT_NS"]:
        print("not in a private mount namespace; refusing to mount")
        return 1
    sh("mount", "--make-rprivate", "/")
    tmp = os.environ["CQR_POD_TMP"]
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", tmp)
    for d in ("/etc", "/var", "/run", "/usr/local"):
        overlay(d, tmp)

    docs = k8s_docs()
    ss, cm = docs["StatefulSet"], docs["ConfigMap"]
    pod = ss["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = pod.get("securityContext", {})
    uid, gid = sc["runAsUser"], sc["runAsGroup"]
    fsgroup = sc.get("fsGroup", gid)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    # The image's files: the binaries where `cmake --install` puts them.
    os.makedirs("/usr/local/bin", exist_ok=True)
    shutil.copy(os.environ["CQRPS_SERVER_BIN"], "/usr/local/bin/cqrps-server")
    shutil.copy(os.environ["CQRPS_CLI_BIN"], "/usr/local/bin/cqrps")

    # Volumes, as the kubelet mounts them.
    tokens = {}
    gen = {g["name"]: g for g in docs["Kustomization"]["secretGenerator"]}
    for v in pod["volumes"]:
        mount = [m for m in c["volumeMounts"] if m["name"] == v["name"]][0]
        path = mount["mountPath"]
        if "configMap" in v:
            assert v["configMap"]["name"] == cm["metadata"]["name"]
            kubelet_volume(path, cm["data"], v["configMap"].get(
                "defaultMode", 0o644), fsgroup)
        elif "secret" in v:
            files = {}
            for spec in gen[v["secret"]["secretName"]]["files"]:
                key = spec.split("=", 1)[0]
                files[key] = os.urandom(24).hex() + "\n"
                tokens[key] = os.path.join(path, key)
            kubelet_volume(path, files, v["secret"].get("defaultMode", 0o644),
                           fsgroup)
        if mount.get("readOnly"):
            sh("mount", "-o", "remount,ro,bind", path)
    pvc = ss["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    data = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == pvc][0]
    os.makedirs(f"{tmp}/pvc")
    os.chown(f"{tmp}/pvc", 0, fsgroup)
    os.chmod(f"{tmp}/pvc", 0o2770)
    os.makedirs(data, exist_ok=True)
    sh("mount", "--bind", f"{tmp}/pvc", data)
    # readOnlyRootFilesystem: only the volumes stay writable.
    if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        for d in ("/", "/etc", "/var", "/run", "/usr/local"):
            sh("mount", "-o", "remount,ro,bind", d)
    lo_up()

    argv = k8s_argv(c)
    workdir = [a for i, a in runtime_stage() if i == "WORKDIR"][-1]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    print("pod: entrypoint/cmd of the image:", image_command())
    print("pod: container argv:", argv)
    logs = []
    try:
        # ---- first start --------------------------------------------------
        logs.append(f"{tmp}/pod-1.log")
        p = Pod(argv, uid, gid, fsgroup, workdir, logs[-1])
        print("pod:", " | ".join(p.lines))
        assert p.lines[0] == f"cqrps-server listening on 0.0.0.0:{ports['cqrps']}"
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            g = c[kind]["httpGet"]
            probe(ports.get(g["port"], g["port"]), g["path"])
            print(f"pod: {kind} GET {g['path']} 200")
        hc = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             "--", *image_healthcheck()], timeout=30, env={"PATH": PATH})
        assert hc.returncode == 0, f"HEALTHCHECK exited {hc.returncode}"
        print("pod: the image's HEALTHCHECK passes")
        addr = f"127.0.0.1:{ports['cqrps']}"
        r = cli("--addr", addr, "list", ok=False)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, r.stderr
        print("pod: no token ->", r.stderr.strip())
        auth = ["--addr", addr, "--token-file", tokens["auth-token"],
                "--admin-token-file", tokens["admin-token"]]
        cli(*auth, "create", "pod", "--kind", "cqr", "--dim", "8",
            "--rows", "16")
        gen1 = cli(*auth, "checkpoint").stdout.strip()
        print("pod: with the Secret's tokens: created table pod,", gen1)
        rc = p.stop(grace)
        assert rc == 0, f"exit {rc} after SIGTERM\n{p.text()}"
        assert "shutdown checkpoint" in p.text(), p.text()
        owners = {os.stat(os.path.join(dp, f)).st_uid
                  for dp, _, fs in os.walk(data) for f in fs}
        assert owners == {uid}, f"data dir files owned by {owners}"
        print(f"pod: SIGTERM -> exit 0 after the shutdown checkpoint; "
              f"data dir files owned by uid {uid}")

        # ---- the next pod on the same volume --------------------------------
        logs.append(f"{tmp}/pod-2.log")
        p = Pod(argv, uid, gid, fsgroup, workdir, logs[-1])
        g = c["readinessProbe"]["httpGet"]
        probe(ports.get(g["port"], g["port"]), g["path"])
        out = cli(*auth, "describe", "pod").stdout
        assert "kind:           cqr" in out, out
        # The ConfigMap's log-format decides the lines' form.
        restored = [ln for ln in p.text().splitlines()
                    if "restored generation=" in ln or
                    ('"msg":"restored"' in ln and '"generation":' in ln)]
        assert restored, p.text()
        print("pod: restarted on the same volume: table pod restored")
        rc = p.stop(grace)
        assert rc == 0, f"exit {rc} after SIGTERM\n{p.text()}"
    except Exception:
        for path in logs:
            with open(path, errors="replace") as f:
                print(f"---- {path}\n{f.read()}")
        raise
    for path in logs:
        with open(path, errors="replace") as f:
            text = f.read()
        assert not any(m in text for m in SANITIZER_MARKS), text
    print("pod: all steps passed")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--inner"]:
        sys.exit(inner())
    run_tests()
