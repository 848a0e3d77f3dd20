"""The OpenAPI document is a contract: Schemathesis calls every operation in it, on the real
server, and checks every answer against it.

Each operation gets generated requests, valid and invalid (bounded: `MAX_EXAMPLES` each, so
the module stays well under a minute), sent with valid credentials (an admin token, which the
read routes accept too, and the webhook key). Every check Schemathesis has must pass: no 5xx,
every status code and content type documented, every body matching its documented schema,
invalid input refused, valid input accepted. Operations are read from the served document at
run time, so routes added later are covered without touching this file.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings
from tests.support.factories import encode, notification
from tests.support.served import Served, served
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

MAX_EXAMPLES = 15

CREDENTIALS = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Api-Key": API_KEY}


@pytest.fixture(scope="module")
def contract_server(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    # Schemathesis sends requests without credentials on purpose; they must get 401, not 429.
    with served(
        server_url,
        template_database,
        tmp_path_factory.mktemp("contract"),
        AUTH_FAILURE_LIMIT="1000000",
    ) as server:
        # Something to read: events for the listings and by-id routes to find.
        for _ in range(5):
            response = httpx.post(
                f"{server.base}/webhooks/paxos",
                content=encode(notification()),
                headers={"Content-Type": "application/json", **CREDENTIALS},
            )
            assert response.status_code == 200
        yield server
        assert "Traceback" not in server.log.read_text(), server.log.read_text()


def _document() -> dict[str, object]:
    """The document of the app as `serve` builds it with the settings of `contract_server`.

    Built from the app object at collection time (Schemathesis parametrizes before any
    fixture runs); `test_the_served_document_is_the_one_tested` checks the server serves it.
    """
    settings = Settings(
        database_url="postgresql://unused@127.0.0.1:1/unused",
        webhook_api_keys=(API_KEY,),
        api_read_tokens=(READ_TOKEN,),
        api_admin_tokens=(ADMIN_TOKEN,),
    )
    return dict(create_app(settings).openapi_schema.to_schema())


DOCUMENT = _document()
# "Valid input is accepted" (2xx) cannot hold for every schema-valid request: an opaque
# `cursor` is a string to the schema but must be one we issued, and some rules span fields
# (`until` later than `since`). Such requests get a 400 problem, which must still be
# documented and match its schema; every other check runs as Schemathesis ships it.
CONFIG = schemathesis.Config.from_dict(
    {
        # Credentials by security scheme: Schemathesis sends them where the document says a
        # route takes them, and leaves them out on purpose to check the 401s.
        "auth": {
            "openapi": {
                "adminToken": {"bearer": ADMIN_TOKEN},
                "readToken": {"bearer": READ_TOKEN},
                "paxosWebhook": {"api_key": API_KEY},
            }
        },
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429"]
            }
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_served_document_is_the_one_tested(contract_server: Served) -> None:
    served_document = httpx.get(f"{contract_server.base}/schema/openapi.json").json()
    assert served_document == DOCUMENT


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, contract_server: Served
) -> None:
    # GET /feed with `wait` long-polls an idle feed for up to 60 s: a valid wait over a second
    # is cut to one (still valid, still a long-poll), so each call stays within its timeout.
    wait = (case.query or {}).get("wait")
    if (
        case.path == "/feed"
        and isinstance(wait, int | float)
        and not isinstance(wait, bool)
        and 1 < wait <= 60
    ):
        case.query["wait"] = 1
    case.call_and_validate(base_url=contract_server.base, timeout=30)
