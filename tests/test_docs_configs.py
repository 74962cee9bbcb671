"""Every YAML config shown in README.md and docs/*.md imports as documented, in a clone-like folder.

Each ```yaml block is written as ``router.yaml`` at the root of a folder holding the data files a fresh
clone has that configs may name (``examples/``, ``pricing/data/``), its ``os.environ/VAR`` references are
set (the docs tell the reader to set them), and ``manage.py import_config router.yaml`` runs there, as the
README runs it. Missing key files stay refused, with a message saying where relative paths are resolved
from.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from credentials.models import Credential

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```ya?ml[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
_ENV = re.compile(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)")

pytestmark = pytest.mark.django_db


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 1
            blocks.append((f"{page.relative_to(ROOT)}:{line}", textwrap.dedent(match["body"])))
    return blocks


BLOCKS = yaml_blocks()


def test_the_docs_have_yaml_configs():
    assert len(BLOCKS) >= 4, BLOCKS  # README's example, fail2ban and prices sections, docs/codex.md's router.yaml


DATA_DIRS = ("examples", "pricing/data")


def clone_like(tmp_path: Path, text: str) -> Path:
    """A folder with the data files a fresh clone has for configs, and the snippet as router.yaml."""
    for folder in DATA_DIRS:
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "router.yaml").write_text(text)
    return tmp_path / "router.yaml"


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_documented_config_imports(tmp_path, monkeypatch, capsys, where, text):
    for name in set(_ENV.findall(text)):
        monkeypatch.setenv(name, f"value-of-{name.lower()}-0123456789")
    monkeypatch.chdir(tmp_path)  # the README's commands run from the clone's root
    path = clone_like(tmp_path, text)
    call_command("import_config", str(path))
    out = capsys.readouterr().out
    assert "Imported" in out, out
    for cred in Credential.objects.filter(type="vertex-ai"):
        info = cred.service_account_info()
        assert info is not None and info["type"] == "service_account"
        if cred.credentials_file:
            assert Path(cred.credentials_file).is_absolute()
            assert Path(cred.credentials_file).is_relative_to(tmp_path)


VERTEX = "credentials:\n  - {{name: v, type: vertex-ai, project_id: p, location: global, credentials_file: {path}}}\n"


def test_a_missing_key_file_is_refused_saying_where_it_was_looked_for(tmp_path):
    path = clone_like(tmp_path, VERTEX.format(path="keys/sa.json"))
    with pytest.raises(CommandError) as exc:
        call_command("import_config", str(path))
    message = str(exc.value)
    assert "credentials[0].credentials_file: No readable file at keys/sa.json" in message
    assert f"relative paths are resolved from the YAML file's folder, {tmp_path}" in message
    assert str(tmp_path / "keys" / "sa.json") in message and not Credential.objects.exists()


@pytest.mark.parametrize(("change", "expected"), [
    ({"type": "authorized_user"}, '`type` is \'authorized_user\', not "service_account"'),
    ({"client_email": None}, "`client_email` is missing"),
    ({"private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"},
     "`private_key` does not load"),
    ({"private_key": "abc"}, "`private_key` does not load: expected a PEM block"),
    ({"token_uri": "oauth2.googleapis.com/token"}, "`token_uri` is not an http(s) URL"),
])
def test_a_malformed_key_file_is_refused_naming_the_problem(tmp_path, change, expected):
    path = clone_like(tmp_path, VERTEX.format(path="mine.json"))
    info = json.loads((tmp_path / "examples" / "vertex-sa.json").read_text())
    (tmp_path / "mine.json").write_text(json.dumps({k: v for k, v in {**info, **change}.items() if v is not None}))
    with pytest.raises(CommandError) as exc:
        call_command("import_config", str(path))
    assert f"credentials[0].credentials_file: mine.json: {expected}" in str(exc.value)


def test_a_key_file_that_is_not_json_is_refused(tmp_path):
    path = clone_like(tmp_path, VERTEX.format(path="mine.json"))
    (tmp_path / "mine.json").write_text("project: p\n")
    with pytest.raises(CommandError) as exc:
        call_command("import_config", str(path))
    assert "credentials[0].credentials_file: mine.json: not valid JSON" in str(exc.value)


def test_inline_key_problems_are_named_by_yaml_path(tmp_path):
    info = json.loads((ROOT / "examples" / "vertex-sa.json").read_text())
    broken = {**info, "type": "user", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
    text = ("credentials:\n  - {name: v, type: vertex-ai, project_id: p, location: global, credentials_json: "
            f"{json.dumps(json.dumps(broken))}}}\n")
    with pytest.raises(CommandError) as exc:
        call_command("import_config", str(clone_like(tmp_path, text)))
    message = str(exc.value)
    assert "credentials[0].credentials_json: The service-account JSON: `type` is 'user'" in message
    assert "credentials[0].credentials_json: The service-account JSON: `private_key` does not load" in message
    assert info["private_key"][40:80] not in message
