"""Who may do what: the controller's one authorization policy.

Every route the app serves is classified here by its path template and method:

- **public**: no login (health, the login form, the TUF mirror that devices read, static
  files, the API schema);
- **api**: a JSON endpoint; safe methods (GET/HEAD/OPTIONS) need ``viewer``, unsafe ones
  ``operator``, except the short lists below (admin-only, and self-service for any user);
- **page**: a console page; the same roles, but an anonymous visitor is sent to ``/login``.

A route nothing here classifies is refused (fail closed), and ``tests/test_access_policy.py``
walks ``app.routes`` so such a route fails the build before it ships. ``require_access``
(``controller/api/deps.py``) enforces the policy as one dependency of the whole app,
together with the CSRF check for cookie-authenticated unsafe requests; routes carry no role
checks. Object-level rules (a user's own tokens) are the account service's
(``controller/auth/users.py``).
"""

from dataclasses import dataclass
from typing import Literal

from controller.auth.credentials import Role
from controller.auth.csrf import SAFE_METHODS
from controller.auth.tables import User

Kind = Literal["public", "api", "page"]
RANK: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
ALL_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

# Exact path templates anyone may use.
PUBLIC_PATHS = frozenset(
    {
        "/",  # redirects to the console
        "/healthz",  # load balancers and orchestrators probe without credentials
        "/login",  # the form and its POST (login CSRF and rate limits are checked there)
        "/logout",  # ends the caller's own session (its CSRF token is checked there)
        "/openapi.json",  # the API's shape is no secret; every call in it needs a login
        "/docs",  # Swagger UI over /openapi.json, from vendored files (no CDN)
        "/api/images/key",  # the image public key: flashers verify images against it
    }
)
# Path prefixes anyone may use.
PUBLIC_PREFIXES: tuple[str, ...] = (
    "/tuf/",  # the update mirror: devices verify every byte against signed TUF metadata
    "/static",  # console CSS and JavaScript
)
API_PREFIXES: tuple[str, ...] = ("/api/",)
API_PATHS = frozenset({"/metrics"})  # Prometheus scrapes with a viewer's bearer token
PAGE_PREFIX = "/console"

# (methods, template): admin only. Accounts, and the trust roots of device attestation
# (a golden value or an enrolled identity key decides which devices the fleet trusts).
ADMIN_ONLY: tuple[tuple[frozenset[str], str], ...] = (
    (ALL_METHODS, "/api/users"),
    (ALL_METHODS, "/api/users/{user_id}"),
    (frozenset({"POST"}), "/api/attestation/golden"),
    (frozenset({"DELETE"}), "/api/attestation/golden/{golden_id}"),
    (frozenset({"PUT"}), "/api/devices/{device_id}/identity"),
    (frozenset({"POST"}), "/api/devices/{device_id}/broker-credential"),  # a device's login
    (frozenset({"POST"}), "/api/devices/{device_id}/revoke"),  # locks a device out for good
    (frozenset({"POST"}), "/api/devices/{device_id}/certificate"),  # its TLS login
)
# Templates any logged-in user may call with any method: their own account and tokens
# (a viewer may mint a viewer-strength token for a dashboard). Whose token it is, is
# checked by the account service (``controller/auth/users.py``).
SELF_SERVICE = frozenset({"/api/me", "/api/me/password", "/api/tokens", "/api/tokens/{token_id}"})


@dataclass(frozen=True, slots=True)
class Rule:
    """How one (method, route) is guarded: its kind and the least role it needs."""

    kind: Kind
    role: Role | None  # None for public routes
    why: str


def _under(path: str, prefix: str) -> bool:
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def rule_for(method: str, path: str) -> Rule | None:
    """The rule for ``method`` on the route template ``path``; None when the policy does not
    cover it (the caller must refuse)."""
    method = method.upper()
    if path in PUBLIC_PATHS or any(_under(path, p) for p in PUBLIC_PREFIXES):
        return Rule("public", None, "public")
    kind: Kind
    if path in API_PATHS or any(path.startswith(p) for p in API_PREFIXES):
        kind = "api"
    elif _under(path, PAGE_PREFIX):
        kind = "page"
    else:
        return None
    for methods, template in ADMIN_ONLY:
        if path == template and method in methods:
            return Rule(kind, "admin", "admin-only")
    if path in SELF_SERVICE:
        return Rule(kind, "viewer", "self-service")
    if method in SAFE_METHODS:
        return Rule(kind, "viewer", "read")
    return Rule(kind, "operator", "change")


def permits(role: str, needed: Role | None) -> bool:
    """Roles are ordered viewer < operator < admin; an unknown role gets nothing."""
    return needed is None or RANK.get(role, 0) >= RANK[needed]


def allows(user: User | None, method: str, path: str) -> bool:
    """Whether ``user`` may call ``method`` on the route template ``path`` (for pages that
    show or hide controls; the API decides again on every request)."""
    rule = rule_for(method, path)
    if rule is None:
        return False
    if rule.role is None:
        return True
    return user is not None and permits(user.role, rule.role)


class LoginRequired(Exception):
    """An anonymous visitor asked for a console page; the app redirects to /login."""


__all__ = [
    "ADMIN_ONLY",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "SELF_SERVICE",
    "LoginRequired",
    "Rule",
    "allows",
    "permits",
    "rule_for",
]
