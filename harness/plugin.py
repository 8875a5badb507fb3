"""The pytest plugin: options, markers and one pytest item per matrix cell and device.

Hooks and options live here; behaviour lives in the library (runner, records). Collection
imports neither torch nor transformers, so listing thousands of cells stays fast.

Each cell is collected once per device, as `<cell id>[cpu]` and `<cell id>[cuda]`, marked
`cpu` or `gpu`, so `pytest -m gpu --arch LlamaForCausalLM` picks one architecture's GPU cells;
on a machine without CUDA those skip with a reason. Giving any matrix selection option
(--arch, --method, --layout, --tier, --check) deselects the harness's own unit tests.

`--matrix-dir DIR` collects DIR's cells however it is spelled (`--matrix-dir DIR`,
`--matrix-dir=DIR`, with or without DIR as a path argument): pytest decides its rootdir before
plugins add their options, so it may take `--matrix-dir`'s value for a path (and leave the
project's ini settings behind), and its default paths are the project's `matrix/`. The plugin
therefore makes DIR one of the paths to collect itself. A matrix mistake is a usage error
(exit 4) with the one-line message of harness.spec.matrix.MatrixError, never a traceback.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness.ckpt.implementations import OPT_IN_ENV, OPT_IN_FLAG
from harness.failures import HARNESS_ERROR
from harness.report.records import LOCAL_RECORDS, default_results, new_run_id
from harness.spec.cells import (
    SELECTION_OPTIONS,
    Cell,
    SelectionError,
    expand,
    select,
    split_values,
    validate_selection,
    with_stacks,
)
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, Matrix, MatrixError

MARKERS = {
    "gpu": "a matrix cell that runs on CUDA",
    "cpu": "a matrix cell that runs on the CPU",
    "multigpu": "a matrix cell that needs more than one GPU",
    "real": "a matrix cell on a real (pretrained or real-shape) tier",
    "slow": "a cell or test that takes more than a few seconds",
}
DEVICES = ("cpu", "cuda")
# user_properties keys a cell's reports carry to the controller (xdist sends them along): its
# row, and its record's (status, category).
ARCH_PROPERTY = "compat_harness_arch"
RECORD_PROPERTY = "compat_harness"
# The xdist group of the cells that run on gloo ranks (see CellItem).
RANKS_GROUP = "gloo-ranks"
# pytest's own code for "internal error": jobs that accept exit 1 (failing cells are findings)
# still stop on it.
HARNESS_ERROR_EXIT = 3
MATRIX_KEY = pytest.StashKey[Matrix]()
CELLS_KEY = pytest.StashKey[list[Cell]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compat-harness", "compatibility matrix selection")
    for option, axis in SELECTION_OPTIONS.items():
        group.addoption(f"--{option}", action="append", default=[], metavar="NAME[,NAME]",
                        help=f"run only these {axis} values (repeatable, comma lists allowed)")
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: collect cpu and cuda cells (cuda cells skip without CUDA)")
    group.addoption("--matrix-dir", default=None,
                    help=f"directory of matrix TOML files (default {DEFAULT_MATRIX_DIR})")
    group.addoption("--results", default=None,
                    help=f"JSONL file records are appended to (default: a file of this run's own, "
                         f"{LOCAL_RECORDS}/<run id>.jsonl)")
    group.addoption("--run-id", default=None, help="run id stored in every record")
    group.addoption(OPT_IN_FLAG, action="store_true", default=False,
                    help=f"run the hub remote code that rows marked trust_remote_code = true find in the "
                         f"local HF cache (nothing is fetched); also {OPT_IN_ENV}=1. Other rows never run "
                         "remote code")


def _selection(config: pytest.Config) -> dict[str, list[str]]:
    return {axis: split_values(config.getoption(opt)) for opt, axis in SELECTION_OPTIONS.items()}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if config.getoption("trust_remote_code"):
        # An environment variable, so that xdist workers and pool ranks (spawned later) inherit it.
        os.environ[OPT_IN_ENV] = "1"
    try:
        matrix = load_matrix(_matrix_dir(config))
        validate_selection(matrix, _selection(config))
    except (MatrixError, SelectionError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[MATRIX_KEY] = matrix
    _collect_matrix_dir(config)
    config.pluginmanager.register(VerdictSummary(config), "compat-harness-verdicts")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.option.run_id = workerinput["compat_harness_run_id"]
    elif not config.getoption("run_id"):
        config.option.run_id = os.environ.get("COMPAT_HARNESS_RUN_ID") or new_run_id()


def pytest_configure_node(node) -> None:
    """xdist: every worker writes records under the controller's run id."""
    node.workerinput["compat_harness_run_id"] = node.config.getoption("run_id")


def _matrix_dir(config: pytest.Config) -> Path:
    return Path(config.getoption("matrix_dir") or DEFAULT_MATRIX_DIR).resolve()


def _collect_matrix_dir(config: pytest.Config) -> None:
    """With --matrix-dir DIR, DIR is among the paths pytest collects, in every spelling.

    Without path arguments pytest would collect its defaults (the ini's testpaths, or the
    invocation directory when it took DIR for a path while choosing its rootdir): DIR replaces
    them. Path arguments that do not reach into DIR are kept, and DIR is added to them.
    """
    if not config.getoption("matrix_dir"):
        return
    directory = _matrix_dir(config)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [str(directory)]
    elif not any(_reaches(config, arg, directory) for arg in config.args):
        config.args = [*config.args, str(directory)]


def _reaches(config: pytest.Config, arg: str, directory: Path) -> bool:
    """Whether a path argument (or node id) is DIR, lies inside it, or contains it."""
    path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
    return path == directory or directory in path.parents or path in directory.parents


def _is_matrix_file(config: pytest.Config, path: Path) -> bool:
    return path.suffix == ".toml" and path.resolve().parent == _matrix_dir(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if _is_matrix_file(parent.config, file_path):
        return MatrixFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(_selection(config).values()):
        return
    kept = [item for item in items if isinstance(item, CellItem)]
    dropped = [item for item in items if not isinstance(item, CellItem)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class MatrixFile(pytest.File):
    """One matrix TOML file: yields the cells of the architecture rows it defines."""

    def collect(self):
        config = self.config
        matrix = config.stash[MATRIX_KEY]
        if CELLS_KEY not in config.stash:
            config.stash[CELLS_KEY] = expand(matrix)[0]
        here = self.path.resolve()
        rows = {name for name, arch in matrix.architectures.items() if arch.source_path.resolve() == here}
        own = [c for c in config.stash[CELLS_KEY] if c.architecture in rows]
        device_option = config.getoption("device")
        devices = DEVICES if device_option == "auto" else (device_option,)
        for cell in select(own, with_stacks(matrix, _selection(config))):
            for device in devices:
                yield CellItem.from_parent(self, name=f"{cell.id}[{device}]", cell=cell,
                                           device=device)


class CellItem(pytest.Item):
    def __init__(self, *, cell: Cell, device: str, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell
        self.device = device
        # The verdict table's row, known before the cell runs: a cell that fails before it writes
        # its record (an exception out of the runner) still counts in the table.
        self.user_properties.append((ARCH_PROPERTY, cell.architecture))
        matrix = self.config.stash[MATRIX_KEY]
        self.add_marker("gpu" if device == "cuda" else "cpu")
        if device == "cuda" and matrix.layouts[cell.layout].world_size > 1:
            self.add_marker("multigpu")
        if device == "cpu" and matrix.layouts[cell.layout].world_size > 1:
            # Under `-n N --dist loadgroup` (scripts/run-selections.sh DIST=loadgroup) every gloo cell
            # runs on one xdist worker: one set of rank pools starts (each rank imports torch and
            # transformers), not one per worker. Ignored under the default --dist load.
            self.add_marker(pytest.mark.xdist_group(RANKS_GROUP))
        if cell.tier != "tiny":
            self.add_marker("real")
            self.add_marker("slow")

    def runtest(self) -> None:
        from harness.report.records import append_record, environment, make_record
        from harness.run.hardware import missing_devices
        from harness.run.runner import run_cell

        matrix = self.config.stash[MATRIX_KEY]
        layout = matrix.layouts[self.cell.layout]
        tier = matrix.tiers[self.cell.tier]
        reason = missing_devices(self.device, layout.world_size)
        if self.device not in tier.devices:
            reason = (f"tier {tier.name} runs on {', '.join(tier.devices)} only ({tier.summary}); "
                      f"select it with -m gpu on a GPU host")
        if reason:
            pytest.skip(reason)
        outcome = run_cell(matrix, self.cell, self.device)
        record = make_record(
            self.cell, outcome.status, category=outcome.category, message=outcome.message,
            traceback=outcome.traceback, metrics=outcome.metrics, code=outcome.code,
            env=environment(self.device, layout.world_size, backend_for(self.device, layout.world_size)),
            run_id=self.config.getoption("run_id"),
        )
        append_record(results_path(self.config), record)
        self.user_properties.append((RECORD_PROPERTY, (outcome.status, outcome.category)))
        label = f"[{outcome.category}] {outcome.message}"
        if outcome.status == "skip":
            pytest.skip(label)
        if outcome.status == "xfail":
            pytest.xfail(label)
        if outcome.status == "fail":  # a deliberate verdict is its message; anything else shows where
            raise CellFailed(f"{self.cell.id} on {self.device}: {label}"
                             + ("" if outcome.deliberate else f"\n\n{outcome.traceback}"))
        if outcome.known_limit_stale:
            from harness.report.limits import stale_advice

            raise CellFailed(outcome.known_limit_stale
                             + stale_advice(matrix, self.cell.architecture, outcome.stale_limit, record))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"matrix cell {self.name}"


def results_path(config: pytest.Config):
    """--results, or this run's own file (the run id is the controller's under xdist)."""
    return config.getoption("results") or default_results(config.getoption("run_id"))


def backend_for(device: str, world_size: int) -> str | None:
    """The process-group backend a cell ran on: the pool uses gloo on CPU and NCCL on CUDA."""
    if world_size == 1:
        return None
    return "nccl" if device == "cuda" else "gloo"


class CellFailed(Exception):
    """A cell's record says fail; the item fails with the record's message."""


class VerdictSummary:
    """Counts each architecture's cell verdicts; under xdist it runs on the controller.

    Each cell counts as pytest counts its item, so that the table and pytest's summary line
    agree: a cell whose record passed but whose item failed (a stale known limit, pytest's
    strict XPASS) is a failure here too, never a pass. The record's category says why.
    """

    def __init__(self, config: pytest.Config):
        self.config = config
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        arch = properties.get(ARCH_PROPERTY)
        # the call phase holds the verdict; setup and teardown count only when they end the item
        # (pytest reports an error there, or a skip in setup)
        if arch is None or (report.when != "call" and report.passed):
            return
        if report.when == "teardown" and report.skipped:
            return
        self.counts[arch][verdict_key(report, properties.get(RECORD_PROPERTY))] += 1

    def harness_errors(self) -> int:
        return sum(c[f"fail:{HARNESS_ERROR}"] for c in self.counts.values())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.counts:
            write_summary(terminalreporter, self.counts, self.config)
        if self.harness_errors():
            terminalreporter.write_line(
                f"{self.harness_errors()} cell(s) failed with {HARNESS_ERROR}: a bug in the harness's own "
                f"code, not a verdict on the stack; fix it (pytest exits {HARNESS_ERROR_EXIT})", red=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A harness error fails every job that runs cells, even those that accept failing cells."""
        if self.harness_errors():
            session.exitstatus = HARNESS_ERROR_EXIT


STALE_LIMIT = "known-limit-stale"
NO_RECORD = "no-record"


def verdict_key(report: pytest.TestReport, record: tuple[str, str | None] | None) -> str:
    """One cell's key in the table: pytest's outcome, with the record's category when there is one.

    "pass" | "fail:<category>" | "xfail:<category>" | "skip:<category>". A failed item whose
    record passed is "fail:known-limit-stale"; an item that ended before its cell wrote a
    record (no device for it, an exception out of the runner) has the category "no-record".
    """
    status, category = record or (None, None)
    if report.passed:
        return "pass"
    if report.failed:
        if status == "pass":
            return f"fail:{STALE_LIMIT}"
        return f"fail:{category or NO_RECORD}"
    if hasattr(report, "wasxfail"):
        return f"xfail:{category}"
    return f"skip:{category or NO_RECORD}"


def write_summary(tr, summary: dict[str, Counter], config: pytest.Config) -> None:
    tr.section("compat-harness verdicts")
    width = max(len(a) for a in summary)
    for arch in sorted(summary):
        counts = summary[arch]
        if set(counts) == {"pass"}:
            verdict = "PASS"
        elif any(k.startswith("fail") for k in counts):
            verdict = "FAIL"
        elif all(k.startswith("skip") for k in counts):
            verdict = "SKIP"
        else:
            verdict = "PARTIAL"
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        tr.write_line(f"{arch:<{width}}  {verdict:<7}  {detail}")
    results = results_path(config)
    tr.write_line(f"records: {results} (run id {config.getoption('run_id')})")
