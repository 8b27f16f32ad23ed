"""The `synpo` command: `synpo iterate`, `synpo eval`, `synpo report`, ...

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
        from synpo.progress import console

        console.print(toy.table(metrics, title=f"toy benchmark: {args.model}"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synpo.report import write_report

    if not (Path(args.run_dir) / "state.json").exists():
        raise UserError(f"{args.run_dir}: not a synpo run directory (no state.json)")
    path = write_report(args.run_dir)
    print(path)
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
