"""The recipe's ``teacher`` section: which teacher, which prompt, how to sample, how to filter.

Pydantic only (no torch, no network), and below both :mod:`kpod.recipe` (which builds the Recipe
model from it) and :mod:`kpod.teach` (which runs it), so the recipe never imports the teach package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PROMPT = "Q: {question}\nA: Let's think step by step."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FewShotExample(_Strict):
    """One worked example shown to the teacher before the question."""

    question: str = Field(..., min_length=1)
    rationale: str = Field(..., min_length=1)
    answer: str = Field(..., min_length=1)


class TeacherApiConfig(_Strict):
    """An OpenAI-compatible chat-completions endpoint (``teacher.backend: openai``)."""

    base_url_env: str = Field(
        "OPENAI_BASE_URL", description="environment variable holding the base URL, e.g. https://api.openai.com/v1"
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the API key; null: send no key (local servers)"
    )
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(6, ge=0, description="retries of one request after 429, 5xx, timeouts, dropped connections")
    backoff_base_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, gt=0, description="longest backoff delay (a server's Retry-After is honoured as given)")
    requests_per_minute: float | None = Field(None, gt=0, description="client-side rate limit (token bucket); null: none")
    timeout_s: float = Field(
        120.0, gt=0, description="the whole request (connect, headers, reply) must finish within it, else it is retried",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> TeacherApiConfig:
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError("backoff_base_s must be <= backoff_max_s")
        return self


class ContrastiveConfig(_Strict):
    """SCOTT's contrastive decoding (Wang et al., ACL 2023) for a local teacher (docs/teacher.md)."""

    gamma: float = Field(0.5, ge=0.0, description="weight of the perturbed prompt's log-probability (release: 0.5)")
    tau: float = Field(1.0, gt=0.0, description="temperature of the gold prompt's log-probability (release: 1.0)")
    perturbed: Literal["wrong_answer", "empty"] = Field(
        "wrong_answer",
        description="the contrast prompt's answer: wrong_answer (the other one: a' against a*, a* against a'; "
        "the release's default) or empty (the answer slot left empty)",
    )
    counterfactual: bool = Field(
        True, description="also decode a counterfactual rationale per question (prompted with a', contrasted "
                          "against a*), written to OUT/<split>_counterfactual.json for the scott format",
    )
    choices: list[str] | None = Field(
        None, description="answer choices of a multiple-choice source (e.g. [A, B, C, D, E]): a' is another "
                          "choice; null: numbers move by a few units, yes/no flips",
    )
    stop: list[str] = Field(
        [], description="texts that also end a rationale besides EOS, each one teacher token (the release stops "
                        "at its few-shot separator, [\"\\n\\n\"])",
    )

    @model_validator(mode="after")
    def _lists(self) -> ContrastiveConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop: empty text")
        if self.choices is not None and (len(self.choices) < 2 or len(set(self.choices)) != len(self.choices)):
            raise ValueError("choices: at least two, each once")
        return self


class TeacherHFConfig(_Strict):
    """A local Hugging Face model (``teacher.backend: hf``), causal or encoder-decoder."""

    batch_size: int = Field(8, ge=1, description="prompts generated together")
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat: the tokenizer's chat template; plain: system, examples and prompt as text; "
        "auto: chat if the tokenizer has a template, else plain (the choice is in teach_summary.json)",
    )
    device: str = Field("auto", description="auto: cuda if available, else cpu; or a torch device string")
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="only if you trust the model's code")
    contrastive: ContrastiveConfig | None = Field(
        None, description="SCOTT's contrastive decoding of answer-conditioned rationales (greedy, lock-step with a "
                          "perturbed prompt); null: plain generation",
    )


class TeacherConfig(_Strict):
    """Teacher generation for ``kpod teach``: rationales for the data source's questions."""

    backend: Literal["openai", "hf"] = Field("openai", description="openai: a chat-completions endpoint; hf: a local model")
    model: str = Field(..., min_length=1, description="model name at the endpoint, or a Hugging Face hub id / local path")
    gguf_file: str | None = Field(
        None,
        description="backend hf: a GGUF checkpoint file inside `model` (de-quantized once and cached, as student.gguf_file)",
    )
    prompt: str = Field(DEFAULT_PROMPT, description="user message; must contain '{question}' (zero-shot CoT by default)")
    system: str | None = Field(None, description="system message (chat) or leading text (plain)")
    few_shot: list[FewShotExample] = Field([], description="worked examples shown before the question")
    few_shot_file: str | None = Field(None, description="JSON list / JSONL of {question, rationale, answer} (instead of few_shot)")
    few_shot_answer: str = Field(
        "{rationale} Therefore, the answer is {answer}.",
        description="how an example's reply is written; must contain '{rationale}' and '{answer}'",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature of the first samples (0: greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(512, ge=1, description="longest rationale, in teacher tokens")
    samples: int = Field(1, ge=1, description="rationales per question (several need temperature > 0)")
    rationales: Literal["first", "all", "correct"] = Field(
        "correct", description="keep the first sample, all samples, or those whose parsed answer equals the gold answer"
    )
    keep_truncated: bool = Field(
        False, description="keep replies the endpoint cut at max_tokens (finish_reason: length); default: dropped and counted",
    )
    resample: int = Field(
        3, ge=0, description="rationales: correct only — a question with no correct sample gets up to this many more, one at a time"
    )
    resample_temperature: float = Field(0.7, ge=0.0, le=2.0, description="temperature of the re-samples")
    splits: list[str] = Field(["train"], min_length=1, description="data splits whose questions are sent to the teacher")
    limit: int | None = Field(None, ge=1, description="at most this many questions per split (in source order)")
    cache: str | None = Field(None, description="append-only JSONL of teacher replies; default: OUT/teacher_cache.jsonl")
    price_per_1k_input: float | None = Field(None, ge=0, description="USD per 1,000 prompt tokens, for the cost estimate")
    price_per_1k_output: float | None = Field(None, ge=0, description="USD per 1,000 completion tokens, for the cost estimate")
    api: TeacherApiConfig = TeacherApiConfig()
    hf: TeacherHFConfig = TeacherHFConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TeacherConfig:
        if self.gguf_file is not None and self.backend != "hf":
            raise ValueError("gguf_file: only a local model (backend: hf) is loaded from a GGUF file")
        if "{question}" not in self.prompt:
            raise ValueError("prompt must contain '{question}'")
        if self.hf.contrastive is not None:
            self._contrastive_consistent()
        # answer-conditioned prompts already state an example's answer: its reply needs only the rationale
        for slot in ("{rationale}",) if self.hf.contrastive is not None else ("{rationale}", "{answer}"):
            if slot not in self.few_shot_answer:
                raise ValueError(f"few_shot_answer must contain '{slot}'")
        if self.few_shot and self.few_shot_file:
            raise ValueError("give few_shot or few_shot_file, not both")
        if self.samples > 1 and self.temperature == 0.0:
            raise ValueError(
                f"samples: {self.samples} samples at temperature 0 are the same rationale; set temperature > 0 or samples: 1"
            )
        if (self.price_per_1k_input is None) != (self.price_per_1k_output is None):
            raise ValueError("price_per_1k_input and price_per_1k_output: give both (for a cost estimate) or neither")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError("splits: each split at most once")
        return self

    def _contrastive_consistent(self) -> None:
        """What contrastive decoding needs: logits (a local model), the answer in the prompt, greedy."""
        field = "teacher.hf.contrastive"
        if self.backend != "hf":
            raise ValueError(
                f"{field}: contrastive decoding needs the teacher's next-token logits under two prompts; "
                f"backend {self.backend!r} returns text only. Use backend: hf, or remove {field} and write an "
                "answer-conditioned prompt (rationalisation) instead"
            )
        if "{answer}" not in self.prompt:
            raise ValueError(f"{field}: teacher.prompt must contain '{{answer}}' (the answer the rationale explains, "
                             "e.g. \"Q: {{question}}\\nA: The answer is {{answer}}.\")")
        if self.temperature != 0.0 or self.samples != 1:
            raise ValueError(f"{field}: the decoding is greedy, one rationale per prompt; set teacher.temperature: 0 "
                             "and teacher.samples: 1")
        if self.rationales == "correct":
            raise ValueError(f"{field}: the prompt gives the answer, so a rationale's parsed answer says nothing "
                             "about it; set teacher.rationales: first (the release keeps every rationale)")
