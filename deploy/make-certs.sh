#!/usr/bin/env bash
# Make the federation's CA and the SuperLink's TLS certificate in deploy/certs/:
#   ca.crt           the CA certificate: SuperNodes and flwr verify the SuperLink with it
#   ca.key           the CA's private key: keep it, no service needs it
#   superlink.crt    the SuperLink's certificate, valid for `superlink` (the compose service),
#   superlink.key    localhost, 127.0.0.1 and every name or address given as an argument
#
#   deploy/make-certs.sh                          # for the compose demo on this host
#   deploy/make-certs.sh fl.example.org 10.0.0.5  # also for SuperNodes dialling these
#
# FORCE=1 replaces existing files; FEDQ_CERTS_DIR=DIR writes elsewhere.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/find-fedq.sh"
out="${FEDQ_CERTS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/certs}"
args=(deploy certs --out "$out" --host superlink)
for host in "$@"; do args+=(--host "$host"); done
if [[ "${FORCE:-0}" == 1 ]]; then args+=(--force); fi
# $fedq unquoted on purpose: FEDQ may be a command of several words.
exec $fedq "${args[@]}"
