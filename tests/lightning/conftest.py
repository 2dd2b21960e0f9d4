"""The Lightning adapter's tests: skipped where Lightning is not installed."""

import warnings

import pytest

pytest.importorskip("lightning.pytorch")

# Lightning's advice for real runs (more DataLoader workers, a logger) is noise for tiny fits.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*LOCAL_RANK.*")
warnings.filterwarnings("ignore", message=r".*validation_step.* but have no .val_dataloader.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)
