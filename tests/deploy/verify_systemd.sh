#!/bin/sh
# systemd-analyze verify on deploy/systemd/cqrps.service, with ExecStart
# pointing at the cqrps-server that was just built (verify checks that the
# binary exists). Any message is a failure: verify exits 0 on warnings such
# as unknown keys. Exit 77 (ctest: skipped) when systemd-analyze is missing
# or cannot run in this environment.
#
#   verify_systemd.sh UNIT SERVER_BINARY
set -u
unit=$1 server=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not installed (Debian package: systemd)"
  exit 77
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/cqrps-server#$server#g" "$unit" > "$tmp/cqrps.service"
if ! grep -q "^ExecStart=$server " "$tmp/cqrps.service"; then
  echo "FAIL: the unit's ExecStart does not run /usr/local/bin/cqrps-server"
  exit 1
fi
out=$(cd "$tmp" && systemd-analyze verify "$tmp/cqrps.service" 2>&1)
rc=$?
case "$out" in
  *"Failed to initialize"*|*"Failed to setup"*|*"Operation not permitted"*|*"not been booted with systemd"*)
    echo "SKIP: systemd-analyze cannot run here:"
    echo "$out"
    exit 77 ;;
esac
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify (exit $rc):"
  echo "$out"
  exit 1
fi
# The unit really is analysed: a broken copy must be reported.
sed 's/^Type=notify$/Type=notifyy/' "$tmp/cqrps.service" > "$tmp/broken.service"
bad=$(cd "$tmp" && systemd-analyze verify "$tmp/broken.service" 2>&1)
case "$bad" in
  *"notifyy"*) ;;
  *) echo "FAIL: systemd-analyze did not report a broken unit: $bad"; exit 1 ;;
esac
echo "systemd-analyze verify: cqrps.service OK ($(systemd-analyze --version | head -n1))"
exit 0
