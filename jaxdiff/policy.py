"""How jaxdiff's compiled programs run on a mesh: decided once, passed explicitly.

Every choice that depends on the platform (and on the CPU, where a measurement said so) is
made here, in :meth:`ExecutionPolicy.for_mesh`, and handed to the trainer, the predictors,
the samplers and the models; nothing below reads ``jax.default_backend()`` while it traces.
Each default keeps its reason in one line; the figures are in ``benchmarks/RESULTS.md``.

Example:
  >>> mesh = parallel.make_mesh()
  >>> policy = ExecutionPolicy.for_mesh(mesh).with_convolution()
  >>> model = SimpleCNN(convolution=policy.convolution)
  >>> trainer = Trainer(task, optax.adam, mesh=mesh, batch_size=100, policy=policy)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import jax

from jaxdiff.models import cpu_ops

LOOPS = ("auto", "step", "scan")
CONVOLUTIONS = cpu_ops.FORMULATIONS


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
  """The execution choices for one platform.

  Attributes:
    platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``.
    loop: how an epoch runs: ``"step"`` (the jitted step called from Python, the state
      donated), ``"scan"`` (one ``lax.scan``), or ``"auto"``: :meth:`loop_for` decides per
      task from whether its step computes a convolution.
    runs_per_call: runs vmapped into one compiled call; 0 means all of them.
    compiler_options: XLA options for every compiled program (``jax.jit(compiler_options=)``):
      :meth:`for_mesh`'s suit models with ``lax`` convolutions or none; a model that computes
      its convolutions as ``convolution`` runs with :meth:`with_convolution`'s.
    convolution: how models with few-channel convolutions (the seed article's CNN) compute
      them, one of :data:`CONVOLUTIONS` (see :mod:`jaxdiff.models.cpu_ops`).
    scan_unroll: steps per iteration of a scanned epoch: more trade compile time for less
      loop overhead.
  """

  platform: str
  loop: str = "auto"
  runs_per_call: int = 0
  compiler_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
  convolution: str = "lax"
  scan_unroll: int = 1

  def __post_init__(self):
    if self.loop not in LOOPS:
      raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
    if self.runs_per_call < 0:
      raise ValueError(f"runs_per_call must be >= 0 (0: all runs), got {self.runs_per_call}")
    if self.scan_unroll <= 0:
      raise ValueError(f"scan_unroll must be positive, got {self.scan_unroll}")
    if self.convolution not in CONVOLUTIONS:
      raise ValueError(f"convolution must be one of {CONVOLUTIONS}, got {self.convolution!r}")
    # Read-only, so that a policy shared by several trainers cannot be changed under them.
    object.__setattr__(self, "compiler_options", MappingProxyType(dict(self.compiler_options)))

  @classmethod
  def for_mesh(
    cls,
    mesh: jax.sharding.Mesh,
    *,
    loop: str = "auto",
    runs_per_call: int | None = None,
    scan_unroll: int = 1,
  ) -> ExecutionPolicy:
    """The measured defaults for the platform of ``mesh``'s devices.

    Args:
      mesh: the data mesh the programs run on.
      loop: as the attribute; ``"auto"`` keeps the per-task choice.
      runs_per_call: as the attribute; None takes the platform's default.
      scan_unroll: as the attribute.

    Returns:
      The policy.
    """
    platform = mesh.devices.flat[0].platform
    on_cpu = platform == "cpu"
    return cls(
      platform=platform,
      loop=loop,
      # XLA:CPU ran vmapped runs slower than the same runs one after another.
      runs_per_call=(1 if on_cpu else 0) if runs_per_call is None else runs_per_call,
      # XLA's own convolution kernels beat YNNPACK's, jaxlib's CPU default, at 8-128 channels.
      compiler_options=cpu_ops.compiler_options(platform),
      # Banded matmuls beat the convolution kernels for the seed CNN on XLA:CPU and XLA:GPU;
      # on the GPU whole output rows per matmul row avoid many strided copies.
      convolution={"cpu": "banded", "gpu": "banded_rows"}.get(platform, "lax"),
      scan_unroll=scan_unroll,
    )

  def with_convolution(self, convolution: str | None = None) -> ExecutionPolicy:
    """This policy for a model that computes its convolutions as ``convolution``.

    Args:
      convolution: one of :data:`CONVOLUTIONS`; None keeps the policy's own choice.

    Returns:
      The same choices with ``convolution`` and the compiler options measured for it
      (``cpu_ops.compiler_options``): build the model with the returned ``convolution``.

    Example:
      >>> policy = ExecutionPolicy.for_mesh(mesh).with_convolution()
      >>> model = SimpleCNN(convolution=policy.convolution)
    """
    convolution = self.convolution if convolution is None else convolution
    options = cpu_ops.compiler_options(self.platform, convolution)
    return dataclasses.replace(self, convolution=convolution, compiler_options=options)

  def loop_for(self, convolves: bool) -> str:
    """The epoch loop for a step that does (or does not) compute a convolution.

    ``loop`` itself unless it is ``"auto"``: then a scan (no per-step dispatch), except on the
    CPU for a convolving step, as XLA:CPU runs convolutions several times slower inside a loop.
    """
    if self.loop != "auto":
      return self.loop
    return "step" if self.platform == "cpu" and convolves else "scan"
