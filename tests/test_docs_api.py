"""docs/api.md documents exactly the routes of the OpenAPI schema, each with a curl example."""

from __future__ import annotations

import re
from pathlib import Path

from edge_api.app import create_app
from edge_api.settings import ApiSettings

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def _schema_routes() -> set[str]:
    schema = create_app(ApiSettings()).openapi()
    return {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}


def _documented_routes() -> set[str]:
    routes = set()
    for heading in re.findall(r"^### (.+)$", DOC, flags=re.MULTILINE):
        routes.update(re.findall(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`]*)`", heading))
    return {f"{method} {path}" for method, path in routes}


def test_every_route_of_the_schema_is_documented_and_nothing_else() -> None:
    assert _documented_routes() == _schema_routes()


def test_every_documented_route_has_a_curl_example() -> None:
    sections = re.split(r"^### ", DOC, flags=re.MULTILINE)[1:]
    for section in sections:
        assert "curl " in section, f"no curl example under {section.splitlines()[0]}"
