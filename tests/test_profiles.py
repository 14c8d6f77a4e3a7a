"""Model profiles and routing (issue 14 item 3): ocrstream/profiles.py, consumers/routing.py,
topology/shadow.py, ocrstream/compare.py.

Units first: the A/B split's share and stability (many ids, hypothesis), the shadow sample's
independence from it, the per-tenant rules, the settings' refusals, profile settings, the
compare report. Then one module-scoped pipeline on the real broker and S3 server: splitter,
assembler and two OCR workers in threads, one per profile. No OCR engine runs: the test PDFs are
born-digital and read from their text layer (a page says which document it is), so a result
shows what each profile's worker did at no engine cost:

- ``default``: the engine settings (150 DPI, ``OCRSTREAM_TEXT_LAYER=auto``);
- ``lowdpi``: 72 DPI and ``OCRSTREAM_TEXT_LAYER=only``, so its worker (and only its worker, which
  applies the profile at start) fails an image with ``no_text_layer``.

Every wait is bounded and fails the test when it runs out.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import yaml
from confluent_kafka import Producer
from hypothesis import given, settings as hyp_settings, strategies as st
from pydantic import SecretStr, ValidationError

from consumers.assembler import Assembler
from consumers.routing import Route, choose_profile, route_of, split_profile, unit_hash
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.compare import Collected, DocumentSummary, report
from ocrstream.engine.null import NullEngine
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import make_admin, producer_config
from ocrstream.profiles import profile_settings
from ocrstream.settings import PROFILE_FIELDS, Settings
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from ocrstream.textmatch import word_prf
from producers.publish import DocumentPublisher
from producers.results import ResultFollower
from schemas import DeadLetter, DocumentRef, DocumentResult, ObjectRef, PageResult, decode
from topology import (SHADOW_RESULTS, apply_topics, document_key, page_topic, shadow_key, split_shadow_key,
                      topic_specs, worker_group)

from conftest import REPO, StageThreads, base_settings, committed_to_end, make_pdf, read_topic, settings_env

PROFILES = {"lowdpi": {"render_dpi": 72, "text_layer": "only", "description": "test: 72 DPI, text layer only"}}


def _ref(document_id: str = "d1", profile: str | None = None) -> DocumentRef:
    return DocumentRef(document_id=document_id, submitted_at=1, profile=profile,
                       source=ObjectRef(bucket="bkt", key="uploads/a.pdf", filename="a.pdf"))


# --------------------------------------------------------------------------- units: routing


def _within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """``count`` of ``n`` draws is within ``sigmas`` standard deviations of share ``p`` (binomial;
    4.5 sigma: a false failure about once in 150,000 runs per check)."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("split", [{"default": 1, "fast": 1}, {"default": 3, "fast": 1},
                                   {"default": 0.2, "fast": 0.3, "paddle": 0.5}])
def test_the_ab_split_routes_in_the_configured_share(split):
    n = 4000
    keys = [uuid.uuid4().hex for _ in range(n)]
    got = [split_profile(split, k) for k in keys]
    total = sum(split.values())
    for profile, weight in split.items():
        assert _within(got.count(profile), n, weight / total), (profile, got.count(profile), n)
    assert [split_profile(split, k) for k in keys] == got  # stable: the same key, the same profile
    reordered = dict(reversed(list(split.items())))  # the JSON's key order does not matter
    assert [split_profile(reordered, k) for k in keys] == got


@hyp_settings(max_examples=100, deadline=None)
@given(key=st.text(min_size=1, max_size=80), weights=st.lists(st.floats(0, 10), min_size=1, max_size=4))
def test_the_split_is_a_function_of_the_key_and_never_picks_a_zero_weight(key, weights):
    split = {f"p{i}": w for i, w in enumerate(weights)}
    if sum(weights) <= 0:
        return
    chosen = split_profile(split, key)
    assert split[chosen] > 0 and split_profile(split, key) == chosen
    assert 0 <= unit_hash("ab", key) < 1


def test_the_shadow_sample_is_its_share_and_independent_of_the_split():
    s = Settings(profiles={"fast": {}, "paddle": {}},
                 profile_routes={"-": {"split": {"default": 1, "fast": 1}, "shadow": "paddle", "shadow_share": 0.2}})
    n = 4000
    routes = [choose_profile(s, None, _ref(), k) for k in (uuid.uuid4().hex for _ in range(n))]
    for profile in ("default", "fast"):
        mine = [r for r in routes if r.profile == profile]
        assert _within(len(mine), n, 0.5)
        # independent hashes: each side of the split is shadowed in the configured share
        assert _within(sum(r.shadow == "paddle" for r in mine), len(mine), 0.2), profile
    assert {r.shadow for r in routes} == {None, "paddle"}


def test_tenant_rules_come_from_the_settings_never_from_the_message():
    s = Settings(profiles={"fast": {}, "paddle": {}}, tenants={"acme": "bkt/acme/", "globex": "bkt/globex/",
                                                               "initech": "bkt/initech/"},
                 profile_routes={"-": {"split": {"default": 1}, "allowed": ["default", "fast"]},
                                 "acme": {"split": {"fast": 1}, "shadow": "paddle", "shadow_share": 1.0},
                                 "*": {"allowed": ["default", "paddle"]}})
    # the default tenant: may name fast, not paddle; naming nothing gets the split (default)
    assert choose_profile(s, None, _ref(profile="fast"), "d1") == Route("fast")
    assert choose_profile(s, None, _ref(), "d1") == Route("default")
    with pytest.raises(OcrstreamError) as e:
        choose_profile(s, None, _ref(profile="paddle"), "d1")
    assert e.value.code == "profile_not_allowed" and "default tenant" in e.value.message
    # acme: allowed defaults to its split's profiles; every document also shadowed on paddle
    assert choose_profile(s, "acme", _ref(), "acme/d1") == Route("fast", "paddle")
    with pytest.raises(OcrstreamError) as e:
        choose_profile(s, "acme", _ref(profile="default"), "acme/d1")
    assert e.value.code == "profile_not_allowed" and "'acme'" in e.value.message
    # globex has no entry: `*`; an unknown profile is refused like a forbidden one, and says so
    assert choose_profile(s, "globex", _ref(profile="paddle"), "globex/d1") == Route("paddle")
    with pytest.raises(OcrstreamError) as e:
        choose_profile(s, "globex", _ref(profile="nosuch"), "globex/d1")
    assert e.value.code == "profile_not_allowed" and "no such profile" in e.value.message
    # no `*` either: the default profile only
    bare = Settings(tenants={"acme": "bkt/acme/"})
    assert route_of(bare, "acme").allowed_profiles() == {"default"}
    assert choose_profile(bare, "acme", _ref(profile="default"), "acme/d1") == Route("default")
    # the shadow is never the profile a document already gets
    same = Settings(profiles={"fast": {}}, profile_routes={"-": {"split": {"fast": 1}, "shadow": "fast",
                                                                  "shadow_share": 1.0}})
    assert choose_profile(same, None, _ref(), "d1") == Route("fast")


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"profiles": {"x": {"kafka_bootstrap_servers": "evil:9092"}}}, "profiles", "cannot differ between profiles"),
    ({"profiles": {"x": {"render_dpi": 9}}}, "profiles", "render_dpi"),
    ({"profiles": {"x": {"engine": "tesseract"}}}, "profiles", "engine"),
    ({"profiles": {"default": {}}}, "profiles", "engine settings themselves"),
    ({"profiles": {"Bad.Name": {}}}, "profiles", "profile name"),
    ({"profile": "nosuch"}, "profile", "not defined"),
    ({"profile_routes": {"-": {"split": {"nosuch": 1}}}}, "profile_routes", "not in OCRSTREAM_PROFILES"),
    ({"profile_routes": {"acme": {}}}, "profile_routes", "is not a tenant"),
    ({"profile_routes": {"-": {"split": {"default": 0}}}}, "profile_routes", "positive sum"),
    ({"profile_routes": {"-": {"shadow_share": 0.5}}}, "profile_routes", "needs a shadow profile"),
    ({"profile_routes": {"-": {"shadow": "default", "shadow_share": 2}}}, "profile_routes", "less than or equal"),
    ({"profile_routes": {"-": {"splitt": {"default": 1}}}}, "profile_routes", "Extra inputs"),
])
def test_settings_refuse_bad_profiles_and_routes(values, field, words):
    with pytest.raises(ValidationError) as e:
        Settings(**values)
    errors = [(err["loc"][0], err["msg"]) for err in e.value.errors()]
    assert any(loc == field and words in msg for loc, msg in errors), errors


def test_profile_settings_apply_the_profile_over_the_deployment():
    base = Settings(render_dpi=200, det_box_thresh=0.5, text_layer="auto", kafka_port=1234,
                    profiles={"fast": {"render_dpi": 100, "det_box_thresh": 0.6, "description": "d"}})
    fast = profile_settings(base, "fast")
    assert (fast.profile, fast.render_dpi, fast.det_box_thresh) == ("fast", 100, 0.6)
    assert (fast.text_layer, fast.kafka_port, fast.profiles) == ("auto", 1234, base.profiles)  # the rest stays
    assert profile_settings(fast) == fast  # applying it again changes nothing
    assert profile_settings(base) is base and profile_settings(base, "default").render_dpi == 200
    with pytest.raises(ValueError, match="not defined"):
        profile_settings(base, "nosuch")
    assert {"render_dpi", "engine", "model_dir", "engine_device", "det_box_thresh"} <= set(PROFILE_FIELDS)
    assert not {"kafka_bootstrap_servers", "bucket", "allowed_sources", "tenants"} & set(PROFILE_FIELDS)


def test_a_worker_of_an_unknown_profile_does_not_start():
    """The real command: exit 10 (a setting error) with one line naming the variable."""
    env = settings_env(base_settings(), OCRSTREAM_PROFILE="nosuch",
                       OCRSTREAM_PROFILES=json.dumps(PROFILES))
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "worker"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10, proc.stderr
    assert "OCRSTREAM_PROFILE='nosuch'" in proc.stderr and "default, lowdpi" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shadow_keys_cannot_be_forged_from_an_id():
    assert split_shadow_key(shadow_key("acme/d1")) == ("acme/d1", True)
    assert split_shadow_key("acme/d1") == ("acme/d1", False)
    with pytest.raises(ValidationError):  # a publisher cannot name a shadow key as its id
        _ref(document_id="d1~shadow")


def test_topics_and_groups_of_profiles():
    names = {t.name for t in topic_specs(profiles=("lowdpi",))}
    assert {"profile.lowdpi.pages", "profile.lowdpi.pages-interactive", SHADOW_RESULTS} <= names
    assert SHADOW_RESULTS in {t.name for t in topic_specs()}  # always there: shadows may start any time
    spec = next(t for t in topic_specs() if t.name == SHADOW_RESULTS)
    assert spec.config["cleanup.policy"] == "compact,delete"  # comparison data: the pipeline's retention
    assert worker_group("lowdpi") == "worker.lowdpi"


# --------------------------------------------------------------------------- units: compare


def _summary(profile, status="succeeded", text="A B C", e2e=100.0, engine=50.0, pages=1):
    return DocumentSummary(profile=profile, status=status, pages=pages, end_to_end_ms=e2e,
                           engine_ms_per_page=engine, text=text)


def test_compare_pairs_documents_by_key_and_scores_their_words():
    c = Collected()
    c.results = {"d1": _summary("default", text="THE QUICK FOX", e2e=100), "d2": _summary("default", text="A B",
                                                                                          e2e=300),
                 "acme/d1": _summary("default", text="ONE TWO", e2e=200), "d3": _summary("fast", e2e=50, engine=10),
                 "d4": _summary("default", text="X", e2e=400)}
    c.shadows = {"d1": _summary("paddle", text="the quick dog", e2e=1000, engine=900),
                 "acme/d1": _summary("paddle", text="two one", e2e=2000, engine=800),
                 "d2": _summary("paddle", status="failed", text="", e2e=3000),
                 "d9": _summary("paddle", text="orphan")}  # no user result (yet): not a pair
    r = report(c)
    (pair,) = r["pairs"]
    assert (pair["profile"], pair["shadow"], pair["documents"], pair["both_succeeded"],
            pair["status_disagreements"]) == ("default", "paddle", 3, 2, 1)
    f1 = [word_prf("the quick dog", "THE QUICK FOX")[2], word_prf("two one", "ONE TWO")[2]]
    assert f1 == [pytest.approx(2 / 3), 1.0]
    assert pair["word_f1_mean"] == round(sum(f1) / 2, 4) and pair["word_f1_min"] == round(min(f1), 4)
    assert pair["word_f1_micro"] == round(2 * 4 / (3 + 2 + 3 + 2), 4)  # 4 of 5 words each side
    assert pair["identical_words"] == 0.5
    rows = {row["profile"]: row for row in r["profiles"]}
    assert (rows["default"]["documents"], rows["paddle"]["shadow_documents"], rows["paddle"]["failed"]) == (4, 4, 1)
    assert rows["default"]["end_to_end_ms_p50"] == 250.0  # of 100, 200, 300, 400
    assert rows["fast"]["engine_ms_per_page_p95"] == 10.0 and rows["fast"]["metric_samples"] == 0


# --------------------------------------------------------------------------- the real stack


def _line(name: str) -> str:
    """The text of document ``name``'s one page (20+ characters: read from the text layer)."""
    return f"DOCUMENT {name.upper()} SAYS HELLO FROM ITS PAGE"


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 200), "white").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pipeline(stack):
    """A namespace with tenants acme and globex, profile ``lowdpi`` and these routes:

    - default tenant: A/B split default/lowdpi 50/50 (it may name either);
    - acme: default profile, may name lowdpi, a 50 % shadow sample on lowdpi;
    - globex: no entry, no ``*``: the default profile only.

    Splitter, assembler and one NullEngine worker per profile run in threads."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"pf-{tag}"
    s = base_settings(topic_prefix=f"t{tag}.", group_prefix=f"g{tag}.", bucket=bucket, worker_id=f"w-{tag}",
                      tenants={"acme": f"{bucket}/tenants/acme/", "globex": f"{bucket}/tenants/globex/"},
                      text_layer="auto", metrics_interval_s=1.0, profiles=PROFILES,
                      profile_routes={"-": {"split": {"default": 1, "lowdpi": 1}},
                                      "acme": {"allowed": ["default", "lowdpi"], "shadow": "lowdpi",
                                               "shadow_share": 0.5}})
    apply_topics(make_admin(s), topic_specs(tenants=tuple(s.tenants), profiles=tuple(s.profiles)), s.topic_prefix)
    ObjectStore(s).ensure_bucket()
    runner = StageThreads()
    runner.start(Splitter(s, StopFlag(install_signals=False)))
    runner.start(Assembler(s, StopFlag(install_signals=False)))
    runner.start(OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False)))
    lowdpi = s.model_copy(update={"profile": "lowdpi", "worker_id": f"w-{tag}-lowdpi"})
    runner.start(OcrWorker(lowdpi, engine=NullEngine(), stop=StopFlag(install_signals=False)))
    yield s
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"
    from test_gateway import _drop_topics

    _drop_topics(s)


def _client(s: Settings, tenant: str | None) -> Settings:
    return s.model_copy(update={"tenant": tenant})


def _publish(s: Settings, tenant: str | None, docs: dict[str, tuple[str, str | None]],
             timeout_s: float = 120) -> dict[str, DocumentResult]:
    """Publish ``{document_id: (object key, profile asked for)}`` as ``tenant``; their results."""
    c = _client(s, tenant)
    follower = ResultFollower(c)  # positioned before publishing: no result slips past
    try:
        with DocumentPublisher(c) as pub:
            for doc_id, (key, profile) in docs.items():
                pub.publish_object(s.bucket, key, document_id=doc_id, profile=profile)
        return follower.wait_for(list(docs), timeout_s=timeout_s)
    finally:
        follower.close()


def _page_workers(s: Settings) -> dict[str, set[str]]:
    """Pipeline key -> the worker ids that wrote its page results."""
    out: dict[str, set[str]] = {}
    for m in read_topic(s, s.topic("page-results")):
        out.setdefault(m.key().decode(), set()).add(decode(m.value(), PageResult).worker_id)
    return out


def _wait_committed(s: Settings, group: str, topic: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not committed_to_end(s, s.group(group), topic):
        assert time.monotonic() < deadline, f"group {group} has not committed {topic} to its end in {timeout_s}s"
        time.sleep(0.5)


@pytest.mark.integration
def test_an_ab_split_routes_to_both_profiles_in_the_configured_share(pipeline):
    s = pipeline
    ObjectStore(s).put_bytes("uploads/ab.pdf", make_pdf([[_line("ab")]]), "application/pdf")
    ids = [f"ab-{i:02d}" for i in range(20)]  # fixed ids: the split below is then a fixed outcome too
    predicted = {i: choose_profile(s, None, _ref(i), document_key(None, i)).profile for i in ids}
    results = _publish(s, None, {i: ("uploads/ab.pdf", None) for i in ids})
    assert {i: r.profile or "default" for i, r in results.items()} == predicted  # exactly the hash's choice
    share = sum(p == "lowdpi" for p in predicted.values())
    assert 0 < share < len(ids) and _within(share, len(ids), 0.5, sigmas=3.5)  # both profiles, roughly 50/50
    workers = _page_workers(s)
    for i, r in results.items():
        assert r.status == "succeeded", r.error
        assert r.text().strip() == _line("ab")
        lowdpi = predicted[i] == "lowdpi"
        assert r.pages[0].dpi == (72 if lowdpi else 150)  # the profile's DPI, set by the splitter
        assert workers[i] == {f"{s.worker_id}-lowdpi" if lowdpi else s.worker_id}  # OCR'd by that profile's worker


@pytest.mark.integration
def test_a_document_gets_a_profile_its_tenant_allows_and_is_refused_one_it_does_not(pipeline):
    s = pipeline
    store = ObjectStore(s)
    for tenant in ("acme", "globex"):
        store.put_bytes(f"tenants/{tenant}/a.pdf", make_pdf([[_line(tenant)]]), "application/pdf")
    acme = _publish(s, "acme", {"asks-lowdpi": ("tenants/acme/a.pdf", "lowdpi"),
                                "asks-default": ("tenants/acme/a.pdf", "default")})
    r = acme["asks-lowdpi"]
    assert (r.status, r.profile, r.pages[0].dpi, r.text().strip()) == ("succeeded", "lowdpi", 72, _line("acme"))
    assert _page_workers(s)["acme/asks-lowdpi"] == {f"{s.worker_id}-lowdpi"}
    assert acme["asks-default"].profile is None and acme["asks-default"].pages[0].dpi == 150

    globex = _publish(s, "globex", {"asks-lowdpi": ("tenants/globex/a.pdf", "lowdpi"),
                                    "asks-nosuch": ("tenants/globex/a.pdf", "nosuch"),
                                    "asks-nothing": ("tenants/globex/a.pdf", None)})
    for doc_id in ("asks-lowdpi", "asks-nosuch"):
        r = globex[doc_id]
        assert r.status == "failed" and r.error.code == "profile_not_allowed", r.error
        assert "tenant 'globex'" in r.error.message and r.pages == []
    assert globex["asks-nothing"].status == "succeeded" and globex["asks-nothing"].profile is None
    dead = [decode(m.value(), DeadLetter) for m in read_topic(s, s.topic("dead-letters"))]
    refused = {d.document_id for d in dead if d.reason == "profile_not_allowed"}
    assert refused == {"asks-lowdpi", "asks-nosuch"}
    assert all(d.stage == "splitter" for d in dead if d.reason == "profile_not_allowed")


@pytest.mark.integration
def test_shadow_results_go_to_shadow_results_and_never_to_a_document_results_topic(pipeline):
    s = pipeline
    store = ObjectStore(s)
    ids = [f"sh-{i:02d}" for i in range(12)]
    for i in ids:
        store.put_bytes(f"tenants/acme/{i}.pdf", make_pdf([[_line(i)]]), "application/pdf")
    # an image: the lowdpi worker (text layer only) fails it; the user's copy must not notice
    image_id = next(f"img-{n}" for n in range(1000) if unit_hash("shadow", document_key("acme", f"img-{n}")) < 0.5)
    store.put_bytes("tenants/acme/blank.png", _png(), "image/png")
    docs = {**{i: (f"tenants/acme/{i}.pdf", None) for i in ids}, image_id: ("tenants/acme/blank.png", None)}
    shadowed = {i for i in docs if choose_profile(s, "acme", _ref(i), document_key("acme", i)).shadow == "lowdpi"}
    assert image_id in shadowed and 0 < len(shadowed - {image_id}) < len(ids)  # a sample, not all or none

    results = _publish(s, "acme", docs)
    for i, r in results.items():
        assert r.status == "succeeded" and r.profile is None and not r.shadow, (i, r.error)
        assert r.pages[0].dpi == (150 if i != image_id else None)
    # the shadow copies' results: exactly the sampled documents, keyed by the real document key
    # (other tests of this module may add shadows of their own acme documents: not these)
    keys = {document_key("acme", i) for i in docs}
    deadline = time.monotonic() + 90
    while True:
        shadows = {m.key().decode(): decode(m.value(), DocumentResult)
                   for m in read_topic(s, s.topic(SHADOW_RESULTS))}
        mine = {k: r for k, r in shadows.items() if k in keys}
        if len(mine) >= len(shadowed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(mine) == {document_key("acme", i) for i in shadowed}
    for key, r in mine.items():
        assert r.shadow and r.profile == "lowdpi", key
        if key == document_key("acme", image_id):
            assert r.status == "failed" and r.error.code == "no_text_layer"
        else:
            assert r.status == "succeeded" and r.pages[0].dpi == 72 and r.text() == results[r.document_id].text()
    workers = _page_workers(s)
    for i in shadowed:
        assert workers[shadow_key(document_key("acme", i))] == {f"{s.worker_id}-lowdpi"}

    # Nothing more can arrive once every stage has committed its input to the end: then every
    # document-results topic holds exactly the users' results, one per document, none a shadow's.
    _wait_committed(s, "splitter", s.tenant_topic("acme", "ingest"))
    _wait_committed(s, worker_group("lowdpi"), s.page_topic("lowdpi"))
    _wait_committed(s, "worker", s.page_topic())
    _wait_committed(s, "assembler", s.topic("page-results"))
    acme_records = [m for m in read_topic(s, s.tenant_topic("acme", "document-results"))
                    if m.key().decode() in docs]
    assert sorted(m.key().decode() for m in acme_records) == sorted(docs)  # one each: no second (shadow) result
    for topic in (s.tenant_topic(t, "document-results") for t in (None, *s.tenants)):
        for m in read_topic(s, topic):
            value = orjson.loads(m.value())
            assert not value.get("shadow"), (topic, m.key())
            if topic == s.tenant_topic("acme", "document-results") and m.key().decode() in docs:
                assert "profile" not in value  # the served (default) profile's result, not lowdpi's

    # `ocrstream compare`, the real command: one pair default -> lowdpi over the shadowed documents
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "compare", "--json", "--timeout", "60"],
                          env=settings_env(s), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = orjson.loads(proc.stdout)
    (pair,) = r["pairs"]  # every shadow of the namespace has its user's result by now
    assert (pair["profile"], pair["shadow"], pair["documents"]) == ("default", "lowdpi", len(shadows))
    assert (pair["both_succeeded"], pair["status_disagreements"]) == (len(shadows) - 1, 1)  # the image
    f1 = [word_prf(shadows[document_key("acme", i)].text(), results[i].text())[2] for i in shadowed - {image_id}]
    assert pair["word_f1_mean"] == 1.0 and f1 == [1.0] * len(f1)  # both read the same text layer
    rows = {row["profile"]: row for row in r["profiles"]}
    assert rows["lowdpi"]["shadow_documents"] == len(shadows) and rows["lowdpi"]["failed"] >= 1
    assert rows["lowdpi"]["end_to_end_ms_p50"] is not None and rows["default"]["end_to_end_ms_p95"] is not None
    assert rows["lowdpi"]["metric_samples"] > 0 and rows["lowdpi"]["metric_pages"] >= len(shadowed)


# --------------------------------------------------------------------------- deployment example


def test_the_compose_profile_example_is_valid():
    """deploy/compose/profiles.yml (an override file for docker-compose.yml): its settings are
    settings, its profiles and routes validate, its commands are CLI commands, every service it
    extends exists, each profile worker serves a defined profile."""
    from ocrstream.cli import build_parser
    from test_deploy import schema_errors  # the Compose Specification's JSON Schema, as for docker-compose.yml

    doc = yaml.safe_load((REPO / "deploy" / "compose" / "profiles.yml").read_text())
    assert schema_errors(doc) == []
    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    fields = {f"OCRSTREAM_{n.upper()}" for n in Settings.model_fields}
    workers = 0
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        assert set(k for k in env if k.startswith("OCRSTREAM_")) <= fields, name
        values = {k[len("OCRSTREAM_"):].lower(): v for k, v in env.items() if k.startswith("OCRSTREAM_")}
        for key in ("profiles", "profile_routes"):
            if key in values:
                values[key] = json.loads(values[key])
        if "command" in svc:
            build_parser().parse_args(svc["command"])
            if svc["command"] == ["worker"]:
                workers += 1
                assert values.get("profile") in values["profiles"], name
                assert svc.get("profiles"), f"{name}: a plain `up` must not start it"
        else:
            assert name in base, f"{name}: neither a new service with a command nor one of docker-compose.yml"
        Settings(**{k: v for k, v in values.items() if k in ("profiles", "profile_routes", "profile", "tenants")})
    assert workers >= 2


@pytest.mark.integration
def test_the_gateway_takes_a_profile_the_tenant_may_name(pipeline):
    from test_gateway import HEADERS, KEYS, running_gateway

    keys = SecretStr(",".join(f"{k}={t or '-'}" for t, k in KEYS.items()))
    s = pipeline.model_copy(update={"gateway_api_keys": keys,
                                    "gateway_quota_per_minute": 0, "gateway_max_backlog_pages": 0})
    store = ObjectStore(s)
    pdf = make_pdf([[_line("gateway")]])
    store.put_bytes("tenants/acme/gw-profile.pdf", pdf, "application/pdf")
    body = {"bucket": s.bucket, "key": "tenants/acme/gw-profile.pdf"}
    with running_gateway(s) as gw:
        # refused before anything is stored or published
        r = gw.post("/v1/documents", headers=HEADERS["globex"], json={**body, "key": "tenants/globex/x.pdf",
                                                                     "profile": "lowdpi"})
        assert r.status_code == 403 and r.json()["code"] == "profile_not_allowed", r.text
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json={**body, "profile": "nope"})
        assert r.status_code == 403 and "no such profile" in r.json()["detail"], r.text
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json={**body, "profile": "Low DPI!"})
        assert r.status_code == 422, r.text
        r = gw.post("/v1/documents", headers=HEADERS["globex"], files={"file": ("a.pdf", pdf, "application/pdf")},
                    data={"profile": "lowdpi"})
        assert r.status_code == 403 and r.json()["code"] == "profile_not_allowed", r.text
        assert 'ocrstream_gateway_refused_total{reason="profile_not_allowed",tenant="globex"} 2.0' in \
            gw.get("/metrics").text
        # acme may name lowdpi: by reference and by upload, each OCR'd by lowdpi's worker
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json={**body, "profile": "lowdpi"})
        assert r.status_code == 202, r.text
        by_reference = r.json()["document_id"]
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json=body)
        assert r.status_code == 202 and r.json()["document_id"] != by_reference, "the profile is not in the id"
        r = gw.post("/v1/documents", headers=HEADERS["acme"], files={"file": ("a.pdf", pdf, "application/pdf")},
                    data={"profile": "lowdpi"})
        assert r.status_code == 202, r.text
        by_upload = r.json()["document_id"]
        deadline = time.monotonic() + 120
        while True:
            states = {d: gw.get(f"/v1/documents/{d}", headers=HEADERS["acme"]).json()
                      for d in (by_reference, by_upload)}
            if all(v["status"] != "pending" for v in states.values()):
                break
            assert time.monotonic() < deadline, f"no result in 120 s: {states}"
            time.sleep(0.5)
    for doc, state in states.items():
        assert state["status"] == "succeeded", state
        assert state["result"]["profile"] == "lowdpi", state
    refs = [decode(m.value(), DocumentRef) for m in read_topic(s, s.tenant_topic("acme", "ingest"))]
    assert {r.document_id: r.profile for r in refs if r.document_id in (by_reference, by_upload)} == \
        {by_reference: "lowdpi", by_upload: "lowdpi"}
    # nothing of globex's refused upload was stored
    assert not [o.key for o in store.list("tenants/globex/") if "uploads" in o.key]


@pytest.mark.integration
def test_the_gateway_judges_a_named_profile_on_its_own_backlog(stack):
    from test_gateway import _drop_topics, _namespace, _upload, running_gateway

    # No workers: the backlog is what this test puts there. lowdpi's batch lane is over the limit.
    s = _namespace(uuid.uuid4().hex[:8], gateway_max_backlog_pages=2, gateway_backlog_cache_s=0.2,
                   profiles=PROFILES, profile_routes={"-": {"allowed": ["default", "lowdpi"]}})
    try:
        apply_topics(make_admin(s), topic_specs(tenants=tuple(s.tenants), profiles=tuple(s.profiles)),
                     s.topic_prefix)
        p = Producer(producer_config(s))
        for _ in range(3):
            p.produce(s.topic(page_topic("lowdpi")), b"{}", b"k", partition=0)
        assert p.flush(30) == 0
        with running_gateway(s) as gw:
            r = _upload(gw, None, "a.pdf", make_pdf([["A"]]), data={"profile": "lowdpi"})
            assert r.status_code == 429 and "profile lowdpi" in r.json()["detail"], r.text
            r = _upload(gw, None, "a.pdf", make_pdf([["A"]]))
            assert r.status_code == 202, r.text  # default's page topic is empty
            metrics = gw.get("/metrics").text
            assert 'ocrstream_gateway_page_backlog{lane="batch",profile="lowdpi"} 3.0' in metrics
            assert 'ocrstream_gateway_page_backlog{lane="batch",profile="default"} 0.0' in metrics
    finally:
        _drop_topics(s)
