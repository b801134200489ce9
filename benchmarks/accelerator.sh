#!/usr/bin/env bash
# Every accelerator measurement in one run, for a short GPU/TPU lease (about 10 minutes):
#   bash benchmarks/accelerator.sh OUTDIR
# 1. the CNN table (gpu.py --quick: every method on VGG16 and the U-Net, batch and size sweeps);
# 2. AttnLRP / CP-LRP against the gradient on the zoo ViT, BERT and LLaMA-style transformers;
# 3. transformer memory with remat=False / True / "sqrt" (length and depth sweeps; on GPU the
#    XLA:CPU remat options are not used: GPU keeps jax.checkpoint's barriers by itself).
# Each step writes its own file, so a step cut short by the lease loses only itself.
set -uo pipefail
out=${1:?usage: bash benchmarks/accelerator.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python -c "import jax; print(jax.devices())" | tee "$out/devices.txt"
timeout 300 python benchmarks/gpu.py --quick --out "$out" > "$out/gpu.log" 2>&1
timeout 150 python benchmarks/bench_transformer.py --runs 5 --batch 8 > "$out/transformer_speed.txt" 2>&1
timeout 150 python benchmarks/bench_transformer.py --memory --lengths 128 1024 4096 \
    --depths 4 16 64 > "$out/transformer_memory.txt" 2>&1
tail -n 5 "$out"/*.txt "$out/gpu.log"
