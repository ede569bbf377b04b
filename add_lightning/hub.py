"""What to tell a user whose download from the Hugging Face hub failed."""

from __future__ import annotations

__all__ = ["offline_hint"]


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
