"""manage.py import_config / export_config and the config_io service behind them."""

from __future__ import annotations

import json
import stat
import textwrap
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from credentials import config_io
from credentials.config_io import CREDENTIAL_FIELDS, MODEL_FIELDS, ConfigError, clean_fail2ban
from credentials.models import Credential, ModelAlias, ProviderModel, RouterSettings, hash_key
from tests.factories import CredentialFactory, ModelAliasFactory, ProviderModelFactory, service_account_info

pytestmark = pytest.mark.django_db

# The example of the seed documentation (docs/codex), as published.
SEED_EXAMPLE = """
credentials:
  - name: openai_main
    type: openai
    api_key: "sk-proj-xxxxx"

  - name: vertex_gemini
    type: vertex-ai
    project_id: "my-project"
    location: "us-central1"
    credentials_file: "path/to/sa.json"

  - name: anthropic_main
    type: anthropic
    api_key: "sk-ant-xxxxx"

models:
  - name: "gpt-4o"
    credential: openai_main
  - name: "gemini-2.5-flash"
    credential: vertex_gemini
  - name: "claude-sonnet-4-6"
    credential: anthropic_main

model_aliases:
  - alias: "fast"
    target: "gemini-2.5-flash"
"""

# The issue's example: both alias forms and env references.
ISSUE_EXAMPLE = """
server: {master_key: os.environ/MASTER_KEY}
credentials:
  - {name: openai_main, type: openai, api_key: "sk-proj-xxxxx"}
  - {name: vertex_gemini, type: vertex-ai, project_id: my-project, location: us-central1,
     credentials_file: path/to/sa.json}
  - {name: anthropic_main, type: anthropic, api_key: os.environ/ANTHROPIC_KEY, rpm: 50}
models:
  - {name: gpt-4o, credential: openai_main}
  - {name: claude-sonnet-4-6, credential: anthropic_main, model: claude-sonnet-4-6-20260101}
model_aliases:
  - {alias: fast, target: gemini-2.5-flash}
model_alias: {smart: claude-sonnet-4-6}
"""

# The original Go router's format (its config.yaml.example, abridged): many keys this router does not use.
ORIGINAL_EXAMPLE = """
server:
  port: 8080
  max_body_size_mb: 100
  response_compatibility: native
  request_timeout: 60s
  logging_level: info
  master_key: "sk-your-master-key-here"
  default_models_rpm: -1
  tiktoken_enabled: true
  response_headers:
    mode: passthrough

fail2ban:
  max_attempts: 3
  ban_duration: permanent
  error_codes: [401, 403, 429, 500, 502, 503, 504]
  error_code_rules:
    - code: 429
      max_attempts: 5
      ban_duration: 5m
  credential_overrides:
    comet_anthropic:
      error_codes: [400, 429, 500]

monitoring:
  prometheus_enabled: true
  log_errors: false

x-model-templates:
  vertex-models: &vertex-models
    - name: gemini-2.5-flash
      rpm: 100
      tpm: 50000
    - name: gemini-2.5-pro
      rpm: 50

credentials:
  - name: "openai_main"
    type: "openai"
    api_key: "sk-proj-xxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    base_url: "https://api.openai.com"
    # proxy_url: "os.environ/OPENAI_PROXY_URL"
    rpm: 100
    tpm: 50000
    weight: 100
    priority: 1

  - name: "vertex_ai"
    type: "vertex-ai"
    project_id: "your-project-id"
    location: "global"
    credentials_file: "path/to/service-account.json"
    rpm: 100
    tpm: 50000
    models: *vertex-models

  - name: "gemini_studio"
    type: "gemini"
    api_key: "os.environ/GEMINI_API_KEY"
    base_url: "https://generativelanguage.googleapis.com"
    rpm: 60
    tpm: -1

  - name: "comet_anthropic"
    type: "cometapi"
    api_key: "os.environ/COMET_API_KEY"
    base_url: "https://api.cometapi.com/v1"
    rpm: 60
    tpm: -1

  - name: "air_fallback"
    type: "air"
    base_url: "http://backup-router.local:8080"
    api_key: "sk-remote-master-key"
    rpm: 200
    tpm: 100000
    is_fallback: true

models:
  - name: "gpt-4o"
    credential: openai_main
    rpm: 100
    tpm: 50000
    weight: 200
  - name: "claude-haiku-4.5"
    model: "claude-haiku-4-5-20251001"
    credential: comet_anthropic
    rpm: 60
    tpm: -1

model_alias:
  claude: claude-haiku-4.5
  fast: gemini-2.5-flash

redis:
  enabled: false
  addresses:
    - "os.environ/REDIS_ADDRESS"

litellm_db:
  enabled: false
  database_url: "os.environ/LITELLM_DATABASE_URL"
  max_conns: 25
"""


@pytest.fixture(autouse=True)
def _isolated(settings, monkeypatch, tmp_path):
    """No master key override, a fixed encryption key, and relative paths resolved in a scratch directory
    that holds the service-account files the examples name."""
    settings.ROUTER_MASTER_KEY = None
    settings.ROUTER_ENCRYPTION_KEY = "import-tests-key"
    for var in ("MASTER_KEY", "ANTHROPIC_KEY", "GEMINI_API_KEY", "COMET_API_KEY", "LITELLM_DATABASE_URL",
                "REDIS_ADDRESS", "UNSET_VAR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    for name in ("path/to/sa.json", "path/to/service-account.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(service_account_info()))


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run(tmp_path: Path, text: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_config", str(write(tmp_path, text)), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(tmp_path: Path, text: str, *args: str) -> str:
    with pytest.raises(CommandError) as exc:
        run(tmp_path, text, *args)
    return str(exc.value)


def state() -> dict:
    """Everything an import can change, without ids and timestamps."""
    settings_row = RouterSettings.objects.filter(pk=1).first()
    return {
        "credentials": {c.name: {f: getattr(c, f) for f in CREDENTIAL_FIELDS} for c in Credential.objects.all()},
        "models": {(m.name, m.credential.name): {f: getattr(m, f) for f in MODEL_FIELDS}
                   for m in ProviderModel.objects.select_related("credential")},
        "aliases": {a.alias: a.targets for a in ModelAlias.objects.all()},
        "fail2ban": settings_row.fail2ban if settings_row else {},
        "master_key_hash": settings_row.master_key_hash if settings_row else "",
    }


def version() -> int:
    return RouterSettings.objects.filter(pk=1).values_list("config_version", flat=True).first() or 0


# ---- accepted formats -----------------------------------------------------------------------------------


def test_seed_example_imports_cleanly(tmp_path):
    out, err = run(tmp_path, SEED_EXAMPLE)
    assert err == ""
    assert "credentials: 3 created" in out
    vertex = Credential.objects.get(name="vertex_gemini")
    assert (vertex.type, vertex.project_id, vertex.location) == ("vertex-ai", "my-project", "us-central1")
    assert vertex.service_account_info()["client_email"].endswith("iam.gserviceaccount.com")
    assert Credential.objects.get(name="openai_main").api_key == "sk-proj-xxxxx"
    assert set(ProviderModel.objects.values_list("name", "credential__name")) == {
        ("gpt-4o", "openai_main"), ("gemini-2.5-flash", "vertex_gemini"), ("claude-sonnet-4-6", "anthropic_main"),
    }
    assert ModelAlias.objects.get(alias="fast").targets == ["gemini-2.5-flash"]


def test_issue_example_with_both_alias_forms_and_env_references(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_KEY", "sk-master-from-env-0001")
    monkeypatch.setenv("ANTHROPIC_KEY", "sk-ant-from-env-abcdef")
    out, err = run(tmp_path, ISSUE_EXAMPLE)
    anthropic = Credential.objects.get(name="anthropic_main")
    assert anthropic.api_key == "sk-ant-from-env-abcdef"
    assert anthropic.rpm == 50 and anthropic.tpm is None
    assert Credential.objects.get(name="openai_main").rpm is None  # missing rpm = unlimited
    assert ProviderModel.objects.get(name="claude-sonnet-4-6").upstream_model == "claude-sonnet-4-6-20260101"
    assert {a.alias: a.targets for a in ModelAlias.objects.all()} == {
        "fast": ["gemini-2.5-flash"], "smart": ["claude-sonnet-4-6"],
    }
    assert RouterSettings.load().master_key_hash == hash_key("sk-master-from-env-0001")
    assert "model_aliases[0].target: no configured model named 'gemini-2.5-flash'" in err
    assert "sk-ant-from-env-abcdef" not in out + err and "sk-…cdef" in out


def test_original_router_format_imports_with_warnings(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaSyGeminiKeyForTests000")
    monkeypatch.setenv("COMET_API_KEY", "sk-comet-key-for-tests")
    _, err = run(tmp_path, ORIGINAL_EXAMPLE)
    types = dict(Credential.objects.values_list("name", "type"))
    assert types == {"openai_main": "openai", "vertex_ai": "vertex-ai", "gemini_studio": "gemini",
                     "comet_anthropic": "anthropic", "air_fallback": "proxy"}
    gemini = Credential.objects.get(name="gemini_studio")
    assert (gemini.rpm, gemini.tpm, gemini.api_key) == (60, None, "AIzaSyGeminiKeyForTests000")  # tpm -1 = unlimited
    assert Credential.objects.get(name="air_fallback").is_fallback
    assert Credential.objects.get(name="openai_main").weight == 100
    # Inline models of a credential, expanded from an x-model-templates anchor.
    assert {(m.name, m.rpm, m.tpm) for m in ProviderModel.objects.filter(credential__name="vertex_ai")} == {
        ("gemini-2.5-flash", 100, 50000), ("gemini-2.5-pro", 50, None),
    }
    assert ModelAlias.objects.get(alias="claude").targets == ["claude-haiku-4.5"]
    fail2ban = RouterSettings.load().fail2ban
    assert fail2ban["error_code_rules"] == [{"code": 429, "max_attempts": 5, "ban_duration": "5m"}]
    assert fail2ban["credential_overrides"] == {"comet_anthropic": {"error_codes": [400, 429, 500]}}
    assert RouterSettings.load().master_key_hash == hash_key("sk-your-master-key-here")
    for expected in (
        "warning: server.port: ", "set ROUTER_PORT instead", "warning: server.response_compatibility: ",
        "warning: server.response_headers: ", "warning: monitoring: ", "warning: redis: ", "warning: litellm_db: ",
        "warning: credentials[0].priority: ", "warning: models[0].weight: ",
        "warning: credentials[3].type: the original router's type 'cometapi' is imported as 'anthropic'",
        "warning: credentials[4].type: the original router's type 'air' is imported as 'proxy'",
    ):
        assert expected in err
    assert "x-model-templates" not in err  # an anchor holder, not configuration
    assert "LITELLM_DATABASE_URL" not in err  # ignored sections are not resolved


def test_original_type_spellings(tmp_path):
    run(tmp_path, """
        credentials:
          - {name: a, type: vllm, base_url: "http://localhost:8000/v1"}
          - {name: b, type: cometapi, api_key: sk-comet-1234567, openai_proto: true}
          - {name: c, type: cometapi, api_key: sk-comet-1234567, google_proto: "true"}
          - {name: d, type: auto-ai-router, base_url: "http://localhost:8081"}
    """)
    assert dict(Credential.objects.values_list("name", "type")) == {"a": "openai", "b": "openai", "c": "gemini",
                                                                    "d": "proxy"}


def test_sample_config_of_the_repository_imports(tmp_path):
    sample = Path(__file__).resolve().parent.parent / "router.sample.yaml"
    _, err = run(tmp_path, sample.read_text())
    assert err == ""
    assert set(ProviderModel.objects.values_list("name", flat=True)) == {"demo", "gpt-4o"}
    assert Credential.objects.get().type == "demo"
    assert ModelAlias.objects.get(alias="fast").targets == ["demo"]
    assert RouterSettings.load().master_key_hash == hash_key("sk-router-local-dev")


def test_credentials_json_as_mapping_or_string(tmp_path):
    info = service_account_info()
    text = yaml.safe_dump({"credentials": [
        {"name": "v1", "type": "vertex-ai", "project_id": "p", "location": "global", "credentials_json": info},
        {"name": "v2", "type": "vertex-ai", "project_id": "p", "location": "global",
         "credentials_json": json.dumps(info)},
    ]})
    out, err = run(tmp_path, text)
    for name in ("v1", "v2"):
        assert Credential.objects.get(name=name).service_account_info() == info
    assert info["private_key"] not in out + err
    assert "service account router-test@test-project.iam.gserviceaccount.com" in out


def test_headers_spellings_and_env_in_nested_values(tmp_path, monkeypatch):
    monkeypatch.setenv("ORG_ID", "org-42")
    run(tmp_path, """
        credentials:
          - {name: a, type: openai, api_key: sk-aaaaaaaaaa, headers: {OpenAI-Organization: os.environ/ORG_ID}}
          - {name: b, type: openai, api_key: sk-bbbbbbbbbb, request_headers: {User-Agent: router/1.0}}
          - {name: c, type: openai, api_key: sk-cccccccccc, extra_headers: {X-Num: 7}}
    """)
    headers = dict(Credential.objects.values_list("name", "extra_headers"))
    assert headers == {"a": {"OpenAI-Organization": "org-42"}, "b": {"User-Agent": "router/1.0"}, "c": {"X-Num": "7"}}


def test_values_from_env_are_parsed_like_yaml_values(tmp_path, monkeypatch):
    monkeypatch.setenv("RPM", "120")
    monkeypatch.setenv("FALLBACK", "true")
    run(tmp_path, """
        credentials:
          - {name: a, type: openai, api_key: sk-aaaaaaaaaa, rpm: os.environ/RPM, is_fallback: os.environ/FALLBACK}
    """)
    cred = Credential.objects.get()
    assert (cred.rpm, cred.is_fallback) == (120, True)


def test_list_anchor_in_top_level_models_is_flattened(tmp_path):
    run(tmp_path, """
        x-shared: &shared
          - {name: m1, credential: a}
          - {name: m2, credential: a, enabled: false}
        credentials:
          - {name: a, type: demo}
        models:
          - *shared
          - {name: m3, credential: a}
    """)
    assert dict(ProviderModel.objects.values_list("name", "enabled")) == {"m1": True, "m2": False, "m3": True}


def test_alias_with_a_list_of_fallback_targets(tmp_path):
    run(tmp_path, """
        credentials: [{name: a, type: demo}]
        models: [{name: m1, credential: a}, {name: m2, credential: a}]
        model_aliases: [{alias: best, target: [m1, m2]}]
        model_alias: {quick: [m2, m1]}
    """)
    assert {a.alias: a.targets for a in ModelAlias.objects.all()} == {"best": ["m1", "m2"], "quick": ["m2", "m1"]}


# ---- idempotency, dry run, prune, all or nothing ------------------------------------------------------------

BASIC = """
server: {master_key: sk-router-test-key}
credentials:
  - {name: one, type: openai, api_key: sk-one-0000000001, rpm: 10}
  - {name: two, type: anthropic, api_key: sk-ant-two-00000002}
models:
  - {name: gpt-4o, credential: one}
  - {name: claude, credential: two}
model_aliases:
  - {alias: fast, target: gpt-4o}
fail2ban: {max_attempts: 2}
"""


def test_import_twice_changes_nothing_the_second_time(tmp_path):
    first, _ = run(tmp_path, BASIC)
    assert "credentials: 2 created" in first
    snapshot, before = state(), version()
    second, _ = run(tmp_path, BASIC)
    assert "no changes" in second
    assert ("credentials: 0 created, 0 updated, 0 deleted, 2 unchanged; models: 0 created, 0 updated, 0 deleted, "
            "2 unchanged; aliases: 0 created, 0 updated, 0 deleted, 1 unchanged") in second
    assert state() == snapshot
    assert version() == before  # nothing saved, so the request path does not reload
    assert (Credential.objects.count(), ProviderModel.objects.count(), ModelAlias.objects.count()) == (2, 2, 1)


def test_update_reports_field_changes_without_secrets(tmp_path):
    run(tmp_path, BASIC)
    out, _ = run(tmp_path, BASIC.replace("rpm: 10", "rpm: 20").replace("sk-ant-two-00000002", "sk-ant-two-99999999"))
    assert "~ update credential one (openai): rpm 10 -> 20" in out
    assert "~ update credential two (anthropic): api_key changed (sk-…9999)" in out
    assert "sk-ant-two-99999999" not in out
    assert Credential.objects.get(name="two").api_key == "sk-ant-two-99999999"


def test_missing_key_means_the_default(tmp_path):
    run(tmp_path, BASIC)
    run(tmp_path, BASIC.replace(", rpm: 10", ""))
    assert Credential.objects.get(name="one").rpm is None


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    out, _ = run(tmp_path, BASIC, "--dry-run")
    assert "Dry run, nothing was changed" in out
    assert "+ create credential one (openai)" in out and "+ create model gpt-4o @ one" in out
    assert "+ create alias fast" in out and "master key set (from server.master_key)" in out
    assert "sk-one-0000000001" not in out
    assert (Credential.objects.count(), ProviderModel.objects.count(), ModelAlias.objects.count()) == (0, 0, 0)
    assert not RouterSettings.objects.filter(master_key_hash__gt="").exists()


def test_dry_run_of_updates_and_prune_changes_nothing(tmp_path):
    run(tmp_path, BASIC)
    snapshot, before = state(), version()
    smaller = BASIC.replace("  - {name: two, type: anthropic, api_key: sk-ant-two-00000002}\n", "").replace(
        "  - {name: claude, credential: two}\n", "").replace("rpm: 10", "rpm: 11")
    out, _ = run(tmp_path, smaller, "--dry-run", "--prune")
    assert "~ update credential one (openai): rpm 10 -> 11" in out
    assert "- delete credential two: with its 1 model(s)" in out
    assert state() == snapshot and version() == before


def test_without_prune_unnamed_objects_are_kept_and_listed(tmp_path):
    run(tmp_path, BASIC)
    out, _ = run(tmp_path, """
        credentials: [{name: one, type: openai, api_key: sk-one-0000000001, rpm: 10}]
        models: [{name: gpt-4o, credential: one}]
    """)
    assert "kept (in the database, not in the file; --prune deletes them)" in out
    assert "credential two" in out and "model claude @ two" in out and "alias fast" in out
    assert Credential.objects.count() == 2 and ModelAlias.objects.count() == 1


def test_prune_deletes_what_the_file_no_longer_names(tmp_path):
    run(tmp_path, BASIC)
    other = CredentialFactory(name="manual")
    ProviderModelFactory(name="extra", credential=Credential.objects.get(name="one"))
    ProviderModelFactory(name="manual-model", credential=other)
    ModelAliasFactory(alias="old-alias")
    out, _ = run(tmp_path, """
        credentials: [{name: one, type: openai, api_key: sk-one-0000000001, rpm: 10}]
        models: [{name: gpt-4o, credential: one}]
        model_aliases: [{alias: fast, target: gpt-4o}]
    """, "--prune")
    assert "- delete credential two: with its 1 model(s)" in out
    assert "- delete credential manual: with its 1 model(s)" in out
    assert "- delete model extra @ one" in out and "- delete alias old-alias" in out
    assert list(Credential.objects.values_list("name", flat=True)) == ["one"]
    assert list(ProviderModel.objects.values_list("name", flat=True)) == ["gpt-4o"]
    assert list(ModelAlias.objects.values_list("alias", flat=True)) == ["fast"]
    assert RouterSettings.load().fail2ban == {}  # the section is absent: prune resets it


def test_absent_fail2ban_section_is_left_alone_without_prune(tmp_path):
    run(tmp_path, BASIC)
    run(tmp_path, "credentials: [{name: one, type: openai, api_key: sk-one-0000000001, rpm: 10}]")
    assert RouterSettings.load().fail2ban == {"max_attempts": 2}


def test_prune_refuses_a_model_of_a_credential_it_would_delete(tmp_path):
    CredentialFactory(name="db-only")
    message = fails(tmp_path, "models: [{name: m, credential: db-only}]", "--prune")
    assert "models[0].credential: no credential named 'db-only'" in message
    assert Credential.objects.filter(name="db-only").exists()


def test_model_may_reference_a_credential_already_in_the_database(tmp_path):
    CredentialFactory(name="db-only")
    run(tmp_path, "models: [{name: m, credential: db-only}]")
    assert ProviderModel.objects.get().credential.name == "db-only"


def test_a_failure_while_writing_rolls_everything_back(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ModelAlias, "save", boom)
    with pytest.raises(RuntimeError):
        run(tmp_path, BASIC)
    assert (Credential.objects.count(), ProviderModel.objects.count()) == (0, 0)


def test_errors_change_nothing_even_when_most_items_are_valid(tmp_path):
    run(tmp_path, BASIC)
    snapshot = state()
    fails(tmp_path, BASIC.replace("rpm: 10", "rpm: 99") + "  - {alias: broken, target: []}\n")
    assert state() == snapshot


# ---- master key --------------------------------------------------------------------------------------------


def test_router_master_key_setting_overrides_the_yaml(tmp_path, settings):
    settings.ROUTER_MASTER_KEY = "sk-from-the-environment-1"
    out, err = run(tmp_path, "server: {master_key: os.environ/UNSET_VAR}")  # not resolved: overridden
    assert RouterSettings.load().master_key_hash == hash_key("sk-from-the-environment-1")
    assert "server.master_key: overridden by the ROUTER_MASTER_KEY setting" in err
    assert "master key set (from ROUTER_MASTER_KEY)" in out
    assert "sk-from-the-environment-1" not in out + err


def test_a_file_without_master_key_keeps_the_stored_one(tmp_path):
    run(tmp_path, BASIC)
    run(tmp_path, "credentials: []")
    assert RouterSettings.load().master_key_hash == hash_key("sk-router-test-key")


# ---- env references --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path"), [
    ("server: {master_key: os.environ/UNSET_VAR}", "server.master_key"),
    ("credentials: [{name: a, type: openai, api_key: os.environ/UNSET_VAR}]", "credentials[0].api_key"),
    ("credentials: [{name: a, type: openai, api_key: sk-aaaaaaaa, headers: {X-T: os.environ/UNSET_VAR}}]",
     "credentials[0].headers.X-T"),
    ("credentials: [{name: a, type: demo}]\nmodels: [{name: os.environ/UNSET_VAR, credential: a}]", "models[0].name"),
    ("model_alias: {fast: os.environ/UNSET_VAR}", "model_alias.fast"),
    ("model_aliases: [{alias: fast, target: [m, os.environ/UNSET_VAR]}]", "model_aliases[0].target[1]"),
    ("fail2ban: {max_attempts: os.environ/UNSET_VAR}", "fail2ban.max_attempts"),
])
def test_unset_environment_variable_is_an_error_naming_it_and_the_path(tmp_path, text, path):
    message = fails(tmp_path, text)
    assert f"{path}: environment variable UNSET_VAR is not set" in message


def test_empty_env_reference_is_an_error(tmp_path):
    assert "credentials[0].api_key: 'os.environ/' names no environment variable" in fails(
        tmp_path, "credentials: [{name: a, type: openai, api_key: os.environ/}]")


# ---- validation errors ---------------------------------------------------------------------------------------

ERROR_CASES = {
    "unknown type": (
        "credentials: [{name: a, type: opena1, api_key: sk-aaaaaaaa}]",
        ["credentials[0].type: unknown type 'opena1' (did you mean 'openai'?); "
         "allowed: openai, anthropic, gemini, vertex-ai, proxy, demo"],
    ),
    "unsupported original type": (
        "credentials: [{name: a, type: bedrock, api_key: x}]",
        ["credentials[0].type: type 'bedrock' is not supported by this router; allowed: openai"],
    ),
    "missing type": ("credentials: [{name: a}]", ["credentials[0].type: is required"]),
    "missing name": (
        "credentials: [{name: a, type: demo}, {type: demo}]", ["credentials[1].name: is required"],
    ),
    "name with spaces": ("credentials: [{name: my cred, type: demo}]", ["credentials[0].name: Use letters"]),
    "duplicate credential names": (
        "credentials: [{name: a, type: demo}, {name: b, type: demo}, {name: a, type: demo}]",
        ["credentials[2].name: duplicate credential name 'a' (first at credentials[0].name)"],
    ),
    "model with an unknown credential": (
        "credentials: [{name: openai_main, type: demo}]\nmodels: [{name: m, credential: openai_mian}]",
        ["models[0].credential: no credential named 'openai_mian' (did you mean 'openai_main'?)"],
    ),
    "model without credential": (
        "models: [{name: m}]", ["models[0].credential: is required"],
    ),
    "duplicate model": (
        "credentials: [{name: a, type: demo}]\nmodels: [{name: m, credential: a}, {name: m, credential: a}]",
        ["models[1]: duplicate model 'm' on credential 'a' (first at models[0])"],
    ),
    "inline model naming another credential": (
        "credentials: [{name: a, type: demo, models: [{name: m, credential: b}]}]",
        ["credentials[0].models[0].credential: this model is listed under credential 'a'"],
    ),
    "alias to itself (list form)": (
        "model_aliases: [{alias: fast, target: fast}]", ["model_aliases[0].target: An alias cannot point at itself."],
    ),
    "alias to itself (map form)": (
        "model_alias: {loop: [a, loop]}", ["model_alias.loop: An alias cannot point at itself."],
    ),
    "alias without target": ("model_aliases: [{alias: fast}]", ["model_aliases[0].target: is required"]),
    "alias with empty target list": (
        "model_aliases: [{alias: fast, target: []}]", ["model_aliases[0].target: expected a model name or"],
    ),
    "duplicate alias across both forms": (
        "model_aliases: [{alias: fast, target: a}]\nmodel_alias: {fast: b}",
        ["model_alias.fast: duplicate alias 'fast' (first at model_aliases[0])"],
    ),
    "rpm not a number": (
        "credentials: [{name: a, type: demo, rpm: fast}]",
        ["credentials[0].rpm: expected a whole number >= 1, or -1 / nothing for unlimited; got 'fast'"],
    ),
    "rpm zero": ("credentials: [{name: a, type: demo, rpm: 0}]", ["credentials[0].rpm: expected a whole number"]),
    "rpm negative": ("credentials: [{name: a, type: demo, rpm: -5}]", ["credentials[0].rpm: expected"]),
    "model tpm fraction": (
        "credentials: [{name: a, type: demo}]\nmodels: [{name: m, credential: a, tpm: 1.5}]",
        ["models[0].tpm: expected a whole number"],
    ),
    "weight zero": ("credentials: [{name: a, type: demo, weight: 0}]", ["credentials[0].weight: expected"]),
    "boolean not a boolean": (
        "credentials: [{name: a, type: demo, enabled: maybe}]",
        ["credentials[0].enabled: expected true or false, got 'maybe'"],
    ),
    "misspelt credential key": (
        "credentials: [{name: a, type: openai, api_kye: sk-aaaaaaaa}]",
        ["credentials[0].api_kye: unknown key (did you mean 'api_key'?); allowed here: name, type"],
    ),
    "misspelt top-level section": (
        "credentails: []", ["credentails: unknown key (did you mean 'credentials'?)"],
    ),
    "misspelt server key": ("server: {mastr_key: x}", ["server.mastr_key: unknown key (did you mean 'master_key'?)"]),
    "misspelt model key": (
        "credentials: [{name: a, type: demo}]\nmodels: [{name: m, credentail: a}]",
        ["models[0].credentail: unknown key (did you mean 'credential'?)", "models[0].credential: is required"],
    ),
    "misspelt alias key": (
        "model_aliases: [{alias: a, target: b, traget: c}]", ["model_aliases[0].traget: unknown key"],
    ),
    "vertex without project, location or service account": (
        "credentials: [{name: v, type: vertex-ai}]",
        ["credentials[0].project_id: A Vertex AI credential needs a project id.",
         "credentials[0].location: A Vertex AI credential needs a location",
         "credentials[0].credentials_json: A Vertex AI credential needs a service account"],
    ),
    "vertex with a missing file": (
        "credentials: [{name: v, type: vertex-ai, project_id: p, location: global, credentials_file: nope.json}]",
        ["credentials[0].credentials_file: No readable file at nope.json (no such file): relative paths are "
         "resolved from the YAML file's folder"],
    ),
    "vertex with a broken service-account JSON": (
        "credentials: [{name: v, type: vertex-ai, project_id: p, location: global, credentials_json: '{\"a\": 1}'}]",
        ["credentials[0].credentials_json: The service-account JSON: `type` is missing.",
         "credentials[0].credentials_json: The service-account JSON: `client_email` is missing.",
         "credentials[0].credentials_json: The service-account JSON: `private_key` is missing.",
         "credentials[0].credentials_json: The service-account JSON: `token_uri` is missing."],
    ),
    "openai without key": (
        "credentials: [{name: a, type: openai}]", ["credentials[0].api_key: A OpenAI / OpenAI-compatible credential"],
    ),
    "responses_api on anthropic": (
        "credentials: [{name: a, type: anthropic, api_key: sk-ant-aaaaaaa, responses_api: true}]",
        ["credentials[0].responses_api: Only openai and proxy credentials"],
    ),
    "bad base_url": (
        "credentials: [{name: a, type: openai, api_key: sk-aaaaaaaa, base_url: not a url}]",
        ["credentials[0].base_url: Enter an http(s) URL"],
    ),
    "headers not a mapping": (
        "credentials: [{name: a, type: demo, headers: [a, b]}]",
        ["credentials[0].headers: expected a mapping of header names to values, got a list"],
    ),
    "headers given twice": (
        "credentials: [{name: a, type: demo, headers: {}, extra_headers: {}}]",
        ["credentials[0].headers: give the extra headers once: extra_headers and headers are both set"],
    ),
    "redacted placeholder for a new credential": (
        "credentials: [{name: a, type: openai, api_key: '<redacted sk-…a1b2>'}]",
        ["credentials[0].api_key: is a redacted placeholder, but credential 'a' has no stored secret"],
    ),
    "credentials not a list": ("credentials: {name: a}", ["credentials: expected a list, got a mapping"]),
    "credential not a mapping": ("credentials: [openai]", ["credentials[0]: expected a mapping with name, type"]),
    "server not a mapping": ("server: sk-key", ["server: expected a mapping, got a string"]),
    "model_alias not a mapping": ("model_alias: [a]", ["model_alias: expected a mapping alias: target, got a list"]),
    "fail2ban bad values": (
        "fail2ban: {max_attempts: 0, ban_duration: soon, error_codes: [429, 999], ban_duraton: 5m}",
        ["fail2ban.max_attempts: expected a whole number >= 1, got 0",
         "fail2ban.ban_duration: expected 'permanent', a duration such as 90s",
         "fail2ban.error_codes[1]: expected a whole number between 100 and 599, got 999",
         "fail2ban.ban_duraton: unknown key (did you mean 'ban_duration'?)"],
    ),
    "fail2ban bad rules": (
        "fail2ban: {error_code_rules: [{max_attempts: 2}], credential_overrides: {a: [1]}}",
        ["fail2ban.error_code_rules[0]: expected a mapping with code",
         "fail2ban.credential_overrides.a: expected a mapping"],
    ),
    "fail2ban not a mapping": ("fail2ban: [1, 2]", ["fail2ban: expected a mapping"]),
    "bad YAML syntax": (
        "credentials:\n  - name: a\n   type: demo\n", ["line 3, column 4: invalid YAML: "],
    ),
    "unterminated quote": ("credentials: [{name: \"a}]\n", ["invalid YAML"]),
    "key given twice": (
        "credentials: []\nmodels: []\ncredentials: []\n", ["line 3, column 1: invalid YAML: the key 'credentials'"],
    ),
    "top level is a list": ("- a\n- b\n", ["top level: expected a mapping of sections (server, credentials"]),
    "top level is a string": ("just text\n", ["top level: expected a mapping of sections", "got a string"]),
    "empty file": ("", ["top level: the file is empty"]),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_validation_errors_name_the_yaml_path(tmp_path, case):
    text, expected = ERROR_CASES[case]
    message = fails(tmp_path, text)
    assert "nothing was changed" in message
    for part in expected:
        assert part in message
    assert not Credential.objects.exists() and not ModelAlias.objects.exists()


def test_all_errors_are_reported_at_once(tmp_path):
    message = fails(tmp_path, """
        server: {prot: 1}
        credentials:
          - {name: a, type: opena1}
          - {name: v, type: vertex-ai}
          - {name: b, type: demo, rpm: lots}
        models: [{name: m, credential: nope}]
        model_aliases: [{alias: x, target: x}]
    """)
    for path in ("server.prot", "credentials[0].type", "credentials[1].project_id", "credentials[2].rpm",
                 "models[0].credential", "model_aliases[0].target"):
        assert f"  {path}: " in message
    assert "8 error(s)" in message  # the Vertex credential has three


def test_secrets_never_appear_in_errors(tmp_path):
    message = fails(tmp_path, 'credentials:\n  - {name: a, type: openai, api_key: "sk-secret-0123456789}\n')
    assert "sk-secret" not in message
    message = fails(tmp_path, "credentials: [{name: a, type: openai, api_key: [sk-secret-0123456789]}]")
    assert "credentials[0].api_key: expected a string, got a list" in message and "sk-secret" not in message


# ---- warnings ---------------------------------------------------------------------------------------------


def test_unused_keys_are_warnings_naming_them(tmp_path):
    _, err = run(tmp_path, """
        server: {master_key: sk-router-test-key, port: 9000, logging_level: debug}
        credentials:
          - {name: a, type: openai, api_key: sk-aaaaaaaa, proxy_url: "socks5://x", scopes: [t]}
          - {name: b, type: demo, project_id: p}
        models: [{name: m, credential: a, passthrough_responses: true, reasoning_effort_map: {minimal: low}}]
        litellm_db: {enabled: false}
        otel: {enabled: false}
    """)
    for path in ("server.port", "server.logging_level", "credentials[0].proxy_url", "credentials[0].scopes",
                 "models[0].passthrough_responses", "models[0].reasoning_effort_map", "litellm_db", "otel"):
        assert f"warning: {path}: a setting of the original router that this router does not use" in err
    assert "warning: credentials[1].project_id: only vertex-ai credentials use it" in err
    assert Credential.objects.count() == 2


def test_alias_warnings(tmp_path):
    _, err = run(tmp_path, """
        credentials: [{name: a, type: demo}]
        models: [{name: m, credential: a}]
        model_alias: {m: other, ok: m}
    """)
    assert "warning: model_alias.m: 'm' is also a model name; the alias hides that model" in err
    assert "warning: model_alias.m: no configured model named 'other'" in err
    assert "model_alias.ok" not in err


# ---- export ----------------------------------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path):
    (tmp_path / "sa.json").write_text(json.dumps(service_account_info()))
    openai = CredentialFactory(name="openai_main", api_key="sk-proj-abcdef0123456789", rpm=100, tpm=50000,
                               weight=3, extra_headers={"OpenAI-Organization": "org-1"}, base_url="https://api.openai.com")
    anthropic = CredentialFactory(name="anthropic_backup", anthropic=True, is_fallback=True, enabled=False)
    vertex = CredentialFactory(name="vertex_main", vertex=True, location="global")
    CredentialFactory(name="vertex_file", vertex=True, service_account_json="",
                      credentials_file=str(tmp_path / "sa.json"))
    proxy = CredentialFactory(name="upstream", proxy=True, api_key="sk-upstream-key-1234", responses_api=True,
                              discover_models=True)
    CredentialFactory(name="demo", demo=True)
    ProviderModelFactory(name="gpt-4o", credential=openai, rpm=10)
    ProviderModelFactory(name="gpt-4o", credential=proxy)
    ProviderModelFactory(name="claude", credential=anthropic, upstream_model="claude-sonnet-4-6-20260101", tpm=5)
    ProviderModelFactory(name="gemini-2.5-flash", credential=vertex, enabled=False)
    ModelAliasFactory(alias="fast", targets=["gemini-2.5-flash", "gpt-4o"])
    ModelAliasFactory(alias="smart", targets=["claude"])
    settings_row = RouterSettings.load()
    settings_row.fail2ban = {"max_attempts": 3, "ban_duration": "5m", "error_codes": [429, 503]}
    settings_row.set_master_key("sk-router-test-key")
    settings_row.save()
    return state()


def export(*args: str) -> str:
    out = StringIO()
    call_command("export_config", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_export_then_import_reproduces_the_database(tmp_path, populated):
    text = export("--include-secrets")
    Credential.objects.all().delete()
    ModelAlias.objects.all().delete()
    RouterSettings.objects.update(fail2ban={})
    _, err = run(tmp_path, text)
    assert err == ""
    assert state() == populated
    assert export("--include-secrets") == text


def test_redacted_export_reimports_without_changes_and_keeps_secrets(tmp_path, populated):
    text = export()
    out, _ = run(tmp_path, text, "--prune")
    assert "no changes" in out
    assert state() == populated


def test_edited_redacted_export_keeps_secrets(tmp_path, populated):
    text = export().replace("rpm: 100", "rpm: 200")
    out, _ = run(tmp_path, text)
    assert "~ update credential openai_main (openai): rpm 100 -> 200" in out
    assert Credential.objects.get(name="openai_main").api_key == "sk-proj-abcdef0123456789"


def test_export_redacts_secrets(populated):
    text = export()
    data = yaml.safe_load(text)
    creds = {c["name"]: c for c in data["credentials"]}
    assert creds["openai_main"]["api_key"] == "<redacted sk-…6789>"
    assert creds["vertex_main"]["credentials_json"] == (
        "<redacted service account router-test@test-project.iam.gserviceaccount.com>")
    assert "sk-proj-abcdef0123456789" not in text and "PRIVATE KEY" not in text
    assert "cannot be exported" in text  # the master key comment
    assert creds["demo"] == {"name": "demo", "type": "demo"}  # defaults are left out
    assert {"alias": "fast", "target": ["gemini-2.5-flash", "gpt-4o"]} in data["model_aliases"]
    assert {"alias": "smart", "target": "claude"} in data["model_aliases"]


def test_export_with_secrets_to_a_private_file(tmp_path, populated):
    target = tmp_path / "out.yaml"
    call_command("export_config", "--include-secrets", "-o", str(target), stdout=StringIO(), stderr=StringIO())
    assert "sk-proj-abcdef0123456789" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# ---- service functions ---------------------------------------------------------------------------------


def test_import_config_service_returns_the_plan():
    plan = config_io.import_config("credentials: [{name: a, type: demo}]", environ={})
    assert plan.counts()["credential"] == {"create": 1, "update": 0, "delete": 0, "unchanged": 0}
    with pytest.raises(ConfigError) as exc:
        config_io.import_config("credentials: [{name: a, type: nope}]", environ={})
    assert exc.value.errors[0].startswith("credentials[0].type: unknown type 'nope'")


def test_environ_parameter_is_used_instead_of_the_process_environment():
    config_io.import_config("credentials: [{name: a, type: openai, api_key: os.environ/K}]",
                            environ={"K": "sk-injected-0123"})
    assert Credential.objects.get().api_key == "sk-injected-0123"


@pytest.mark.parametrize(("value", "expected"), [
    (None, {}),
    ({}, {}),
    ({"max_attempts": "3", "ban_duration": "1h30m"}, {"max_attempts": 3, "ban_duration": "1h30m"}),
    ({"ban_duration": 300, "error_codes": ["429"]}, {"ban_duration": 300, "error_codes": [429]}),
    ({"ban_duration": "permanent"}, {"ban_duration": "permanent"}),
    ({"error_code_rules": [{"code": 429, "ban_duration": "5m"}]},
     {"error_code_rules": [{"code": 429, "ban_duration": "5m"}]}),
    ({"credential_overrides": {"a": {"error_codes": [400]}}}, {"credential_overrides": {"a": {"error_codes": [400]}}}),
])
def test_clean_fail2ban_accepts(value, expected):
    assert clean_fail2ban(value) == (expected, [])


@pytest.mark.parametrize(("value", "error"), [
    ("x", "fail2ban: expected a mapping"),
    ({"error_codes": 429}, "fail2ban.error_codes: expected a list of HTTP status codes"),
    ({"error_code_rules": {"code": 1}}, "fail2ban.error_code_rules: expected a list of rules"),
    ({"error_code_rules": [{"code": 42}]}, "fail2ban.error_code_rules[0].code: expected a whole number between 100"),
    ({"credential_overrides": {"a": {"max_attempts": 2}}}, "fail2ban.credential_overrides.a.max_attempts: unknown key"),
    ({"credential_overrides": []}, "fail2ban.credential_overrides: expected a mapping of credential names"),
])
def test_clean_fail2ban_refuses(value, error):
    _, errors = clean_fail2ban(value)
    assert any(e.startswith(error) for e in errors), errors


@pytest.mark.parametrize(("value", "redacted"), [
    ("<redacted sk-…a1b2>", True), ("<redacted>", True), (" <redacted service account a@b> ", True),
    ("<redactedx>", False), ("sk-real", False), (None, False), (["<redacted>"], False),
])
def test_is_redacted(value, redacted):
    assert config_io.is_redacted(value) is redacted


@pytest.mark.parametrize(("path", "key", "joined"), [
    ("", "server", "server"), ("top level", "x", "x"), ("credentials[0]", "api_key", "credentials[0].api_key"),
    ("model_alias", "openai/gpt-4o", 'model_alias["openai/gpt-4o"]'),
])
def test_join(path, key, joined):
    assert config_io.join(path, key) == joined
