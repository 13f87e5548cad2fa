"""The package's C extensions, both optional (everything else is in pyproject.toml):

* ``_canonscan``: the canonical-spelling scanner of the decoder's fast path; without a C compiler
  the decoder uses its slower pure-Arrow checks (flowtrail.sources.canonscan);
* ``_hsmatch``: the line prefilter on the system's Hyperscan (Debian: libhyperscan-dev), built
  where its header is found; elsewhere the PyPI ``hyperscan`` wheel does the same work, slower
  (flowtrail.sources.linematch);
* ``_lineclass``: line classes for the policy replay (flowtrail.sources.lineclass); without it
  every flow line is decoded, with the same report;
* ``_wirejson``: Hubble Relay responses (protobuf wire bytes) written as Hubble JSON lines
  (flowtrail.sources.relay); without it each response is parsed by protobuf and converted in
  Python, with the same lines, about 2x slower;
* ``_render``: the simulator's line writer (flowtrail.lab.simulate); without it the same lines
  come from numpy and ``str.join``, about twice as slow.
"""

import os
import shutil
import subprocess

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def _hyperscan_flags() -> tuple[list[str], list[str]] | None:
    """(include dirs, library dirs) of the system's Hyperscan, or None where it is absent."""
    if shutil.which("pkg-config"):
        try:
            cflags = subprocess.run(["pkg-config", "--cflags-only-I", "libhs"], capture_output=True, text=True,
                                    check=True).stdout.split()
            libs = subprocess.run(["pkg-config", "--libs-only-L", "libhs"], capture_output=True, text=True,
                                  check=True).stdout.split()
            # pkg-config names the hs/ directory itself; the source includes <hs/hs.h>
            incs = [os.path.dirname(f[2:].rstrip("/")) if f[2:].rstrip("/").endswith("/hs") else f[2:] for f in cflags]
            return incs, [f[2:] for f in libs]
        except (OSError, subprocess.CalledProcessError):
            pass
    for base in ("/usr/include", "/usr/local/include"):
        if os.path.exists(os.path.join(base, "hs", "hs.h")):
            return [base], []
    return None


# both include the line index
DEPENDS = ["src/flowtrail/sources/_lineindex.h"]

extensions = [Extension("flowtrail.sources._canonscan", ["src/flowtrail/sources/_canonscan.c"],
                        extra_compile_args=FLAGS, depends=DEPENDS, optional=True),
              Extension("flowtrail.sources._lineclass", ["src/flowtrail/sources/_lineclass.c"],
                        extra_compile_args=FLAGS, optional=True),
              Extension("flowtrail.sources._wirejson", ["src/flowtrail/sources/_wirejson.c"],
                        extra_compile_args=FLAGS, optional=True),
              Extension("flowtrail.lab._render", ["src/flowtrail/lab/_render.c"], extra_compile_args=FLAGS,
                        optional=True)]
hs = _hyperscan_flags()
if hs is not None and not os.environ.get("FLOWTRAIL_NO_SYSTEM_HYPERSCAN"):
    extensions.append(Extension("flowtrail.sources._hsmatch", ["src/flowtrail/sources/_hsmatch.c"],
                                include_dirs=hs[0], library_dirs=hs[1], libraries=["hs"],
                                extra_compile_args=FLAGS, depends=DEPENDS, optional=True))

setup(ext_modules=extensions)
