"""negrl's Hydra launcher plugin, `hydra/launcher=stacked` (conf/hydra/launcher/stacked.yaml): Hydra takes launchers
from the `hydra_plugins` namespace only; the launcher itself is negrl.launcher."""

from negrl.launcher import StackedLauncher as _Stacked


class StackedLauncher(_Stacked):
    """negrl.launcher.StackedLauncher, where Hydra looks for launchers."""


__all__ = ["StackedLauncher"]
