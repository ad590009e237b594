"""The shipped deploy/ files read as the tools that use them read them:
the Dockerfile's instructions (as a builder parses them), the image's
ENTRYPOINT/CMD, and a container's command line as the kubelet composes
it. Shared by check_deploy.py, test_k8s_pod.py and test_image.py.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import yaml

ROOT = os.environ.get("CQRPS_SOURCE_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")


def dockerfile_instructions(path: str = "") -> List[Tuple[str, str]]:
    """[(INSTRUCTION, arguments)] of deploy/Dockerfile, continuation
    lines joined, comments dropped."""
    with open(path or os.path.join(DEPLOY, "Dockerfile"),
              encoding="utf-8") as f:
        text = f.read()
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue  # comments may sit between continuation lines too
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1])
            for ln in lines]


def runtime_stage() -> List[Tuple[str, str]]:
    """The instructions of the last stage (the image that ships)."""
    ins = dockerfile_instructions()
    last_from = max(k for k, (i, _) in enumerate(ins) if i == "FROM")
    return ins[last_from:]


def image_command() -> Tuple[List[str], List[str]]:
    """The runtime stage's ENTRYPOINT and CMD (exec form), as lists."""
    ins = runtime_stage()
    ep = [json.loads(a) for i, a in ins if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in ins if i == "CMD"]
    return (ep[-1] if ep else []), (cmd[-1] if cmd else [])


def image_healthcheck() -> List[str]:
    """The HEALTHCHECK's CMD (exec form) of the runtime stage."""
    hc = [a for i, a in runtime_stage() if i == "HEALTHCHECK"]
    if not hc:
        return []
    return json.loads(hc[-1].split(" CMD ", 1)[1])


def k8s_argv(c: dict) -> List[str]:
    """The container's argv as the kubelet composes it: `command`
    replaces the image's ENTRYPOINT and drops its CMD; `args` replaces
    CMD (Kubernetes: "Define a Command and Arguments for a Container")."""
    entrypoint, cmd = image_command()
    command, args = c.get("command") or [], c.get("args") or []
    if command:
        return list(command) + list(args)
    return list(entrypoint) + (list(args) if args else list(cmd))


def k8s_docs() -> Dict[str, dict]:
    """Every document of deploy/k8s by kind (one of each)."""
    out: Dict[str, dict] = {}
    for f in sorted(os.listdir(K8S)):
        if f.endswith(".yaml"):
            with open(os.path.join(K8S, f), encoding="utf-8") as fh:
                for d in yaml.safe_load_all(fh):
                    if d:
                        out[d["kind"]] = d
    return out


def run_tests() -> None:
    """unittest.main for the __main__ module, exiting 77 (ctest:
    skipped) when every test skipped itself."""
    import sys
    import unittest
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    r = prog.result
    if r.testsRun and len(r.skipped) == r.testsRun and r.wasSuccessful():
        sys.exit(77)
    sys.exit(0 if r.wasSuccessful() else 1)
