"""The cross-stage report of a pipeline run: ``DIR/report.md``, ``DIR/report.json`` and PNG curves.

Rows are models (base, SFT, PPO, DPO), columns the numbers that say what each stage bought. Everything
is read back from the run directory, so ``lightalign report DIR`` rebuilds it at any time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lightalign.rundir import LOG, METRICS, SAMPLES, read_json, write_json_atomic

# (column key, header); each stage's metrics.json names the same numbers the same way.
COLUMNS: list[tuple[str, str]] = [
    ("gold_score", "gold judge"),
    ("rm_score", "reward model"),
    ("win_rate_rm", "win vs SFT (RM)"),
    ("win_rate_gold", "win vs SFT (gold)"),
    ("kl_to_sft", "KL to SFT"),
    ("eval_loss", "held-out loss"),
    ("answer_tokens", "answer tokens"),
    ("eos_fraction", "ends with EOS"),
]
MODEL_ROWS = ("base", "sft", "ppo", "dpo")
# Curves worth plotting, by substring of the logged key, in order of preference.
CURVE_KEYS = ("loss", "accuracy", "accuracies", "margin", "score", "reward", "kl")


@dataclass
class Report:
    path: Path
    rows: dict[str, dict[str, float | None]]
    table_markdown: str


def _stage_metrics(run_dir: Path, stage: str) -> dict[str, float]:
    return read_json(run_dir / stage / METRICS) or {}


def collect_rows(run_dir: Path) -> dict[str, dict[str, float | None]]:
    """One row per model found in the run: ``base`` from SFT's ``base_*`` metrics, others from each stage.

    A stage that evaluates against SFT (PPO, DPO) also reports SFT's numbers under ``sft_*``; they fill
    the SFT row's gaps (e.g. its reward-model score).
    """
    sft = _stage_metrics(run_dir, "sft")
    rows: dict[str, dict[str, float | None]] = {}
    if sft:
        rows["base"] = {key: sft.get(f"base_{key}") for key, _ in COLUMNS}
        rows["sft"] = {key: sft.get(key) for key, _ in COLUMNS}
        rows["sft"]["kl_to_sft"] = 0.0
    for stage in ("ppo", "dpo"):
        metrics = _stage_metrics(run_dir, stage)
        if not metrics:
            continue
        rows[stage] = {key: metrics.get(key) for key, _ in COLUMNS}
        if "sft" in rows:
            for key, _ in COLUMNS:
                if rows["sft"].get(key) is None and metrics.get(f"sft_{key}") is not None:
                    rows["sft"][key] = metrics[f"sft_{key}"]
    return rows


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def format_table(rows: dict[str, dict[str, float | None]]) -> str:
    header = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [header, rule]
    for model in MODEL_ROWS:
        if model in rows:
            lines.append(f"| {model} | " + " | ".join(_fmt(rows[model].get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect_samples(run_dir: Path, limit: int = 5) -> list[dict[str, str]]:
    """Each model's answer to the same prompts: ``[{"prompt", "base", "sft", "ppo", "dpo"}]``."""
    sources = {
        "base": run_dir / "sft" / f"base_{SAMPLES}",
        "sft": run_dir / "sft" / SAMPLES,
        "ppo": run_dir / "ppo" / SAMPLES,
        "dpo": run_dir / "dpo" / SAMPLES,
    }
    answers = {model: {row["prompt"]: row["response"] for row in _read_jsonl(path)} for model, path in sources.items()}
    prompts = list(answers["sft"]) or next((list(a) for a in answers.values() if a), [])
    return [
        {"prompt": prompt, **{model: answers[model][prompt] for model in sources if prompt in answers[model]}}
        for prompt in prompts[:limit]
    ]


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
        rows = _read_jsonl(stage_dir / LOG)
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


def build_report(run_dir: Path) -> Report:
    """Write ``report.md`` and ``report.json`` into ``run_dir`` from what its stages left there."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    samples = collect_samples(run_dir)
    plots = plot_curves(run_dir)
    state = read_json(run_dir / "pipeline.json") or {}
    table = format_table(rows)
    lines = [f"# lightalign report: {state.get('pipeline', run_dir.name)}", "", f"Run directory: `{run_dir}`", ""]
    lines += ["## Models", "", table, ""]
    lines += ["`—`: not measured in this run. Win rates count ties as half; KL is per answer, in nats.", ""]
    if samples:
        models = [m for m in ("base", "sft", "ppo", "dpo") if any(m in s for s in samples)]
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
        "samples": samples,
        "plots": [p.name for p in plots],
        "stages": state.get("stages", {}),
    })
    return Report(path, rows, table)
