#!/usr/bin/env bash
# Evaluate a bundled real-anatomy model against its own held-out cases; the report lands in
# resources/reports/<REPORT>/ (report.md, metrics.json, figures/, segmenter.pt).
#
#   scripts/model_report.sh MODEL DATA REPORT [N] [WORK_DIR]
#   e.g. scripts/model_report.sh brain-mri ../shared/data/mri_brain_ixi brain_mri
#
# N synthetic pairs (default 8) are generated with seed 0 into WORK_DIR (default
# runs/report-MODEL). The real set is the whole dataset folder: with --model-holdout the
# model's held-out cases (never trained on) score the segmenters and are the reference of
# every comparison, the other cases train the segmenters; N of the held-out masks are also
# turned into images (--from-masks) and compared with their real images. The segmenters are
# wider and train longer at a lower rate than evaluate's defaults: with those, 600 steps
# learn no head-and-neck organ; with these, every one (benchmarks/README.md). EVALUATE_ARGS
# (environment) adds options to `medgen3d evaluate`, e.g. "--no-downstream".
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1 DATA=$2 REPORT=$3 N=${4:-8}
WORK=${5:-runs/report-$MODEL}
BIN=${MEDGEN3D:-.venv/bin/medgen3d}

"$BIN" generate --model "$MODEL" --out "$WORK/synthetic" -n "$N" --seed 0 --overwrite
"$BIN" evaluate --real "$DATA" --synthetic "$WORK/synthetic" --model "$MODEL" \
    --model-holdout --from-masks "$N" --out "resources/reports/$REPORT" --overwrite \
    --steps 1500 --learning-rate 3e-3 --init-filters 16 ${EVALUATE_ARGS:-}
