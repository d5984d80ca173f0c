from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.policy import Policy
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
        ({"FPSTREAM_VIOLATION_BUDGET_CPU": "1.5"}, "violation_budget_cpu"),
        ({"FPSTREAM_VIOLATION_BUDGET_MEM": "0"}, "violation_budget_mem"),
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


# --- experiment settings -------------------------------------------------------------------

def test_experiment_defaults() -> None:
    s = Settings()
    assert (s.experiment_name, s.experiment_mode) == ("default", "off")
    assert [(p.name, p.budget, p.headroom, p.families) for p in s.policies()] == [
        ("conservative", 0.5, 0.0, None), ("balanced", 1.0, 0.0, None),
        ("lean", 2.0, 0.0, None)]
    assert s.violation_penalty == 2.0 and s.guard_budget == 0.2 and s.guard_periods == 6
    assert (s.violation_budget_cpu, s.violation_budget_mem, s.headroom) == (0.01, 0.001, 0.0)


ARMS_TOML = """
[fpstream]
experiment_name = "q3-right-sizing"
experiment_mode = "bandit"
violation_penalty = 1.5
guard_budget = 0.1

[[arms]]
name = "safe"
budget = 0.99
headroom = 0.3

[[arms]]
name = "lean"
budget = 0.9
headroom = 0.05
families = ["c", "m"]
"""


def test_arms_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "fp.toml"
    cfg.write_text(ARMS_TOML)
    s = load_settings(cfg, env={})
    assert (s.experiment_name, s.experiment_mode, s.violation_penalty, s.guard_budget) == (
        "q3-right-sizing", "bandit", 1.5, 0.1)
    assert s.policies() == (Policy("safe", 0.99, 0.3), Policy("lean", 0.9, 0.05, ("c", "m")))
    # Also as [[fpstream.arms]], and in a file without a [fpstream] table.
    cfg.write_text(ARMS_TOML.replace("[[arms]]", "[[fpstream.arms]]"))
    assert load_settings(cfg, env={}).policies() == s.policies()
    cfg.write_text(ARMS_TOML.replace("[fpstream]\n", ""))
    assert load_settings(cfg, env={}).policies() == s.policies()


def test_arms_from_env_and_overrides() -> None:
    s = load_settings(env={"FPSTREAM_ARMS": "a:0.9:0.1, b:0.8:0:c+m",
                           "FPSTREAM_EXPERIMENT_MODE": "off"})
    assert s.policies() == (Policy("a", 0.9, 0.1), Policy("b", 0.8, 0.0, ("c", "m")))
    assert s.experiment_mode == "off"
    s = load_settings(env={"FPSTREAM_ARMS": '[{"name": "x", "budget": 0.5, "headroom": 1}]'})
    assert s.policies() == (Policy("x", 0.5, 1.0),)
    s = load_settings(env={}, overrides={"arms": [Policy("p", 0.8, 0.2)]})
    assert s.policies() == (Policy("p", 0.8, 0.2),)
    assert Settings(arms=[{"name": "d", "budget": 0.9, "headroom": 0.1}]).policies() == (  # type: ignore[arg-type]
        Policy("d", 0.9, 0.1),)


def test_arms_travel_as_env_to_worker_processes() -> None:
    from fpstream.ops.runner import settings_env

    s = Settings(arms=[Policy("a", 0.9, 0.1, ("c",)), Policy("b", 0.99, 0.2)],  # type: ignore[arg-type]
                 experiment_mode="bandit", guard_budget=0.05)
    back = load_settings(env=settings_env(s))
    assert back.policies() == s.policies()
    assert (back.experiment_mode, back.guard_budget) == ("bandit", 0.05)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FPSTREAM_EXPERIMENT_MODE": "ab"}, "experiment_mode"),
        ({"FPSTREAM_EXPERIMENT_NAME": "a b"}, "experiment_name"),
        ({"FPSTREAM_VIOLATION_PENALTY": "-1"}, "violation_penalty"),
        ({"FPSTREAM_GUARD_BUDGET": "1.5"}, "guard_budget"),
        ({"FPSTREAM_GUARD_PERIODS": "0"}, "guard_periods"),
        ({"FPSTREAM_ARMS": ""}, r"arms must define at least one arm"),
        ({"FPSTREAM_ARMS": "a:0.9"}, r"arms\[0\]: expected name:budget:headroom"),
        ({"FPSTREAM_ARMS": "a:0.9:x"}, r"arms\[0\]: headroom must be a number"),
        ({"FPSTREAM_ARMS": "a:0:0.1"}, r"arms\[0\] \('a'\): policy budget must be a multiple"),
        ({"FPSTREAM_ARMS": "a:0.9:9"}, r"arms\[0\] \('a'\): headroom must be in \[0, 5\]"),
        ({"FPSTREAM_ARMS": "a:0.9:0.1,a:0.8:0.1"}, r"arm names must be unique.*'a'"),
        ({"FPSTREAM_ARMS": "[{"}, "arms: invalid JSON"),
        ({"FPSTREAM_ARMS": '[{"name": "a", "budget": 0.9}]'}, r"arms\[0\]: missing headroom"),
        ({"FPSTREAM_ARMS": '[{"name": "a", "budget": 0.9, "headroom": 0, "q": 1}]'},
         r"arms\[0\]: unknown key\(s\) \['q'\]"),
        ({"FPSTREAM_ARMS": '[{"name": "a", "budget": "0.9", "headroom": 0}]'},
         r"budget must be a number"),
        ({"FPSTREAM_ARMS": '[{"name": "a", "budget": 0.9, "headroom": 0, "families": "c"}]'},
         r"families must be a list"),
        ({"FPSTREAM_ARMS": '{"name": "a"}'}, r"setting arms expects a list of arms"),
    ],
)
def test_bad_experiment_settings(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(env=env)


def test_bad_arm_in_toml_names_file_and_arm(tmp_path: Path) -> None:
    cfg = tmp_path / "fp.toml"
    cfg.write_text('[[arms]]\nname = "ok"\nbudget = 0.9\nheadroom = 0.1\n'
                   '[[arms]]\nname = "broken"\nbudget = 0.9\n')
    with pytest.raises(SettingsError, match=r"fp.toml: setting arms\[1\]: missing headroom"):
        load_settings(cfg, env={})
    cfg.write_text('[fpstream]\narms = ["x"]\n[[arms]]\nname = "a"\nbudget = 0.9\n'
                   'headroom = 0.1\n')
    with pytest.raises(SettingsError, match="arms defined twice"):
        load_settings(cfg, env={})


def test_metrics_host_defaults_to_loopback_and_is_one_setting(tmp_path: Path) -> None:
    assert Settings().metrics_host == "127.0.0.1"
    assert load_settings(env={"FPSTREAM_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    cfg = tmp_path / "fp.toml"
    cfg.write_text('[fpstream]\nmetrics_host = "::1"\n')
    assert load_settings(cfg, env={}).metrics_host == "::1"
    assert load_settings(env={}, overrides={"metrics_host": "10.0.0.7"}).metrics_host == \
        "10.0.0.7"
    for bad in ("", "a b", "http://x"):
        with pytest.raises(SettingsError, match="metrics_host"):
            load_settings(env={"FPSTREAM_METRICS_HOST": bad})
