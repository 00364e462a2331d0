"""A first DDPM on MNIST: training on the fit loop, samples, the bound in bits/dim, figures.

* :mod:`.config`: :class:`~.config.DDPMConfig`, whose fields are the CLI's flags;
* :mod:`.experiment`: the optimizer, training, sampling and scoring;
* :mod:`.report`: samples.png, loss.png, denoise.png and report.md.
"""
