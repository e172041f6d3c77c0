import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny random model of the embedded default, built once per test session."""
    import model
    out = str(tmp_path_factory.mktemp("tiny") / "tiny")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the tokenizer is trained on data/toy_train.jsonl
    try:
        model.build_tiny(out, seed=0)
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="session")
def sandbox():
    from sandbox import Sandbox
    with Sandbox(workers=2, timeout_s=5.0) as sb:
        yield sb
