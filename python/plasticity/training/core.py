"""The training loop's public names, in one import (``from plasticity.training import core``).

Along the path an example takes:
- ``journal``: the fsync'd JSONL journals and the text reader (``Journal``, ``read_texts``);
- ``loss``: the context-frozen loss, the full loss it is tested against, held-out perplexity;
- ``live_apollo``: Apollo stepping the live weights under the forward lock (``LiveApollo``);
- ``trainer``: the training thread (``Trainer``).
"""

from __future__ import annotations

from .journal import NOT_TRAINED, Journal, read_texts
from .live_apollo import LiveApollo
from .loss import EVAL_ROWS, batchable, frozen_context_loss, frozen_context_loss_batch, full_loss, heldout_perplexity
from .trainer import MAX_ATTEMPTS, Trainer

__all__ = ["EVAL_ROWS", "MAX_ATTEMPTS", "NOT_TRAINED", "Journal", "LiveApollo", "Trainer", "batchable",
           "frozen_context_loss", "frozen_context_loss_batch", "full_loss", "heldout_perplexity", "read_texts"]
