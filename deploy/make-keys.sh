#!/usr/bin/env bash
# Make one SuperNode authentication key pair per name in deploy/keys/ (P-384, OpenSSH format,
# as Flower 1.39 takes them):
#   private/NAME.key   stays with that SuperNode (--auth-supernode-private-key)
#   public/NAME.pub    is registered with the SuperLink (`flwr supernode register`)
#
#   deploy/make-keys.sh             # client-0 client-1 client-2, the compose file's SuperNodes
#   deploy/make-keys.sh client-3    # one more
#
# The compose file's `register` service registers every key in deploy/keys/public with the
# SuperLink before the SuperNodes start (`docker compose run --rm register` registers new
# ones while the federation runs); the SuperLink refuses a SuperNode whose key it does not
# know. Against another SuperLink: `fedq deploy register deploy/keys/public --superlink NAME`.
#
# FORCE=1 replaces existing files; FEDQ_KEYS_DIR=DIR writes elsewhere.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/find-fedq.sh"
out="${FEDQ_KEYS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/keys}"
if [[ $# -eq 0 ]]; then set -- client-0 client-1 client-2; fi
args=(deploy keys --out "$out" "$@")
if [[ "${FORCE:-0}" == 1 ]]; then args+=(--force); fi
# $fedq unquoted on purpose: FEDQ may be a command of several words.
exec $fedq "${args[@]}"
