"""negrl's Hydra launcher plugins, `hydra/launcher=stacked` and `hydra/launcher=local` (conf/hydra/launcher/):
Hydra takes launchers from the `hydra_plugins` namespace only; the launchers themselves are in negrl.launcher."""

from negrl.launcher import LocalLauncher as _Local
from negrl.launcher import StackedLauncher as _Stacked


class StackedLauncher(_Stacked):
    """negrl.launcher.StackedLauncher, where Hydra looks for launchers."""


class LocalLauncher(_Local):
    """negrl.launcher.LocalLauncher, where Hydra looks for launchers."""


__all__ = ["LocalLauncher", "StackedLauncher"]
