"""Roles and route declarations, without services: the order of the roles, environment
tokens, and every route of the served app declaring its access and enforcing it through
the one dependency that kind stands for."""

from __future__ import annotations

import pytest

from labelloop.access import (
    KINDS,
    PUBLIC,
    ROLES,
    SESSION,
    WEBHOOK,
    check_role,
    digest,
    env_caller,
    new_secret,
    role_allows,
)
from labelloop.api.auth import (
    access,
    api_routes,
    require_role,
    require_webhook_secret,
    route_access,
)
from labelloop.errors import InputError
from labelloop.labelstudio.ml_backend import require_backend_auth
from labelloop.web.session import current_caller


@pytest.mark.parametrize(
    ("held", "needed", "allowed"),
    [
        ("read", "read", True),
        ("read", "trigger", False),
        ("read", "admin", False),
        ("trigger", "read", True),
        ("trigger", "trigger", True),
        ("trigger", "admin", False),
        ("admin", "read", True),
        ("admin", "trigger", True),
        ("admin", "admin", True),
    ],
)
def test_roles_are_ordered(held, needed, allowed):
    assert role_allows(held, needed) is allowed


def test_unknown_roles_and_kinds_are_refused():
    with pytest.raises(InputError, match="unknown role 'owner'"):
        check_role("owner")
    with pytest.raises(InputError):
        role_allows("admin", "root")
    with pytest.raises(ValueError):
        require_role("root")
    with pytest.raises(ValueError):
        access("everyone")
    with pytest.raises(ValueError):  # a page's log-in check is the dashboard's own
        access("session")


def test_environment_tokens_are_admin_over_every_project():
    tokens = {"ops": "o" * 40, "ci": "c" * 40}
    caller = env_caller(tokens, "c" * 40)
    assert caller is not None and caller.name == "ci" and caller.role == "admin"
    assert caller.project_id is None and caller.sees(7) and caller.allows("admin")
    assert caller.sha256 == digest("c" * 40)
    assert env_caller(tokens, "c" * 39) is None
    assert env_caller({}, "anything") is None


def test_new_secrets_are_long_and_random():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("llt_") and len(a) >= 4 + 43  # 32 bytes, base64url
    assert len(digest(a)) == 64


def _calls(dependant) -> set:
    found = set()
    for dep in dependant.dependencies:
        found.add(dep.call)
        found |= _calls(dep)
    return found


# What enforces each kind that is not a role.
ENFORCED_BY = {
    WEBHOOK: {require_webhook_secret, require_backend_auth},
    SESSION: {current_caller},
}


def test_every_route_declares_its_access_and_enforces_it(tmp_path, monkeypatch):
    """A route without a declaration fails here; so does one whose dependency does not
    match what it declares."""
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path))
    from labelloop.web.app import create_app

    routes = list(api_routes(create_app().routes))
    assert len(routes) >= 25
    kinds = set()
    for route in routes:
        where = f"{sorted(route.methods)} {route.path}"
        kind = route_access(route)
        assert kind in KINDS, f"{where} declares no access"
        kinds.add(kind)
        calls = _calls(route.dependant)
        if kind in ROLES:
            assert require_role(kind) in calls, where
            assert not {require_role(r) for r in ROLES if r != kind} & calls, where
        elif kind == PUBLIC:
            assert not calls & {require_role(r) for r in ROLES}, where
        else:
            assert calls & ENFORCED_BY[kind], where
    assert kinds == set(KINDS)
