#!/usr/bin/env bash
# Installs the Debian packages cqrps needs to build, test and benchmark.
# Idempotent: skips apt-get when everything is already installed.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config clang
  libclang-rt-14-dev  # libFuzzer and clang's sanitizer runtimes (fuzz.sh)
  libuv1-dev libprotobuf-c-dev protobuf-c-compiler
  libopenblas-dev librocksdb-dev
  check libsubunit-dev libxxhash-dev libmicrohttpd-dev
  libcjson-dev        # the CLI's JSON output
  systemd
  python3 python3-protobuf python3-numpy python3-yaml python3-torch python3-venv python3-pip
  python3-setuptools python3-wheel  # pip install client/python, offline
  # tests/deploy/test_image.py: build deploy/Dockerfile and run the image
  # (rootful podman with runc; the base image is made with debootstrap)
  podman runc containernetworking-plugins iptables debootstrap
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
