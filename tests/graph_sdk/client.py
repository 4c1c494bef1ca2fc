#!/usr/bin/env python3
"""A Microsoft Graph security-incidents tool written with Microsoft's own Python SDK
(`msgraph-sdk`), pointed at another base URL: the proxy's Graph facade or the simulator's Graph
routes. It lists, reads, updates and comments on incidents the way a real Graph user would, and
prints one JSON summary line (exit status 1 on any failure, with the error in that line).

    GRAPH_TOKEN=<bearer> python client.py --base-url http://127.0.0.1:8080/v1.0

The SDK needs three things to leave graph.microsoft.com, none of them a patch:
- the base URL goes on the request adapter (`adapter.base_url = ...`); `BaseGraphServiceClient`
  only fills in graph.microsoft.com when the adapter has none. (Putting it on the httpx client
  also works but yields `/v1.0//security/...`: see `build_client`);
- authentication is a `BaseBearerTokenAuthenticationProvider` over our own `AccessTokenProvider`
  that hands out one static token (the proxy's consumer key or a Graph-scoped token), never
  MSAL or azure-identity: the proxy authenticates callers by `Authorization: Bearer <key>`;
- that provider refuses plain http except on loopback, as kiota's own Azure provider does
  (`AzureIdentityAccessTokenProvider` raises "Only https is supported" elsewhere), and its
  `AllowedHostsValidator` is the base URL's host only, so the token never follows a nextLink
  to another host.

What this SDK version does on its own, which a server in front of Graph has to know (the
requests it sends are in the summary's `requests`; tests/graph_sdk.rs asserts on them):
- there is no request builder for `POST /security/incidents/{id}/comments`: in Graph's metadata
  `comments` is a structural property of the incident, not a navigation, so kiota generated
  none. The comment goes out through the SDK's own `RequestInformation` and request adapter
  (same middleware, auth and error mapping), with the body the API documents.
- the model serializer skips None, so `assignedTo: null` cannot be sent through `Incident(...)`.
- the telemetry headers (`client-request-id`, `SdkVersion`, `HostOs`, `RuntimeEnvironment`) are
  only added for graph.microsoft.com and the national clouds, so a proxy never sees them.
- its RetryHandler resends any request, PATCH and POST included, on 429, 503 and 504 (three
  times at most, with a `Retry-After: 1`-style header honoured); a fractional `Retry-After`
  such as Graph's documented `2.128` parses as neither seconds nor a date, so it is ignored and
  the SDK waits its own backoff (about 3.25 to 4.25 s on a first retry).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_http.kiota_client_factory import DEFAULT_CONNECTION_TIMEOUT, DEFAULT_REQUEST_TIMEOUT
from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.graph_request_adapter import options as graph_default_options
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.security.alert_classification import AlertClassification
from msgraph.generated.models.security.alert_comment import AlertComment
from msgraph.generated.models.security.alert_determination import AlertDetermination
from msgraph.generated.models.security.incident import Incident
from msgraph.generated.models.security.incident_status import IncidentStatus
from msgraph.generated.security.incidents.incidents_request_builder import IncidentsRequestBuilder
from msgraph.generated.security.incidents.item.incident_item_request_builder import (
    IncidentItemRequestBuilder,
)
from msgraph_core import GraphClientFactory

LOOPBACK_NAMES = {"localhost"}


class Failure(Exception):
    """A check of what the service answered did not hold."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise Failure(message)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class StaticTokenProvider(AccessTokenProvider):
    """One bearer token for every request to the allowed host; https only, except on loopback
    (tests), mirroring kiota's Azure provider so a typo in --base-url cannot send a token in
    clear text across a network."""

    def __init__(self, token: str, host: str) -> None:
        self._token = token
        self._validator = AllowedHostsValidator([host])

    async def get_authorization_token(
        self, uri: str, additional_authentication_context: dict[str, Any] = {}
    ) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
            raise Failure(f"refusing to send the token over {parts.scheme} to {parts.hostname}")
        if not self._validator.is_url_host_valid(uri):
            # Another host (a nextLink pointing elsewhere): send the request without a token.
            return ""
        return self._token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        return self._validator


class RecordingTransport(httpx.AsyncBaseTransport):
    """The innermost transport: sees each request exactly as it leaves, after the SDK's
    middleware (retry, redirect, parameter-name decoding, user agent, telemetry) has run, so
    the summary tells the proxy's Graph facade what the SDK really sends."""

    def __init__(self) -> None:
        # As the SDK's default client has it (KiotaClientFactory.get_default_client): HTTP/2
        # where TLS negotiates it, HTTP/1.1 on plain http.
        self._inner = httpx.AsyncHTTPTransport(http2=True)
        self._start = time.monotonic()
        self.seen: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = {
            k: ("Bearer <redacted>" if k.lower() == "authorization" else v)
            for k, v in request.headers.items()
        }
        entry: dict[str, Any] = {
            # When it left, in seconds since the client started: shows the SDK's retry delays.
            "t": round(time.monotonic() - self._start, 3),
            "method": request.method,
            "url": str(request.url),
            "headers": headers,
        }
        body = request.content
        if body:
            entry["body"] = body.decode("utf-8", "replace")
        self.seen.append(entry)
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            raise
        entry["status"] = response.status_code
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def build_client(base_url: str, token: str, recorder: RecordingTransport) -> GraphServiceClient:
    host = urlsplit(base_url).hostname or ""
    auth = BaseBearerTokenAuthenticationProvider(StaticTokenProvider(token, host))
    # The SDK's own default middleware and options (what GraphRequestAdapter builds when given
    # no client), on an httpx client with our transport.
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(
            transport=recorder,
            timeout=httpx.Timeout(DEFAULT_REQUEST_TIMEOUT, connect=DEFAULT_CONNECTION_TIMEOUT),
        ),
        options=graph_default_options,
    )
    adapter = GraphRequestAdapter(auth, client=http)
    # On the adapter, not as httpx's `base_url=`: httpx stores a base URL with a trailing slash
    # and the SDK's URL templates start with one, so that way every request goes to
    # `/v1.0//security/...` (the SDK's own default does the same to graph.microsoft.com).
    adapter.base_url = base_url.rstrip("/")
    return GraphServiceClient(request_adapter=adapter)


def enum_text(v: Any) -> Optional[str]:
    return None if v is None else getattr(v, "value", v)


def incident_fields(i: Incident) -> dict[str, Any]:
    return {
        "id": i.id,
        "status": enum_text(i.status),
        "classification": enum_text(i.classification),
        "determination": enum_text(i.determination),
        "assignedTo": i.assigned_to,
        "customTags": list(i.custom_tags or []),
    }


async def list_incidents(
    client: GraphServiceClient, status_filter: str, top: int, max_pages: int
) -> dict[str, Any]:
    params = IncidentsRequestBuilder.IncidentsRequestBuilderGetQueryParameters(
        filter=f"status eq '{status_filter}'",
        top=top,
        count=True,
    )
    page = await client.security.incidents.get(
        request_configuration=RequestConfiguration(query_parameters=params)
    )
    check(page is not None, "list answered no body")
    count = page.odata_count
    ids: list[str] = []
    page_sizes: list[int] = []
    next_links: list[str] = []
    while True:
        items = page.value or []
        page_sizes.append(len(items))
        for i in items:
            check(
                enum_text(i.status) == status_filter,
                f"incident {i.id} has status {enum_text(i.status)} under status eq '{status_filter}'",
            )
            check(i.id not in ids, f"incident {i.id} listed twice across pages")
            ids.append(i.id)
        check(len(items) <= top, f"a page of {len(items)} for $top={top}")
        if not page.odata_next_link or len(page_sizes) >= max_pages:
            break
        next_links.append(page.odata_next_link)
        # The documented way to page with this SDK: the nextLink as an opaque URL.
        page = await client.security.incidents.with_url(page.odata_next_link).get()
        check(page is not None, "a nextLink answered no body")
    return {
        "filter": f"status eq '{status_filter}'",
        "top": top,
        "count": count,
        "pages": len(page_sizes),
        "page_sizes": page_sizes,
        "ids": ids,
        "next_links": next_links,
    }


async def post_comment(client: GraphServiceClient, incident_id: str, text: str) -> list[AlertComment]:
    """POST /security/incidents/{id}/comments through the SDK's request adapter: the SDK has no
    builder for it (see the header). Body as documented; the answer is every comment of the
    incident in a `value` collection."""
    item = client.security.incidents.by_incident_id(incident_id)
    info = RequestInformation(
        Method.POST,
        "{+baseurl}/security/incidents/{incident%2Did}/comments",
        dict(item.path_parameters),
    )
    info.headers.try_add("Accept", "application/json")
    body = AlertComment(odata_type="microsoft.graph.security.alertComment", comment=text)
    info.set_content_from_parsable(client.request_adapter, "application/json", body)
    raw = await client.request_adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
    check(raw is not None, "comment POST answered no body")
    root = JsonParseNodeFactory().get_root_parse_node("application/json", raw)
    value = root.get_child_node("value")
    check(value is not None, "comment POST answer has no 'value'")
    return value.get_collection_of_object_values(AlertComment) or []


async def run(args: argparse.Namespace, token: str, recorder: RecordingTransport) -> dict[str, Any]:
    client = build_client(args.base_url, token, recorder)
    summary: dict[str, Any] = {"ok": False}

    listed = await list_incidents(client, "active", args.top, args.max_pages)
    summary["list"] = listed
    check(
        listed["pages"] >= args.min_pages,
        f"saw {listed['pages']} page(s), wanted at least {args.min_pages}: is there enough data?",
    )
    target = args.incident or listed["ids"][0]

    item = client.security.incidents.by_incident_id(target)
    expanded = await item.get(
        request_configuration=RequestConfiguration(
            query_parameters=IncidentItemRequestBuilder.IncidentItemRequestBuilderGetQueryParameters(
                expand=["alerts"]
            )
        )
    )
    check(expanded is not None and expanded.id == target, f"GET {target} answered another incident")
    check(expanded.alerts is not None, f"GET {target}?$expand=alerts has no alerts property")
    for a in expanded.alerts:
        check(
            a.incident_id in (None, target),
            f"alert {a.id} of incident {target} says incidentId {a.incident_id}",
        )
    summary["get"] = {
        "id": expanded.id,
        "status": enum_text(expanded.status),
        "alerts": len(expanded.alerts),
        "alert_ids": [a.id for a in expanded.alerts],
        "comments_before": len(expanded.comments or []),
    }

    tags = [args.tag, f"{args.tag}-{target}"]
    change = Incident(
        status=IncidentStatus.Resolved,
        assigned_to=args.assign_to,
        classification=AlertClassification.TruePositive,
        determination=AlertDetermination.MultiStagedAttack,
        custom_tags=tags,
    )
    want = {
        "id": target,
        "status": "resolved",
        "classification": "truePositive",
        "determination": "multiStagedAttack",
        "assignedTo": args.assign_to,
        "customTags": tags,
    }
    patched = await item.patch(change)
    # Graph answers a PATCH with the full updated incident (fact sheet §5.1).
    check(patched is not None, f"PATCH {target} answered no incident")
    check(incident_fields(patched) == want, f"PATCH answer {incident_fields(patched)} != {want}")
    summary["updated"] = want

    comment_text = f"{args.tag}: triaged by the msgraph-sdk client ({target})"
    comments = await post_comment(client, target, comment_text)
    check(
        any(c.comment == comment_text for c in comments),
        f"comment POST answer lacks the new comment: {[c.comment for c in comments]}",
    )
    summary["comment"] = {"text": comment_text, "comments_after_post": len(comments)}

    again = await item.get()
    check(again is not None, f"read-back of {target} answered no incident")
    check(incident_fields(again) == want, f"read-back {incident_fields(again)} != {want}")
    read_comments = [c.comment for c in again.comments or []]
    check(comment_text in read_comments, f"read-back lacks the comment: {read_comments}")
    summary["readback"] = {**incident_fields(again), "comments": len(read_comments)}
    summary["ok"] = True
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1.0")
    p.add_argument("--token-env", default="GRAPH_TOKEN", help="environment variable with the bearer")
    p.add_argument("--top", type=int, default=10, help="$top of the list (Graph allows 1..50)")
    p.add_argument("--max-pages", type=int, default=3, help="nextLinks to follow at most, plus one")
    p.add_argument("--min-pages", type=int, default=2, help="fail unless the list had this many pages")
    p.add_argument("--incident", help="incident to update (default: the first one listed)")
    p.add_argument("--assign-to", default="graph-sdk@contoso.test")
    p.add_argument("--tag", default="graph-sdk")
    args = p.parse_args()
    token = os.environ.get(args.token_env, "")
    recorder = RecordingTransport()
    summary: dict[str, Any]
    try:
        if not token:
            raise Failure(f"no bearer token in ${args.token_env}")
        summary = asyncio.run(run(args, token, recorder))
    except ODataError as e:
        err = e.error
        summary = {
            "ok": False,
            "error": f"ODataError {e.response_status_code}: "
            f"{err.code if err else ''} {err.message if err else e}",
        }
    except Exception as e:  # noqa: BLE001 - any failure must end as a summary and exit 1
        summary = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    summary["requests"] = recorder.seen
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
