"""Supervised fine-tuning data: {"messages": [...]} records → chat-format ids with trained tokens.

Each record's conversation is checked and tokenized in Phi-3's chat format (`chat`); the document
carries `ids` and `trained` (the assistant's tokens), so the pipeline packs conversations with
segment ids like any document and the loss mask keeps only trained targets. The train step is
pretraining's: cross-entropy summed over the trained targets and divided by their count in the
whole global batch, so microbatching changes nothing.

A record that is not a conversation (no assistant message, roles out of order, an unknown role, an
empty content) is a bad record: an error naming file and record, or with data.on_bad_record=skip
dropped and counted (`bad_records`). A conversation longer than a row (train.seq_len + 1 ids) is
dropped (`too_long_dropped`) or, with sft.too_long=truncate, cut to the row
(`too_long_truncated`; dropped if no trained token is left).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from phi3_jax.data.formats import Bad
from phi3_jax.data.pipeline import Records
from phi3_jax.data.sources import Counted
from phi3_jax.posttrain import chat


@dataclasses.dataclass(frozen=True)
class ConversationIds:
    """A record's conversation → {"ids", "trained"}, a `Bad` or a `Counted` (too long)."""

    tokenizer: chat.ChatTokenizer
    # The record field holding the messages.
    field: str
    # Ids per row: a row holds seq_len next-token pairs.
    max_ids: int
    # "drop" or "truncate" (config.TOO_LONG).
    too_long: str
    options: chat.ChatOptions = chat.ChatOptions()

    def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray] | Bad | Counted:
        try:
            messages = chat.check_messages(record[self.field])
            ids, trained = chat.encode_conversation(self.tokenizer, messages, self.options)
        except chat.ConversationError as error:
            return Bad(f"{self.field}: {error}")
        document = {"ids": ids, "trained": trained}
        if len(ids) <= self.max_ids:
            return document
        if self.too_long == "drop":
            return Counted("too_long_dropped")
        cut = {key: value[: self.max_ids] for key, value in document.items()}
        if not cut["trained"][1:].any():
            return Counted("too_long_dropped")
        return Counted("too_long_truncated", cut)


def records(config: ml_collections.ConfigDict, tokenizer: chat.ChatTokenizer) -> Records:
    """How an SFT run's sources are read: the messages field, through `ConversationIds`."""
    sft = config.sft
    to_ids = ConversationIds(
        tokenizer,
        field=sft.messages_field,
        max_ids=config.train.seq_len + 1,
        too_long=sft.too_long,
        options=chat.ChatOptions(train_header=sft.train_header, train_eos=sft.train_eos),
    )
    return Records(to_ids, fields=(sft.messages_field,), trained=True)
