"""The cost of the process layer: one mesh of 4 CPU devices as 1 process x 4 or 2 processes x 2.

Times the CIFAR SimpleCNN's SGD-with-momentum epochs (``common.cnn_engine``, batch 100 by
default) on a mesh of ``--devices`` CPU devices, once in one process and once split over
``--processes`` processes joined by ``jax.distributed`` on 127.0.0.1 (gloo CPU collectives):
the same program, the same data on every device, so the difference is what crossing
processes costs (gradient all-reduces between processes, the coordinator). The processes share
this machine's cores, so this is the layer's overhead, not a multi-host speed-up.

Each layout runs one untimed epoch (compilation) and ``--repeats`` timed ones; process 0
prints the median images/s.

  python -m benchmarks.process_layer --steps 100 --repeats 5
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from benchmarks import common


def worker(flags):
  """One process of a layout: join (with several), time the epochs, process 0 prints."""
  from jaxdiff import distributed  # pylint: disable=g-import-not-at-top

  if flags.num_processes > 1:
    distributed.initialize(distributed.ProcessGroup(
      flags.coordinator_address, flags.num_processes, flags.process_id, initialization_timeout=60
    ))  # fmt: skip
  trainer, state, arrays = common.cnn_engine(1, flags.batch_size, flags.steps)
  epoch_seconds = common.engine_epochs(trainer, state, arrays)
  first = epoch_seconds()
  timings = [epoch_seconds() for _ in range(flags.repeats)]
  if distributed.is_main_process():
    if flags.num_processes == 1:
      print(common.header(), flush=True)
    rate = flags.batch_size * flags.steps / statistics.median(timings)
    spread = max(timings) / min(timings)
    print(
      f"{flags.num_processes} process(es) x {trainer.mesh.size // flags.num_processes} "
      f"devices: {rate:.0f} images/s (median of {len(timings)} epochs of {flags.steps} steps, "
      f"max/min {spread:.2f}; compile+first epoch {first:.1f} s)",
      flush=True,
    )


def launch(flags, processes):
  """Runs ``processes`` workers of ``devices / processes`` CPU devices each; waits, bounded."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_NUM_CPU_DEVICES": str(flags.devices // processes)}  # fmt: skip
  env.pop("XLA_FLAGS", None)
  command = [sys.executable, "-m", __spec__.name, "--worker", "--batch-size", str(flags.batch_size),
             "--steps", str(flags.steps), "--repeats", str(flags.repeats),
             "--num-processes", str(processes), "--coordinator-address", f"127.0.0.1:{port}"]  # fmt: skip
  children = [subprocess.Popen([*command, "--process-id", str(i)], env=env)
              for i in range(processes)]  # fmt: skip
  deadline = time.monotonic() + flags.timeout
  try:
    for child in children:
      child.wait(timeout=max(1.0, deadline - time.monotonic()))
      if child.returncode:
        raise SystemExit(f"a worker of the {processes}-process layout failed")
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
  parser.add_argument("--repeats", type=int, default=5, help="timed epochs after the first")
  parser.add_argument("--devices", type=int, default=4, help="CPU devices of the mesh")
  parser.add_argument("--processes", type=int, default=2, help="processes of the split layout")
  parser.add_argument("--timeout", type=float, default=900, help="seconds per layout")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--coordinator-address", help=argparse.SUPPRESS)
  flags = parser.parse_args()
  if flags.worker:
    worker(flags)
    return
  if flags.devices % flags.processes or flags.batch_size % flags.devices:
    parser.error("--devices must divide by --processes, and --batch-size by --devices")
  watch = common.MachineWatch()  # the workers are its children: not "other processes"
  for processes in (1, flags.processes):
    launch(flags, processes)
  watch.report()


if __name__ == "__main__":
  main()
