"""What ../shared/litellm-upstream seeds (its README), as the tests expect to see it."""

from __future__ import annotations

ALL_MODELS = ["paid-model", "free-model", "free-model-2", "free-embedding"]
FREE_MODELS = ["free-model", "free-model-2", "free-embedding"]

# The models each over-budget principal may access.
ACCESS = {
    "KEY_TEAM_BROKE": ALL_MODELS,
    "KEY_KEY_BROKE": ALL_MODELS,
    "KEY_USER_BROKE": ALL_MODELS,
    "KEY_FREE_ONLY": ["free-model"],
    "KEY_GROUP_ONLY": ["free-model-2"],
}
BROKE = list(ACCESS)

# The discovery routes that answer a list, and the field naming each entry's model.
LIST_ROUTES = {
    "/v1/models": "id",
    "/models": "id",
    "/model/info": "model_name",
    "/v1/model/info": "model_name",
    "/v2/model/info": "model_name",
    "/model_group/info": "model_group",
}


def expected_models(principal: str, policy: str) -> list[str]:
    """What a rescued answer lists for ``principal`` under ``policy`` (``all`` or ``free_only``)."""
    return [m for m in ACCESS[principal] if policy == "all" or m in FREE_MODELS]
