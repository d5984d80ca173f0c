"""Secrets never printed, however given; passthrough options keep their types on the way to a
worker process; the metrics servers' address is one setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fpstream.ops.runner import settings_env
from fpstream.settings import Settings, SettingsError, load_settings, mask_url

SECRET = "Zq7hunter2"


@pytest.mark.parametrize(("url", "kept"), [
    (f"redis://:{SECRET}@db:6379/0", "db:6379/0"),
    (f"redis://user:{SECRET}@db:6379/0", "redis://user:"),
    (f"redis://user:p@{SECRET}@db:6379/0", "db:6379/0"),        # a password holding '@'
    (f"redis://user:{SECRET}@@db/0", "db/0"),
    (f"redis://db:6379/0?password={SECRET}", "db:6379/0?"),
    (f"redis://user@db:6379/0?db=1&password={SECRET}&ssl_cert_reqs=none", "ssl_cert_reqs=none"),
    (f"redis://db/0?ssl_password={SECRET}", "redis://db/0"),
    (f"redis://db/0?client_name=x&Password={SECRET}#frag", "client_name=x"),
    (f"rediss://user:{SECRET}@db.example.com:6380/0", "db.example.com:6380/0"),
    (f"rediss://:{SECRET}@db:6380/0?ssl_ca_certs=/etc/ca.pem", "ssl_ca_certs=/etc/ca.pem"),
    (f"unix:///run/redis.sock?db=0&password={SECRET}", "/run/redis.sock"),
    (f"unix://:{SECRET}@/run/redis.sock?db=0", "/run/redis.sock"),
    (f"redis://:p%40{SECRET}@db/0", "db/0"),                    # percent-encoded '@'
    (f"redis://:{SECRET}/x@db/0", "db/0"),                      # '/' in the password
])
def test_every_password_in_a_redis_url_is_masked(url: str, kept: str) -> None:
    masked = mask_url(url)
    assert SECRET not in masked and "hunter" not in masked, masked
    assert kept in masked and "***" in masked, masked
    text = repr(Settings(redis_url=url))
    assert SECRET not in text and kept in text, text


def test_urls_without_secrets_are_left_alone() -> None:
    for url in ("redis://db:6379/0", "redis://user@db/0", "unix:///run/r.sock?db=2",
                "rediss://db/0?ssl_cert_reqs=required"):
        assert mask_url(url) == url


@pytest.mark.parametrize("option", [
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "sasl.oauthbearer.token",
])
def test_kafka_options_named_like_secrets_are_masked(option: str) -> None:
    s = Settings(kafka_options={"security.protocol": "SASL_SSL", option: SECRET,
                                "sasl.username": "svc-fp"})
    text = repr(s)
    assert SECRET not in text and "svc-fp" in text and "SASL_SSL" in text


def test_redis_options_named_like_secrets_are_masked() -> None:
    s = Settings(redis_options={"password": SECRET, "ssl_password": SECRET + "2",
                                "username": "fp", "socket_timeout": 5})
    text = repr(s)
    assert SECRET not in text and "'socket_timeout': 5" in text


def test_redact_masks_urls_and_known_secrets_in_any_text() -> None:
    s = Settings(redis_url=f"redis://fp:p@{SECRET}@db:6379/0",
                 kafka_options={"sasl.password": "kafka-" + SECRET},
                 redis_options={"password": "opt-" + SECRET})
    text = (f"Error connecting to redis://fp:p@{SECRET}@db:6379/0: AUTH p@{SECRET} refused; "
            f"unix:///s?password=x{SECRET} kafka-{SECRET} opt-{SECRET}")
    out = s.redact(text)
    assert SECRET not in out and "db:6379/0" in out and "Error connecting" in out


# -- passthrough options keep their types -----------------------------------------------------

TOML = """
[fpstream]
redis_url = "redis://db:6379/0"

[fpstream.redis_options]
socket_timeout = 5
socket_connect_timeout = 2.5
retry_on_timeout = true
client_name = "fp-flow"
ssl_ca_certs = "/etc/ssl/ca.pem"

[fpstream.kafka_options]
"linger.ms" = 5
"enable.idempotence" = true
"security.protocol" = "SASL_SSL"
"sasl.password" = "s,e=c;r\\"et"
"""


def test_options_from_toml_reach_a_worker_with_their_types(tmp_path: Path) -> None:
    cfg = tmp_path / "fp.toml"
    cfg.write_text(TOML)
    parent = load_settings(cfg, env={})
    want_redis = {"socket_timeout": 5, "socket_connect_timeout": 2.5, "retry_on_timeout": True,
                  "client_name": "fp-flow", "ssl_ca_certs": "/etc/ssl/ca.pem"}
    want_kafka = {"linger.ms": "5", "enable.idempotence": "true",
                  "security.protocol": "SASL_SSL", "sasl.password": 's,e=c;r"et'}
    assert parent.redis_options == want_redis
    assert parent.kafka_options == want_kafka  # librdkafka takes strings
    worker = load_settings(env=settings_env(parent))
    assert worker.redis_options == want_redis
    assert [type(v) for v in worker.redis_options.values()] == [int, float, bool, str, str]
    assert worker.kafka_options == want_kafka
    assert worker == parent


@pytest.mark.parametrize(("text", "expected"), [
    ("socket_timeout=5,retry_on_timeout=true,client_name=fp",
     {"socket_timeout": 5, "retry_on_timeout": True, "client_name": "fp"}),
    ("socket_timeout = 0.5 , password=0123, ssl_cert_reqs=required",
     {"socket_timeout": 0.5, "password": "0123", "ssl_cert_reqs": "required"}),
    ('client_name="5", health_check_interval=30', {"client_name": "5",
                                                   "health_check_interval": 30}),
    ('{"socket_timeout": 5, "client_name": "a,b"}', {"socket_timeout": 5, "client_name": "a,b"}),
    ("", {}),
])
def test_hand_written_redis_options(text: str, expected: dict[str, Any]) -> None:
    got = load_settings(env={"FPSTREAM_REDIS_OPTIONS": text}).redis_options
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize(("text", "expected"), [
    ("linger.ms=5,enable.idempotence=true,compression.type=zstd",
     {"linger.ms": "5", "enable.idempotence": "true", "compression.type": "zstd"}),
    ("batch.num.messages=1e3", {"batch.num.messages": "1e3"}),  # as written
    ('{"linger.ms": 5, "enable.idempotence": false}',
     {"linger.ms": "5", "enable.idempotence": "false"}),
])
def test_hand_written_kafka_options_stay_librdkafka_strings(text: str,
                                                            expected: dict[str, str]) -> None:
    assert load_settings(env={"FPSTREAM_KAFKA_OPTIONS": text}).kafka_options == expected


@pytest.mark.parametrize(("env", "needle"), [
    ({"FPSTREAM_REDIS_OPTIONS": "novalue"}, "redis_options"),
    ({"FPSTREAM_REDIS_OPTIONS": '{"a": '}, "redis_options"),
    ({"FPSTREAM_REDIS_OPTIONS": "[1, 2]"}, "redis_options"),
    ({"FPSTREAM_KAFKA_OPTIONS": '{"linger.ms": [5]}'}, "kafka_options"),
    ({"FPSTREAM_KAFKA_OPTIONS": '{"linger.ms": null}'}, "kafka_options"),
])
def test_bad_options_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(env=env)


def test_options_in_env_add_to_the_files(tmp_path: Path) -> None:
    """A secret can come from the environment while the rest of the options sit in the file."""
    cfg = tmp_path / "fp.toml"
    cfg.write_text(TOML)
    s = load_settings(cfg, env={"FPSTREAM_KAFKA_OPTIONS": '{"sasl.password": "from-env"}',
                                "FPSTREAM_REDIS_OPTIONS": "password=from-env"})
    assert s.kafka_options["sasl.password"] == "from-env"
    assert s.kafka_options["security.protocol"] == "SASL_SSL"
    assert s.redis_options["password"] == "from-env"
    assert s.redis_options["socket_timeout"] == 5


def test_docstring_examples_run() -> None:
    import doctest

    import fpstream.masking
    import fpstream.settings

    for module in (fpstream.masking, fpstream.settings):
        assert doctest.testmod(module).failed == 0


def test_readme_security_examples_load_and_the_clients_take_them(tmp_path: Path) -> None:
    """The TOML of the README's Kafka SASL/TLS and Redis TLS/ACL section, read as fpstream
    reads it, is accepted by librdkafka and by redis-py's TLS connection (nothing connects)."""
    import re

    import confluent_kafka
    import redis

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Kafka SASL/TLS and Redis TLS/ACL", 1)[1].split("\n## ", 1)[0]
    kafka_toml, redis_toml = re.findall(r"```toml\n(.*?)```", section, re.S)
    cfg = tmp_path / "fp.toml"
    cfg.write_text(kafka_toml.replace("/etc/fpstream/kafka-ca.pem", "probe"))
    kafka = load_settings(cfg, env={"FPSTREAM_KAFKA_OPTIONS": '{"sasl.password": "pw"}'})
    assert kafka.kafka_options["sasl.password"] == "pw"
    assert kafka.kafka_options["security.protocol"] == "SASL_SSL"
    confluent_kafka.Producer(kafka.kafka_config()).flush(0)  # refuses unknown properties

    cfg.write_text(redis_toml)
    s = load_settings(cfg, env={"FPSTREAM_REDIS_OPTIONS": '{"password": "pw"}'})
    assert s.redis_options["ssl_check_hostname"] is True and s.redis_options["password"] == "pw"
    assert "'password': '***'" in repr(s)
    client = redis.Redis.from_url(s.redis_url, **s.redis_options)
    connection = client.connection_pool.make_connection()  # refuses unknown arguments
    assert isinstance(connection, redis.SSLConnection) and connection.socket_timeout == 5
    client.close()
