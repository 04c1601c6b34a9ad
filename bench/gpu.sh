#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one command, on a machine with a CUDA GPU:
#
#     bash bench/gpu.sh 2>&1 | tee gpu.log
#
# It prints the device and the commit, then
#   1. SEA's training step at Amazon Baby's size (19,445 users, 7,050 items, 4096-d image and
#      384-d text features, batch 2048, 50 estimator steps), plain and fast formulations in
#      one run with their ratio, and the full-ranking evaluation of all users;
#   2. the same for LightGCN (the launch-bound floor of a graph model without features);
#      then the CLUB estimator fit, autograd against the closed-form gradients;
#   3. the encoders' throughput (CLIP ViT-B-32 images/s, MiniLM sentences/s);
#   4. the bundled sample's whole pipeline on CUDA (`dvc repro -f`, train.device: auto).
# Steps whose package is missing on the machine (open_clip, dvc) are reported and skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'EOF' || exit 1
import torch
if not torch.cuda.is_available():
    raise SystemExit("bench/gpu.sh: no CUDA GPU visible to torch")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

step() { echo; echo "== $*"; "$@" || echo "   (failed: exit $?)"; }
step python3 bench/train_speed.py --preset baby --device cuda --batches 20
step python3 bench/train_speed.py --preset baby --device cuda --model lightgcn --batches 20
step python3 bench/estimator_speed.py --device cuda
if [ -f bench/encoder_speed.py ]; then
  step python3 bench/encoder_speed.py --device cuda
fi
if command -v dvc >/dev/null; then
  echo; echo "== dvc repro -f (bundled sample, CUDA)"
  start=$(date +%s.%N)
  dvc repro -f >/tmp/gpu_repro.log 2>&1 && echo "   ok" || { echo "   (failed; tail follows)"; tail -5 /tmp/gpu_repro.log; }
  echo "   $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f} s wall')")"
else
  echo; echo "== dvc repro -f: skipped (dvc not installed here)"
fi
