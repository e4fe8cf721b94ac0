"""Configuration: defaults, and every bad value names its variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tocsin.runtime.config import SMALL_HOST_PROCESSES, Address, ConfigError, load_config


def test_defaults_are_loopback_and_embedded() -> None:
    config = load_config({})
    assert config.redis_url is None
    assert config.http_addr == Address("127.0.0.1", 8080)
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.twilio is None
    assert config.retention == timedelta(days=90)
    assert {str(a) for a in config.grpc_addrs.values()} == {
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50053",
        "127.0.0.1:50054",
        "127.0.0.1:50055",
    }


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TOCSIN_HTTP_ADDR": "8080"}, "TOCSIN_HTTP_ADDR"),
        ({"TOCSIN_HTTP_ADDR": "127.0.0.1:99999"}, "TOCSIN_HTTP_ADDR"),
        ({"TOCSIN_REDIS_URL": "postgres://x"}, "TOCSIN_REDIS_URL"),
        ({"TOCSIN_PUBLIC_URL": "ftp://x"}, "TOCSIN_PUBLIC_URL"),
        ({"TOCSIN_RETENTION": "0d"}, "TOCSIN_RETENTION"),
        ({"TOCSIN_RETENTION": "ninety"}, "TOCSIN_RETENTION"),
        ({"TOCSIN_INCIDENTS_ADDR": "nohost"}, "TOCSIN_INCIDENTS_ADDR"),
        ({"TOCSIN_EVENTS_API_RATE": "lots"}, "TOCSIN_EVENTS_API_RATE"),
        ({"TOCSIN_HTTP_HEADER_TIMEOUT": "0s"}, "TOCSIN_HTTP_HEADER_TIMEOUT"),
        ({"TOCSIN_HTTP_BODY_TIMEOUT": "soon"}, "TOCSIN_HTTP_BODY_TIMEOUT"),
        ({"TOCSIN_HTTP_KEEPALIVE_TIMEOUT": "-5s"}, "TOCSIN_HTTP_KEEPALIVE_TIMEOUT"),
        ({"TOCSIN_HTTP_MAX_CONNECTIONS": "0"}, "TOCSIN_HTTP_MAX_CONNECTIONS"),
        ({"TOCSIN_HTTP_MAX_CONNECTIONS": "many"}, "TOCSIN_HTTP_MAX_CONNECTIONS"),
        ({"TOCSIN_GRPC_MAX_CONCURRENT_STREAMS": "0"}, "TOCSIN_GRPC_MAX_CONCURRENT_STREAMS"),
        ({"TOCSIN_MAX_WATCH_STREAMS": "-1"}, "TOCSIN_MAX_WATCH_STREAMS"),
        # These passed the check once and failed later (logging set-up, consumer names).
        ({"TOCSIN_LOG_LEVEL": "verbose"}, "TOCSIN_LOG_LEVEL"),
        ({"TOCSIN_INSTANCE": "a|b"}, "TOCSIN_INSTANCE"),
        ({"TOCSIN_INSTANCE": "has space"}, "TOCSIN_INSTANCE"),
        ({"TOCSIN_INSTANCE": "x" * 129}, "TOCSIN_INSTANCE"),
        ({"TOCSIN_INSTANCE": "caf\u00e9"}, "TOCSIN_INSTANCE"),
        ({"TOCSIN_REDIS_URL": "redis://localhost:port"}, "TOCSIN_REDIS_URL"),
        ({"TOCSIN_REDIS_URL": "redis+cluster://a:6379,b:99999"}, "TOCSIN_REDIS_URL"),
        ({"TOCSIN_ALLOW_INSECURE_TOKENS": "yes"}, "TOCSIN_ALLOW_INSECURE_TOKENS"),
        ({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32}, "TWILIO_AUTH_TOKEN"),
        (
            {
                "TWILIO_ACCOUNT_SID": "nope",
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_FROM_NUMBER": "+15005550006",
            },
            "TWILIO_ACCOUNT_SID",
        ),
        (
            {
                "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_FROM_NUMBER": "5550006",
            },
            "TWILIO_FROM_NUMBER",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_config(env)


def test_twilio_and_public_url() -> None:
    config = load_config(
        {
            "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
            "TWILIO_AUTH_TOKEN": "secret",
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TOCSIN_TWILIO_BASE_URL": "http://127.0.0.1:9999/",
            "TOCSIN_HTTP_ADDR": "0.0.0.0:9000",
            "TOCSIN_PUBLIC_URL": "https://tocsin.example.com",
        }
    )
    assert config.twilio is not None
    assert config.twilio.base_url == "http://127.0.0.1:9999"
    assert "secret" not in repr(config)
    assert config.public_url == "https://tocsin.example.com"
    assert not config.http_addr.is_loopback


@pytest.mark.parametrize("token", [" ", "\t \n", "two words", "s3cret\n"])
def test_a_blank_or_unsendable_api_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigError, match=r"^TOCSIN_API_TOKEN ") as refused:
        load_config({"TOCSIN_API_TOKEN": token})
    assert "words" not in str(refused.value) and "s3cret" not in str(refused.value)


def test_an_empty_api_token_is_no_token_and_the_redis_url_is_not_in_the_repr() -> None:
    assert load_config({"TOCSIN_API_TOKEN": ""}).api_token is None
    config = load_config({"TOCSIN_REDIS_URL": "redis://:hunter2@127.0.0.1:6380"})
    assert "hunter2" not in repr(config)


def test_log_level_and_instance_are_normalised_and_kept() -> None:
    config = load_config(
        {
            "TOCSIN_LOG_LEVEL": "debug",
            "TOCSIN_INSTANCE": "scheduling-127.0.0.2:5005",
            "TOCSIN_REDIS_URL": "redis://:pw@[::1]:6379/0",
        }
    )
    assert (config.log_level, config.instance) == ("DEBUG", "scheduling-127.0.0.2:5005")
    assert load_config({"TOCSIN_LOG_LEVEL": "warn"}).log_level == "WARNING"
    assert load_config({}).log_level == "INFO" and load_config({}).instance is None


def test_instance_name_refuses_what_load_config_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    from tocsin.runtime.events import instance_name

    monkeypatch.setenv("TOCSIN_INSTANCE", "a|b")
    with pytest.raises(ConfigError, match="TOCSIN_INSTANCE"):
        instance_name("escalation")
    monkeypatch.setenv("TOCSIN_INSTANCE", "esc-1")
    assert instance_name("escalation") == "escalation-esc-1"


OIDC = {
    "TOCSIN_OIDC_ISSUER": "https://id.example.com/",
    "TOCSIN_OIDC_CLIENT_ID": "tocsin",
    "TOCSIN_OIDC_CLIENT_SECRET": "oidc-secret-4b1d",
}


def test_oidc_settings_are_all_or_nothing_and_the_secret_is_hidden() -> None:
    config = load_config(OIDC)
    assert config.oidc is not None
    assert (config.oidc.issuer, config.oidc.client_id, config.oidc.claim) == (
        "https://id.example.com",
        "tocsin",
        "email",
    )
    assert "oidc-secret-4b1d" not in repr(config)
    custom = load_config({**OIDC, "TOCSIN_OIDC_CLAIM": "preferred_username"})
    assert custom.oidc is not None and custom.oidc.claim == "preferred_username"
    loopback = load_config({**OIDC, "TOCSIN_OIDC_ISSUER": "http://127.0.0.1:9000"})
    assert loopback.oidc is not None and loopback.oidc.issuer == "http://127.0.0.1:9000"
    assert load_config({}).oidc is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOCSIN_OIDC_ISSUER": "https://id.example.com"}, "TOCSIN_OIDC_CLIENT_ID"),
        ({**OIDC, "TOCSIN_OIDC_CLIENT_SECRET": ""}, "TOCSIN_OIDC_CLIENT_SECRET must be set"),
        ({**OIDC, "TOCSIN_OIDC_ISSUER": "http://id.example.com"}, "TOCSIN_OIDC_ISSUER"),
        ({**OIDC, "TOCSIN_OIDC_ISSUER": "id.example.com"}, "TOCSIN_OIDC_ISSUER"),
        ({**OIDC, "TOCSIN_OIDC_ISSUER": "https://id.example.com/?x=1"}, "TOCSIN_OIDC_ISSUER"),
        ({**OIDC, "TOCSIN_OIDC_CLAIM": "e mail"}, "TOCSIN_OIDC_CLAIM"),
        ({"TOCSIN_OIDC_CLAIM": "email"}, "TOCSIN_OIDC_CLAIM"),
        ({**OIDC, "TOCSIN_OIDC_CLIENT_SECRET": "has space"}, "TOCSIN_OIDC_CLIENT_SECRET"),
    ],
)
def test_bad_oidc_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(env)
    assert "oidc-secret-4b1d" not in str(refused.value)


def test_processes_group_the_services_of_tocsin_up() -> None:
    assert load_config({}).processes == ()
    assert load_config({"TOCSIN_PROCESSES": "each"}).processes == ()
    small = load_config({"TOCSIN_PROCESSES": "small"}).processes
    assert small == (
        ("scheduling", "escalation", "notification"),
        ("incidents", "history"),
        ("gateway",),
    )
    assert load_config({"TOCSIN_PROCESSES": SMALL_HOST_PROCESSES}).processes == small


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("scheduling+incidents,escalation,notification,gateway", "missing history"),
        (
            "scheduling,incidents,escalation+notification,notification,history,gateway",
            "notification named twice",
        ),
        ("scheduling,incidents,escalation,notification,history,gateway,pager", "'pager'"),
        ("scheduling,incidents,escalation,notification,history,gateway,", "unknown service(s) ''"),
        ("scheduling,incidents,escalation,notification,history+gateway", "gateway must be alone"),
    ],
)
def test_bad_process_groups_name_the_variable_and_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"TOCSIN_PROCESSES": value})
    assert "TOCSIN_PROCESSES" in str(raised.value) and problem in str(raised.value)
