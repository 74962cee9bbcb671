"""The Prices admin page: with the test client, and the edit-with-history flow in headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from pricing import table
from pricing.models import Price
from tests.browser import admin_login, follow

TODAY = datetime.now(UTC).date()


@pytest.fixture
def admin_client_with_prices(admin_client):
    Price.objects.all().delete()
    Price.objects.create(model="gpt-4.1", effective_from=TODAY - timedelta(days=10), input_cost_per_token=D("2e-6"),
                         output_cost_per_token=D("8e-6"), cache_read_input_token_cost=D("5e-7"))
    Price.objects.create(model="gpt-4.1", effective_from=TODAY - timedelta(days=40), input_cost_per_token=D("3e-6"))
    Price.objects.create(model="imagen-4.0-generate-001", output_cost_per_image=D("0.04"))
    return admin_client


@pytest.mark.django_db
def test_prices_list_shows_per_million_prices_and_which_row_is_in_force(admin_client_with_prices):
    res = admin_client_with_prices.get(reverse("admin:pricing_price_changelist") + "?q=gpt-4.1")
    html = res.content.decode()
    assert res.status_code == 200
    assert "$2</td>" in html and "$8</td>" in html and "$0.5</td>" in html and "$3</td>" in html
    assert html.count('alt="True"') == 1 and html.count('alt="False"') == 1
    assert "imagen" not in html
    res = admin_client_with_prices.get(reverse("admin:pricing_price_changelist"))
    assert "$0.04" in res.content.decode()


@pytest.mark.django_db
def test_a_price_needs_a_value_and_a_unique_day(admin_client_with_prices):
    from credentials.models import RouterSettings

    version = RouterSettings.load().config_version
    url = reverse("admin:pricing_price_add")
    form = {"model": "gpt-4.1", "provider": "", "effective_from": (TODAY - timedelta(days=10)).isoformat()}
    html = admin_client_with_prices.post(url, form).content.decode()
    assert "Give at least one price" in html
    html = admin_client_with_prices.post(url, {**form, "input_cost_per_token": "0.000001"}).content.decode()
    assert "already exists" in html
    res = admin_client_with_prices.post(url, {**form, "effective_from": TODAY.isoformat(),
                                              "input_cost_per_token": "0.000001"})
    assert res.status_code == 302
    new = Price.objects.get(model="gpt-4.1", effective_from=TODAY)
    assert new.source == "admin" and new.input_cost_per_token == D("1e-6")
    assert RouterSettings.load().config_version > version  # every router process reloads its prices
    assert table.reload().lookup("gpt-4.1").input_cost_per_token == D("1e-6")


@pytest.mark.django_db(transaction=True)
def test_ops_change_a_price_from_today_and_history_keeps_the_old_one(live_server, browser):
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("ops", "ops@example.com", "ops-password-1")
    Price.objects.all().delete()
    old = Price.objects.create(model="gemini-2.5-flash", effective_from=TODAY - timedelta(days=30),
                               input_cost_per_token=D("3e-7"), output_cost_per_token=D("2.5e-6"))
    admin_login(browser, live_server.url, "ops", "ops-password-1")
    browser.get(live_server.url + "/admin/pricing/price/")
    assert "gemini-2.5-flash" in browser.find_element(By.ID, "result_list").text
    follow(browser, browser.find_element(By.LINK_TEXT, "gemini-2.5-flash"))
    date_field = browser.find_element(By.NAME, "effective_from")
    date_field.clear()
    date_field.send_keys(TODAY.isoformat())
    price_field = browser.find_element(By.NAME, "input_cost_per_token")
    price_field.clear()
    price_field.send_keys("0.0000004")
    follow(browser, browser.find_element(By.NAME, "_saveasnew"))
    assert "was added successfully" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    rows = list(Price.objects.filter(model="gemini-2.5-flash").order_by("effective_from")
                .values_list("effective_from", "input_cost_per_token", "source"))
    assert rows == [(old.effective_from, D("3e-7"), "admin"), (TODAY, D("4e-7"), "admin")]
    browser.get(live_server.url + "/admin/pricing/price/?q=gemini")
    cells = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")]
    assert len(cells) == 2 and "$0.4" in cells[0] and "$0.3" in cells[1]
    assert table.current().lookup("gemini-2.5-flash").input_cost_per_token == D("4e-7")
