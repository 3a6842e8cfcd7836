"""What ../shared/litellm-upstream seeds (its README), as the tests expect to see it."""

from __future__ import annotations

from typing import NamedTuple

ALL_MODELS = ["paid-model", "free-model", "free-model-2", "free-embedding"]
FREE_MODELS = ["free-model", "free-model-2", "free-embedding"]

# The models each over-budget principal may access, and the budget level that is spent.
ACCESS = {
    "KEY_TEAM_BROKE": ALL_MODELS,
    "KEY_KEY_BROKE": ALL_MODELS,
    "KEY_USER_BROKE": ALL_MODELS,
    "KEY_FREE_ONLY": ["free-model"],
    "KEY_GROUP_ONLY": ["free-model-2"],
    "KEY_MEMBER_BROKE": ALL_MODELS,
    "KEY_WINDOW_BROKE": ALL_MODELS,
    "KEY_ORG_BROKE": ALL_MODELS,
    "END_USER_BROKE": ALL_MODELS,  # sent with KEY_END_USER_CALLER, naming the end user in a header
}
SCOPE = {
    "KEY_TEAM_BROKE": "team",
    "KEY_KEY_BROKE": "key",
    "KEY_USER_BROKE": "user",
    "KEY_FREE_ONLY": "team",
    "KEY_GROUP_ONLY": "team",
    "KEY_MEMBER_BROKE": "team_member",
    "KEY_WINDOW_BROKE": "key_window",
    "KEY_ORG_BROKE": "org",
    "END_USER_BROKE": "end_user",
}
BROKE = list(ACCESS)
# Principals the harness can seed only on some versions (budget windows came in 1.88; organisations
# need an enterprise licence from 1.106). The others are seeded on every version.
SEEDED_ON = {
    "KEY_WINDOW_BROKE": ("1.88.6", "1.106.2", "1.108.11", "1.109.1", "1.110.2"),
    "KEY_ORG_BROKE": ("1.83.3", "1.88.6"),
}
END_USER_HEADER = "x-litellm-end-user-id"
END_USER_BROKE = "end-user-broke"


def seeded(principal: str, version: str) -> bool:
    return version in SEEDED_ON.get(principal, (version,))


def credentials(principal: str, key_of: dict[str, str]) -> dict[str, str]:
    """The headers ``principal`` calls with, given the seeded keys (``END_USER_BROKE`` names itself)."""
    if principal == "END_USER_BROKE":
        return {"Authorization": f"Bearer {key_of['KEY_END_USER_CALLER']}", END_USER_HEADER: END_USER_BROKE}
    return {"Authorization": f"Bearer {key_of[principal]}"}


# The discovery routes that answer a list, and the field naming each entry's model.
LIST_ROUTES = {
    "/v1/models": "id",
    "/models": "id",
    "/cursor/v1/models": "id",
    "/model/info": "model_name",
    "/v1/model/info": "model_name",
    "/v2/model/info": "model_name",
    "/model_group/info": "model_group",
}


# Where LiteLLM refuses a spent principal its zero-cost models too (the harness's README, "free chat" per
# principal and version; the recordings in tests/fixtures): 1.88.6's max_budget_limiter hook for a user,
# get_end_user_object's own budget check for an end user up to 1.88.6.
FREE_REFUSED = {("1.83.3", "END_USER_BROKE"), ("1.88.6", "KEY_USER_BROKE"), ("1.88.6", "END_USER_BROKE")}


def expected_models(principal: str, policy: str, version: str | None = None) -> list[str]:
    """What a rescued answer lists for ``principal`` under ``policy`` (``all`` or ``free_only``) on
    LiteLLM ``version``: under ``free_only`` what LiteLLM serves it now - none where it refuses free models
    too (``FREE_REFUSED``)."""
    if policy == "free_only" and (version, principal) in FREE_REFUSED:
        return []
    return [m for m in ACCESS[principal] if policy == "all" or m in FREE_MODELS]


class Models(NamedTuple):
    """The models of one harness configuration, in LiteLLM's order: every model, and the free ones."""

    all: list[str]
    free: list[str]

    def access(self, principal: str) -> list[str]:
        """The models ``principal`` may access: all of them, unless its key is restricted."""
        return self.all if ACCESS[principal] == ALL_MODELS else ACCESS[principal]

    def expected(self, principal: str, policy: str, version: str | None = None) -> list[str]:
        """What a rescued answer lists for ``principal`` under ``policy`` (``all`` or ``free_only``) on
        LiteLLM ``version``: under ``free_only`` what LiteLLM serves it now (``expected_models``)."""
        if policy == "free_only" and (version, principal) in FREE_REFUSED:
            return []
        return [m for m in self.access(principal) if policy == "all" or m in self.free]


# ``up`` as the recorded fixtures (and the fake) know it: the four models above.
CHAT = Models(ALL_MODELS, FREE_MODELS)
# ``up --beyond-chat``, as the integration suite starts LiteLLM: two WebSocket models more, after the four
# (``realtime-model`` free, ``realtime-paid-model`` paid).
REALTIME_MODELS = ["realtime-model", "realtime-paid-model"]
BEYOND_CHAT = Models([*ALL_MODELS, *REALTIME_MODELS], [*FREE_MODELS, "realtime-model"])
