"""Normalisation shared by the engine and the simulator: email, phone (E.164) and URL."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

import phonenumbers
from email_validator import EmailNotValidError, validate_email

DEFAULT_PHONE_REGION = "US"


def email_key(email: str) -> str:
    """Emails compare case-insensitively and without surrounding space."""
    return email.strip().lower()


# Event streams repeat the same people's emails and phones over and over; both checks are pure and
# cost tens of microseconds each, so they are memoised (bounded).
@lru_cache(maxsize=65_536)
def is_valid_email(email: str) -> bool:
    try:
        validate_email(email.strip(), check_deliverability=False)
    except (EmailNotValidError, ValueError):
        return False
    return True


@lru_cache(maxsize=65_536)
def to_e164(phone: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """E.164 form of a phone number, or None when it cannot be a phone number."""
    try:
        parsed = phonenumbers.parse(phone.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_formatted(e164: str) -> str:
    parsed = phonenumbers.parse(e164, None)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def phone_key(phone: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """Phones compare by E.164 form; an unparseable one by its digits."""
    e164 = to_e164(phone, region)
    if e164:
        return e164
    return "".join(ch for ch in phone if ch.isdigit() or ch == "+")


def url_key(url: str) -> str:
    """URLs compare without scheme, "www.", case of the host, or a trailing slash."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    if host.startswith("www."):
        host = host[4:]
    port = f":{parts.port}" if parts.port else ""
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{host}{port}{path}{query}"
