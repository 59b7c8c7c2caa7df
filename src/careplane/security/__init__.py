"""Who is asking, and may they: identity, tokens and (later) the access policy and audit trail."""

from careplane.security._principal import Principal, Role
from careplane.security.deps import current_principal, require_roles

__all__ = ["Principal", "Role", "current_principal", "require_roles"]
