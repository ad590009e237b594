#!/usr/bin/env bash
# The whole test suite: installs the build dependencies, builds cqrps with
# warnings as errors, runs every test with ctest, then builds and runs the
# suite again under AddressSanitizer + UndefinedBehaviorSanitizer, and the
# threaded suites (ctest label "threads") under ThreadSanitizer, and
# finally fuzzes the frame decoder and the dispatcher (scripts/fuzz.sh).
#
#   scripts/test.sh            # everything
#   CQR_SKIP_SANITIZERS=1 scripts/test.sh   # the plain build only
#   CQR_SKIP_FUZZ=1 scripts/test.sh         # no fuzzing stage
#   CQR_FUZZ_SECONDS=30 scripts/test.sh     # shorter fuzzing
#   CQR_SKIP_IMAGE=1 scripts/test.sh        # no container image build
#                      (tests/deploy/test_image.py: podman, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)

.ci/install-deps.sh

echo "== build (Release, -Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCQR_WERROR=ON >/dev/null
cmake --build build -j"$JOBS"
echo "== tests"
skip_image=()
if [ "${CQR_SKIP_IMAGE:-0}" = "1" ]; then skip_image=(-LE image); fi
ctest --test-dir build --output-on-failure -j"$JOBS" "${skip_image[@]}"

if [ "${CQR_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== build (ASan + UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCQR_ASAN=ON >/dev/null
  cmake --build build-asan -j"$JOBS"
  echo "== tests under ASan + UBSan"
  ctest --test-dir build-asan --output-on-failure -j"$JOBS"

  echo "== build (TSan) for the threaded suites"
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCQR_TSAN=ON >/dev/null
  cmake --build build-tsan -j"$JOBS"
  echo "== threaded tests under TSan"
  ctest --test-dir build-tsan --output-on-failure -j"$JOBS" -L threads
fi

# libFuzzer on the frame decoder and the request dispatcher, from the
# checked-in corpus, CQR_FUZZ_SECONDS (60) per target; any crash fails.
if [ "${CQR_SKIP_FUZZ:-0}" != "1" ]; then
  echo "== fuzz"
  scripts/fuzz.sh
fi
