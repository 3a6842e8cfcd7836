"""Callers identified as LiteLLM identifies them (``sidecar/litellm/credentials.py``): each row names the
LiteLLM source it follows (``UAKA`` = ``litellm/proxy/auth/user_api_key_auth.py``; the same on 1.83.3,
1.88.6, 1.106.2, 1.109.1 and 1.110.2 unless said)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sidecar.litellm import credentials
from sidecar.litellm.budget import principal_of
from sidecar.litellm.credentials import caller_key, end_user_of


def request(*headers: tuple[str, str], query: bytes = b"") -> dict[str, object]:
    return {
        "type": "http",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "query_string": query,
    }


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        # get_api_key: x-litellm-api-key first (UAKA:416 @1.83.3, :1531 @1.110.2), Bearer stripped
        ((("x-litellm-api-key", "Bearer sk-a"), ("authorization", "Bearer sk-b")), "sk-a"),
        ((("x-litellm-api-key", "sk-a"),), "sk-a"),  # raw when it has no prefix
        # then Authorization (UAKA:419 / :1534): "Bearer ", "bearer ", "Basic " stripped, case-sensitive
        ((("authorization", "Bearer sk-b"),), "sk-b"),
        ((("authorization", "bearer sk-b"),), "sk-b"),
        ((("authorization", "Basic sk-b"),), "sk-b"),
        # any other scheme: LiteLLM's key is "" (401) and it tries no later header (_get_bearer_token)
        ((("authorization", "BEARER sk-b"), ("api-key", "sk-c")), None),
        ((("authorization", "Token sk-b"), ("x-api-key", "sk-c")), None),
        ((("authorization", "sk-b"), ("x-api-key", "sk-c")), None),
        # an empty header is no header (APIKeyHeader(auto_error=False))
        ((("authorization", ""), ("api-key", "sk-c")), "sk-c"),
        # then api-key (UAKA:422 / :1537), x-api-key (:425 / :1540), x-goog-api-key (:428 / :1543), raw
        ((("api-key", "sk-c"), ("x-api-key", "sk-d")), "sk-c"),
        ((("x-api-key", "sk-d"), ("x-goog-api-key", "sk-e")), "sk-d"),
        ((("x-goog-api-key", "sk-e"),), "sk-e"),
        ((("x-api-key", "Bearer sk-d"),), "Bearer sk-d"),  # raw: LiteLLM does not strip it there
        # then Ocp-Apim-Subscription-Key (UAKA:431 / :1546): read by LiteLLM, so by the sidecar
        ((("ocp-apim-subscription-key", "sk-f"),), "sk-f"),
        ((), None),
    ],
)
def test_the_key_is_the_one_litellm_reads(headers: tuple[tuple[str, str], ...], key: str | None) -> None:
    assert caller_key(request(*headers)) == key


@pytest.fixture
def mapped() -> Iterator[None]:
    credentials.configure(("X-OpenWebUI-User-Id",))
    yield
    credentials.configure(())


@pytest.mark.parametrize(
    ("headers", "query", "end_user"),
    [
        # STANDARD_CUSTOMER_ID_HEADERS = [x-litellm-customer-id, x-litellm-end-user-id]
        # (constants.py:1257 @1.83.3, :1321 @1.88.6, :1613 @1.106.2, :1719 @1.109.1, :1733 @1.110.2)
        ((("x-litellm-end-user-id", "e"), ("x-litellm-customer-id", "c")), b"", "c"),
        ((("x-litellm-end-user-id", "e"),), b"", "e"),
        ((("x-litellm-customer-id", "  "), ("x-litellm-end-user-id", "e")), b"", "e"),  # blank skipped
        ((("x-litellm-customer-id", " c "),), b"", "c"),  # stripped (_coerce_user_id_to_str, 1.88.6 on)
        # the query string is copied into the request data before the end user is read
        # (populate_request_with_path_params, http_parsing_utils.py:465 @1.83.3, :824 @1.110.2): ?user=
        ((), b"user=alice", "alice"),
        ((), b"safety_identifier=s", "s"),
        ((), b"user=alice&safety_identifier=s", "alice"),
        ((("x-litellm-end-user-id", "e"),), b"user=alice", "e"),  # headers come first
        ((), b"", None),
    ],
)
def test_the_end_user_is_the_one_litellm_reads(
    headers: tuple[tuple[str, str], ...], query: bytes, end_user: str | None
) -> None:
    assert end_user_of(request(*headers, query=query)) == end_user


def test_the_operators_user_header_mappings_come_after_the_standard_headers(mapped: None) -> None:
    """general_settings.user_header_mappings (role customer) / user_header_name: read after the standard
    headers, before the body (get_customer_user_header_from_mapping, auth_utils.py:721 @1.83.3, :1912
    @1.110.2); without the setting, every end user of one key would share one budget state."""
    assert end_user_of(request(("x-openwebui-user-id", "u1"))) == "u1"
    assert end_user_of(request(("x-openwebui-user-id", "u1"), ("x-litellm-end-user-id", "e"))) == "e"
    assert end_user_of(request(("x-openwebui-user-id", "u1"), query=b"user=alice")) == "u1"


def test_without_the_setting_a_mapped_header_names_no_one() -> None:
    assert end_user_of(request(("x-openwebui-user-id", "u1"))) is None


def test_a_principals_label_is_its_keys_label_and_reveals_neither_key_nor_token() -> None:
    key = "sk-label-0000000000"
    who = principal_of({"type": "http", "headers": [(b"authorization", b"Bearer " + key.encode())]})
    assert who is not None
    label = credentials.key_label(key)
    assert who.label == label  # what the logs say of a principal is what doctor says of its key
    assert len(label) == 12 and int(label, 16) >= 0
    assert label not in key and label not in who.token and label not in credentials.key_hash(key)


# LiteLLM's user_api_key_auth_websocket (user_api_key_auth.py:1361 @1.110.2, :267 @1.83.3):
#     authorization = websocket.headers.get("authorization")
#     if not authorization:
#         api_key = websocket.headers.get("api-key")
#         if not api_key:  # ... protocol.startswith("openai-insecure-api-key.")
#     else:
#         if not authorization.startswith("Bearer "): ... 403 "Invalid Authorization header format"
WEBSOCKET_KEYS = [
    ([(b"authorization", b"Bearer sk-a"), (b"api-key", b"sk-b")], "sk-a"),
    ([(b"authorization", b"Basic sk-a"), (b"api-key", b"sk-b")], None),  # refused, api-key not tried
    ([(b"api-key", b"sk-b"), (b"sec-websocket-protocol", b"openai-insecure-api-key.sk-c")], "sk-b"),
    ([(b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.sk-c")], "sk-c"),
    ([(b"sec-websocket-protocol", b"realtime")], None),
    ([(b"x-litellm-api-key", b"Bearer sk-d")], None),  # read over HTTP, not on a WebSocket
]


@pytest.mark.parametrize(("headers", "key"), WEBSOCKET_KEYS)
def test_a_websocket_handshakes_key_is_read_as_litellms_websocket_auth_reads_it(
    headers: list[tuple[bytes, bytes]], key: str | None
) -> None:
    scope = {"type": "websocket", "headers": headers, "query_string": b""}
    assert credentials.caller(scope)[0] == key
    assert (principal_of(scope) is None) == (key is None)
