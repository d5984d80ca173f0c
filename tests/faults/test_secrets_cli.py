"""No command prints a password, however it was given, against the real Redis: startup lines,
connection errors (including what redis-py says) and settings errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from typer.testing import CliRunner

from fpstream.cli import app
from fpstream.io.embedded import EmbeddedServices

pytestmark = pytest.mark.integration


@pytest.fixture
def token() -> str:
    """The part of every secret a leak would show: unique, so any trace of it is found."""
    return uuid.uuid4().hex


@pytest.fixture
def acl_user(redis_client: redis.Redis, token: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user whose password holds an '@', as some generated passwords do."""
    name = f"fp-{token[:8]}"
    password = f"p@{token}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*",
                                 "+@all")
    yield name, password
    redis_client.execute_command("ACL", "DELUSER", name)


def hostport(services: EmbeddedServices) -> str:
    return urlsplit(services.redis_url).netloc


def invoke(args: list[str], prefix: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"FPSTREAM_REDIS_PREFIX": prefix, **env})
    return result.exit_code, result.output + (str(result.exception or ""))


def assert_no_secret(output: str, token: str) -> None:
    assert token not in output and token[:12] not in output and token[-12:] not in output, output


def test_working_urls_are_masked_in_what_actuate_and_status_print(
        services: EmbeddedServices, acl_user: tuple[str, str], token: str,
        redis_prefix: str) -> None:
    user, password = acl_user
    where = hostport(services)
    urls = [f"redis://{user}:{password}@{where}/0",              # raw '@' in the password
            f"redis://{user}@{where}/0?password={password}",     # the password as a parameter
            f"redis://{user}:{password.replace('@', '%40')}@{where}/0",
            f"redis://:{password}@{where}/0"]                    # the default user: nopass
    for url in urls:
        code, out = invoke(["actuate", "--redis-url", url, "--stop-after", "0.2",
                            "--metrics-port", "0"], redis_prefix.rstrip(":"))
        assert code == 0, out
        assert where in out and "backend log" in out, out
        assert_no_secret(out, token)
        code, out = invoke(["status", "--redis-url", url], redis_prefix.rstrip(":"))
        assert code == 0, out
        assert_no_secret(out, token)


def test_connection_errors_never_show_the_password(
        services: EmbeddedServices, acl_user: tuple[str, str], token: str,
        redis_prefix: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    user, _ = acl_user
    where = hostport(services)
    wrong = f"w@{token}"
    urls = [f"redis://{user}:{wrong}@{where}/0",                  # wrong password, with '@'
            f"redis://{user}@{where}/0?password={wrong}",
            f"redis://{user}@{where}/0?db=0&password={wrong}&client_name=x",
            f"rediss://{user}:{wrong}@{where}/0",                  # TLS against a plain port
            f"unix://{tmp_path}/none.sock?password={wrong}",
            f"unix://:{wrong}@{tmp_path}/none.sock"]
    for url in urls:
        for command in (["actuate", "--metrics-port", "0", "--stop-after", "0.2"], ["status"]):
            code, out = invoke([*command, "--redis-url", url], redis_prefix.rstrip(":"))
            assert code == 2, out
            assert "cannot reach Redis" in out, out
            assert_no_secret(out, token)


@pytest.mark.parametrize("command", [
    ["actuate", "--metrics-port", "0", "--stop-after", "0.1"],
    ["status"],
    ["agent", "--once", "--stdout"],
    ["run"],
])
def test_settings_errors_never_show_a_secret(command: list[str], token: str,
                                             redis_prefix: str) -> None:
    cases = [
        {"FPSTREAM_REDIS_URL": f"redis:/fp:p@{token}@db:6379/0"},   # a typo in the scheme
        {"FPSTREAM_REDIS_URL": f"http://fp:{token}@db/0"},
        {"FPSTREAM_KAFKA_OPTIONS": f"sasl.password={token},oops"},
        {"FPSTREAM_REDIS_OPTIONS": f'{{"password": "{token}", '},
    ]
    for env in cases:
        code, out = invoke(command, redis_prefix.rstrip(":"), **env)
        assert code == 2, (env, out)
        assert "setting" in out, out
        assert_no_secret(out, token)
