"""Where the model under evaluation comes from: a training run's checkpoint or an HF directory."""

from __future__ import annotations

import dataclasses

import ml_collections

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.errors import BadInputError
from phi3_jax.model import hf
from phi3_jax.train import restore as restore_lib


class SourceError(BadInputError):
    """The model source is missing or incomplete; the message names the path or flag."""


@dataclasses.dataclass
class Loaded:
    """A model ready to score: its config, params, tokenizer, BOS habit and where it came from."""

    config: ml_collections.ConfigDict
    params: dict
    tokenizer: object
    add_bos: bool
    source: dict


def load(
    workdir: str | None = None,
    hf_dir: str | None = None,
    tokenizer: str | None = None,
    step: int | None = None,
    tokenizer_kind: str = "hf",
) -> Loaded:
    """A run's checkpoint (latest, or `step`) with the run's tokenizer, or a Hugging Face Phi-3
    directory with its tokenizer (`tokenizer` of `tokenizer_kind`, by default its own files)."""
    if bool(workdir) == bool(hf_dir):
        raise SourceError("give exactly one of workdir and hf_dir")
    if workdir:
        config, params, step = restore_lib.restore_params_of_run(workdir, step)
        source = {"workdir": paths.resolve(workdir), "step": int(step)}
        return Loaded(config, params, load_tokenizer(config), bool(config.data.add_bos), source)
    # The model's files (and its own tokenizer's) are read from local disk: a bucket's copied.
    with paths.local_directory(hf_dir) as local:
        config, params = hf.load_hf(local)
        reading = dict(kind=tokenizer_kind, path=tokenizer or local)
        loaded_tokenizer = load_tokenizer(config_lib.replace(config, data=dict(tokenizer=reading)))
    named = dict(kind=tokenizer_kind, path=tokenizer or hf_dir)
    config = config_lib.replace(config, data=dict(tokenizer=named))
    return Loaded(config, params, loaded_tokenizer, False, {"hf_dir": hf_dir})
