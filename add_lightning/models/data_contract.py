"""What the commands need of a data module beyond Lightning's: :class:`DataSplits`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["DataSplits"]


@runtime_checkable
class DataSplits(Protocol):
    """A data module whose splits may hold other classes than the ones trained on.

    ``AudioDataModule`` and ``WaveformDataModule`` implement it. What uses it checks
    ``isinstance(data, DataSplits)``; any other ``LightningDataModule`` is taken to hold the
    trained classes in every split (its predictions named by the model's class names) and to
    validate on clips other than the test clips.

    Attributes:
        predict_split: The split ``predict_dataloader`` serves.
    """

    predict_split: str

    @property
    def unseen_class_names(self) -> list[str] | None:
        """The classes held out of training (the test split's, with ids in this order); None
        when every class is trained on."""

    @property
    def validation_is_test(self) -> bool:
        """Whether the validation clips are the test clips (then no checkpoint is chosen by a
        validation metric)."""

    def split_class_names(self, split: str) -> list[str]:
        """The class names that the targets of ``split`` index."""
