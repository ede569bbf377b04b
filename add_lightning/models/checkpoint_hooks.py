"""What ``AudioClassifier`` does to its checkpoints: on saving, the backbone is made rebuildable
without the pretrained weights it started from; on loading, the classes are checked."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from add_lightning.models.backbones.base import Backbone

__all__ = ["BACKBONE_SOURCE_KEY", "check_classes", "make_self_contained"]

#: Checkpoint key of the backbone's hyperparameters as given for training (e.g. its pretrained
#: weights), kept beside the self-contained ones that replace them.
BACKBONE_SOURCE_KEY = "add_lightning_backbone_source"

_HYPER_PARAMETERS = "hyper_parameters"  # LightningModule.CHECKPOINT_HYPER_PARAMS_KEY


def make_self_contained(
    checkpoint: dict[str, Any], backbone: Backbone, source: Mapping[str, Any] | None
) -> None:
    """Stores the backbone's architecture in ``checkpoint`` in place of the arguments given.

    A backbone whose :meth:`~Backbone.checkpoint_init_args` are not None (``ASTBackbone``,
    ``BEATsBackbone``, ``HFAudioEncoder``) gets its stored hyperparameters replaced by those
    arguments: its architecture (a speech encoder's whole transformers config and feature
    extractor settings), with the pretrained source (hub id, folder, file) set to None.
    Whatever rebuilds the model from the checkpoint (``load_from_checkpoint``,
    ``add-lightning test --ckpt_path``) then builds it with random weights, which the
    ``state_dict`` overwrites, instead of downloading or reading the weights the training
    started from. The hyperparameters as given are kept under :data:`BACKBONE_SOURCE_KEY`.

    Args:
        checkpoint: Lightning's checkpoint dict, changed in place (its hyperparameters are
            replaced by a copy, never changed: they may be the module's own ``hparams``).
        backbone: The model's backbone.
        source: The backbone hyperparameters as given for training when the model was itself
            resumed from a self-contained checkpoint (its :data:`BACKBONE_SOURCE_KEY`), else
            None.
    """
    hparams = checkpoint.get(_HYPER_PARAMETERS)
    given = hparams.get("backbone") if isinstance(hparams, Mapping) else None
    if not isinstance(given, Mapping) or "init_args" not in given:
        return  # built in Python: no backbone hyperparameters
    rebuild = backbone.checkpoint_init_args()
    if rebuild is None:
        return  # a backbone of the user's, rebuilt from the arguments given
    init_args = {**given["init_args"], **rebuild}
    if init_args != given["init_args"]:
        source = source or given
        checkpoint[_HYPER_PARAMETERS] = {**hparams, "backbone": {**given, "init_args": init_args}}
    if source is not None:
        checkpoint[BACKBONE_SOURCE_KEY] = copy.deepcopy(dict(source))


def check_classes(
    checkpoint: Mapping[str, Any], num_classes: int, class_names: list[str] | None
) -> None:
    """Refuses a checkpoint whose head has another number of classes than ``num_classes``;
    warns when its class names differ from ``class_names``."""
    head = checkpoint.get("state_dict", {}).get("head.weight")
    if head is not None and head.shape[0] != num_classes:
        raise ValueError(
            f"The checkpoint has a head for {head.shape[0]} classes but this model (and the "
            f"data it is linked to) has num_classes={num_classes}; use a checkpoint "
            "trained on the same classes, or the data module the checkpoint was trained with"
        )
    saved_names = checkpoint.get(_HYPER_PARAMETERS, {}).get("class_names")
    if saved_names is not None and class_names is not None and list(saved_names) != class_names:
        rank_zero_warn(
            "The checkpoint's class_names differ from this model's: "
            f"{list(saved_names)[:5]}... vs {class_names[:5]}...; class ids may not "
            "mean the same classes"
        )
