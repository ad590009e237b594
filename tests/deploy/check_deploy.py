#!/usr/bin/env python3
"""Checks the files under deploy/ without a cluster or a container engine.

- Every Kubernetes YAML parses (python3-yaml) and has the fields the
  operations guide relies on: a StatefulSet with one PersistentVolumeClaim
  per shard (volumeClaimTemplates), readiness on /readyz and liveness on
  /healthz on the metrics port, a grace period for the SIGTERM checkpoint,
  a headless Service (clusterIP None) whose ports match the containers',
  and a ConfigMap whose config file the real server accepts, listening on
  the ports the manifests use.
- The pod's command line, composed as Kubernetes does from the image
  (Dockerfile ENTRYPOINT/CMD) and the container's command/args, is one
  the real server accepts: --config once, naming the ConfigMap's file.
- max-table-memory is at most half the container's memory limit
  (docs/SECURITY.md); a NetworkPolicy admits only the two ports; the
  tokens come from a Secret (kustomize secretGenerator) mounted with a
  mode the server accepts, at the paths the ConfigMap names; with kubectl
  installed, `kubectl kustomize` renders the whole set.
- The Dockerfile builds on Debian 12 (BASE_IMAGE, default debian:12-slim),
  runs as a non-root user, exposes the config's ports, has a data volume
  and a HEALTHCHECK on /healthz, and ships no -dev package in its runtime
  stage.
- deploy/cqrps.conf.example documents every option of `cqrps-server
  --help` and parses (`--print-config`).
- The systemd unit has notify readiness, a restart policy that does not
  restart after the exit status of a configuration error (learnt from
  the real server), the dedicated user, the state directory and
  ExecStart with --config.
- cqrps-addrs.sh derives the client's address list from the pod names.
- deploy/README.md names every metric family the server exports, and the
  Prometheus rules parse and use only metrics that exist.

Usage: check_deploy.py REPO_ROOT CQRPS_SERVER_BINARY
Prints one line per check and "N passed, N failed" at the end.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT, SERVER = sys.argv[1], sys.argv[2]
os.environ["CQRPS_SOURCE_DIR"] = ROOT  # for deploy_files
from deploy_files import dockerfile_instructions, k8s_argv  # noqa: E402
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


def server_config(text, argv=None, conf_path=None):
    """The effective config the real server builds from a config file
    (and, given argv, from that command line, where conf_path stands for
    the file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
        path = f.name
    args = [SERVER, "--config", path]
    if argv is not None:
        args = [SERVER] + [path if a == conf_path else a for a in argv[1:]]
    try:
        p = subprocess.run(args + ["--print-config"],
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


def pod_command_line():
    """The pod's argv (image + StatefulSet) runs the server with the
    ConfigMap's file, named once, and nothing that overrides it."""
    c = container()
    argv = k8s_argv(c)
    need(argv and os.path.basename(argv[0]) == "cqrps-server",
         f"the pod does not run cqrps-server: {argv}")
    n = sum(1 for a in argv if a == "--config" or a.startswith("--config="))
    need(n == 1, f"--config given {n} times in the pod's command line "
         f"{shlex.join(argv)} (the server refuses a repeated option)")
    conf = argv[argv.index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    need(os.path.dirname(conf) in mounts and
         mounts[os.path.dirname(conf)] == "config",
         f"--config {conf} is not in the ConfigMap's mount")
    _, cm = docs["ConfigMap"]
    key = os.path.basename(conf)
    need(key in cm["data"], f"the ConfigMap has no key {key}")
    # Only the file's settings: no flag may override them.
    extra = [a for a in argv[1:] if a.startswith("--") and a != "--config"]
    need(not extra, f"flags beside the ConfigMap override it: {extra}")
    # And the real server accepts exactly this command line.
    server_config(cm["data"][key], argv, conf)


def quantity_bytes(q):
    """A Kubernetes memory quantity (16Gi, 512M, 1e9) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i?)?", str(q))
    need(m, f"cannot read the quantity {q}")
    unit = m.group(2) or ""
    mult = {"": 1}
    for i, u in enumerate("KMGTPE", 1):
        mult[u] = 1000 ** i
        mult[u + "i"] = 1024 ** i
    return int(float(m.group(1)) * mult[unit])


def memory_budget():
    """max-table-memory at most half the container's memory limit: the
    advice of docs/SECURITY.md ("Memory a server can use")."""
    sec = read(os.path.join(ROOT, "docs", "SECURITY.md"))
    need("M/2" in sec, "docs/SECURITY.md no longer advises M/2; update "
         "this check with it")
    limit = container()["resources"]["limits"]["memory"]
    cfg = k8s_config()
    tables = int(cfg["max-table-memory"])
    need(tables * 2 <= quantity_bytes(limit),
         f"max-table-memory {tables} is more than half the memory limit "
         f"{limit}")


def network_policy():
    need("NetworkPolicy" in docs, "no NetworkPolicy in deploy/k8s")
    _, np = docs["NetworkPolicy"]
    spec = np["spec"]
    _, ss = docs["StatefulSet"]
    labels = ss["spec"]["template"]["metadata"]["labels"]
    for k, v in spec["podSelector"]["matchLabels"].items():
        need(labels.get(k) == v, f"NetworkPolicy selects no shard ({k}={v})")
    need("Ingress" in spec.get("policyTypes", []), "an Ingress policy")
    cports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    opened = set()
    for rule in spec.get("ingress", []):
        need(rule.get("from"), f"a rule admits every source: {rule}")
        need(rule.get("ports"), f"a rule admits every port: {rule}")
        for p in rule["ports"]:
            port = cports.get(p["port"], p["port"])
            need(port in cports.values(), f"policy port {p['port']} is no "
                 "container port")
            opened.add(port)
    need(opened == set(cports.values()),
         f"the policy opens {sorted(opened)}, the pod serves "
         f"{sorted(cports.values())}")


def token_secret():
    """The tokens: a Secret from kustomize's secretGenerator, mounted
    with a mode the server accepts (no bits for others) and readable by
    the pod's group, at the paths the ConfigMap's token options name."""
    _, k = docs["Kustomization"]
    gens = {g["name"]: g for g in k.get("secretGenerator", [])}
    c = container()
    spec = docs["StatefulSet"][1]["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    secret_vols = [v for v in vols.values() if "secret" in v]
    need(len(secret_vols) == 1, "one Secret volume (the tokens)")
    sv = secret_vols[0]
    name = sv["secret"]["secretName"]
    need(name in gens, f"Secret {name} is not generated by the "
         "kustomization")
    need(gens[name].get("options", {}).get("disableNameSuffixHash"),
         "a fixed Secret name (trainer jobs refer to it)")
    mode = sv["secret"].get("defaultMode", 0o644)
    need(mode & 0o007 == 0, f"defaultMode {oct(mode)}: the server refuses "
         "a token file other users can read")
    need(mode & 0o040, f"defaultMode {oct(mode)}: the server's group must "
         "read it")
    sc = spec.get("securityContext", {})
    need(sc.get("fsGroup") == sc.get("runAsGroup"),
         "fsGroup must be the server's group (it owns the token files)")
    mount = [m for m in c["volumeMounts"] if m["name"] == sv["name"]]
    need(mount and mount[0].get("readOnly"), "the tokens mounted read-only")
    keys = {f.split("=", 1)[0] for f in gens[name]["files"]}
    cfg = k8s_config()
    for opt in ("auth-token-file", "admin-token-file"):
        path = cfg.get(opt, "")
        need(path, f"the ConfigMap sets no {opt}")
        need(os.path.dirname(path) == mount[0]["mountPath"] and
             os.path.basename(path) in keys,
             f"{opt} = {path} is not a key of Secret {name} at "
             f"{mount[0]['mountPath']}")


def kustomize_renders():
    """`kubectl kustomize` (offline) renders the set with token files
    made as deploy/README.md says; skipped without kubectl."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("     (kubectl not installed: rendering skipped)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "k8s")
        shutil.copytree(K8S, base,
                        ignore=shutil.ignore_patterns("tokens"))
        os.makedirs(os.path.join(base, "tokens"))
        for f in ("auth-token", "admin-token"):
            with open(os.path.join(base, "tokens", f), "w") as fh:
                fh.write(f"test-{f}-0123456789abcdef\n")
        p = subprocess.run([kubectl, "kustomize", base], capture_output=True,
                           text=True, timeout=60)
        need(p.returncode == 0, f"kubectl kustomize failed: {p.stderr}")
    out = {d["kind"]: d for d in yaml.safe_load_all(p.stdout) if d}
    need(set(out) >= {"ConfigMap", "Secret", "Service", "StatefulSet",
                      "PodDisruptionBudget", "NetworkPolicy"},
         f"rendered kinds: {sorted(out)}")
    need(set(out["Secret"]["data"]) == {"auth-token", "admin-token"},
         "rendered Secret keys")
    vols = out["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    need(any(v.get("secret", {}).get("secretName") ==
             out["Secret"]["metadata"]["name"] for v in vols),
         "the rendered StatefulSet does not mount the rendered Secret")


# ---- Dockerfile ------------------------------------------------------------

def dockerfile():
    ins = dockerfile_instructions()
    build_args = {}
    for i, a in ins:
        if i == "ARG" and "=" in a:
            k, _, v = a.partition("=")
            build_args[k.strip()] = v.strip()
    froms = [re.sub(r"\$\{(\w+)\}",
                    lambda m: build_args.get(m.group(1), ""),
                    a.split()[0]) for i, a in ins if i == "FROM"]
    need(len(froms) >= 2, "a build stage and a runtime stage")
    for f in (froms[0], froms[-1]):
        need(re.match(r"debian:(bookworm|12)\b", f),
             f"stages must start from Debian 12 (BASE_IMAGE): {f}")
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
    # The exit status of a configuration error, from the real server: the
    # unit must not restart on it (it would loop until the start limit).
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as bad:
        bad.write("no-such-option = 1\n")
        bad.flush()
        rc = subprocess.run([SERVER, "--config", bad.name], timeout=30,
                            capture_output=True).returncode
    need(rc not in (0, 1), f"a bad config exits {rc}; expected its own "
         "status")
    prevent = " ".join(keys.get((s, "RestartPreventExitStatus"), []))
    need(str(rc) in prevent.split(), f"RestartPreventExitStatus= lacks {rc}: "
         "systemd restarts after a configuration error forever")
    for pre in keys.get((s, "ExecStartPre"), []):
        need(pre.startswith("-") or "cqrps-server" not in pre,
             f"ExecStartPre={pre} fails on a bad config, and systemd "
             "restarts after a failed ExecStartPre regardless of "
             "RestartPreventExitStatus")
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
    check("k8s: the pod's command line (image + StatefulSet)",
          pod_command_line)
    check("k8s: max-table-memory within half the memory limit",
          memory_budget)
    check("k8s: NetworkPolicy", network_policy)
    check("k8s: token Secret", token_secret)
    check("k8s: kubectl kustomize renders", kustomize_renders)
check("Dockerfile", dockerfile)
check("Prometheus rules", prometheus_rules)
check("cqrps.conf.example documents every option", example_documents_every_option)
check("systemd unit fields", systemd_unit)
check("README documents every metric", readme_names_metrics)

failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
