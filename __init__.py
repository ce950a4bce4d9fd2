"""froster: FROSTER open-vocabulary video action recognition as an offline pipeline.

Import the library from ``froster.pipeline``, the stages from ``froster.stages`` and the command line from
``froster.cli``. This module has no side effects on import.
"""

__version__ = "0.1.0"
