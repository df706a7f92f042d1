"""Reasoning benchmarks as data sources: ``gsm8k``, ``svamp``, ``asdiv``, ``csqa``.

Each reads local files in the formats of the public releases (GSM8K JSONL ``{question, answer}``
with ``<<…>>`` calculator annotations and a final ``#### N`` line; the MCC-KD JSON lists
``{instruction, output, label}`` where ``output`` is a string, empty, or a list of teacher
rationales) or, for splits without a file, the Hugging Face hub id (the path users with network
take). Several rationales per question are kept as ``first``, ``all`` (one record per rationale,
``sample_id`` suffixed ``#k``) or ``correct`` (only those whose parsed answer equals the gold
label — the paper's protocol); kept and dropped counts are in ``report`` and the run summary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kpod.data.records import BadRowError, BadRows, DataError, Record, check_unique_ids
from kpod.data.source_base import DataSource
from kpod.data.sources import iter_rows
from kpod.data.steps import split_steps
from kpod.eval.answers import ChoiceExtractor, NumericExtractor
from kpod.registry import DATA_SOURCES

_CALC = re.compile(r"<<[^<>]*>>")


def strip_calculator(text: str) -> str:
    """GSM8K's inline calculator annotations ``<<48/2=24>>`` are not natural text."""
    return _CALC.sub("", text)


def parse_gsm8k_solution(solution: str, where: str) -> tuple[str, str]:
    """``(rationale, answer)`` from a GSM8K solution ending in ``#### N``."""
    if "####" not in solution:
        raise BadRowError(where, "missing_field", "GSM8K answer has no '####' line")
    body, ans = solution.rsplit("####", 1)
    answer = ans.strip().replace(",", "")
    if not answer:
        raise BadRowError(where, "empty_field", "empty answer after '####'")
    return strip_calculator(body).strip(), answer


class BenchmarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: dict[str, str] = Field(default_factory=dict, description="split → local file; other splits come from the hub")
    hub_splits: list[str] = Field(default_factory=list, description="splits to load from the hub (needs network)")
    rationales: Literal["first", "all", "correct"] = Field(
        "correct", description="several teacher rationales per question: keep the first, all, or the correct ones"
    )
    id_prefix: str | None = Field(None, description="default: the source name")


class _Benchmark(DataSource):
    name: ClassVar[str]
    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    choice: ClassVar[bool] = False
    Params = BenchmarkParams
    params: BenchmarkParams

    def __init__(self, params: BenchmarkParams | None = None) -> None:
        super().__init__(params)
        self.extractor = ChoiceExtractor() if self.choice else NumericExtractor()

    # rows → (where, question, [rationales], answer, id or None); None: a skipped bad row, kept
    # in place so that default ids (the row number) do not shift
    def rows_from_file(
        self, path: Path, faults: BadRows | None = None
    ) -> list[tuple[str, str, list[str], str, str | None] | None]:
        faults = faults or BadRows()
        out: list[tuple[str, str, list[str], str, str | None] | None] = []
        for i, where, row in iter_rows(path, faults):
            out.extend([None] * (i - len(out)))
            try:
                out.append(self._file_row(row, where))
            except BadRowError as e:
                faults.handle(e)
                out.append(None)
        return out

    def _file_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        if "instruction" in row:  # MCC-KD release: {instruction, output, label}
            for key in ("instruction", "label"):
                if key not in row:
                    raise BadRowError(where, "missing_field", f"missing field {key!r}")
            output = row.get("output", "")
            rats = [o for o in (output if isinstance(output, list) else [output]) if isinstance(o, str) and o.strip()]
            rid = row.get("id")  # written by `kpod teach`: the question's sample_id stays stable
            if rid is not None and (not isinstance(rid, str) or not rid.strip()):
                raise BadRowError(where, "wrong_type", f"field 'id' must be a non-empty string, got {rid!r}")
            return where, str(row["instruction"]).strip(), rats, str(row["label"]).strip(), rid
        if "question" in row and "answer" in row:  # GSM8K release
            rationale, answer = parse_gsm8k_solution(str(row["answer"]), where)
            return where, str(row["question"]).strip(), [rationale] if rationale else [], answer, None
        raise BadRowError(
            where, "missing_field", f"expected {{instruction, output, label}} or {{question, answer}}, got {sorted(row)}"
        )

    def rows_from_hub(self, split: str) -> list[tuple[str, str, list[str], str, str | None]]:
        from datasets import load_dataset

        try:
            ds = load_dataset(self.hub_id, self.hub_config, split=split)
        except Exception as e:  # re-raised naming the data set; nothing is swallowed
            raise DataError(f"data.source ({self.name}): cannot load {self.hub_id!r} split {split!r} from the hub: {e}") from e
        return [self.hub_row(dict(r), f"{self.hub_id}[{split}][{i}]") for i, r in enumerate(ds)]

    def hub_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        raise NotImplementedError

    def load(self, step_mode: str = "default", faults: BadRows | None = None) -> dict[str, list[Record]]:
        """Records per split; bad rows (and gold answers the extractor cannot read) go to
        ``faults``: an error by default, or skipped and counted (``skipped_bad_rows``)."""
        faults = faults or BadRows()
        prefix = self.params.id_prefix or self.name
        splits: dict[str, list[Record]] = {}
        counts: dict[str, Any] = {}
        sources = {s: ("file", p) for s, p in self.params.files.items()}
        sources.update({s: ("hub", s) for s in self.params.hub_splits if s not in sources})
        if not sources:
            raise DataError(f"data.source ({self.name}): give params.files or params.hub_splits")
        for split, (kind, where) in sources.items():
            before = len(faults.rows)
            rows = self.rows_from_file(Path(where), faults) if kind == "file" else list(self.rows_from_hub(where))
            recs: list[Record] = []
            c = {"rows": 0, "rationales": 0, "kept": 0, "dropped_wrong_answer": 0,
                 "questions_without_rationale": 0, "questions_dropped": 0, "skipped_bad_rows": 0}
            for i, row in enumerate(rows):
                if row is None:
                    continue
                loc, question, rats, answer, rid = row
                problem = self.extractor.check_gold(answer)
                if problem is not None:
                    faults.handle(BadRowError(loc, "bad_answer", problem))
                    continue
                c["rows"] += 1
                base = rid or f"{prefix}/{split}/{i:05d}"
                c["rationales"] += len(rats)
                if not rats:
                    c["questions_without_rationale"] += 1
                    recs.append(Record(base, question, "", (), answer, {"where": loc}))
                    continue
                # (index in the source's list, text): the index keeps sample_ids stable across modes
                chosen = list(enumerate(rats[:1] if self.params.rationales == "first" else rats))
                if self.params.rationales == "correct":
                    ok = [(k, r) for k, r in chosen if self.extractor.is_correct(self.extractor.extract(r), answer)]
                    c["dropped_wrong_answer"] += len(chosen) - len(ok)
                    if not ok:
                        c["questions_dropped"] += 1
                        continue
                    chosen = ok
                for k, text in chosen:
                    rationale, steps = split_steps(text, step_mode)
                    sid = base if len(rats) == 1 else f"{base}#{k}"
                    recs.append(Record(sid, question, rationale, steps, answer, {"where": loc}, base))
                c["kept"] += len(chosen)
            check_unique_ids(recs, f"{self.name}:{split}")
            c["skipped_bad_rows"] = len(faults.rows) - before
            c["rows"] += c["skipped_bad_rows"]
            splits[split] = recs
            counts[split] = c
        self.report = {"source": self.name, "rationales": self.params.rationales, "splits": counts}
        return splits


@DATA_SOURCES
class Gsm8k(_Benchmark):
    """GSM8K math word problems (train: official JSONL; validation/test: the MCC-KD splits)."""

    name: ClassVar[str] = "gsm8k"
    hub_id: ClassVar[str] = "openai/gsm8k"
    hub_config: ClassVar[str | None] = "main"

    def hub_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        rationale, answer = parse_gsm8k_solution(row["answer"], where)
        return where, row["question"].strip(), [rationale], answer, None


@DATA_SOURCES
class Svamp(_Benchmark):
    """SVAMP math word problems (MCC-KD splits with GPT-3.5 rationales)."""

    name: ClassVar[str] = "svamp"
    hub_id: ClassVar[str] = "ChilleD/SVAMP"

    def hub_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        q = f"{row.get('Body', '').strip()} {row.get('Question', '').strip()}".strip()
        ans = row.get("Answer")
        return where, q, [], (str(int(ans)) if isinstance(ans, float) and ans.is_integer() else str(ans)), None


@DATA_SOURCES
class Asdiv(_Benchmark):
    """ASDiv math word problems (MCC-KD splits)."""

    name: ClassVar[str] = "asdiv"
    hub_id: ClassVar[str] = "EleutherAI/asdiv"

    def hub_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        q = f"{row.get('body', '').strip()} {row.get('question', '').strip()}".strip()
        answer = str(row.get("answer", "")).split("(")[0].strip()
        return where, q, [], answer, None


@DATA_SOURCES
class Csqa(_Benchmark):
    """CommonsenseQA, 5-way multiple choice: answers are letters A–E."""

    name: ClassVar[str] = "csqa"
    hub_id: ClassVar[str] = "tau/commonsense_qa"
    choice: ClassVar[bool] = True

    def hub_row(self, row: dict[str, Any], where: str) -> tuple[str, str, list[str], str, str | None]:
        choices = "\n".join(f"{lab}. {txt}" for lab, txt in zip(row["choices"]["label"], row["choices"]["text"]))
        return where, f"{row['question'].strip()} Answer Choices:\n{choices}", [], row.get("answerKey", ""), row.get("id")
