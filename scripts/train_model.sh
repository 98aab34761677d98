#!/usr/bin/env bash
# Train (or continue training) the three stages of a recipe, then pack inference weights.
#
#   scripts/train_model.sh RECIPE DATA RUN_DIR [PACK_DIR]
#
# Stages run one after another with --resume, so running the script again continues where
# it stopped. IMAGES_STEPS, REFINER_STEPS and MASKS_STEPS (environment) stop a stage early in
# this call (default: the recipe's max_steps); the recipe's schedule has no learning-rate
# decay, so a run stopped early and continued later follows the same trajectory.
# INIT_FROM (a model name or folder) starts stages that have no checkpoint yet from that
# model's weights, e.g. the bundled model after a run folder was lost.
# When PACK_DIR is given, the stages present are packed there (weights only) at the end;
# with CALIBRATE=1 the mask stage's volumes are calibrated on the training cases on the way
# (`medgen3d calibrate`, about 25 minutes for the brain model on one CPU core).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=$1 DATA=$2 RUN=$3 PACK=${4:-}
BIN=${MEDGEN3D:-.venv/bin/medgen3d}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$RUN"
for stage in images refiner masks; do
    steps_var="${stage^^}_STEPS"
    args=()
    [ -n "${!steps_var:-}" ] && args+=(--max-steps "${!steps_var}")
    [ -n "${INIT_FROM:-}" ] && [ ! -f "$RUN/$stage.pt" ] && args+=(--init-from "$INIT_FROM")
    /usr/bin/time -f "$stage: %e s wall, %U s user" -a -o "$RUN/timings.txt" \
        "$BIN" train "$stage" --data "$DATA" --config "$RECIPE" --out "$RUN/$stage.pt" \
        --resume --device cpu "${args[@]}"
done
if [ -n "$PACK" ] && [ "${CALIBRATE:-0}" = 1 ]; then
    "$BIN" calibrate --model "$RUN" --data "$DATA" --out "$PACK" --device cpu --overwrite
elif [ -n "$PACK" ]; then
    "$BIN" pack-model --in "$RUN" --out "$PACK" --overwrite
fi
