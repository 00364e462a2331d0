"""Where the engine's training step spends its time: a jax.profiler trace, summed per XLA op.

Builds the engine as ``engine_loops.py`` does (``--model``, ``--runs``, the engine's own epoch
loop unless ``--loop``), trains one untimed epoch, then traces ``--epochs`` more with
``jax.profiler`` and prints the ``--top`` XLA thunks by time per step, each with its shape and
the JAX operation it came from (read from the optimized HLO of the epoch's programs,
``common.compiled_programs``). Thunks can run concurrently, so their sum can exceed the wall time; read them as
shares.

  python -m benchmarks.engine_profile --model cnn --runs 1
  python -m benchmarks.engine_profile --model cnn --runs 8 --loop scan
"""

import argparse
import re

from benchmarks import common
from jaxdiff.policy import LOOPS


def hlo_ops(hlo_texts):
  """``{thunk name: (shape, JAX op name)}`` from optimized HLO texts."""
  ops = {}
  for line in "\n".join(hlo_texts).splitlines():
    found = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
    if found:
      # YNNPACK fusions carry no op name; their name says what they are.
      op_name = re.search(r'op_name="([^"]*)"', line)
      ops[found[1]] = (found[2], op_name[1] if op_name else "")
  return ops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=common.MODELS, default="cnn")
  parser.add_argument("--runs", type=int, default=1)
  parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
  parser.add_argument("--epochs", type=int, default=2, help="traced epochs")
  parser.add_argument("--loop", choices=LOOPS, default="auto")
  parser.add_argument("--top", type=int, default=15, help="thunks to list")
  flags = parser.parse_args()
  common.refuse_runs_of_one_run_models(parser, flags)
  common.positive(parser, flags, "runs", "steps", "epochs", "top")
  batch_size = common.DEFAULT_BATCH_SIZES[flags.model]
  runs_per_call = 1 if flags.runs == 1 else 0
  trainer, state, arrays = common.model_engine(flags.model, flags.runs, batch_size, flags.steps,
                                               loop=flags.loop, runs_per_call=runs_per_call)  # fmt: skip
  data = trainer.put_data(arrays)
  state = common.train_epochs(trainer, state, data, [0])  # compiles
  ops = hlo_ops(common.compiled_programs(trainer, state, data))
  state, events = common.trace_events(trainer, state, data, range(1, flags.epochs + 1))
  micros, _ = common.summed_durations(
    event for event in events if event.get("ph") == "X" and event["name"] in ops
  )
  steps = flags.steps * flags.epochs
  print(common.header())
  print(f"{flags.model}, batch {batch_size}, {flags.runs} runs ({runs_per_call or 'all'} per "
        f"call), loop={trainer.policy.loop}; XLA thunks in ms per step of all runs, "
        f"{steps} steps traced")  # fmt: skip
  print(f"{sum(micros.values()) / steps / 1000:8.3f}  all thunks")
  for name, total in micros.most_common(flags.top):
    shape, op = ops[name]
    print(f"{total / steps / 1000:8.3f}  {name:32s} {shape:28s} {op.split('/', 1)[-1][:70]}")


if __name__ == "__main__":
  main()
