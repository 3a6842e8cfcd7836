"""Exact discovery-route matching on the raw path; hostile paths are never discovery."""

from __future__ import annotations

import pytest

from sidecar.proxy.routes import DiscoveryRoute, RouteKind, match_discovery


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (b"/v1/models", RouteKind.MODELS),
        (b"/models", RouteKind.MODELS),
        (b"/model/info", RouteKind.MODEL_INFO),
        (b"/v1/model/info", RouteKind.MODEL_INFO),
        (b"/v2/model/info", RouteKind.MODEL_INFO_V2),
        (b"/model_group/info", RouteKind.MODEL_GROUP_INFO),
        (b"/cursor/v1/models", RouteKind.CURSOR_MODELS),
        (b"/claude_code_gateway/v1/models", RouteKind.MODELS),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_discovery_list_routes(path: bytes, kind: RouteKind, method: str) -> None:
    assert match_discovery(method, path) == DiscoveryRoute(kind)


@pytest.mark.parametrize(
    ("path", "model_id"),
    [
        (b"/v1/models/gpt-4o", "gpt-4o"),
        (b"/models/free-model", "free-model"),
        (b"/v1/models/openai/gpt-4o", "openai/gpt-4o"),
        (b"/v1/models/bedrock/anthropic.claude-3:0", "bedrock/anthropic.claude-3:0"),
        (b"/v1/models/my%20model", "my model"),
    ],
)
def test_single_model_routes_take_everything_after_the_prefix_as_the_id(path: bytes, model_id: str) -> None:
    assert match_discovery("GET", path) == DiscoveryRoute(RouteKind.MODEL, model_id)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_pass_through(method: str) -> None:
    assert match_discovery(method, b"/v1/models") is None


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/models/",
        b"/v1/models/../key/info",
        b"/v1/models/./x",
        b"/v1/models/a/..",
        b"/v1/models/%2e%2e/key/info",
        b"/v1/models/%2E%2E%2Fkey%2Finfo",
        b"/v1/models/a%2fb",
        b"/v1/models/a%5cb",
        b"/v1/models/a\\b",
        b"/v1/models//key/info",
        b"/v1/models/a%00",
        b"//v1/models",
        b"/v1//models",
        b"/v1/models/",
        b"/V1/MODELS",
        b"/v1/models.json",
        b"/v1/model/info/",
        b"/api/v1/models",
        b"/v1/models%2Fx",
        b"/v1/models/%ff",
    ],
)
def test_hostile_or_unusual_paths_are_not_discovery(path: bytes) -> None:
    assert match_discovery("GET", path) is None
