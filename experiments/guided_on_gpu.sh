#!/usr/bin/env bash
# The GPU route of guided_diffusion.ipynb, trained and scored in one call, for experiments/RESULTS.md:
#
#     bash experiments/guided_on_gpu.sh                        # writes runs/guided_gpu/
#     OUT=/some/folder bash experiments/guided_on_gpu.sh       # or there (the device machine's $OUT)
#
# 1. `guided.py train --from-random-weights`: a fresh class-conditional U-Net, every weight trained with label dropout
#    on every t for TRAIN_SECONDS (the notebook's 3 minutes on a GPU), batches of GPU_BATCH_SIZE;
# 2. `guided.py evaluate` on PER_DIGIT samples per digit (100: the issue's n = 1,000) at each strength in W, DDIM on the
#    notebook's SAMPLING_STEPS, the label on every step (these weights learned it on every t), then the label-free half beside
#    DDPM.ipynb's network.
# Each step's output and guided_results.json land in the output folder; nothing in data/ is written (shipping the
# weights is the maintainer's separate step). PYTHON picks the interpreter; TRAIN_SECONDS, PER_DIGIT, W, BATCH and
# STEPS (DDIM's) override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/guided_gpu}"
mkdir -p "$out"
"${PYTHON:-python}" experiments/guided.py train --from-random-weights --seconds "${TRAIN_SECONDS:-180}" --output-dir "$out" \
    2>&1 | tee "$out/train.log"
# shellcheck disable=SC2086  # W is a list of strengths
"${PYTHON:-python}" experiments/guided.py evaluate --weights "$out/guided_mnist_ema.pt" --w ${W:-0 0.1 0.25 0.5 1 3} \
    --per-digit "${PER_DIGIT:-100}" --batch "${BATCH:-1000}" ${STEPS:+--steps "$STEPS"} --label-t-min 0 \
    --output-dir "$out" 2>&1 | tee "$out/evaluate.log"
