"""The offline demo task: short factual questions whose answer can be computed from the prompt alone.

Six families, each with two phrasings, e.g.::

    What is the capital of Japan?       -> Tokyo.
    What is 7 + 5?                      -> 12.
    Which is larger, 17 or 23?          -> 23.
    Translate to French: cat            -> Chat.
    What is the opposite of hot?        -> Cold.
    What day comes after Monday?        -> Tuesday.

:func:`parse_question` reads any such prompt (also inside a chat-templated string) back into a
:class:`Question`, which is all the gold judge (:mod:`lightalign.demo.judge`) needs.
:func:`generate_demo` writes the SFT dialogues, held-out prompts and K-wise rankings as JSONL.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lightalign.atomic import build_folder_atomically
from lightalign.paths import lightalign_home


def _table(text: str) -> dict[str, tuple[str, ...]]:
    # Tables are packed as "key:value/value, ..." so that they fit in a few lines.
    rows = (item.split(":") for item in " ".join(text.split()).split(","))
    return {k.strip(): tuple(v.strip() for v in vs.split("/")) for k, vs in rows}


# Capitals that equal their country's name (Mexico City, Singapore, ...) or are disputed are left out:
# they would make a wrong answer look right.
CAPITALS = {
    k: v[0]
    for k, v in _table("""
France:Paris, Japan:Tokyo, Germany:Berlin, Italy:Rome, Spain:Madrid, Portugal:Lisbon, the United
Kingdom:London, Ireland:Dublin, Russia:Moscow, China:Beijing, India:New Delhi, Egypt:Cairo,
Kenya:Nairobi, Nigeria:Abuja, Ghana:Accra, Ethiopia:Addis Ababa, Morocco:Rabat, Canada:Ottawa,
Brazil:Brasília, Argentina:Buenos Aires, Chile:Santiago, Peru:Lima, Colombia:Bogotá, Venezuela:Caracas,
Cuba:Havana, Australia:Canberra, New Zealand:Wellington, Indonesia:Jakarta, Thailand:Bangkok,
Vietnam:Hanoi, the Philippines:Manila, South Korea:Seoul, North Korea:Pyongyang, Pakistan:Islamabad,
Bangladesh:Dhaka, Nepal:Kathmandu, Iran:Tehran, Iraq:Baghdad, Saudi Arabia:Riyadh, Turkey:Ankara,
Greece:Athens, Poland:Warsaw, Austria:Vienna, Hungary:Budapest, the Czech Republic:Prague,
Sweden:Stockholm, Norway:Oslo, Finland:Helsinki, Denmark:Copenhagen, the Netherlands:Amsterdam,
Belgium:Brussels, Switzerland:Bern, Romania:Bucharest, Bulgaria:Sofia, Serbia:Belgrade, Croatia:Zagreb,
Lebanon:Beirut, Syria:Damascus, Jordan:Amman, Afghanistan:Kabul, Iceland:Reykjavik, Jamaica:Kingston,
Uganda:Kampala, Senegal:Dakar, Mali:Bamako, Zimbabwe:Harare, Zambia:Lusaka, Angola:Luanda,
Algeria:Algiers, Libya:Tripoli, Sudan:Khartoum, Ecuador:Quito, Uruguay:Montevideo, Malaysia:Kuala
Lumpur, Cambodia:Phnom Penh, Qatar:Doha, Estonia:Tallinn, Latvia:Riga, Lithuania:Vilnius,
Slovakia:Bratislava, Slovenia:Ljubljana, Albania:Tirana, Armenia:Yerevan, Azerbaijan:Baku
""").items()
}
# English -> (French, Spanish); words whose translation equals the English word are left out.
WORDS = _table("""
cat:chat/gato, dog:chien/perro, house:maison/casa, water:eau/agua, bread:pain/pan, apple:pomme/manzana,
book:livre/libro, tree:arbre/árbol, sun:soleil/sol, moon:lune/luna, sea:mer/mar, red:rouge/rojo,
green:vert/verde, black:noir/negro, white:blanc/blanco, small:petit/pequeño, friend:ami/amigo,
day:jour/día, night:nuit/noche, cheese:fromage/queso, milk:lait/leche, horse:cheval/caballo,
bird:oiseau/pájaro, fish:poisson/pez, car:voiture/coche, school:école/escuela, city:ville/ciudad,
door:porte/puerta, window:fenêtre/ventana, head:tête/cabeza, king:roi/rey, woman:femme/mujer,
man:homme/hombre, child:enfant/niño, father:père/padre, mother:mère/madre, flower:fleur/flor,
yellow:jaune/amarillo, blue:bleu/azul, chair:chaise/silla, rain:pluie/lluvia, snow:neige/nieve,
fire:feu/fuego, girl:fille/chica, boy:garçon/chico, good:bon/bueno, new:nouveau/nuevo, old:vieux/viejo,
sky:ciel/cielo, star:étoile/estrella, mountain:montagne/montaña, kitchen:cuisine/cocina,
money:argent/dinero
""")
LANGUAGES = ("French", "Spanish")
_PAIRS = [
    p.split("/")
    for p in (
        "hot/cold big/small up/down fast/slow happy/sad day/night light/dark open/closed early/late full/empty "
        "hard/soft rich/poor strong/weak long/short high/low wet/dry clean/dirty loud/quiet thick/thin win/lose "
        "buy/sell push/pull true/false love/hate left/right alive/dead inside/outside above/below north/south "
        "east/west first/last good/bad remember/forget question/answer friend/enemy"
    ).split()
]
OPPOSITES = {a: b for x, y in _PAIRS for a, b in ((x, y), (y, x))}
SEQUENCES = {
    "day": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "month": "January February March April May June July August September October November December".split(),
}


@dataclass(frozen=True)
class Question:
    """A parsed demo prompt.

    Attributes:
        family: ``capital``, ``arithmetic``, ``compare``, ``translate``, ``opposite`` or ``sequence``.
        prompt: The question as asked.
        answer: The correct answer without punctuation, e.g. ``"Tokyo"``.
        template: A verbose but correct answer with ``{}`` for the answer, e.g.
            ``"The capital of Japan is {}."``.
        candidates: The answers of the family the judge looks for in a response (the first one named
            must be ``answer``); empty for arithmetic, where every number is a candidate.
        excluded: Numbers that do not count as an answer (the operands of an arithmetic question).
    """

    family: str
    prompt: str
    answer: str
    template: str
    candidates: tuple[str, ...] = ()
    excluded: frozenset[str] = frozenset()

    def verbose(self, answer: str | None = None) -> str:
        """``template`` filled with ``answer`` (default: the right one), lower-cased where a sentence wants it."""
        answer = self.answer if answer is None else answer
        return self.template.format(answer.lower() if self.family in ("translate", "opposite") else answer)


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
_OP_WORDS = {"+": "plus", "-": "minus", "×": "times"}
_PATTERNS = [
    (family, re.compile(p))
    for family, p in [
        ("capital", r"(?:What is the capital of|Name the capital city of) (?:the )?(?P<x>[A-Z][A-Za-z .]*?)[?.]"),
        ("arithmetic", r"(?:What is|Compute) (?P<a>\d+) (?P<op>[-+×]) (?P<b>\d+)[?.]"),
        ("compare", r"Which is (?P<x>larger|smaller), (?P<a>\d+) or (?P<b>\d+)\?"),
        ("translate", r"Translate to (?P<lang>French|Spanish): (?P<x>[a-z]+)"),
        ("translate", r"How do you say (?P<x>[a-z]+) in (?P<lang>French|Spanish)\?"),
        ("opposite", r"(?:What is the opposite of|Give the antonym of) (?P<x>[a-z]+)[?.]"),
        ("sequence", r"What (?P<kind>day|month) comes (?P<dir>after|before) (?P<x>[A-Z][a-z]+)\?"),
    ]
]


def parse_question(prompt: str) -> Question:
    """Read a demo prompt back into a :class:`Question`.

    The question may sit inside a longer text (a chat template, a few-shot prompt): the last demo
    question in it counts.

    Raises:
        ValueError: If ``prompt`` holds no demo question (or names an unknown country or word).
    """
    found = [(m.start(), family, m) for family, pattern in _PATTERNS for m in pattern.finditer(prompt)]
    if not found:
        raise ValueError(f"not a demo prompt: {prompt[:80]!r}")
    _, family, m = max(found, key=lambda item: item[0])
    g, q = m.groupdict(), m.group(0)
    try:
        if family == "capital":
            country = g["x"] if g["x"] in CAPITALS else f"the {g['x']}"
            cap = CAPITALS[country]
            return Question(family, q, cap, f"The capital of {country} is {{}}.", tuple(CAPITALS.values()))
        if family == "arithmetic":
            a, op, b = int(g["a"]), g["op"], int(g["b"])
            return Question(
                family,
                q,
                str(_OPS[op](a, b)),
                f"{a} {_OP_WORDS[op]} {b} equals {{}}.",
                excluded=frozenset({str(a), str(b)}) - {str(_OPS[op](a, b))},
            )
        if family == "compare":
            a, b = int(g["a"]), int(g["b"])
            best = max(a, b) if g["x"] == "larger" else min(a, b)
            return Question(family, q, str(best), f"The {g['x']} number is {{}}.", (str(a), str(b)))
        if family == "translate":
            column = LANGUAGES.index(g["lang"])
            words = tuple(w[column].capitalize() for w in WORDS.values())
            answer = WORDS[g["x"]][column].capitalize()
            return Question(family, q, answer, f"In {g['lang']}, {g['x']} is {{}}.", words)
        if family == "opposite":
            cands = tuple(w.capitalize() for w in OPPOSITES if w != g["x"])
            answer = OPPOSITES[g["x"]].capitalize()
            return Question(family, q, answer, f"The opposite of {g['x']} is {{}}.", cands)
        seq = SEQUENCES[g["kind"]]
        i = seq.index(g["x"]) + (1 if g["dir"] == "after" else -1)
        cands = tuple(x for x in seq if x != g["x"])
        return Question(family, q, seq[i % len(seq)], f"The {g['kind']} {g['dir']} {g['x']} is {{}}.", cands)
    except (KeyError, ValueError) as err:  # an unknown country/word/day, or an unknown sequence item
        raise ValueError(f"not a demo prompt (unknown {err}): {prompt[:80]!r}") from None


def reference_answer(prompt: str) -> str:
    """The concise correct answer to a demo prompt, e.g. ``"Tokyo."``; it scores 1.0 with the judge.

    Raises:
        ValueError: If ``prompt`` is not a demo prompt.
    """
    return parse_question(prompt).answer + "."


def _all_prompts(rng: random.Random) -> dict[str, list[str]]:
    """Every demo prompt by family, each fact asked in one randomly chosen phrasing, shuffled."""
    pick = rng.choice
    capitals = [pick(["What is the capital of {}?", "Name the capital city of {}."]).format(c) for c in CAPITALS]
    # Operands never equal the result, so that "10 - 5 = 6" cannot pass for "5" (see Question.excluded).
    arithmetic = [
        pick(["What is {} {} {}?", "Compute {} {} {}."]).format(a, op, b)
        for op, (lo, hi) in (("+", (1, 20)), ("-", (1, 20)), ("×", (2, 9)))
        for a in range(lo, hi + 1)
        for b in range(lo, hi + 1)
        if str(_OPS[op](a, b)) not in (str(a), str(b)) and _OPS[op](a, b) >= 0
    ]
    compare = [
        f"Which is {pick(['larger', 'smaller'])}, {a} or {b}?" for a in range(1, 100) for b in range(1, 100) if a != b
    ]
    translate = [
        pick(["Translate to {1}: {0}", "How do you say {0} in {1}?"]).format(w, lang)
        for w in WORDS
        for lang in LANGUAGES
    ]
    opposite = [pick(["What is the opposite of {}?", "Give the antonym of {}."]).format(w) for w in OPPOSITES]
    sequence = [
        f"What {kind} comes {d} {x}?" for kind, seq in SEQUENCES.items() for x in seq for d in ("after", "before")
    ]
    families = {
        "capital": capitals,
        "arithmetic": arithmetic,
        "compare": compare,
        "translate": translate,
        "opposite": opposite,
        "sequence": sequence,
    }
    for prompts in families.values():
        rng.shuffle(prompts)
    return families


# Boilerplate that real assistants append; the judge's conciseness term makes it cost.
CHATTER = (
    "I hope this helps! Let me know if you have any other questions.",
    "Is there anything else I can help you with?",
    "Feel free to ask if you need more help.",
)
# Fractions of SFT answers that are a full sentence / end with chatter. Chatter is the most common single
# form, so the SFT model's greedy answers keep it: the preference stages have something to remove.
SFT_VERBOSE, SFT_CHATTY = 0.2, 0.5


def _take(pools: dict[str, list[str]], n: int) -> list[str]:
    """Take ``n`` prompts round-robin over the families (so each split is balanced), removing them."""
    out: list[str] = []
    while len(out) < n and any(pools.values()):
        for prompts in pools.values():
            if prompts and len(out) < n:
                out.append(prompts.pop())
    return out


def _candidates(q: Question, rng: random.Random) -> list[str]:
    """Answers of graded quality to one question, for rankings: correct or wrong, concise or not."""
    a = q.answer
    if q.candidates:
        wrong = rng.choice([c for c in q.candidates if c != a])
    else:  # a near miss, never negative
        delta = rng.choice([1, 2, 10])
        wrong = str(int(a) - delta if int(a) >= delta and rng.random() < 0.5 else int(a) + delta)
    return [
        f"{a}.",
        q.verbose(),
        f"{a}. {a}. {a}.",
        f"{a}. {CHATTER[0]}",
        f"{q.verbose()} {CHATTER[1]}",
        f"{wrong}.",
        f"{wrong}. {CHATTER[0]}",  # chatter costs a wrong answer too: it is the form, not the content, that ranks
        q.verbose(wrong),
        f"{wrong} or {a}.",
    ]


def generate_demo(
    out_dir: Path, seed: int = 0, n_sft: int = 400, n_eval: int = 40, n_heldout: int = 40, n_rank: int = 200, k: int = 4
) -> dict[str, Path]:
    """Write the demo data set as JSONL files in ``out_dir``; the same seed gives byte-identical files.

    Held-out prompts and eval dialogues are disjoint from each other and from everything else; SFT
    dialogues and ranking prompts are drawn independently from the rest (they may share prompts, as
    each feeds a different stage). SFT answers are all correct, but like real demonstrations only some are
    concise: 20% are a full sentence and 50% end with chatty boilerplate (``SFT_VERBOSE``, ``SFT_CHATTY``), so
    SFT teaches the task and only part of the form; the rankings then reward conciseness, which is what
    reward modelling, PPO and DPO can add on top of SFT.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Seed of every random choice.
        n_sft: SFT dialogues (``sft.jsonl``).
        n_eval: Held-out dialogues for the SFT eval loss (``eval.jsonl``).
        n_heldout: Held-out prompts for generation and judging (``prompts.jsonl``).
        n_rank: Prompts with ``k`` ranked answers each (``rankings.jsonl``), and from them every
            ``k * (k - 1) / 2`` chosen/rejected pair (``pairs.jsonl``).
        k: Answers per ranking, 2 to 6; they never tie under the gold judge.

    Returns:
        The file paths keyed by ``"sft"``, ``"eval"``, ``"prompts"``, ``"rankings"``, ``"pairs"``.
    """
    from lightalign.demo.judge import gold_judge  # the judge imports this module

    if not 2 <= k <= 6:  # the 9 answers of _candidates have at least 6 distinct scores
        raise ValueError(f"k must be between 2 and 6, got {k}")
    rng = random.Random(seed)
    pools = _all_prompts(rng)
    heldout, eval_prompts = _take(pools, n_heldout), _take(pools, n_eval)
    # SFT and rankings each get their own order of the remaining prompts: they may share some, not all.
    train_pools = {f: rng.sample(p, len(p)) for f, p in pools.items()}
    sft_prompts, rank_prompts = _take(pools, n_sft), _take(train_pools, n_rank)

    def dialogue(prompt: str) -> dict:
        q = parse_question(prompt)
        draw = rng.random()
        if draw < SFT_VERBOSE:
            answer = q.verbose()
        elif draw < SFT_VERBOSE + SFT_CHATTY:
            answer = f"{q.answer}. {CHATTER[0]}"  # one habit, as one labeler's would be
        else:
            answer = f"{q.answer}."
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}

    rankings, pairs = [], []
    for prompt in rank_prompts:
        pool = _candidates(parse_question(prompt), rng)
        rng.shuffle(pool)
        scored: dict[float, str] = {}
        for answer in pool:  # keep the first k answers whose scores differ: the reward stage rejects ties
            if len(scored) < k:
                scored.setdefault(round(gold_judge(prompt, answer), 6), answer)
        responses = list(scored.values())
        ranking = sorted(range(len(responses)), key=lambda i: -gold_judge(prompt, responses[i]))
        rankings.append({"prompt": prompt, "responses": responses, "ranking": ranking})
        pairs += [
            {"prompt": prompt, "chosen": responses[i], "rejected": responses[j]}
            for n, i in enumerate(ranking)
            for j in ranking[n + 1 :]
        ]
    rows = {
        "sft": [dialogue(p) for p in sft_prompts],
        "eval": [dialogue(p) for p in eval_prompts],
        "prompts": [{"prompt": p} for p in heldout],
        "rankings": rankings,
        "pairs": pairs,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in rows.items():
        paths[name] = out_dir / f"{name}.jsonl"
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        paths[name].write_text(text, encoding="utf-8")
    return paths


def ensure_demo_data(root: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate the demo data set once (atomically, safe when several processes do it at once) and return its paths.

    Args:
        root: Target folder; default ``$LIGHTALIGN_HOME/data/demo-v4-seed{seed}``.
        seed: Seed passed to :func:`generate_demo`.
    """
    root = Path(root) if root is not None else lightalign_home() / "data" / f"demo-v4-seed{seed}"
    names = ("sft", "eval", "prompts", "rankings", "pairs")
    if not root.is_dir():
        build_folder_atomically(root, lambda folder: generate_demo(folder, seed=seed))
    return {name: root / f"{name}.jsonl" for name in names}
