"""Phi-3-mini's tokenizer as a Hugging Face directory: the real Llama-2 tokenizer.model (fetched by
`make llama2-tokenizer`) plus Phi-3's tokenizer_config.json (its added tokens 32000-32010 with
their strip flags, legacy=False, no BOS/EOS added, the chat template), for transformers to load."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from phi3_jax.data.sentencepiece_tokenizer import PHI3_SPECIAL_TOKENS

LLAMA2_TOKENIZER = os.path.expanduser("~/.cache/phi3_jax/llama2-tokenizer.model")

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json "chat_template" (May 2024 on).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# The same with the assistant's content and <|end|> tagged, for return_assistant_tokens_mask.
PHI3_CHAT_TEMPLATE_GENERATION = PHI3_CHAT_TEMPLATE.replace(
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}",
    "{{'<|assistant|>\n'}}{% generation %}{{message['content'] + '<|end|>'}}"
    "{% endgeneration %}{{'\n'}}",
)


def _added_token(content: str, rstrip: bool, special: bool = True) -> dict:
    return dict(
        content=content,
        lstrip=False,
        normalized=False,
        rstrip=rstrip,
        single_word=False,
        special=special,
    )


def write_phi3_tokenizer_dir(path: str, model: str = LLAMA2_TOKENIZER) -> str:
    """Write Phi-3-mini's tokenizer files into `path` (as in its Hugging Face repo); return it.
    `model`: its tokenizer.model (any 32000-piece one, e.g. the bundled data/tokenizer.model)."""
    if not os.path.isfile(model):
        pytest.fail(f"{model}: missing; run `make llama2-tokenizer`")
    os.makedirs(path, exist_ok=True)
    shutil.copy(model, os.path.join(path, "tokenizer.model"))
    added = {
        "0": _added_token("<unk>", rstrip=False),
        "1": _added_token("<s>", rstrip=False),
        "2": _added_token("</s>", rstrip=True, special=False),
    }
    for k, token in enumerate(PHI3_SPECIAL_TOKENS):
        # Phi-3's added tokens strip the whitespace after them, all but <|endoftext|>.
        added[str(32000 + k)] = _added_token(token, rstrip=token != "<|endoftext|>")
    config = dict(
        add_bos_token=False,
        add_eos_token=False,
        added_tokens_decoder=added,
        bos_token="<s>",
        chat_template=PHI3_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        eos_token="<|endoftext|>",
        legacy=False,
        model_max_length=4096,
        pad_token="<|endoftext|>",
        padding_side="left",
        sp_model_kwargs={},
        tokenizer_class="LlamaTokenizer",
        unk_token="<unk>",
        use_default_system_prompt=False,
    )
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path
