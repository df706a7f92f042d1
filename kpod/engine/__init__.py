"""The training engine. Importing it registers ``trained:RECIPE`` model names (trained_models.py)."""

from kpod.engine import trained_models as _trained_models  # noqa: F401  (registers the prefix)
