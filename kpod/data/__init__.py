"""Data: records, step splitting, the prompt template, tokenization with offsets, collation."""

from kpod.data.records import DataError, Record
from kpod.data.steps import split_steps
from kpod.data.template import PromptTemplate, Serialized

__all__ = ["DataError", "PromptTemplate", "Record", "Serialized", "split_steps"]
