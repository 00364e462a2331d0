"""The classic Bayesian neural-network benchmark: SG-MCMC samplers on MNIST with a 784-400-400-10
ReLU network and an N(0, 1) prior.

* :mod:`.registry`: the methods (SGD and the samplers) and their learning-rate schedules;
* :mod:`.config`: :class:`~.config.BnnConfig`, whose fields are the CLI's flags;
* :mod:`.experiment`: learning-rate tuning on a held-out split, then the seeds, on the fit loop;
* :mod:`.report`: statistics over seeds, report.md and the figures.
"""
