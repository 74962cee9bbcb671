"""Loading prices: LiteLLM files and URLs (manage.py load_prices), the shipped file, and the YAML
(server.model_prices_link, model_prices) through import_config / export_config."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal as D
from io import StringIO

import pytest
import yaml
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command

from credentials.models import RouterSettings
from pricing.loading import SHIPPED
from pricing.models import Price
from tests.fakes.server import FakeServer, Reply

pytestmark = pytest.mark.django_db

TODAY = datetime.now(UTC).date()
LITELLM = {
    "sample_spec": {"max_tokens": "LEGACY", "input_cost_per_token": 0.0, "litellm_provider": "one of..."},
    "gpt-4.1": {"max_tokens": 32768, "input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                "cache_read_input_token_cost": 5e-07, "litellm_provider": "openai", "mode": "chat",
                "supports_vision": True},
    "vertex_ai/gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                                 "input_cost_per_token_above_200k_tokens": 2.5e-06,
                                 "output_cost_per_token_above_200k_tokens": 1.5e-05,
                                 "litellm_provider": "vertex_ai-language-models"},
    "claude-x": {"input_cost_per_token": 3e-06, "input_cost_per_cached_token": 3e-07,
                 "cache_creation_input_token_cost": 3.75e-06, "cache_creation_input_token_cost_above_1hr": 6e-06},
    "imagen-4.0-generate-001": {"output_cost_per_image": 0.04, "mode": "image_generation"},
    "some-search-tool": {"search_context_cost_per_query": {"low": 0.01}},
}


@pytest.fixture
def no_prices():
    Price.objects.all().delete()


def load(*args: str) -> str:
    out = StringIO()
    call_command("load_prices", *args, stdout=out)
    return out.getvalue()


def prices(model: str) -> list[tuple[date, D | None, D | None]]:
    return [(p.effective_from, p.input_cost_per_token, p.output_cost_per_token)
            for p in Price.objects.filter(model=model).order_by("effective_from")]


def test_a_litellm_file_loads_price_fields_only_and_keeps_names_exactly(tmp_path, no_prices):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(LITELLM))
    out = load(str(path), "--effective-from", "2026-01-01")
    assert "4 new, 0 updated, 0 unchanged; 1 entries without a price skipped" in out
    assert sorted(Price.objects.values_list("model", flat=True)) == [
        "claude-x", "gpt-4.1", "imagen-4.0-generate-001", "vertex_ai/gemini-2.5-pro"]
    gpt = Price.objects.get(model="gpt-4.1")
    assert (gpt.input_cost_per_token, gpt.output_cost_per_token, gpt.cache_read_input_token_cost) == (
        D("2e-6"), D("8e-6"), D("5e-7"))
    assert gpt.source == str(path) and gpt.effective_from == date(2026, 1, 1)
    claude = Price.objects.get(model="claude-x")
    assert claude.cache_read_input_token_cost == D("3e-7")  # the original router's input_cost_per_cached_token
    assert claude.cache_creation_input_token_cost_above_1hr == D("6e-6")
    assert Price.objects.get(model="imagen-4.0-generate-001").output_cost_per_image == D("0.04")


def test_reloading_keeps_history_a_changed_price_starts_a_new_row(tmp_path, no_prices):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(LITELLM))
    load(str(path), "--effective-from", "2026-01-01")
    assert "0 new, 0 updated, 4 unchanged" in load(str(path), "--effective-from", "2026-02-01")
    changed = {**LITELLM, "gpt-4.1": {**LITELLM["gpt-4.1"], "input_cost_per_token": 1e-06}}
    path.write_text(json.dumps(changed))
    assert "1 new, 0 updated, 3 unchanged" in load(str(path), "--effective-from", "2026-03-01")
    assert prices("gpt-4.1") == [(date(2026, 1, 1), D("2e-6"), D("8e-6")), (date(2026, 3, 1), D("1e-6"), D("8e-6"))]
    assert "0 new, 1 updated" in load(str(path), "--effective-from", "2026-01-01")
    assert prices("gpt-4.1")[0] == (date(2026, 1, 1), D("1e-6"), D("8e-6"))


def test_a_price_url_is_fetched(no_prices):
    async def serve(req) -> Reply:
        return Reply(json=LITELLM) if req.path == "/prices.json" else Reply(status=404, json={})

    server = FakeServer(serve).start()
    try:
        assert "4 new" in load(server.url + "/prices.json")
        with pytest.raises(CommandError, match="HTTP 404"):
            load(server.url + "/missing.json")
    finally:
        server.stop()


def test_unreadable_or_malformed_sources_are_clear_errors(tmp_path, no_prices):
    with pytest.raises(CommandError, match="cannot read it"):
        load(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        load(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(CommandError, match="expected a JSON object"):
        load(f"file://{bad}")
    assert not Price.objects.exists()


def test_the_shipped_file_prices_the_models_the_docs_name(no_prices):
    from importlib import import_module

    import_module("pricing.migrations.0002_shipped_prices").load_shipped(django_apps, None)
    data = json.loads(SHIPPED.read_text())
    assert data["_about"]["prices_as_of"] == "2026-12-01"
    named = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "gpt-5-codex", "gpt-5.1-codex", "o3", "o4-mini",
             "claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "gemini-2.5-flash", "gemini-2.5-pro",
             "text-embedding-3-small", "text-embedding-3-large", "gpt-image-1", "imagen-4.0-generate-001"]
    loaded = set(Price.objects.values_list("model", flat=True))
    assert set(named) <= loaded
    assert len(loaded) == len([k for k in data if not k.startswith("_")])
    assert {p.effective_from for p in Price.objects.all()} == {date(2026, 12, 1)}
    sonnet = Price.objects.get(model="claude-sonnet-4-6")
    assert sonnet.cache_creation_input_token_cost_above_1hr == 2 * sonnet.input_cost_per_token


# ---- YAML: server.model_prices_link and model_prices ------------------------------------------------------

def run_import(tmp_path, text: str, *args: str) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("import_config", str(path), *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def export() -> str:
    out = StringIO()
    call_command("export_config", stdout=out, stderr=StringIO())
    return out.getvalue()


def test_model_prices_link_is_loaded_on_import_and_yaml_prices_override_it(tmp_path, no_prices):
    link = tmp_path / "prices.json"
    link.write_text(json.dumps(LITELLM))
    text = f"""
server: {{model_prices_link: "file://{link}"}}
model_prices:
  gpt-4.1: {{input_cost_per_token: 1.5e-06, output_cost_per_token: 6.0e-06}}
  gemini-2.5-flash:
    - {{input_cost_per_token: 3.0e-07, output_cost_per_token: 2.5e-06, effective_from: 2026-01-01}}
    - {{input_cost_per_token: 9.0e-07, output_cost_per_token: 2.5e-06, provider: vertex-ai}}
"""
    out = run_import(tmp_path, text, "--dry-run")
    assert "model_prices: 3 new" in out and f"file://{link}: 3 new" in out
    assert not Price.objects.exists() and not RouterSettings.load().model_prices_link
    run_import(tmp_path, text)
    assert RouterSettings.load().model_prices_link == f"file://{link}"
    assert prices("gpt-4.1") == [(TODAY, D("1.5e-6"), D("6e-6"))]  # the YAML's, not the file's
    assert Price.objects.get(model="gpt-4.1").source == "yaml"
    assert Price.objects.get(model="claude-x").source == f"file://{link}"
    assert sorted(Price.objects.filter(model="gemini-2.5-flash").values_list("provider", "effective_from")) == [
        ("", date(2026, 1, 1)), ("vertex-ai", TODAY)]
    assert "no changes" in run_import(tmp_path, text)

    exported = export()
    data = yaml.safe_load(exported)
    assert data["server"] == {"model_prices_link": f"file://{link}"}
    assert data["model_prices"]["gpt-4.1"] == {"input_cost_per_token": 1.5e-06, "output_cost_per_token": 6e-06,
                                               "effective_from": TODAY.isoformat()}
    assert len(data["model_prices"]["gemini-2.5-flash"]) == 2
    assert "claude-x" not in data["model_prices"]  # loaded from the link: the link is exported instead
    Price.objects.filter(source="yaml").delete()
    run_import(tmp_path, exported)
    assert export() == exported


def test_model_prices_errors_name_their_yaml_path(tmp_path, no_prices):
    text = """
server: {model_prices_link: /no/such/prices.json}
model_prices:
  gpt-4o: {input_cost_per_tokens: 1.0e-06}
  gpt-4.1: {input_cost_per_token: -1}
  o3: {input_cost_per_token: 1.0e-06, provider: azure, effective_from: someday}
  empty: {}
  "bad name": {input_cost_per_token: 1.0e-06}
"""
    with pytest.raises(CommandError) as exc:
        run_import(tmp_path, text)
    message = str(exc.value)
    for expected in (
        "model_prices.gpt-4o.input_cost_per_tokens: unknown price field (did you mean 'input_cost_per_token'?)",
        "model_prices[\"gpt-4.1\"].input_cost_per_token: expected a number >= 0",
        "model_prices.o3.provider: expected a credential type",
        "model_prices.o3.effective_from: expected a date YYYY-MM-DD, got 'someday'",
        "model_prices.empty: gives no price",
        "model_prices[\"bad name\"]: a model name uses letters",
        "server.model_prices_link: /no/such/prices.json: cannot read it",
    ):
        assert expected in message
    assert not Price.objects.exists()


def test_sync_interval_of_the_original_router_is_a_warning(tmp_path, no_prices):
    path = tmp_path / "router.yaml"
    path.write_text("server: {model_prices_sync_interval: 5m}\n")
    err = StringIO()
    call_command("import_config", str(path), stdout=StringIO(), stderr=err)
    assert "server.model_prices_sync_interval: a setting of the original router" in err.getvalue()
    assert "load_prices" in err.getvalue()
