"""Settings: env prefix, defaults documented in the README, security passthrough without leaks."""

from __future__ import annotations

from pathlib import Path

from ocrstream.kafka import consumer_config, producer_config
from ocrstream.settings import Settings, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_setting_with_its_default():
    assert settings_table() in README.read_text(), "README's configuration table is stale: paste `ocrstream config`"


def test_env_prefix_and_aws_fallback(monkeypatch):
    monkeypatch.setenv("OCRSTREAM_RENDER_DPI", "200")
    monkeypatch.setenv("OCRSTREAM_BATCH_MAX_PAGES", "4")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.delenv("OCRSTREAM_S3_ACCESS_KEY", raising=False)
    s = Settings()
    assert (s.render_dpi, s.batch_max_pages) == (200, 4)
    assert s.s3_access_key.get_secret_value() == "AKIAEXAMPLE"
    assert s.topic("pages") == "ocr.pages" and s.group("worker") == "ocrstream.worker"


def test_sasl_tls_settings_pass_through_and_secrets_stay_out_of_repr():
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="ocr", kafka_sasl_password="hunter2", kafka_ssl_ca_location="/etc/ca.pem",
                 kafka_ssl_certificate_location="/etc/client.pem", kafka_ssl_key_location="/etc/client.key")
    p = producer_config(s)
    assert p["security.protocol"] == "SASL_SSL" and p["sasl.mechanism"] == "SCRAM-SHA-512"
    assert p["sasl.username"] == "ocr" and p["sasl.password"] == "hunter2"
    assert p["ssl.ca.location"] == "/etc/ca.pem" and p["ssl.key.location"] == "/etc/client.key"
    assert p["acks"] == "all" and p["enable.idempotence"] is True
    c = consumer_config(s, "g")
    assert c["enable.auto.commit"] is False and c["partition.assignment.strategy"] == "cooperative-sticky"
    assert c["isolation.level"] == "read_committed"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_retention_settings_reach_the_topic_configs():
    from topology import topic_specs

    default = {t.name: t.config for t in topic_specs(retention=Settings().retention())}
    assert default == {t.name: t.config for t in topic_specs()}  # the settings' defaults are topology's
    assert default["document-results"]["cleanup.policy"] == "compact" and "retention.ms" not in default["document-results"]
    s = Settings(pipeline_retention_h=24, dead_letters_retention_h=48, results_retention_h=72)
    specs = {t.name: t.config for t in topic_specs(retention=s.retention())}
    hour = 3600 * 1000
    for name in ("ingest", "pages", "page-results", "object-events", "page-attempts"):
        assert specs[name]["retention.ms"] == str(24 * hour), name
    assert specs["dead-letters"]["retention.ms"] == str(48 * hour)
    assert specs["document-results"]["cleanup.policy"] == "compact,delete"
    assert specs["document-results"]["retention.ms"] == str(72 * hour)
    assert specs["assembler-state"]["cleanup.policy"] == "compact"  # open documents never expire


def test_gateway_api_keys_map_keys_to_tenants_and_never_name_a_key():
    import pytest

    s = Settings(tenants={"acme": "b/acme/"}, gateway_api_keys="c2VjcmV0==acme, plain=-")
    assert s.gateway_tenants() == {"c2VjcmV0=": "acme", "plain": None}  # a base64 key keeps its `=`
    assert "c2VjcmV0" not in repr(s) and "plain" not in str(s.model_dump())
    assert Settings(gateway_api_keys="").gateway_tenants() == {}
    for bad, why in (("k=globex", "not in OCRSTREAM_TENANTS"), ("just-a-key", "not `key=tenant`"),
                     ("=acme", "not `key=tenant`"), ("k=-,k=acme", "given twice")):
        with pytest.raises(ValueError, match=why) as err:
            Settings(tenants={"acme": "b/acme/"}, gateway_api_keys=bad)
        assert "Value error" in str(err.value)
