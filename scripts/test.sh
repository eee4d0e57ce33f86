#!/usr/bin/env bash
# Install everything the tests need (Python packages; Debian's chromium for the browser test and PostgreSQL for the
# shared-log test) and run the suite. Extra arguments go to pytest (--slow adds the slow tier, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,train
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and this is not root: the tests that need them will be skipped" >&2
  fi
fi
# Debian keeps the PostgreSQL server programs (initdb, pg_ctl) off PATH.
for bin in /usr/lib/postgresql/*/bin; do [ -d "$bin" ] && PATH="$PATH:$bin"; done
export PATH HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=15 "$@"
