#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one command, for a lent GPU machine that has
# jax[cuda], flax, optax, orbax, chex and a CUDA torch but no TFDS and no network. Run from the
# repository root with the CIFAR-10 JPEG archive at $DATA (default tmp/data/cifar10-jpeg.tar.gz);
# logs and reports go to $OUT (default runs/gpu_session). Each step has its own time limit, so
# one failure still leaves the others' numbers. All of it takes about 10 minutes on an H200 (each
# DDPM step about 2.5, mostly compiling the base U-Net); name steps to run only those:
#   bash benchmarks/gpu_session.sh cifar_default cifar_default_warm cnn_throughput
set -u
OUT=${OUT:-runs/gpu_session}
DATA=${DATA:-tmp/data/cifar10-jpeg.tar.gz}
mkdir -p "$OUT"
# A lent machine has no jaxdiff installed: the benchmarks run as modules from the repository root
# (python -m benchmarks.x), and the experiments' scripts find jaxdiff on PYTHONPATH.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAXDIFF_CACHE=${JAXDIFF_CACHE:-/tmp/jaxdiff-cache}
PY=${PYTHON:-python3}
log="$OUT/session.log"
wanted=" $* "

step() {  # step NAME SECONDS COMMAND...: runs, times and logs one measurement
  local name=$1 limit=$2
  shift 2
  if [[ "$wanted" != "  " && "$wanted" != *" $name "* ]]; then return; fi
  echo "=== $name: $* ($(date -u +%H:%M:%S))" | tee -a "$log"
  local started=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "cuda_timer.cc" | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}, wall $((SECONDS - started)) s" | tee -a "$log"
}

step environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv; nproc; $PY -c 'import jax, flax, optax, orbax.checkpoint as o, torch; \
  print(jax.devices(), jax.__version__, flax.__version__, optax.__version__, torch.__version__)'"
# The one-time JPEG decode, apart from the comparison's own wall time (later runs read the cache).
step decode 120 $PY -c "from jaxdiff.data import load_dataset; load_dataset('$DATA')"
# The target: the whole default comparison, compilation included, in <= 30 s. The
# report's environment line gives the wall time per phase.
step cifar_default 300 env JAX_LOG_COMPILES=1 $PY experiments/cifar.py --data "$DATA" --out /tmp/cifar_default --quiet
cp /tmp/cifar_default/report.md "$OUT/cifar_report.md" 2>/dev/null
grep -o "wall time s [0-9.]*\|phase seconds[^;]*" /tmp/cifar_default/report.md 2>/dev/null | tee -a "$log"
grep -o "Finished XLA compilation of .*" "$log" | sort -k7 -n | tail -12  # the slowest compiles
# Again with the compiled programs in JAX's persistent cache (under $JAXDIFF_CACHE/xla).
step cifar_default_warm 300 $PY experiments/cifar.py --data "$DATA" --out /tmp/cifar_warm --quiet
grep -o "wall time s [0-9.]*\|phase seconds[^;]*" /tmp/cifar_warm/report.md 2>/dev/null | tee -a "$log"
step cnn_throughput 180 $PY -m benchmarks.cnn_throughput --steps 500 --repeats 5
# Kernels per step and GPU busy time, for one run and for a comparison's three, with the
# default formulation (banded_rows on the GPU) and with cuDNN's convolutions (lax); every kernel
# and the HLO go to $OUT.
for runs in 1 3; do
  for convolution in auto lax; do
    step "kernels_${convolution}_runs_$runs" 90 $PY -m benchmarks.gpu_step_kernels --runs $runs \
      --convolution $convolution --top 15 --out "$OUT"
  done
done
step vmap_runs 180 $PY -m benchmarks.vmap_runs --runs 1,8 --steps 200 --repeats 3
step ddpm_base_bf16 300 $PY -m benchmarks.ddpm_throughput --image-shape 32,32,3 --size base \
  --batch-size 128 --steps 50 --repeats 3 --dtype bfloat16
step ddpm_base_f32 300 $PY -m benchmarks.ddpm_throughput --image-shape 32,32,3 --size base \
  --batch-size 128 --steps 50 --repeats 3 --dtype float32
grep -E "^=== .*wall|ratio|images/s|^N=|phase seconds|wall time|us/step" "$log"
