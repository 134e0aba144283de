"""The docs cannot drift: README.md and docs/*.md are checked against the code.

- Every ``lightalign`` command in a ```bash block is run on ``tiny-random`` (the smoke runs,
  ``lightalign ls``, ``lightalign report DIR``), in reading order: README, then the pages in the order the
  README links them, so ``SFT_DIR`` is the directory of the SFT smoke run shown before it. Every other
  ``lightalign run`` command (it needs the real model) is checked with ``lightalign validate``: its config
  composes and names existing options, and no model loads. What can do neither is in ``SKIPPED``, with why.
- The ``$ lightalign ls`` and ``$ lightalign validate`` transcripts show what the command prints.
- Every relative link points at a file, and at a heading of it when it names one.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightalign.cli import main as cli

REPO = Path(__file__).resolve().parents[1]

# Placeholders for the run directory of an earlier command, by the stage that wrote it. A bare DIR is the
# directory of the command before (`lightalign report DIR`); `hydra.run.dir=DIR` is a new one.
PLACEHOLDERS = {"SFT_DIR": "sft", "TINY_SFT_DIR": "sft", "SFT_RUN_DIR": "sft", "outputs/sft/RUN": "sft",
                "RANKINGS_DIR": "rankings", "REWARD_DIR": "reward"}
ELIDED = ("[overrides]", "...")  # "and the overrides you want": left out

# Shown in the docs, neither run nor validated here: the command, as written, and why.
MY_DATA = "names the reader's own data file, which does not exist here"
LAUNCHER = "starts several processes (tests/test_distributed.py runs SFT under torchrun on tiny-random)"
SKIPPED = {
    "lightalign run sft data=jsonl data.train=my.jsonl eval=basic": MY_DATA,
    "lightalign run reward data=jsonl data.train=hh.jsonl data.format=hh data.invalid=skip": MY_DATA,
    "accelerate launch --multi_gpu --num_processes 4 -m lightalign run sft [overrides]": LAUNCHER,
    "accelerate launch --config_file examples/accelerate/ddp.yaml -m lightalign run dpo dpo.sft_adapter=DIR":
        LAUNCHER,
    "torchrun --nproc_per_node 4 -m lightalign run reward [overrides]": LAUNCHER,
    "torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 -m lightalign run sft ...": LAUNCHER,
}


def read_on() -> list[Path]:
    """The docs pages in the order the README's "Read on" list links them."""
    section = (REPO / "README.md").read_text().split("\n## Read on\n", 1)[1].split("\n## ", 1)[0]
    linked = [path for path, _ in links(REPO / "README.md", section) if path.startswith("docs/")]
    return [REPO / path for path in dict.fromkeys(linked)]


def doc_pages() -> list[Path]:
    """README.md, then docs/*.md in reading order ("Read on"), then any page it does not list."""
    listed = read_on()
    return [REPO / "README.md", *listed, *sorted(set((REPO / "docs").glob("*.md")) - set(listed))]


def links(page: Path, text: str | None = None) -> list[tuple[str, str]]:
    """The relative links of a markdown page (or of ``text`` from it) outside code: ``[(path, anchor), ...]``,
    the path made relative to the repository (``""`` for a link to a heading of the page itself)."""
    text = re.sub(r"```.*?```", "", page.read_text() if text is None else text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve().relative_to(REPO).as_posix() if path else ""
        found.append((resolved, anchor))
    return found


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@dataclass(frozen=True)
class DocCommand:
    page: Path
    line: int
    argv: tuple[str, ...]  # as the shell splits it: continuation lines joined, quotes and the comment dropped

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def bash_commands(page: Path) -> list[DocCommand]:
    """Every command line of the page's ```bash blocks that mentions lightalign."""
    commands, in_bash, pending, start = [], False, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        if "lightalign" in words:
            commands.append(DocCommand(page, start, tuple(words)))
    return commands


def how_checked(command: DocCommand) -> str:
    """``run`` (on tiny-random), ``validate`` (the real model's config, no model loaded) or ``skip``."""
    if command.text in SKIPPED:
        return "skip"
    argv = command.argv
    if argv[0] == "lightalign" and (argv[1] in ("ls", "validate", "report") or "model=tiny-random" in argv):
        return "run"
    if argv[:2] == ("lightalign", "run"):
        return "validate"
    raise AssertionError(f"{command.where}: `{command.text}` is neither run nor validated; add it to SKIPPED "
                         "in tests/test_docs.py with the reason")


def all_commands() -> list[DocCommand]:
    return [command for page in doc_pages() for command in bash_commands(page)]


def test_every_command_in_the_docs_is_run_validated_or_skipped_with_a_reason():
    commands = all_commands()
    checks = {command.text: how_checked(command) for command in commands}
    assert "run" in checks.values() and "validate" in checks.values()
    stale = set(SKIPPED) - set(checks)
    assert not stale, f"SKIPPED lists commands no page shows any more: {sorted(stale)}"


def fill_placeholders(command: DocCommand, runs: dict[str, Path], new_dir: Path) -> list[str]:
    """The command's arguments with DIR, SFT_DIR, ... replaced by the run directories of earlier commands."""
    argv = []
    for arg in command.argv[1:]:
        if arg in ELIDED:
            continue
        if arg == "hydra.run.dir=DIR":
            arg = f"hydra.run.dir={new_dir}"
        for name, stage in PLACEHOLDERS.items():
            if re.search(rf"(?<![\w/]){re.escape(name)}\b", arg):
                if stage not in runs:
                    pytest.fail(f"{command.where}: {name} is used before a command above ran the {stage} stage")
                arg = re.sub(rf"(?<![\w/]){re.escape(name)}\b", str(runs[stage]), arg)
        if re.search(r"\bDIR\b", arg):
            if "last" not in runs:
                pytest.fail(f"{command.where}: DIR is used before a command above made a run directory")
            arg = re.sub(r"\bDIR\b", str(runs["last"]), arg)
        argv.append(arg)
    return argv


@pytest.mark.slow
def test_the_commands_in_the_docs_run_on_tiny_random(tmp_path, monkeypatch, full_smoke_run):
    monkeypatch.chdir(tmp_path)  # anything written to a relative path (outputs/, multirun/) lands here
    runs: dict[str, Path] = {}
    commands = all_commands()
    assert full_smoke_run.command in [command.text for command in commands], \
        "the docs no longer show the full_smoke_run fixture's command: update it"
    for number, command in enumerate(commands):
        check = how_checked(command)
        if check == "skip":
            continue
        if command.text == full_smoke_run.command:  # run once for the suite (tests/test_pipeline.py reads it too)
            runs["full"] = runs["last"] = full_smoke_run.run_dir
            continue
        argv = fill_placeholders(command, runs, tmp_path / f"run-{number}")
        if check == "validate":
            argv[0] = "validate"
        code = cli(argv)
        assert code == 0, f"{command.where}: `{command.text}` exited {code} (ran: lightalign {shlex.join(argv)})"
        for arg in argv:
            if arg.startswith("hydra.run.dir="):  # `run <stage or pipeline> ... hydra.run.dir=...`
                runs[argv[1]] = runs["last"] = Path(arg.split("=", 1)[1])


def transcripts(page: Path) -> list[tuple[int, str, list[str]]]:
    """``$ lightalign ls`` and ``$ lightalign validate`` lines of the plain ``` blocks, each with the lines
    shown under it: ``[(line number, command, shown output), ...]``."""
    found, in_block, lines = [], False, page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_block = not in_block and line.strip() == "```"
            continue
        if in_block and line.startswith(("$ lightalign ls", "$ lightalign validate")):
            shown = []
            for after in lines[number:]:
                if after.startswith(("$ ", "```")):
                    break
                shown.append(after)
            found.append((number, line[2:], shown))
    return found


def test_the_ls_and_validate_transcripts_show_what_the_command_prints(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `data.train=mine.jsonl` must not exist
    checked = 0
    for page in doc_pages():
        for number, shown_command, shown in transcripts(page):
            where = f"{page.relative_to(REPO)}:{number}"
            command, _, grep = shown_command.partition(" | grep ")
            code = cli(shlex.split(command)[1:])
            out, err = capsys.readouterr()
            errors = [line for line in shown if line.startswith("lightalign: error:")]
            if errors:
                assert code == 2 and errors[0] in err.splitlines(), f"{where}: `{shown_command}` printed {err!r}"
                continue
            assert code == 0, f"{where}: `{shown_command}` exited {code}: {err}"
            printed = out.splitlines()
            if grep:
                printed = [line for line in printed if re.search(shlex.split(grep)[0], line)]
            if "..." in shown:  # the rest is left out
                shown, printed = shown[: shown.index("...")], printed[: shown.index("...")]
            assert printed == shown, f"{where}: `{shown_command}` prints something else now"
            checked += 1
    assert checked >= 3


def test_every_relative_link_points_at_an_existing_file_and_heading():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for path, anchor in links(page):
            target = REPO / path if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(REPO)}: {path} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
                broken.append(f"{page.relative_to(REPO)}: {path or page.name}#{anchor}: no such heading")
    assert not broken, "\n".join(broken)
    unlisted = set(pages[1:]) - set(read_on())
    assert not unlisted, f"docs pages missing from the README's Read on list: {sorted(p.name for p in unlisted)}"
