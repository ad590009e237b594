#!/bin/sh
# check_corpus.sh GENERATOR CORPUS_DIR
# Regenerates the seed corpus into a temporary directory and checks that
# every generated file is in CORPUS_DIR with the same bytes (the corpus
# may hold more: inputs the fuzzers found and were kept as regressions).
# To refresh it after changing gen_corpus.c:  GENERATOR tests/fuzz/corpus
set -eu
gen=$1
corpus=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$gen" "$tmp"
status=0
for f in "$tmp"/*/*; do
  rel=${f#"$tmp"/}
  if ! cmp -s "$f" "$corpus/$rel"; then
    echo "corpus file $rel is missing or stale: regenerate with $gen $corpus"
    status=1
  fi
done
exit $status
