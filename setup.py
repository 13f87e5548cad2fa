"""The package's one C extension: the canonical-spelling scanner of the decoder's fast path.

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
package installs and the decoder uses its slower pure-Arrow checks (flowtrail.sources.canonscan).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "flowtrail.sources._canonscan",
            ["src/flowtrail/sources/_canonscan.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
