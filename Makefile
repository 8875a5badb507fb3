# Two commands do all of the setup on a fresh clone (Python 3.11+ and make):
#   make matrix   the main job: the tiny CPU matrix, records, rendered report
#   make test     the harness's own tests plus a representative CPU slice of the matrix
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; a GPU host brings its own torch.
TORCH ?= torch==2.13.0
# The CPU slice CI runs: dense, MoE, hybrid Mamba, VLM, sliding-window and a remote-code row.
SLICE ?= LlamaForCausalLM,Qwen3ForCausalLM,Qwen3MoeForCausalLM,NemotronHForCausalLM,Mistral3ForConditionalGeneration,Gemma3ForCausalLM,GptOssForCausalLM,AquilaForCausalLM
RESULTS ?= reports/records/local.jsonl
JOBS ?= 2
export COMPAT_HARNESS_CACHE ?= $(CURDIR)/.cache/compat-harness
export OMP_NUM_THREADS ?= 1
# pytest exits 5 when a selection collects nothing: that is not a failure of the suite.
PYTEST_OK = || [ $$? -eq 5 ]

.PHONY: setup test lint unit slice matrix clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/pytest -q -n $(JOBS) tests $(PYTEST_OK)

slice: setup
	$(BIN)/pytest -q -n $(JOBS) matrix -m cpu --tier tiny --arch $(SLICE) --results $(RESULTS) $(PYTEST_OK)

test: lint unit slice

matrix: setup
	$(BIN)/pytest -q -n $(JOBS) matrix -m cpu --tier tiny --results $(RESULTS) $(PYTEST_OK)

clean:
	rm -rf $(VENV) .cache .pytest_cache
