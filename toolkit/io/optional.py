"""Optional dependencies, imported where a feature needs them, with a message naming the extra.

torch, torchio and nnunetv2 are not needed to catalog, split, export or evaluate; only the
trainers (``xds-toolkit[train]``) and the Anatomix generator (``xds-toolkit[synth]``) use
them. The toolkit never imports them directly: it asks :func:`optional`, so ``import xds``
stays light and a missing package is one clear line instead of a traceback.
"""

from __future__ import annotations

from importlib import import_module

from xds.schemas.errors import MissingDependencyError


def optional(module: str, feature: str, extra: str = "train"):
    """Import ``module`` (for example ``torch.nn.functional``) for ``feature``.

    ``extra`` is the ``xds-toolkit[...]`` extra that installs it.

    Raises:
        MissingDependencyError: the package is not installed; the message names the extra.
    """
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the package is there but broken: keep the real traceback
        raise MissingDependencyError(
            f"{feature} needs {top}, which is not installed: pip install 'xds-toolkit[{extra}]'"
        ) from None
