"""The Keys and Teams admin flows in a real headless Chromium: create a key and see its secret once,
list, search, filter, block, unblock, regenerate, delete; create a team with a budget."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from credentials.models import hash_key
from keys.models import ApiKey, Team
from tests.browser import admin_login, follow

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ops(live_server, browser):
    User.objects.create_superuser("ops", "ops@example.com", "ops-password-1")
    admin_login(browser, live_server.url, "ops", "ops-password-1")
    return browser


def by():
    from selenium.webdriver.common.by import By

    return By


def run_action(browser, action: str, *labels: str) -> None:
    from selenium.webdriver.support.ui import Select

    for row in browser.find_elements(by().CSS_SELECTOR, "#result_list tbody tr"):
        if any(label in row.text for label in labels):
            row.find_element(by().CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(by().NAME, "action")).select_by_value(action)
    follow(browser, browser.find_element(by().CSS_SELECTOR, "button[name=index]"))


def wait_message(browser, text: str) -> None:
    """Wait for the admin's message after a POST (the click returns before the next page is there)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # an element read while the page changes is stale, or "does not belong to the document": read again
    WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda b: any(text in m.text for m in b.find_elements(by().CSS_SELECTOR, "ul.messagelist li")))


def wait_url(browser, part: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: part in b.current_url)


def rows(browser) -> list[str]:
    return [r.text for r in browser.find_elements(by().CSS_SELECTOR, "#result_list tbody tr")]


def test_create_a_key_see_its_secret_once_then_manage_it(live_server, ops):
    team = Team.objects.create(team_alias="platform", max_budget=Decimal(500), budget_duration="30d")
    other = ApiKey(key_alias="bob-ci", spend=Decimal("3"), max_budget=Decimal(2))
    other.set_secret("sk-bob-ci-secret-000000000000000000")
    other.save()
    browser = ops
    browser.get(live_server.url + "/admin/keys/apikey/add/")
    browser.find_element(by().NAME, "key_alias").send_keys("alice-codex")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(by().NAME, "team")).select_by_visible_text("platform")
    browser.find_element(by().NAME, "models").send_keys("gpt-4.1, claude-*")
    browser.find_element(by().NAME, "max_budget").send_keys("50")
    browser.find_element(by().NAME, "budget_duration").send_keys("30d")
    follow(browser, browser.find_element(by().NAME, "_save"))

    secret = browser.find_element(by().CSS_SELECTOR, "code.new-secret").text
    assert "not be shown again" in browser.find_element(by().ID, "content-main").text
    key = ApiKey.objects.get(key_alias="alice-codex")
    assert key.key_hash == hash_key(secret) and key.team == team and key.models == ["gpt-4.1", "claude-*"]

    browser.get(live_server.url + "/admin/keys/apikey/")
    listing = rows(browser)
    alice = next(r for r in listing if "alice-codex" in r)
    assert "platform" in alice and "$0 / $50" in alice and "active" in alice and key.key_name in alice
    assert "over budget" in next(r for r in listing if "bob-ci" in r)
    assert secret not in browser.page_source  # never shown again
    browser.get(live_server.url + f"/admin/keys/apikey/{key.pk}/change/")
    assert secret not in browser.page_source and key.key_name in browser.page_source

    # search and filters
    browser.get(live_server.url + "/admin/keys/apikey/")
    search = browser.find_element(by().ID, "searchbar")
    search.send_keys("bob")
    follow(browser, search, submit=True)
    wait_url(browser, "q=bob")
    assert [r for r in rows(browser) if r] and all("bob-ci" in r for r in rows(browser))
    browser.get(live_server.url + "/admin/keys/apikey/")
    follow(browser, browser.find_element(by().LINK_TEXT, "over budget"))
    wait_url(browser, "status=over_budget")
    assert len(rows(browser)) == 1 and "bob-ci" in rows(browser)[0]

    # block, unblock
    browser.get(live_server.url + "/admin/keys/apikey/")
    run_action(browser, "block", "alice-codex")
    wait_message(browser, "Blocked 1")
    assert "blocked" in next(r for r in rows(browser) if "alice-codex" in r)
    assert ApiKey.objects.get(pk=key.pk).blocked
    run_action(browser, "unblock", "alice-codex")
    wait_message(browser, "Unblocked 1")
    assert not ApiKey.objects.get(pk=key.pk).blocked

    # regenerate: a new secret, shown once; the old one no longer matches
    run_action(browser, "regenerate", "alice-codex")
    fresh = browser.find_element(by().CSS_SELECTOR, "code.new-secret").text
    key.refresh_from_db()
    assert fresh != secret and key.key_hash == hash_key(fresh)

    # delete
    browser.get(live_server.url + "/admin/keys/apikey/")
    run_action(browser, "delete_selected", "alice-codex")
    follow(browser, browser.find_element(by().CSS_SELECTOR, "#content form input[type=submit]"))  # "Yes, I'm sure"
    wait_message(browser, "Successfully deleted 1")
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    assert all("alice-codex" not in r for r in rows(browser))


def test_create_a_team_with_a_monthly_budget(live_server, ops):
    browser = ops
    browser.get(live_server.url + "/admin/keys/team/add/")
    browser.find_element(by().NAME, "team_alias").send_keys("research")
    browser.find_element(by().NAME, "models").send_keys("gemini-2.5-flash")
    browser.find_element(by().NAME, "max_budget").send_keys("500")
    browser.find_element(by().NAME, "budget_duration").send_keys("1mo")
    browser.find_element(by().NAME, "rpm_limit").send_keys("600")
    follow(browser, browser.find_element(by().NAME, "_save"))
    wait_message(browser, "was added successfully")
    team = Team.objects.get(team_alias="research")
    assert team.max_budget == 500 and team.budget_reset_at is not None and team.models == ["gemini-2.5-flash"]
    row = next(r for r in rows(browser) if "research" in r)
    assert "$0 / $500" in row and "gemini-2.5-flash" in row and "600" in row
    browser.get(live_server.url + "/admin/keys/team/add/")
    browser.find_element(by().NAME, "team_alias").send_keys("bad")
    browser.find_element(by().NAME, "budget_duration").send_keys("monthly")
    follow(browser, browser.find_element(by().NAME, "_save"))
    assert "not a duration" in browser.find_element(by().CSS_SELECTOR, ".errorlist").text
    assert not Team.objects.filter(team_alias="bad").exists()
