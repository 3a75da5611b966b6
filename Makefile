# emo — the two commands a fresh clone needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EMO    := $(BIN)/emo
STAMP  := $(VENV)/.emo-installed

DATASET ?=
ROOT    ?=
CACHE   ?= cache/$(DATASET)
EXTRACT_ARGS ?=
DEMO_DIR ?= demo

.PHONY: setup demo test extract bench lint clean

# Creates .venv and installs emo with its pinned dependencies (re-run when pyproject.toml changes).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Small synthetic dataset -> random-weight ViT-B-32 features on CPU -> baselines -> results table.
demo: setup
	rm -rf $(DEMO_DIR)
	$(EMO) datasets synth $(DEMO_DIR)/videos --classes 4 --per-class 12
	$(EMO) datasets prepare folder --root $(DEMO_DIR)/videos --out $(DEMO_DIR)/cache --dataset synth --test-ratio 0.5 --seed 0
	$(EMO) extract clip $(DEMO_DIR)/cache --weights random --model ViT-B-32 --segments 16 \
		--workers 2 --device cpu --shard-size 16
	$(EMO) cache verify $(DEMO_DIR)/cache
	$(EMO) heads train linear $(DEMO_DIR)/cache --split folder:0 --out $(DEMO_DIR)/runs/linear
	$(EMO) heads train zero-shot $(DEMO_DIR)/cache --split folder:0 --out $(DEMO_DIR)/runs/zero-shot
	$(EMO) heads train pe-clip $(DEMO_DIR)/cache --split folder:0 --out $(DEMO_DIR)/runs/pe-clip --epochs 30 --lr 1e-3 --batch-size 8
	@echo
	$(EMO) report $(DEMO_DIR)/runs

test: setup
	$(BIN)/python -m pytest -q

# make extract DATASET=myvids ROOT=/data/myvids  (preset emo/configs/datasets/$(DATASET).json, else folder.json)
extract: setup
	@test -n "$(DATASET)" -a -n "$(ROOT)" || (echo "usage: make extract DATASET=name ROOT=/path/to/release" && exit 2)
	$(EMO) extract preset $(DATASET) --root $(ROOT) --cache $(CACHE) $(EXTRACT_ARGS)

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/views.py
	$(BIN)/python bench/cache_load.py
	$(BIN)/python bench/heads.py
	$(BIN)/python bench/audio.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/emoasst.py
	$(BIN)/python bench/emotionclip.py
	$(BIN)/python bench/duse.py
	$(BIN)/python bench/duse.py memory
	$(BIN)/python bench/ecpa.py
	$(BIN)/python bench/heads_cluster.py

lint: setup
	$(BIN)/ruff check emo tests bench examples

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
