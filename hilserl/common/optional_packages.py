"""Packages only some runs need, imported when asked for, with a one-line error naming what
asked for them when they are missing."""
from __future__ import annotations


class OptionalPackageMissing(RuntimeError):
    """An option needs a package that is not installed; the message says what to install."""


def require_wandb(asked_by: str = '--wandb'):
    """The wandb module (Weights & Biases), or OptionalPackageMissing naming `asked_by`."""
    try:
        import wandb
    except ImportError:
        raise OptionalPackageMissing(f'{asked_by} needs the wandb package: pip install wandb '
                                     '(offline runs need no account)') from None
    return wandb
