"""jaxdiff's benchmark scripts, run from the repository root as modules:

  python -m benchmarks.cnn_throughput --steps 200 --repeats 5

Each script's docstring says what it measures and how; ``RESULTS.md`` holds what they measured.
``common`` is what the scripts share, ``twins`` the PyTorch models and loops they compare with
(the only module that imports torch). Nothing imports this package: not the library, the
experiments or the tests.
"""
