"""Decontamination: training documents that share a 13-gram with an evaluation set are removed.

The evaluation sets are phi3_jax.eval's tasks (their evaluation splits, lm-eval prompt style):
per document its question (the query, or WinoGrande's gold-filled context) and its answer (the
gold choice, continuation or target). datatrove's n-gram decontamination does the matching: the
index holds the hashes of every 13-gram of the answer, of the question, and of those spanning
question and answer, after datatrove's text simplification (lowercase, no punctuation, numbers
normalized) and English word tokenization; `NGramsDecontFilter` drops a training document with
any of those 13-grams and counts it under the task it matched (`contaminated_<task>`).

datatrove's own indexer reads its tasks through lighteval; `EvalSetIndexer` feeds it ours instead
and writes the same index files (`<task>.index.hashes`, uint64 hashes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.typeshelper import Languages
from datatrove.utils.word_tokenizers import load_word_tokenizer

from phi3_jax.eval import tasks as tasks_lib

N_GRAMS = 13
# Questions alone count too: a benchmark question copied without its answer is contamination.
CONFIG = NGramsDecontConfig(n_grams=N_GRAMS, find_query_ngrams=True, find_overlap_ngrams=True)
CONTAMINATED = "contaminated_"


def question_answer_pairs(task: tasks_lib.Task) -> Iterator[tuple[str, str]]:
    """(question, answer) of each document of the task's evaluation split."""
    for raw in task.load():
        doc = task.render(raw, "lm_eval")
        if task.kind == "multiple_choice":
            yield doc.query, doc.choices[doc.gold]
        elif task.kind == "partial":
            yield doc.contexts[doc.gold], doc.continuation
        else:
            for target in doc.targets or (doc.shot_answer,):
                yield doc.query, target


class EvalSetIndexer(PipelineStep):
    """Writes `folder/<task>.index.hashes` for each named task (one task of the pipeline)."""

    type = "🦠 - DECONT"
    name = "💥 N-grams index of eval sets"
    # datatrove's indexer hashes a (question, answer) pair; it needs these three attributes.
    compute_hashes = NGramsDecontIndexer.compute_hashes

    def __init__(self, folder: str, task_names: Sequence[str]):
        super().__init__()
        from datatrove.io import get_datafolder

        self.folder = get_datafolder(folder)
        self.task_names = list(task_names)
        tasks_lib.resolve(self.task_names)  # an unknown name fails before anything runs
        self.config = CONFIG
        self.tokenizer = load_word_tokenizer(Languages.english)
        self.hash_func = create_hash_func(self.config.hash_config)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError(f"{self.name}: runs as a single task, not {world_size}")
        for task in tasks_lib.resolve(self.task_names):
            hashes: set[int] = set()
            for question, answer in question_answer_pairs(task):
                hashes.update(self.compute_hashes(answer, question))
                self.stat_update(f"pairs_{task.name}")
            self.stat_update(f"hashes_{task.name}", value=len(hashes))
            array = np.array(sorted(hashes), dtype=self.config.hash_config.np_descr)
            with self.folder.open(f"{task.name}.index.hashes", mode="wb") as f:
                f.write(array.tobytes())
        yield from data or ()


def decontamination_filter(index_folder: str) -> NGramsDecontFilter:
    """datatrove's filter over the index `EvalSetIndexer` wrote."""
    return NGramsDecontFilter(index_folder, config=CONFIG)


def removed_per_task(counts: dict) -> dict[str, int]:
    """{task: documents removed} from the filter step's counters."""
    return {
        key.removeprefix(CONTAMINATED): value
        for key, value in counts.items()
        if key.startswith(CONTAMINATED)
    }
