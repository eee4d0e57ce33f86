#!/usr/bin/env bash
# Install everything the tests need (Python packages, Debian's chromium for the browser test) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,train
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "chromium is missing and this is not root: the browser test will be skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=15 "$@"
