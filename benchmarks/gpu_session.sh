#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one command, for a lent GPU machine that has
# jax[cuda], flax, optax, orbax, chex and a CUDA torch but no TFDS and no network. Run from the
# repository root with the CIFAR-10 JPEG archive at $DATA (default tmp/data/cifar10-jpeg.tar.gz);
# logs and reports go to $OUT (default runs/gpu_session). Each step has its own time limit, so
# one failure still leaves the others' numbers.
set -u
OUT=${OUT:-runs/gpu_session}
DATA=${DATA:-tmp/data/cifar10-jpeg.tar.gz}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAXDIFF_CACHE=${JAXDIFF_CACHE:-/tmp/jaxdiff-cache}
PY=${PYTHON:-python3}
log="$OUT/session.log"

step() {  # step NAME SECONDS COMMAND...: runs, times and logs one measurement
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $* ($(date -u +%H:%M:%S))" | tee -a "$log"
  local started=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}, wall $((SECONDS - started)) s" | tee -a "$log"
}

step environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv; nproc; $PY -c 'import jax, flax, optax, orbax.checkpoint as o, torch; \
  print(jax.devices(), jax.__version__, flax.__version__, optax.__version__, torch.__version__)'"
# The one-time JPEG decode, apart from the comparison's own wall time (later runs read the cache).
step decode 120 $PY -c "from jaxdiff.data import load_dataset; print(load_dataset('$DATA'))"
# The target: the whole default comparison, compilation included, in <= 30 s.
step cifar_default 300 env JAX_LOG_COMPILES=1 $PY experiments/cifar.py --data "$DATA" \
  --out /tmp/cifar_default --quiet
grep -o "Finished XLA compilation of [^ ]* in [0-9.]* sec" "$log" | sort -k7 -rn | head -12 | tee -a "$OUT/compiles.txt"
cp /tmp/cifar_default/report.md "$OUT/cifar_report.md" 2>/dev/null
cp /tmp/cifar_default/report.json "$OUT/cifar_report.json" 2>/dev/null
step cnn_throughput 180 $PY benchmarks/cnn_throughput.py --steps 500 --repeats 5
step ddpm_base_bf16 300 $PY benchmarks/ddpm_throughput.py --image-shape 32,32,3 --size base \
  --batch-size 128 --steps 50 --repeats 3 --dtype bfloat16
step vmap_runs 180 $PY benchmarks/vmap_runs.py --runs 1,8 --steps 200 --repeats 3
step ddpm_base_f32 300 $PY benchmarks/ddpm_throughput.py --image-shape 32,32,3 --size base \
  --batch-size 128 --steps 50 --repeats 3 --dtype float32
grep -E "^=== .*wall|ratio|images/s|^N=" "$log"
