"""The cross-stage report of a pipeline run: ``DIR/report.md``, ``DIR/report.json`` and PNG curves.

Rows are models (base, SFT, PPO, DPO, GRPO), columns the numbers that say what each stage bought; then each
model's correct fraction per question family, and paired differences: each model against the one it
started from, answer by answer on the same prompts, with standard errors. Everything is read back from the
run directory, so ``lightalign report DIR`` rebuilds it at any time.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from lightalign.rundir import LOG, METRICS, SAMPLES, read_json, read_log, write_json_atomic

CORRECT = "correct_fraction"  # per question family: "correct_fraction/<family>" (lightalign.eval.hooks)
# (column key, header); each stage's metrics.json names the same numbers the same way.
COLUMNS: list[tuple[str, str]] = [
    (CORRECT, "correct"),
    ("gold_score", "gold judge"),
    ("rm_score", "reward model"),
    ("win_rate_rm", "win vs SFT (RM)"),
    ("win_rate_gold", "win vs SFT (gold)"),
    ("kl_to_sft", "KL to SFT"),
    ("eval_loss", "held-out loss"),
    ("answer_tokens", "answer tokens"),
    ("eos_fraction", "ends with EOS"),
]
# The stages that train from the SFT model, each a row of its own (its metrics.json, its samples.jsonl).
FROM_SFT = ("ppo", "dpo", "grpo")
MODEL_ROWS = ("base", "sft", *FROM_SFT)
# (model, the model it is compared with): each stage against the one it started from.
COMPARISONS = (("sft", "base"), *((stage, "sft") for stage in FROM_SFT))
# (samples.jsonl field, title) of the per-answer numbers compared in pairs.
PAIRED_FIELDS = (("correct", "correct"), ("gold_score", "gold judge"))
# Curves worth plotting, by substring of the logged key, in order of preference.
CURVE_KEYS = ("loss", "accuracy", "accuracies", "margin", "score", "reward", "kl")


@dataclass
class Report:
    path: Path
    rows: dict[str, dict[str, float | None]]
    table_markdown: str


def _stage_metrics(run_dir: Path, stage: str) -> dict[str, float]:
    return read_json(run_dir / stage / METRICS) or {}


def _collect(run_dir: Path, keys: list[str]) -> dict[str, dict[str, float | None]]:
    """``keys`` of every model found in the run: ``base`` from SFT's ``base_*`` metrics, others from each stage.

    A stage that evaluates against SFT (PPO, DPO, GRPO) also reports SFT's numbers under ``sft_*``; they fill
    the SFT row's gaps (e.g. its reward-model score).
    """
    sft = _stage_metrics(run_dir, "sft")
    rows: dict[str, dict[str, float | None]] = {}
    if sft:
        rows["base"] = {key: sft.get(f"base_{key}") for key in keys}
        rows["sft"] = {key: sft.get(key) for key in keys}
    for stage in FROM_SFT:
        metrics = _stage_metrics(run_dir, stage)
        if not metrics:
            continue
        rows[stage] = {key: metrics.get(key) for key in keys}
        if "sft" in rows:
            for key in keys:
                if rows["sft"].get(key) is None and metrics.get(f"sft_{key}") is not None:
                    rows["sft"][key] = metrics[f"sft_{key}"]
    return rows


def collect_rows(run_dir: Path) -> dict[str, dict[str, float | None]]:
    """One row per model found in the run, with the numbers of :data:`COLUMNS` (``None``: not measured)."""
    rows = _collect(run_dir, [key for key, _ in COLUMNS])
    if "sft" in rows:
        rows["sft"]["kl_to_sft"] = 0.0
    return rows


def collect_families(run_dir: Path) -> dict[str, dict[str, float]]:
    """Each model's correct fraction per question family, from the ``correct_fraction/<family>`` metrics:
    ``{"sft": {"capital": 0.5, ...}}``; empty when no judge said what is correct."""
    keys = {key.partition(f"{CORRECT}/")[2] for stage in ("sft", *FROM_SFT)
            for key in _stage_metrics(run_dir, stage)} - {""}
    rows = _collect(run_dir, [f"{CORRECT}/{family}" for family in sorted(keys)])
    return {model: {key.partition("/")[2]: value for key, value in row.items() if value is not None}
            for model, row in rows.items() if any(value is not None for value in row.values())}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def format_table(rows: dict[str, dict[str, float | None]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for model in MODEL_ROWS:
        if model in rows:
            lines.append(f"| {model} | " + " | ".join(_fmt(rows[model].get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def read_sample_rows(run_dir: Path) -> dict[str, dict[str, dict]]:
    """Each model's final ``samples.jsonl`` rows by prompt: ``{"sft": {prompt: row}}`` (base: the SFT stage's
    ``base_samples.jsonl``); a model without a file is left out."""
    sources = {
        "base": run_dir / "sft" / f"base_{SAMPLES}",
        "sft": run_dir / "sft" / SAMPLES,
        **{stage: run_dir / stage / SAMPLES for stage in FROM_SFT},
    }
    rows = {model: {row["prompt"]: row for row in read_log(path)} for model, path in sources.items()}
    return {model: by_prompt for model, by_prompt in rows.items() if by_prompt}


def collect_samples(run_dir: Path, limit: int = 5) -> list[dict[str, str]]:
    """Each model's answer to the same prompts: ``[{"prompt", "base", "sft", "ppo", ...}]``."""
    rows = read_sample_rows(run_dir)
    prompts = list(rows.get("sft", {})) or next((list(by_prompt) for by_prompt in rows.values()), [])
    return [
        {"prompt": prompt, **{model: rows[model][prompt]["response"] for model in rows if prompt in rows[model]}}
        for prompt in prompts[:limit]
    ]


@dataclass
class PairedDifference:
    """``model`` minus ``baseline`` on one per-answer number, over the ``n`` prompts both answered.

    ``se`` is the paired standard error: the sample standard deviation of the per-prompt differences over
    ``sqrt(n)`` (``None`` below 2 prompts).
    """

    model: str
    baseline: str
    field: str
    n: int
    mean: float
    se: float | None

    @property
    def verdict(self) -> str:
        """``better by > 2 SE``, ``worse by > 2 SE`` or ``no clear difference``: is ``|mean| > 2 se``?"""
        if self.se is None:
            return "too few prompts"
        if abs(self.mean) > 2 * self.se:
            return "better by > 2 SE" if self.mean > 0 else "worse by > 2 SE"
        return "no clear difference"


def paired_difference(model: str, baseline: str, field: str, pairs: list[tuple[float, float]]) -> PairedDifference:
    """The mean of ``a - b`` over ``pairs`` (one ``(a, b)`` per prompt) and its paired standard error.

    Example:
        >>> d = paired_difference("ppo", "sft", "correct", [(1, 0), (1, 0), (1, 1), (0, 0)])
        >>> d.mean, round(d.se, 4), d.verdict
        (0.5, 0.2887, 'no clear difference')
    """
    diffs = [float(a) - float(b) for a, b in pairs]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return PairedDifference(model, baseline, field, len(diffs), statistics.fmean(diffs) if diffs else math.nan, se)


def collect_paired(run_dir: Path) -> list[PairedDifference]:
    """Each model against the one it started from (:data:`COMPARISONS`), per field of :data:`PAIRED_FIELDS`,
    over the prompts both models' ``samples.jsonl`` answered and both recorded that field for."""
    rows = read_sample_rows(run_dir)
    found = []
    for model, baseline in COMPARISONS:
        if model not in rows or baseline not in rows:
            continue
        for field, _ in PAIRED_FIELDS:
            pairs = [(row[field], rows[baseline][prompt][field]) for prompt, row in rows[model].items()
                     if field in row and field in rows[baseline].get(prompt, {})]
            if pairs:
                found.append(paired_difference(model, baseline, field, pairs))
    return found


def _signed(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def format_paired(differences: list[PairedDifference]) -> str:
    """One line per comparison: prompts, then per field the mean difference, its standard error and a verdict."""
    fields = [(f, title) for f, title in PAIRED_FIELDS if any(d.field == f for d in differences)]
    header = "| comparison | prompts | " + " | ".join(f"Δ {title} | SE | verdict" for _, title in fields) + " |"
    lines = [header, "|---|---:|" + "---:|---:|---|" * len(fields)]
    for model, baseline in COMPARISONS:
        found = {d.field: d for d in differences if (d.model, d.baseline) == (model, baseline)}
        if not found:
            continue
        cells = [f"{model} − {baseline}", str(max(d.n for d in found.values()))]
        for field, _ in fields:
            d = found.get(field)
            cells += [_signed(d.mean), _fmt(d.se), d.verdict] if d else ["—", "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(run_dir: Path) -> list[Path]:
    """One PNG per stage with its training curves (skipped if matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if (p / LOG).is_file()):
        rows = read_log(stage_dir / LOG)
        numeric = sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float) and k != "step"})
        # per-step curves only: `train_loss` and friends are end-of-run summaries
        numeric = [k for k in numeric if not k.startswith("train_") and "runtime" not in k and "per_second" not in k]
        keys = [k for want in CURVE_KEYS for k in numeric if want in k.lower()]
        keys = list(dict.fromkeys(keys))[:4]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=False):
            points = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], int | float)]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
            ax.set_title(key, fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
        fig.suptitle(stage_dir.name)
        fig.tight_layout()
        path = run_dir / f"curves_{stage_dir.name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


# (stage, metrics.json key, what it says) of the numbers that explain the preference stages' results.
PREFERENCE_DATA: list[tuple[str, str, str]] = [
    ("rankings", "correct_fraction", "SFT's greedy answers: correct"),
    ("rankings", "pass_at_k", "SFT's k sampled answers: some answer correct (pass@k)"),
    ("rankings", "rankings_ranked", "prompts ranked (on-policy: SFT's own sampled answers)"),
    ("rankings", "rankings_pairs", "pairs from those rankings (the reward model's)"),
    ("rankings", "rankings_dpo_pairs", "DPO's pairs (those with a score gap of at least rankings.pair_margin)"),
    ("reward", "pairwise_accuracy", "reward model: held-out pairwise accuracy"),
    ("reward", "base_pairwise_accuracy", "reward model before training (its untrained head)"),
]
# The keys of PREFERENCE_DATA that count something: metrics.json holds them as floats ("63.000" in the table).
PREFERENCE_COUNTS = frozenset({"rankings_ranked", "rankings_pairs", "rankings_dpo_pairs"})


def collect_preference_data(run_dir: Path) -> list[tuple[str, float | int]]:
    """What the preference stages learned from (:data:`PREFERENCE_DATA`), for the numbers a run has; counts
    (:data:`PREFERENCE_COUNTS`) as integers."""
    metrics = {stage: _stage_metrics(run_dir, stage) for stage in {stage for stage, _, _ in PREFERENCE_DATA}}
    found = []
    for stage, key, title in PREFERENCE_DATA:
        value = metrics[stage].get(key)
        if value is not None:
            k = metrics[stage].get("pass_k")
            found.append((title.replace("(pass@k)", f"(pass@{k:.0f})") if k else title,
                          round(value) if key in PREFERENCE_COUNTS else value))
    return found


def build_report(run_dir: Path) -> Report:
    """Write ``report.md`` and ``report.json`` into ``run_dir`` from what its stages left there."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    families = collect_families(run_dir)
    paired = collect_paired(run_dir)
    samples = collect_samples(run_dir)
    plots = plot_curves(run_dir)
    state = read_json(run_dir / "pipeline.json") or {}
    table = format_table(rows)
    lines = [f"# lightalign report: {state.get('pipeline', run_dir.name)}", "", f"Run directory: `{run_dir}`", ""]
    lines += ["## Models", "", table, ""]
    lines += ["`—`: not measured in this run. Correct: the share of answers the judge counts as correct. Win rates "
              "count ties as half; KL is per answer, in nats.", ""]
    if families:
        names = sorted({family for row in families.values() for family in row})
        lines += ["## Correct by question family", "",
                  format_table(families, [(family, family) for family in names]), ""]
    if paired:
        lines += ["## Paired differences", "", format_paired(paired), "",
                  "Per prompt, the first model's answer minus the second's, over the prompts both answered: the mean, "
                  "its standard error (standard deviation of the differences / √n) and whether the mean is more "
                  "than 2 standard errors from 0.", ""]
    preference = collect_preference_data(run_dir)
    if preference:
        lines += ["## Rankings and reward model", "", "| | |", "|---|---:|"]
        lines += [f"| {title} | {value if isinstance(value, int) else _fmt(value)} |" for title, value in preference]
        lines += ["", "pass@k above the greedy correct fraction is the room RL has: answers the SFT model can give "
                  "but does not give first.", ""]
    if samples:
        models = [m for m in MODEL_ROWS if any(m in s for s in samples)]
        lines += ["## Answers to the same prompts", "", "| prompt | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        lines += ["| " + " | ".join(_cell(s.get(k, "")) for k in ["prompt", *models]) + " |" for s in samples]
        lines.append("")
    if plots:
        lines += ["## Training curves", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if state.get("stages"):
        lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
        lines += [f"| {name} | {s.get('status')} | {s.get('seconds', '—')} |" for name, s in state["stages"].items()]
        lines.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    write_json_atomic(run_dir / "report.json", {
        "columns": [key for key, _ in COLUMNS],
        "rows": {m: {k: (v if v is None or math.isfinite(v) else None) for k, v in r.items()} for m, r in rows.items()},
        "families": families,
        "paired": [{**asdict(d), "verdict": d.verdict} for d in paired],
        "preference_data": dict(preference),
        "samples": samples,
        "plots": [p.name for p in plots],
        "stages": state.get("stages", {}),
    })
    return Report(path, rows, table)
