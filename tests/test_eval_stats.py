"""The judged suites' pure parts: verdict parsing, win rates, LC, Bradley-Terry, bootstrap, data, decontamination."""

import math

import numpy as np
import pytest
from conftest import SHARED_DATA

from synpo.errors import UserError
from synpo.evals import datasets, stats
from synpo.evals.verdicts import parse_alpaca_eval, parse_arena_hard, parse_rating

# ---- verdict parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("m", 1), ("M", 2), (" M ", 2), ("M\n", 2), ("Explanation ...\nm", 1), ("reasons\n M", 2),
    ("", None), (None, None), ("mm", None), ("Model M", None), ("M is better", None), ("The answer: m.", None),
    ("I think both are good, hard to say.", None),
])
def test_parse_alpaca_eval(text, expected):
    assert parse_alpaca_eval(text) == expected


@pytest.mark.parametrize("label", ["A>>B", "A>B", "A=B", "B>A", "B>>A"])
def test_parse_arena_hard_every_label_form(label):
    assert parse_arena_hard(f"My own answer ... My final verdict is: [[{label}]]") == (label, False)
    # the same label twice is still one verdict
    assert parse_arena_hard(f"[[{label}]] so, again, [[{label}]]") == (label, False)


@pytest.mark.parametrize("label", ["B=A", "A<<B", "A<B", "B<A", "B<<A"])
def test_parse_arena_hard_non_canonical_labels_are_unparseable(label):
    # arena-hard-auto v0.1's show_result.py gives these weight 0: they are not verdicts
    assert parse_arena_hard(f"My final verdict is: [[{label}]]") == (None, False)


@pytest.mark.parametrize("text, expected", [
    ("no verdict here", (None, True)),           # no label: ask the judge to continue
    ("", (None, True)),
    (None, (None, True)),
    ("[[A>B]] ... on reflection [[B>A]]", (None, False)),  # conflicting labels: unparseable, no retry
    ("[[AB]]", (None, False)),                  # bracketed but not a label form
    ("[[A>>>B]]", (None, False)),
    ("[A>B]", (None, True)),                    # single brackets are not the format
    ("[[C]]", (None, True)),                    # the character class excludes C: no label at all
])
def test_parse_arena_hard_garbage(text, expected):
    assert parse_arena_hard(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Rating: [[7]]", 7.0), ("Rating: [[9.5]]", 9.5), ("[[10]]", 10.0), ("Rating: [3]", 3.0),
    ("[[2]] and later [[8]]", 2.0), ("Rating: [[0]]", None), ("Rating: [[11]]", None), ("Rating: 7", None),
    ("", None), (None, None), ("[[seven]]", None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


# ---- AlpacaEval win rate and LC -----------------------------------------------------------------


def test_win_rate_counts_draws_half_and_reports_the_standard_error():
    prefs = [2, 2, 1, 1.5, 0, 2]  # 0 and 1.5 are draws
    out = stats.win_rate(prefs)
    values = np.array([1, 1, 0, 0.5, 0.5, 1])
    assert out["win_rate"] == pytest.approx(100 * values.mean())
    assert out["standard_error"] == pytest.approx(100 * values.std(ddof=1) / math.sqrt(6))
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (3, 1, 2, 6)
    with pytest.raises(ValueError):
        stats.win_rate([3])


def _length_only_judgments(rng, n, shift, soft):
    """Preference depends only on the length difference (zero intercept): the longer output wins more."""
    reference = rng.integers(200, 2000, n).astype(float)
    model = np.maximum(10, reference + shift + rng.normal(0, 400, n))
    delta = reference - model
    p_model = 1 / (1 + np.exp(2.0 * np.tanh(delta / delta.std(ddof=1))))
    prefs = 1 + p_model if soft else np.where(rng.random(n) < p_model, 2, 1)
    return prefs, model, reference


@pytest.mark.parametrize("shift, soft", [(600, True), (-600, True), (600, False), (-600, False)])
def test_lc_removes_a_pure_length_preference(shift, soft):
    prefs, model, reference = _length_only_judgments(np.random.default_rng(0), 805, shift, soft)
    wr = stats.win_rate(prefs)["win_rate"]
    lc = stats.length_controlled_win_rate(prefs, model, reference)
    assert abs(wr - 50) > 25  # the raw win rate is far from 50 % (longer model: ~80 %, shorter: ~20 %)
    tolerance = 0.05 if soft else 4.0  # soft labels: the L1 penalty's shrinkage only; hard ones: sampling noise
    assert lc["length_controlled_winrate"] == pytest.approx(50, abs=tolerance)
    assert lc["lc_glm"] == "length_controlled_minimal"
    assert lc["lc_coefficients"]["tanh_std_delta_len"] < -1  # longer model output (negative delta) wins more


def test_lc_keeps_a_quality_difference_that_length_does_not_explain():
    rng = np.random.default_rng(1)
    n = 805
    reference = rng.integers(200, 2000, n).astype(float)
    model = reference + rng.normal(0, 300, n)  # same lengths on average
    prefs = np.where(rng.random(n) < 0.8, 2, 1)  # the model is simply better
    lc = stats.length_controlled_win_rate(prefs, model, reference)["length_controlled_winrate"]
    assert lc == pytest.approx(stats.win_rate(prefs)["win_rate"], abs=3) and lc > 70


def test_lc_with_equal_lengths_and_separable_data_stays_finite():
    lc = stats.length_controlled_win_rate([2] * 10, [100] * 10, [100] * 10)["length_controlled_winrate"]
    assert 99 < lc <= 100
    # 5-fold cross-validation needs 5 judgments (alpaca_eval's fit fails below that)
    assert stats.length_controlled_win_rate([2] * 4, [1] * 4, [2] * 4)["length_controlled_winrate"] is None


# ---- Bradley-Terry and the bootstrap --------------------------------------------------------------


def test_bradley_terry_recovers_known_strengths():
    # strengths 4 : 2 : 1; counts exactly proportional to the BT win probabilities, so the MLE is exact
    battles = ([("A", "B", "model_a")] * 20 + [("A", "B", "model_b")] * 10 + [("B", "C", "model_a")] * 20
               + [("B", "C", "model_b")] * 10 + [("A", "C", "model_a")] * 40 + [("A", "C", "model_b")] * 10)
    elo = stats.bradley_terry(battles, baseline="C")
    step = 400 * math.log10(2)  # a factor 2 in strength
    assert elo["C"] == 1000
    assert elo["B"] == pytest.approx(1000 + step, abs=1e-4)
    assert elo["A"] == pytest.approx(1000 + 2 * step, abs=1e-4)
    assert stats.win_probability(elo["A"], elo["C"]) == pytest.approx(0.8, abs=1e-6)


def test_bradley_terry_two_models_gives_the_win_fraction_with_ties_half():
    battles = [("m", "base", "model_a")] * 30 + [("m", "base", "model_b")] * 10 + [("m", "base", "tie")] * 10
    out = stats.arena_hard_score(battles, "m", "base")
    assert out["score"] == pytest.approx(100 * (30 + 5) / 50, abs=1e-5)
    assert out["battles"] == 50


def test_bootstrap_interval_matches_the_binomial_width_and_is_reproducible():
    rng = np.random.default_rng(0)
    n, p = 2000, 0.3
    battles = [("m", "base", "model_a" if rng.random() < p else "model_b") for _ in range(n)]
    out = stats.arena_hard_score(battles, "m", "base", rounds=200, seed=0)
    wins = sum(b[2] == "model_a" for b in battles) / n
    assert out["score"] == pytest.approx(100 * wins, abs=1e-5)
    half_width = 100 * 1.96 * math.sqrt(wins * (1 - wins) / n)  # normal approximation: ~2.0 points
    assert out["ci_lower"] < out["score"] < out["ci_upper"]
    assert (out["ci_upper"] - out["ci_lower"]) / 2 == pytest.approx(half_width, rel=0.25)
    assert stats.arena_hard_score(battles, "m", "base", rounds=200, seed=0) == out
    boot = [stats.bootstrap_bradley_terry(battles[:200], "base", rounds=5, seed=s)["m"] for s in (0, 0, 1)]
    assert np.array_equal(boot[0], boot[1]) and not np.array_equal(boot[0], boot[2])


def test_bootstrap_of_an_unanimous_record_is_degenerate():
    out = stats.arena_hard_score([("m", "base", "model_b")] * 30, "m", "base", rounds=20)
    assert out["score"] < 0.01 and out["ci_upper"] < 0.01
    assert stats.arena_hard_score([], "m", "base")["score"] is None


# ---- data ------------------------------------------------------------------------------------------


def test_suites_load_with_their_sizes_and_a_fixed_subsample():
    assert len(datasets.load_suite("arena_hard", None)) == 500
    mt = datasets.load_suite("mt_bench", None)
    assert len(mt) == 80 and all(len(r["turns"]) == 2 for r in mt)
    assert {r["category"] for r in mt if r["references"]} == {"math", "reasoning", "coding"}
    a = datasets.load_suite("arena_hard", None, limit=7, seed=3)
    assert a == datasets.load_suite("arena_hard", None, limit=7, seed=3) and len(a) == 7
    assert a != datasets.load_suite("arena_hard", None, limit=7, seed=4)
    assert all(r["baseline"] and isinstance(r["baseline"], str) for r in a)


def test_shipped_copies_are_used_and_alpaca_eval_is_not_shipped(tmp_path):
    assert len(datasets.load_arena_hard(str(tmp_path))) == 500  # an empty data dir falls back to the copies
    with pytest.raises(UserError, match="CC BY-NC 4.0"):
        datasets.load_alpaca_eval(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        datasets.load_suite("mt_bench", str(tmp_path / "nope"))


def test_without_a_data_dir_only_the_shipped_copies_are_read():
    # even where a directory of the full sets sits beside the checkout: synpo never looks there
    assert datasets.search_dirs(None) == [datasets.PACKAGED]
    with pytest.raises(UserError, match="CC BY-NC 4.0"):
        datasets.load_alpaca_eval(None)


@pytest.mark.skipif(not (SHARED_DATA / "alpaca_eval").is_dir(), reason="needs the AlpacaEval set beside the checkout")
def test_alpaca_eval_loads_from_a_data_dir():
    rows = datasets.load_suite("alpaca_eval", str(SHARED_DATA))
    assert len(rows) == 805 and rows[0]["reference_generator"] == "gpt4_1106_preview"


# ---- decontamination against the real evaluation prompts ------------------------------------------------


def test_decontamination_drops_prompts_that_copy_evaluation_prompts():
    from synpo.decontamination import Decontaminator

    arena = datasets.suite_prompts("arena_hard", None)
    mt = datasets.suite_prompts("mt_bench", None)
    decontaminator = Decontaminator(arena + mt)
    check = lambda prompt: decontaminator([prompt])[0] is not None
    long_prompt = next(p for p in arena if len(p.split()) > 60)
    words = long_prompt.split()
    assert check(long_prompt)                                     # verbatim
    assert check(long_prompt.upper() + "!!")                      # normalised: case and punctuation
    assert check("Please help: " + " ".join(words[: len(words) * 3 // 4]))  # a copied part with a prefix
    short = next(p for p in mt if len(p.split()) < 13)
    assert check(short) and not check(short + " Also add a summary table of the key points at the end please.")
    for clean in ["Sort the numbers 5 3 9 in ascending order and explain each step of the procedure you used.",
                  "Write a short poem about the sea at night, in the style of a sailor's song with a chorus."]:
        assert not check(clean)


def test_extreme_lc_changes_are_flagged_as_alpaca_eval_does():
    assert not stats.is_extreme_change(20, 10) and stats.is_extreme_change(20, 9.9)  # min(20 - 20/4, 20 - 10)
    assert not stats.is_extreme_change(50, 62.5) and stats.is_extreme_change(50, 62.6)  # 50 + (100 - 50)/4
