#!/usr/bin/env bash
# Install, ingest the sample lessons, then open the chat on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m ingest data/lessons/
exec .venv/bin/streamlit run ui/app.py --server.address 127.0.0.1 --server.headless true --browser.gatherUsageStats false
