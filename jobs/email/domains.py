"""Recipient addresses through email-validator, and the switch for reserved test domains.

email-validator refuses every special-use domain; development and staging send to
`.test` or `.local` addresses, so `MAIL_ALLOW_TEST_DOMAINS` lets the RFC 2606 / RFC 6761
names through (never in production: the settings refuse it there).
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from cache.settings import get_settings

# RFC 2606 / RFC 6761 reserved names, allowed as recipient domains by MAIL_ALLOW_TEST_DOMAINS.
RESERVED_TEST_DOMAINS = frozenset({"test", "example", "invalid", "localhost", "local"})


def validated_address(address: str) -> str:
    """email-validator's ASCII form; reserved test domains pass when MAIL_ALLOW_TEST_DOMAINS is on.

    email-validator refuses every special-use domain (and `localhost`, which has no dot);
    with the setting, the address is validated with its reserved top-level label swapped
    for `.example` (which it accepts), so the rest of the address is still checked.
    """
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
        return str(result.ascii_email or result.normalized)
    except EmailNotValidError:
        local, at, domain = address.rpartition("@")
        stem, _, top = domain.rpartition(".")
        top = top.lower()
        if not (at and top in RESERVED_TEST_DOMAINS and get_settings().mail_allow_test_domains):
            raise
    dotted = "." in domain  # `localhost` or `test` alone: a name with no dot to validate around
    swapped = validate_email(
        f"{local}@{stem if dotted else 'x'}.example", check_deliverability=False, allow_smtputf8=False
    )
    checked_local, _, checked_domain = str(swapped.ascii_email or swapped.normalized).rpartition("@")
    return f"{checked_local}@{checked_domain.removesuffix('.example') + '.' + top if dotted else top}"
