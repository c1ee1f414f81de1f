"""The model side of the server: requests queued, batched and decoded on one KV cache.

A request becomes a `Job` of n rows (its n choices). A worker task takes the first pending job,
waits `wait_s` for others to queue, and runs every pending job that shares its sampling setting
in one `generate_batch` call (at most `max_rows` rows); jobs that arrive meanwhile form the next
batch. Temperature 0 rows are batched with any other greedy rows: greedy decoding of a row does
not depend on the rest of the batch. A sampled job with a `seed` runs alone, so its rows' keys
(generate_batch folds the row index into the seed) and hence its text are reproducible; sampled
jobs without a seed share batches and draw fresh keys. The model runs on one worker thread, so
the event loop stays free for other clients while a batch decodes. Given a mesh
(`serving_mesh`), a batch's rows split over its data axis and the params and cache over its
tensor axis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phi3_jax import config as config_lib
from phi3_jax import generate as generate_lib
from phi3_jax import model, sharding
from phi3_jax.eval.scorer import padded_length
from phi3_jax.eval.source import Loaded

# OpenAI's limit on completions' `logprobs` (alternatives per position).
MAX_TOP_LOGPROBS = 5


@dataclasses.dataclass
class Job:
    """One request's generation: n rows of the same prompt and sampling."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop_ids: frozenset[int] = frozenset()
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    def batch_key(self, serial: int) -> tuple:
        """Jobs with equal keys may share a batch (see the module docstring)."""
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", serial)
        return ("sampled", self.temperature, self.top_p)


def serving_mesh(
    config: ml_collections.ConfigDict, data: int, tensor: int
) -> tuple[ml_collections.FrozenConfigDict, jax.sharding.Mesh | None]:
    """(the config with a (data, tensor) mesh section, that mesh over the first data * tensor
    devices); for one device the config as it is and no mesh. `config` is left as it is."""
    if data * tensor == 1:
        return config_lib.freeze(config), None
    devices = jax.devices()
    if data * tensor > len(devices):
        raise ValueError(f"mesh data={data} x tensor={tensor}: only {len(devices)} devices")
    mesh = dict(data=data, fsdp=1, sequence=1, tensor=tensor, dcn_data=1, dcn_fsdp=1)
    config = config_lib.replace(config, mesh=mesh)
    return config, sharding.make_mesh(config.mesh, devices[: data * tensor])


@dataclasses.dataclass
class Counters:
    """What the engine did: batches run, rows decoded, the largest batch."""

    batches: int = 0
    rows: int = 0
    largest_batch: int = 0


def _logprobs(config, params, tokens, targets, k):
    """(log p of each target [1, L], top-k log-probs and ids [1, L, k]) of tokens [1, L]."""
    logp = jax.nn.log_softmax(model.logits(config, params, tokens), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    top, ids = jax.lax.top_k(logp, k)
    return picked, top, ids


class Engine:
    """Runs jobs for the HTTP layer: `await engine.generate(job)` and `await engine.score(ids, k)`."""

    def __init__(self, loaded: Loaded, *, max_rows: int = 32, wait_s: float = 0.01, mesh=None):
        self.config, self.params, self.tokenizer = loaded.config, loaded.params, loaded.tokenizer
        self.add_bos = loaded.add_bos
        self.context = int(self.config.model.max_position_embeddings)
        self.max_rows, self.wait_s, self.mesh = max_rows, wait_s, mesh
        self.decodable = np.asarray(self.tokenizer.decodable_mask(self.config.model.vocab_size))
        self.counters = Counters()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="phi3-serve")
        self._serial = itertools.count()
        self._fresh_seeds = np.random.default_rng()
        self._logprobs = jax.jit(functools.partial(_logprobs, self.config), static_argnums=3)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=True)

    async def generate(self, job: Job) -> list[list[int]]:
        """The new ids of each of the job's n rows (ending with the stop id that ended a row)."""
        if job.n > self.max_rows:
            raise ValueError(f"n={job.n}: at most {self.max_rows} choices per request")
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((job, next(self._serial), done))
        return await done

    async def score(self, ids: Sequence[int], k: int) -> tuple[list[float], list[dict[int, float]]]:
        """Per id after the first: its log-probability given the ids before it, and the top k
        alternatives there ({id: log-prob})."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._score, list(ids), k)

    def _score(self, ids: list[int], k: int):
        length = padded_length(len(ids), max(self.context, len(ids)))
        tokens = np.zeros((1, length), np.int32)
        tokens[0, : len(ids)] = ids
        targets = np.zeros((1, length), np.int32)
        targets[0, : len(ids) - 1] = ids[1:]
        picked, top, top_ids = jax.device_get(
            self._logprobs(self.params, tokens, targets, max(k, 1))
        )
        n = len(ids) - 1
        alternatives = [
            {int(i): float(v) for i, v in zip(top_ids[0, t, :k], top[0, t, :k], strict=True)}
            for t in range(n)
        ]
        return [float(v) for v in picked[0, :n]], alternatives

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            await asyncio.sleep(self.wait_s)
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            while pending:
                batch, pending = self._take_batch(pending)
                try:
                    rows = await loop.run_in_executor(self._pool, self._decode, batch)
                except Exception as error:  # noqa: BLE001 - the requests get the error, not the loop
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                    continue
                for (_, _, done), out in zip(batch, rows, strict=True):
                    if not done.done():  # a client that went away cancelled its future
                        done.set_result(out)

    def _take_batch(self, pending: list) -> tuple[list, list]:
        """The first pending job with the pending jobs that may join it (up to max_rows rows),
        and the rest in arrival order."""
        key = pending[0][0].batch_key(pending[0][1])
        batch, rest, rows = [], [], 0
        for item in pending:
            job, serial, _ = item
            if job.batch_key(serial) == key and rows + job.n <= self.max_rows:
                batch.append(item)
                rows += job.n
            else:
                rest.append(item)
        return batch, rest

    def _decode(self, batch: list) -> list[list[list[int]]]:
        jobs = [job for job, _, _ in batch]
        first = jobs[0]
        seed = first.seed if first.seed is not None else int(self._fresh_seeds.integers(2**31))
        prompts, stops, sequences = [], [], []
        for job in jobs:
            prompts += [job.prompt] * job.n
            stops += [job.stop_ids] * job.n
            sequences += [[list(s) for s in job.stop_sequences]] * job.n
        out = generate_lib.generate_batch(
            self.config,
            self.params,
            prompts,
            max_new_tokens=max(job.max_tokens for job in jobs),
            temperature=first.temperature,
            top_p=first.top_p,
            rng=jax.random.key(seed),
            stop_ids=stops,
            stop_sequences=sequences,
            mesh=self.mesh,
            decodable=self.decodable,
        )
        self.counters.batches += 1
        self.counters.rows += len(prompts)
        self.counters.largest_batch = max(self.counters.largest_batch, len(prompts))
        results, row = [], 0
        for job in jobs:
            results.append([ids[: job.max_tokens] for ids in out[row : row + job.n]])
            row += job.n
        return results
