"""AUTH (RFC 4954) over loopback: every mechanism passing and failing, aborts, errors, no leaks."""

import base64
import hmac
import logging
import smtplib

import pytest

from tests.conftest import HOST, in_thread


def b64(text):
    return base64.b64encode(text.encode()).decode()


async def greeted(connect, port=None):
    client = await connect(port)
    await client.command("EHLO client.example")
    return client


@pytest.mark.gen_test
@pytest.mark.parametrize("password, expected", [
    ("secret", (235, "2.7.0 Authentication successful")),
    ("fail=yes", (535, "5.7.8 Authentication failed")),
])
async def test_plain_with_and_without_an_initial_response(connect, password, expected):
    client = await greeted(connect)
    assert await client.command("AUTH PLAIN " + b64(f"\0user\0{password}")) == expected
    other = await greeted(connect)
    assert await other.command("AUTH PLAIN") == (334, "")
    assert await other.command(b64(f"\0user\0{password}")) == expected


@pytest.mark.gen_test
@pytest.mark.parametrize("user, password, code", [
    ("user", "secret", 235), ("user", "fail=1", 535), ("fail=me", "secret", 535)])
async def test_login_prompts_for_user_then_password(connect, user, password, code):
    client = await greeted(connect)
    assert await client.command("AUTH LOGIN") == (334, b64("Username:"))
    assert await client.command(b64(user)) == (334, b64("Password:"))
    assert (await client.command(b64(password)))[0] == code
    other = await greeted(connect)
    assert await other.command("AUTH LOGIN " + b64(user)) == (334, b64("Password:"))
    assert (await other.command(b64(password)))[0] == code


@pytest.mark.gen_test
@pytest.mark.parametrize("user, code", [("user", 235), ("fail=user", 535)])
async def test_cram_md5_answers_a_fresh_challenge(connect, user, code):
    client = await greeted(connect)
    reply_code, challenge = await client.command("AUTH CRAM-MD5")
    assert reply_code == 334
    challenge = base64.b64decode(challenge)
    assert challenge.startswith(b"<") and challenge.endswith(b">") and b"@" in challenge
    digest = hmac.new(b"password", challenge, "md5").hexdigest()
    assert (await client.command(b64(f"{user} {digest}")))[0] == code
    other = await greeted(connect)
    _, second = await other.command("AUTH CRAM-MD5")
    assert base64.b64decode(second) != challenge
    assert (await other.command(b64("not a digest")))[0] == 535


@pytest.mark.gen_test
@pytest.mark.parametrize("user, outcome", [("user", 235), ("fail=1", 535)])
async def test_smtplib_login(port, user, outcome):
    """smtplib picks CRAM-MD5, where only the user name travels in the clear."""
    def login():
        with smtplib.SMTP(HOST, port) as smtp:
            try:
                return smtp.login(user, "password")[0]
            except smtplib.SMTPAuthenticationError as error:
                return error.smtp_code

    assert await in_thread(login) == outcome


@pytest.mark.gen_test
async def test_abort_bad_base64_and_unknown_mechanism(connect):
    client = await greeted(connect)
    await client.command("AUTH LOGIN")
    assert await client.command("*") == (501, "5.7.0 Authentication aborted")
    assert await client.command("AUTH PLAIN *") == (501, "5.7.0 Authentication aborted")
    assert await client.command("AUTH PLAIN not*base64") == (501, "5.5.2 Invalid base64 data")
    # Not ASCII at all: base64 cannot even look at it.
    assert await client.command("AUTH PLAIN \u00e9") == (501, "5.5.2 Invalid base64 data")
    assert await client.command("AUTH LOGIN \u00e9=") == (501, "5.5.2 Invalid base64 data")
    await client.command("AUTH PLAIN")
    assert await client.command("%%%") == (501, "5.5.2 Invalid base64 data")
    assert await client.command("AUTH GSSAPI") == (504, "5.5.4 Unrecognized authentication type")
    assert await client.command("AUTH") == (501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
    assert (await client.command("AUTH PLAIN " + b64("\0u\0p")))[0] == 235  # still usable


@pytest.mark.gen_test
async def test_auth_twice_before_ehlo_or_in_a_transaction_is_503(connect):
    early = await connect()
    assert await early.command("AUTH PLAIN " + b64("\0u\0p")) == (
        503, "5.5.1 Send HELO or EHLO first")
    client = await greeted(connect)
    await client.command("MAIL FROM:<a@example.com>")
    assert await client.command("AUTH PLAIN " + b64("\0u\0p")) == (
        503, "5.5.1 AUTH not allowed in a mail transaction")
    await client.command("RSET")
    assert (await client.command("AUTH PLAIN " + b64("\0u\0p")))[0] == 235
    assert await client.command("AUTH PLAIN " + b64("\0u\0p")) == (
        503, "5.5.1 Already authenticated")
    assert (await client.command("MAIL FROM:<a@example.com> AUTH=<>"))[0] == 250


@pytest.mark.gen_test
async def test_credentials_never_reach_the_log(serve, connect, caplog):
    caplog.set_level(logging.DEBUG, logger="blackhole")
    port = serve(debug=True)
    secrets = ("hunter2-plain", "hunter2-login")
    client = await greeted(connect, port)
    await client.command("AUTH PLAIN " + b64(f"\0user\0{secrets[0]}"))
    other = await greeted(connect, port)
    await other.command("AUTH LOGIN " + b64("user"))
    await other.command(b64(secrets[1]))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "RECV: AUTH PLAIN ****" in logged and "RECV: ****" in logged
    for secret in secrets:
        assert secret not in logged and b64(secret) not in logged
    assert b64(f"\0user\0{secrets[0]}") not in logged
