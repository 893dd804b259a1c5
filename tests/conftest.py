import pytest

from chexcli.model.tiny import build_tiny_model, save_tiny_bundle


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(seed=0, tokenizer_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=0)
