"""The `synpo` command: `synpo iterate`, `synpo eval`, `synpo report`, `synpo plan`, `synpo export`, ...

Each subcommand is also a module entry point (`python -m synpo.iterate`, ...). Bad input
ends with a one-line error and exit code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys

from synpo.errors import UserError


def cmd_eval(args: argparse.Namespace) -> int:
    from synpo.gguf import checkpoint
    from synpo.models import check_model_path
    from synpo.recipe import resolve_path

    path = resolve_path(args.model)
    check_model_path(path)
    args.model_name, args.model = args.model, checkpoint(path)  # a GGUF file: its cached conversion
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.suite != "toy":
        return eval_judged(args)
    from synpo.engines.base import Sampling
    from synpo.engines.hf import HFEngine
    from synpo.evals import toy

    engine = HFEngine(args.model, batch_size=args.batch_size)
    rows = toy.load_benchmark(limit=args.limit, seed=args.seed)
    max_new_tokens = args.max_new_tokens or TOY_MAX_NEW_TOKENS
    metrics, _ = toy.evaluate(engine, rows, Sampling(temperature=0.0, max_new_tokens=max_new_tokens))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        from synpo.progress import results

        results.print(toy.table(metrics, title=f"toy benchmark: {args.model}"))
    return 0


TOY_MAX_NEW_TOKENS = 48


def eval_recipe(args: argparse.Namespace):
    """The recipe a judged `synpo eval` runs: --recipe (or the defaults), then the command line's
    judge, limit, engine and data options, then --set. Its eval section is what the loop would use."""
    import re
    from pathlib import Path

    from synpo.recipe import load_recipe

    overrides = [f"eval.suites=[{args.suite}]"]
    # the evaluated model's name in the output files: its directory's name
    named = getattr(args, "model_name", args.model)  # as the user wrote it (not a GGUF file's cache directory)
    name = re.sub(r"[^\w.-]+", "-", Path(named.rstrip("/")).name).lstrip(".") or "model"
    overrides.append(f"name={json.dumps(name)}")
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            raise UserError("--judge-url and --judge-model: give both (an OpenAI-compatible endpoint and its model)")
        judge = {"kind": "openai", "base_url": args.judge_url, "model": args.judge_model}
        if args.judge_api_key_env:
            judge["api_key_env"] = args.judge_api_key_env
        overrides.append(f"eval.judge={json.dumps(judge)}")
    if args.limit:
        overrides.append(f"eval.limit={args.limit}")
    if args.engine:
        overrides.append(f"engine.kind={args.engine}")
    if args.data_dir:
        overrides.append(f"eval.data_dir={json.dumps(args.data_dir)}")
    if args.max_new_tokens:
        overrides.append(f"eval.sampling.max_new_tokens={args.max_new_tokens}")
    if args.threads:
        overrides.append(f"runtime.threads={args.threads}")
    if args.recipe is None and args.engine in (None, "hf"):
        overrides.append(f"engine.batch_size={args.batch_size}")
    if (args.suite != "ifeval" and args.recipe is None and not args.judge_url
            and not any(a.startswith("eval.") for a in args.set)):
        raise UserError(f"--suite {args.suite}: needs a judge: --judge-url URL --judge-model NAME "
                        "(an OpenAI-compatible endpoint), or a --recipe whose eval.judge is set")
    return load_recipe(args.recipe, [*overrides, *args.set], check_files=False)


def eval_judged(args: argparse.Namespace) -> int:
    """alpaca_eval / arena_hard / mt_bench on any checkpoint: the loop's evaluate stage, on its own.
    Outputs in --out (default synpo-eval/MODEL/SUITE); answers are sharded there and judgments
    cached, so running the same command again resumes and sends no finished request."""
    from pathlib import Path

    from synpo.iterate import evaluation
    from synpo.stages.evaluate import evaluate_suite, headline

    recipe = eval_recipe(args)
    out = Path(args.out) if args.out else Path("synpo-eval") / recipe.name / args.suite
    metrics = evaluate_suite(evaluation(recipe, args.suite, recipe.name), args.model, out, out / ".work")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        from rich.table import Table

        from synpo.progress import results

        judge = f" (judge {metrics['judge']})" if metrics.get("judge") else ""
        table = Table(title=f"{args.suite}: {getattr(args, 'model_name', args.model)}{judge}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in headline(args.suite, metrics).items():
            table.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
        results.print(table)
        print(f"outputs: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synpo.report import write_report

    if not (Path(args.run_dir) / "state.json").exists():
        raise UserError(f"{args.run_dir}: not a synpo run directory (no state.json)")
    path = write_report(args.run_dir)
    print(path)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from synpo.plan import main as plan_main

    return plan_main(args.recipe, args.set, args.gpus)


def cmd_export(args: argparse.Namespace) -> int:
    from synpo.export import export

    info = export(args.run_dir, args.round, args.to, fmt=args.format, model=not args.no_model,
                  test_fraction=args.test_fraction)
    print(json.dumps(info, indent=2))
    return 0


def cmd_decontaminate(args: argparse.Namespace) -> int:
    from synpo.decontamination import decontaminate_file

    if not 0 < args.similarity <= 1:
        raise UserError(f"--similarity {args.similarity}: a fraction in (0, 1], e.g. 0.8")
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    info = decontaminate_file(args.input, args.out, suites, field=args.field, data_dir=args.data_dir,
                              similarity=args.similarity)
    reasons = ", ".join(f"{k} {v}" for k, v in info["dropped_by_reason"].items())
    print(f"{args.input}: kept {info['kept']}, dropped {info['dropped']}{f' ({reasons})' if reasons else ''} "
          f"of {info['rows']} rows, against {info['evaluation_prompts']} prompts of {', '.join(suites)}; "
          f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpo",
                                     description="Self-boosting alignment with synthetic preference data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("iterate", help="run SynPO rounds from a recipe (same as python -m synpo.iterate)")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("eval", help="evaluate a model on a suite (judged suites: the loop's evaluation, on its own)")
    p.add_argument("--suite", default="toy", choices=["toy", "alpaca_eval", "arena_hard", "mt_bench", "ifeval"])
    p.add_argument("--model", required=True, help="model directory, or a GGUF file (a path or pkg:PACKAGE/FILE.gguf)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    p.add_argument("--limit", type=int, help="evaluate a fixed-seed subsample of N items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, help=f"answer length (toy default {TOY_MAX_NEW_TOKENS}; "
                                                      "judged suites: eval.sampling.max_new_tokens)")
    p.add_argument("--threads", type=int)
    p.add_argument("--judge-url", help="judged suites: the judge's OpenAI-compatible base URL")
    p.add_argument("--judge-model", help="judged suites: the judge's model name")
    p.add_argument("--judge-api-key-env", help="judged suites: environment variable holding the judge's API key")
    p.add_argument("--engine", choices=["hf", "vllm", "openai"], help="judged suites: the engine answering")
    p.add_argument("--data-dir", help="judged suites: directory of the evaluation sets (eval.data_dir)")
    p.add_argument("--recipe", help="judged suites: take engine, judge and eval settings from this recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--out", help="judged suites: output directory (default synpo-eval/MODEL/SUITE)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("decontaminate", help="drop the rows of a JSONL file whose prompt is a near-copy of an "
                                             "evaluation prompt")
    p.add_argument("input", help="a JSONL file (every field of a kept row is kept)")
    p.add_argument("--out", required=True, help="the JSONL file of the rows that pass")
    p.add_argument("--suites", default="alpaca_eval,arena_hard",
                   help="comma-separated: alpaca_eval, arena_hard, mt_bench, toy")
    p.add_argument("--field", default="prompt", help="the prompt's field (text, or a list of chat messages)")
    p.add_argument("--data-dir", help="directory of the evaluation sets (as eval.data_dir)")
    p.add_argument("--similarity", type=float, default=0.8, help="near-duplicate threshold (rapidfuzz ratio / 100)")
    p.set_defaults(fn=cmd_decontaminate)

    p = sub.add_parser("report", help="write report.md / report.html for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("plan", help="validate a recipe and print every stage's work and peak GPU memory")
    p.add_argument("recipe")
    p.add_argument("--gpus", default="8xA100-80G", help="the GPUs to check against, e.g. 8xA100-80G, 4xH100-80G")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("export", help="write a run's preference data and round checkpoint for other pipelines")
    p.add_argument("run_dir")
    p.add_argument("--round", type=int, required=True, help="export D up to this round and this round's policy")
    p.add_argument("--to", required=True, help="a directory, or hf://OWNER/NAME to upload to the Hugging Face Hub")
    p.add_argument("--format", default="trl", choices=["trl", "alignment-handbook", "llamafactory"])
    p.add_argument("--no-model", action="store_true", help="export the data only")
    p.add_argument("--test-fraction", type=float, default=0.05, help="alignment-handbook: share of test_prefs")
    p.set_defaults(fn=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["iterate"]:
        from synpo.iterate import main as iterate_main

        return iterate_main(argv[1:])
    args = build_parser().parse_args(argv)
    from synpo.progress import quiet_libraries

    quiet_libraries()
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
