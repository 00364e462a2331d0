"""A first DDPM on MNIST: training on the fit loop, samples, the bound in bits/dim, figures.

* :mod:`.config`: :class:`~.config.DDPMConfig`, whose fields are the CLI's flags;
* :mod:`.experiment`: the optimizer, training, sampling and scoring, and reusing a trained run
  (:func:`~.experiment.load_run`, :func:`~.experiment.sample`);
* :mod:`.report`: samples.png, loss.png, denoise.png and report.md.

README.md's DDPM section has an example of reusing a trained run (its test runs it).
"""

from jaxdiff.experiments.ddpm_mnist.experiment import Run, Samples, load_run, sample

__all__ = ["Run", "Samples", "load_run", "sample"]
