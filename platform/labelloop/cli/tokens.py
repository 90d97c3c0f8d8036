"""`labelloop tokens create|list|revoke`: the REST API's and the dashboard's tokens.

A token is shown once, when it is made; the database keeps only its sha256
(labelloop.access says why that suffices)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from labelloop.access import ROLE_HELP, ROLES
from labelloop.cli.options import JsonOpt, MaybeProjectOpt, context
from labelloop.cli.output import console, emit_json, err_console, handle_errors

ROLES_TEXT = "\n\n".join(f"- **{r}**: {ROLE_HELP[r]}" for r in ROLES)

app = typer.Typer(
    help="Bearer tokens of the REST API and the dashboard, each with a role and optionally "
    "one project. Roles, each allowing what the ones before it allow:\n\n"
    f"{ROLES_TEXT}\n\n"
    "A token limited to a project (--project) sees nothing of the others. Tokens in "
    "LABELLOOP_API_TOKENS keep working as admin over all projects.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[str, typer.Argument(help="Who or what holds the token (unique while active).")]
RoleOpt = Annotated[
    str, typer.Option("--role", "-r", help=f"One of {', '.join(ROLES)} (see `tokens --help`).")
]


@app.command("create")
@handle_errors
def tokens_create(
    name: NameArg, role: RoleOpt, project: MaybeProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Make a token and print it, once: it is not stored in clear and cannot be shown
    again (revoke it and make another if it is lost)."""
    from labelloop.access import create_token

    made = create_token(context(), name, role, project)
    if as_json:
        emit_json(made)
        return
    scope = f"project {made['project']}" if made["project"] else "all projects"
    err_console.print(f"token {made['name']!r}: role {made['role']}, {scope}", markup=False)
    err_console.print("store it now; it is not shown again:")
    console.print(made["token"], markup=False, highlight=False)


@app.command("list")
@handle_errors
def tokens_list(
    revoked: Annotated[bool, typer.Option(help="Include revoked tokens.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The tokens made with `tokens create` (never their secrets); the environment's
    (LABELLOOP_API_TOKENS) are not listed."""
    from labelloop.access import list_tokens

    rows = list_tokens(context(), revoked=revoked)
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "role", "project", "created", "last used", "revoked")
    for r in rows:
        table.add_row(
            r["name"],
            r["role"],
            r["project"] or "(all)",
            r["created_at"][:19],
            (r["last_used_at"] or "never")[:19],
            (r["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("revoke")
@handle_errors
def tokens_revoke(name: NameArg, as_json: JsonOpt = False) -> None:
    """Revoke a token: refused from its next request on, its dashboard sessions end."""
    from labelloop.access import revoke_token

    row = revoke_token(context(), name)
    if as_json:
        emit_json(row)
    else:
        console.print(f"token {row['name']!r} revoked", markup=False)
