"""DPO against TRL: per-pair loss, rewards and the gradient of the loss with respect to the
logits equal those of TRL's own DPO loss code (`DPOTrainer._compute_loss`, sigmoid and ipo, fp32)
on the same logits; identical completions give zero gradient; pairs through the data pipeline;
bad pairs name their record; a DPO run resumes bitwise."""

from __future__ import annotations

import collections
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from run_fixtures import assert_resume_is_bitwise_exact, small_run
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.utils import selective_log_softmax

from configs import phi3_dpo
from phi3_jax import config as config_lib
from phi3_jax import errors
from phi3_jax.data import shard_records, sources
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.posttrain import chat, dpo
from phi3_jax.train import restore as restore_lib

TOLERANCE = 1e-5
PAIRS, LENGTH, VOCAB = 4, 14, 40


def random_pairs(seed: int = 0):
    """Ids [pairs, 2, length], completion masks over the ids (TRL's `completion_mask`), policy
    logits [pairs, 2, length - 1, vocab] and reference log-probs [pairs, 2]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (PAIRS, 2, LENGTH))
    completion = np.zeros((PAIRS, 2, LENGTH), np.int64)
    for p in range(PAIRS):
        prompt = 2 + p
        ids[p, 1, :prompt] = ids[p, 0, :prompt]  # one prompt per pair
        for side in range(2):
            end = LENGTH - (p + side) % 3  # then padding
            completion[p, side, prompt:end] = 1
    logits = rng.normal(0, 2, (PAIRS, 2, LENGTH - 1, VOCAB)).astype(np.float32)
    # Near the policy's own log-probs, so that beta * delta stays where the hinge is active.
    logps = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    policy = (np.take_along_axis(logps, ids[..., 1:, None], -1)[..., 0] * completion[..., 1:]).sum(
        -1
    )
    reference = (policy + rng.normal(0, 2, (PAIRS, 2))).astype(np.float32)
    return ids, completion, logits, reference


def ours(loss: str, ids, completion, logits, reference):
    """Per pair (loss, chosen reward, rejected reward) and d(loss of pair i)/d(its logits)."""
    cfg = ml_collections.ConfigDict(dict(beta=0.1, loss=loss, label_smoothing=0.0))
    targets, mask = jnp.asarray(ids[..., 1:]), jnp.asarray(completion[..., 1:], jnp.float32)

    def terms(lg):
        logps = dpo.sequence_logps(lg, targets, mask)
        return dpo.pair_losses(cfg, logps, jnp.asarray(reference), jnp.sum(mask, -1))

    out = terms(jnp.asarray(logits))
    grads = jax.grad(lambda lg: jnp.sum(terms(lg)["loss"]))(jnp.asarray(logits))
    return np.asarray(out["loss"]), np.asarray(out["chosen"]), np.asarray(out["rejected"]), grads


class _LogitsModel(torch.nn.Module):
    """Stands for a model patched with TRL's fused LM head: per-token log-probs of the labels
    (zero where the label is -100), from given logits, with TRL's selective_log_softmax."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, labels, fused_lm_head, **_):
        assert fused_lm_head
        shifted = labels[:, 1:]
        mask = shifted != -100
        log_probs = selective_log_softmax(self.logits, shifted.clamp(min=0)).masked_fill(~mask, 0)
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=mask & False
        )


def trl(loss: str, ids, completion, logits, reference, pair: int):
    """TRL's DPOTrainer._compute_loss on one pair: (loss, chosen reward, rejected reward, d loss /
    d logits)."""
    leaf = torch.tensor(logits[pair], requires_grad=True)
    model = _LogitsModel(leaf)
    trainer = types.SimpleNamespace(
        model=model,
        ref_model=None,
        accelerator=types.SimpleNamespace(
            device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x
        ),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss],
        loss_weights=[1.0],
        beta=0.1,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.tensor(ids[pair]),
        "attention_mask": torch.ones(2, LENGTH, dtype=torch.long),
        "completion_mask": torch.tensor(completion[pair]),
        "ref_chosen_logps": torch.tensor(reference[pair, :1]),
        "ref_rejected_logps": torch.tensor(reference[pair, 1:]),
    }
    value = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    value.backward()
    metrics = trainer._metrics["train"]
    return (
        float(value.detach()),
        metrics["rewards/chosen"][0],
        metrics["rewards/rejected"][0],
        leaf.grad.numpy(),
    )


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_per_pair_loss_rewards_and_logit_gradients_equal_trls(loss):
    data = random_pairs()
    losses, chosen, rejected, grads = ours(loss, *data)
    for pair in range(PAIRS):
        t_loss, t_chosen, t_rejected, t_grad = trl(loss, *data, pair)
        np.testing.assert_allclose(losses[pair], t_loss, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(chosen[pair], t_chosen, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(rejected[pair], t_rejected, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(grads[pair], t_grad, rtol=0, atol=TOLERANCE)
        assert np.abs(t_grad).max() > 1e-3  # the comparison is not of zeros


def test_label_smoothing_is_cdpo():
    cfg = ml_collections.ConfigDict(dict(beta=0.5, loss="sigmoid", label_smoothing=0.2))
    policy, reference = jnp.asarray([[-3.0, -5.0]]), jnp.asarray([[-4.0, -4.5]])
    delta = 0.5 * ((-3.0 + 4.0) - (-5.0 + 4.5))
    expected = -0.8 * np.log(1 / (1 + np.exp(-delta))) - 0.2 * np.log(1 / (1 + np.exp(delta)))
    got = dpo.pair_losses(cfg, policy, reference, jnp.ones((1, 2)))["loss"]
    np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_identical_chosen_and_rejected_give_zero_gradient():
    """Both sides computed from the same logits (as a model computes identical rows): the
    gradient with respect to them cancels exactly, so no parameter moves."""
    ids, completion, logits, reference = random_pairs()
    ids[:, 1], completion[:, 1] = ids[:, 0], completion[:, 0]
    reference[:, 1] = reference[:, 0]
    targets, mask = jnp.asarray(ids[..., 1:]), jnp.asarray(completion[..., 1:], jnp.float32)
    for loss in ("sigmoid", "ipo", "hinge"):
        cfg = ml_collections.ConfigDict(dict(beta=0.1, loss=loss, label_smoothing=0.0))

        def total(shared, cfg=cfg):
            both = jnp.stack([shared, shared], axis=1)
            logps = dpo.sequence_logps(both, targets, mask)
            return jnp.sum(dpo.pair_losses(cfg, logps, reference, jnp.sum(mask, -1))["loss"])

        grads = jax.grad(total)(jnp.asarray(logits[:, 0]))
        assert float(jnp.abs(grads).max()) == 0.0, loss


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def pair_record(i: int, conversational: bool = False) -> dict:
    prompt, chosen, rejected = f"What is {i} + {i}?", f"{i} + {i} = {2 * i}.", f"{i} + {i} = 7."
    if conversational:
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(phi3_dpo.get_config("tiny"))


def dpo_config(path: str):
    config = phi3_dpo.get_config("tiny")
    config.data.sources.pairs.globs = path
    config.data.update(num_workers=0, eval_fraction=0.0)
    config.eval.every_steps = 0
    config.train.update(seq_len=64, global_batch_size=4)
    return config_lib.validate(config)


def test_pairs_become_chosen_and_rejected_rows_with_completion_masks(tmp_path, tokenizer):
    records = [pair_record(i, conversational=i % 2 == 1) for i in range(8)]
    config = dpo_config(write_jsonl(tmp_path / "pairs.jsonl", records))
    iterator = dpo.train_iterator(config, tokenizer)
    batch = next(iterator)
    assert batch["tokens"].shape == (4, 2, 64)
    for p in range(4):
        record = pair_record(p, conversational=p % 2 == 1)
        prompt = [{"role": "user", "content": f"What is {p} + {p}?"}]
        prompt_ids = chat.encode_prompt(tokenizer, prompt)
        for side, key in enumerate(dpo.SIDES):
            real = batch["segment_ids"][p, side] > 0
            ids = np.append(batch["tokens"][p, side][real], batch["targets"][p, side][real][-1])
            assert ids[: len(prompt_ids)].tolist() == prompt_ids
            content = record[key] if isinstance(record[key], str) else record[key][0]["content"]
            reply = {"role": "assistant", "content": content}
            full, trained = chat.encode_conversation(tokenizer, [*prompt, reply])
            assert ids.tolist() == full.tolist()
            # The completion: the reply's content and <|end|>, as the SFT mask has it.
            completion = ids[1:][batch["loss_mask"][p, side][real] > 0]
            assert completion.tolist() == full[trained].tolist()
            assert completion[-1] == tokenizer.special_ids[chat.END]
    iterator.close()


@pytest.mark.parametrize(
    "record, error",
    [
        ({"prompt": "q", "chosen": "", "rejected": "no"}, "chosen: empty completion"),
        ({"prompt": "q", "chosen": "yes", "rejected": []}, "rejected: must be one assistant"),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            "chosen: message 0: role 'assistant' out of order",
        ),
        ({"prompt": "q", "chosen": "a"}, "no field 'rejected'"),
    ],
)
def test_bad_pairs_are_errors_naming_the_record(tmp_path, tokenizer, record, error):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair_record(0), record])
    spec = shard_records.SourceSpec("pairs", (path,), fields=dpo.PAIR_FIELDS)
    opts = sources.ReadOptions(repeat=False)
    to_ids = dpo.records(dpo_config(path), tokenizer).to_ids
    with pytest.raises(errors.BadInputError, match=f"bad.jsonl: record 1: {error}"):
        list(sources.ShardSource(spec, to_ids, opts))


@pytest.mark.slow
def test_dpo_run_resumes_bitwise_exactly_and_keeps_the_reference_out_of_checkpoints(tmp_path):
    config = small_run(phi3_dpo.get_config("tiny"))
    lines = assert_resume_is_bitwise_exact(config_lib.validate(config), tmp_path)
    assert any("dpo: reference = the random init" in line for line in lines)
    # The checkpoint holds the train state only: params and Adam moments, no reference copy.
    _, params, _ = restore_lib.restore_params_of_run(str(tmp_path / "straight"), 4)
    saved = (tmp_path / "straight" / "checkpoints" / "4" / "state").rglob("*")
    assert "reference" not in " ".join(str(p) for p in saved)
    assert jax.tree.leaves(params)
