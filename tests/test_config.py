"""YAML configs: defaults, the shipped files, and error messages that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ravl_med.config import ConfigError, IngestConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_ingest_config_equals_the_defaults():
    assert load_config(CONFIGS / "ingest.yaml", IngestConfig) == IngestConfig()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("intensity:\n  voi: windw\n", ["intensity.voi", "'windw'", "'auto'", "'lut'", "'window'", "'none'"]),
        ("intensity:\n  vio: auto\n", ["intensity.vio", "unknown key", "voi, window, fallback, percentiles"]),
        ("image_sise: 224\n", ["image_sise", "unknown key", "image_size"]),
        ("image_size: 5\n", ["image_size", "greater than or equal to 16"]),
        ("regions:\n  overlap: 1.0\n", ["regions.overlap", "less than 1"]),
        ("regions:\n  grid_sizes: [4, 0]\n", ["regions.grid_sizes.1"]),
        ("intensity:\n  percentiles: [99, 1]\n", ["intensity.percentiles", "must be below"]),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("intensity: [\n", ["not valid YAML"]),
    ],
)
def test_bad_configs_name_the_key_and_the_allowed_values(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, IngestConfig)
    message = str(caught.value)
    assert message.startswith(str(path))
    for fragment in expected:
        assert fragment in message


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", IngestConfig)


def test_partial_config_keeps_other_defaults(tmp_path):
    config = load_config(_write(tmp_path, "image_size: 320\nregions:\n  grid_sizes: [2, 4]\n"), IngestConfig)
    assert config.image_size == 320 and config.regions.grid_sizes == [2, 4]
    assert config.intensity == IngestConfig().intensity


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from ravl_med.config import AuditConfig, FinetuneConfig, MitigateConfig

    model = {"ingest": IngestConfig, "audit": AuditConfig, "mitigate": MitigateConfig}.get(
        path.stem.removeprefix("demo-"), FinetuneConfig
    )
    load_config(path, model)


@pytest.mark.parametrize("path", sorted((CONFIGS.parent / "datasets" / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_benchmark_loads_and_names_a_suite(path):
    from ravl_med.config import BenchmarkConfig
    from ravl_med.phantom import find_suite

    config = load_config(path, BenchmarkConfig)
    suite = find_suite(config.suite)
    settings = suite.select(config.settings)
    assert settings
    for setting in settings:  # stage 1, the audit and the mitigation all see the suite's classes
        assert config.finetune.classes == setting.classes == config.audit.classes
    assert config.finetune.ingest.image_size == config.audit.ingest.image_size
