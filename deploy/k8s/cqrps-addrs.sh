#!/bin/sh
# Prints the client's comma-separated shard list for the cqrps StatefulSet:
#     cqrps-0.cqrps.NS.svc:7070,cqrps-1.cqrps.NS.svc:7070,...
# in ordinal order (the shard order every client must use).
#
#   cqrps-addrs.sh [-n NAMESPACE] [-r REPLICAS] [-s NAME] [-p PORT] [-d DOMAIN]
#
# -r REPLICAS  shard count; without it, read from the StatefulSet with
#              kubectl (needs access to the cluster).
# -n NAMESPACE default: kubectl's current namespace, else "default".
# -s NAME      StatefulSet and headless Service name (default cqrps).
# -p PORT      server port (default 7070).
# -d DOMAIN    append a cluster domain, e.g. cluster.local, for resolvers
#              without the pod's search path (default: none).
#
# Example:  export CQRPS_ADDR="$(deploy/k8s/cqrps-addrs.sh -n ml)"
#           cqrps stats     # the CLI reads $CQRPS_ADDR
set -eu
ns="" replicas="" name=cqrps port=7070 domain=""
while getopts "n:r:s:p:d:h" opt; do
  case "$opt" in
    n) ns=$OPTARG ;;
    r) replicas=$OPTARG ;;
    s) name=$OPTARG ;;
    p) port=$OPTARG ;;
    d) domain=$OPTARG ;;
    h) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-n NS] [-r REPLICAS] [-s NAME] [-p PORT] [-d DOMAIN]" >&2
       exit 2 ;;
  esac
done
if [ -z "$ns" ]; then
  if command -v kubectl >/dev/null 2>&1; then
    ns=$(kubectl config view --minify -o jsonpath='{..namespace}' 2>/dev/null || true)
  fi
  ns=${ns:-default}
fi
if [ -z "$replicas" ]; then
  replicas=$(kubectl get statefulset "$name" -n "$ns" -o jsonpath='{.spec.replicas}')
fi
case "$replicas" in
  ''|*[!0-9]*) echo "$0: replicas must be a number, got '$replicas'" >&2; exit 2 ;;
esac
if [ "$replicas" -lt 1 ]; then
  echo "$0: the StatefulSet has no replicas" >&2; exit 1
fi
suffix="svc"
[ -n "$domain" ] && suffix="svc.$domain"
i=0 out=""
while [ "$i" -lt "$replicas" ]; do
  out="$out${out:+,}$name-$i.$name.$ns.$suffix:$port"
  i=$((i + 1))
done
echo "$out"
