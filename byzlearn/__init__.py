"""byzlearn: robust distributed learning and robust learning machines.

Subpackages:

- :mod:`byzlearn.aggregators`: gradient aggregation rules (GARs) and pre-aggregators.
- :mod:`byzlearn.attacks`: Byzantine behaviours (gradient-space attacks, data poisoning, faults).
- :mod:`byzlearn.data`, :mod:`byzlearn.models`: datasets, partitioners and reference models.
- :mod:`byzlearn.protocols`, :mod:`byzlearn.engines`: training protocols and where they run.
- :mod:`byzlearn.experiments`: configs, runner, result store, sweeps, reports.
- :mod:`byzlearn.neurons`: fault tolerance of neural networks (FEP bounds, fault injection).
"""

__version__ = "0.1.0"

from byzlearn._jit_cache import drop_stale as _drop_stale_jit_caches

# numba's cached machine code, built from other versions of the compiled modules, is dropped
# before any of it can load (see byzlearn._jit_cache).
_drop_stale_jit_caches()
