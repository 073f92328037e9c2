"""The blueprints are valid automation blueprints that use this integration's actions and entities."""

from __future__ import annotations

from pathlib import Path

import pytest
from homeassistant.components.blueprint.models import Blueprint
from homeassistant.components.blueprint.schemas import BLUEPRINT_SCHEMA
from homeassistant.util.yaml import load_yaml_dict

BLUEPRINTS = Path(__file__).resolve().parents[2] / "blueprints" / "automation" / "energykart"


@pytest.mark.parametrize("name", ["sell_surplus.yaml", "close_when_satisfied.yaml"])
def test_blueprint_is_valid(name: str) -> None:
    """Each blueprint passes Home Assistant's blueprint schema."""
    blueprint = Blueprint(load_yaml_dict(BLUEPRINTS / name), expected_domain="automation", schema=BLUEPRINT_SCHEMA)
    assert blueprint.inputs
