#!/usr/bin/env bash
# The main job in one command: label and embed the bundled sample photos into output/local/.
# Weights: $VGG16_WEIGHTS if set; else the genuine Keras weights (cache or download); else
# synthesized UNTRAINED weights, with a loud warning that the labels are meaningless.
# Extra arguments go to `python -m pipeline.run` (e.g. --resize center_crop).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv search  # the search extra: the README's next steps (index, search, report) need faiss
OUT=output/local
if [ -n "${VGG16_WEIGHTS:-}" ]; then
  WEIGHTS="$VGG16_WEIGHTS"
elif "$PY" -c "from vgg.weights import resolve_source; resolve_source('imagenet')" >/dev/null 2>&1; then
  WEIGHTS=imagenet
else
  WEIGHTS=output/weights/vgg16_untrained_seed0.npz
  if [ ! -f "$WEIGHTS" ]; then
    mkdir -p output/weights
    "$PY" -m vgg.weights synth --format npz --seed 0 --out "$WEIGHTS"
  fi
  {
    echo
    echo "WARNING: no genuine VGG16 weights here (no \$VGG16_WEIGHTS, and the Keras download failed)."
    echo "WARNING: $("$PY" -c 'from vgg.weights import UNTRAINED_WARNING; print(UNTRAINED_WARNING)')"
    echo "WARNING: set VGG16_WEIGHTS=/path/to/vgg16_weights.npz (or Keras' .h5) for real labels."
    echo
  } >&2
fi
"$PY" -m pipeline.run --config configs/local.yaml --weights "$WEIGHTS" --output "$OUT" "$@"
"$PY" -m pipeline.show "$OUT"
