#!/usr/bin/env python3
"""Checks the files under deploy/ without a cluster or a container engine.

- Every Kubernetes YAML parses (python3-yaml) and has the fields the
  operations guide relies on: a StatefulSet with one PersistentVolumeClaim
  per shard (volumeClaimTemplates), readiness on /readyz and liveness on
  /healthz on the metrics port, a grace period for the SIGTERM checkpoint,
  a headless Service (clusterIP None) whose ports match the containers',
  and a ConfigMap whose config file the real server accepts, listening on
  the ports the manifests use.
- The Dockerfile builds on Debian bookworm, runs as a non-root user,
  exposes the config's ports, has a data volume and a HEALTHCHECK on
  /healthz, and ships no -dev package in its runtime stage.
- deploy/cqrps.conf.example documents every option of `cqrps-server
  --help` and parses (`--print-config`).
- The systemd unit has notify readiness, a restart policy, the dedicated
  user, the state directory and ExecStart with --config.
- cqrps-addrs.sh derives the client's address list from the pod names.
- deploy/README.md names every metric family the server exports, and the
  Prometheus rules parse and use only metrics that exist.

Usage: check_deploy.py REPO_ROOT CQRPS_SERVER_BINARY
Prints one line per check and "N passed, N failed" at the end.
"""
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT, SERVER = sys.argv[1], sys.argv[2]
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 -- report every kind of failure
        results.append((name, e))
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def need(cond, msg):
    if not cond:
        raise AssertionError(msg)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def server_config(text):
    """The effective config the real server builds from a config file."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        p = subprocess.run([SERVER, "--config", path, "--print-config"],
                           capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(path)
    need(p.returncode == 0, f"cqrps-server rejected the config: {p.stderr}")
    cfg = {}
    for line in p.stdout.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition(" = ")
            cfg[k] = v.strip('"')
    return cfg


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def server_options():
    p = subprocess.run([SERVER, "--help"], capture_output=True, text=True,
                       timeout=30)
    need(p.returncode == 0, "cqrps-server --help failed")
    return re.findall(r"^  --([a-z0-9-]+)", p.stdout, re.M)


# ---- Kubernetes ------------------------------------------------------------

docs = {}


def load_k8s():
    files = sorted(f for f in os.listdir(K8S) if f.endswith(".yaml"))
    need(files, "no YAML files in deploy/k8s")
    for f in files:
        with open(os.path.join(K8S, f), encoding="utf-8") as fh:
            for d in yaml.safe_load_all(fh):
                if d is None:
                    continue
                need("kind" in d, f"{f}: a document without kind")
                if d["kind"] == "Kustomization":
                    docs["Kustomization"] = (f, d)
                    continue
                need("apiVersion" in d and d.get("metadata", {}).get("name"),
                     f"{f}: {d['kind']} without apiVersion or metadata.name")
                need(d["kind"] not in docs, f"two {d['kind']} documents")
                docs[d["kind"]] = (f, d)
    for kind in ("StatefulSet", "Service", "ConfigMap", "Kustomization"):
        need(kind in docs, f"no {kind} in deploy/k8s")


def kustomization_lists_all():
    f, k = docs["Kustomization"]
    listed = set(k.get("resources", []))
    present = {f for f, _ in docs.values() if f != "kustomization.yaml"}
    need(listed == present, f"kustomization resources {sorted(listed)} != "
         f"files {sorted(present)}")


def container():
    _, ss = docs["StatefulSet"]
    cs = ss["spec"]["template"]["spec"]["containers"]
    need(len(cs) == 1, "expected one container")
    return cs[0]


def k8s_config():
    _, cm = docs["ConfigMap"]
    need("cqrps.conf" in cm.get("data", {}), "ConfigMap lacks cqrps.conf")
    return server_config(cm["data"]["cqrps.conf"])


def statefulset_fields():
    _, ss = docs["StatefulSet"]
    _, svc = docs["Service"]
    spec = ss["spec"]
    need(spec["serviceName"] == svc["metadata"]["name"],
         "serviceName must be the headless Service")
    need(spec.get("replicas", 1) >= 1, "replicas")
    tmpl = spec["template"]
    labels = tmpl["metadata"]["labels"]
    for k, v in spec["selector"]["matchLabels"].items():
        need(labels.get(k) == v, f"selector {k}={v} does not match the pods")
    # One PVC per shard, mounted where the data dir lives.
    vcts = spec.get("volumeClaimTemplates") or []
    need(len(vcts) == 1, "one volumeClaimTemplate (the data dir)")
    vct = vcts[0]
    need("ReadWriteOnce" in vct["spec"]["accessModes"], "RWO volume")
    need(vct["spec"]["resources"]["requests"]["storage"], "storage request")
    c = container()
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    need(mounts.get(vct["metadata"]["name"]) == "/var/lib/cqrps",
         "the claim must be mounted at /var/lib/cqrps")
    need(mounts.get("config") == "/etc/cqrps", "config mounted at /etc/cqrps")
    vols = {v["name"]: v for v in tmpl["spec"]["volumes"]}
    _, cm = docs["ConfigMap"]
    need(vols["config"]["configMap"]["name"] == cm["metadata"]["name"],
         "config volume must be the ConfigMap")
    need(c["args"][:2] == ["--config", "/etc/cqrps/cqrps.conf"],
         "args must start with --config /etc/cqrps/cqrps.conf")
    # Probes on the metrics port.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    rp, lp = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    need(rp["path"] == "/readyz", "readiness probe must be /readyz")
    need(lp["path"] == "/healthz", "liveness probe must be /healthz")
    sp = c.get("startupProbe", {}).get("httpGet")
    need(sp and sp["path"] == "/healthz", "startup probe on /healthz (a long "
         "restore must not trip liveness)")
    for p in (rp, lp, sp):
        port = ports.get(p["port"], p["port"])
        need(port == ports["metrics"], f"probe port {p['port']} is not "
             "the metrics port")
    grace = tmpl["spec"].get("terminationGracePeriodSeconds", 30)
    need(grace >= 120, f"terminationGracePeriodSeconds {grace} leaves no time "
         "for the SIGTERM checkpoint")
    sc = tmpl["spec"].get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, "pods must run as non-root")


def ports_match_config():
    cfg = k8s_config()
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(port_of(cfg["listen"]) == ports["cqrps"],
         f"listen {cfg['listen']} != containerPort {ports['cqrps']}")
    need(cfg["listen"].startswith("0.0.0.0:"), "pods must listen on 0.0.0.0")
    need(cfg["metrics-listen"] != "off", "the probes need metrics-listen")
    need(port_of(cfg["metrics-listen"]) == ports["metrics"],
         f"metrics-listen {cfg['metrics-listen']} != containerPort "
         f"{ports['metrics']}")
    # Checkpoints on the shard's own volume, and the exit checkpoint on:
    # the rolling restart of deploy/README.md depends on both.
    if "data-dir" in cfg:
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        need(cfg["data-dir"] in mounts, f"data-dir {cfg['data-dir']} is not "
             "the mounted PersistentVolumeClaim")
        need(cfg.get("checkpoint-on-exit") == "on", "checkpoint-on-exit")
    _, ss = docs["StatefulSet"]
    ann = ss["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        need(int(ann["prometheus.io/port"]) == ports["metrics"],
             "prometheus.io/port annotation")


def headless_service():
    _, svc = docs["Service"]
    spec = svc["spec"]
    need(spec.get("clusterIP") == "None", "the Service must be headless")
    _, ss = docs["StatefulSet"]
    labels = ss["spec"]["template"]["metadata"]["labels"]
    for k, v in spec["selector"].items():
        need(labels.get(k) == v, f"Service selector {k}={v} selects no pod")
    cports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for p in spec["ports"]:
        tp = p.get("targetPort", p["port"])
        need(cports.get(tp, tp) == p["port"] == cports[p["name"]],
             f"Service port {p} does not match the container")


def pdb():
    if "PodDisruptionBudget" not in docs:
        return
    _, p = docs["PodDisruptionBudget"]
    _, ss = docs["StatefulSet"]
    need(p["spec"]["selector"]["matchLabels"] ==
         ss["spec"]["selector"]["matchLabels"], "PDB selector")
    need(p["spec"].get("maxUnavailable") == 1, "one shard down at a time")


def addrs_script():
    sh = os.path.join(K8S, "cqrps-addrs.sh")
    out = subprocess.run([sh, "-n", "ml", "-r", "3"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    need(out == "cqrps-0.cqrps.ml.svc:7070,cqrps-1.cqrps.ml.svc:7070,"
         "cqrps-2.cqrps.ml.svc:7070", f"addresses: {out}")
    out = subprocess.run([sh, "-n", "x", "-r", "1", "-p", "9", "-s", "ps",
                          "-d", "cluster.local"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    need(out == "ps-0.ps.x.svc.cluster.local:9", f"addresses: {out}")
    for bad in ("0", "abc", ""):
        p = subprocess.run([sh, "-n", "x", "-r", bad], capture_output=True,
                           text=True, timeout=30)
        need(p.returncode != 0, f"-r '{bad}' must fail")
    # The pod names match the StatefulSet and Service names and the port.
    _, ss = docs["StatefulSet"]
    need(ss["metadata"]["name"] == "cqrps" == ss["spec"]["serviceName"],
         "the script's defaults assume StatefulSet and Service 'cqrps'")
    need(port_of(k8s_config()["listen"]) == 7070, "default port 7070")


# ---- Dockerfile ------------------------------------------------------------

def dockerfile():
    text = read(os.path.join(DEPLOY, "Dockerfile"))
    # Join continuation lines, drop comments.
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    ins = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    froms = [a for i, a in ins if i == "FROM"]
    need(len(froms) >= 2, "a build stage and a runtime stage")
    need(froms[0].startswith("debian:bookworm"), f"build stage: {froms[0]}")
    need(froms[-1].startswith("debian:bookworm"), f"runtime: {froms[-1]}")
    last_from = max(k for k, (i, _) in enumerate(ins) if i == "FROM")
    build, runtime = ins[:last_from], ins[last_from:]
    need(any(i == "RUN" and "cmake" in a for i, a in build),
         "the build stage runs cmake")
    for i, a in runtime:
        if i == "RUN" and "apt-get install" in a:
            need(not re.search(r"\S+-dev\b", a),
                 f"runtime stage installs -dev packages: {a}")
            need("--no-install-recommends" in a, "--no-install-recommends")
    users = [a for i, a in runtime if i == "USER"]
    need(users and users[-1].split(":")[0] not in ("root", "0"),
         "runtime must run as a non-root USER")
    exposed = {int(p.split("/")[0]) for i, a in runtime if i == "EXPOSE"
               for p in a.split()}
    vols = " ".join(a for i, a in runtime if i == "VOLUME")
    need("/var/lib/cqrps" in vols, "VOLUME for the data dir")
    hc = [a for i, a in runtime if i == "HEALTHCHECK"]
    need(hc and "/healthz" in hc[0], "HEALTHCHECK on /healthz")
    ep = [a for i, a in runtime if i == "ENTRYPOINT"]
    need(ep and "cqrps-server" in ep[0] and "--config" in ep[0],
         "ENTRYPOINT runs cqrps-server --config")
    # The container's effective config: the shipped file plus CMD flags.
    cmd = [a for i, a in runtime if i == "CMD"]
    need(cmd, "CMD with the container's listen addresses")
    import json
    args = json.loads(cmd[-1])
    flags = dict(zip(args[::2], args[1::2]))
    listen = port_of(flags["--listen"])
    metrics = port_of(flags["--metrics-listen"])
    need({listen, metrics} <= exposed,
         f"EXPOSE {sorted(exposed)} lacks {listen} or {metrics}")
    need(f"/dev/tcp/127.0.0.1/{metrics}" in hc[0],
         "HEALTHCHECK must use the metrics port")
    need(any(i == "COPY" and "cqrps.conf.example" in a for i, a in runtime),
         "the example config is shipped as /etc/cqrps/cqrps.conf")
    if "--data-dir" in server_options():
        need(flags.get("--data-dir") and flags["--data-dir"] in vols,
             "CMD must keep --data-dir in the VOLUME")


# ---- Config example and systemd ----------------------------------------------

def example_documents_every_option():
    text = read(os.path.join(DEPLOY, "cqrps.conf.example"))
    skip = {"help", "version", "config", "print-config"}
    missing = []
    for opt in server_options():
        if opt in skip:
            continue
        if not re.search(rf"^#?\s*{re.escape(opt)}\s*=", text, re.M):
            missing.append(opt)
    need(not missing, "deploy/cqrps.conf.example lacks (add a documented "
         f"line for each): {', '.join(missing)}")
    server_config(text)  # and the server accepts it as it is


def systemd_unit():
    text = read(os.path.join(DEPLOY, "systemd", "cqrps.service"))
    keys = {}
    section = None
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("["):
            section = ln
            continue
        k, _, v = ln.partition("=")
        keys.setdefault((section, k), []).append(v)
    s = "[Service]"

    def one(k):
        v = keys.get((s, k))
        need(v, f"{k}= missing in [Service]")
        return v[-1]
    need(one("Type") == "notify", "Type=notify")
    need(one("Restart") in ("on-failure", "always"), "restart policy")
    need(one("User") == "cqrps", "User=cqrps")
    need(one("StateDirectory") == "cqrps", "StateDirectory=cqrps")
    need("--config" in one("ExecStart"), "ExecStart with --config")
    if "data-dir" in server_options():
        need("--data-dir ${STATE_DIRECTORY}" in one("ExecStart"),
             "ExecStart must keep the data dir in the StateDirectory")
    need(one("KillSignal") == "SIGTERM", "SIGTERM stops it (checkpoint)")
    stop = one("TimeoutStopSec")
    need(stop.endswith("min") or int(stop.rstrip("s")) >= 120,
         "TimeoutStopSec leaves time for the shutdown checkpoint")
    need(one("NoNewPrivileges") == "yes", "hardening")
    need(("[Install]", "WantedBy") in keys, "[Install] WantedBy")
    su = read(os.path.join(DEPLOY, "systemd", "cqrps.sysusers.conf"))
    need(re.search(r"^u cqrps ", su, re.M), "sysusers entry for cqrps")


def readme_names_metrics():
    readme = read(os.path.join(DEPLOY, "README.md"))
    src = read(os.path.join(ROOT, "server", "ops", "metrics.c"))
    names = set(re.findall(r'"((?:cqrps|process)_[a-z_]+?)(?:[{" ]|")', src))
    names = {n for n in names if not n.endswith("_")}
    # A histogram's _bucket/_sum/_count series belong to its family.
    names = {n for n in names
             if not (re.search(r"_(bucket|sum|count)$", n) and
                     re.sub(r"_(bucket|sum|count)$", "", n) in names)}
    need(len(names) > 20, f"found only {len(names)} metric names in metrics.c")
    missing = sorted(n for n in names if n not in readme)
    need(not missing, f"deploy/README.md does not document: {missing}")
    for word in ("systemd", "Kubernetes", "Sharding", "/readyz", "/healthz",
                 "SIGTERM", "cqrps-addrs.sh", "--config"):
        need(word in readme, f"deploy/README.md does not mention {word}")


def prometheus_rules():
    path = os.path.join(DEPLOY, "prometheus", "cqrps.rules.yml")
    with open(path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    src = read(os.path.join(ROOT, "server", "ops", "metrics.c")) + \
        read(os.path.join(ROOT, "server", "rpc", "rpc.h"))
    n = 0
    for g in rules["groups"]:
        need(g.get("name") and g.get("rules"), "a group needs name and rules")
        for r in g["rules"]:
            need(("record" in r) != ("alert" in r), f"record or alert: {r}")
            need(r.get("expr"), f"rule without expr: {r}")
            n += 1
            for m in re.findall(r"\b(cqrps_[a-z_]+)", r["expr"]):
                base = re.sub(r"_(bucket|sum|count|total)$", "", m)
                need(m in src or base in src or
                     base.removeprefix("cqrps_") in src,
                     f"rule uses unknown metric {m}")
    need(n >= 5, "too few rules")


check("k8s: every YAML parses", load_k8s)
if not results[-1][1]:
    check("k8s: kustomization lists every manifest", kustomization_lists_all)
    check("k8s: StatefulSet (PVC per shard, probes, grace, non-root)",
          statefulset_fields)
    check("k8s: ports match the ConfigMap's config", ports_match_config)
    check("k8s: headless Service", headless_service)
    check("k8s: PodDisruptionBudget", pdb)
    check("k8s: cqrps-addrs.sh address list", addrs_script)
check("Dockerfile", dockerfile)
check("Prometheus rules", prometheus_rules)
check("cqrps.conf.example documents every option", example_documents_every_option)
check("systemd unit fields", systemd_unit)
check("README documents every metric", readme_names_metrics)

failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
