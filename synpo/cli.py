"""The `synpo` command: `synpo iterate`, `synpo eval`, `synpo report`, `synpo plan`, `synpo export`, ...

`python -m synpo.cli COMMAND` is the same as `synpo COMMAND`; the loop and the planner are also
module entry points (`python -m synpo.iterate`, `python -m synpo.plan`). Bad input ends with a
one-line error and exit code 2; nothing is written.
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


def eval_identity(model: str, inputs) -> str:
    """What `synpo eval`'s answers are keyed by: the model (resolved path and content fingerprint,
    chat template and tokenizer included) and what else produces the answers (sampling, suite, limit,
    seed, engine), hashed as the loop's stages hash theirs. Two checkpoints both named `policy` get
    their own answers; the same checkpoint evaluated again reuses them. The judge is no part of it:
    another judge judges the same answers (its verdicts are cached by their own key)."""
    from pathlib import Path

    from synpo.models import checkpoint_fingerprint
    from synpo.run import fingerprint, fingerprint_view

    where = Path(model).expanduser()
    location = str(where.resolve()) if where.exists() else model
    if inputs.judged is not None:
        inputs = inputs.model_copy(update={"judged": inputs.judged.model_copy(update={"judge": None})})
    return fingerprint("synpo eval", location, checkpoint_fingerprint(model), fingerprint_view(inputs))


def eval_judged(args: argparse.Namespace) -> int:
    """alpaca_eval / arena_hard / mt_bench on any checkpoint: the loop's evaluate stage, on its own.
    Outputs in --out (default synpo-eval/NAME-IDENTITY/SUITE, IDENTITY from `eval_identity`);
    answers are sharded there under that identity and judgments cached, so running the same command
    again resumes and sends no finished request, while another model never reads them."""
    import shutil
    from pathlib import Path

    from synpo.io import write_text
    from synpo.iterate import evaluation
    from synpo.stages.evaluate import evaluate_suite, headline

    recipe = eval_recipe(args)
    judged = args.suite in ("arena_hard", "mt_bench") or (
        args.suite == "alpaca_eval" and recipe.eval.alpaca_eval_backend == "builtin")  # ifeval: no judge
    if judged:
        # the judge is asked only once every answer is in: a wrong one must stop us before that
        from synpo.preflight import probe_judge

        if recipe.eval.judge is None:
            raise UserError(f"eval.judge: required for the {args.suite} suite; give --judge-url URL --judge-model "
                            "NAME, or a --recipe whose eval.judge is set")
        probe_judge("eval.judge", recipe.eval.judge, url_field="--judge-url" if args.judge_url else None,
                    key_field="--judge-api-key-env" if args.judge_api_key_env else None)
    inputs = evaluation(recipe, args.suite, recipe.name)
    identity = eval_identity(args.model, inputs)
    out = Path(args.out) if args.out else Path("synpo-eval") / f"{recipe.name}-{identity[:8]}" / args.suite
    work = out / ".work"
    stamp = work / "fingerprint"
    if work.exists() and (not stamp.exists() or stamp.read_text() != identity):
        # answers sharded there came from another model, checkpoint content or sampling
        from synpo.progress import log

        log(f"[yellow]re-generate[/yellow] {out}: its answers were written for another model or settings")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text(stamp, identity)
    metrics = evaluate_suite(inputs, args.model, out, work)
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


def cmd_config(args: argparse.Namespace) -> int:
    if args.options:
        from synpo.options import render_options

        sys.stdout.write(render_options())
        return 0
    from synpo.recipe import dump_recipe, load_recipe

    sys.stdout.write(dump_recipe(load_recipe(args.recipe, args.set, check_files=False)))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Versions and hardware, for a bug report."""
    import importlib.metadata
    import os
    import platform
    import subprocess
    from pathlib import Path

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    lines = [f"synpo: {version('synpo')}", f"python: {platform.python_version()} ({sys.executable})",
             f"platform: {platform.platform()}"]
    lines += [f"{p}: {version(p)}" for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets",
                                             "tokenizers", "pydantic", "vllm", "deepspeed", "bitsandbytes")]
    # vLLM usually lives in its own environment (engine.python): its version there
    for python in dict.fromkeys(p for p in (os.environ.get("SYNPO_VLLM_PYTHON"), ".venv-vllm/bin/python") if p):
        if Path(python).exists():
            try:
                found = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
                                       capture_output=True, text=True, timeout=60)
                got = found.stdout.strip() if found.returncode == 0 else "not installed there"
            except (OSError, subprocess.TimeoutExpired) as e:
                got = f"does not run ({type(e).__name__})"
            lines.append(f"vllm environment {python}: vllm {got}")
    lines.append(f"CPU cores: {len(os.sched_getaffinity(0))} usable of {os.cpu_count()}")
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"GPUs: {len(names)} x {', '.join(sorted(set(names)))} (CUDA {torch.version.cuda})")
    else:
        lines.append("GPUs: none visible")
    print("\n".join(lines))
    return 0


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
    try:
        if args.suites is None:  # every judged suite whose set is here: AlpacaEval's only with --data-dir
            from synpo.evals.datasets import FILES, find, search_dirs

            search_dirs(args.data_dir)  # a wrong --data-dir is an error, not "no AlpacaEval"
            suites = []
            for suite, files in FILES.items():
                try:
                    find(suite, next(iter(files)), args.data_dir)
                    suites.append(suite)
                except UserError:
                    pass
        else:
            suites = [s.strip() for s in args.suites.split(",") if s.strip()]
        info = decontaminate_file(args.input, args.out, suites, field=args.field, data_dir=args.data_dir,
                                  similarity=args.similarity)
    except UserError as e:  # the evaluation sets' errors speak of the recipe's key; here it is an option
        message = str(e).replace("set eval.data_dir=DATA_DIR", "give --data-dir DATA_DIR")
        raise UserError(message.replace("set eval.data_dir to", "give --data-dir")
                        .replace("eval.data_dir", "--data-dir")) from None
    reasons = ", ".join(f"{k} {v}" for k, v in info["dropped_by_reason"].items())
    print(f"{args.input}: kept {info['kept']}, dropped {info['dropped']}{f' ({reasons})' if reasons else ''} "
          f"of {info['rows']} rows, against {info['evaluation_prompts']} prompts of {', '.join(suites)}; "
          f"wrote {args.out}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help (those that are values: no "default: None"); epilogs (the
    examples) kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == [] or \
                "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


EXAMPLES = {
    "synpo": """examples:
  synpo iterate recipes/tiny-cpu.yaml                      # three SynPO rounds on a CPU, minutes
  synpo iterate recipes/tiny-cpu.yaml --set rounds=1       # any recipe key, repeatable
  synpo plan recipes/llama3-8b-synpo.yaml --gpus 8xH100    # every stage's work, memory and hours
  synpo config recipes/tiny-cpu.yaml                       # the recipe resolved, every default shown
  synpo env                                                # versions and hardware for a bug report""",
    "eval": """examples:
  synpo eval --model runs/tiny-cpu/round_03/policy                          # the toy benchmark
  synpo eval --suite arena_hard --model path/to/model --judge-url http://127.0.0.1:8000/v1 \\
      --judge-model judge --limit 100
  synpo eval --suite mt_bench --model path/to/model --recipe recipes/llama3-8b-synpo.yaml""",
    "plan": """examples:
  synpo plan recipes/llama3-8b-synpo.yaml --gpus 8xA100-80G
  synpo plan recipes/mistral-7b-synpo-lora.yaml --gpus 2xH200 --set train.batch_size=1""",
    "config": """examples:
  synpo config recipes/llama3-8b-synpo-lora.yaml --set train.beta=10
  synpo config --options > docs/options.md""",
    "decontaminate": """examples:
  synpo decontaminate prompts.jsonl --out clean.jsonl --suites arena_hard,mt_bench
  synpo decontaminate prompts.jsonl --out clean.jsonl --data-dir DATA_DIR   # with AlpacaEval's set""",
    "report": """examples:
  synpo report runs/tiny-cpu""",
    "export": """examples:
  synpo export runs/tiny-cpu --round 3 --to exported/ --format alignment-handbook
  synpo export runs/tiny-cpu --round 3 --to hf://me/tiny-synpo --no-model""",
}


def package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("synpo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpo", formatter_class=HelpFormatter, epilog=EXAMPLES["synpo"],
                                     description="Self-boosting alignment with synthetic preference data.")
    parser.add_argument("--version", action="version", version=f"synpo {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def add(name, **kwargs):
        return add_parser(name, formatter_class=HelpFormatter, epilog=EXAMPLES.get(name), **kwargs)

    sub.add_parser = add

    p = sub.add_parser("iterate", help="run SynPO rounds from a recipe (same as python -m synpo.iterate)")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("eval", help="evaluate a model on a suite (judged suites: the loop's evaluation, on its own)")
    p.add_argument("--suite", default="toy", choices=["toy", "alpaca_eval", "arena_hard", "mt_bench", "ifeval"],
                   help="the benchmark (judged suites need a judge; ifeval is judge-free)")
    p.add_argument("--model", required=True, help="model directory, or a GGUF file (a path or pkg:PACKAGE/FILE.gguf)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    p.add_argument("--limit", type=int, help="evaluate a fixed-seed subsample of N items")
    p.add_argument("--seed", type=int, default=0, help="seeds the --limit subsample and the sampling")
    p.add_argument("--batch-size", type=int, default=128, help="hf engine: sequences per generate call")
    p.add_argument("--max-new-tokens", type=int, help=f"answer length (toy default {TOY_MAX_NEW_TOKENS}; "
                                                      "judged suites: eval.sampling.max_new_tokens)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--judge-url", help="judged suites: the judge's OpenAI-compatible base URL")
    p.add_argument("--judge-model", help="judged suites: the judge's model name")
    p.add_argument("--judge-api-key-env", help="judged suites: environment variable holding the judge's API key")
    p.add_argument("--engine", choices=["hf", "vllm", "openai"], help="judged suites: the engine answering")
    p.add_argument("--data-dir", help="judged suites: directory of the evaluation sets (eval.data_dir)")
    p.add_argument("--recipe", help="judged suites: take engine, judge and eval settings from this recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--out", help="judged suites: output directory (default synpo-eval/NAME-ID/SUITE, ID a hash of the "
                        "checkpoint's content and the eval settings)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("decontaminate", help="drop the rows of a JSONL file whose prompt is a near-copy of an "
                                             "evaluation prompt")
    p.add_argument("input", help="a JSONL file (every field of a kept row is kept)")
    p.add_argument("--out", required=True, help="the JSONL file of the rows that pass")
    p.add_argument("--suites", help="comma-separated: alpaca_eval, arena_hard, mt_bench, toy (default: every "
                                    "evaluation set found: arena_hard and mt_bench, which ship with synpo, and "
                                    "alpaca_eval when --data-dir holds it)")
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

    p = sub.add_parser("config", help="print a recipe as it resolves (base:, --set, every default), or the options "
                                      "reference")
    p.add_argument("recipe", nargs="?", help="recipe YAML (default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--options", action="store_true", help="print every option with its type, default and meaning "
                                                          "(Markdown: docs/options.md)")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("export", help="write a run's preference data and round checkpoint for other pipelines")
    p.add_argument("run_dir")
    p.add_argument("--round", type=int, required=True, help="export D up to this round and this round's policy")
    p.add_argument("--to", required=True, help="a directory, or hf://OWNER/NAME to upload to the Hugging Face Hub")
    p.add_argument("--format", default="trl", choices=["trl", "alignment-handbook", "llamafactory"])
    p.add_argument("--no-model", action="store_true", help="export the data only")
    p.add_argument("--test-fraction", type=float, default=0.05, help="alignment-handbook: share of test_prefs")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("env", help="print versions (python, torch, transformers, trl, peft, accelerate, vllm, "
                                   "...) and the CPUs / GPUs, for a bug report")
    p.set_defaults(fn=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["iterate"]:
        from synpo.iterate import main as iterate_main

        return iterate_main(argv[1:], prog="synpo iterate")
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
