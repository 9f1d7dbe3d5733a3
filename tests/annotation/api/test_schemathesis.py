"""Property-based requests generated from the OpenAPI schema (schemathesis): no operation answers with a server
error, for an admin token over a study with labels. Bounded: a few examples per operation."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

EXAMPLES = 6


@pytest.fixture
def keep_test_connection():
    """Schemathesis calls the WSGI app directly: like Django's test client, keep request_started/finished from closing the
    test's database connection (which holds the test transaction)."""
    from django.core import signals
    from django.db import close_old_connections

    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


def test_no_operation_answers_with_a_server_error(labelled, keep_test_connection):
    from annotation.api.auth import token_issue
    from config.wsgi import application

    token = token_issue(user=labelled["admin"], name="fuzz", scope="admin")[1]
    # launching a round would run a whole generation/training round inline (tasks are eager in tests)
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application).exclude(
        method="POST", path="/api/v1/rounds/")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same examples on every run: CI reproducible
        def run(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error])

        run()
    assert len(tried) >= 20, tried
