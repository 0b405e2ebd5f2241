from . import presnet  # noqa: F401
