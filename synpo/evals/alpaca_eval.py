"""AlpacaEval 2: the model against the gpt4_1106_preview reference outputs, judged pairwise.

Builtin backend: the 805 instructions (or a fixed-seed subsample, `eval.limit`), the model's
outputs written as alpaca_eval's `model_outputs.json` (with the matching `reference_outputs.json`,
so `alpaca_eval --model_outputs ... --reference_outputs ...` can be run on them too), one
judgment per instruction with the weighted_alpaca_eval_gpt4_turbo prompt at temperature 0, the
two outputs' order drawn per instruction from a fixed seed. The judge is asked for the top 5
logprobs of its first token and the preference is weighted as alpaca_eval's default annotator
(weighted_alpaca_eval_gpt4_turbo) weights it: 2 - P(m) / (P(m) + P(M)), in [1, 2]. A server
that returns no logprobs gets the hard verdict of the reply's letter m / M instead, and the
annotation records which (`preference_kind`: weighted / hard); the metrics count both. An
output identical to the reference is a draw (1.5) without a request, as in alpaca_eval. Metrics:
WR with its standard error, and LC from the `length_controlled_minimal` GLM (no
instruction-difficulty term: see synpo.evals.stats), headline `lc_win_rate_minimal`.
Unparseable and failed judgments are counted and left out of WR and LC.

Official backend (`eval.alpaca_eval_backend: official`): the same outputs are handed to the
`alpaca_eval` package, which judges with its own annotator config and computes its own LC with
its default `length_controlled_v1` GLM, headline `lc_win_rate_v1`: a different number, never
compared with the builtin one.
"""

from __future__ import annotations

import random
from pathlib import Path

from synpo.engines.base import Request
from synpo.evals import stats
from synpo.evals.datasets import load_suite
from synpo.evals.inputs import SuiteInputs
from synpo.evals.judge import Judge, Reply, Tally, generate_answers, suite_max_tokens
from synpo.evals.verdicts import parse_alpaca_eval, weighted_alpaca_eval
from synpo.io import write_json, write_jsonl
from synpo.progress import log
from synpo.recipe import EvalConfig
from synpo.templates import render

JUDGE_MAX_TOKENS = 16  # the official annotator reads 1 token; a little room for a chatty open judge
TOP_LOGPROBS = 5  # weighted_alpaca_eval_gpt4_turbo's setting
LC_V1 = "length_controlled_v1"  # alpaca_eval's default GLM: the official backend's LC


def run(inputs: SuiteInputs, engine, out_dir: Path, work: Path, make_judge) -> dict:
    cfg, generator = inputs.eval, inputs.model_name
    if cfg.alpaca_eval_backend == "official":
        _official_package()  # fail before generating anything
    rows = load_suite("alpaca_eval", cfg.data_dir, cfg.limit, inputs.seed)
    requests = [Request(r["id"], [{"role": "user", "content": r["instruction"]}]) for r in rows]
    outputs = generate_answers(engine, requests, inputs, work / "outputs", desc="alpaca_eval: answers")
    model_outputs = [{"dataset": r["dataset"], "instruction": r["instruction"], "output": out, "generator": generator}
                     for r, out in zip(rows, outputs)]
    reference_outputs = [{"dataset": r["dataset"], "instruction": r["instruction"], "output": r["reference"],
                          "generator": r["reference_generator"]} for r in rows]
    write_json(out_dir / "model_outputs.json", model_outputs)
    write_json(out_dir / "reference_outputs.json", reference_outputs)
    if cfg.alpaca_eval_backend == "official":
        return run_official(cfg, out_dir, generator)

    judge = make_judge()
    try:
        annotations, tally = judge_outputs(judge, rows, outputs, generator, inputs.seed,
                                           suite_max_tokens(cfg, JUDGE_MAX_TOKENS))
    finally:
        judge.close()
    write_jsonl(out_dir / "annotations.jsonl", annotations)
    tally.check(cfg.max_failed_judgments, "alpaca_eval")
    return metrics_from(annotations, tally, judge_name=judge.name)


def swapped(seed: int, item_id: str) -> bool:
    """Whether the model's output is shown first (as m): drawn per instruction from a fixed seed."""
    return random.Random(f"{seed}:alpaca_eval-order:{item_id}").random() < 0.5


def judge_outputs(judge: Judge, rows: list[dict], outputs: list[str], generator: str, seed: int,
                  max_tokens: int) -> tuple[list[dict], Tally]:
    """One judgment per instruction; annotations in alpaca_eval's format (output_1 = reference)."""
    system = render("judge_alpaca_eval_system")
    conversations = []
    for r, out in zip(rows, outputs):
        if out == r["reference"]:
            continue  # alpaca_eval does not ask about identical outputs: a draw (1.5)
        first, second = (out, r["reference"]) if swapped(seed, r["id"]) else (r["reference"], out)
        conversations.append((r["id"], [{"role": "system", "content": system},
                                        {"role": "user", "content": render("judge_alpaca_eval",
                                                                           instruction=r["instruction"],
                                                                           output_1=first, output_2=second)}]))
    replies = judge.ask(conversations, max_tokens, desc="alpaca_eval: judge", top_logprobs=TOP_LOGPROBS)
    by_id = {reply.id: reply for reply in replies}
    tally = Tally()
    annotations = []
    for r, out in zip(rows, outputs):
        is_swapped = swapped(seed, r["id"])
        if r["id"] in by_id:
            reply = by_id[r["id"]]
            shown, kind = judged_preference(reply)
            status = tally.add(reply, shown)
        else:
            reply, shown, kind = Reply(r["id"], ""), 1.5, "identical"
            status = tally.add(reply, shown, requests=0)
        # alpaca_eval's preference: 1 = output_1 (the reference) wins, 2 = output_2 (the model) wins;
        # shown in swapped order it is 3 - x, as alpaca_eval un-swaps (weighted values included)
        preference = None if shown is None else (3 - shown if is_swapped else shown)
        annotations.append({"id": r["id"], "instruction": r["instruction"], "dataset": r["dataset"],
                            "output_1": r["reference"], "generator_1": r["reference_generator"],
                            "output_2": out, "generator_2": generator, "annotator": judge.name,
                            "is_swapped": is_swapped, "preference": preference,
                            "preference_kind": kind if shown is not None else None, "status": status,
                            "raw_completion": reply.text, "error": reply.error})
    return annotations, tally


def judged_preference(reply) -> tuple[float | None, str | None]:
    """(preference of the order shown, "weighted" or "hard"): weighted by the first token's logprobs
    when the server returned them, else the hard m / M verdict of the text."""
    if reply.text is None:
        return None, None
    if reply.top_logprobs:
        return weighted_alpaca_eval(reply.top_logprobs), "weighted"
    return parse_alpaca_eval(reply.text), "hard"


def metrics_from(annotations: list[dict], tally: Tally, judge_name: str) -> dict:
    judged = [a for a in annotations if a["preference"] is not None]
    prefs = [a["preference"] for a in judged]
    wr = stats.win_rate(prefs)
    lc = stats.length_controlled_win_rate(prefs, [len(a["output_2"]) for a in judged],
                                          [len(a["output_1"]) for a in judged])
    n = len(annotations)
    extreme = (wr["win_rate"] is not None and lc["length_controlled_winrate"] is not None
               and stats.is_extreme_change(wr["win_rate"], lc["length_controlled_winrate"]))
    if extreme:
        log(f"[yellow]alpaca_eval: LC {lc['length_controlled_winrate']:.1f} % is very different from WR "
            f"{wr['win_rate']:.1f} % over {len(judged)} judgments: the length GLM may have failed (few judgments?)")
    kinds = [a["preference_kind"] for a in judged if a["preference_kind"] != "identical"]
    metrics = {
        **wr, **lc, "lc_extreme_change": extreme,
        "preferences": ("weighted" if set(kinds) == {"weighted"} else "hard" if set(kinds) == {"hard"}
                        else "mixed" if kinds else None),
        "judge_weighted": kinds.count("weighted"), "judge_hard_fallback": kinds.count("hard"),
        "identical_outputs": sum(a["preference_kind"] == "identical" for a in judged),
        "avg_length": sum(len(a["output_2"]) for a in annotations) / max(n, 1),
        "avg_reference_length": sum(len(a["output_1"]) for a in annotations) / max(n, 1),
        "n_instructions": n, "judge": judge_name, "backend": "builtin",
        "order": "randomised per instruction (fixed seed)",
        **tally.metrics(),
    }
    metrics["headline"] = _headline(metrics)
    return metrics


def _headline(m: dict) -> dict:
    # the two backends' LCs come from different GLMs: their names keep them apart in metrics.jsonl,
    # the report's tables and its plots (one plot per name)
    lc_name = "lc_win_rate_v1" if m.get("lc_glm") == LC_V1 else "lc_win_rate_minimal"
    out = {lc_name: m.get("length_controlled_winrate"), "win_rate": m.get("win_rate"),
           "win_rate_se": m.get("standard_error"), "judge_unparseable": m.get("judge_unparseable"),
           "judge_failed": m.get("judge_failed")}
    return {k: v for k, v in out.items() if v is not None}


# ---- the official package ---------------------------------------------------------------------


def run_official(cfg: EvalConfig, out_dir: Path, generator: str) -> dict:
    """Judge with the `alpaca_eval` package itself and read its leaderboard row."""
    import os

    alpaca_eval = _official_package()

    judge = cfg.judge
    env = {}
    if judge is not None:  # point the package's OpenAI client at eval.judge's endpoint
        env["OPENAI_BASE_URL"] = judge.base_url
        if judge.api_key_env:
            env["OPENAI_API_KEY"] = os.environ.get(judge.api_key_env, "")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        leaderboard, _ = alpaca_eval.evaluate(
            model_outputs=str(out_dir / "model_outputs.json"),
            reference_outputs=str(out_dir / "reference_outputs.json"),
            annotators_config=cfg.alpaca_eval_annotator, name=generator,
            output_path=str(out_dir / "official"), precomputed_leaderboard=None,
            is_return_instead_of_print=True, is_cache_leaderboard=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    row = {k: _plain(v) for k, v in leaderboard.loc[generator].to_dict().items()}
    metrics = {**row, "backend": "official", "annotators_config": cfg.alpaca_eval_annotator,
               "lc_glm": LC_V1}
    metrics["headline"] = _headline(metrics)
    return metrics


def _official_package():
    from synpo.errors import UserError

    try:
        import alpaca_eval
    except ImportError as e:
        if getattr(e, "name", None) == "pkg_resources":  # alpaca_eval 0.6 imports it; setuptools 81 dropped it
            raise UserError("eval.alpaca_eval_backend: official: the alpaca_eval package imports pkg_resources, "
                            "which setuptools>=81 no longer has: pip install 'setuptools<81'") from None
        raise UserError("eval.alpaca_eval_backend: official needs the alpaca_eval package "
                        "(pip install 'synpo[alpaca-eval]'), or use the builtin backend") from None
    return alpaca_eval


def _plain(value):
    """numpy / pandas scalars as JSON-friendly Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
