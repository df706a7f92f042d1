"""Shared pytest setup: never reach the Hugging Face hub from the test suite."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
