"""The demo data generator: determinism, disjoint splits, untied rankings, sound tables."""

import json
from pathlib import Path

import pytest

from lightalign.demo import ensure_demo_data, generate_demo, gold_judge, parse_question, reference_answer, task


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _prompts(rows: list[dict]) -> list[str]:
    return [r["prompt"] if "prompt" in r else r["messages"][0]["content"] for r in rows]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    paths = generate_demo(tmp_path_factory.mktemp("demo"), seed=0)
    return {name: _read(path) for name, path in paths.items()}


def test_sizes(demo: dict[str, list[dict]]) -> None:
    sizes = {name: len(rows) for name, rows in demo.items()}
    assert sizes == {"sft": 400, "eval": 40, "prompts": 40, "rankings": 200, "pairs": 200 * 6}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    kwargs = {"n_sft": 50, "n_eval": 10, "n_heldout": 10, "n_rank": 20}
    a = generate_demo(tmp_path / "a", seed=3, **kwargs)
    b = generate_demo(tmp_path / "b", seed=3, **kwargs)
    c = generate_demo(tmp_path / "c", seed=4, **kwargs)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes() != c[name].read_bytes()


def test_splits_are_disjoint(demo: dict[str, list[dict]]) -> None:
    heldout, evals = set(_prompts(demo["prompts"])), set(_prompts(demo["eval"]))
    sft, ranked = set(_prompts(demo["sft"])), set(_prompts(demo["rankings"]))
    assert len(heldout) == 40 and len(evals) == 40 and len(sft) == 400 and len(ranked) == 200
    assert not heldout & (evals | sft | ranked)
    assert not evals & (sft | ranked)


def test_every_family_is_held_out(demo: dict[str, list[dict]]) -> None:
    families = {parse_question(p).family for p in _prompts(demo["prompts"])}
    assert families == {"capital", "arithmetic", "compare", "translate", "opposite", "sequence"}


def test_demonstrations_are_correct_but_only_partly_concise(demo: dict[str, list[dict]]) -> None:
    scores = [gold_judge(*(m["content"] for m in row["messages"])) for row in demo["sft"]]
    assert min(scores) >= 0.7  # every demonstration is correct (0.6) and well-formed (0.15)
    answers = [row["messages"][-1]["content"] for row in demo["sft"]]
    chatty = [s for s, a in zip(scores, answers, strict=True) if a.endswith(task.CHATTER)]
    assert 0.4 < len(chatty) / len(scores) < 0.6 and max(chatty) < 0.9  # boilerplate costs conciseness
    verbose = sum(s < 1.0 for s in scores) / len(scores) - len(chatty) / len(scores)  # a full sentence
    assert 0.1 < verbose < 0.3


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_rankings_are_strict_permutations(tmp_path: Path, k: int) -> None:
    paths = generate_demo(tmp_path, n_sft=1, n_eval=1, n_heldout=1, n_rank=120, k=k)
    for row in _read(paths["rankings"]):
        assert sorted(row["ranking"]) == list(range(k))
        scores = [gold_judge(row["prompt"], row["responses"][i]) for i in row["ranking"]]
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), row
    pairs = _read(paths["pairs"])
    assert len(pairs) == 120 * k * (k - 1) // 2
    assert all(gold_judge(p["prompt"], p["chosen"]) > gold_judge(p["prompt"], p["rejected"]) for p in pairs)


def test_rejects_bad_k(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k must be"):
        generate_demo(tmp_path, k=7)


def test_every_prompt_has_a_perfect_reference_and_a_correct_verbose_answer() -> None:
    import random

    for family, prompts in task._all_prompts(random.Random(0)).items():
        for prompt in prompts[:300]:
            q = parse_question(prompt)
            assert gold_judge(prompt, reference_answer(prompt)) == 1.0, prompt
            assert gold_judge(prompt, q.verbose()) >= 0.75, (family, q.verbose())


def test_tables_are_unambiguous() -> None:
    capitals = [c.lower() for c in task.CAPITALS.values()]
    assert len(set(capitals)) == len(capitals)
    assert not {c.lower() for c in task.CAPITALS} & set(capitals)
    for column in range(len(task.LANGUAGES)):
        words = [w[column] for w in task.WORDS.values()]
        assert len(set(words)) == len(words)
        assert not set(words) & set(task.WORDS)  # no translation is itself an English demo word
    assert len(task.OPPOSITES) == 2 * len(task._PAIRS)  # each word has exactly one opposite


def test_ensure_demo_data_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTALIGN_HOME", str(tmp_path))
    paths = ensure_demo_data(seed=1)
    root = tmp_path / "data" / "demo-v4-seed1"
    assert set(paths) == {"sft", "eval", "prompts", "rankings", "pairs"}
    assert all(p.parent == root and p.is_file() for p in paths.values())
    assert [p.name for p in root.parent.iterdir()] == ["demo-v4-seed1"]  # no temporary folder left

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated")

    monkeypatch.setattr(task, "generate_demo", fail)
    assert ensure_demo_data(seed=1) == paths


def test_ensure_demo_data_leaves_nothing_on_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out_dir: Path, seed: int) -> None:
        (out_dir / "sft.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "sft.jsonl").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(task, "generate_demo", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(root=tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []
