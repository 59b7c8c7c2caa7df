"""Command-line tools of the security domain: ``careplane audit ...`` and ``careplane client ...``.

They reuse the main CLI's helpers (settings, database, JSON output), imported inside each
command because the main CLI imports this module to register the sub-apps.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["audit_app", "client_app", "keys_app"]

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit trail.")
client_app = typer.Typer(no_args_is_help=True, help="OAuth2 clients (applications, services).")
keys_app = typer.Typer(no_args_is_help=True,
                       help="Token-signing keys and blob encryption keys: rotate, re-wrap.")
DataDirOption = Annotated[str | None, typer.Option(
    "--data-dir", help="data directory (default: $CAREPLANE_DATA_DIR or ./data)")]


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[str | None, typer.Option(
        help="ID:HASH of a head printed by an earlier run: it must still be there, unchanged "
             "(catches records cut off the end)")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="data directory (default: $CAREPLANE_DATA_DIR or ./data)")] = None,
) -> None:
    """Recompute the audit chain; exit 1 and name the first bad record if it was tampered with.

    Keep the printed head (id and hash) outside this server and pass it back with
    --expect-head next time.
    """
    from pathlib import Path

    from careplane.cli import database, emit, fail, settings_from
    from careplane.security.audit import verify

    expect = None
    if expect_head is not None:
        head_id, sep, head_hash = expect_head.partition(":")
        if not sep or not head_id.isdigit() or len(head_hash) != 64:
            fail("--expect-head takes ID:HASH as printed by an earlier verify")
        expect = (int(head_id), head_hash)
    settings = settings_from(Path(data_dir) if data_dir else None)
    with database(settings) as db, db.session() as session:
        result = verify(session, expect=expect)
    emit({"ok": result.ok, "checked": result.checked, "first_bad_id": result.first_bad_id,
          "problem": result.problem, "head": f"{result.head_id}:{result.head_hash}"
          if result.head_id else None})
    if not result.ok:
        typer.echo(f"careplane: audit chain broken at record {result.first_bad_id}: "
                   f"{result.problem}", err=True)
        raise typer.Exit(1)


@client_app.command("add")
def client_add(
    name: str,
    org: Annotated[str, typer.Option(help="organisation slug")],
    scope: Annotated[str, typer.Option(
        help='scopes it may ask for, e.g. "system/*.rs" or "openid fhirUser launch/patient '
             'patient/*.rs offline_access"')],
    redirect_uri: Annotated[list[str] | None, typer.Option(
        help="redirect URI for the authorization-code grant (repeatable)")] = None,
    public: Annotated[bool, typer.Option(
        "--public", help="a public app (PKCE, no secret), e.g. a browser or mobile app")] = False,
    jwks_file: Annotated[str | None, typer.Option(
        help="the client's public keys (JWKS JSON) for private_key_jwt authentication")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="data directory (default: $CAREPLANE_DATA_DIR or ./data)")] = None,
) -> None:
    """Register an OAuth2 client and print its id (and secret, shown only now) as JSON."""
    import json
    from pathlib import Path

    from careplane.cli import database, emit, fail, guarded, settings_from
    from careplane.security.identity import get_org
    from careplane.security.oauth import create_client

    jwks = None
    if jwks_file:
        try:
            jwks = json.loads(Path(jwks_file).read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read the JWKS file {jwks_file}: {exc}")
        if not isinstance(jwks, dict):
            fail("the JWKS file must hold a JSON object with a 'keys' list")
    method = "none" if public else "private_key_jwt" if jwks else "client_secret_basic"
    settings = settings_from(Path(data_dir) if data_dir else None)
    with database(settings) as db, db.session() as session:
        organisation = guarded(lambda: get_org(session, org))
        made = guarded(lambda: create_client(session, org=organisation, name=name, scope=scope,
                                             redirect_uris=list(redirect_uri or []),
                                             auth_method=method, jwks=jwks))
        out = {"client_id": made.client.id, "name": made.client.name,
               "organisation": organisation.slug, "auth_method": made.client.auth_method,
               "grant_types": made.client.grant_types, "scope": made.client.scope,
               "redirect_uris": made.client.redirect_uris}
        if made.secret:
            out["client_secret"] = made.secret
        emit(out)


@keys_app.command("rotate-signing")
def keys_rotate_signing(data_dir: DataDirOption = None) -> None:
    """Start a new token-signing key now; older ones stay published until their tokens expire."""
    from pathlib import Path

    from careplane.cli import database, emit, settings_from
    from careplane.security import keys

    settings = settings_from(Path(data_dir) if data_dir else None)
    with database(settings) as db, db.session() as session:
        kid = keys.rotate(session, settings.secret_key)
        emit({"signing_key": kid, "published": [k["kid"] for k in keys.published(session)]})


@keys_app.command("rotate-blob")
def keys_rotate_blob(data_dir: DataDirOption = None) -> None:
    """Start a new blob key-encryption key; running servers pick it up for new blobs."""
    from pathlib import Path

    from careplane.cli import emit, fail, settings_from
    from careplane.security.encryption import KeyProviderError, LocalKeyProvider, blob_key_file

    settings = settings_from(Path(data_dir) if data_dir else None)
    provider = LocalKeyProvider(blob_key_file(settings.data_dir))
    try:
        emit({"blob_key": provider.rotate(), "keys": provider.kids()})
    except KeyProviderError as exc:
        fail(str(exc))


@keys_app.command("rewrap-blobs")
def keys_rewrap_blobs(
    retire_old: Annotated[bool, typer.Option(
        "--retire-old", help="afterwards, forget blob keys no blob uses any more")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Re-wrap every blob's data key under the current key (plaintext blobs are encrypted);
    safe while the server runs."""
    from pathlib import Path

    from careplane.cli import emit, fail, settings_from
    from careplane.security.encryption import KeyProviderError, LocalKeyProvider, blob_store_for

    settings = settings_from(Path(data_dir) if data_dir else None)
    try:
        store = blob_store_for(settings)
    except KeyProviderError as exc:
        fail(str(exc))
    changed = total = 0
    for sha in store.all_blobs():
        total += 1
        changed += store.rewrap(sha)
    retired: list[str] = []
    if retire_old and isinstance(store.keys, LocalKeyProvider):
        current, _key = store.keys.current()
        in_use = {store.key_id(sha) for sha in store.all_blobs()}
        for kid in store.keys.kids():
            if kid != current and kid not in in_use:
                store.keys.retire(kid)
                retired.append(kid)
    emit({"blobs": total, "rewrapped": changed, "retired_keys": retired})
