"""Scorers on tiny random-weight stand-ins: reward model (stock and custom-code), PairRM wiring, LLM judge."""

import math
import sys
import types

import pytest
import torch

from synpo.errors import UserError
from synpo.recipe import EngineConfig, ScorerConfig
from synpo.scoring import make_scorer, score_gaps, score_groups
from tests.paper_stand_ins import build_armo_like, build_reward_model, build_tiny_pairrm

torch.set_num_threads(1)

PROMPTS = ["Sort these numbers: 3 1 2", "Reverse the words: red blue green", "How many fruits: apple, saw?",
           "Write in capital letters: rope white", "hi", "Count the colors in: red, cat, blue, dog, green"]
RESPONSES = ["1 2 3", "green blue red", "1", "ROPE WHITE", "hello! " * 12, "3"]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return build_reward_model(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def armo_like(tmp_path_factory):
    return build_armo_like(tmp_path_factory.mktemp("armo") / "armo")


def rm_scorer(path, **kw):
    return make_scorer(ScorerConfig(kind="reward_model", path=str(path), **kw), device="cpu")


def final_token_reference(scorer, prompt, response):
    """The score head on the last token of the unpadded conversation (what a reward model means)."""
    model = scorer.model
    ids = torch.tensor([scorer.render(prompt, response)])
    with torch.inference_mode():
        hidden = model.model(ids).last_hidden_state[0, -1]
        return float(model.score(hidden)[0])


def test_batched_scores_equal_one_at_a_time_and_the_final_token(reward_model):
    scorer = rm_scorer(reward_model, batch_size=4)
    batched = scorer.score(PROMPTS, RESPONSES)
    single = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    reference = [final_token_reference(scorer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert batched == pytest.approx(reference, abs=1e-4)
    assert len({round(s, 3) for s in batched}) > 1  # the stand-in tells responses apart

    # Why the pad id is chosen per batch: pad = eos here, and the template ends each turn with
    # eos, so transformers' own pooling (last non-pad token) reads the wrong position.
    tok, model = scorer.tokenizer, scorer.model
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False) for p, r in zip(PROMPTS, RESPONSES)]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    model.config.pad_token_id = tok.pad_token_id
    with torch.inference_mode():
        naive = model(**enc).logits[:, 0].tolist()
    assert naive != pytest.approx(reference, abs=1e-4)


def test_reward_model_renders_with_its_own_template_and_cuts_to_max_length(reward_model):
    scorer = rm_scorer(reward_model, max_length=12)
    scorer._load()
    text = scorer.tokenizer.decode(scorer.render("Sort: 2 1", "1 2"))
    assert len(scorer.render("Sort: 2 1", "1 2 " * 40)) == 12
    full = rm_scorer(reward_model)
    full._load()
    assert full.tokenizer.decode(full.render("Sort: 2 1", "1 2")).startswith("### user:\nSort: 2 1")
    assert text.endswith("### assistant:\n1 2<|end|>")  # an over-long conversation keeps its end
    scores = scorer.score(PROMPTS, RESPONSES)
    assert scorer.truncated > 0 and all(math.isfinite(s) for s in scores)


def test_custom_code_reward_model_needs_trust_remote_code_in_the_recipe(armo_like):
    # (transformers copies the model's code into its modules cache, as for any trust_remote_code model)
    with pytest.raises(UserError, match="trust_remote_code: true"):
        rm_scorer(armo_like)
    scorer = rm_scorer(armo_like, trust_remote_code=True, batch_size=4)
    batched = scorer.score(PROMPTS, RESPONSES)
    single = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert type(scorer.model).__name__ == "TinyRewardModelWithGating"  # its own class, its `score` output
    scorer.close()
    assert scorer.model is None
    assert scorer.score(PROMPTS[:1], RESPONSES[:1]) == pytest.approx(batched[:1], abs=1e-4)  # reloads


def test_armorm_shaped_code_loads_and_gates_on_the_assistant_header(armo_like):
    """The stand-in imports and calls what ArmoRM's modeling_custom.py does (LLAMA_INPUTS_DOCSTRING,
    gone in transformers 5, included); its score is the gated sum at the header it searches for."""
    from tests.paper_stand_ins import ARMO_HEADER

    scorer = rm_scorer(armo_like, trust_remote_code=True)
    score = scorer.score(PROMPTS[:1], RESPONSES[:1])[0]
    model, ids = scorer.model, scorer.render(PROMPTS[0], RESPONSES[0])
    header = scorer.tokenizer(ARMO_HEADER, add_special_tokens=False)["input_ids"]
    at = max(j for j in range(len(ids)) if ids[j:j + len(header)] == header)
    with torch.inference_mode():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
        gate = torch.softmax(model.gating(hidden[at]), dim=-1)
        expected = float((gate * model.regression_layer(hidden[-1])).sum())
    assert score == pytest.approx(expected, abs=1e-5)


def test_an_over_long_conversation_keeps_its_end_and_armorm_finds_its_header(armo_like):
    """Cutting the head would drop the assistant header ArmoRM's gating searches for (it raises);
    the scorer keeps BOS and the end: the header, the response and its last token."""
    scorer = rm_scorer(armo_like, trust_remote_code=True, max_length=24)
    long_prompt = "Sort these numbers: " + " ".join(str(i) for i in range(200))
    scores = scorer.score([long_prompt, PROMPTS[0]], ["0 1 2", RESPONSES[0]])
    assert scorer.truncated == 1 and all(math.isfinite(x) for x in scores)
    ids = scorer.render(long_prompt, "0 1 2")
    full = scorer.tokenizer.apply_chat_template([{"role": "user", "content": long_prompt},
                                                 {"role": "assistant", "content": "0 1 2"}], tokenize=False)
    full_ids = scorer.tokenizer(full, add_special_tokens=False)["input_ids"]
    assert len(ids) == 24 and ids[-20:] == full_ids[-20:]
    assert scorer.tokenizer.decode(ids).endswith("### assistant:\n0 1 2" + scorer.tokenizer.eos_token)


def test_reward_model_code_that_does_not_import_stops_before_any_stage(armo_like, tmp_path):
    import shutil

    from synpo.scoring.reward_model import check_remote_code

    broken = tmp_path / "broken_armo"
    shutil.copytree(armo_like, broken)
    code = broken / "modeling_custom.py"
    code.write_text(code.read_text().replace("import LLAMA_INPUTS_DOCSTRING", "import LLAMA_GONE_FOR_GOOD"))
    check_remote_code(str(armo_like), True)  # the real shape imports (the shim for transformers 5)
    with pytest.raises(UserError, match=r"modeling_custom\.py\) does not import with transformers .*LLAMA_GONE"):
        check_remote_code(str(broken), True)  # what preflight and the scorer call before any work
    with pytest.raises(UserError, match="trust_remote_code: true"):  # untrusted code is never imported
        check_remote_code(str(broken), False)


def test_gaps_are_differences_of_reward_scores(reward_model):
    scorer = rm_scorer(reward_model)
    a, b = scorer.score(PROMPTS, RESPONSES), scorer.score(PROMPTS, RESPONSES[::-1])
    assert score_gaps(scorer, PROMPTS, RESPONSES, RESPONSES[::-1]) == pytest.approx([x - y for x, y in zip(a, b)])
    groups = score_groups(scorer, PROMPTS[:2], [RESPONSES[:3], RESPONSES[3:]])
    assert [len(g) for g in groups] == [3, 3]
    assert groups[0][0] == pytest.approx(scorer.score([PROMPTS[0]], [RESPONSES[0]])[0], abs=1e-4)


# ---- PairRM through llm-blender ----


def test_pairwise_without_llm_blender_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_blender", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pairrm"):
        make_scorer(ScorerConfig(kind="pairwise", path="llm-blender/PairRM"))


def test_pairwise_with_llm_blender_on_a_tiny_pairrm(tmp_path):
    """The real llm-blender package (the pairrm extra) on a PairRM-architecture ranker built locally."""
    from synpo.scoring.pairwise import _import_blender

    try:
        _import_blender()
    except UserError:
        pytest.skip("llm-blender is not installed (pip install -e '.[pairrm]')")
    path = build_tiny_pairrm(tmp_path)
    scorer = make_scorer(ScorerConfig(kind="pairwise", path=str(path), batch_size=2), device="cpu")
    prompts, a, b = PROMPTS[:4], RESPONSES[:4], RESPONSES[::-1][:4]
    gaps = score_gaps(scorer, prompts, a, b)
    # both orders are compared, so swapping the candidates negates the gap exactly
    assert score_gaps(scorer, prompts, b, a) == pytest.approx([-g for g in gaps], abs=1e-6)
    assert [score_gaps(scorer, [p], [x], [y])[0] for p, x, y in zip(prompts, a, b)] == pytest.approx(gaps, abs=1e-4)
    groups = score_groups(scorer, prompts[:2], [RESPONSES[:3], RESPONSES[3:]])
    assert [len(g) for g in groups] == [3, 3] and all(math.isfinite(x) for g in groups for x in g)


class FakeBlender:
    """llm-blender's Blender API as documented (loadranker / compare / rank); records the calls."""

    calls: list = []

    def loadranker(self, path, device=None):
        FakeBlender.calls.append(("loadranker", path, device))

    def compare(self, inputs, candidates_A, candidates_B, batch_size=4, return_logits=False, mode="[A,B]+[B,A]"):
        FakeBlender.calls.append(("compare", len(inputs), batch_size, return_logits, mode))
        import numpy as np

        return np.array([float(len(a) - len(b)) for a, b in zip(candidates_A, candidates_B)])

    def rank(self, inputs, candidates, return_scores=False, batch_size=8):
        FakeBlender.calls.append(("rank", len(inputs), return_scores))
        import numpy as np

        return np.array([[float(len(c)) for c in row] for row in candidates])


def test_pairwise_gap_is_the_symmetric_pairrm_logit(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_blender", types.SimpleNamespace(Blender=FakeBlender))
    FakeBlender.calls = []
    scorer = make_scorer(ScorerConfig(kind="pairwise", path="llm-blender/PairRM", batch_size=7), device="cpu")
    gaps = score_gaps(scorer, ["p1", "p2"], ["long answer", "a"], ["short", "longer"])
    assert gaps == [6.0, -5.0]
    assert ("loadranker", "llm-blender/PairRM", "cpu") in FakeBlender.calls
    assert ("compare", 2, 7, True, "[A,B]+[B,A]") in FakeBlender.calls
    assert score_groups(scorer, ["p"], [["a", "bbb", "cc"]]) == [[1.0, 3.0, 2.0]]
    with pytest.raises(UserError, match="cannot rate one alone"):
        scorer.score(["p"], ["a"])


# ---- LLM judge ----


class FakeEngine:
    def __init__(self, replies):
        self.replies, self.requests = replies, []

    def generate(self, requests, sampling):
        from synpo.engines.base import Completion

        self.requests += requests
        assert sampling.temperature == 0.0
        return [Completion(r.id, [self.replies[i % len(self.replies)]], ["stop"], [5]) for i, r in enumerate(requests)]


def test_judge_parses_ratings_as_mt_bench_does_and_counts_unparseable():
    from synpo.scoring.judge import JudgeScorer

    cfg = ScorerConfig(kind="judge", judge=EngineConfig(kind="openai", base_url="http://127.0.0.1:9/v1",
                                                        model="judge-model", api_key_env="JUDGE_KEY"))
    replies = ["Fine. Rating: [[9]]", "I cannot rate this.", "[[3]] at first, then Rating: [[8.5]]",
               "Rating: [[42]]", "Score: 4", "Rating: [6]"]
    engine = FakeEngine(replies)
    scorer = JudgeScorer(cfg, engine=engine)
    scores = scorer.score(["Sort: 2 1", "Reverse: a b", "c", "d", "e", "f"], ["1 2", "b a", "c", "d", "e", "f"])
    # FastChat's reading (the first [[N]], else [N], within 1-10); no rating: NaN, counted
    assert [None if math.isnan(s) else s for s in scores] == [9.0, None, 3.0, None, None, 6.0]
    assert scorer.unparseable == 3
    user_turn = engine.requests[0].messages[-1]["content"]
    assert "[Question]\nSort: 2 1" in user_turn and "1 2\n[The End of Assistant's Answer]" in user_turn
    gaps = score_gaps(scorer, ["a", "b"], ["x", "y"], ["z", "w"])
    assert not any(g > -100 for g in gaps if math.isnan(g))  # a NaN gap never passes a threshold


def test_judge_needs_a_model_name():
    with pytest.raises(UserError, match="scorer.judge.model"):
        make_scorer(ScorerConfig(kind="judge", judge=EngineConfig(kind="openai", base_url="http://x/v1")))


def test_judge_over_the_openai_client_on_a_loopback_server():
    """The real OpenAI-compatible client against a scripted judge over HTTP (tests/judge_server.py)."""
    from judge_server import ScriptedJudge, mt_rating

    from synpo.scoring.judge import render_judge_prompt

    prompts, responses = ["Sort: 3 1 2", "Reverse: a b", "Count: x, y"], ["1 2 3", "b a", "2"]
    with ScriptedJudge(malformed=lambda messages: "Count: x, y" in messages[1]["content"]) as server:
        cfg = ScorerConfig(kind="judge", judge={"base_url": server.base_url, "model": "scripted-judge",
                                                "cache": False, "max_retries": 0})
        scorer = make_scorer(cfg)
        scores = scorer.score(prompts, responses)
        scorer.close()
    # the scripted judge rates from a hash of the user turn it was shown: our rendered template
    expected = [mt_rating(render_judge_prompt("judge_score.jinja", p, r)) for p, r in zip(prompts[:2], responses[:2])]
    assert scores[:2] == expected and math.isnan(scores[2]) and scorer.unparseable == 1


def test_sampling_ranking_ranks_each_prompts_samples_with_pairrm(monkeypatch, tmp_path):
    """The baseline's best-vs-worst of k samples goes through rank() for a pairwise scorer."""
    from synpo.io import read_jsonl, write_jsonl
    from synpo.recipe import load_recipe
    from synpo.stages.pairs import build_pairs

    monkeypatch.setitem(sys.modules, "llm_blender", types.SimpleNamespace(Blender=FakeBlender))
    FakeBlender.calls = []
    recipe = load_recipe(None, ["pairs.strategy=sampling_ranking", "pairs.k=3", "pairs.gap=0.5"])
    samples = [["one two", "one two three four", "x"], ["same", "same", "same"]]
    write_jsonl(tmp_path / "responses.jsonl", [{"id": f"p{i}", "prompt": f"prompt {i}", "samples": s,
                                                "finish_reasons": ["stop"] * 3} for i, s in enumerate(samples)])
    scorer = make_scorer(ScorerConfig(kind="pairwise", path="llm-blender/PairRM"), device="cpu")
    from synpo.iterate import run_stages

    inputs = next(s.inputs for s in run_stages(recipe) if s.key == "round_01/pairs")
    build_pairs(inputs, tmp_path / "responses.jsonl", None, tmp_path / "pairs.jsonl", scorer)
    (kept,) = read_jsonl(tmp_path / "pairs.jsonl")  # the second prompt's samples tie: below the gap
    assert kept["chosen"][0]["content"] == "one two three four" and kept["rejected"][0]["content"] == "x"
    assert kept["gap"] == 17.0 and ("rank", 2, True) in FakeBlender.calls
