"""What to tell a user whose download from the Hugging Face hub failed."""

from __future__ import annotations

import os

__all__ = ["checked_pretrained", "offline_hint"]


def offline_hint() -> str:
    """The start of the advice after a failed hub download: why it failed, and "or ..." next.

    With ``HF_HUB_OFFLINE`` set the hub is never asked, which a user may have forgotten;
    otherwise the machine may have no internet access. The caller goes on with how to save the
    files elsewhere and pass a local directory.
    """
    import huggingface_hub

    if huggingface_hub.constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set, so the hub cannot be reached: unset it, or "
    return "If this machine has no internet access, "


def checked_pretrained(pretrained: str, writer: str = "save_pretrained") -> str:
    """``pretrained`` with ``~`` expanded; a path that is not a directory is an error.

    Hub ids are ``owner/name``; anything that looks like a path (starts with ``/`` or ``.``, or
    has more than one ``/``) must be an existing directory, written by ``writer``.

    Raises:
        FileNotFoundError: If ``pretrained`` looks like a path and is not a directory.
    """
    pretrained = os.path.expanduser(pretrained)
    looks_like_path = pretrained.startswith(("/", ".")) or pretrained.count("/") > 1
    if looks_like_path and not os.path.isdir(pretrained):
        raise FileNotFoundError(
            "Expected argument `pretrained` to be a Hugging Face hub id or a directory written by "
            f"`{writer}`, but the directory {pretrained!r} does not exist"
        )
    return pretrained
