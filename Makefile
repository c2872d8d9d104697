# lit_experiments: `make demo` and `make test` each work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo demo-seeds test test-full lint bench bench-gpu faults clean

# (re)install when the dependency file changed; otherwise a no-op
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-disabled} $(PY) -m lit_experiments demo

# every demo once per seed, then docs/results/demo_seeds.{json,md} and the README's result tables (F50; about
# 3x `make demo`). SEEDS / ONLY narrow it: make demo-seeds ONLY="satipatthana slots"
SEEDS ?= 0 1 2
demo-seeds: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-disabled} $(PY) -m lit_experiments demo --seeds $(SEEDS) $(if $(ONLY),--only $(ONLY)) \
		--summary docs/results/demo_seeds.json --readme README.md

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -n 2 --dist loadfile

test-full: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -n 2 --dist loadfile -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_experiments tests bench

bench: $(STAMP)
	@for script in $(filter-out bench/gpu.py bench/faults.py,$(wildcard bench/*.py)); do echo "== $$script"; $(PY) $$script || exit 1; done

# the GPU check (docs/gpu.md): every seed config preflighted on this machine's GPU -> bench/out/gpu.md. make cannot
# take --device: on a CPU, make bench-gpu ARGS="--device cpu --quick" (the demo configs, a few minutes)
bench-gpu: $(STAMP)
	WANDB_MODE=disabled $(PY) bench/gpu.py $(ARGS)

# issue 25's fault cases through lit-exp, before / after -> bench/out/faults.md (about 8 min; ARGS="--only sweep")
faults: $(STAMP)
	$(PY) bench/faults.py $(ARGS)

clean:
	rm -rf runs lightning_logs wandb .feature_cache bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
