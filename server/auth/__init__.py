"""Identity: signed tokens, users, roles and grants (docs/security.md).

:mod:`.tokens` signs and verifies JWTs (HS256, keys in the catalog by
``kid``); :mod:`.roles` says which role each request needs; :mod:`.service`
turns a token into an :class:`~.service.Identity` and a dataset into that
identity's role, following revocations and grant changes.
"""

from .roles import ROLE_RANK, at_least, ops_role, required_role
from .service import LOCAL, Auth, AuthFailed, Identity
from .tokens import Signer, parse_duration

__all__ = [
    "Auth",
    "AuthFailed",
    "Identity",
    "LOCAL",
    "ROLE_RANK",
    "Signer",
    "at_least",
    "ops_role",
    "parse_duration",
    "required_role",
]
