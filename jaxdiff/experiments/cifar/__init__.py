"""The seed article's optimizer comparison on CIFAR-10: Langevin noise against SGD and Adam.

* :mod:`.registry`: which optimizers there are, which are Langevin, and each one's baseline;
* :mod:`.config`: :class:`~.config.ComparisonConfig`, whose fields are the CLI's flags;
* :mod:`.experiment`: training every optimizer's runs on the fit loop, typed run records;
* :mod:`.report`: statistics over seeds, the article's claims judged, report.md;
* :mod:`.plots`: curves.png, sweep.png and cold_posterior.png.
"""
