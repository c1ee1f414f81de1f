"""The chat format against transformers: Phi-3's chat template on Phi-3-mini's tokenizer (the
real Llama-2 tokenizer.model plus Phi-3's added tokens) gives the same ids and the same assistant
mask as `phi3_jax.posttrain.chat`."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from phi3_tokenizer_fixtures import PHI3_CHAT_TEMPLATE_GENERATION, write_phi3_tokenizer_dir

from phi3_jax.data import tokenizer
from phi3_jax.posttrain import chat

CONVERSATIONS = {
    "system_and_turns": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ],
    "code_and_whitespace": [
        {"role": "user", "content": "Fix:\n\n```python\ndef f(x):\n\treturn  x*2\n```"},
        {
            "role": "assistant",
            "content": "Here:\n```python\ndef f(x):\n    return x * 2   \n\n\n    # done\n```\n",
        },
    ],
    "unicode": [
        {"role": "user", "content": "Übersetze: «naïve café» — 日本語 and emoji 🙂?"},
        {"role": "assistant", "content": "naïf café — 日本語 🙂 ∑x² ≤ ∞"},
    ],
    "leading_and_trailing_spaces": [
        {"role": "user", "content": "  indented question  "},
        {"role": "assistant", "content": "   indented answer\n"},
        {"role": "user", "content": "\nnewline first"},
        {"role": "assistant", "content": " one space"},
    ],
    "ends_with_user": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi. How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(transformers' tokenizer, ours) of the same Phi-3 tokenizer directory."""
    path = write_phi3_tokenizer_dir(str(tmp_path_factory.mktemp("phi3_tokenizer")))
    return transformers.AutoTokenizer.from_pretrained(path), tokenizer.load("hf", path)


def _template_ids(tokenizer, messages, **kwargs) -> dict:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return {k: list(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_ids_equal_transformers_chat_template(tokenizers, name):
    reference, ours = tokenizers
    messages = CONVERSATIONS[name]
    expected = _template_ids(reference, messages)["input_ids"]
    ids, _ = chat.encode_conversation(ours, chat.check_messages(messages))
    assert ids.tolist() == expected
    assert chat.render(messages) == reference.apply_chat_template(messages, tokenize=False)
    prompt = _template_ids(reference, messages, add_generation_prompt=True)["input_ids"]
    assert chat.encode_prompt(ours, messages) == prompt


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_trained_mask_equals_transformers_assistant_mask(tokenizers, name):
    reference, ours = tokenizers
    messages = CONVERSATIONS[name]
    out = _template_ids(
        reference,
        messages,
        chat_template=PHI3_CHAT_TEMPLATE_GENERATION,
        return_assistant_tokens_mask=True,
    )
    ids, trained = chat.encode_conversation(ours, messages)
    assert ids.tolist() == out["input_ids"]
    assert trained.astype(int).tolist() == out["assistant_masks"]
    assert trained.sum() > 0


def test_header_and_eos_switches(tokenizers):
    _, ours = tokenizers
    messages = CONVERSATIONS["system_and_turns"]
    ids, base = chat.encode_conversation(ours, messages)
    _, more = chat.encode_conversation(
        ours, messages, chat.ChatOptions(train_header=True, train_eos=True)
    )
    assistant = ours.special_ids["<|assistant|>"]
    # Each header (<|assistant|>; its "\n" is stripped by the token) and the final <|endoftext|>.
    added = np.flatnonzero(more & ~base)
    assert ids[added].tolist() == [assistant, assistant, ours.special_ids["<|endoftext|>"]]
    assert not (base & ~more).any()


def test_stop_ids(tokenizers):
    _, ours = tokenizers
    assert chat.stop_ids(ours) == [32007, 32000, 32001]


@pytest.mark.parametrize(
    "messages, error",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ([{"role": "assistant", "content": "hi"}], "message 0: role 'assistant' out of order"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "message 1: role 'user' out of order",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "message 1: role 'system' out of order",
        ),
        ([{"role": "tool", "content": "x"}], "message 0: unknown role 'tool'"),
        ([{"role": "user", "content": ""}], "message 0 (user): empty"),
        ([{"role": "user", "content": 3}], "message 0 (user): empty or non-string"),
        ([{"role": "user"}], "message 0: not a {'role', 'content'} dict"),
    ],
)
def test_bad_conversations_name_what_is_wrong(messages, error):
    with pytest.raises(chat.ConversationError, match=__import__("re").escape(error)):
        chat.check_messages(messages)
