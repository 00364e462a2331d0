"""The GPU kernels of the CIFAR SimpleCNN's training step: how many, and how long each runs.

Builds the engine as ``cnn_throughput.py`` does (SGD momentum, batch 100, random data on the
device, ``--runs`` runs vmapped into one program), trains an untimed epoch, times two, then
traces two more with ``jax.profiler`` and prints per step: the untraced wall time, the number of
GPU kernel events, their summed duration ("busy") and the span from the first to the last, then
the ``--top`` kernels by time. Busy close to wall means the GPU runs kernels back to back (the
step is bound by its kernels, not by launching them). ``--out DIR`` also writes every kernel and
the compiled epoch program's HLO (``common.compiled_programs``) there. ``--convolution`` picks
SimpleCNN's formulation: by default the platform policy's (``banded_rows`` on the GPU: whole
output rows per matmul row), ``banded`` for the CPU's narrow column blocks, ``lax`` for cuDNN's
convolutions.

  python -m benchmarks.gpu_step_kernels --runs 1 --steps 200
  python -m benchmarks.gpu_step_kernels --runs 3 --convolution lax --out /tmp/kernels
"""

import argparse
import pathlib
import time

from benchmarks import common
from jaxdiff.policy import CONVOLUTIONS


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=1)
  parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
  parser.add_argument("--convolution", choices=("auto", *CONVOLUTIONS), default="auto",
                      help="SimpleCNN's formulation (default auto: the platform policy's)")  # fmt: skip
  parser.add_argument("--top", type=int, default=25, help="kernels to list")
  parser.add_argument("--out", default=None, help="folder for the kernel list and the HLO")
  flags = parser.parse_args()
  common.positive(parser, flags, "runs", "steps", "top")

  trainer, state, arrays = common.cnn_engine(flags.runs, 100, flags.steps, runs_per_call=0,
                                             convolution=flags.convolution)  # fmt: skip
  convolution = trainer.policy.convolution if flags.convolution == "auto" else flags.convolution
  tag = f"convolution_{convolution}_runs_{flags.runs}"
  data = trainer.put_data(arrays)
  state = common.train_epochs(trainer, state, data, [0])  # compiles
  if flags.out:
    hlo = "\n".join(common.compiled_programs(trainer, state, data))
    pathlib.Path(flags.out, f"hlo_{tag}.txt").write_text(hlo)
  started = time.perf_counter()
  state = common.train_epochs(trainer, state, data, [1, 2])
  wall = (time.perf_counter() - started) / (2 * flags.steps)
  state, events = common.trace_events(trainer, state, data, [3, 4])

  processes = {
    event["pid"]: event["args"]["name"]
    for event in events
    if event.get("ph") == "M" and event.get("name") == "process_name"
  }
  gpus = {pid for pid, name in processes.items() if "GPU" in name}
  kernel_events = [
    {**event, "name": event["name"][:160]}
    for event in events
    if event.get("ph") == "X" and event["pid"] in gpus
  ]
  micros, counts = common.summed_durations(kernel_events)
  steps = 2 * flags.steps
  starts = [event["ts"] for event in kernel_events]
  ends = [event["ts"] + event["dur"] for event in kernel_events]
  span = (max(ends) - min(starts)) / steps if starts else 0.0
  print(common.header())
  kernels, busy = sum(counts.values()) / steps, sum(micros.values()) / steps
  print(f"{tag}: wall {wall * 1e6:.1f} us/step untraced; GPU events {kernels:.1f}/step, "
        f"busy {busy:.1f} us/step, span {span:.1f} us/step")  # fmt: skip
  lines = [
    f"{us / steps:8.2f} us  x{counts[name] / steps:5.2f}  {name}"
    for name, us in micros.most_common()
  ]
  print("\n".join(lines[: flags.top]))
  if flags.out:
    pathlib.Path(flags.out, f"kernels_{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
