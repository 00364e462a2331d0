"""The experiments run on jaxdiff: each package here is one experiment's home.

An experiment fills in what is its own (a configuration, a registry, hooks for the fit loop,
reports and figures) and calls the library for the rest; the library never imports these.
``experiments/*.py`` are their command lines.
"""
