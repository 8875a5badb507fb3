"""`compat-harness prefetch`: what it would fetch for the remote-code rows, and how a failure reads."""

from __future__ import annotations

from harness.ckpt.prefetch import CODE_PATTERNS, WEIGHT_PATTERNS
from harness.cli import main
from harness.spec.load import load_matrix


def remote_rows() -> dict[str, str]:
    matrix = load_matrix()
    return {a.name: a.remote_repo for a in matrix.architectures.values() if a.trust_remote_code}


def test_dry_run_lists_every_remote_code_row_with_its_repo_and_patterns(capsys):
    assert main(["prefetch", "--code-only", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = remote_rows()
    listed = {line.split()[0]: line.split()[1] for line in lines[:-1]}
    assert listed == rows
    assert all(line.split()[2:] == list(CODE_PATTERNS) for line in lines[:-1])
    repos = len(set(rows.values()))
    assert lines[-1].startswith(f"{len(rows)} download(s) of {repos} repo(s) for {len(rows)} row(s)")
    # a row whose example is not its remote code names the repo that holds the code
    assert listed["DeepseekForCausalLM"] == "deepseek-ai/deepseek-moe-16b-base"


def test_weights_add_the_real_checkpoint_and_arch_narrows(capsys):
    assert main(["prefetch", "--weights", "--dry-run", "--arch", "DeciLMForCausalLM,LlamaForCausalLM"]) == 0
    captured = capsys.readouterr()
    fetches = [line.split() for line in captured.out.splitlines()[:-1]]
    assert [f[:2] for f in fetches] == [["DeciLMForCausalLM", "nvidia/Llama-3_3-Nemotron-Super-49B-v1"]] * 2
    assert fetches[1][2:] == list(CODE_PATTERNS + WEIGHT_PATTERNS)
    assert "LlamaForCausalLM: runs transformers' own code" in captured.err


def test_an_unknown_row_is_one_line_and_exit_2(capsys):
    assert main(["prefetch", "--dry-run", "--arch", "DeciLMForCausalLm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: unknown architecture 'DeciLMForCausalLm'; did you mean DeciLMForCausalLM")


def test_an_unreachable_hub_fails_each_download_and_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    assert main(["prefetch", "--arch", "AquilaForCausalLM,OrionForCausalLM"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[1/2] AquilaForCausalLM: BAAI/Aquila-7B FAILED:")
    assert out[1].startswith("[2/2] OrionForCausalLM: OrionStarAI/Orion-14B-Base FAILED:")
    assert out[-1] == "2 fetch(es): 0 downloaded, 0 found in the cache (nothing downloaded), 2 failed"


def test_a_repo_only_found_in_the_cache_says_so_not_downloaded(capsys, monkeypatch, tmp_path):
    """An unreachable hub with the repo's snapshot cached: huggingface_hub hands back the cached
    snapshot; prefetch must not call that a download."""
    from tests.remote_hub import cache_snapshot

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    snapshot = cache_snapshot(tmp_path, "BAAI/Aquila-7B", "good", "tinyremote", "TinyRemoteConfig",
                              "TinyRemoteForCausalLM")
    assert main(["prefetch", "--arch", "AquilaForCausalLM"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == (f"[1/1] AquilaForCausalLM: BAAI/Aquila-7B found in the cache, nothing downloaded "
                       f"-> {snapshot}")
    assert out[-1] == "1 fetch(es): 0 downloaded, 1 found in the cache (nothing downloaded), 0 failed"
