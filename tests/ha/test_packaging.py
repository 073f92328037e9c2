"""What HACS and hassfest check before anyone installs the integration, checked here too: the
licence, hacs.json, the brand images, the quality scale's rules and the workflows that run both
validators on GitHub (they are container actions and cannot run here)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from homeassistant.util.yaml import parse_yaml
from PIL import Image

from custom_components.energykart.const import DOMAIN


def load(path: Path) -> Any:
    """A YAML file as Home Assistant reads it."""
    return parse_yaml(path.read_text(encoding="utf-8"))


ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "custom_components" / DOMAIN

# Every rule of Home Assistant's integration quality scale (hassfest requires each to be listed).
RULES = {
    "bronze": {
        "action-setup",
        "appropriate-polling",
        "brands",
        "common-modules",
        "config-flow",
        "config-flow-test-coverage",
        "dependency-transparency",
        "docs-actions",
        "docs-conditions",
        "docs-high-level-description",
        "docs-installation-instructions",
        "docs-removal-instructions",
        "docs-triggers",
        "entity-event-setup",
        "entity-unique-id",
        "has-entity-name",
        "runtime-data",
        "test-before-configure",
        "test-before-setup",
        "unique-config-entry",
    },
    "silver": {
        "action-exceptions",
        "config-entry-unloading",
        "docs-configuration-parameters",
        "docs-installation-parameters",
        "entity-unavailable",
        "integration-owner",
        "log-when-unavailable",
        "parallel-updates",
        "reauthentication-flow",
        "test-coverage",
    },
    "gold": {
        "devices",
        "diagnostics",
        "discovery",
        "discovery-update-info",
        "docs-data-update",
        "docs-examples",
        "docs-known-limitations",
        "docs-supported-devices",
        "docs-supported-functions",
        "docs-troubleshooting",
        "docs-use-cases",
        "dynamic-devices",
        "entity-category",
        "entity-device-class",
        "entity-disabled-by-default",
        "entity-translations",
        "exception-translations",
        "icon-translations",
        "reconfiguration-flow",
        "repair-issues",
        "stale-devices",
    },
    "platinum": {"async-dependency", "inject-websession", "strict-typing"},
}


def test_quality_scale_lists_every_rule_with_a_reason_for_each_exemption() -> None:
    manifest = json.loads((COMPONENT / "manifest.json").read_text(encoding="utf-8"))
    rules = load(COMPONENT / "quality_scale.yaml")["rules"]
    assert set(rules) == set().union(*RULES.values())
    tiers = list(RULES)
    claimed = tiers[: tiers.index(manifest["quality_scale"]) + 1]
    for tier in claimed:
        for rule in RULES[tier]:
            status = rules[rule] if isinstance(rules[rule], str) else rules[rule]["status"]
            assert status in {"done", "exempt"}, f"{rule} is {status}, below the claimed {manifest['quality_scale']}"
            if status == "exempt":
                assert len(rules[rule].get("comment", "")) > 40, f"{rule} is exempt without a reason"


def test_licence_and_hacs_manifest() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert licence.startswith("MIT License")
    assert project["license"] == "MIT"
    hacs = json.loads((ROOT / "hacs.json").read_text(encoding="utf-8"))
    assert set(hacs) <= {"name", "content_in_root", "render_readme", "homeassistant", "zip_release", "filename"}
    assert hacs["content_in_root"] is False
    assert (ROOT / "custom_components" / DOMAIN / "manifest.json").is_file()
    minimum = hacs["homeassistant"].rsplit(".", 1)[0]  # the README states the same minimum
    assert f"Home Assistant ({minimum} or newer)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_brand_images() -> None:
    """Square icons of 256 and 512 px, landscape logos 128 and 256 px high (the @2x twice the size)."""
    sizes = {}
    for name in ("icon.png", "icon@2x.png", "logo.png", "logo@2x.png"):
        with Image.open(COMPONENT / "brand" / name) as image:
            assert image.format == "PNG"
            assert image.mode == "RGBA"
            sizes[name] = image.size
    assert sizes["icon.png"] == (256, 256)
    assert sizes["icon@2x.png"] == (512, 512)
    width, height = sizes["logo.png"]
    assert height == 128
    assert width > height
    assert sizes["logo@2x.png"][1] == 256
    assert abs(sizes["logo@2x.png"][0] - 2 * width) <= 2


def test_validation_workflows() -> None:
    """hassfest and the HACS action run on every push and pull request."""
    workflow = load(ROOT / ".github" / "workflows" / "validate.yaml")
    uses = {step.get("uses", "").split("@")[0]: step for job in workflow["jobs"].values() for step in job["steps"]}
    assert "home-assistant/actions/hassfest" in uses
    assert uses["hacs/action"]["with"]["category"] == "integration"
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert {"push", "pull_request"} <= set(triggers)
