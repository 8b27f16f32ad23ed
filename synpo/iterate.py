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

Every step is a stage recorded in RUN_DIR/state.json with a fingerprint of what it read;
running the same command again resumes (see synpo.run).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import Recipe, dump_recipe, load_recipe, resolve_path
from synpo.run import Run, fingerprint

# Where work runs (how many workers, which Ray cluster) does not change what it writes
# (docs/gpus.md), so it is no part of a fingerprint: a run resumes on another number of GPUs.
PLACEMENT = {"data_parallel_size", "ray_address"}


def _without_placement(value):
    if isinstance(value, dict):
        return {k: _without_placement(v) for k, v in value.items() if k not in PLACEMENT}
    return value


def section(recipe: Recipe, *paths: str) -> dict:
    """The recipe sections a stage reads, for its fingerprint."""
    out = {}
    for path in paths:
        node = recipe
        for part in path.split("."):
            node = getattr(node, part)
        out[path] = _without_placement(node.model_dump(mode="json")) if hasattr(node, "model_dump") else node
    return out


class Loop:
    """One run of the loop: the recipe, its run directory, and one method per stage."""

    def __init__(self, recipe: Recipe, run: Run, seed_rows: list[dict]):
        from synpo.scoring import make_scorer

        self.recipe, self.run = recipe, run
        self.theta0 = resolve_path(recipe.model.path)
        self.theta0_fp = fingerprint(section(recipe, "model"))
        self.seed_rows = seed_rows
        self.seed_fp = fingerprint(section(recipe, "data.seed"), [r["id"] for r in self.seed_rows])
        self.scorer = make_scorer(recipe.scorer, device=recipe.runtime.device, ray_address=recipe.engine.ray_address)
        self.scorer_fp = fingerprint(section(recipe, "scorer"))
        self.logs = run.dir / "logs"
        self.synpo = recipe.pairs.strategy == "synpo"
        from synpo.tracking import LoopTracker, check_trackers

        check_trackers(recipe.logging.report_to)
        self.tracker = LoopTracker(run.dir, recipe.logging.report_to)

    # ---- helpers ----
    def stage_seed(self, name: str, t: int = 0) -> int:
        return random.Random(f"{self.recipe.seed}:{name}:{t}").randrange(2**31)

    def round_dir(self, t: int) -> Path:
        return self.run.round_dir(t)

    # ---- once: the prompt generator G ----
    def prompt_generator(self) -> tuple[Path, str]:
        from synpo.stages.prompt_generator import generator_training_rows
        from synpo.stages.train import sft_stage

        r = self.recipe
        out = self.run.dir / "prompt_generator"
        fp = fingerprint(self.theta0_fp, self.seed_fp, section(r, "seed", "prompt_generator.keywords",
                                                               "prompt_generator.noise_keywords",
                                                               "prompt_generator.train"))

        def work(tmp):
            rng = random.Random(self.stage_seed("generator_data"))
            rows = generator_training_rows(self.seed_rows, r.prompt_generator.keywords,
                                           r.prompt_generator.noise_keywords, rng)
            from synpo.io import write_jsonl

            write_jsonl(self.run.dir / "prompt_generator_data.jsonl", rows)
            return sft_stage(r, r.prompt_generator.train, rows, out, tmp, self.stage_seed("generator"),
                             self.logs / "prompt_generator.log")

        self.run.stage("prompt_generator", fp, work, outputs=[out])
        return out, fp

    # ---- round t ----
    def prompts(self, t: int, generator: Path, generator_fp: str) -> tuple[Path, str]:
        from synpo.evals import eval_prompts
        from synpo.stages.prompt_generator import generate_prompts

        r = self.recipe
        out = self.round_dir(t) / "prompts.jsonl"
        if not r.prompt_generator.enabled:  # ablation: the seed prompts instead of G's
            from synpo.stages.prompt_generator import seed_prompts

            fp = fingerprint("seed prompts", self.seed_fp, section(r, "seed", "prompt_generator.num_prompts"))
            self.run.stage(f"round_{t:02d}/prompts", fp, lambda work: seed_prompts(r, self.seed_rows, t, out),
                           outputs=[out])
            return out, fp
        earlier = [self.round_dir(s) / "prompts.jsonl" for s in range(1, t)]
        earlier_fps = [self.run.fingerprint_of(f"round_{s:02d}/prompts") for s in range(1, t)]
        fp = fingerprint(generator_fp, earlier_fps, self.seed_fp, self.scorer_fp,
                         section(r, "seed", "data.corpus", "prompt_generator.num_prompts",
                                 "prompt_generator.sampling", "prompt_generator.max_prompt_chars",
                                 "prompt_generator.validate_prompts", "prompt_generator.decontaminate_ngram",
                                 "prompt_generator.decontaminate_similarity",
                                 "prompt_generator.decontaminate_threshold", "eval.suites"))
        self.run.stage(f"round_{t:02d}/prompts", fp, lambda work: generate_prompts(
            r, generator, t, out, earlier, eval_prompts(r.eval.suites, r.eval.data_dir),
            [x["prompt"] for x in self.seed_rows], work, self.scorer), outputs=[out])
        return out, fp

    def improver(self, t: int, policy: str, policy_fp: str) -> tuple[Path, str]:
        from synpo.io import read_jsonl
        from synpo.stages.improver import improver_data, improver_sft_rows
        from synpo.stages.train import sft_stage

        r = self.recipe
        if not r.improver.trained:  # ablation: θ0 itself, prompted with the improver template
            return Path(self.theta0), fingerprint(self.theta0_fp, "θ0 as the improver")
        data = self.round_dir(t) / "improver_data.jsonl"
        data_fp = fingerprint(policy_fp, self.seed_fp, self.scorer_fp,
                              section(r, "seed", "improver.gap", "improver.keep_below_gap",
                                      "improver.seed_sampling"))
        self.run.stage(f"round_{t:02d}/improver_data", data_fp,
                       lambda work: improver_data(r, t, policy, self.seed_rows, data, work, self.scorer),
                       outputs=[data])
        self.scorer.close()  # a reward model's GPU memory goes back before the next stage's engine starts
        out = self.round_dir(t) / "improver"
        fp = fingerprint(data_fp, self.theta0_fp, section(r, "improver.train"))
        self.run.stage(f"round_{t:02d}/improver", fp, lambda work: sft_stage(
            r, r.improver.train, improver_sft_rows(read_jsonl(data)), out, work, self.stage_seed("improver", t),
            self.logs / f"round_{t:02d}_improver.log"), outputs=[out])
        return out, fp

    def responses(self, t: int, prompts: Path, prompts_fp: str, policy: str, policy_fp: str) -> tuple[Path, str]:
        from synpo.stages.responses import generate_responses

        r = self.recipe
        out = self.round_dir(t) / "responses.jsonl"
        fp = fingerprint(prompts_fp, policy_fp, self.theta0_fp,
                         section(r, "seed", "responses", "pairs.strategy", "pairs.k"))
        self.run.stage(f"round_{t:02d}/responses", fp,
                       lambda work: generate_responses(r, t, policy, self.theta0, prompts, out, work),
                       outputs=[out])
        return out, fp

    def refine(self, t: int, improver: Path, improver_fp: str, responses: Path, responses_fp: str):
        from synpo.stages.improver import refine

        out = self.round_dir(t) / "refined.jsonl"
        fp = fingerprint(improver_fp, responses_fp, section(self.recipe, "seed", "improver.sampling"))
        self.run.stage(f"round_{t:02d}/refined", fp,
                       lambda work: refine(self.recipe, t, improver, responses, out, work), outputs=[out])
        return out, fp

    def pairs(self, t: int, responses: Path, refined: Path | None, input_fps: list[str]) -> tuple[Path, str]:
        from synpo.stages.pairs import build_pairs

        out = self.round_dir(t) / "pairs.jsonl"
        fp = fingerprint(input_fps, self.scorer_fp, section(self.recipe, "seed", "pairs"))
        self.run.stage(f"round_{t:02d}/pairs", fp,
                       lambda work: build_pairs(self.recipe, t, responses, refined, out, self.scorer),
                       outputs=[out])
        self.scorer.close()
        return out, fp

    def policy(self, t: int, pairs_fps: list[str], previous: str, previous_fp: str) -> tuple[str, str]:
        from synpo.stages.pairs import write_dataset
        from synpo.stages.train import policy_stage

        r = self.recipe
        out = self.round_dir(t) / "policy"
        start, start_fp = (self.theta0, self.theta0_fp) if r.train.start == "initial" else (previous, previous_fp)
        fp = fingerprint(pairs_fps, start_fp, section(r, "seed", "train"))

        def work(tmp):
            n = write_dataset([self.round_dir(s) / "pairs.jsonl" for s in range(1, t + 1)], self.run.dir / "dataset")
            if n == 0:
                raise UserError(f"round {t}: D has no pairs to train on; lower pairs.gap or raise "
                                "prompt_generator.num_prompts")
            return {"pairs": n, "start": start,  # θ0 or θ_{t-1}: recorded in state.json
                    **policy_stage(r, self.run.dir / "dataset" / "pairs.jsonl", start, out, tmp,
                                    self.stage_seed("policy", t), self.logs / f"round_{t:02d}_policy.log")}

        self.run.stage(f"round_{t:02d}/policy", fp, work, outputs=[out])
        return str(out), fp

    def evaluate(self, t: int, model: str, model_fp: str) -> None:
        from synpo.stages.evaluate import evaluate_suite, headline, metrics_table, rebuild_metrics

        r = self.recipe
        for suite in r.eval.suites:
            out = self.round_dir(t) / "eval" / suite
            fp = fingerprint(model_fp, suite, section(r, "seed", "eval"))
            self.run.stage(f"round_{t:02d}/eval/{suite}", fp,
                           lambda work, s=suite, o=out: {k: round(v, 4) for k, v in headline(
                               s, evaluate_suite(r, s, model, o, work)).items() if isinstance(v, float)},
                           outputs=[out / "metrics.json"])
        rows = rebuild_metrics(self.run.dir, r.rounds, r.eval.suites)
        from synpo.progress import quiet, results

        if not quiet():
            results.print(metrics_table(rows))

    def monitor(self, t: int) -> None:
        """Round t's drift figures: written to round_XX/drift.json, sent to the trackers with the round's
        metrics, data and stage seconds, and checked against the recipe's monitors (round 0 is θ0: only
        recorded). A crossed limit stops the loop here, before round t+1."""
        from synpo.io import read_json, write_json
        from synpo.monitors import STOP_FILE, crossed, drift, scalars
        from synpo.stages.evaluate import headline

        r, d = self.recipe, self.round_dir(t)
        figures = drift(self.run.dir, t, r.eval.suites)
        write_json(d / "drift.json", figures)
        values = scalars(figures)
        for suite in r.eval.suites:
            metrics = d / "eval" / suite / "metrics.json"
            if metrics.exists():
                values.update({f"{suite}/{k}": v for k, v in headline(suite, read_json(metrics)).items()})
        records = {k[9:]: v for k, v in self.run.state["stages"].items() if k.startswith(f"round_{t:02d}/")}
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

    # ---- Algorithm 1 ----
    def __call__(self) -> None:
        r = self.recipe
        self.evaluate(0, self.theta0, self.theta0_fp)
        self.monitor(0)
        generator, generator_fp = self.prompt_generator() if r.prompt_generator.enabled else (None, "")
        policy, policy_fp = self.theta0, self.theta0_fp
        pairs_fps: list[str] = []
        for t in range(1, r.rounds + 1):
            prompts, prompts_fp = self.prompts(t, generator, generator_fp)
            if self.synpo:
                improver, improver_fp = self.improver(t, policy, policy_fp)
                responses, responses_fp = self.responses(t, prompts, prompts_fp, policy, policy_fp)
                refined, refined_fp = self.refine(t, improver, improver_fp, responses, responses_fp)
                pairs, pairs_fp = self.pairs(t, responses, refined, [responses_fp, refined_fp])
            else:  # sampling_ranking: best vs worst of k samples of π_{t-1}
                responses, responses_fp = self.responses(t, prompts, prompts_fp, policy, policy_fp)
                pairs, pairs_fp = self.pairs(t, responses, None, [responses_fp])
            pairs_fps.append(pairs_fp)
            policy, policy_fp = self.policy(t, pairs_fps, policy, policy_fp)
            self.evaluate(t, policy, policy_fp)
            self.monitor(t)
            self.report()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m synpo.iterate", description="Run SynPO self-boosting rounds.")
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny-cpu.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set rounds=1 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: runs/<recipe name>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        from synpo.progress import log

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
