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
    from synpo.models import check_model_path

    check_model_path(args.model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.suite != "toy":
        raise UserError(f"--suite {args.suite}: run judged suites through a recipe (eval.suites) "
                        "so the judge is configured; `synpo eval` runs the toy suite")
    from synpo.engines.base import Sampling
    from synpo.engines.hf import HFEngine
    from synpo.evals import toy

    engine = HFEngine(args.model, batch_size=args.batch_size)
    rows = toy.load_benchmark(limit=args.limit, seed=args.seed)
    metrics, _ = toy.evaluate(engine, rows, Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        from synpo.progress import results

        results.print(toy.table(metrics, title=f"toy benchmark: {args.model}"))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpo",
                                     description="Self-boosting alignment with synthetic preference data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("iterate", help="run SynPO rounds from a recipe (same as python -m synpo.iterate)")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("eval", help="evaluate a model on a suite")
    p.add_argument("--suite", default="toy", choices=["toy", "alpaca_eval", "arena_hard", "mt_bench"])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    p.add_argument("--limit", type=int, help="evaluate a fixed-seed subsample of N items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int)
    p.set_defaults(fn=cmd_eval)

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
