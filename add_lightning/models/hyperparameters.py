"""Which of ``AudioClassifier``'s arguments are saved as hyperparameters, and when."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["MODULE_ARGUMENTS", "hyperparameters_from_config", "unsaved_arguments"]

#: The arguments that are live objects when the model is built in Python.
MODULE_ARGUMENTS = ("backbone", "loss", "optimizer", "scheduler")

_FROM_CONFIG: ContextVar[bool] = ContextVar(
    "add_lightning_hyperparameters_from_config", default=False
)


@contextlib.contextmanager
def hyperparameters_from_config() -> Iterator[None]:
    """Within it, an :class:`~add_lightning.models.AudioClassifier` built saves ``backbone``,
    ``loss``, ``optimizer`` and ``scheduler`` as hyperparameters too.

    For a model built from a parsed config (:class:`~add_lightning.lightning_cli.AddLightningCLI`
    wraps its instantiation in it): LightningCLI then gives ``save_hyperparameters`` the config
    (``class_path``/``init_args`` entries), which ``load_from_checkpoint`` rebuilds the modules
    from. Outside it those four arguments are the live objects given in Python, which are not
    hyperparameters, and are left out.
    """
    token = _FROM_CONFIG.set(True)
    try:
        yield
    finally:
        _FROM_CONFIG.reset(token)


def unsaved_arguments() -> list[str]:
    """The arguments ``save_hyperparameters`` leaves out here: :data:`MODULE_ARGUMENTS`, except
    within :func:`hyperparameters_from_config`."""
    return [] if _FROM_CONFIG.get() else list(MODULE_ARGUMENTS)
