"""negrl's Hydra launcher plugin (Hydra takes launchers from the `hydra_plugins` namespace only): `hydra/launcher=stacked`
(conf/hydra/launcher/stacked.yaml), implemented in negrl.launcher."""

from negrl.launcher import StackedLauncher as _Stacked


class StackedLauncher(_Stacked):
    """negrl.launcher.StackedLauncher, where Hydra looks for launchers."""


__all__ = ["StackedLauncher"]
