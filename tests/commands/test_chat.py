"""``lightalign chat``: streamed answers, history, /reset and /quit, one-shot from a pipe."""

from __future__ import annotations

import io
import sys

import pytest

from lightalign.cli import main as cli
from lightalign.commands.chat import ChatSession, chat_loop, chat_once
from lightalign.generation import generate_answers
from lightalign.models import load_base_model, load_tokenizer
from lightalign.models.trained import load_model_source, resolve_model_source

TINY = "lightalign:tiny-random"


@pytest.fixture(scope="module")
def session():
    tokenizer = load_tokenizer(TINY)
    return ChatSession(load_base_model(TINY, None), tokenizer, temperature=0.0, max_new_tokens=6)


def test_the_streamed_answer_is_the_greedy_answer(session):
    session.reset()
    streamed = io.StringIO()
    answer = session.reply("What is the capital of Japan?", streamed)
    expected = generate_answers(session.model, session.tokenizer,
                                [[{"role": "user", "content": "What is the capital of Japan?"}]], max_new_tokens=6)
    assert answer == expected[0].text
    assert streamed.getvalue().strip() == answer and streamed.getvalue().endswith("\n")


def test_history_reset_and_quit(session):
    session.reset()
    out = io.StringIO()
    assert chat_loop(session, io.StringIO("first\nsecond\n/reset\nthird\n/quit\nnever\n"), out) == 3
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["third"]  # /reset forgot 1 and 2
    assert "(conversation reset)" in out.getvalue() and "never" not in out.getvalue()
    session.reset()
    assert chat_loop(session, io.StringIO("a\nb\n"), io.StringIO()) == 2  # end of input ends the loop
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]


def test_old_turns_are_dropped_to_fit_the_context(session):
    session.reset()
    session.max_context = 70  # tiny tokenizer: one byte per token
    try:
        for message in ("x" * 20, "y" * 20, "z" * 20):
            session.reply(message, io.StringIO())
    finally:
        session.max_context = 2048
    assert session.history[0]["content"] == "z" * 20  # older exchanges went, the new message stayed


def test_one_shot_needs_a_message(session):
    with pytest.raises(ValueError, match="no message"):
        chat_once(session, io.StringIO("  \n"), io.StringIO())


@pytest.mark.slow
def test_piped_stdin_gets_one_answer_from_the_trained_stage(trained_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 3?\n"))  # not a TTY: one-shot
    assert cli(["chat", str(trained_run), "--temperature", "0", "--max-new-tokens", "8", "--quant", "none"]) == 0
    out = capsys.readouterr().out
    model, tokenizer = load_model_source(resolve_model_source(trained_run), quantization=None)
    tuned = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is 2 + 3?"}]],
                             max_new_tokens=8)[0].text
    assert out.strip() == tuned and "you>" not in out


def test_a_reward_model_is_refused(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("stage: reward\nmodel:\n  name_or_path: lightalign:tiny-random\n")
    assert cli(["chat", str(tmp_path)]) == 2
    assert "is a reward model" in capsys.readouterr().err


def test_a_bad_dense_weights_choice_fails_in_one_line_before_loading(capsys):
    assert cli(["chat", TINY, "--dense-weights", "yes"]) == 2
    err = capsys.readouterr().err
    assert "--dense-weights='yes' is not one of auto, on, off" in err and "loading" not in err
