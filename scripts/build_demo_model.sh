#!/usr/bin/env bash
# Train the bundled demo model from scratch, or continue an interrupted run.
#
#   scripts/build_demo_model.sh [RUN_DIR]        (default RUN_DIR: runs/demo)
#
# Every stage checkpoints periodically and is started with --resume, so running the script
# again continues where it stopped. When all three stages are done, their inference weights
# (no optimiser state) are copied into src/medgen3d/demo/, the folder `--model demo` loads.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
RECIPE=resources/recipes/demo_phantom.json
BIN=${MEDGEN3D:-.venv/bin/medgen3d}

mkdir -p "$RUN"
if [ ! -f "$RUN/phantoms/phantom_0063_label.nii.gz" ]; then
    "$BIN" phantom --out "$RUN/phantoms" -n 64 --seed 0 --overwrite
fi
for stage in masks images refiner; do
    /usr/bin/time -f "$stage: %e s wall" -a -o "$RUN/timings.txt" \
        "$BIN" train "$stage" --data "$RUN/phantoms" --config "$RECIPE" \
        --out "$RUN/$stage.pt" --resume --device cpu
done
"$BIN" pack-model --in "$RUN" --out src/medgen3d/demo --overwrite
cat "$RUN/timings.txt"
