"""flowtrail: security monitoring of Kubernetes network flows in Hubble's vocabulary."""

import os

# numpy's OpenBLAS starts a thread per core at import (~40 ms here) whose idle threads poll
# (seen in perf profiles of the decoder); flowtrail does no linear algebra, and on small
# machines the cores are wanted by the decode workers. Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
