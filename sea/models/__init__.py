"""Models the trainer serves. Importing this package imports every module in it, so each
model file registers itself (:func:`sea.models.base.register`); adding a model means one
new file here plus its ``params.yaml`` section."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
