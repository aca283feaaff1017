#!/usr/bin/env bash
# Install the Debian packages trionsm needs that this machine lacks. Used by `make demo` and CI.
#
# Usage: scripts/system-deps.sh demo|test
#   demo: iproute2 (`ip netns`: the demo's namespaces and processes)
#   test: the demo's, plus iputils-ping and iperf3 (liveness tests, data-plane benchmarks),
#         etcd-server/etcd-client (the registry's etcd store), nftables (partition scenarios)
# Only missing packages are installed, and only as root on a machine with apt-get; otherwise the
# script says what is missing and leaves the machine alone.
set -euo pipefail

case "${1:-}" in
    demo) wanted=(iproute2:ip) ;;
    test) wanted=(iproute2:ip iputils-ping:ping iperf3:iperf3 etcd-server:etcd
                  etcd-client:etcdctl nftables:nft) ;;
    *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

missing=()
for pair in "${wanted[@]}"; do
    package="${pair%%:*}" command="${pair#*:}"
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "trionsm needs these packages, not installed here: ${missing[*]}" >&2
    echo "(run as root on Debian/Ubuntu to have them installed, or install them yourself)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
