"""The command line: `fleetid validate`, `explain` and `schema`, through `main` as the
installed script calls it, and a few runs of the script itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clikit import Run

from fleetid import cli
from fleetid.fleet.compile import Revision
from fleetid.fleet.jsonschema import rendered


@pytest.fixture(scope="module")
def fleet(repo_root: Path) -> Path:
    return repo_root / "fleet.yaml"


INVALID = """\
version: 1
identity:
  name: broken
roles:
  sales: {}
resources:
  crm:
    kind: rest
    identifier: https://crm.example.com
    scopes:
      crm:read: {description: Read, roles: [sales]}
agents:
  bot:
    runtime: external
    description: Bot
    tenants: [nowhere]
"""


# validate


def test_validate_accepts_the_example(run: Callable[..., Run], fleet: Path) -> None:
    result = run("validate", fleet)

    assert result.code == 0
    assert result.out.startswith(f"{fleet}: valid, revision ")
    assert "(4 agents, 2 resources, 4 scopes, 3 policy rules)" in result.out
    assert result.err == ""


def test_validate_reads_fleet_yaml_in_the_current_folder(
    run: Callable[..., Run], example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example_copy.parent)

    result = run("validate")

    assert result.code == 0
    assert result.out.startswith("fleet.yaml: valid, revision ")


def test_validate_reports_every_problem_and_exits_2(
    run: Callable[..., Run], write_fleet: Callable[..., Path]
) -> None:
    path = write_fleet(INVALID)

    result = run("validate", path)

    assert result.code == 2
    assert result.out == ""
    assert result.err.splitlines() == [
        f"{path}:8:5: error: must be 'api' or 'mcp' (at /resources/crm/kind)",
        f"{path}:16:15: error: unknown tenant 'nowhere' (at /agents/bot/tenants/0)",
        "2 problems found",
    ]


def test_validate_counts_one_problem_in_the_singular(
    run: Callable[..., Run], write_fleet: Callable[..., Path]
) -> None:
    result = run("validate", write_fleet("version: 1\n"))

    assert result.code == 2
    assert result.err.splitlines()[-1] == "1 problem found"


def test_validate_reports_policy_problems_with_their_file(
    run: Callable[..., Run], example_copy: Path
) -> None:
    policy = example_copy.parent / "policies" / "crm.yaml"
    policy.write_text(policy.read_text().replace("effect: cap_lifetime", "effect: shorten"))

    result = run("validate", example_copy)

    assert result.code == 2
    (line, count) = result.err.splitlines()
    assert line.startswith(f"{policy}:")
    assert "(at /rules/1/effect)" in line
    assert count == "1 problem found"


def test_validate_json_lists_the_problems(
    run: Callable[..., Run], write_fleet: Callable[..., Path]
) -> None:
    path = write_fleet(INVALID)

    result = run("validate", path, "--format", "json")

    assert result.code == 2
    problems = json.loads(result.err)
    assert problems == [
        {
            "file": str(path),
            "line": 8,
            "column": 5,
            "pointer": "/resources/crm/kind",
            "message": "must be 'api' or 'mcp'",
        },
        {
            "file": str(path),
            "line": 16,
            "column": 15,
            "pointer": "/agents/bot/tenants/0",
            "message": "unknown tenant 'nowhere'",
        },
    ]


def test_validate_json_of_a_valid_fleet_is_an_empty_list(
    run: Callable[..., Run], fleet: Path
) -> None:
    result = run("validate", "--format", "json", fleet)

    assert result.code == 0
    assert json.loads(result.out) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"\x00\x01\x02\xff\xfe binary \x89PNG", "YAML: the character #x0000 is not allowed"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "the file is not UTF-8 text"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"a: [unclosed\n", "YAML: "),
    ],
    ids=["empty", "binary", "jpeg", "list", "syntax"],
)
def test_validate_of_a_file_that_is_no_fleet_exits_2(
    run: Callable[..., Run], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(content)

    result = run("validate", path)

    assert result.code == 2
    assert f"{path}:" in result.err
    assert f"error: {message}" in result.err


def test_validate_of_a_missing_file_exits_2(run: Callable[..., Run], tmp_path: Path) -> None:
    result = run("validate", tmp_path / "missing.yaml")

    assert result.code == 2
    assert f"{tmp_path / 'missing.yaml'}:1:1: error: cannot read the file: " in result.err


def test_validate_of_a_directory_exits_2(run: Callable[..., Run], tmp_path: Path) -> None:
    result = run("validate", tmp_path)

    assert result.code == 2
    assert "cannot read the file: " in result.err


def test_validate_of_a_mistagged_value_exits_2(
    run: Callable[..., Run], write_fleet: Callable[..., Path]
) -> None:
    result = run("validate", write_fleet("version: !!int x\n"))

    assert result.code == 2


def test_an_unknown_option_is_a_usage_error(run: Callable[..., Run]) -> None:
    result = run("validate", "--colour")

    assert result.code == 2
    assert "No such option" in result.err


# explain


def explain(run: Callable[..., Run], fleet: Path, *args: str) -> Run:
    return run("explain", "--fleet", fleet, *args)


def explain_json(run: Callable[..., Run], fleet: Path, *args: str) -> dict[str, Any]:
    result = explain(run, fleet, *args, "--format", "json")
    assert result.code == 0, result.err
    decision: dict[str, Any] = json.loads(result.out)
    return decision


def test_explain_alice_says_crm_write_waits_for_approval(
    run: Callable[..., Run], fleet: Path, example_revision: Revision
) -> None:
    result = explain(
        run, fleet, "--agent", "sales-assistant", "--resource", "crm",
        "--scope", "crm:read crm:write", "--user", "alice",
    )  # fmt: skip

    assert result.code == 0
    assert result.out.splitlines() == [
        "agent sales-assistant asks for crm:read crm:write on crm (https://crm.acme.example.com)",
        "for alice in tenant acme (IdP groups: Sales Managers)",
        f"revision {example_revision.short}",
        "",
        "roles held: sales, sales-manager",
        "  group 'Sales Managers' -> sales, sales-manager",
        "",
        "GRANTED  crm:read",
        "  - agent sales-assistant lists it for crm",
        "  - the user holds sales, sales-manager, which may hold it",
        "PENDING  crm:write: needs a person's approval (policy crm-write-needs-approval)",
        "",
        "token lifetime: 15m (the default)",
        "verdict: a token would carry crm:read",
    ]


def test_explain_alice_json(
    run: Callable[..., Run], fleet: Path, example_revision: Revision
) -> None:
    decision = explain_json(
        run, fleet, "--agent", "sales-assistant", "--resource", "crm",
        "--scope", "crm:read", "--scope", "crm:write", "--user", "alice",
    )  # fmt: skip

    assert decision["revision"] == example_revision.hash
    assert decision["subject"] == {"user": "alice", "tenant": "acme", "groups": ["Sales Managers"]}
    assert decision["requested"] == ["crm:read", "crm:write"]
    assert [grant["scope"] for grant in decision["granted"]] == ["crm:read"]
    assert decision["refused"] == [
        {
            "scope": "crm:write",
            "code": "approval_required",
            "reason": "needs a person's approval (policy crm-write-needs-approval)",
            "rules": ["crm-write-needs-approval"],
        }
    ]
    assert decision["needs_approval"] == ["crm:write"]
    assert decision["roles"] == ["sales", "sales-manager"]
    assert decision["role_sources"] == [
        {"group": "Sales Managers", "roles": ["sales", "sales-manager"]}
    ]
    assert decision["lifetime"] == 900


def test_explain_alice_with_approval_gets_a_five_minute_token(
    run: Callable[..., Run], fleet: Path
) -> None:
    args = (
        "--agent", "sales-assistant", "--resource", "https://crm.acme.example.com",
        "--scope", "crm:read crm:write", "--user", "alice", "--approved", "crm:write",
    )  # fmt: skip

    text = explain(run, fleet, *args)
    decision = explain_json(run, fleet, *args)

    assert "GRANTED  crm:write" in text.out
    assert "  - a person approved it" in text.out
    assert "token lifetime: 5m (capped by scope crm:write; the default is 15m)" in text.out
    assert "verdict: a token would carry crm:read crm:write" in text.out
    assert decision["resource"] == "crm"
    assert [grant["scope"] for grant in decision["granted"]] == ["crm:read", "crm:write"]
    assert decision["refused"] == []
    assert decision["lifetime"] == 300


def test_explain_bob_is_refused_crm_write(run: Callable[..., Run], fleet: Path) -> None:
    args = ("--agent", "sales-assistant", "--resource", "crm", "--scope", "crm:write")
    args += ("--user", "bob")

    text = explain(run, fleet, *args)
    decision = explain_json(run, fleet, *args)

    assert "REFUSED  crm:write: the user holds none of the roles that may hold it" in text.out
    assert "verdict: no token; every requested scope is refused" in text.out
    assert [refusal["code"] for refusal in decision["refused"]] == ["no_role"]
    assert decision["granted"] == []
    assert decision["lifetime"] == 0


def test_explain_a_globex_admin_is_denied_crm_write(run: Callable[..., Run], fleet: Path) -> None:
    args = (
        "--agent", "sales-assistant", "--resource", "crm", "--scope", "crm:write",
        "--tenant", "globex", "--groups", "crm-admins@globex.example, other",
        "--approved", "crm:write",
    )  # fmt: skip

    text = explain(run, fleet, *args)
    decision = explain_json(run, fleet, *args)

    assert "for (a user) in tenant globex (IdP groups: crm-admins@globex.example, other)" in (
        text.out
    )
    assert "  group 'other' -> no role (the tenant's map does not name it)" in text.out
    assert "REFUSED  crm:write: denied by policy globex-no-crm-writes" in text.out
    assert decision["refused"][0]["code"] == "denied"
    assert decision["refused"][0]["rules"] == ["globex-no-crm-writes"]


def test_explain_support_triage_may_not_ask_for_crm_write(
    run: Callable[..., Run], fleet: Path
) -> None:
    decision = explain_json(
        run, fleet, "--agent", "support-triage", "--resource", "crm", "--scope", "crm:write",
        "--user", "carol",
    )  # fmt: skip

    assert [refusal["code"] for refusal in decision["refused"]] == ["not_in_agent_list"]


def test_explain_finance_reporter_does_not_serve_globex(
    run: Callable[..., Run], fleet: Path
) -> None:
    args = ("--agent", "finance-reporter", "--resource", "tools", "--scope", "tools:search")
    args += ("--user", "carol")

    text = explain(run, fleet, *args)
    decision = explain_json(run, fleet, *args)

    assert "agent 'finance-reporter' does not serve tenant 'globex'" in text.out
    assert [refusal["code"] for refusal in decision["refused"]] == ["tenant_not_served"]


def test_explain_crm_reconciler_gets_a_two_minute_token(
    run: Callable[..., Run], fleet: Path
) -> None:
    args = ("--agent", "crm-reconciler", "--resource", "crm", "--scope", "crm:write")

    text = explain(run, fleet, *args)
    decision = explain_json(run, fleet, *args)

    assert "acting as itself (client credentials), by its own roles" in text.out
    assert "  - policy crm-machine-tokens-short caps its lifetime" in text.out
    assert (
        "token lifetime: 2m (capped by policy crm-machine-tokens-short; the default is 15m)"
        in (text.out)
    )
    assert decision["subject"] is None
    assert decision["roles"] == ["crm-sync"]
    assert decision["lifetime"] == 120
    assert {cap["source"] for cap in decision["caps"]} == {
        "scope crm:write",
        "policy crm-machine-tokens-short",
    }


def test_explain_an_unknown_agent_is_a_refusal_not_an_error(
    run: Callable[..., Run], fleet: Path
) -> None:
    decision = explain_json(
        run, fleet, "--agent", "ghost", "--resource", "crm", "--scope", "crm:read"
    )

    assert decision["refused"][0]["code"] == "unknown_agent"


def test_explain_an_unknown_user_exits_2_naming_the_known_ones(
    run: Callable[..., Run], fleet: Path
) -> None:
    result = explain(
        run, fleet, "--agent", "sales-assistant", "--resource", "crm", "--scope", "crm:read",
        "--user", "zed",
    )  # fmt: skip

    assert result.code == 2
    assert result.out == ""
    assert result.err.strip() == (
        "fleetid: no dev user 'zed' in the fleet (known: alice, bob, carol, dan)"
    )


def test_explain_user_and_tenant_together_exit_2(run: Callable[..., Run], fleet: Path) -> None:
    result = explain(
        run, fleet, "--agent", "sales-assistant", "--resource", "crm", "--scope", "crm:read",
        "--user", "alice", "--tenant", "acme",
    )  # fmt: skip

    assert result.code == 2
    assert result.err.strip() == "fleetid: give --user or --tenant with --groups, not both"


def test_explain_groups_without_a_tenant_exit_2(run: Callable[..., Run], fleet: Path) -> None:
    result = explain(
        run, fleet, "--agent", "sales-assistant", "--resource", "crm", "--scope", "crm:read",
        "--groups", "Sales",
    )  # fmt: skip

    assert result.code == 2
    assert result.err.strip() == "fleetid: --groups needs --tenant"


def test_explain_without_a_scope_is_a_usage_error(run: Callable[..., Run], fleet: Path) -> None:
    result = explain(run, fleet, "--agent", "sales-assistant", "--resource", "crm")

    assert result.code == 2
    assert "Missing option '--scope'" in result.err


def test_explain_on_an_invalid_fleet_reports_the_problems(
    run: Callable[..., Run], write_fleet: Callable[..., Path]
) -> None:
    path = write_fleet(INVALID)

    result = explain(run, path, "--agent", "bot", "--resource", "crm", "--scope", "crm:read")

    assert result.code == 2
    assert result.err.splitlines()[-1] == "2 problems found"
    assert result.out == ""


# schema


@pytest.mark.parametrize("kind", ["fleet", "policy"])
def test_schema_prints_the_rendered_schema(run: Callable[..., Run], kind: str) -> None:
    result = run("schema", kind)

    assert result.code == 0
    assert result.out == rendered(kind)


def test_schema_defaults_to_the_fleet(run: Callable[..., Run]) -> None:
    assert run("schema").out == rendered("fleet")


def test_schema_write_writes_both_files(
    run: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--write` writes beside the module; point it at a copy so the real files stay as they are.
    (tmp_path / "fleet" / "schema").mkdir(parents=True)
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "cli.py"))

    result = run("schema", "--write")

    assert result.code == 0
    assert (tmp_path / "fleet" / "schema" / "fleet.schema.json").read_text() == rendered("fleet")
    assert (tmp_path / "fleet" / "schema" / "policy.schema.json").read_text() == rendered("policy")
    assert result.out.count("wrote ") == 2


def test_schema_of_an_unknown_kind_is_a_usage_error(run: Callable[..., Run]) -> None:
    assert run("schema", "agents").code == 2


# The installed script


def script(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "fleetid"
    return subprocess.run(
        [str(executable), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_script_validates_the_example(repo_root: Path) -> None:
    done = script("validate", "fleet.yaml", cwd=repo_root)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fleet.yaml: valid, revision ")


def test_the_script_exits_2_on_garbage_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_bytes(bytes(range(256)) * 4)

    done = script("validate", "fleet.yaml", cwd=tmp_path)

    assert done.returncode == 2
    assert "fleet.yaml:1:1: error: " in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == "1 problem found"


def test_the_script_explains_as_json(repo_root: Path) -> None:
    done = script(
        "explain", "--agent", "crm-reconciler", "--resource", "crm", "--scope", "crm:write",
        "--format", "json", cwd=repo_root,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lifetime"] == 120
