"""synpo's AlpacaEval and Arena-Hard numbers against the official code on the same judgments.

AlpacaEval: the `alpaca_eval` package itself (`get_length_controlled_winrate` with
glm_name="length_controlled_minimal"); skipped when it is not installed (CI installs it).
Arena-Hard: arena-hard-auto v0.1's show_result.py formulas, written out below independently of
synpo's code (pandas resampling with np.random.seed(42), sklearn's unpenalised logistic
regression on duplicated battles, gpt-4-0314 anchored at 1000).
"""

import importlib.metadata
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from synpo.evals import stats

TOLERANCE = 0.05  # points


def _alpaca_eval_glm(monkeypatch, tmp_path):
    """alpaca_eval's glm_winrate module, with two stand-ins that do not touch what is computed:
    `pkg_resources` (gone from recent setuptools; alpaca_eval imports it for version checks) and
    the Hub download of the gamed-baselines table, which the minimal formula does not read."""
    pytest.importorskip("sklearn")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
        monkeypatch.setitem(sys.modules, "pkg_resources", shim)
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    table = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "gamed", "index": range(805), "instruction_difficulty": 0.0}).to_csv(table, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(table))
    return glm


def _judgments(rng, n, length_effect, quality, tie_share, soft):
    """n judgments: the model's output is longer or shorter, the judge likes length by `length_effect`
    and the model by `quality` (logits); a share of ties; soft (weighted) or hard preferences."""
    reference = rng.integers(100, 2500, n)
    model = np.maximum(5, reference + rng.normal(300, 700, n)).astype(int)
    delta = (reference - model) / np.std(reference - model, ddof=1)
    p_model = 1 / (1 + np.exp(-(quality - length_effect * np.tanh(delta))))
    if soft:
        prefs = 1 + p_model
    else:
        prefs = np.where(rng.random(n) < p_model, 2.0, 1.0)
    ties = rng.random(n) < tie_share
    prefs[ties] = rng.choice([0.0, 1.5], ties.sum())  # alpaca_eval writes a draw as 0 or 1.5
    return prefs, model, reference


CASES = {  # name: (n, length effect, quality, tie share, soft)
    "length-biased": (805, 1.5, 0.3, 0.0, False),
    "length-biased soft": (805, 1.5, -0.5, 0.0, True),
    "ties": (300, 0.8, 0.2, 0.3, False),
    "small n": (20, 1.0, 0.5, 0.1, False),
    "small n, strong length effect": (30, 3.0, 0.0, 0.0, False),
    "small n soft": (12, 0.7, 0.0, 0.0, True),
    "weak signal": (805, 0.05, 0.02, 0.05, False),
    "weak signal n=50": (50, 0.1, 0.0, 0.0, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_alpaca_eval_wr_se_and_lc_equal_the_official_package(case, monkeypatch, tmp_path):
    glm = _alpaca_eval_glm(monkeypatch, tmp_path)
    n, length_effect, quality, tie_share, soft = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    prefs, model, reference = _judgments(rng, n, length_effect, quality, tie_share, soft)
    annotations = [{"index": i, "instruction": f"q{i}", "output_1": "r" * int(lr), "output_2": "m" * int(lm),
                    "generator_1": "gpt4_1106_preview", "generator_2": "model", "annotator": "judge",
                    "preference": float(p)} for i, (p, lm, lr) in enumerate(zip(prefs, model, reference))]
    official = glm.get_length_controlled_winrate(annotations, glm_name="length_controlled_minimal",
                                                 save_weights_dir=None, is_warn_extreme_changes=False)
    wr = stats.win_rate(prefs)
    lc = stats.length_controlled_win_rate(prefs, model, reference)
    assert wr["win_rate"] == pytest.approx(official["win_rate"], abs=TOLERANCE)
    assert wr["standard_error"] == pytest.approx(official["standard_error"], abs=TOLERANCE)
    assert (wr["n_wins"], wr["n_wins_base"], wr["n_draws"]) == (official["n_wins"], official["n_wins_base"],
                                                                official["n_draws"])
    assert lc["length_controlled_winrate"] == pytest.approx(official["length_controlled_winrate"], abs=TOLERANCE)


def test_lc_is_exactly_50_when_cross_validation_picks_the_smallest_c(monkeypatch, tmp_path):
    glm = _alpaca_eval_glm(monkeypatch, tmp_path)
    rng = np.random.default_rng(0)
    n = 60
    reference = rng.integers(100, 2500, n)
    model = np.maximum(5, reference + rng.normal(0, 700, n)).astype(int)
    prefs = np.where(rng.random(n) < 0.5, 2.0, 1.0)  # a coin toss: WR 45 here, no length effect
    lc = stats.length_controlled_win_rate(prefs, model, reference)
    official = glm.get_length_controlled_winrate(
        [{"index": i, "output_1": "r" * int(b), "output_2": "m" * int(a), "generator_1": "ref",
          "generator_2": "model", "annotator": "judge", "preference": float(p)}
         for i, (p, a, b) in enumerate(zip(prefs, model, reference))],
        glm_name="length_controlled_minimal", save_weights_dir=None, is_warn_extreme_changes=False)
    assert stats.win_rate(prefs)["win_rate"] == official["win_rate"] == 45.0
    # cross-validation prefers the smallest C, where the L1 penalty zeroes every coefficient
    assert lc["lc_C"] == 1e-4 and lc["lc_coefficients"] == {"tanh_std_delta_len": 0.0, "intercept": 0.0}
    assert lc["length_controlled_winrate"] == 50.0 == official["length_controlled_winrate"]


# ---- Arena-Hard v0.1 ------------------------------------------------------------------------------


def _reference_mle_elo(df, baseline="gpt-4-0314", scale=400, base=10, init=1000):
    """show_result.py's compute_mle_elo: battles duplicated, a tie = one A win + one B win."""
    from sklearn.linear_model import LogisticRegression

    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n, p = df.shape[0], len(models)
    x = np.zeros([n, p])
    x[np.arange(n), models[df["model_a"]]] = +math.log(base)
    x[np.arange(n), models[df["model_b"]]] = -math.log(base)
    y = np.zeros(n)
    y[df["winner"] == "model_a"] = 1.0
    tie = (df["winner"] == "tie").to_numpy().copy()
    tie[len(tie) // 2:] = False
    y[tie] = 1.0
    try:  # scikit-learn >= 1.8 spells "no penalty" as C=inf
        lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    except TypeError:
        lr = LogisticRegression(fit_intercept=False, penalty=None, tol=1e-8)
    lr.fit(x, y)
    elo = scale * lr.coef_[0] + init
    elo += 1000 - elo[models[baseline]]
    return pd.Series(elo, index=models.index)


def _reference_arena_hard(games, model, baseline="gpt-4-0314", rounds=100):
    """show_result.py: battles from (game 1, game 2) labels, MLE score, bootstrap percentiles, win rates."""
    rows = []
    for g1, g2 in games:
        for game, a_is_baseline in ((g1, True), (g2, False)):
            winner_a = {"A=B": "tie", "A>B": "A", "A>>B": "A", "B>A": "B", "B>>A": "B"}.get(game)
            if winner_a is None:
                continue  # any other label: weight 0
            if winner_a == "tie":
                winner = "tie"
            else:
                baseline_won = (winner_a == "A") == a_is_baseline
                winner = "model_a" if baseline_won else "model_b"
            weight = 3 if ">>" in game else 1
            rows += [{"model_a": baseline, "model_b": model, "winner": winner}] * weight
    battles = pd.DataFrame(rows)
    elo = _reference_mle_elo(battles)
    np.random.seed(42)
    boot = pd.DataFrame([_reference_mle_elo(battles.sample(frac=1.0, replace=True)) for _ in range(rounds)])

    def win_rate(elo_model, elo_baseline):
        return round(100 / (1 + 10 ** ((elo_baseline - elo_model) / 400)), 2)

    return {"score": win_rate(elo[model], elo[baseline]), "battles": len(battles),
            "lower": win_rate(np.percentile(boot[model], 2.5), np.percentile(boot[baseline], 2.5)),
            "upper": win_rate(np.percentile(boot[model], 97.5), np.percentile(boot[baseline], 97.5))}


LABELS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]


@pytest.mark.parametrize("n, strength, odd", [(500, 0.6, 0.0), (100, -0.4, 0.1), (40, 0.0, 0.05)])
def test_arena_hard_score_and_interval_equal_show_result_v0_1(n, strength, odd):
    from synpo.evals import arena_hard

    rng = np.random.default_rng(n)

    def label(model_first):  # the model is better by `strength`; ties and strong verdicts mixed in
        z = strength + rng.normal(0, 1)
        if rng.random() < odd:
            return rng.choice(["A<B", "B=A", "A<<B", "A>>>B"])  # not one of the five: unparseable
        model_label = LABELS[::-1][int(np.digitize(z, [-1.2, -0.4, 0.4, 1.2]))]  # B>>A ... A>>B, A = the model
        return model_label if model_first else model_label.translate(str.maketrans("AB", "BA"))

    games = [(label(False), label(True)) for _ in range(n)]
    from synpo.evals.verdicts import ARENA_LABELS

    judgments = [{"games": [{"score": g if g in ARENA_LABELS else None} for g in pair]} for pair in games]
    battles = arena_hard.battles_from(judgments, "model")
    ours = stats.arena_hard_score(battles, "model", "gpt-4-0314")
    official = _reference_arena_hard(games, "model")
    assert ours["battles"] == official["battles"]
    assert ours["score"] == pytest.approx(official["score"], abs=TOLERANCE)
    assert ours["ci_lower"] == pytest.approx(official["lower"], abs=TOLERANCE)
    assert ours["ci_upper"] == pytest.approx(official["upper"], abs=TOLERANCE)
