"""YAML import and export of the router's configuration (``manage.py import_config`` / ``export_config``).

Two dialects are accepted in one file: the seed documentation's and the original
Go router's (MiXaiLL76/auto_ai_router)::

    server: {master_key: os.environ/MASTER_KEY}        # ROUTER_MASTER_KEY (setting) overrides it
    credentials:
      - {name: openai_main, type: openai, api_key: sk-..., rpm: 100}
      - name: vertex_gemini
        type: vertex-ai                                # openai|anthropic|gemini|vertex-ai|proxy|demo
        project_id: my-project
        location: us-central1
        credentials_file: sa.json                      # from the YAML's folder; or credentials_json:
        models: [{name: gemini-2.5-flash}]             # original form: models inline in a credential
    models:
      - {name: claude-sonnet-4-6, credential: anthropic_main, model: claude-sonnet-4-6-20260101}
    model_aliases:                                     # seed form: a list; target a name or a list (fallbacks)
      - {alias: fast, target: gemini-2.5-flash}
    model_alias: {smart: claude-sonnet-4-6}            # original form: a map
    fail2ban: {...}                                    # stored as is in RouterSettings.fail2ban, see below

* ``os.environ/VAR`` may replace any scalar of a section the router uses; an unset
  variable is an error naming it and the YAML path. Sections the router ignores are
  not resolved, so their variables need not be set.
* ``rpm``/``tpm``: missing, empty or ``-1`` (the original's spelling) mean unlimited.
* Keys of the original router that this one does not use are warnings; any other
  unknown key (a misspelling) is an error. Top-level keys starting with ``x-`` are
  YAML-anchor holders (the original's ``x-model-templates``) and are skipped.
* Original credential types: ``air`` -> ``proxy``, ``vllm`` -> ``openai``,
  ``cometapi`` -> ``anthropic`` (``openai`` with ``openai_proto``, ``gemini`` with
  ``google_proto``), each with a warning; ``bedrock`` and ``proman`` are refused.
* A secret given as a redacted placeholder (``"<redacted sk-…a1b2>"``, what
  ``export_config`` writes) keeps the stored secret.

Import is an upsert by name (credential name, (model name, credential) pair, alias):
a key absent from an item means its default. Sections absent from the file leave the
database alone; ``prune`` deletes what the file does not name (and resets fail2ban
when the section is absent). Every object goes through the model's ``full_clean()``,
so the admin's validation applies, with errors re-labelled by YAML path. All errors
are collected and reported together; nothing is written unless there are none.

fail2ban shape (the original router's; checked loosely, consumed by the request path)::

    fail2ban:
      max_attempts: 3                    # failures before a credential+model pair is banned
      ban_duration: permanent            # or a duration: 90s, 5m, 1h30m (or seconds as a number)
      error_codes: [401, 403, 429, 500, 502, 503, 504]
      error_code_rules: [{code: 429, max_attempts: 5, ban_duration: 5m}]
      credential_overrides: {name: {error_codes: [...], error_code_rules: [...]}}
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction

from pricing import config_yaml as pricing_yaml

from . import crypto, service_account
from .models import Credential, CredentialType, ModelAlias, ProviderModel, RouterSettings, hash_key

ENV_PREFIX = "os.environ/"
TOP = "top level"
REDACTED_RE = re.compile(r"^<redacted\b[^>]*>$")
CREDENTIAL_TYPES = tuple(CredentialType.values)
SECRET_FIELDS = ("api_key", "service_account_json")
CREDENTIAL_FIELDS = (
    "type", "api_key", "base_url", "project_id", "location", "service_account_json", "credentials_file",
    "extra_headers", "rpm", "tpm", "weight", "enabled", "is_fallback", "responses_api", "discover_models",
    "prompt_caching",
)
MODEL_FIELDS = ("upstream_model", "rpm", "tpm", "enabled", "prompt_caching")
VERTEX_ONLY = ("project_id", "location", "credentials_file", "credentials_json")
HEADER_KEYS = ("extra_headers", "headers", "request_headers")

TOP_KEYS = ("server", "credentials", "models", "model_aliases", "model_alias", "fail2ban", "model_prices")
SERVER_KEYS = ("master_key", "model_prices_link")
CREDENTIAL_KEYS = (
    "name", "type", "api_key", "base_url", "project_id", "location", "credentials_file", "credentials_json",
    *HEADER_KEYS, "rpm", "tpm", "weight", "enabled", "is_fallback", "responses_api", "discover_models", "models",
    "prompt_caching",
)
MODEL_KEYS = ("name", "credential", "model", "rpm", "tpm", "enabled", "prompt_caching")
ALIAS_KEYS = ("alias", "target")

# Keys of the original router's format that this router does not use: a warning, not an error.
ORIGINAL_TOP_KEYS = (
    "monitoring", "redis", "litellm_db", "otel", "kafka", "video", "retry", "health_service", "vision_fallback",
    "client_model_ids", "public_model_alias", "accepted_model_alias", "organization_policies",
)
ORIGINAL_SERVER_KEYS = (
    "port", "max_body_size_mb", "response_body_multiplier", "response_compatibility", "request_timeout",
    "write_timeout", "idle_timeout", "idle_conn_timeout", "max_idle_conns", "max_idle_conns_per_host",
    "http2_idle_ping_timeout", "http2_ping_timeout", "logging_level", "stdout_logs_enabled", "default_models_rpm",
    "strict_all_team_models_acl", "credential_name_as_team_id", "tiktoken_enabled",
    "model_prices_sync_interval", "response_headers", "max_provider_retries", "max_fallback_attempts",
    "session_sticky_enabled", "session_sticky_ttl_minutes", "session_sticky_auto_cache_control", "shutdown_delay",
    "drain_upstream_on_abort", "proxy_health_timeout", "replace_v1_models",
)
ORIGINAL_CREDENTIAL_KEYS = (
    "proxy_url", "auth_type", "openai_proto", "google_proto", "fallback_priority", "priority", "reasoning_only",
    "scopes", "denied_scopes", "forbidden_scopes", "proxy_usage_format",
)
ORIGINAL_MODEL_KEYS = (
    "weight", "passthrough_responses", "websocket_responses", "passthrough_messages", "reasoning_effort_map",
    "supports_vision",
)
SETTING_HINTS = {
    "port": "set ROUTER_PORT instead",
    "max_body_size_mb": "set ROUTER_MAX_BODY_BYTES instead",
    "logging_level": "set LOG_LEVEL instead",
    "max_provider_retries": "set ROUTER_MAX_ATTEMPTS instead",
    "redis": "set REDIS_URL instead",
    "model_prices_sync_interval": "the link is loaded on import; re-run import_config or manage.py load_prices "
                                  "(e.g. from cron) to refresh it",
}
TYPE_SYNONYMS = {
    "air": "proxy", "aar": "proxy", "auto-ai-router": "proxy", "auto_ai_router": "proxy",
    "vllm": "openai", "hosted_vllm": "openai", "hosted-vllm": "openai",
}
COMETAPI_TYPES = ("cometapi", "comet-api", "comet_api")
UNSUPPORTED_TYPES = ("bedrock", "proman", "pro-man", "pro_man")

FAIL2BAN_KEYS = ("max_attempts", "ban_duration", "error_codes", "error_code_rules", "credential_overrides")
FAIL2BAN_RULE_KEYS = ("code", "max_attempts", "ban_duration")
FAIL2BAN_OVERRIDE_KEYS = ("error_codes", "error_code_rules")
DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


class _Missing:
    """A value that could not be read; its error is already recorded."""


MISSING: Any = _Missing()


class ConfigError(Exception):
    """The file cannot be imported; ``errors`` lists every problem, each prefixed by its YAML path."""

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.warnings = warnings or []


# ---- parsed file ---------------------------------------------------------------------------------


@dataclass
class CredentialSpec:
    path: str
    name: str
    values: dict[str, Any] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)  # secret fields given as a redacted placeholder
    keys: dict[str, str] = field(default_factory=dict)  # model field -> YAML key it came from
    broken: bool = False

    def __repr__(self) -> str:
        return f"<CredentialSpec {self.path} {self.name}>"


@dataclass
class ModelSpec:
    path: str
    name: str
    credential: str
    values: dict[str, Any] = field(default_factory=dict)
    broken: bool = False


@dataclass
class AliasSpec:
    path: str
    target_path: str
    alias: str
    targets: list[str]
    broken: bool = False


@dataclass
class ConfigSpec:
    credentials: list[CredentialSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    aliases: list[AliasSpec] = field(default_factory=list)
    master_key: str | None = field(default=None, repr=False)  # None: keep the stored one
    master_key_source: str = ""
    fail2ban: dict | None = None  # None: the section is absent
    prices_link: str | None = None  # None: absent (keep the stored one); "": clear it
    prices: list = field(default_factory=list)  # pricing.loading.Entry from model_prices
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---- small helpers -------------------------------------------------------------------------------


def join(path: str, key: Any) -> str:
    key = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key if path in ("", TOP) else f"{path}.{key}"
    return f"{'' if path == TOP else path}[{json.dumps(key, ensure_ascii=False)}]"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_redacted(value: Any) -> bool:
    return isinstance(value, str) and bool(REDACTED_RE.match(value.strip()))


def secret_hint(value: str) -> str:
    """What may be shown of a secret: ``sk-…a1b2``, or the client_email of a service-account JSON."""
    if not value:
        return ""
    if value.lstrip().startswith("{"):
        try:
            email = json.loads(value).get("client_email")
        except (ValueError, AttributeError):
            email = None
        return f"service account {email}" if email else "service-account JSON"
    return crypto.mask(value)


def headers_hint(headers: Mapping[str, str]) -> str:
    """Header names with masked values: ``OpenAI-Organization (…g-1)``."""
    return ", ".join(f"{name} ({crypto.mask(str(value))})" for name, value in (headers or {}).items())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately be overridden, so only plain scalar keys are compared.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key_node.value}' is given twice in the same mapping", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML; a syntax error becomes a ConfigError naming line and column (never the line's content,
    which may hold a secret)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML: invalid YAML: {exc.__class__.__name__}"]) from None


# ---- reading values ------------------------------------------------------------------------------


@dataclass
class _Reader:
    environ: Mapping[str, str]
    base_dir: Path | None = None  # the YAML file's folder: where relative file paths are resolved from
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def resolve(self, value: Any, path: str) -> Any:
        """Replace ``os.environ/VAR`` references, at any depth; MISSING when one is unset."""
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            var = value[len(ENV_PREFIX):].strip()
            if not var:
                self.error(path, f"'{value}' names no environment variable")
                return MISSING
            if var not in self.environ:
                self.error(path, f"environment variable {var} is not set")
                return MISSING
            return self.environ[var]
        if isinstance(value, dict):
            out = {k: self.resolve(v, join(path, k)) for k, v in value.items()}
            return MISSING if any(v is MISSING for v in out.values()) else out
        if isinstance(value, list):
            items = [self.resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return MISSING if any(v is MISSING for v in items) else items
        return value

    def check_keys(self, mapping: dict, path: str, used: Iterable[str], original: Iterable[str] = ()) -> None:
        used, original = tuple(used), tuple(original)
        for key in mapping:
            where = join(path, key)
            if key in used:
                continue
            if key in original:
                hint = SETTING_HINTS.get(key, "ignored")
                self.warn(where, f"a setting of the original router that this router does not use; {hint}")
            else:
                self.error(where, f"unknown key{did_you_mean(str(key), used + original)}; "
                                  f"allowed here: {', '.join(used)}")

    def mapping(self, value: Any, path: str, what: str) -> dict | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"expected {what}, got {_kind(value)}")
        return None

    def get(self, item: dict, key: str, path: str) -> Any:
        """The resolved value of ``item[key]``; None when absent or null."""
        if item.get(key) is None:
            return None
        return self.resolve(item[key], join(path, key))

    def text(self, item: dict, key: str, path: str, *, required: bool = False, secret: bool = False) -> Any:
        return self.as_text(self.get(item, key, path), join(path, key), required=required, secret=secret)

    def as_text(self, value: Any, where: str, *, required: bool = False, secret: bool = False) -> Any:
        if value is MISSING:
            return MISSING
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.error(where, "is required")
                return MISSING
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            shown = _kind(value) if secret else repr(value)
            self.error(where, f"expected a string, got {shown}")
            return MISSING
        return str(value).strip()

    def limit(self, item: dict, key: str, path: str) -> Any:
        """rpm/tpm: None (unlimited) or a whole number >= 1."""
        value = self.get(item, key, path)
        if value is MISSING:
            return MISSING
        if value is None or value == "" or _as_int(value) == -1:
            return None
        number = _as_int(value)
        if number is None or number < 1:
            self.error(join(path, key), f"expected a whole number >= 1, or -1 / nothing for unlimited; got {value!r}")
            return MISSING
        return number

    def count(self, item: dict, key: str, path: str, default: int) -> Any:
        value = self.get(item, key, path)
        if value is MISSING:
            return MISSING
        if value is None:
            return default
        number = _as_int(value)
        if number is None or number < 1:
            self.error(join(path, key), f"expected a whole number >= 1, got {value!r}")
            return MISSING
        return number

    def flag(self, item: dict, key: str, path: str, default: bool) -> Any:
        value = self.get(item, key, path)
        if value is MISSING:
            return MISSING
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        self.error(join(path, key), f"expected true or false, got {value!r}")
        return MISSING


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _flatten(items: list, path: str) -> list[tuple[str, Any]]:
    """A list anchor used as one item (``- *shared-models``) expands in place, as in the original router."""
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, list):
            out.extend(_flatten(item, f"{path}[{i}]"))
        else:
            out.append((f"{path}[{i}]", item))
    return out


# ---- parsing sections ----------------------------------------------------------------------------


def parse_config(
    text: str, *, environ: Mapping[str, str] | None = None, master_key_override: str | None = None,
    base_dir: Path | None = None,
) -> ConfigSpec:
    """Read the file into a ConfigSpec. Never raises for content problems: they land in ``spec.errors``
    (a YAML syntax error or a non-mapping document are the only problems, and end the parse).
    ``base_dir``: the YAML file's folder; relative ``credentials_file`` paths are resolved from it and stored
    absolute (without it, from the router's folder, as in the admin)."""
    spec = ConfigSpec()
    try:
        data = load_yaml(text)
    except ConfigError as exc:
        spec.errors.extend(exc.errors)
        return spec
    r = _Reader(os.environ if environ is None else environ, base_dir)
    if data is None:
        r.error(TOP, "the file is empty; expected a mapping with credentials, models, model_aliases...")
    elif not isinstance(data, dict):
        r.error(TOP, f"expected a mapping of sections ({', '.join(TOP_KEYS)}), got {_kind(data)}")
    else:
        _parse_document(r, data, spec, master_key_override)
    spec.errors, spec.warnings = r.errors, r.warnings
    return spec


def _parse_document(r: _Reader, data: dict, spec: ConfigSpec, master_key_override: str | None) -> None:
    r.check_keys({k: v for k, v in data.items() if not str(k).startswith("x-")}, TOP, TOP_KEYS, ORIGINAL_TOP_KEYS)
    _parse_server(r, data.get("server"), spec, master_key_override)
    for path, item in _section_items(r, data, "credentials"):
        _parse_credential(r, item, path, spec)
    for path, item in _section_items(r, data, "models"):
        model = _parse_model(r, item, path, None)
        if model:
            spec.models.append(model)
    for path, item in _section_items(r, data, "model_aliases"):
        alias = _parse_alias_item(r, item, path)
        if alias:
            spec.aliases.append(alias)
    if data.get("model_alias") is not None and r.mapping(data["model_alias"], "model_alias", "a mapping alias: target"):
        for key, target in data["model_alias"].items():
            path = join("model_alias", key)
            spec.aliases.append(_alias(r, str(key), r.resolve(target, path), path, path))
    if "fail2ban" in data:
        value = r.resolve(data["fail2ban"], "fail2ban")
        if value is not MISSING:
            spec.fail2ban, errors = clean_fail2ban(value, "fail2ban")
            r.errors.extend(errors)
    if data.get("model_prices") is not None:
        value = r.resolve(data["model_prices"], "model_prices")
        if value is not MISSING:
            spec.prices = pricing_yaml.parse_model_prices(value, "model_prices", r.error)


def _section_items(r: _Reader, data: dict, section: str) -> list[tuple[str, Any]]:
    value = data.get(section)
    if value is None:
        return []
    if not isinstance(value, list):
        r.error(section, f"expected a list, got {_kind(value)}")
        return []
    return _flatten(value, section)


def _parse_server(r: _Reader, server: Any, spec: ConfigSpec, master_key_override: str | None) -> None:
    if server is not None and r.mapping(server, "server", "a mapping"):
        r.check_keys(server, "server", SERVER_KEYS, ORIGINAL_SERVER_KEYS)
        if "model_prices_link" in server:
            link = r.text(server, "model_prices_link", "server")
            spec.prices_link = link if link is not MISSING else None
    if master_key_override:
        spec.master_key, spec.master_key_source = master_key_override, "ROUTER_MASTER_KEY"
        if isinstance(server, dict) and server.get("master_key") is not None:
            r.warn("server.master_key", "overridden by the ROUTER_MASTER_KEY setting")
        return
    if isinstance(server, dict) and server.get("master_key") is not None:
        key = r.text(server, "master_key", "server", secret=True)
        if key is not MISSING and key:
            spec.master_key, spec.master_key_source = key, "server.master_key"


def _parse_credential(r: _Reader, item: Any, path: str, spec: ConfigSpec) -> None:
    if r.mapping(item, path, "a mapping with name, type...") is None:
        return
    errors_before = len(r.errors)
    raw_type = item["type"].strip().lower() if isinstance(item.get("type"), str) else ""
    used = CREDENTIAL_KEYS + (("openai_proto", "google_proto") if raw_type in COMETAPI_TYPES else ())
    r.check_keys(item, path, used, ORIGINAL_CREDENTIAL_KEYS)
    name = r.text(item, "name", path, required=True)
    cred = CredentialSpec(path=path, name=name if isinstance(name, str) else "")
    values = cred.values
    values["type"] = _credential_type(r, item, path)
    for key in ("base_url", "project_id", "location", "credentials_file"):
        values[key] = r.text(item, key, path)
    for key, model_field in (("api_key", "api_key"), ("credentials_json", "service_account_json")):
        values[model_field] = _secret(r, item, key, path, cred, model_field)
    if values["type"] == CredentialType.VERTEX and not values["service_account_json"] and not cred.keep:
        values["credentials_file"] = _key_file(r, values["credentials_file"], join(path, "credentials_file"))
    header_key = _header_key(r, item, path)
    cred.keys = {"service_account_json": "credentials_json", "extra_headers": header_key}
    values["extra_headers"] = _headers(r, item, header_key, path)
    values["rpm"], values["tpm"] = r.limit(item, "rpm", path), r.limit(item, "tpm", path)
    values["weight"] = r.count(item, "weight", path, 1)
    values["enabled"] = r.flag(item, "enabled", path, True)
    for key in ("is_fallback", "responses_api", "discover_models", "prompt_caching"):
        values[key] = r.flag(item, key, path, False)
    if values["type"] not in (MISSING, CredentialType.VERTEX):
        for key in VERTEX_ONLY:
            if item.get(key) is not None:
                r.warn(join(path, key), "only vertex-ai credentials use it; stored but ignored")
    cred.broken = len(r.errors) > errors_before or any(v is MISSING for v in values.values())
    spec.credentials.append(cred)
    inline = item.get("models")
    if inline is not None:
        if not isinstance(inline, list):
            r.error(join(path, "models"), f"expected a list of models, got {_kind(inline)}")
            return
        for model_path, model_item in _flatten(inline, join(path, "models")):
            model = _parse_model(r, model_item, model_path, cred.name)
            if model:
                spec.models.append(model)


def _credential_type(r: _Reader, item: dict, path: str) -> Any:
    where = join(path, "type")
    raw = r.text(item, "type", path, required=True)
    if raw is MISSING:
        return MISSING
    value = raw.lower()
    if value in CREDENTIAL_TYPES:
        return value
    allowed = ", ".join(CREDENTIAL_TYPES)
    if value in TYPE_SYNONYMS:
        mapped = TYPE_SYNONYMS[value]
        r.warn(where, f"the original router's type '{raw}' is imported as '{mapped}'")
        return mapped
    if value in COMETAPI_TYPES:
        mapped = "openai" if r.flag(item, "openai_proto", path, False) is True else (
            "gemini" if r.flag(item, "google_proto", path, False) is True else "anthropic")
        r.warn(where, f"the original router's type '{raw}' is imported as '{mapped}' (its wire protocol)")
        return mapped
    if value in UNSUPPORTED_TYPES:
        r.error(where, f"type '{raw}' is not supported by this router; allowed: {allowed}")
    else:
        r.error(where, f"unknown type '{raw}'{did_you_mean(value, CREDENTIAL_TYPES)}; allowed: {allowed}")
    return MISSING


def _secret(r: _Reader, item: dict, key: str, path: str, cred: CredentialSpec, model_field: str) -> Any:
    value = r.get(item, key, path)
    if is_redacted(value):
        cred.keep.add(model_field)
        return ""
    if key == "credentials_json" and isinstance(value, dict):
        return json.dumps(value, indent=2)
    return r.as_text(value, join(path, key), secret=True)


def _key_file(r: _Reader, value: Any, where: str) -> Any:
    """A service-account file checked where the YAML says it is, and stored as an absolute path."""
    if r.base_dir is None or not isinstance(value, str) or not value:
        return value
    found = service_account.file_problems(value, r.base_dir, "the YAML file's folder")
    for problem in found:
        r.error(where, problem)
    return MISSING if found else str(service_account.resolve(value, r.base_dir))


def _header_key(r: _Reader, item: dict, path: str) -> str:
    given = [k for k in HEADER_KEYS if k in item]
    if len(given) > 1:
        r.error(join(path, given[1]), f"give the extra headers once: {' and '.join(given)} are both set")
    return given[0] if given else "extra_headers"


def _headers(r: _Reader, item: dict, key: str, path: str) -> Any:
    value = r.get(item, key, path)
    if value in (None, MISSING):
        return {} if value is None else MISSING
    where = join(path, key)
    if not isinstance(value, dict):
        r.error(where, f"expected a mapping of header names to values, got {_kind(value)}")
        return MISSING
    headers: dict[str, str] = {}
    for name, header_value in value.items():
        if isinstance(header_value, bool) or not isinstance(header_value, str | int | float):
            r.error(join(where, name), f"a header value must be a string, got {_kind(header_value)}")
            return MISSING
        headers[str(name)] = str(header_value)
    return headers


def _parse_model(r: _Reader, item: Any, path: str, credential: str | None) -> ModelSpec | None:
    if r.mapping(item, path, "a mapping with name and credential") is None:
        return None
    errors_before = len(r.errors)
    r.check_keys(item, path, MODEL_KEYS, ORIGINAL_MODEL_KEYS)
    name = r.text(item, "name", path, required=True)
    if credential is None:
        credential = r.text(item, "credential", path, required=True)
    elif item.get("credential") not in (None, credential):
        r.error(join(path, "credential"), f"this model is listed under credential '{credential}'; "
                                          "drop the key or move the model to the top-level models list")
    values = {
        "upstream_model": r.text(item, "model", path),
        "rpm": r.limit(item, "rpm", path),
        "tpm": r.limit(item, "tpm", path),
        "enabled": r.flag(item, "enabled", path, True),
        "prompt_caching": r.flag(item, "prompt_caching", path, False),
    }
    broken = len(r.errors) > errors_before or any(v is MISSING for v in values.values())
    return ModelSpec(path, name if isinstance(name, str) else "", credential if isinstance(credential, str) else "",
                     values, broken or name is MISSING or credential is MISSING)


def _parse_alias_item(r: _Reader, item: Any, path: str) -> AliasSpec | None:
    if r.mapping(item, path, "a mapping with alias and target") is None:
        return None
    r.check_keys(item, path, ALIAS_KEYS)
    alias = r.text(item, "alias", path, required=True)
    target_path = join(path, "target")
    if item.get("target") is None:
        r.error(target_path, "is required (a model name, or a list of names tried in order)")
        return AliasSpec(path, target_path, alias if isinstance(alias, str) else "", [], broken=True)
    return _alias(r, alias, r.get(item, "target", path), path, target_path)


def _alias(r: _Reader, alias: Any, target: Any, path: str, target_path: str) -> AliasSpec:
    targets: list[str] = []
    broken = alias is MISSING or target is MISSING
    if not broken:
        raw = [target] if isinstance(target, str) else target
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(t, str) and t.strip() for t in raw)):
            r.error(target_path, f"expected a model name or a non-empty list of names, got {_kind(target)}")
            broken = True
        else:
            targets = [t.strip() for t in raw]
    return AliasSpec(path, target_path, alias if isinstance(alias, str) else "", targets, broken)


# ---- fail2ban --------------------------------------------------------------------------------------


def clean_fail2ban(value: Any, path: str = "fail2ban") -> tuple[dict, list[str]]:
    """Check the fail2ban section loosely (shape and number ranges) and normalise numbers given as strings.
    Returns (value, errors); shared by the importer and the admin form."""
    errors: list[str] = []
    if value is None:
        return {}, errors
    if not isinstance(value, dict):
        return {}, [f"{path}: expected a mapping ({', '.join(FAIL2BAN_KEYS)}), got {_kind(value)}"]
    out = _fail2ban_block(value, path, FAIL2BAN_KEYS, errors)
    overrides = value.get("credential_overrides")
    if overrides is not None:
        where = join(path, "credential_overrides")
        if not isinstance(overrides, dict):
            errors.append(f"{where}: expected a mapping of credential names, got {_kind(overrides)}")
        else:
            out["credential_overrides"] = {}
            for name, block in overrides.items():
                if not isinstance(block, dict):
                    errors.append(f"{join(where, name)}: expected a mapping ({', '.join(FAIL2BAN_OVERRIDE_KEYS)})")
                    continue
                out["credential_overrides"][str(name)] = _fail2ban_block(
                    block, join(where, name), FAIL2BAN_OVERRIDE_KEYS, errors)
    return out, errors


def _fail2ban_block(block: dict, path: str, allowed: tuple[str, ...], errors: list[str]) -> dict:
    out: dict = {}
    for key, value in block.items():
        where = join(path, key)
        if key not in allowed:
            errors.append(f"{where}: unknown key{did_you_mean(str(key), allowed)}; allowed here: {', '.join(allowed)}")
        elif key == "max_attempts":
            out[key] = _checked_int(value, where, 1, None, errors)
        elif key == "ban_duration":
            out[key] = _checked_duration(value, where, errors)
        elif key == "error_codes":
            out[key] = _checked_codes(value, where, errors)
        elif key == "error_code_rules":
            out[key] = _checked_rules(value, where, errors)
        else:
            out[key] = value
    return out


def _checked_int(value: Any, where: str, low: int, high: int | None, errors: list[str]) -> Any:
    number = _as_int(value)
    if number is None or number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        errors.append(f"{where}: expected a whole number {bound}, got {value!r}")
        return value
    return number


def _checked_duration(value: Any, where: str, errors: list[str]) -> Any:
    if _as_int(value) is not None and _as_int(value) >= 0:
        return _as_int(value)
    if isinstance(value, str) and (value.strip() == "permanent" or DURATION_RE.match(value.strip())):
        return value.strip()
    errors.append(f"{where}: expected 'permanent', a duration such as 90s, 5m or 1h30m, or seconds; got {value!r}")
    return value


def _checked_codes(value: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(value, list):
        errors.append(f"{where}: expected a list of HTTP status codes, got {_kind(value)}")
        return value
    return [_checked_int(code, f"{where}[{i}]", 100, 599, errors) for i, code in enumerate(value)]


def _checked_rules(value: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(value, list):
        errors.append(f"{where}: expected a list of rules ({', '.join(FAIL2BAN_RULE_KEYS)}), got {_kind(value)}")
        return value
    rules = []
    for i, rule in enumerate(value):
        path = f"{where}[{i}]"
        if not isinstance(rule, dict) or "code" not in rule:
            errors.append(f"{path}: expected a mapping with code and max_attempts and/or ban_duration")
            rules.append(rule)
            continue
        rule = _fail2ban_block(rule, path, FAIL2BAN_RULE_KEYS, errors)
        rule["code"] = _checked_int(rule["code"], join(path, "code"), 100, 599, errors)
        rules.append(rule)
    return rules


# ---- plan ------------------------------------------------------------------------------------------


@dataclass
class Change:
    action: str  # create | update | delete
    kind: str  # credential | model | alias | settings
    label: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        symbol = {"create": "+", "update": "~", "delete": "-"}[self.action]
        details = f": {'; '.join(self.details)}" if self.details else ""
        return f"{symbol} {self.action} {self.kind} {self.label}{details}"


KINDS = ("credential", "model", "alias")


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged: Counter = field(default_factory=Counter)
    kept: list[str] = field(default_factory=list)  # in the database, not in the file, not pruned
    saves: list[models.Model] = field(default_factory=list, repr=False)
    deletes: list[models.Model] = field(default_factory=list, repr=False)
    settings: Callable[[RouterSettings], list[str]] | None = field(default=None, repr=False)
    writes: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, dict[str, int]]:
        counts = {kind: {"create": 0, "update": 0, "delete": 0, "unchanged": self.unchanged[kind]} for kind in KINDS}
        for change in self.changes:
            if change.kind in counts:
                counts[change.kind][change.action] += 1
        return counts

    def summary(self) -> str:
        parts = []
        for kind, n in self.counts().items():
            plural = "aliases" if kind == "alias" else f"{kind}s"
            parts.append(f"{plural}: {n['create']} created, {n['update']} updated, {n['delete']} deleted, "
                         f"{n['unchanged']} unchanged")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        out = [str(c) for c in self.changes] or ["no changes"]
        if self.kept:
            out.append(f"kept (in the database, not in the file; --prune deletes them): {', '.join(self.kept)}")
        return out


def build_plan(spec: ConfigSpec, *, prune: bool = False) -> Plan:
    """Compare the file with the database and validate every object (``full_clean``) without writing.
    Raises ConfigError with the parse errors and the validation errors together."""
    errors = list(spec.errors)
    plan = Plan(warnings=list(spec.warnings))
    credentials = _plan_credentials(spec, plan, errors, prune)
    _plan_models(spec, plan, errors, prune, credentials)
    _plan_aliases(spec, plan, errors, prune)
    _plan_settings(spec, plan, prune)
    _plan_prices(spec, plan, errors)
    if errors:
        raise ConfigError(errors, plan.warnings)
    return plan


def _duplicates(errors: list[str], items: Iterable[tuple[Any, str, str]]) -> set:
    """Report every item whose key was already used; return the keys seen."""
    first: dict[Any, str] = {}
    for key, path, what in items:
        if key in first:
            errors.append(f"{path}: duplicate {what} (first at {first[key]})")
        else:
            first[key] = path
    return set(first)


def _plan_credentials(spec: ConfigSpec, plan: Plan, errors: list[str], prune: bool) -> dict[str, Credential]:
    existing = {c.name: c for c in Credential.objects.all()}
    _duplicates(errors, ((c.name, join(c.path, "name"), f"credential name '{c.name}'")
                         for c in spec.credentials if c.name))
    planned: dict[str, Credential] = {}
    for cred in spec.credentials:
        if cred.broken or cred.name in planned:
            continue
        obj = existing.get(cred.name) or Credential(name=cred.name)
        before = {f: getattr(obj, f) for f in CREDENTIAL_FIELDS} if obj.pk else None
        for name, value in cred.values.items():
            setattr(obj, name, value)
        _keep_stored_headers(obj, before, cred, errors)
        for secret in cred.keep:
            if before and before[secret]:
                setattr(obj, secret, before[secret])
            else:
                key = cred.keys.get(secret, secret)
                errors.append(f"{join(cred.path, key)}: is a redacted placeholder, but credential '{cred.name}' "
                              "has no stored secret to keep; give the real value")
        if _validated(obj, cred.path, cred.keys, errors):
            _record(plan, "credential", f"{obj.name} ({obj.type})", obj, before, CREDENTIAL_FIELDS)
        planned[cred.name] = obj
    file_names = {c.name for c in spec.credentials}
    for name, obj in existing.items():
        if name in file_names:
            continue
        if prune:
            count = obj.models.count()
            plan.changes.append(Change("delete", "credential", name, [f"with its {count} model(s)"] if count else []))
            plan.deletes.append(obj)
        else:
            plan.kept.append(f"credential {name}")
            planned[name] = obj
    return planned


def _keep_stored_headers(obj: Credential, before: dict | None, cred: CredentialSpec, errors: list[str]) -> None:
    """A header value given as ``<redacted …>`` (what ``export_config`` writes) keeps the stored value."""
    headers = obj.extra_headers
    if not isinstance(headers, dict) or not any(is_redacted(v) for v in headers.values()):
        return
    stored = (before or {}).get("extra_headers") or {}
    for name, value in list(headers.items()):
        if not is_redacted(value):
            continue
        if name in stored:
            headers[name] = stored[name]
        else:
            errors.append(f"{join(join(cred.path, cred.keys.get('extra_headers', 'extra_headers')), name)}: is a "
                          f"redacted placeholder, but credential '{cred.name}' has no stored value for this header; "
                          "give the real value")


def _plan_models(spec: ConfigSpec, plan: Plan, errors: list[str], prune: bool,
                 credentials: dict[str, Credential]) -> None:
    existing = {(m.name, m.credential.name): m for m in ProviderModel.objects.select_related("credential")}
    _duplicates(errors, (((m.name, m.credential), m.path, f"model '{m.name}' on credential '{m.credential}'")
                         for m in spec.models if m.name and m.credential))
    broken_credentials = {c.name for c in spec.credentials if c.broken}
    seen: set[tuple[str, str]] = set()
    for model in spec.models:
        key = (model.name, model.credential)
        if model.broken or key in seen:
            continue
        seen.add(key)
        cred = credentials.get(model.credential)
        if cred is None:
            if model.credential not in broken_credentials:
                known = sorted(set(credentials) | {c.name for c in spec.credentials if c.name})
                errors.append(f"{join(model.path, 'credential')}: no credential named '{model.credential}'"
                              f"{did_you_mean(model.credential, known)}; known: {', '.join(known) or 'none'}")
            continue
        obj = existing.get(key) or ProviderModel(name=model.name, credential=cred)
        before = {f: getattr(obj, f) for f in MODEL_FIELDS} if obj.pk else None
        for name, value in model.values.items():
            setattr(obj, name, value)
        exclude = [] if cred.pk else ["credential"]  # a credential created by this import has no row yet
        if _validated(obj, model.path, {"upstream_model": "model"}, errors, exclude):
            _record(plan, "model", f"{model.name} @ {model.credential}", obj, before, MODEL_FIELDS)
    deleted_credentials = {c.pk for c in plan.deletes}
    for key, obj in existing.items():
        if key in seen or obj.credential_id in deleted_credentials:
            continue
        if prune:
            plan.changes.append(Change("delete", "model", f"{key[0]} @ {key[1]}"))
            plan.deletes.append(obj)
        else:
            plan.kept.append(f"model {key[0]} @ {key[1]}")


def _plan_aliases(spec: ConfigSpec, plan: Plan, errors: list[str], prune: bool) -> None:
    existing = {a.alias: a for a in ModelAlias.objects.all()}
    _duplicates(errors, ((a.alias, a.path, f"alias '{a.alias}'") for a in spec.aliases if a.alias))
    served = _served_names(spec, prune)
    discovering = any(c.values.get("discover_models") is True for c in spec.credentials)
    names = {a.alias for a in spec.aliases}
    done: set[str] = set()
    for alias in spec.aliases:
        if alias.broken or alias.alias in done:
            continue
        done.add(alias.alias)
        if alias.alias in served:
            plan.warnings.append(f"{alias.path}: '{alias.alias}' is also a model name; the alias hides that model")
        unknown = [t for t in alias.targets if t not in served and t not in names and t != alias.alias]
        if unknown and not discovering:
            plan.warnings.append(f"{alias.target_path}: no configured model named {', '.join(map(repr, unknown))}")
        obj = existing.get(alias.alias) or ModelAlias(alias=alias.alias)
        before = {"targets": obj.targets} if obj.pk else None
        obj.targets = alias.targets
        # Map form (model_alias: {a: b}): the alias key's own path is where both the name and target live.
        keys = {"targets": "target"} if alias.target_path != alias.path else {"targets": "", "alias": ""}
        if _validated(obj, alias.path, keys, errors):
            _record(plan, "alias", alias.alias, obj, before, ("targets",))
    for name, obj in existing.items():
        if name in done:
            continue
        if prune:
            plan.changes.append(Change("delete", "alias", name))
            plan.deletes.append(obj)
        else:
            plan.kept.append(f"alias {name}")


def _served_names(spec: ConfigSpec, prune: bool) -> set[str]:
    names = {m.name for m in spec.models}
    if not prune:
        names |= set(ProviderModel.objects.values_list("name", flat=True))
    return names


def _plan_settings(spec: ConfigSpec, plan: Plan, prune: bool) -> None:
    current = RouterSettings.objects.filter(pk=1).first() or RouterSettings(pk=1)
    details: list[str] = []
    new_hash = hash_key(spec.master_key) if spec.master_key else None
    if new_hash and new_hash != current.master_key_hash:
        details.append(f"master key {'replaced' if current.master_key_hash else 'set'} (from {spec.master_key_source})")
    fail2ban = spec.fail2ban if spec.fail2ban is not None else ({} if prune else None)
    if fail2ban is not None and fail2ban != (current.fail2ban or {}):
        details.append("fail2ban " + ("cleared" if not fail2ban else "set" if not current.fail2ban else "replaced"))
    if not details:
        return
    plan.changes.append(Change("update", "settings", "router", details))

    def apply(settings_row: RouterSettings) -> list[str]:
        fields = []
        if new_hash:
            settings_row.master_key_hash = new_hash
            fields.append("master_key_hash")
        if fail2ban is not None:
            settings_row.fail2ban = fail2ban
            fields.append("fail2ban")
        return fields

    plan.settings = apply


def _plan_prices(spec: ConfigSpec, plan: Plan, errors: list[str]) -> None:
    stored = RouterSettings.objects.filter(pk=1).values_list("model_prices_link", flat=True).first() or ""
    link = stored if spec.prices_link is None else spec.prices_link
    details, write = pricing_yaml.plan(spec.prices, link, errors)
    if spec.prices_link is not None and spec.prices_link != stored:
        details.insert(0, f"model_prices_link {_show(stored)} -> {_show(spec.prices_link)}")
    if details:
        plan.changes.append(Change("update", "price", "table", details))

    def apply() -> None:
        if spec.prices_link is not None and spec.prices_link != stored:
            RouterSettings.load()
            RouterSettings.objects.filter(pk=1).update(model_prices_link=spec.prices_link)
        if write:
            write()

    plan.writes.append(apply)


def _validated(obj: models.Model, path: str, keys: Mapping[str, str], errors: list[str],
               exclude: list[str] | None = None) -> bool:
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as exc:
        errors.extend(relabel(exc, path, keys))
        return False
    return True


def relabel(exc: ValidationError, path: str, keys: Mapping[str, str]) -> list[str]:
    """Model validation errors as ``<yaml path>: message`` (``keys`` maps a model field to its YAML key)."""
    if not hasattr(exc, "error_dict"):
        return [f"{path}: {m}" for m in exc.messages]
    out = []
    for name, messages in exc.message_dict.items():
        key = keys.get(name, name)
        where = join(path, key) if name != NON_FIELD_ERRORS and key else path
        out.extend(f"{where}: {m}" for m in messages)
    return out


def _record(plan: Plan, kind: str, label: str, obj: models.Model, before: dict | None,
            fields: Iterable[str]) -> None:
    if before is None:
        details = [_describe(f, getattr(obj, f)) for f in fields if _worth_showing(obj, f)]
        plan.changes.append(Change("create", kind, label, details))
        plan.saves.append(obj)
        return
    details = [_describe_change(f, before[f], getattr(obj, f)) for f in fields if before[f] != getattr(obj, f)]
    if details:
        plan.changes.append(Change("update", kind, label, details))
        plan.saves.append(obj)
    else:
        plan.unchanged[kind] += 1


def _worth_showing(obj: models.Model, name: str) -> bool:
    default = obj._meta.get_field(name).get_default()
    return name != "type" and getattr(obj, name) != default


def _describe(name: str, value: Any) -> str:
    if name in SECRET_FIELDS:
        return f"{name} {secret_hint(value)}"
    return f"{name} {_show(value)}"


def _describe_change(name: str, old: Any, new: Any) -> str:
    if name in SECRET_FIELDS:
        return f"{name} removed" if not new else f"{name} {'changed' if old else 'set'} ({secret_hint(new)})"
    return f"{name} {_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, dict):
        return "{" + ", ".join(value) + "}"  # header names only: values may carry tokens
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else "''"


def apply_plan(plan: Plan) -> None:
    """Write a plan from build_plan (call both inside one transaction)."""
    for obj in plan.saves:
        obj.save()
    for obj in plan.deletes:
        obj.delete()
    if plan.settings:
        row = RouterSettings.load()
        row.save(update_fields=plan.settings(row))
    for write in plan.writes:
        write()


def import_config(
    text: str, *, dry_run: bool = False, prune: bool = False, environ: Mapping[str, str] | None = None,
    master_key_override: str | None = None, base_dir: Path | None = None,
) -> Plan:
    """Parse, validate and (unless ``dry_run``) apply a YAML config in one transaction: all or nothing."""
    spec = parse_config(text, environ=environ, master_key_override=master_key_override, base_dir=base_dir)
    with transaction.atomic():
        plan = build_plan(spec, prune=prune)
        if not dry_run:
            apply_plan(plan)
    return plan


# ---- export ---------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _redacted(value: str) -> str:
    return f"<redacted {secret_hint(value)}>"


def export_data(*, include_secrets: bool = False) -> dict:
    """The database as the import format's data (secrets redacted unless ``include_secrets``)."""
    data: dict[str, Any] = {"credentials": [_export_credential(c, include_secrets) for c in Credential.objects.all()]}
    data["models"] = [_export_model(m) for m in ProviderModel.objects.select_related("credential")]
    data["model_aliases"] = [
        {"alias": a.alias, "target": a.targets[0] if len(a.targets) == 1 else list(a.targets)}
        for a in ModelAlias.objects.all()
    ]
    settings_row = RouterSettings.objects.filter(pk=1).first()
    if settings_row and settings_row.fail2ban:
        data["fail2ban"] = settings_row.fail2ban
    if settings_row and settings_row.model_prices_link:
        data = {"server": {"model_prices_link": settings_row.model_prices_link}, **data}
    if prices := pricing_yaml.export():
        data["model_prices"] = prices
    return data


def _export_credential(cred: Credential, include_secrets: bool) -> dict:
    item: dict[str, Any] = {"name": cred.name, "type": cred.type}
    for name in CREDENTIAL_FIELDS[1:]:
        value = getattr(cred, name)
        if value == cred._meta.get_field(name).get_default():
            continue
        key = "credentials_json" if name == "service_account_json" else name
        if include_secrets:
            item[key] = value
        elif name == "extra_headers":
            item[key] = {header: _redacted(str(v)) for header, v in value.items()}
        else:
            item[key] = _redacted(value) if name in SECRET_FIELDS else value
    return item


def _export_model(model: ProviderModel) -> dict:
    item: dict[str, Any] = {"name": model.name, "credential": model.credential.name}
    if model.upstream_model:
        item["model"] = model.upstream_model
    for name in ("rpm", "tpm"):
        if getattr(model, name) is not None:
            item[name] = getattr(model, name)
    if not model.enabled:
        item["enabled"] = False
    if model.prompt_caching:
        item["prompt_caching"] = True
    return item


def export_config(*, include_secrets: bool = False) -> str:
    header = [
        "# Auto AI Router configuration, written by `manage.py export_config`.",
        "# Import it with `manage.py import_config FILE` (add --prune to delete what it does not name).",
        "# server.master_key is stored only as a hash and cannot be exported: add it here or set ROUTER_MASTER_KEY.",
    ]
    if not include_secrets:
        header.append("# Secrets are redacted: a '<redacted …>' value keeps the stored secret when re-imported.")
    body = yaml.dump(export_data(include_secrets=include_secrets), Dumper=_Dumper, sort_keys=False,
                     allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body
