"""Shared pytest setup: never reach the Hugging Face hub; deterministic property tests in CI."""

import os

from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# CI (CI=true) replays the same examples every run, so a red build is reproducible; locally
# hypothesis explores new examples each time (HYPOTHESIS_PROFILE=ci to replay).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
