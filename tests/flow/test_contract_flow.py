"""Every event the real flow emits matches its shipped JSON Schema, and the consumer contract
the README promises (topics, keys, ids and sequences) holds for it."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from jsonschema import Draft202012Validator

from flows.fleet import build_flow
from fpstream.contract.schema import load_schema
from fpstream.io.metrics import FlowMetrics
from fpstream.io.redis_sink import cluster_doc
from fpstream.settings import Settings

from .conftest import Outputs, kafka_messages

pytestmark = pytest.mark.flow

SIM = {"apps": 12, "minutes": 5 * 60, "seed": 13, "bad_share": 0.03, "deploy_share": 0.3}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(recluster_s=3600.0)


@pytest.fixture(scope="module")
def out(settings: Settings) -> Outputs:
    messages, _ = kafka_messages(settings, **SIM)
    outputs = Outputs()
    flow = build_flow(settings, source=TestingSource(messages, batch_size=50),
                      kafka_sink=TestingSink(outputs.kafka),
                      redis_sink=TestingSink(outputs.redis_keyed), metrics=FlowMetrics())
    run_main(flow)
    return outputs


def by_topic(settings: Settings) -> dict[str, str]:
    return {settings.topic_allocations: "allocation", settings.topic_anomalies: "anomaly",
            settings.topic_deadletter: "dead-letter"}


def test_every_kafka_event_matches_its_schema(out: Outputs, settings: Settings) -> None:
    schemas = {t: Draft202012Validator(load_schema(n)) for t, n in by_topic(settings).items()}
    seen: Counter[str] = Counter()
    for msg in out.kafka:
        doc = orjson.loads(msg.value)
        errors = [e.message for e in schemas[msg.topic].iter_errors(doc)]
        assert errors == [], f"{msg.topic}: {doc}"
        seen[by_topic(settings)[msg.topic]] += 1
        if "kind" in doc:
            seen[doc["kind"]] += 1
    # Every kind of output was produced, so none was checked vacuously.
    assert set(seen) == {"allocation", "anomaly", "dead-letter", "proactive", "resize"}, seen


def test_every_cluster_document_matches_its_schema(out: Outputs) -> None:
    schema = Draft202012Validator(load_schema("cluster"))
    docs = [orjson.loads(orjson.dumps(cluster_doc(c))) for c in out.cluster_defs]
    assert len(docs) >= 3
    for doc in docs:
        assert [e.message for e in schema.iter_errors(doc)] == [], doc


def test_allocations_are_keyed_by_app_and_carry_their_sequence(out: Outputs,
                                                               settings: Settings) -> None:
    allocations = [m for m in out.kafka if m.topic == settings.topic_allocations]
    newest: dict[tuple[str, str], tuple[float, int]] = {}
    seen: set[str] = set()
    for msg in allocations:
        doc = orjson.loads(msg.value)
        assert msg.key == doc["app"].encode()
        assert dict(msg.headers) == {"fpstream-id": doc["id"].encode()}
        prefix, seq = doc["id"].rsplit("/", 1)
        assert prefix == f"{doc['app']}/{doc['instance']}"
        assert doc["id"] not in seen
        seen.add(doc["id"])
        # The sequence is the decision's time in whole seconds; 0 before the first sample.
        assert int(seq) == (0 if doc["kind"] == "proactive" else round(doc["ts"]))
        key = (doc["app"], doc["instance"])
        newest[key] = max(newest.get(key, (-1.0, -1)), (doc["ts"], int(seq)))
    # So the highest sequence of an instance is its latest decision, whatever the order the
    # two stages emitted them in.
    for ts, seq in newest.values():
        assert seq == (round(ts) if seq else 0)
    for msg in out.kafka:
        doc = orjson.loads(msg.value)
        if msg.topic == settings.topic_anomalies:
            assert msg.key == doc["app"].encode()
        elif msg.topic == settings.topic_deadletter:
            assert msg.key == doc["reason"].encode()
