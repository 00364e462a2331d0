"""How jaxdiff's compiled programs run on a mesh: every platform choice, decided in one step.

:meth:`ExecutionPolicy.for_mesh` is the one place where the platform, and on the CPU the CPU's
flags, decide how programs run. It is told the workload, how the model computes its
convolutions, and returns a complete policy whose choices agree: the formulation the model
builds (``convolution``), the XLA options compiled for that formulation, the epoch loop for a
step with or without convolutions, the runs per call and whether a call of one run vmaps. The
trainer, the predictors, the samplers and the models are handed the policy; nothing below
reads ``jax.default_backend()`` or ``/proc/cpuinfo`` while it traces, and
:mod:`jaxdiff.models` keeps only the math of each formulation. Each default keeps its reason
in one line; the figures are in ``benchmarks/RESULTS.md``.

Example:
  >>> from jaxdiff import classification, parallel
  >>> from jaxdiff.engine import Trainer
  >>> from jaxdiff.models import SimpleCNN
  >>> mesh = parallel.make_mesh()
  >>> policy = ExecutionPolicy.for_mesh(mesh, convolution="auto")  # the policy picks
  >>> policy.convolution, policy.loop  # on the CPU
  ('banded', 'scan')
  >>> model = SimpleCNN(convolution=policy.convolution)
  >>> task = classification.classifier_task(model, (32, 32, 3))
  >>> trainer = Trainer(task, optax.adam, mesh=mesh, batch_size=8, policy=policy)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Mapping
from types import MappingProxyType

import jax
import jax.extend
import jax.numpy as jnp

from jaxdiff.environment import cpu_info
from jaxdiff.models import cpu_ops

LOOPS = ("auto", "step", "scan")
"""What :meth:`ExecutionPolicy.for_mesh`'s ``loop`` takes: ``"auto"``, the measured choice."""

CONVOLUTIONS = cpu_ops.FORMULATIONS
"""The formulations a model can compute its convolutions in (:mod:`jaxdiff.models.cpu_ops`)."""

WORKLOADS = ("none", "auto", *CONVOLUTIONS)
"""What :meth:`ExecutionPolicy.for_mesh`'s ``convolution`` takes: ``"none"``, a step without
convolutions; one of :data:`CONVOLUTIONS`, the formulation the model computes; ``"auto"``, a
model that takes its formulation from the policy (``SimpleCNN``): the measured one."""

# jaxlib 0.10.2's default YNNPACK fusion types (individual dots, reductions and convolutions),
# less the convolutions. The option takes a list, not a change to the default.
_YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

BANDED_ON_XLA_DOTS_FLAG = "amx_tile"
"""The CPU flag (``/proc/cpuinfo``) of the CPU kind on which XLA's own dot kernels ran the
banded matmuls faster than YNNPACK's: the Intel Xeon measured, which has AMX. Elsewhere (the
AMD EPYC measured before) the banded programs keep YNNPACK's dots until a measurement says
more."""


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
  """The execution choices for one platform and workload; build it with :meth:`for_mesh`.

  Constructed directly, every choice is set by hand (a benchmark comparing them); the fields
  are checked one by one, not against each other.

  Attributes:
    platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``.
    loop: how an epoch runs: ``"step"`` (the jitted step called from Python, the state
      donated) or ``"scan"`` (one ``lax.scan``).
    runs_per_call: runs vmapped into one compiled call; 0 means all of them.
    compiler_options: XLA options for every compiled program (``jax.jit(compiler_options=)``).
    convolution: how the model computes its convolutions, one of :data:`CONVOLUTIONS`, or
      ``"none"`` for a step without any; a model that takes a formulation builds this one.
    scan_unroll: steps per iteration of a scanned epoch: more trade compile time for less
      loop overhead.
    vmap_single_run: whether a call of one run vmaps its step over the run axis too (False:
      the step runs on the run itself).
  """

  platform: str
  loop: str = "scan"
  runs_per_call: int = 0
  compiler_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
  convolution: str = "lax"
  scan_unroll: int = 1
  vmap_single_run: bool = False

  def __post_init__(self):
    if self.loop not in ("step", "scan"):
      raise ValueError(f"loop must be 'step' or 'scan', got {self.loop!r}")
    if self.runs_per_call < 0:
      raise ValueError(f"runs_per_call must be >= 0 (0: all runs), got {self.runs_per_call}")
    if self.scan_unroll <= 0:
      raise ValueError(f"scan_unroll must be positive, got {self.scan_unroll}")
    if self.convolution not in ("none", *CONVOLUTIONS):
      raise ValueError(
        f"convolution must be one of {('none', *CONVOLUTIONS)}, got {self.convolution!r}"
      )
    # Read-only, so that a policy shared by several trainers cannot be changed under them.
    object.__setattr__(self, "compiler_options", MappingProxyType(dict(self.compiler_options)))

  @classmethod
  def for_mesh(
    cls,
    mesh: jax.sharding.Mesh,
    *,
    convolution: str = "lax",
    loop: str = "auto",
    runs_per_call: int | None = None,
    scan_unroll: int = 1,
    cpu_flags: Collection[str] | None = None,
  ) -> ExecutionPolicy:
    """The measured choices for the platform of ``mesh``'s devices and the workload.

    Args:
      mesh: the data mesh the programs run on.
      convolution: how the model computes its convolutions, one of :data:`WORKLOADS`; the
        default, ``"lax"``, is the plain ops (the U-Net's).
      loop: one of :data:`LOOPS`; ``"auto"`` takes the measured choice for the workload.
      runs_per_call: as the attribute; None takes the platform's default.
      scan_unroll: as the attribute.
      cpu_flags: the CPU's flags, as ``/proc/cpuinfo`` lists them; None reads them there
        (only on the CPU platform).

    Returns:
      The policy; build the model with its ``convolution``.

    Raises:
      ValueError: ``convolution`` or ``loop`` is not one of the values above.
    """
    if convolution not in WORKLOADS:
      raise ValueError(f"convolution must be one of {WORKLOADS}, got {convolution!r}")
    if loop not in LOOPS:
      raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    platform = mesh.devices.flat[0].platform
    on_cpu = platform == "cpu"
    if convolution == "auto":
      # Banded matmuls beat the convolution kernels for the seed CNN on XLA:CPU and XLA:GPU;
      # on the GPU whole output rows per matmul row avoid many strided copies.
      convolution = {"cpu": "banded", "gpu": "banded_rows"}.get(platform, "lax")
    if loop == "auto":
      # A scan saves the per-step dispatch, but XLA:CPU runs convolutions several times slower
      # inside a loop: a CPU step with lax convolutions is called from Python.
      loop = "step" if on_cpu and convolution == "lax" else "scan"
    if on_cpu and cpu_flags is None:
      cpu_flags = (cpu_info("flags") or "").split()
    return cls(
      platform=platform,
      loop=loop,
      # XLA:CPU ran vmapped runs slower than the same runs one after another.
      runs_per_call=(1 if on_cpu else 0) if runs_per_call is None else runs_per_call,
      compiler_options=_cpu_compiler_options(convolution, cpu_flags) if on_cpu else {},
      convolution=convolution,
      scan_unroll=scan_unroll,
      # A vmap over one run batches every weight, and XLA:CPU then laid out the U-Net's
      # convolutions and their gradients worse; the other platforms keep what they ran with.
      vmap_single_run=False,
    )


def _cpu_compiler_options(convolution: str, cpu_flags: Collection[str]) -> dict[str, str]:
  """XLA:CPU's options for a program whose model computes its convolutions as ``convolution``.

  They leave convolutions to XLA's own kernels instead of YNNPACK's, jaxlib's CPU default,
  which took longer at every channel count the U-Net has (8-128). For a program whose
  convolutions are banded matmuls, on a CPU with :data:`BANDED_ON_XLA_DOTS_FLAG` they ask for
  no YNNPACK fusion at all: XLA's own dot kernels ran the seed CNN's step faster there, while
  the U-Net's and an MLP's ran slower without YNNPACK's dots. The option is experimental, so it
  is set per compiled function rather than process-wide in ``XLA_FLAGS``, and only where this
  jaxlib accepts it (:func:`jaxlib_accepts`); otherwise none is set.
  """
  banded = convolution in ("banded", "banded_rows")
  no_fusion = banded and BANDED_ON_XLA_DOTS_FLAG in cpu_flags
  options = {"xla_cpu_experimental_ynn_fusion_type": "" if no_fusion else _YNN_FUSION_TYPES}
  return options if jaxlib_accepts(options) else {}


def jaxlib_accepts(options: Mapping[str, str]) -> bool:
  """Whether this jaxlib compiles a trivial CPU function with the XLA ``options``."""
  return _accepts(tuple(sorted(options.items())))


@functools.cache
def _accepts(options: tuple[tuple[str, str], ...]) -> bool:
  try:
    probe = jax.device_put(jnp.zeros(()), jax.devices("cpu")[0])
    jax.jit(jnp.negative, compiler_options=dict(options)).lower(probe).compile()
  except (RuntimeError, ValueError):  # JaxRuntimeError is a RuntimeError
    return False
  return True


def computes_convolution(jaxpr: jax.extend.core.Jaxpr) -> bool:
  """Whether ``jaxpr`` or any jaxpr nested in it has a ``conv_general_dilated``: for a traced
  step, whether its model's convolutions are ``"lax"`` ones (:meth:`ExecutionPolicy.for_mesh`)."""
  return any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.eqns) or any(
    computes_convolution(inner) for inner in jax.extend.core.subjaxprs(jaxpr)
  )
