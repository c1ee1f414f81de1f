"""`python -m phi3_jax.serve --workdir=RUN | --hf_dir=DIR [--host=127.0.0.1] [--port=8000]`:
serve a run's latest checkpoint (or an HF directory) with an OpenAI-compatible API."""

from __future__ import annotations

import dataclasses

from absl import app, flags, logging
from aiohttp import web

from phi3_jax import paths
from phi3_jax.config import TOKENIZER_KINDS
from phi3_jax.eval import source
from phi3_jax.serve.api import make_app
from phi3_jax.serve.engine import Engine, serving_mesh

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A training run's workdir (its latest checkpoint).")
    flags.DEFINE_integer("step", None, "With --workdir: this step instead of the latest.")
    flags.DEFINE_string("hf_dir", None, "A Hugging Face Phi-3 directory instead of a run.")
    flags.DEFINE_string("tokenizer", None, "With --hf_dir: its tokenizer (default: the dir).")
    flags.DEFINE_enum("tokenizer_kind", "hf", TOKENIZER_KINDS, "The kind of --tokenizer.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
    flags.DEFINE_integer("port", 8000, "Port to listen on.")
    flags.DEFINE_string("model_name", None, "The served model id (default: the dir's name).")
    flags.DEFINE_integer("max_rows", 32, "Rows (choices) decoded together at most.")
    flags.DEFINE_float("batch_wait_s", 0.01, "How long a batch waits for more requests.")
    flags.DEFINE_integer("mesh_data", 1, "Devices a batch's rows split over.")
    flags.DEFINE_integer("mesh_tensor", 1, "Devices the params and cache split over.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        loaded = source.load(
            FLAGS.workdir, FLAGS.hf_dir, FLAGS.tokenizer, FLAGS.step, FLAGS.tokenizer_kind
        )
    except (source.SourceError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    name = FLAGS.model_name or paths.path(FLAGS.workdir or FLAGS.hf_dir).name
    try:
        config, mesh = serving_mesh(loaded.config, FLAGS.mesh_data, FLAGS.mesh_tensor)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    loaded = dataclasses.replace(loaded, config=config)
    engine = Engine(loaded, max_rows=FLAGS.max_rows, wait_s=FLAGS.batch_wait_s, mesh=mesh)
    logging.info("serving %s on http://%s:%d/v1", name, FLAGS.host, FLAGS.port)
    web.run_app(make_app(engine, name), host=FLAGS.host, port=FLAGS.port)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
