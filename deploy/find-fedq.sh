# Sourced by make-certs.sh and make-keys.sh: sets $fedq to a command that runs fedq.
# $FEDQ wins (it may be several words, e.g. a `docker run ... fedq:latest fedq`); then this
# repository's .venv (`make install`), then `fedq` on PATH.
fedq="${FEDQ:-}"
if [[ -z "$fedq" ]]; then
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -x "$repo/.venv/bin/fedq" ]]; then
    fedq="$repo/.venv/bin/fedq"
  elif command -v fedq >/dev/null 2>&1; then
    fedq="fedq"
  else
    echo "$(basename "$0"): fedq is not installed; run 'make install' in $repo, or set FEDQ" >&2
    exit 2
  fi
fi
