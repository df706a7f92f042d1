"""Teacher generation (``kpod teach``): prompt a teacher LLM for chain-of-thought rationales.

The recipe's ``teacher`` section lives below the recipe in :mod:`kpod.teacher_config`;
``base`` (the reply type and errors), ``prompts`` (messages and cache keys), ``cache``
(append-only JSONL), ``ratelimit``, ``openai`` (chat-completions client), ``local`` (Hugging
Face model), ``filter`` (answers and rationale selection), ``run`` (the orchestrator
:func:`kpod.teach.run.teach`).
"""
