"""The secret scanner: unknown secrets found by shape and entropy, replaced by their type; ordinary code left alone."""

from __future__ import annotations

import json

import pytest

from corral.secrets.scanner import SCANNER, Finding, placeholder
from tests.secrets.fakes import AWS_KEY_ID, AWS_SECRET, GITHUB_TOKEN, INVENTED_TOKEN, private_key_pem, values


def test_aws_github_and_a_private_key_are_replaced_by_their_type() -> None:
    text = "\n".join(
        [
            f'aws_access_key_id = "{AWS_KEY_ID}"',
            f'aws_secret_access_key = "{AWS_SECRET}"',
            f"token: {GITHUB_TOKEN}",
            private_key_pem().rstrip("\n"),
            "after the key",
        ]
    )
    scanned = SCANNER.scan(text)
    for value in values():
        assert value not in scanned.text
    assert placeholder("AWS Access Key") in scanned.text
    assert placeholder("GitHub Token") in scanned.text
    assert placeholder("Private Key") in scanned.text
    assert scanned.text.endswith("after the key")  # the block ends at its END line, not the text's end
    assert "-----" not in scanned.text  # the armour lines go with the block
    assert {f.type for f in scanned.findings} >= {"AWS Access Key", "GitHub Token", "Private Key"}
    assert Finding(type="GitHub Token", line=3) in scanned.findings
    assert Finding(type="Private Key", line=4) in scanned.findings


def test_environment_dumps_count_unquoted_values() -> None:
    text = f"HOME=/root\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\nexport GITHUB_TOKEN={GITHUB_TOKEN}\nPATH=/usr/bin:/bin\n"
    scanned = SCANNER.scan(text)
    assert AWS_SECRET not in scanned.text and GITHUB_TOKEN not in scanned.text
    assert scanned.text.startswith("HOME=/root\n") and scanned.text.endswith("PATH=/usr/bin:/bin\n")
    assert [f.line for f in scanned.findings] == [2, 3]


def test_a_dotenv_file_is_read_as_config() -> None:
    text = f"# deploy settings\nSTRIPE_SECRET=q8Vt2LmXk4Rz9PwHd7Ny3Bc6\ndb_password: {AWS_SECRET}\n"
    assert SCANNER.scan(text, "deploy/.env").findings
    assert AWS_SECRET not in SCANNER.scan(text, "deploy/.env").text


def test_a_key_inside_a_json_string_is_cut_whole() -> None:
    escaped = json.dumps({"type": "service_account", "private_key": private_key_pem()})
    scanned = SCANNER.scan(escaped)
    for line in private_key_pem().splitlines()[1:-1]:
        assert line not in scanned.text
    assert scanned.text.startswith('{"type": "service_account", "private_key": "[secret:detected:Private Key]')


def test_a_key_cut_off_by_a_preview_is_removed_to_the_end() -> None:
    head = "\n".join(private_key_pem().splitlines()[:5])
    scanned = SCANNER.scan(f"$ cat id_rsa\n{head}")
    assert scanned.text == "$ cat id_rsa\n[secret:detected:Private Key]"


@pytest.mark.parametrize(
    "text",
    [
        'sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"',
        'id = "123e4567-e89b-12d3-a456-426614174000"',
        "commit 4f2a9c81d3b7e6f05a1c2d3e4f5a6b7c8d9e0f1a",
        "def api_key_for(target: ModelTarget) -> str:",
        'password = os.environ["DB_PASSWORD"]',
        "api_key: ${API_KEY}",
        "secrets=scoped,",
        "integrity sha512-Wv1a0ZPIg0Tb5uaVlQKm6XpLVd6E0A0IrX3L+SBuCwJ2yJ6LZoUJ3Jj7mYtSKQ0BF8m5oJmvB2BkY1Y0H4rFpg==",
        "https://example.com/path?q=1",
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert SCANNER.scan(text) == SCANNER.scan(text).__class__(text)


def test_placeholders_are_not_found_again_and_nothing_is_reported_by_value() -> None:
    once = SCANNER.scan(f'token = "{GITHUB_TOKEN}"\nkey = "{AWS_KEY_ID}"')
    assert SCANNER.scan(once.text).findings == ()
    reported = json.dumps([f.to_json() for f in once.findings])
    assert GITHUB_TOKEN not in reported and AWS_KEY_ID not in reported


def test_the_same_value_is_replaced_wherever_it_appears() -> None:
    text = f'TOKEN = "{GITHUB_TOKEN}"\nprint("using", "{GITHUB_TOKEN}"[:4])\n# {GITHUB_TOKEN}'
    assert GITHUB_TOKEN not in SCANNER.scan(text).text


def test_the_patch_is_flagged_by_file_and_new_line_but_never_changed() -> None:
    patch = f"""diff --git a/app/settings.py b/app/settings.py
index 1111111..2222222 100644
--- a/app/settings.py
+++ b/app/settings.py
@@ -10,3 +10,4 @@ DEBUG = False
 NAME = "app"
-OLD = "{AWS_KEY_ID}"
+TOKEN = "{INVENTED_TOKEN}"
+TIMEOUT = 30
 PORT = 8080
diff --git a/poetry.lock b/poetry.lock
--- a/poetry.lock
+++ b/poetry.lock
@@ -1 +1 @@
-x
+content-hash = "{AWS_SECRET}"
"""
    found = SCANNER.scan_patch(patch)
    assert found == (Finding(type="GitHub Token", line=11, file="app/settings.py"),)  # removed lines and locks: no


def test_typed_output_names_the_field() -> None:
    output, found = SCANNER.scan_data({"summary": "ok", "items": [{"note": f"key {AWS_KEY_ID}"}], "n": 3})
    assert output == {"summary": "ok", "items": [{"note": "key [secret:detected:AWS Access Key]"}], "n": 3}
    assert found == [{"type": "AWS Access Key", "line": 1, "field": "items[0].note"}]


def test_the_prefilter_never_skips_a_line_detect_secrets_would_flag() -> None:
    """Every line detect-secrets flags when it reads them all is one the prefilter hands it."""
    from detect_secrets.core.scan import _process_line_based_plugins

    from corral.secrets.scanner import _candidate_lines, _settings

    lines = [
        f'aws = "{AWS_KEY_ID}"',
        f'x = "{AWS_SECRET}"',
        f"{GITHUB_TOKEN}",
        "password = 'hunter2hunter2'",
        "postgres://admin:s3cr3tpass@db:5432/app",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "SG." + "aBcDeFgHiJkLmNoPqRsTuV.wXyZaBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgHiJkLm",
        "npm_token: //registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz0123456789",
        "def ordinary(code): return code",
    ]
    text = "\n".join(lines)
    with _settings():
        flagged = {s.line_number for s in _process_line_based_plugins(list(enumerate(lines, 1)), filename="x.ini")}
        flagged |= {s.line_number for s in _process_line_based_plugins(list(enumerate(lines, 1)), filename="output")}
    assert len(flagged) >= 10
    assert flagged <= set(_candidate_lines(text, SCANNER._ready()))


def test_detect_secrets_settings_are_put_back() -> None:
    from detect_secrets.settings import get_settings

    before = get_settings().json()
    SCANNER.scan(f'token = "{GITHUB_TOKEN}"')
    assert get_settings().json() == before


@pytest.mark.anyio
async def test_run_tool_scans_what_the_model_sees_and_withholds_it_when_the_scan_fails() -> None:
    from typing import Any, cast

    from pydantic import BaseModel

    from corral.tools.base import ToolContext, run_tool, tool

    class NoArgs(BaseModel):
        pass

    @tool(name="leak")
    async def leak(ctx: ToolContext, args: NoArgs) -> str:
        """Print a token."""
        return f"token {GITHUB_TOKEN}\nok"

    ctx = ToolContext(sandbox=cast(Any, None), run_id="r", idempotency_key="k", scan=SCANNER.scan)
    outcome = await run_tool(leak, ctx, {})
    assert outcome.ok and outcome.text == "token [secret:detected:GitHub Token]\nok"
    assert outcome.secrets == [{"type": "GitHub Token", "line": 1}]

    def broken(text: str, source: str | None) -> Any:
        raise RuntimeError(text)  # would echo the value, if anything printed it

    ctx.scan = broken
    outcome = await run_tool(leak, ctx, {})
    assert outcome.text == "tool result withheld: the secret scan failed (RuntimeError)"
    assert GITHUB_TOKEN not in outcome.text


def test_a_registered_secrets_placeholder_is_not_a_finding() -> None:
    text = "token=[secret:DEPLOY_TOKEN]\nDEPLOY_TOKEN=[secret:DEPLOY_TOKEN]\npw = '[secret:detected:Secret Keyword]'"
    assert SCANNER.scan(text).text == text
    assert SCANNER.scan(text).findings == ()
    patch = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+token = '[secret:DEPLOY_TOKEN]'\n"
    assert SCANNER.scan_patch(patch) == ()


def test_a_line_marked_allowlisted_is_skipped() -> None:
    text = f'TOKEN = "{GITHUB_TOKEN}"  # pragma: allowlist secret'
    assert SCANNER.scan(text, "app.py").text == text


def test_a_short_value_is_replaced_too() -> None:
    """Every finding removes something: a short password, a URL's short password (its whole credentials)."""
    scanned = SCANNER.scan('db_password = "hunt3r!"\nurl = "https://ana:pw@db.internal/app"', "settings.py")
    assert "hunt3r!" not in scanned.text and ":pw@" not in scanned.text
    assert scanned.text.startswith('db_password = "[secret:detected:Secret Keyword]"')
    assert len(scanned.findings) == 2
