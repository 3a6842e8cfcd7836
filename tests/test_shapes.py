"""Rescued answers keep LiteLLM's shape for each route; pages are re-cut consistently."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.litellm import shapes

NAMES = [f"m{i}" for i in range(7)]
V2_VIEW: dict[str, Any] = {
    "data": [
        {"model_name": n, "litellm_params": {"api_key": "x"}, "model_info": {"id": f"id-{n}"}} for n in NAMES
    ],
    "total_count": 7,
    "current_page": 1,
    "total_pages": 1,
    "size": 100000,
}


def odd(name: str) -> bool:
    return int(name[1:]) % 2 == 1  # m1, m3, m5 visible


def test_openai_list_keeps_its_envelope() -> None:
    view: dict[str, Any] = {
        "data": [{"id": n, "object": "model", "created": 1, "owned_by": "openai"} for n in NAMES],
        "object": "list",
    }
    answer = shapes.models_list(view, odd)
    assert answer == {"data": [e for e in view["data"] if odd(e["id"])], "object": "list"}


def test_anthropic_list_recomputes_first_last_and_has_more() -> None:
    view = {
        "data": [{"type": "model", "id": n, "display_name": n} for n in NAMES],
        "has_more": True,
        "first_id": "m0",
        "last_id": "m6",
    }
    answer = shapes.models_list(view, odd)
    assert [e["id"] for e in answer["data"]] == ["m1", "m3", "m5"]
    assert (answer["has_more"], answer["first_id"], answer["last_id"]) == (False, "m1", "m5")
    empty = shapes.models_list(view, lambda _: False)
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], None, None)


@pytest.mark.parametrize(
    ("query", "ids", "page", "pages", "size"),
    [
        ({}, ["m1", "m3", "m5"], 1, 1, 50),
        ({"page": "1", "size": "2"}, ["m1", "m3"], 1, 2, 2),
        ({"page": "2", "size": "2"}, ["m5"], 2, 2, 2),
        ({"page": "3", "size": "2"}, [], 3, 2, 2),
        ({"page": "1", "size": "3"}, ["m1", "m3", "m5"], 1, 1, 3),
        ({"search": "M3"}, ["m3"], 1, 1, 50),
        ({"modelId": "id-m5"}, ["m5"], 1, 1, 50),
    ],
)
def test_v2_pages_are_recut_from_the_visible_models(
    query: dict[str, str], ids: list[str], page: int, pages: int, size: int
) -> None:
    answer = shapes.model_info_page(V2_VIEW, odd, query)
    assert [d["model_name"] for d in answer["data"]] == ids
    expected_total = 1 if ("search" in query or "modelId" in query) else 3
    assert answer["total_count"] == expected_total
    assert (answer["current_page"], answer["total_pages"], answer["size"]) == (page, pages, size)
    assert all("api_key" not in d["litellm_params"] for d in answer["data"])


def test_v2_with_nothing_visible_has_zero_pages() -> None:
    answer = shapes.model_info_page(V2_VIEW, lambda _: False, {})
    assert (answer["data"], answer["total_count"], answer["total_pages"]) == ([], 0, 0)


@pytest.mark.parametrize("query", [{"page": "0"}, {"size": "0"}, {"page": "x"}, {"size": "-1"}])
def test_v2_refuses_what_litellm_refuses(query: dict[str, str]) -> None:
    with pytest.raises(shapes.BadQuery):
        shapes.model_info_page(V2_VIEW, odd, query)


def test_model_info_filters_and_strips() -> None:
    answer = shapes.model_info(V2_VIEW["data"], odd, {})
    assert [d["model_name"] for d in answer["data"]] == ["m1", "m3", "m5"]
    assert all("api_key" not in d["litellm_params"] for d in answer["data"])
    one = shapes.model_info(V2_VIEW["data"], odd, {"litellm_model_id": "id-m3"})
    assert [d["model_name"] for d in one["data"]] == ["m3"]


def test_model_group_info_filters_groups() -> None:
    view = {"data": [{"model_group": n, "providers": ["openai"]} for n in NAMES]}
    assert [g["model_group"] for g in shapes.model_group_info(view, odd, {})["data"]] == ["m1", "m3", "m5"]
    assert [g["model_group"] for g in shapes.model_group_info(view, odd, {"model_group": "m3"})["data"]] == [
        "m3"
    ]
    assert shapes.model_group_info(view, odd, {"model_group": "m2"})["data"] == []
