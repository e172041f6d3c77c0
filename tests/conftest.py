import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "data"))  # data/prepare_toy.py, imported as prepare_toy


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model of the embedded default, random (no copy warm-up), built once per test session."""
    import model
    out = str(tmp_path_factory.mktemp("tiny") / "tiny")
    model.build_tiny(out, seed=0, pretrain_steps=0)
    return out


@pytest.fixture(scope="session")
def sandbox():
    from sandbox import Sandbox
    with Sandbox(workers=2, timeout_s=5.0) as sb:
        yield sb
