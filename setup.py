"""The one thing pyproject.toml cannot say: hallway's optional C extension.

``hallway._irkscan`` (src/hallway/_irkscan.c) tries a resolvable private address against every
IRK in C, with AES-NI when the CPU has it. It is optional: where no C compiler or Python headers
are present the build goes on without it and hallway uses its pure-Python IRK path
(``hallway status`` shows which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("hallway._irkscan", ["src/hallway/_irkscan.c"], optional=True),
    ],
)
