"""The statistics behind the judged suites: numpy, and scikit-learn for AlpacaEval's LC.

AlpacaEval (alpaca_eval's `metrics/helpers.py` and `metrics/glm_winrate.py`)
  A preference is in [1, 2]: 1 = the reference (output_1) wins, 2 = the evaluated model
  (output_2) wins, 1.5 (or 0) = a draw; a weighted judge gives values in between. WR =
  mean(preference - 1) x 100 and its standard error is the sample standard error of the same
  values (ddof 1), as `describe_head2head` reports.

  LC fits alpaca_eval's length-controlled GLM
      logit P(model wins) = θ + φ·tanh(Δ / sd(Δ)) [+ ψ·difficulty_i],   Δ = len(reference) - len(model)
  on the judgments (soft labels) and predicts every instruction at Δ = 0; LC is the mean
  prediction x 100. synpo fits the `length_controlled_minimal` formula (no instruction-difficulty
  term: alpaca_eval's difficulty table and its "gamed" baselines live on the Hugging Face Hub)
  exactly as alpaca_eval fits it: L1-penalised logistic regression (liblinear, no separate
  intercept, so θ is penalised too, random_state 123), C chosen from logspace(-4, 4, 10) by
  5-fold GroupKFold cross-validation on the soft log loss, then refit on all judgments. When the
  chosen C is small enough that every coefficient is 0, LC is exactly 50. This is not the LC of
  alpaca_eval's default `length_controlled_v1` (the official backend's, and the leaderboard's);
  the two are named apart everywhere (`lc_glm`).

Arena-Hard v0.1 (arena-hard-auto's `show_result.py` of v0.1)
  Each judgment is a battle (model_a, model_b, winner); a strong verdict (A>>B) counts 3 times.
  Bradley-Terry scores are the MLE of logit P(a beats b) = ln(10)/400 · (elo_a - elo_b), ties
  counted as half a win each, anchored so that the baseline has 1000; the reported score is the
  win probability against the baseline, and the 95 % interval comes from percentiles 2.5 / 97.5
  of the same fit on battles resampled with replacement (100 rounds, numpy's legacy generator
  seeded 42 and drawn as pandas' `sample(frac=1, replace=True)` draws, so the resamples are the
  official ones).
"""

from __future__ import annotations

import math

import numpy as np

# ---- logistic regression ---------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, ridge: float = 1e-6,
                 fixed_zero: list[int] = (), max_iter: int = 100) -> np.ndarray:
    """Coefficients of logit P(y=1) = x @ w (no intercept unless x has a column of ones).

    `y` may be soft (probabilities in [0, 1]); `weights` weight rows; coefficients listed in
    `fixed_zero` stay 0 (an anchor). Newton-Raphson on the (ridge-penalised) log-likelihood.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w_rows = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    free = np.array([j for j in range(x.shape[1]) if j not in set(fixed_zero)], dtype=int)
    xf = x[:, free]
    coef = np.zeros(len(free))

    def loglik(c):
        z = xf @ c
        return float(np.sum(w_rows * (y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z)))
                     - 0.5 * ridge * c @ c)

    current = loglik(coef)
    for _ in range(max_iter):
        p = _sigmoid(xf @ coef)
        grad = xf.T @ (w_rows * (y - p)) - ridge * coef
        hess = (xf * (w_rows * p * (1 - p))[:, None]).T @ xf + ridge * np.eye(len(free))
        step = np.linalg.solve(hess, grad)
        # step halving: Newton can overshoot where the likelihood is flat (near-separable data)
        for _ in range(30):
            candidate = loglik(coef + step)
            if candidate >= current - 1e-12:
                break
            step = step / 2
        coef, current = coef + step, candidate
        if np.max(np.abs(step)) < 1e-10:
            break
    out = np.zeros(x.shape[1])
    out[free] = coef
    return out


# ---- AlpacaEval --------------------------------------------------------------------------


def _as_preferences(preferences) -> np.ndarray:
    p = np.asarray([1.5 if v == 0 else v for v in preferences], dtype=float)
    if np.any((p < 1) | (p > 2)):
        raise ValueError("AlpacaEval preferences must be in [1, 2] (or 0 for a draw)")
    return p


def win_rate(preferences) -> dict:
    """alpaca_eval's head-to-head description: win rate (x100), its standard error, counts."""
    p = _as_preferences(preferences) - 1.0
    n = len(p)
    if n == 0:
        return {"win_rate": None, "standard_error": None, "discrete_win_rate": None,
                "n_wins": 0, "n_wins_base": 0, "n_draws": 0, "n_total": 0}
    se = float(p.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else None
    rounded = np.where(p == 0.5, 0.5, np.round(p))
    return {"win_rate": float(p.mean() * 100), "standard_error": se,
            "discrete_win_rate": float(rounded.mean() * 100),
            "n_wins": int((p > 0.5).sum()), "n_wins_base": int((p < 0.5).sum()), "n_draws": int((p == 0.5).sum()),
            "n_total": n}


LC_GLM = "length_controlled_minimal"
LC_CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)'s grid, as alpaca_eval leaves it
LC_FOLDS = 5
LC_RANDOM_STATE = 123  # alpaca_eval's


def _l1_logistic(c: float):
    """alpaca_eval's GLM: L1, liblinear, no separate intercept (the intercept column is penalised too)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    # scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1 (the same liblinear L1 fit)
    version = tuple(int(v) for v in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=c, solver="liblinear", fit_intercept=False, dual=False,
                              random_state=LC_RANDOM_STATE, **l1)


def _soft_log_loss(p_true: np.ndarray, p_pred: np.ndarray) -> float:
    """alpaca_eval's logloss_continuous: the mean log loss against soft labels (clipped at 1e-15)."""
    p_pred = np.clip(p_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean(p_true * np.log(p_pred) + (1 - p_true) * np.log(1 - p_pred)))


def length_controlled_win_rate(preferences, model_lengths, reference_lengths) -> dict:
    """LC win rate (x100) by the `length_controlled_minimal` GLM; see the module docstring.

    As alpaca_eval's fit_LogisticRegressionCV with soft labels: each judgment enters twice, once
    with label 1 weighted by p and once with label 0 weighted by 1 - p (a group, so both copies
    fall in the same fold); C is the grid value with the best summed held-out log loss over
    5-fold GroupKFold, then the model is refit on all judgments with that C.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GroupKFold

    p = _as_preferences(preferences) - 1.0
    n = len(p)
    if n < LC_FOLDS:  # 5-fold cross-validation needs 5 judgments; alpaca_eval fails below that
        return {"length_controlled_winrate": None, "lc_glm": LC_GLM, "lc_coefficients": None, "lc_C": None}
    delta = np.asarray(reference_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    sd = delta.std(ddof=1)
    std_delta = delta / sd if sd > 0 else np.zeros_like(delta)
    x = np.column_stack([np.tanh(std_delta), np.ones_like(delta)])  # φ, θ (`not_gamed_baseline`)
    x2, y2 = np.vstack([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    w2, groups = np.concatenate([p, 1 - p]), np.concatenate([np.arange(n), np.arange(n)])
    soft2 = np.concatenate([p, p])  # the label each row's prediction is scored against
    folds = list(GroupKFold(n_splits=LC_FOLDS).split(x2, y2, groups))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # alpaca_eval's fits stop at the same 100 iterations
        phi, theta, best = _cross_validated_fit(x2, y2, w2, soft2, folds)
    lc = float(_sigmoid(np.array([theta]))[0] * 100)  # every instruction at Δ = 0
    return {"length_controlled_winrate": lc, "lc_glm": LC_GLM, "lc_C": float(LC_CS[best]),
            "lc_coefficients": {"tanh_std_delta_len": float(phi), "intercept": float(theta)}}


def _cross_validated_fit(x2, y2, w2, soft2, folds) -> tuple[float, float, int]:
    losses = []
    for c in LC_CS:
        total = 0.0
        for train, test in folds:
            model = _l1_logistic(c).fit(x2[train], y2[train], sample_weight=w2[train])
            total += _soft_log_loss(soft2[test], model.predict_proba(x2[test])[:, 1])
        losses.append(total)
    best = int(np.argmin(losses))  # the first of equal scores, as LogisticRegressionCV's argmax
    phi, theta = _l1_logistic(LC_CS[best]).fit(x2, y2, sample_weight=w2).coef_[0]
    return phi, theta, best


def is_extreme_change(win_rate: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """alpaca_eval's warning that LC moved implausibly far from WR (a sign the GLM fit failed,
    e.g. on a few judgments that length separates perfectly)."""
    too_small = lc < min(win_rate - win_rate / rel_diff, win_rate - abs_diff)
    too_large = lc > max(win_rate + (100 - win_rate) / rel_diff, win_rate + abs_diff)
    return too_small or too_large


# ---- Bradley-Terry ------------------------------------------------------------------------

SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0
STRONG_WEIGHT = 3  # arena-hard-auto counts a strong verdict (A>>B) as three battles


def bradley_terry(battles: list[tuple[str, str, str]], baseline: str, weights=None) -> dict[str, float]:
    """Elo-scale Bradley-Terry scores from (model_a, model_b, winner) battles.

    winner is "model_a", "model_b" or "tie" (half a win each). The baseline is anchored at 1000.
    """
    models = sorted({a for a, _, _ in battles} | {b for _, b, _ in battles})
    if baseline not in models:
        raise ValueError(f"the baseline {baseline} is in no battle")
    index = {m: i for i, m in enumerate(models)}
    n = len(battles)
    x = np.zeros((n, len(models)))
    y = np.zeros(n)
    rows = np.arange(n)
    x[rows, [index[a] for a, _, _ in battles]] = math.log(BASE)
    x[rows, [index[b] for _, b, _ in battles]] = -math.log(BASE)
    for i, (_, _, winner) in enumerate(battles):
        y[i] = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}[winner]
    coef = fit_logistic(x, y, weights=weights, fixed_zero=[index[baseline]])
    return {m: float(SCALE * coef[index[m]] + INIT_RATING) for m in models}


def win_probability(elo: float, baseline_elo: float) -> float:
    """P(a model with `elo` beats the baseline) under the Elo-scale BT model."""
    return 1.0 / (1.0 + BASE ** ((baseline_elo - elo) / SCALE))


BOOTSTRAP_SEED = 42  # show_result.py's np.random.seed(42)


def bootstrap_bradley_terry(battles: list[tuple[str, str, str]], baseline: str, rounds: int = 100,
                            seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """BT scores of `rounds` resamples (with replacement) of the battles: {model: array of elo}."""
    rng = np.random.RandomState(seed)
    n = len(battles)
    models = sorted({a for a, _, _ in battles} | {b for _, b, _ in battles})
    out = {m: np.empty(rounds) for m in models}
    for r in range(rounds):
        counts = np.bincount(rng.choice(n, size=n, replace=True), minlength=n)  # resample = weight by multiplicity
        keep = counts > 0
        sample = [b for b, k in zip(battles, keep) if k]
        present = {a for a, _, _ in sample} | {b for _, b, _ in sample}
        scores = bradley_terry(sample, baseline, weights=counts[keep]) if baseline in present else {}
        for m in models:
            out[m][r] = scores.get(m, np.nan)
    return out


def arena_hard_score(battles: list[tuple[str, str, str]], model: str, baseline: str, rounds: int = 100,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """Win rate (x100) of `model` against `baseline` with its 95 % bootstrap interval."""
    if not battles:
        return {"score": None, "ci_lower": None, "ci_upper": None, "elo": None, "battles": 0}
    elo = bradley_terry(battles, baseline)
    boot = bootstrap_bradley_terry(battles, baseline, rounds=rounds, seed=seed)
    deltas = boot[model] - boot[baseline]
    deltas = deltas[~np.isnan(deltas)]
    lower, upper = np.percentile(deltas, [2.5, 97.5])
    return {"score": 100 * win_probability(elo[model], elo[baseline]),
            "ci_lower": 100 * win_probability(float(lower), 0.0),
            "ci_upper": 100 * win_probability(float(upper), 0.0),
            "elo": elo[model], "battles": len(battles)}
