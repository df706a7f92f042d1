"""SCOTT's teacher side (``teacher.hf.contrastive``): the lock-step contrastive decoder against a
hand-computed argmax on tiny local models, the perturbed answer, `kpod teach` end to end into the
``scott`` format's ``counterfactual: teacher``, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kpod.data.formats import perturb_answer
from kpod.data.load import load_data
from kpod.data.records import DataError
from kpod.recipe import RecipeError, load_recipe, validate_recipe
from kpod.teach.base import TeacherError
from kpod.teach.contrastive import contrastive_greedy, contrastive_scores, open_stream
from kpod.teach.counterfactual import perturbed_answer
from kpod.teach.filter import Question
from kpod.teach.local import HFTeacher, cut_at_stop
from kpod.teach.prompts import Sampling, build_messages, plain_text
from kpod.teach.run import teach
from kpod.teacher_config import ContrastiveConfig, TeacherHFConfig
from tests.teach.test_teach import QUESTIONS, cache_rows, teach_recipe

PROMPT = "Q: {question}\nA: The answer is {answer}."
PROMPTS = [  # gold-answer prompts of different lengths, and their perturbed-answer contrasts
    ("Q: Dan has 15 caps and finds 18 more.\nA: The answer is 33.", "Q: Dan has 15 caps and finds 18 more.\nA: The answer is 31."),
    ("Q: 3 bags?\nA: The answer is 48.", "Q: 3 bags?\nA: The answer is ."),
    ("Q: There are 40 birds and 13 fly away. How many birds are left?\nA: The answer is 27.",
     "Q: There are 40 birds and 13 fly away. How many birds are left?\nA: The answer is 29."),
]


def _lively(kind: str, path: Path) -> Path:
    """A tiny random model whose greedy continuations vary (default init repeats one token)."""
    from kpod.data.tokenize import train_tokenizer
    from kpod.models.config import TinyModelConfig
    from kpod.models.student import Student, build_tiny, save_student

    torch.manual_seed(0)
    tok = train_tokenizer([f"Q: {q}\nA: The answer is {a}. We count." for q, a in QUESTIONS] * 4, 200)
    model = build_tiny(kind, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.5)
    save_student(Student(model, tok, kind == "tiny:t5", kind), str(path))
    return path


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "questions.json"
    path.write_text(json.dumps([{"instruction": q, "output": "", "label": a} for q, a in QUESTIONS]))
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contrastive")
    return {kind: _lively(kind, root / kind.split(":")[1]) for kind in ("tiny:llama", "tiny:t5")}


def _ids(teacher: HFTeacher, text: str) -> list[int]:
    """The prompt as the teacher feeds it: causal BOS + text; encoder text + EOS."""
    tok = teacher.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [*ids, tok.eos_token_id] if teacher.is_encoder_decoder else [tok.bos_token_id, *ids]


@torch.no_grad()
def reference(teacher: HFTeacher, gold: str, pert: str, gamma: float, n: int, stops: set[int]) -> tuple[list[int], bool]:
    """One prompt pair, no padding, no cache: the full sequence re-run every step, the release's rule."""
    model, a, b, out = teacher.model, _ids(teacher, gold), _ids(teacher, pert), []
    start = [model.config.decoder_start_token_id] if teacher.is_encoder_decoder else []
    for _ in range(n):
        if teacher.is_encoder_decoder:
            z1 = model(input_ids=torch.tensor([a]), decoder_input_ids=torch.tensor([start + out])).logits[0, -1]
            z2 = model(input_ids=torch.tensor([b]), decoder_input_ids=torch.tensor([start + out])).logits[0, -1]
        else:
            z1 = model(input_ids=torch.tensor([a + out])).logits[0, -1]
            z2 = model(input_ids=torch.tensor([b + out])).logits[0, -1]
        if int(z1.argmax()) in stops:  # the plain gold-prompt distribution says stop
            return out, True
        t = int(contrastive_scores(z1, z2, gamma, 1.0).argmax())
        if t in stops:
            return out, True
        out.append(t)
    return out, False


def _padded(teacher: HFTeacher, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [_ids(teacher, t) for t in texts]
    width = max(map(len, ids))
    pad = teacher.pad_id
    rows = [(x + [pad] * (width - len(x)), [1] * len(x) + [0] * (width - len(x))) if teacher.is_encoder_decoder
            else ([pad] * (width - len(x)) + x, [0] * (width - len(x)) + [1] * len(x)) for x in ids]
    return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


@pytest.mark.parametrize("kind", ["tiny:llama", "tiny:t5"])
def test_batched_lock_step_decoding_equals_the_hand_computed_argmax(teachers, kind):
    teacher = HFTeacher(str(teachers[kind]), TeacherHFConfig())
    eos, n = teacher.tokenizer.eos_token_id, 10
    free = [reference(teacher, g, p, 0.5, n, {eos}) for g, p in PROMPTS]
    assert all(len(toks) == n for toks, _ in free)  # the random model never says EOS here
    stops = {eos, free[0][0][3]}  # a token row 0 chooses at step 4: it must stop there, the others go on
    expected = [reference(teacher, g, p, 0.5, n, stops) for g, p in PROMPTS]
    gold = open_stream(teacher.model, *_padded(teacher, [g for g, _ in PROMPTS]))
    pert = open_stream(teacher.model, *_padded(teacher, [p for _, p in PROMPTS]))
    got = contrastive_greedy(gold, pert, max_new_tokens=n, stop_ids=stops, gamma=0.5)
    assert [(d.tokens, d.stopped) for d in got] == expected
    assert got[0].stopped and len(got[0].tokens) <= 3 and not all(d.stopped for d in got)  # per row, batch shrank
    assert [d.tokens for d in got] != [toks for toks, _ in free]  # the stop token mattered
    plain = [reference(teacher, g, p, 0.0, n, {eos})[0] for g, p in PROMPTS]
    assert plain != [toks for toks, _ in free]  # and the contrast changed the rationales


@pytest.mark.parametrize("kind", ["tiny:llama", "tiny:t5"])
def test_with_gamma_zero_contrastive_decoding_is_plain_greedy_generation(teachers, kind):
    teacher = HFTeacher(str(teachers[kind]), TeacherHFConfig())
    golds, perts = [g for g, _ in PROMPTS], [p for _, p in PROMPTS]
    greedy = teacher.generate(golds, Sampling(0.0, 1.0, 12), seed=0)
    contrastive = teacher.generate_contrastive(golds, perts, 12, ContrastiveConfig(gamma=0.0))
    assert [(c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens) for c in contrastive] == \
           [(c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens) for c in greedy]
    assert len({c.text for c in greedy}) == 3 and all(c.text for c in greedy)
    with pytest.raises(TeacherError, match=r"teacher\.hf\.contrastive\.stop: 'Dan has 15' is \d+ tokens"):
        teacher.generate_contrastive(golds, perts, 4, ContrastiveConfig(stop=["Dan has 15"]))


def test_a_stop_text_ends_the_rationale_also_inside_a_longer_token(teachers):
    assert cut_at_stop("So 5.\n\nQ: next one", ["\n\n", "Q:"]) == ("So 5.", True)
    assert cut_at_stop("So 5.", ["\n\n"]) == ("So 5.", False)
    teacher = HFTeacher(str(teachers["tiny:llama"]), TeacherHFConfig())
    golds, perts = [g for g, _ in PROMPTS], [p for _, p in PROMPTS]
    free = teacher.generate_contrastive(golds, perts, 12, ContrastiveConfig())
    stopped = teacher.generate_contrastive(golds, perts, 12, ContrastiveConfig(stop=["a"]))  # "a" is one token
    assert [c.text for c in stopped] == [cut_at_stop(c.text, ["a"])[0].strip() for c in free]
    changed = [i for i, (a, b) in enumerate(zip(free, stopped)) if a.text != b.text]
    assert changed and all(stopped[i].finish_reason == "stop" for i in changed)


class _Scripted:
    """A stream whose next-token logits are given per step (the stop rule on hand-made numbers)."""

    def __init__(self, steps: list[list[float]]) -> None:
        self.steps, self.pending, self.fed = steps, torch.zeros((1, 1), dtype=torch.long), []

    def logits(self) -> torch.Tensor:
        return torch.tensor([self.steps[len(self.fed)]])

    def keep(self, rows: torch.Tensor) -> None:
        pass

    def feed(self, tokens: torch.Tensor) -> None:
        self.fed.append(int(tokens[0]))


def test_the_stop_test_is_made_on_the_plain_gold_distribution():
    # vocabulary [stop, x, y]; step 1: the contrast picks y; step 2: the gold prompt's argmax is the
    # stop token while the contrast alone would pick x — the release stops, so does kpod
    gold = _Scripted([[0.0, 1.0, 0.9], [2.0, 1.9, 0.0]])
    pert = _Scripted([[0.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    assert int(contrastive_scores(torch.tensor([2.0, 1.9, 0.0]), torch.tensor([4.0, 0.0, 0.0])).argmax()) == 1
    out = contrastive_greedy(gold, pert, max_new_tokens=5, stop_ids={0}, gamma=0.5)  # type: ignore[arg-type]
    assert (out[0].tokens, out[0].stopped) == ([2], True) and gold.fed == pert.fed == [2]


def test_the_perturbed_answer_differs_from_the_gold_one_and_is_deterministic():
    cfg = ContrastiveConfig()
    qs = [Question(f"svamp/train/{i:05d}", q, a) for i, (q, a) in enumerate(QUESTIONS)]
    wrong = [perturbed_answer(q, cfg, seed=0) for q in qs]
    assert all(w != q.gold and float(w) == int(w) for w, q in zip(wrong, qs))  # another whole number
    assert wrong == [perturbed_answer(q, cfg, seed=0) for q in qs]
    assert wrong == [perturb_answer(q.gold, 0, q.sample_id) for q in qs]  # the scott format's own rule
    choice = ContrastiveConfig(choices=["A", "B", "C", "D", "E"])
    picks = {perturbed_answer(Question(f"csqa/{i}", "?", "C"), choice, seed=1) for i in range(40)}
    assert picks <= {"A", "B", "D", "E"} and len(picks) > 1
    assert perturbed_answer(Question("s", "?", "yes"), cfg, 0) == "no"
    with pytest.raises(DataError, match="teacher.hf.contrastive.choices"):
        perturbed_answer(Question("s", "?", "blotter"), cfg, 0)


def _contrastive_recipe(questions_file: Path, teacher: Path, **extra) -> dict:
    # keep_truncated: the release keeps every rationale, and the tiny teacher's all end at max_tokens
    return teach_recipe(questions_file, backend="hf", model=str(teacher), prompt=PROMPT, rationales="first", limit=4,
                        keep_truncated=True, hf={"batch_size": 3, "contrastive": {"gamma": 0.5, **extra}})


def test_teach_writes_factual_and_counterfactual_rationales_that_the_scott_format_reads(
    tmp_path, teachers, questions_file
):
    raw = _contrastive_recipe(questions_file, teachers["tiny:llama"])
    recipe = validate_recipe(raw, "<test>")
    out = tmp_path / "out"
    s = teach(recipe, out, quiet=True)
    assert [(r["round"], r["generated"]) for r in s["rounds"]] == [("samples", 4), ("counterfactuals", 4)]
    ids = [f"svamp/train/{i:05d}" for i in range(4)]
    wrong = {sid: perturb_answer(a, 0, sid) for sid, (_, a) in zip(ids, QUESTIONS)}
    rows = {(r["sample_id"], r["role"]): r for r in cache_rows(out / "teacher_cache.jsonl")}
    assert len(rows) == 8
    for sid, (_, gold) in zip(ids, QUESTIONS):
        assert rows[sid, "factual"]["answer"] == gold and rows[sid, "counterfactual"]["answer"] == wrong[sid]
    # the factual rationale is the decode of "… The answer is a*." against "… The answer is a'."
    teacher = HFTeacher(str(teachers["tiny:llama"]), TeacherHFConfig())
    cfg = recipe.teacher
    text = lambda a: plain_text(build_messages(cfg, [], QUESTIONS[0][0], a))  # noqa: E731
    assert text("33") == f"Q: {QUESTIONS[0][0]}\nA: The answer is 33."
    alone = teacher.generate_contrastive([text("33")], [text(wrong[ids[0]])], 8, cfg.hf.contrastive)[0]
    assert rows[ids[0], "factual"]["completion"] == alone.text
    assert any(rows[i, "factual"]["completion"] != rows[i, "counterfactual"]["completion"] for i in ids)
    facts = json.loads((out / "train.json").read_text())
    cfs = json.loads((out / "train_counterfactual.json").read_text())
    assert [r["id"] for r in facts] == ids and [r["id"] for r in cfs] == [f"{i}#counterfactual" for i in ids]
    assert [(r["label"], r["gold"]) for r in cfs] == [(wrong[i], a) for i, (_, a) in zip(ids, QUESTIONS)]
    assert s["splits"]["train"]["counterfactual"]["kept"] == 4 and s["teacher"]["contrastive"]["gamma"] == 0.5
    # resumed: nothing generated again; a plain (non-contrastive) run on the same cache shares no key
    assert teach(recipe, out, quiet=True)["this_run"]["rows"] == 0
    plain = teach_recipe(questions_file, backend="hf", model=str(teachers["tiny:llama"]), rationales="first", limit=4,
                         cache=str(out / "teacher_cache.jsonl"))
    assert teach(validate_recipe(plain, "<test>"), tmp_path / "plain", quiet=True)["this_run"]["rows"] == 4

    student = {"name": "scott_on_teacher", "data": {
        "source": {"name": "svamp", "params": {"rationales": "all", "files": {
            "train": str(out / "train.json"), "train_counterfactual": str(out / "train_counterfactual.json")}}},
        "format": {"name": "scott", "params": {"counterfactual": "teacher"}}}}
    report: dict = {}
    train = {r.sample_id: r for r in load_data(validate_recipe(student, "<test>"), report)["train"]}
    assert sorted(train) == sorted([f"{i}#factual" for i in ids] + [f"{i}#cf" for i in ids])
    for sid, row in zip(ids, cfs):
        cf = train[f"{sid}#cf"]
        assert cf.answer == wrong[sid] and cf.meta["gold_answer"] == train[f"{sid}#factual"].answer
        assert cf.question == f"[counterfactual] {row['instruction']}" and cf.rationale in row["output"][0]
        assert cf.meta["given"] == "all" and cf.question_id == sid
    assert report["format"]["counterfactuals"] == 4 and report["format"]["no_counterfactual"]["count"] == 0


def test_a_missing_counterfactual_is_a_counted_drop_and_none_at_all_is_an_error(tmp_path, teachers, questions_file):
    out = tmp_path / "out"
    teach(validate_recipe(_contrastive_recipe(questions_file, teachers["tiny:llama"], perturbed="empty"), "<t>"), out,
          quiet=True)
    rows = cache_rows(out / "teacher_cache.jsonl")
    assert all(r["answer"] in (r["gold"], perturb_answer(r["gold"], 0, r["sample_id"])) for r in rows)
    cfs = json.loads((out / "train_counterfactual.json").read_text())
    (out / "three.json").write_text(json.dumps(cfs[::-1][:3]))  # reordered, one left out: matched by id
    (out / "none.json").write_text(json.dumps([{**r, "id": f"other/{i}#counterfactual"} for i, r in enumerate(cfs)]))

    def load(files: dict) -> tuple[dict, dict]:
        raw = {"name": "s", "data": {"source": {"name": "svamp", "params": {"rationales": "all", "files": files}},
                                     "format": {"name": "scott", "params": {"counterfactual": "teacher"}}}}
        report: dict = {}
        return {r.sample_id: r for r in load_data(validate_recipe(raw, "<t>"), report)["train"]}, report

    train_file = str(out / "train.json")
    train, report = load({"train": train_file, "train_counterfactual": str(out / "three.json")})
    assert report["format"]["no_counterfactual"]["sample_ids"] == ["svamp/train/00000"]
    assert report["format"]["counterfactuals"] == 3 and "svamp/train/00000#cf" not in train
    assert train["svamp/train/00003#cf"].answer == cfs[3]["label"]
    with pytest.raises(DataError, match="no training question has a counterfactual"):
        load({"train": train_file, "train_counterfactual": str(out / "none.json")})
    with pytest.raises(DataError, match="data.format.params.counterfactual_split"):
        load({"train": train_file})


def test_contrastive_decoding_is_refused_where_it_cannot_run(questions_file, tmp_path):
    api = teach_recipe(questions_file, prompt=PROMPT, rationales="first", hf={"contrastive": {}})
    with pytest.raises(RecipeError, match=r"teacher\.hf\.contrastive: contrastive decoding needs the teacher's "
                                          r"next-token logits.*backend 'openai'"):
        validate_recipe(api, "<t>")
    local = {"backend": "hf", "prompt": PROMPT, "rationales": "first", "hf": {"contrastive": {}}}
    for change, match in [({"prompt": "Q: {question}"}, r"must contain '\{answer\}'"),
                          ({"temperature": 0.7}, "greedy"), ({"rationales": "correct"}, "rationales: first"),
                          ({"hf": {"contrastive": {"gamma": -1}}}, "gamma")]:
        with pytest.raises(RecipeError, match=match):
            validate_recipe(teach_recipe(questions_file, **{**local, **change}), "<t>")
    shots = [{"question": "1 + 1?", "rationale": "One and one make two.", "answer": "2"}]
    ok = validate_recipe(teach_recipe(questions_file, **local, few_shot=shots, few_shot_answer="{rationale}"), "<t>")
    msgs = build_messages(ok.teacher, ok.teacher.few_shot, "2 + 2?", "4")
    assert plain_text(msgs) == "Q: 1 + 1?\nA: The answer is 2. One and one make two.\n\nQ: 2 + 2?\nA: The answer is 4."


def test_shipped_scott_teacher_recipes_validate():
    root = Path(__file__).resolve().parents[2] / "recipes"
    t = load_recipe(root / "teach" / "svamp_scott_contrastive.yaml").teacher
    c = t.hf.contrastive
    assert t.backend == "hf" and "{answer}" in t.prompt and t.rationales == "first" and t.max_tokens == 128
    assert (c.gamma, c.tau, c.perturbed, c.counterfactual, c.stop) == (0.5, 1.0, "wrong_answer", True, ["\n\n"])
    s = load_recipe(root / "paper" / "baselines" / "svamp_flan_t5_large_scott_teacher.yaml")
    assert s.data.format.params.counterfactual == "teacher" and s.data.source.params.rationales == "all"
    files = s.data.source.params.files
    assert files[s.data.format.params.counterfactual_split] == "data/teach/svamp_scott/train_counterfactual.json"
    assert files["train"] == "data/teach/svamp_scott/train.json" and files["test"].endswith("SVAMP/test.json")
