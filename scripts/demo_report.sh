#!/usr/bin/env bash
# Evaluate the bundled demo model against fresh phantoms; the report lands in
# resources/reports/demo/ (report.md, metrics.json, figures/, segmenter.pt).
#
#   scripts/demo_report.sh [WORK_DIR]        (default WORK_DIR: runs/report)
#
# The real set is 16 phantoms drawn with another seed than the demo's training set (seed 0),
# the synthetic set 8 pairs from the demo model; both are kept in WORK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/report}
BIN=${MEDGEN3D:-.venv/bin/medgen3d}

"$BIN" phantom --out "$WORK/real" -n 16 --seed 1 --overwrite
"$BIN" generate --model demo --out "$WORK/synthetic" -n 8 --seed 0 --overwrite
"$BIN" evaluate --real "$WORK/real" --synthetic "$WORK/synthetic" --model demo \
    --out resources/reports/demo --overwrite
