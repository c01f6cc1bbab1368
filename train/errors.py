"""Re-export of :mod:`extune.errors` (the errors live outside ``train`` so that ``models``,
``augment`` and ``evaluate`` can raise them without depending on ``train``)."""

from extune.errors import ConfigError, DataError, ExtuneError, RegistryError

__all__ = ["ExtuneError", "ConfigError", "DataError", "RegistryError"]
