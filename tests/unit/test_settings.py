from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.settings import Settings, SettingsError, load_settings


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "fp.toml"
    cfg.write_text('[fpstream]\nwindow_s = 30\nbrokers = "k1:9092"\nmetrics_port = 9000\n')
    s = load_settings(cfg, env={"FPSTREAM_BROKERS": "k2:9092", "FPSTREAM_METRICS_PORT": "9001"},
                      overrides={"metrics_port": 9002})
    assert (s.window_s, s.brokers, s.metrics_port) == (30.0, "k2:9092", 9002)


def test_passthrough_options_from_env() -> None:
    s = load_settings(env={"FPSTREAM_KAFKA_OPTIONS": "security.protocol=SASL_SSL,sasl.password=x"})
    assert s.kafka_config()["security.protocol"] == "SASL_SSL"
    assert "'x'" not in repr(s)


def test_secrets_masked_in_repr() -> None:
    s = Settings(redis_url="redis://user:s3cret@redis:6379/0")
    assert "s3cret" not in repr(s) and "redis:6379" in repr(s)
    assert s.redis_url.endswith("s3cret@redis:6379/0")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FPSTREAM_WINDOW_S": "soon"}, "window_s"),
        ({"FPSTREAM_WINDOW_S": "-5"}, "window_s"),
        ({"FPSTREAM_REDIS_URL": "http://x"}, "redis_url"),
        ({"FPSTREAM_TARGET_QUANTILE": "1.5"}, "target_quantile"),
        ({"FPSTREAM_KAFKA_OPTIONS": "novalue"}, "kafka_options"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(env=env)


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "fp.toml"
    cfg.write_text("windw_s = 3\n")
    with pytest.raises(SettingsError, match="windw_s"):
        load_settings(cfg, env={})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.window_s = 1  # type: ignore[misc]
