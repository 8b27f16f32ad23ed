"""Everything a run reads, checked before it writes anything.

`check_run_inputs(recipe)` reads the seed set whole, the first paragraphs of the corpus, the
model's tokenizer and chat template, the reward model's config (custom code needs
`scorer.trust_remote_code`), the judge prompt template, the evaluation sets and asks each
judge endpoint one tiny question. The first problem is a UserError (one line naming the
file, line and field, exit 2), raised before the run directory is created or changed, so a
rerun of a finished run with a bad `--set` leaves it as it was. No model weights are loaded.
"""

from __future__ import annotations

from pathlib import Path

from synpo.data.loaders import Seed, iter_corpus, read_seed
from synpo.errors import UserError
from synpo.progress import log
from synpo.recipe import EngineConfig, Recipe, resolve_path

CORPUS_SAMPLE = 200  # paragraphs read up front: enough to catch a wrong format or field


def check_run_inputs(recipe: Recipe) -> Seed:
    """Check every input of a run; returns the seed set (read once, used by the run)."""
    from synpo.tracking import check_trackers

    check_trackers(recipe.logging.report_to)
    check_device(recipe)
    check_engines(recipe)
    seed = read_seed(recipe.data.seed, recipe.seed)
    check_corpus(recipe)
    tokenizer = check_tokenizer(recipe)
    if recipe.pairs.strategy == "synpo":
        check_seed_lengths(recipe, seed, tokenizer)
    if recipe.scorer.kind == "reward_model":  # custom model code runs only when the recipe trusts it
        from synpo.scoring.reward_model import check_remote_code

        check_remote_code(resolve_path(recipe.scorer.path), recipe.scorer.trust_remote_code)
    check_judge_template(recipe)
    check_eval_sets(recipe)
    for what, cfg in judges(recipe):
        probe_judge(what, cfg)
    return seed


def check_device(recipe: Recipe) -> None:
    """runtime.device: cuda promises GPUs; without one the run would crawl on the CPU unsaid."""
    if recipe.runtime.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UserError(f"runtime.device: cuda, but torch sees no GPU (torch {torch.__version__}, {build}); "
                        "run on a GPU machine, or set runtime.device=auto (or cpu) to run on the CPU")


ENGINE_STAGES = ("prompt_generator", "improver", "responses", "eval")


def check_engines(recipe: Recipe) -> None:
    """Every vLLM engine can be started: vllm importable here, or by the python of engine.python.
    Only a spec lookup, not an import: vLLM's import takes seconds."""
    import importlib.util
    import subprocess

    checked = set()
    for stage in ENGINE_STAGES:
        cfg = recipe.engine_for(stage)
        if cfg.kind != "vllm" or cfg.python in checked:
            continue
        checked.add(cfg.python)
        key = f"{stage}.engine" if getattr(recipe, stage).engine is not None else "engine"
        if cfg.python is None:
            if importlib.util.find_spec("vllm") is None:
                raise UserError(f"{key}.kind vllm: vllm is not installed in this environment; set {key}.python to "
                                "the python of a vLLM environment (scripts/setup_vllm_env.sh builds .venv-vllm)")
            continue
        python = resolve_path(cfg.python)
        try:
            found = subprocess.run([python, "-c", "import importlib.util, sys; "
                                    "sys.exit(importlib.util.find_spec('vllm') is None)"],
                                   capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"{key}.python: {cfg.python} does not run ({type(e).__name__}); point it at the "
                            "bin/python of a vLLM environment") from None
        if not found:
            raise UserError(f"{key}.python: {cfg.python} cannot import vllm; build a vLLM environment with "
                            f"scripts/setup_vllm_env.sh and point {key}.python at its bin/python")


def check_corpus(recipe: Recipe) -> None:
    cfg = recipe.data.corpus
    found = 0
    for found, _ in enumerate(iter_corpus(cfg), 1):
        if found >= CORPUS_SAMPLE:
            break
    if not found:
        raise UserError(f"{cfg.path}: the corpus has no text (data.corpus.format is {cfg.format}, text_field "
                        f"{cfg.text_field!r}); point data.corpus.path at a file with paragraphs of text")


def check_tokenizer(recipe: Recipe):
    """θ0's tokenizer with the recipe's chat template, rendered once on a short conversation."""
    from synpo.models import load_tokenizer

    template = recipe.model.chat_template
    from synpo.gguf import checkpoint

    tokenizer = load_tokenizer(checkpoint(resolve_path(recipe.model.path)),
                               trust_remote_code=recipe.model.trust_remote_code, chat_template=template)
    conversation = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]
    try:
        tokenizer.apply_chat_template(conversation, tokenize=False)
        tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja2's syntax, undefined and raise_exception errors alike
        source = template if template and Path(template).is_file() else "model.chat_template"
        line = f":{e.lineno}" if getattr(e, "lineno", None) else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        field = "model.chat_template" if template else f"the chat template of {recipe.model.path}"
        raise UserError(f"{source}{line}: {field} does not render a conversation ({type(e).__name__}: {first}); "
                        "fix the template or set model.chat_template to a working one") from None
    return tokenizer


def check_seed_lengths(recipe: Recipe, seed: Seed, tokenizer) -> None:
    """The improver R_t learns from (seed prompt, draft) -> gold. TRL drops a training row whose
    prompt alone fills train.max_length (it would teach nothing): when every seed row is such
    a row, the improver could never train, so that is an error now rather than in round 1."""
    from synpo.stages.improver import improver_messages

    limit = recipe.improver.train.max_length
    texts = [tokenizer.apply_chat_template(improver_messages(row["prompt"], ""), tokenize=False,
                                           add_generation_prompt=True) for row in seed.rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n >= limit]
    if len(too_long) == len(lengths):
        shortest = min(lengths)
        raise UserError(f"{seed.where[lengths.index(shortest)]}: field {recipe.data.seed.prompt_field!r}: every seed "
                        f"prompt is too long to train the improver on (the shortest fills {shortest} tokens of "
                        f"improver.train.max_length {limit}); raise improver.train.max_length or use shorter prompts")
    if too_long:
        log(f"[yellow]seed[/yellow]: {len(too_long)} of {len(lengths)} prompts fill improver.train.max_length "
            f"({limit} tokens) on their own, e.g. {seed.where[too_long[0]]}; the improver cannot learn from those rows")


def check_judge_template(recipe: Recipe) -> None:
    if recipe.scorer.kind != "judge":
        return
    import jinja2

    from synpo.scoring.judge import render_judge_prompt

    template = recipe.scorer.template
    try:
        render_judge_prompt(template, "a prompt", "a response")
    except FileNotFoundError:
        raise UserError(f"scorer.template: {template} is neither a file nor a prompt shipped in synpo's prompts/ "
                        "(e.g. judge_score.jinja)") from None
    except jinja2.TemplateError as e:
        line = f":{e.lineno}" if getattr(e, "lineno", None) else ""
        raise UserError(f"{template}{line}: scorer.template is not a working Jinja template ({e}); it is filled "
                        "with `prompt` and `response`") from None


def check_eval_sets(recipe: Recipe) -> None:
    from synpo.evals.datasets import load_suite

    for suite in recipe.eval.suites:
        if suite != "toy":
            load_suite(suite, recipe.eval.data_dir)


def judges(recipe: Recipe) -> list[tuple[str, EngineConfig]]:
    out = []
    if recipe.scorer.kind == "judge" and recipe.scorer.judge is not None:
        out.append(("scorer.judge", recipe.scorer.judge))
    judged = [s for s in recipe.eval.suites if s in ("arena_hard", "mt_bench")
              or (s == "alpaca_eval" and recipe.eval.alpaca_eval_backend == "builtin")]
    if judged and recipe.eval.judge is not None:
        out.append(("eval.judge", recipe.eval.judge))
    return out


PROBE_TIMEOUT = 15.0  # seconds for the test question: a one-token reply, or the judge is not there


def probe_judge(what: str, cfg: EngineConfig, url_field: str | None = None, key_field: str | None = None) -> None:
    """One one-token question (not cached, not retried, a short timeout): a wrong URL, key or model,
    or a server whose replies are not chat completions, stops the run before it starts, in seconds
    rather than after the engine's retries and backoff. `url_field`, `key_field`: the base URL's and
    the key variable's names as the user wrote them (default WHAT.base_url, WHAT.api_key_env)."""
    import os

    from synpo.engines.base import Request, Sampling
    from synpo.engines.openai import OpenAIEngine, OpenAIEngineError, RequestRejected

    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise UserError(f"{key_field or what + '.api_key_env'}: the environment variable {cfg.api_key_env} is not "
                        "set; export it with the judge's API key")

    probe = cfg.model_copy(update={"cache": False, "max_retries": 0, "timeout": min(cfg.timeout, PROBE_TIMEOUT)})
    engine = OpenAIEngine(probe, model=cfg.model)
    try:
        engine.generate([Request("probe", [{"role": "user", "content": "Reply with OK."}])],
                        Sampling(temperature=0.0, max_new_tokens=1))
    except RequestRejected as e:
        raise UserError(f"{what}: the judge at {cfg.base_url} refused a test question: {e}") from None
    except OpenAIEngineError as e:
        problem = str(e).split(" (gave up after")[0].removeprefix(f"{engine.url}: ")
        raise UserError(f"{url_field or what + '.base_url'}: the judge at {cfg.base_url} does not answer a test "
                        f"question ({problem}); check the URL and that the server is up") from None
    finally:
        engine.close()
