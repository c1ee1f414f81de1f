"""Where the model under evaluation comes from: a training run's checkpoint or an HF directory."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from jax.sharding import Mesh

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.errors import BadInputError
from phi3_jax.model import hf
from phi3_jax.train import restore as restore_lib
from phi3_jax.train import state as state_lib


class SourceError(BadInputError):
    """The model source is missing or incomplete; the message names the path or flag."""


@dataclasses.dataclass
class Loaded:
    """A model ready to score: its config, params, tokenizer, BOS habit and where it came from;
    `mesh` is where the params are (None: one device)."""

    config: ml_collections.ConfigDict
    params: dict
    tokenizer: object
    add_bos: bool
    source: dict
    mesh: Mesh | None = None


def load(
    workdir: str | None = None,
    hf_dir: str | None = None,
    tokenizer: str | None = None,
    step: int | None = None,
    tokenizer_kind: str = "hf",
    mesh: Mesh | None = None,
) -> Loaded:
    """A run's checkpoint (latest, or `step`) with the run's tokenizer, or a Hugging Face Phi-3
    directory with its tokenizer (`tokenizer` of `tokenizer_kind`, by default its own files).

    With `mesh` (over every process's devices) the params are placed on it by the model's
    sharding rules, a run's read there in place; the config's mesh is then that mesh's axes."""
    if bool(workdir) == bool(hf_dir):
        raise SourceError("give exactly one of workdir and hf_dir")
    if workdir:
        config, params, step = restore_lib.restore_params_of_run(workdir, step, mesh)
        source = {"workdir": paths.resolve(workdir), "step": int(step)}
        add_bos = bool(config.data.add_bos)
        return Loaded(config, params, load_tokenizer(config), add_bos, source, mesh)
    # The model's files (and its own tokenizer's) are read from local disk: a bucket's copied.
    with paths.local_directory(hf_dir) as local:
        config, params = hf.load_hf(local)
        reading = dict(kind=tokenizer_kind, path=tokenizer or local)
        loaded_tokenizer = load_tokenizer(config_lib.replace(config, data=dict(tokenizer=reading)))
    named = dict(kind=tokenizer_kind, path=tokenizer or hf_dir)
    config = config_lib.replace(config, data=dict(tokenizer=named))
    if mesh is not None:
        config = config_lib.replace(config, mesh=restore_lib.ONE_DEVICE_MESH | dict(mesh.shape))
        params = jax.device_put(params, state_lib.param_shardings(config, mesh))
    return Loaded(config, params, loaded_tokenizer, False, {"hf_dir": hf_dir}, mesh)
