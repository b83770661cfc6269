"""The one compiled piece of fleetid: RS256 and ES256 signing on native threads
(fleetid/keys/_signpool.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler or
OpenSSL headers are found, the install goes on without it and `fleetid serve` signs on the
event loop's thread, as the Lambda package (built from pyproject.toml alone) always does.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fleetid.keys._signpool",
            sources=["fleetid/keys/_signpool.c"],
            libraries=["crypto"],
            extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"],
            optional=True,
        )
    ]
)
