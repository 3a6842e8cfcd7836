"""Rescued answers, cut from the admin's view of a route to the models one caller may see.

Each function keeps the exact shape LiteLLM gives for its route - the OpenAI list, the Anthropic list
(``has_more``/``first_id``/``last_id``), the ``data`` lists of ``/model/info`` and ``/model_group/info``,
the pages of ``/v2/model/info`` - and only removes entries. ``visible`` says whether a model name may be
shown; it already combines the caller's access with the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidecar.litellm.catalog import public_deployment

Visible = Callable[[str], bool]

V2_DEFAULT_PAGE_SIZE = 50


class BadQuery(Exception):
    """A query parameter LiteLLM would refuse (e.g. ``page=0``)."""


def models_list(view: Mapping[str, Any], visible: Visible) -> dict[str, Any]:
    """``/v1/models`` in the OpenAI or the Anthropic shape."""
    data = [m for m in view["data"] if isinstance(m, dict) and _named(m.get("id"), visible)]
    answer = {**view, "data": data}
    if "has_more" in view:  # Anthropic list
        answer["has_more"] = False
        answer["first_id"] = data[0]["id"] if data else None
        answer["last_id"] = data[-1]["id"] if data else None
    return answer


def kept(answer: Mapping[str, Any], field: str, visible: Visible) -> dict[str, Any]:
    """LiteLLM's own ``{"data": [...]}`` answer with only the entries whose ``field`` names a visible
    model; everything else as LiteLLM gave it."""
    data = [e for e in answer["data"] if isinstance(e, dict) and _named(e.get(field), visible)]
    return {**answer, "data": data}


def find_model(list_answer: Mapping[str, Any], model_id: str) -> dict[str, Any] | None:
    """The entry for ``model_id`` in a ``/v1/models`` answer."""
    data = list_answer.get("data")
    for entry in data if isinstance(data, list) else ():
        if isinstance(entry, dict) and entry.get("id") == model_id:
            return entry
    return None


def model_info(
    deployments: Sequence[Mapping[str, Any]], visible: Visible, query: Mapping[str, str]
) -> dict[str, Any]:
    """``/model/info`` and ``/v1/model/info``: ``{"data": [deployment, ...]}``."""
    model_id = query.get("litellm_model_id")
    data = [
        public_deployment(d)
        for d in deployments
        if _named(d.get("model_name"), visible)
        and (model_id is None or (d.get("model_info") or {}).get("id") == model_id)
    ]
    return {"data": data}


def model_info_page(view: Mapping[str, Any], visible: Visible, query: Mapping[str, str]) -> dict[str, Any]:
    """``/v2/model/info``: one page of the visible deployments, counts recomputed for them."""
    page = _positive_int(query, "page", 1)
    size = _positive_int(query, "size", V2_DEFAULT_PAGE_SIZE)
    search = query.get("search", "").lower()
    model_id = query.get("modelId")
    chosen = [
        public_deployment(d)
        for d in view["data"]
        if isinstance(d, dict)
        and _named(d.get("model_name"), visible)
        and (not search or search in str(d.get("model_name", "")).lower())
        and (model_id is None or (d.get("model_info") or {}).get("id") == model_id)
    ]
    total = len(chosen)
    start = (page - 1) * size
    return {
        **view,
        "data": chosen[start : start + size],
        "total_count": total,
        "current_page": page,
        "total_pages": -(-total // size) if total else 0,
        "size": size,
    }


def model_group_info(view: Mapping[str, Any], visible: Visible, query: Mapping[str, str]) -> dict[str, Any]:
    """``/model_group/info``: ``{"data": [group, ...]}``, optionally one ``model_group``."""
    group = query.get("model_group")
    data = [
        g
        for g in view["data"]
        if isinstance(g, dict)
        and _named(g.get("model_group"), visible)
        and (group is None or g.get("model_group") == group)
    ]
    return {**view, "data": data}


def _named(name: object, visible: Visible) -> bool:
    return isinstance(name, str) and visible(name)


def _positive_int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if value < 1:
        raise BadQuery(f"{name} must be at least 1")
    return value
