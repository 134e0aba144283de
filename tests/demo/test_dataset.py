"""The demo data set: determinism, disjoint splits, unseen held-out entities, untied rankings, the cache."""

import json
from collections import Counter
from pathlib import Path

import pytest

from lightalign.demo import dataset, ensure_demo_data, generate_demo, gold_judge, parse_question
from lightalign.demo.judge import _words
from lightalign.demo.questions import ENTITY_FAMILIES


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
    assert sizes == {"sft": 400, "eval": 40, "prompts": 128, "rankings": 200, "pairs": 200 * 6}


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
    assert len(heldout) == 128 and len(evals) == 40 and len(sft) == 400 and len(ranked) == 200
    assert not heldout & (evals | sft | ranked)
    assert not evals & (sft | ranked)


def test_the_families_are_balanced_in_every_prefix_of_the_held_out_prompts(demo: dict[str, list[dict]]) -> None:
    families = [parse_question(p).family for p in _prompts(demo["prompts"])]
    assert set(families) == {"capital", "arithmetic", "compare", "translate", "opposite", "sequence"}
    for n in (32, 64, 128):
        counts = Counter(families[:n]).values()
        assert max(counts) - min(counts) <= 1, n


def test_held_out_entities_appear_in_no_other_split_of_their_family(demo: dict[str, list[dict]]) -> None:
    held = [parse_question(p) for p in _prompts(demo["prompts"])]
    names = {(q.family, " ".join(_words(name))) for q in held for name in q.entity}
    assert {family for family, _ in names} == set(ENTITY_FAMILIES)
    assert all(q.entity for q in held if q.family in ENTITY_FAMILIES)
    assert ("capital", "tokyo") not in names or ("capital", "japan") in names  # a country comes with its capital
    for split in ("sft", "eval", "rankings", "pairs"):
        for row in demo[split]:
            family = parse_question(_prompts([row])[0]).family
            # every word of the row, prompt and answers (its JSON keys are no entity's name)
            words = f" {' '.join(_words(json.dumps(row, ensure_ascii=False)))} "
            seen = [name for fam, name in names if fam == family and f" {name} " in words]
            assert not seen, (split, row)


def test_demonstrations_are_correct_but_only_partly_concise(demo: dict[str, list[dict]]) -> None:
    scores = [gold_judge(*(m["content"] for m in row["messages"])) for row in demo["sft"]]
    assert min(scores) >= 0.7  # every demonstration is correct (0.6) and well-formed (0.15)
    answers = [row["messages"][-1]["content"] for row in demo["sft"]]
    chatty = [s for s, a in zip(scores, answers, strict=True) if a.endswith(dataset.CHATTER)]
    share = dataset.SFT_CHATTY
    assert share - 0.1 < len(chatty) / len(scores) < share + 0.1 and max(chatty) < 0.9  # boilerplate costs
    verbose = sum(s < 1.0 for s in scores) / len(scores) - len(chatty) / len(scores)  # a full sentence
    assert dataset.SFT_VERBOSE - 0.1 < verbose < dataset.SFT_VERBOSE + 0.1


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


def test_ensure_demo_data_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTALIGN_HOME", str(tmp_path))
    paths = ensure_demo_data(seed=1)
    root = tmp_path / "data" / "demo-v6-seed1"
    assert set(paths) == {"sft", "eval", "prompts", "rankings", "pairs"}
    assert all(p.parent == root and p.is_file() for p in paths.values())
    assert [p.name for p in root.parent.iterdir()] == ["demo-v6-seed1"]  # no temporary folder left

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated")

    monkeypatch.setattr(dataset, "generate_demo", fail)
    assert ensure_demo_data(seed=1) == paths


def test_ensure_demo_data_leaves_nothing_on_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out_dir: Path, seed: int) -> None:
        (out_dir / "sft.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "sft.jsonl").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "generate_demo", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(root=tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []
