"""The Hugging Face Trainer adapter's tests: skipped where transformers or accelerate is not
installed. Nothing is downloaded: models are built from their config, data lives in memory."""

import os
import warnings

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

warnings.filterwarnings("ignore", message=r".*`use_cpu`.*")
