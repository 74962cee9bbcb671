"""The 503 summary when every deployment of a model was passed over: wording that fits the counts."""

from __future__ import annotations

import pytest

from proxy.pipeline import unavailable_summary
from proxy.state.values import Skip


def skips(cooling: int, limited: int) -> list[Skip]:
    return ([Skip(None, "cooldown", 30.0, False, 500) for _ in range(cooling)]  # type: ignore[arg-type]
            + [Skip(None, "rpm", 5.0, False) for _ in range(limited)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("cooling", "limited", "expected"), [
    (1, 0, "its deployment is cooling down after upstream errors; an admin can lift cooldowns under "
           "Proxy > Routing state"),
    (3, 0, "all 3 deployments are cooling down after upstream errors; an admin can lift cooldowns"),
    (1, 1, "1 of 2 deployments is cooling down after upstream errors and 1 is at its limits; an admin"),
    (2, 3, "2 of 5 deployments are cooling down after upstream errors and 3 are at their limits; an admin"),
    (0, 1, "its deployment is at its limits"),
    (0, 2, "all 2 deployments are at their limits"),
])
def test_summary_fits_the_counts(cooling, limited, expected):
    text = unavailable_summary(skips(cooling, limited))
    assert text.startswith(expected), text
    assert "the others" not in text
    assert ("admin can lift" in text) == bool(cooling)
