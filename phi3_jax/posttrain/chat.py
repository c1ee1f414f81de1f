"""The Phi-3 chat format: conversations checked, rendered and tokenized with their trained tokens.

Phi-3-mini's chat template (Hugging Face `tokenizer_config.json` since May 2024, PHI3.md §5.4):

    <|system|>\\n{content}<|end|>\\n<|user|>\\n{content}<|end|>\\n<|assistant|>\\n{content}<|end|>\\n
    ... then <|endoftext|> (a finished conversation) or the generation prompt <|assistant|>\\n

Generation stops on `<|end|>`, `<|endoftext|>` and `<|assistant|>` (the released generation
config's eos ids). Conversations are tokenized one message at a time: each message's text starts
with a special token, and a tokenizer that splits on special tokens first (as Hugging Face's do)
gives the same ids for the pieces as for the whole text, so each message's ids are known without
character offsets.

Trained tokens (SFT's loss mask): each assistant message's content and its `<|end|>`, as in
transformers' `return_assistant_tokens_mask` with the content and `<|end|>` inside
`{% generation %}`; `train_header` adds the `<|assistant|>\\n` header, `train_eos` the final
`<|endoftext|>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from phi3_jax.errors import BadInputError

ROLES = ("system", "user", "assistant")
END = "<|end|>"
EOS = "<|endoftext|>"
GENERATION_PROMPT = "<|assistant|>\n"
# The released generation config's eos ids: <|endoftext|>, <|assistant|>, <|end|>.
STOP_TOKENS = (END, EOS, "<|assistant|>")

Message = dict[str, str]


class ConversationError(BadInputError):
    """A conversation that cannot be rendered or trained on; the message says why."""


class ChatTokenizer(Protocol):
    """What the chat format needs of `phi3_jax.data.tokenizer`'s tokenizers."""

    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """Which tokens of a conversation are trained, beyond the assistant content and its <|end|>."""

    # The `<|assistant|>\n` header of each assistant message.
    train_header: bool = False
    # The <|endoftext|> that ends the conversation.
    train_eos: bool = False


def check_messages(messages: Any, *, need_assistant: bool = True) -> list[Message]:
    """The messages if they form a Phi-3 conversation, else a ConversationError saying why.

    A conversation is a list of {"role", "content"} dicts: an optional system message first, then
    user and assistant messages taking turns, starting with the user; every content a non-empty
    string. `need_assistant`: at least one assistant message (something to train on).
    """
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"messages must be a non-empty list, not {_short(messages)}")
    expected = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ConversationError(
                f"message {i}: not a {{'role', 'content'}} dict: {_short(message)}"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ConversationError(f"message {i}: unknown role {role!r} (expected one of {ROLES})")
        if not isinstance(content, str) or not content:
            raise ConversationError(f"message {i} ({role}): empty or non-string content")
        if role == "system" and i == 0:
            continue
        if role != expected:
            raise ConversationError(
                f"message {i}: role {role!r} out of order (expected {expected!r}: an optional "
                "system message first, then user and assistant taking turns)"
            )
        expected = "assistant" if role == "user" else "user"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("no assistant message: nothing to train on")
    return messages


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def message_text(message: Message) -> str:
    """One message in the chat format."""
    return f"<|{message['role']}|>\n{message['content']}{END}\n"


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation's text, exactly as Phi-3's chat template renders it."""
    tail = GENERATION_PROMPT if add_generation_prompt else EOS
    return "".join(message_text(m) for m in messages) + tail


def _assistant_trained(
    tokenizer: ChatTokenizer, message: Message, ids: list[int], options: ChatOptions
) -> np.ndarray:
    """Which of an assistant message's ids are trained: from its content's first token to its
    (last) <|end|>."""
    header = tokenizer.encode(GENERATION_PROMPT)
    if ids[: len(header)] != header:
        raise ConversationError(
            "the tokenizer merges the <|assistant|> header with the content's first characters; "
            "the trained tokens cannot be placed"
        )
    start = len(header)
    # A header token that swallows the content's leading whitespace (Phi-3's added tokens strip
    # the whitespace after them) holds the content's first character: transformers' assistant
    # mask starts there, and so does this one.
    leading = message["content"][: len(message["content"]) - len(message["content"].lstrip())]
    if leading and tokenizer.encode(GENERATION_PROMPT + leading) == header:
        start -= 1
    end = len(ids) - 1 - ids[::-1].index(tokenizer.special_ids[END])
    trained = np.zeros(len(ids), bool)
    trained[0 if options.train_header else start : end + 1] = True
    return trained


def encode_conversation(
    tokenizer: ChatTokenizer, messages: Sequence[Message], options: ChatOptions = ChatOptions()
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, trained bool) of a finished conversation (ending with <|endoftext|>)."""
    ids: list[int] = []
    trained: list[np.ndarray] = []
    for message in messages:
        piece = tokenizer.encode(message_text(message))
        ids += piece
        if message["role"] == "assistant":
            trained.append(_assistant_trained(tokenizer, message, piece, options))
        else:
            trained.append(np.zeros(len(piece), bool))
    ids.append(tokenizer.special_ids[EOS])
    trained.append(np.asarray([options.train_eos]))
    return np.asarray(ids, np.int32), np.concatenate(trained)


def encode_prompt(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> list[int]:
    """Ids of a conversation followed by the generation prompt `<|assistant|>\\n`."""
    ids = [i for m in messages for i in tokenizer.encode(message_text(m))]
    return ids + tokenizer.encode(GENERATION_PROMPT)


def stop_ids(tokenizer: ChatTokenizer) -> list[int]:
    """Ids that end an assistant message in generation."""
    return [tokenizer.special_ids[t] for t in STOP_TOKENS]
